"""pcopy.opendirs: directories held open for a run, the next one opened relative to the nearest
held ancestor. Each descriptor handed out names the right directory, none leaks, and the held
set stays within its limit, from several threads at once."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pcopy.opendirs import HELD_DIRS, MIN_HELD, OpenDirs, _ancestors, held_limit

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECTORY") or sys.platform == "win32",
                                reason="directories are opened for *at calls on POSIX only")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"))


def same_dir(fd: int, path: Path) -> bool:
    held, there = os.fstat(fd), os.stat(path)
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def in_threads(work: Callable[[int], None], count: int) -> None:
    """work(0) ... work(count - 1), each on a thread of its own, all at once."""
    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def check_open(dirs: OpenDirs, path: Path, wrong: list[Path]) -> None:
    """Open path through dirs; a descriptor of anything else (or none) goes to wrong."""
    fd = dirs.open(str(path))
    if fd is None or not same_dir(fd, path):
        wrong.append(path)
    if fd is not None:
        os.close(fd)


def test_ancestors_from_the_top() -> None:
    assert _ancestors("/a/b") == ["/", "/a", "/a/b"]
    assert _ancestors("a/b/") == ["a", "a/b"]
    assert _ancestors("/") == ["/"]


def test_each_component_is_held_and_the_next_directory_starts_below(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (tmp_path / "a" / "b" / "d").mkdir()
    dirs = OpenDirs()
    fd = dirs.open(str(deep))
    assert fd is not None and same_dir(fd, deep)
    os.close(fd)
    assert {str(tmp_path / "a"), str(tmp_path / "a" / "b"), str(deep)} <= set(dirs.held)
    # Renamed away, a/b's held descriptor still names the directory it opened: d is found
    # through it (no path resolution from the top), the proof that it was used.
    os.rename(tmp_path / "a", tmp_path / "moved")
    fd = dirs.open(str(tmp_path / "a" / "b" / "d"))
    assert fd is not None and same_dir(fd, tmp_path / "moved" / "b" / "d")
    os.close(fd)
    dirs.clear()
    assert dirs.open(str(tmp_path / "a" / "b" / "d")) is None  # gone from the path once let go


def test_relative_paths_and_trailing_separators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x" / "y").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    dirs = OpenDirs()
    for path in ("x/y/", "x/y", "x"):
        fd = dirs.open(path)
        assert fd is not None and same_dir(fd, tmp_path / path)
        os.close(fd)
    assert set(dirs.held) == {"x", "x/y"}
    dirs.clear()


def test_no_descriptor_leaks_and_the_limit_holds(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / f"d{i}" / "sub").mkdir(parents=True)
    before = open_fds()
    dirs = OpenDirs(limit=5)
    for i in range(20):
        fd = dirs.open(str(tmp_path / f"d{i}" / "sub"))
        assert fd is not None and same_dir(fd, tmp_path / f"d{i}" / "sub")
        os.close(fd)
        assert len(dirs.held) <= 5
    assert dirs.open(str(tmp_path / "missing" / "sub")) is None
    assert dirs.open(str(tmp_path / "d0" / "sub" / "missing")) is None
    (tmp_path / "file").write_text("")
    assert dirs.open(str(tmp_path / "file")) is None  # not a directory
    assert open_fds() == before + len(dirs.held)
    dirs.clear()
    assert open_fds() == before and not dirs.held


def test_clear_goes_on_past_a_descriptor_already_gone(tmp_path: Path) -> None:
    """(As under pyfakefs, whose os.close knows no real descriptor, after a real copy in the
    same process.)"""
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    dirs = OpenDirs(limit=5)
    for name in ("a", "b", "c"):
        fd = dirs.open(str(tmp_path / name))
        assert fd is not None
        os.close(fd)
    before, held = open_fds(), len(dirs.held)
    os.close(dirs.held[str(tmp_path / "b")])
    dirs.clear()
    assert not dirs.held and open_fds() == before - held


def test_threads_at_once(tmp_path: Path) -> None:
    paths = [tmp_path / f"t{i % 7}" / f"s{i % 5}" / f"u{i % 3}" for i in range(60)]
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
    before = open_fds()
    dirs = OpenDirs(limit=8)  # small: eviction races with opening relative to what is evicted
    wrong: list[Path] = []

    def work(offset: int) -> None:
        for k in range(200):
            check_open(dirs, paths[(k * 7 + offset) % len(paths)], wrong)

    in_threads(work, 8)
    assert not wrong
    assert len(dirs.held) <= 8
    dirs.clear()
    assert open_fds() == before


def test_threads_reaching_the_same_new_directories_open_each_once(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """On slow storage every open is a round trip: threads that need the same directories at
    once wait for the one opening each, instead of opening it too. Every open here takes 20 ms;
    16 threads, 4 leaves under one new chain."""
    leaves = [tmp_path / "a" / "b" / "c" / f"d{i}" for i in range(4)]
    for leaf in leaves:
        leaf.mkdir(parents=True)
    dirs = OpenDirs()
    top = dirs.open(str(tmp_path))  # (held: the chain below it is what the threads race for)
    assert top is not None
    os.close(top)
    real_open = os.open
    opened: list[str] = []
    lock = threading.Lock()

    def slow_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        with lock:
            opened.append(os.fsdecode(path))
        time.sleep(0.02)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", slow_open)
    wrong: list[Path] = []
    start = threading.Barrier(16)

    def work(n: int) -> None:
        start.wait()
        check_open(dirs, leaves[n % 4], wrong)

    in_threads(work, 16)
    monkeypatch.undo()
    assert not wrong
    assert sorted(opened) == ["a", "b", "c", "d0", "d1", "d2", "d3"], opened
    dirs.clear()


def test_a_directory_that_cannot_be_opened_fails_every_thread_waiting_for_it(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    dirs = OpenDirs()
    real_open = os.open

    def refused(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fsdecode(path) == "a":
            time.sleep(0.02)
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    results: list[int | None] = []
    in_threads(lambda _n: results.append(dirs.open(str(tmp_path / "a" / "b"))), 6)
    monkeypatch.undo()
    assert results == [None] * 6 and not dirs.opening
    dirs.clear()


def test_an_opener_that_never_finishes_is_given_up_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread stopped in its clean-up (a second stop signal) may never say it is done: the
    threads waiting for that directory open it themselves after OPEN_WAIT_S, not never."""
    import pcopy.opendirs

    (tmp_path / "a").mkdir()
    dirs = OpenDirs()
    top = dirs.open(str(tmp_path))
    assert top is not None
    os.close(top)
    dirs.opening[str(tmp_path / "a")] = threading.Event()  # an opener that went away
    monkeypatch.setattr(pcopy.opendirs, "OPEN_WAIT_S", 0.05)
    started = time.monotonic()
    fd = dirs.open(str(tmp_path / "a"))
    assert fd is not None and same_dir(fd, tmp_path / "a")
    assert 0.05 <= time.monotonic() - started < 5
    os.close(fd)
    assert not dirs.opening
    dirs.clear()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_worker_starts_empty_even_with_the_lock_held_at_the_fork(tmp_path: Path) -> None:
    """A pool worker (respawned mid-run too) is forked while a thread of the parent may be in
    HELD.open: the child must neither inherit the lock held nor the parent's descriptors."""
    from pcopy.opendirs import HELD

    fd = HELD.open(str(tmp_path))
    assert fd is not None
    os.close(fd)
    with HELD.lock:  # as the parent's thread would hold it
        pid = os.fork()
        if pid == 0:  # the child: exit 0 if it can use HELD at once and holds nothing inherited
            fresh = not HELD.held
            child_fd = HELD.open(str(tmp_path))
            os._exit(0 if fresh and child_fd is not None else 1)
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the lock its parent held")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    HELD.clear()


def test_no_descriptor_to_be_had_means_none_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EMFILE on a duplicate: the caller falls back to full paths (None), nothing leaks."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    dirs = OpenDirs()
    fd = dirs.open(str(tmp_path / "a"))
    assert fd is not None
    os.close(fd)
    before = open_fds()

    def no_more(_fd: int) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "dup", no_more)
    assert dirs.open(str(tmp_path / "a")) is None  # held: its duplicate fails
    assert dirs.open(str(tmp_path / "a" / "b")) is None  # below a held one
    monkeypatch.undo()
    assert open_fds() <= before + 1  # (b may be held: opened before its duplicate failed)
    dirs.clear()


def test_held_limit_follows_the_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A quarter of the soft limit, between MIN_HELD and HELD_DIRS; and the threads a worker may
    grow leave the held directories their descriptors (64 allows 16 held and 4 threads)."""
    resource = pytest.importorskip("resource")
    import pcopy.threads

    for soft, held in ((64, MIN_HELD), (256, 64), (1024, HELD_DIRS), (1 << 20, HELD_DIRS),
                       (resource.RLIM_INFINITY, HELD_DIRS)):
        monkeypatch.setattr(resource, "getrlimit", lambda _kind, soft=soft: (soft, soft))
        assert held_limit() == held, soft
        monkeypatch.setattr(pcopy.threads, "HELD", OpenDirs(held))
        threads = pcopy.threads.max_threads()
        if soft != resource.RLIM_INFINITY:  # descriptors for every thread, the held ones and the rest
            assert threads * pcopy.threads.FDS_PER_THREAD + held + pcopy.threads.FDS_KEPT <= soft, soft
    monkeypatch.setattr(resource, "getrlimit", lambda _kind: (64, 64))
    monkeypatch.setattr(pcopy.threads, "HELD", OpenDirs(held_limit()))
    assert pcopy.threads.max_threads() == 4


@pytest.mark.parametrize("dereference", [False, True])
def test_a_directory_listed_from_its_descriptor_lists_as_by_its_path(tmp_path: Path, dereference: bool) -> None:
    """pcopy.scan lists a directory from the (O_PATH) descriptor its job holds: the same names,
    kinds and exclusions as a listing by path."""
    from pcopy.walk import list_dir

    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(b"x")
    for name in ("d1", "d2", "skip"):
        (tmp_path / name).mkdir()
    os.symlink("d1", tmp_path / "to_dir")
    os.symlink("a", tmp_path / "to_file")
    os.mkfifo(tmp_path / "fifo")
    errors: list[str] = []

    def listed(dir_fd: int | None) -> tuple[list[str], list[str]]:
        names, dirs = list_dir(str(tmp_path), "rel", dereference=dereference,
                               on_error=lambda path, exc: errors.append(path),
                               excluded=lambda rel, is_dir: rel == "rel/skip", dir_fd=dir_fd)
        return sorted(names), sorted(dirs)

    held = OpenDirs()
    fd = held.open(str(tmp_path))
    assert fd is not None
    try:
        by_fd = listed(fd)
    finally:
        os.close(fd)
        held.clear()
    assert by_fd == listed(None) == (["a", "b", "c", "fifo"] + ([] if dereference else ["to_dir"]) + ["to_file"],
                                     ["d1", "d2"] + (["to_dir"] if dereference else []))
    assert errors == []
