"""Differential test: pcopy.copytree against shutil.copytree on random trees.

Seeded random trees (files, nested and empty directories, symlinks to files and directories,
dangling symlinks, FIFOs) are copied by both functions under every combination of symlinks,
ignore (None or a function), ignore_dangling_symlinks and dirs_exist_ok. With dirs_exist_ok the
destination is pre-populated with existing directories, stale files, extra files and conflicts
(a directory where the source has a file or link, a file where it has a directory), so the
engine's failures and shutil's retry-path messages are compared too. Both results must match:
every entry's type, mode, mtime_ns, bytes and link target, the calls to `ignore`, and the raised
error's class and (srcname, dstname, message) tuples in order. Known shutil bugs where pcopy
chooses differently (see pcopy/dropin.py) are kept out of the random trees and tested one by
one in test_copytree.py: valid links are absolute (gh-91205 is about relative ones), and no
destination symlink sits where the source has a file or link (gh-102931, gh-105919).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pcopy.dropin as pct
from pcopy.dropin import copytree

SEEDS = (1, 2)
FLAGS = list(itertools.product((False, True), repeat=4))  # symlinks, ignore, dangling, exist_ok


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 3 files, so a tree of a few dozen entries is spread over the pool's workers
    rather than copied in line (the engine starts a pool only for more than one job)."""
    original = pct._make_config

    def make(*args: Any) -> Any:
        return dataclasses.replace(original(*args), batch_files=3)

    monkeypatch.setattr(pct, "_make_config", make)


def make_tree(root: Path, seed: int) -> dict[str, str]:
    """A random source tree; returns {rel path: kind} of what it made."""
    rng = random.Random(seed)
    root.mkdir()
    made: dict[str, str] = {}
    dirs = [root]
    for i in range(8):
        parent = rng.choice(dirs)
        d = parent / f"d{i}"
        d.mkdir()
        dirs.append(d)
        made[str(d.relative_to(root))] = "dir"
    files = []
    for i in range(30):
        parent = rng.choice(dirs)
        f = parent / (f"f{i}.skip" if i % 7 == 0 else f"f{i}.txt")
        f.write_bytes(rng.randbytes(rng.choice((0, 10, 500, 3000, 9000))))
        f.chmod(rng.choice((0o644, 0o600, 0o755, 0o444)))
        os.utime(f, ns=(rng.randrange(10**18), rng.randrange(10**18)))
        files.append(f)
        made[str(f.relative_to(root))] = "file"
    for i in range(6):
        parent = rng.choice(dirs)
        link = parent / f"l{i}"
        if i % 3 == 0:
            os.symlink(rng.choice(files), link)  # absolute, to a file
        elif i % 3 == 1:
            # Absolute, to a directory that is not an ancestor: a loop would make both copies
            # recurse until ELOOP, which is slow and tested on its own in test_copytree.py.
            targets = [d for d in dirs[1:] if d != parent and d not in parent.parents]
            os.symlink(rng.choice(targets), link)
        else:
            os.symlink(f"missing-{i}" if i % 2 else f"/nonexistent/pcopy-{seed}-{i}", link)  # dangling
        made[str(link.relative_to(root))] = "link"
    for i in range(2):
        fifo = rng.choice(dirs) / f"p{i}"
        os.mkfifo(fifo)
        made[str(fifo.relative_to(root))] = "fifo"
    (root / "empty").mkdir()
    for d in reversed(dirs[1:]):
        d.chmod(rng.choice((0o755, 0o700, 0o555)))
        os.utime(d, ns=(rng.randrange(10**18), rng.randrange(10**18)))
    return made


def prepopulate(dst: Path, made: dict[str, str], seed: int) -> None:
    """An existing destination: some directories, stale and extra files, and conflicts."""
    rng = random.Random(seed * 1000)
    dst.mkdir()
    for rel, kind in sorted(made.items()):
        target = dst / rel
        if not target.parent.is_dir():
            if rng.random() < 0.5:
                continue
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):  # an ancestor was made a file
                continue
        roll = rng.random()
        if kind == "dir" and roll < 0.6:
            target.mkdir()
        elif kind == "dir" and roll < 0.7:
            target.write_bytes(b"a file where a directory belongs")
        elif kind == "file" and roll < 0.4:
            target.write_bytes(b"stale")
        elif kind in ("file", "link") and roll < 0.5:
            target.mkdir()  # a directory where a file or link belongs
            (target / "inside").write_bytes(b"x")
        if roll > 0.9 and target.parent.is_dir():
            (target.parent / f"extra-{rng.randrange(1000)}").write_bytes(b"extra")
    # Fixed times, so the two destinations compare equal where neither copy touches them.
    for dirpath, dirnames, filenames in os.walk(dst, topdown=False):
        for name in [*filenames, *dirnames, ""]:
            os.utime(os.path.join(dirpath, name), ns=(10**18, 10**18))


def snapshot(root: Path, made: dict[str, str]) -> dict[str, tuple[Any, ...]]:
    """Every entry's type, mode, mtime_ns, bytes or link target. The mtime of a destination
    directory where the source has a file is left out: shutil's failing open(dst, 'wb') on it
    bumps it (and so does pcopy's retry of it through shutil.copy2), at a different moment."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                mtime = st.st_mtime_ns if made.get(rel, "dir") == "dir" else None
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), mtime)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, p.read_bytes())
    st = root.stat()
    out["."] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def run(func: Callable[..., Any], src: Path, dst: Path, flags: tuple[bool, bool, bool, bool],
        **extra: Any) -> tuple[list[tuple[str, list[str]]], Any]:
    symlinks, use_ignore, dangling, exist_ok = flags
    calls: list[tuple[str, list[str]]] = []

    def ignore(path: str, names: list[str]) -> list[str]:
        calls.append((path.replace(str(src), "<src>"), list(names)))
        return [n for n in names if n.endswith(".skip") or n == "d3"]

    try:
        result = func(str(src), str(dst), symlinks=symlinks, ignore=ignore if use_ignore else None,
                      ignore_dangling_symlinks=dangling, dirs_exist_ok=exist_ok, **extra)
        assert result == str(dst)
        outcome: Any = None
    except shutil.Error as err:
        outcome = ("Error", [tuple(normal(x, dst) for x in item) for item in err.args[0]])
    except OSError as err:
        outcome = (type(err).__name__, normal(str(err), dst))
    return calls, outcome


def normal(value: Any, dst: Path) -> str:
    """A tuple item with the destination root made comparable (shutil puts a DirEntry where a
    subdirectory's copystat failed; os.fspath of it is the path)."""
    return str(os.fspath(value)).replace(str(dst), "<dst>")


@pytest.mark.parametrize("seed", SEEDS)
def test_random_trees_match_shutil(tmp_path: Path, seed: int) -> None:
    src = tmp_path / "src"
    made = make_tree(src, seed)
    compared = 0
    for flags in FLAGS:
        exist_ok = flags[3]
        name = "-".join(str(int(f)) for f in flags)
        # Following symlink loops ends where a path crosses 40 links (ELOOP), and right at that
        # limit Linux's answer is not always the same: 40 runs of shutil.copytree alone on seed 2's
        # tree gave 1 error list unlike the others, and pcopy against shutil differed about 1 in
        # 10 times (both before and after 2026-12-02's changes), always an ELOOP for a file or
        # directory the other run copied. So one pair may differ at the limit; agreeing in one
        # of up to three pairs is what counts (a real difference differs every time).
        for attempt in range(3):
            ref, got = tmp_path / f"shutil-{name}-{attempt}", tmp_path / f"pcopy-{name}-{attempt}"
            if exist_ok:
                prepopulate(ref, made, seed)
                prepopulate(got, made, seed)
            ref_calls, ref_outcome = run(shutil.copytree, src, ref, flags)
            got_calls, got_outcome = run(copytree, src, got, flags, jobs=2, chunk_size=4096)
            got_tree, ref_tree = snapshot(got, made), snapshot(ref, made)
            if (got_calls, got_outcome, got_tree) == (ref_calls, ref_outcome, ref_tree):
                break
        assert got_calls == ref_calls, flags
        assert got_outcome == ref_outcome, flags
        assert got_tree == ref_tree, flags
        compared += 1
        # Every combination has something to compare: the FIFOs always fail.
        assert ref_outcome is not None and ref_outcome[0] == "Error"
    assert compared == 16


def test_engine_failures_are_retried_the_shutil_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory where the source has a file makes the engine's rename fail (EISDIR); the
    retry through shutil.copy2 then does what shutil does there: copy2 copies *into* an existing
    directory. FIFO and dangling-link errors keep shutil's order around it."""
    src = tmp_path / "src"
    made = make_tree(src, 3)
    flags = (False, False, False, True)
    ref, got = tmp_path / "ref", tmp_path / "got"
    top_files = sorted(rel for rel, kind in made.items() if kind == "file" and "/" not in rel)
    assert top_files
    for root in (ref, got):
        prepopulate(root, made, 3)
        for rel in top_files[:2]:  # two conflicts the engine cannot resolve
            target = root / rel
            if not target.is_dir():
                target.unlink(missing_ok=True)
                target.mkdir()
    retried: list[str] = []
    original = pct._retry_with_shutil

    def spy(walker: Any, failures: list[Any], *args: Any, **kwargs: Any) -> None:
        retried.extend(os.path.relpath(f.path, src) for f in failures)
        original(walker, failures, *args, **kwargs)

    monkeypatch.setattr(pct, "_retry_with_shutil", spy)
    _, ref_outcome = run(shutil.copytree, src, ref, flags)
    _, got_outcome = run(copytree, src, got, flags, jobs=2, chunk_size=4096)
    assert set(top_files[:2]) <= set(retried)
    messages = [item[2] for item in ref_outcome[1]]
    assert any("No such file" in m for m in messages)
    assert any("named pipe" in m for m in messages)
    assert got_outcome == ref_outcome
    for rel in top_files[:2]:
        assert (got / rel / rel).read_bytes() == (src / rel).read_bytes()
    assert snapshot(got, made) == snapshot(ref, made)
