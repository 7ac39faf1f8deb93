"""Hostile trees: huge sparse files, deep nesting, wide directories, paths past PATH_MAX, link
loops and chains, procfs files, odd names under LC_ALL=C; and a property test on random trees."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pcopy

TIB = 1 << 40


def run_cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    out = subprocess.run([sys.executable, "-m", "pcopy", *map(os.fsencode, args)], capture_output=True,
                         timeout=120, env={**os.environ, **(env or {})}, check=False)
    assert b"Traceback" not in out.stderr, out.stderr
    return out


def test_one_tib_sparse_file_copies_in_seconds_with_holes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "disk.img", "wb") as fh:
        fh.truncate(TIB)
        fh.seek(TIB // 2)
        fh.write(b"middle")
        fh.seek(TIB - 5)
        fh.write(b"tail!")
    out = run_cli(src, tmp_path / "dst", "-j", "2", "--json")
    assert out.returncode == 0, out.stderr
    copy = tmp_path / "dst" / "disk.img"
    assert copy.stat().st_size == TIB
    assert copy.stat().st_blocks * 512 < 1 << 20  # still holes, not a terabyte of zeros
    with open(copy, "rb") as fh:
        fh.seek(TIB // 2)
        assert fh.read(6) == b"middle"
        fh.seek(TIB - 5)
        assert fh.read() == b"tail!"


def test_300_deep_nesting(tmp_path: Path) -> None:
    deep = tmp_path / "src" / os.path.join(*["d"] * 300)
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_text("bottom")
    report = pcopy.copy(tmp_path / "src", tmp_path / "dst", jobs=2)
    assert report.failures == [] and report.dirs == 301
    assert (tmp_path / "dst" / os.path.join(*["d"] * 300) / "leaf.txt").read_text() == "bottom"


@pytest.mark.slow
def test_directory_with_50000_entries(tmp_path: Path) -> None:
    wide = tmp_path / "src" / "wide"
    wide.mkdir(parents=True)
    for i in range(50_000):
        (wide / f"{i:05d}").write_bytes(b"")
    out = run_cli(tmp_path / "src", tmp_path / "dst", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["files"] == 50_000
    assert len(os.listdir(tmp_path / "dst" / "wide")) == 50_000


def test_paths_longer_than_path_max_are_reported_not_crashing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "shallow.txt").write_text("fine")
    # 20 levels of 250-byte names: about 5,000 bytes, past PATH_MAX (4096); built with dir_fd.
    fd = os.open(src, os.O_RDONLY)
    try:
        for _ in range(20):
            os.mkdir("n" * 250, dir_fd=fd)
            inner = os.open("n" * 250, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"deep")
        os.close(leaf)
    finally:
        os.close(fd)
    out = run_cli(src, tmp_path / "dst", "--json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["failed"] >= 1
    assert all(f["error"] == "ENAMETOOLONG" for f in report["failures"])
    assert (tmp_path / "dst" / "shallow.txt").read_text() == "fine"
    assert (tmp_path / "dst" / ("n" * 250)).is_dir()  # copied as deep as paths allow


def test_symlink_loops_and_chains_with_dereference(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "target.txt").write_text("end of chain")
    os.symlink("target.txt", src / "c")
    os.symlink("c", src / "b")
    os.symlink("b", src / "a")  # a -> b -> c -> target.txt
    os.symlink("loop2", src / "loop1")
    os.symlink("loop1", src / "loop2")  # a loop of two links
    os.symlink("..", src / "d" / "parent")  # a directory link to its own parent
    out = run_cli(src, tmp_path / "dst", "-L", "--json")
    assert out.returncode == 1
    failed = {Path(f["path"]).name: f["error"] for f in json.loads(out.stdout)["failures"]}
    assert failed == {"loop1": "ELOOP", "loop2": "ELOOP", "parent": "ELOOP"}
    assert (tmp_path / "dst" / "a").read_text() == "end of chain"
    assert not (tmp_path / "dst" / "a").is_symlink()
    # Without -L the same tree copies as it is: links stay links, nothing loops.
    out = run_cli(src, tmp_path / "plain", "--json")
    assert out.returncode == 0, out.stderr
    assert os.readlink(tmp_path / "plain" / "d" / "parent") == ".."
    assert os.readlink(tmp_path / "plain" / "loop1") == "loop2"


@pytest.mark.skipif(not os.path.exists("/proc/version"), reason="no procfs")
def test_procfs_file_that_reports_size_zero(tmp_path: Path) -> None:
    assert os.stat("/proc/version").st_size == 0
    out = run_cli("/proc/version", tmp_path / "version")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "version").read_bytes() == Path("/proc/version").read_bytes() != b""


def test_odd_names_under_the_c_locale(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    names = [b"-rf", b"--help", b"*.txt", b"[a]?", b"new\nline", b"caf\xe9", b"\xff\xfe", "ü ñ".encode()]
    for name in names:
        with open(os.path.join(os.fsencode(src), name), "wb") as fh:
            fh.write(name)
    os.chmod(os.path.join(os.fsencode(src), b"caf\xe9"), 0o000)
    env = {"LC_ALL": "C", "LANG": "C"}
    out = run_cli("--no-progress", "--", src, tmp_path / "dst", env=env)
    dst = os.fsencode(tmp_path / "dst")
    assert out.returncode == 0, out.stderr  # root reads mode 000 files
    assert sorted(os.listdir(dst)) == sorted(names)
    for name in names:
        with open(os.path.join(dst, name), "rb") as fh:
            assert fh.read() == name


# -- property: a copy always equals its source ---------------------------------------------------

NAME = st.text(alphabet="abcXYZ _-.é\n", min_size=1, max_size=8).filter(lambda n: n not in (".", ".."))


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, str, object]]:
    """A list of (kind, relative path, payload) describing a random tree."""
    items: list[tuple[str, str, object]] = []
    dirs = [""]
    for _ in range(draw(st.integers(0, 4))):
        dirs.append(os.path.join(draw(st.sampled_from(dirs)), draw(NAME)))
        items.append(("dir", dirs[-1], draw(st.sampled_from([0o755, 0o700, 0o555]))))
    files: list[str] = []
    for _ in range(draw(st.integers(0, 12))):
        path = os.path.join(draw(st.sampled_from(dirs)), draw(NAME))
        size = draw(st.sampled_from([0, 1, 4095, 4096, 4097, 8192, 12_289, 50_000]))
        items.append(("file", path, (size, draw(st.sampled_from([0o644, 0o600, 0o755, 0o444, 0o4755])))))
        files.append(path)
    for _ in range(draw(st.integers(0, 3))):
        items.append(("symlink", os.path.join(draw(st.sampled_from(dirs)), draw(NAME)), draw(NAME)))
    if files:
        for _ in range(draw(st.integers(0, 2))):
            items.append(("hardlink", os.path.join(draw(st.sampled_from(dirs)), draw(NAME)),
                          draw(st.sampled_from(files))))
    return items


def build(root: Path, items: list[tuple[str, str, object]]) -> None:
    root.mkdir()
    modes = []
    for kind, rel, payload in items:
        path = root / rel
        if path.exists() or path.is_symlink() or not path.parent.is_dir():
            continue
        if kind == "dir":
            path.mkdir()
            modes.append((path, payload))
        elif kind == "file":
            size, mode = payload  # type: ignore[misc]
            path.write_bytes(os.urandom(size))
            os.chmod(path, mode)
            os.utime(path, ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))
        elif kind == "symlink":
            os.symlink(str(payload), path)
        elif kind == "hardlink" and (root / str(payload)).is_file():
            os.link(root / str(payload), path)
    for path, mode in reversed(modes):
        os.chmod(path, mode)  # type: ignore[arg-type]


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            s = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(s.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(s.st_mode):
                out[rel] = ("dir", s.st_mode, s.st_mtime_ns)
            else:
                with open(path, "rb") as fh:
                    data = fh.read()
                group = inodes.setdefault(s.st_ino, rel) if s.st_nlink > 1 else None
                out[rel] = ("file", s.st_mode, s.st_mtime_ns, data, group)
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=trees(), jobs=st.sampled_from([1, 2, 3]), chunk=st.sampled_from([4096, 5000, 1 << 20]))
def test_copy_always_equals_source(tmp_path_factory: pytest.TempPathFactory,
                                   items: list[tuple[str, str, object]], jobs: int, chunk: int) -> None:
    base = tmp_path_factory.mktemp("prop")
    build(base / "src", items)
    report = pcopy.copy(base / "src", base / "dst", jobs=jobs, chunk_size=chunk)
    assert report.failures == []
    source, copy = describe(base / "src"), describe(base / "dst")
    # Hard-link groups are named by their first path in walk order, which may differ: compare
    # the partition instead of the names.
    def groups(tree: dict[str, tuple[object, ...]]) -> set[frozenset[str]]:
        by_key: dict[object, set[str]] = {}
        for rel, entry in tree.items():
            if entry[0] == "file" and entry[4] is not None:
                by_key.setdefault(entry[4], set()).add(rel)
        return {frozenset(g) for g in by_key.values()}
    strip = {rel: e[:4] if e[0] == "file" else e for rel, e in source.items()}
    assert {rel: e[:4] if e[0] == "file" else e for rel, e in copy.items()} == strip
    assert groups(copy) == groups(source)
