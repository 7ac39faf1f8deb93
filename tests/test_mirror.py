"""pcopy.mirror.delete_extraneous (--delete) on real temporary trees."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import pcopy
from pcopy import mirror
from pcopy.filters import FilterSet
from pcopy.metadata import temp_path
from pcopy.mirror import DeleteResult, delete_extraneous

Snapshot = dict[str, tuple[str, str]]


@pytest.fixture(params=["fd", "path"], autouse=True)
def variant(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the dir_fd implementation and with the path-based fallback."""
    if request.param == "path":
        monkeypatch.setattr(mirror, "_USE_FD", False)
    elif not mirror._USE_FD:
        pytest.skip("no dir_fd support on this platform")
    return str(request.param)


def make(root: Path, spec: dict[str, str | None]) -> None:
    """Build a tree: "name/" is a directory, "name -> target" a symlink, otherwise a file with that
    text (None: its own name as content)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in spec.items():
        if rel.endswith("/"):
            (root / rel).mkdir(parents=True, exist_ok=True)
            continue
        if " -> " in rel:
            name, target = rel.split(" -> ")
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, root / name)
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel if content is None else content)


def snapshot(root: Path) -> Snapshot:
    """Every entry below root (lstat, no following): kind and content or link target."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", Path(path).read_text())
    return out


def rels(result: DeleteResult, dst: Path) -> list[str]:
    return [os.path.relpath(p, dst) for p in result.deleted]


SRC_SPEC: dict[str, str | None] = {
    "same.txt": "same", "d/": None, "d/kept.txt": None, "d/sub/": None, "d/sub/kept2.txt": None,
}
DST_SPEC: dict[str, str | None] = {
    "same.txt": "same", "d/kept.txt": None, "d/sub/kept2.txt": None,
    "extra.txt": None, "d/extra.txt": None, "d/sub/extra.txt": None,
    "gone/a/b/c.txt": None, "gone/a/d.txt": None, "gone/e/": None,
    "filelink -> same.txt": None, "dirlink -> d": None, "dangling -> nowhere": None,
}
EXPECTED_DELETED = {
    "extra.txt", "d/extra.txt", "d/sub/extra.txt", "gone", "gone/a", "gone/a/b", "gone/a/b/c.txt",
    "gone/a/d.txt", "gone/e", "filelink", "dirlink", "dangling",
}


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make(src, SRC_SPEC)
    make(dst, DST_SPEC)
    return src, dst


def test_extraneous_entries_removed(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    before = snapshot(dst)
    same_stat = os.stat(dst / "same.txt")
    result = delete_extraneous(str(src), str(dst))
    assert result.failures == []
    assert not result.limited
    assert set(rels(result, dst)) == EXPECTED_DELETED
    assert len(result.deleted) == len(EXPECTED_DELETED) == result.would_delete
    assert all(p.startswith(str(dst) + os.sep) for p in result.deleted)
    # DST is now exactly SRC's tree, and what both had was not touched
    assert snapshot(dst) == snapshot(src)
    assert {k: v for k, v in before.items() if k not in EXPECTED_DELETED} == snapshot(dst)
    after = os.stat(dst / "same.txt")
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        same_stat.st_ino, same_stat.st_mtime_ns, same_stat.st_size)


def test_directories_removed_after_their_contents(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    order = rels(delete_extraneous(str(src), str(dst)), dst)
    position = {rel: i for i, rel in enumerate(order)}
    for rel in order:
        parent = os.path.dirname(rel)
        if parent in position:
            assert position[rel] < position[parent], f"{rel} must go before {parent}"
    chain = ["gone/a/b/c.txt", "gone/a/b", "gone/a", "gone"]
    assert [order.index(rel) for rel in chain] == sorted(order.index(rel) for rel in chain)


def test_dry_run_lists_the_same_and_changes_nothing(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    before = snapshot(dst)
    dry = delete_extraneous(str(src), str(dst), dry_run=True)
    assert snapshot(dst) == before
    assert dry.would_delete == len(dry.deleted) == len(EXPECTED_DELETED)
    real = delete_extraneous(str(src), str(dst))
    assert real.deleted == dry.deleted
    assert snapshot(dst) != before


def test_second_run_has_nothing_to_do(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    delete_extraneous(str(src), str(dst))
    again = delete_extraneous(str(src), str(dst))
    assert (again.deleted, again.failures, again.would_delete, again.limited) == ([], [], 0, False)


def test_symlink_to_outside_directory_is_unlinked_not_entered(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make(outside, {"precious.txt": None, "deep/also.txt": None})
    src, dst = tmp_path / "src", tmp_path / "dst"
    make(src, {"keep/": None, "keep/a": None})
    make(dst, {"keep/a": None, f"escape -> {outside}": None, f"keep/escape2 -> {outside}/deep": None})
    before_outside = snapshot(outside)
    result = delete_extraneous(str(src), str(dst))
    assert result.failures == []
    assert set(rels(result, dst)) == {"escape", "keep/escape2"}
    assert not os.path.lexists(dst / "escape")
    assert snapshot(outside) == before_outside


def test_dst_symlink_where_src_has_a_directory_is_not_entered(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make(outside, {"not_in_src.txt": None})
    src, dst = tmp_path / "src", tmp_path / "dst"
    make(src, {"sub/": None, "sub/x": None})
    make(dst, {f"sub -> {outside}": None})
    result = delete_extraneous(str(src), str(dst))
    # "sub" exists in SRC, so the link is not extraneous; and it is never followed
    assert result.deleted == [] and result.failures == []
    assert (outside / "not_in_src.txt").exists()


def test_directory_replaced_by_symlink_after_the_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DST directory swapped for a symlink to outside between the scan and the deletion: the
    outside files with the planned names must survive."""
    outside = tmp_path / "outside"
    make(outside, {"x.txt": "outside", "inner/y.txt": "outside"})
    src, dst = tmp_path / "src", tmp_path / "dst"
    make(src, {"kept/": None, "top.txt": None})
    make(dst, {"top.txt": None, "kept/x.txt": None, "doomed/inner/y.txt": None, "doomed/x.txt": None,
               "extra.txt": None})
    real_scan = mirror._scan

    def scan_then_swap(*args: object, **kwargs: object) -> object:
        plan = real_scan(*args, **kwargs)  # type: ignore[arg-type]
        for name in ("kept", "doomed"):
            os.rename(dst / name, tmp_path / f"moved-{name}")
            os.symlink(outside, dst / name)
        return plan

    monkeypatch.setattr(mirror, "_scan", scan_then_swap)
    before_outside = snapshot(outside)
    result = delete_extraneous(str(src), str(dst))
    assert snapshot(outside) == before_outside
    assert rels(result, dst) == ["extra.txt"]
    failed = {os.path.relpath(f.path, dst) for f in result.failures}
    assert failed == {"kept", "doomed"}
    assert all("changed during the run" in f.message or "replaced" in f.message for f in result.failures)
    # the moved-away real directories were not touched either: they are no longer under DST
    assert (tmp_path / "moved-doomed" / "inner" / "y.txt").exists()


def test_directory_replaced_by_another_directory_after_the_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make(src, {"kept/": None})
    make(dst, {"kept/extra.txt": None})
    real_scan = mirror._scan

    def scan_then_swap(*args: object, **kwargs: object) -> object:
        plan = real_scan(*args, **kwargs)  # type: ignore[arg-type]
        os.rename(dst / "kept", tmp_path / "old-kept")
        make(dst, {"kept/extra.txt": "a new directory the scan never saw"})
        return plan

    monkeypatch.setattr(mirror, "_scan", scan_then_swap)
    result = delete_extraneous(str(src), str(dst))
    assert result.deleted == []
    assert [os.path.relpath(f.path, dst) for f in result.failures] == ["kept"]
    assert (dst / "kept" / "extra.txt").read_text() == "a new directory the scan never saw"


def test_excluded_entries_are_kept(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make(src, {"d/": None})
    make(dst, {"a.keep": None, "b.txt": None, "cache/x": None, "cache/y/z": None, "d/c.keep": None,
               "d/c.txt": None, "old/x.keep": None, "old/y": None, "old/deeper/z": None})
    filters = FilterSet.from_options([("exclude", "*.keep"), ("exclude", "/cache/")])
    result = delete_extraneous(str(src), str(dst), filters=filters)
    assert result.failures == []
    assert set(rels(result, dst)) == {"b.txt", "d/c.txt", "old/y", "old/deeper/z", "old/deeper"}
    # "old" holds a protected file, so it stays (rsync keeps it too); not a failure
    assert sorted(snapshot(dst)) == sorted(["a.keep", "cache", "cache/x", "cache/y", "cache/y/z", "d",
                                            "d/c.keep", "old", "old/x.keep"])


def test_include_overrides_a_later_exclude(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make(src, {})
    make(dst, {"a.log": None, "b.log": None})
    filters = FilterSet.from_options([("include", "a.log"), ("exclude", "*.log")])
    result = delete_extraneous(str(src), str(dst), filters=filters)
    assert rels(result, dst) == ["a.log"]


def test_empty_filterset_behaves_like_none(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    result = delete_extraneous(str(src), str(dst), filters=FilterSet([]), dry_run=True)
    assert set(rels(result, dst)) == EXPECTED_DELETED


@pytest.mark.parametrize(("max_delete", "limited"), [(0, True), (11, True), (12, False), (100, False)])
def test_max_delete(trees: tuple[Path, Path], max_delete: int, limited: bool) -> None:
    src, dst = trees
    assert len(EXPECTED_DELETED) == 12
    before = snapshot(dst)
    result = delete_extraneous(str(src), str(dst), max_delete=max_delete)
    assert result.limited is limited
    assert result.would_delete == 12
    if limited:
        assert result.deleted == []
        assert snapshot(dst) == before
    else:
        assert len(result.deleted) == 12
        assert snapshot(dst) == snapshot(src)


def test_max_delete_with_dry_run(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    result = delete_extraneous(str(src), str(dst), max_delete=3, dry_run=True)
    assert (result.limited, result.deleted, result.would_delete) == (True, [], 12)


def test_negative_max_delete_is_refused(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    with pytest.raises(ValueError, match="max_delete"):
        delete_extraneous(str(src), str(dst), max_delete=-1)


def test_temporary_leftovers_removed_even_when_excluded(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make(src, {"f.txt": None, ".real.pcopy-89abcdef": "a SRC file with a temp-like name"})
    make(dst, {"f.txt": None, ".real.pcopy-89abcdef": "a SRC file with a temp-like name",
               ".f.txt.pcopy-notes": "user file, not a temp name"})
    leftover = temp_path(str(dst / "f.txt"))  # the exact name form a killed run leaves behind
    Path(leftover).write_text("partial")
    filters = FilterSet.from_options([("exclude", ".*")])
    result = delete_extraneous(str(src), str(dst), filters=filters)
    assert result.deleted == [leftover]
    assert (dst / ".real.pcopy-89abcdef").exists()
    assert (dst / ".f.txt.pcopy-notes").exists()


def test_temporary_leftovers_removed_without_filters(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make(src, {"sub/": None, "sub/f": None})
    make(dst, {"sub/f": None})
    leftover = temp_path(str(dst / "sub" / "f"))
    Path(leftover).write_text("partial")
    result = delete_extraneous(str(src), str(dst))
    assert result.deleted == [leftover]
    assert not os.path.exists(leftover)


def test_type_conflicts_are_left_to_the_copy(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    target = tmp_path / "linked"
    make(target, {"k": None})
    make(src, {"was_dir": None, f"sl -> {target}": None})
    make(dst, {"was_dir/inside": None, "sl/k": None, "sl/extra": None})
    result = delete_extraneous(str(src), str(dst))
    # SRC "was_dir" is a file: DST's directory stays as it is (the copy resolves the conflict).
    # SRC "sl" is a symlink to a directory holding "k": judged through it, so only "extra" goes.
    assert rels(result, dst) == ["sl/extra"]
    assert (dst / "was_dir" / "inside").exists()
    assert (dst / "sl" / "k").exists()


def test_missing_dst_means_nothing_to_delete(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    result = delete_extraneous(str(tmp_path / "src"), str(tmp_path / "nope"))
    assert (result.deleted, result.failures, result.would_delete) == ([], [], 0)


def test_src_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    make(tmp_path / "dst", {"keep": None})
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        delete_extraneous(str(tmp_path / "file"), str(tmp_path / "dst"))
    with pytest.raises(FileNotFoundError):
        delete_extraneous(str(tmp_path / "missing"), str(tmp_path / "dst"))
    assert (tmp_path / "dst" / "keep").exists()


def test_src_directory_vanishing_is_not_taken_as_absence(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make(src, {"sub/": None})
    assert mirror._src_state(str(src), "sub", os.path.join("sub", "x")) == mirror._ABSENT
    shutil.rmtree(src / "sub")
    with pytest.raises(OSError):
        mirror._src_state(str(src), "sub", os.path.join("sub", "x"))


def test_failure_is_recorded_and_the_rest_goes_on(
    trees: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = trees
    real_unlink = os.unlink

    def refusing_unlink(path: str, *, dir_fd: int | None = None) -> None:
        if os.path.basename(path) == "c.txt":
            raise PermissionError(13, "Permission denied")
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", refusing_unlink)
    result = delete_extraneous(str(src), str(dst))
    assert [(os.path.relpath(f.path, dst), f.errno) for f in result.failures] == [("gone/a/b/c.txt", 13)]
    assert "cannot delete" in result.failures[0].message
    # its directories stay without ENOTEMPTY reports of their own; everything else went
    assert set(rels(result, dst)) == EXPECTED_DELETED - {"gone/a/b/c.txt", "gone/a/b", "gone/a", "gone"}
    assert (dst / "gone" / "a" / "b" / "c.txt").exists()
    assert not (dst / "gone" / "a" / "d.txt").exists()
    assert not (dst / "gone" / "e").exists()


# ---------------------------------------------------------------- real permission failures

NOBODY = 65534


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """pytest's tmp_path sits under a 0700 directory; uid 65534 needs a path it can reach."""
    path = Path(tempfile.mkdtemp(prefix="pcopy-mirror-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


CAN_DROP_PRIVILEGES = (
    os.geteuid() == 0 and shutil.which("setpriv") is not None and os.path.exists("/usr/bin/python3")
)


@pytest.mark.skipif(not CAN_DROP_PRIVILEGES,
                    reason="needs root, setpriv and /usr/bin/python3 to run as an unprivileged user")
def test_permission_failures_as_unprivileged_user(world_readable_dir: Path, variant: str) -> None:
    base = world_readable_dir
    package = Path(pcopy.__file__).parent
    shutil.copytree(package, base / "lib" / "pcopy", ignore=shutil.ignore_patterns("__pycache__"))
    src, dst = base / "src", base / "dst"
    make(src, {"open/": None, "locked/": None, "private/": None, "private/x": None})
    make(dst, {"open/extra": None, "locked/extra": None, "private/x": None, "private/extra": None,
               "gone/inner/extra": None, "top-extra": None})
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), NOBODY, NOBODY, follow_symlinks=False)
    os.chown(base / "lib", 0, 0)
    # DST "locked" and "gone/inner" belong to root: nobody cannot remove entries inside them.
    # SRC "private" is root's and 0700: nobody cannot tell whether private/extra exists there.
    for path in (dst / "locked", dst / "gone" / "inner", src / "private"):
        os.chown(path, 0, 0)
    (src / "private").chmod(0o700)
    script = (
        "import json, sys\n"
        "from pcopy import mirror\n"
        f"mirror._USE_FD = mirror._USE_FD and {variant == 'fd'}\n"
        "r = mirror.delete_extraneous(sys.argv[1], sys.argv[2])\n"
        "print(json.dumps({'deleted': r.deleted, 'failures': [[f.path, f.errno] for f in r.failures]}))\n"
    )
    proc = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         "/usr/bin/python3", "-c", script, str(src), str(dst)],
        capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(base / "lib"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    deleted = {os.path.relpath(p, dst) for p in out["deleted"]}
    failures = {os.path.relpath(p, dst): err for p, err in out["failures"]}
    assert deleted == {"open/extra", "top-extra"}
    assert failures == {"locked/extra": 13, "gone/inner/extra": 13, "private/x": 13, "private/extra": 13}
    assert (dst / "locked" / "extra").exists() and (dst / "private" / "extra").exists()
    assert (dst / "gone" / "inner" / "extra").exists()
