"""A DirJob from a SRC that caches no names (on one of CopyOptions.lookup_devs) into a new
directory (pcopy.worker._Opened): each name stat'ed and copied in one pass, from one O_PATH
lookup of it, instead of a stat phase and a copy phase. Here SRC's own device stands in for
such a mount (its stats then take the attributes the kernel holds, which on a local file
system are always current).
Whatever a name turns out to be, the result must be the two phases' own: the same entries
copied the same way, the same ones handed back to the parent, the same failures, the same
counts on the bar."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import SYSTEM_PYTHON, Nobody
from treeutil import assert_same_tree, snapshot, temp_leftovers

from pcopy import lookupstat, worker
from pcopy.jobs import CopyOptions, DirJob, JobResult
from pcopy.opendirs import HELD

pytestmark = pytest.mark.skipif(not worker._REOPEN or not lookupstat._load_api(),
                                reason="the one pass needs O_PATH, /proc/self/fd and statx (Linux)")

SPLIT = 64 * 1024  # files larger than this are handed back (byte ranges)


class Queue:
    def __init__(self) -> None:
        self.items: list[tuple[int, int, int, int]] = []

    def put(self, item: Any) -> None:
        self.items.append(item)

    def sums(self) -> tuple[int, ...]:
        return tuple(sum(column) for column in zip(*self.items, strict=True)) if self.items else (0, 0, 0, 0)


def make_names(src: Path) -> tuple[str, ...]:
    """One of everything a directory's non-directory names can be."""
    src.mkdir()
    for i in range(40):  # the lean path's files, 0 bytes included
        (src / f"small{i:02d}").write_bytes(os.urandom(i * 97))
    (src / "large").write_bytes(os.urandom(SPLIT + 1))
    (src / "linked").write_bytes(b"two names")
    os.link(src / "linked", src / "linked2")
    (src / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "setuid", 0o4755)  # (not a mode a file is created with: the general path)
    with open(src / "sparse", "wb") as f:
        f.truncate(SPLIT // 2)
        f.write(b"head")
    os.symlink("small01", src / "link")
    os.symlink("nowhere", src / "dangling")
    os.mkfifo(src / "fifo")  # opened for reading, it would block this test for ever
    return (*sorted(os.listdir(src)), "vanished")  # (listed, then gone before its stat)


def run(src: Path, dst: Path, names: tuple[str, ...], *, job_bytes: int = 1 << 40,
        dereference: bool = False) -> tuple[JobResult, Queue]:
    dst.mkdir()
    queue = Queue()
    options = CopyOptions(read_threads=2, lookup_devs=(os.stat(src).st_dev,), dereference=dereference)
    try:
        result = worker.run_job(DirJob(1, str(src), str(dst), names, False, SPLIT, job_bytes, True, options), queue)
    finally:
        HELD.clear()  # the job's directories, held for the rest of this process otherwise
    return result, queue


def outcome(result: JobResult, root: Path) -> tuple[Any, ...]:
    return (result.files, result.bytes,
            sorted((os.path.relpath(t.src, root), t.size) for t in result.handed_back),
            sorted((os.path.relpath(f.path, root), f.errno, f.step) for f in result.failures))


@pytest.mark.parametrize("dereference", [False, True])
def test_one_pass_does_what_the_two_phases_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              dereference: bool) -> None:
    src = tmp_path / "src"
    names = make_names(src)
    before = snapshot(src)
    passes = []
    real = worker._Opened.copy

    def counted(self: Any, name: str, part: JobResult) -> None:
        passes.append(name)
        real(self, name, part)

    monkeypatch.setattr(worker._Opened, "copy", counted)
    with monkeypatch.context() as patched:
        patched.setattr(worker, "_REOPEN", False)  # (as on a platform without it: the two phases)
        two, two_queue = run(src, tmp_path / "two", names, dereference=dereference)
    assert passes == []
    one, one_queue = run(src, tmp_path / "one", names, dereference=dereference)
    assert sorted(passes) == sorted(names)

    assert outcome(one, tmp_path / "one") == outcome(two, tmp_path / "two")
    handed = {os.path.basename(t.src) for t in one.handed_back}
    assert handed == {"large", "linked", "linked2"}
    failed = {os.path.basename(f.path): f.errno for f in one.failures}
    assert failed == ({"vanished": 2, "dangling": 2} if dereference else {"vanished": 2})
    left_out = [b""] + [os.fsencode(n) for n in handed | set(failed)]  # (b"": made by the test)
    if not dereference:
        assert_same_tree(before, tmp_path / "one", skip=left_out, atime=False)  # (the reads moved them)
    assert_same_tree(tmp_path / "two", tmp_path / "one", skip=[b""], atime=False)  # (either way)
    assert temp_leftovers(tmp_path / "one") == []
    unread = {rel: dataclasses.replace(node, atime_ns=0) for rel, node in snapshot(src).items()}
    assert unread == {rel: dataclasses.replace(node, atime_ns=0) for rel, node in before.items()}
    if dereference:
        assert stat.S_ISREG(os.lstat(tmp_path / "one" / "link").st_mode)
    # The bar: every name sized once, the same bytes found (those handed back included).
    assert one_queue.sums()[2:] == two_queue.sums()[2:]
    assert one_queue.sums()[3] == len(names)


def test_the_byte_budget_hands_back_what_does_not_fit(tmp_path: Path) -> None:
    """A job copies up to job_bytes, in the order its files come (empty files always fit); the
    others go back to the parent, each exactly once."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i:02d}").write_bytes(os.urandom(1000))
    (src / "empty").touch()
    names = tuple(sorted(os.listdir(src)))
    result, queue = run(src, tmp_path / "dst", names, job_bytes=10_500)
    copied = {n for n in names if (tmp_path / "dst" / n).exists()}
    handed = {os.path.basename(t.src) for t in result.handed_back}
    assert len(copied - {"empty"}) == 10 and "empty" in copied, copied
    assert copied | handed == set(names) and not copied & handed and not result.failures
    assert result.bytes == 10_000
    assert queue.sums()[2:] == (30_000, len(names))


def test_an_unreadable_file_fails_alone_as_it_does_by_name(nobody: Nobody, world_tmp: Path) -> None:
    """Reopening through /proc/self/fd checks the file's permissions as an open by name does
    (root reads everything: run as uid 65534)."""
    src, dst = world_tmp / "src", world_tmp / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "secret").write_bytes(b"no")
    (src / "open").write_bytes(b"yes")
    for path in (src, dst, src / "secret", src / "open"):
        nobody.own(path)
    os.chmod(src / "secret", 0)
    script = ("import os, sys; from pcopy import worker; from pcopy.jobs import CopyOptions, DirJob\n"
              "passes = []; one = worker._Opened.copy\n"
              "worker._Opened.copy = lambda self, name, part: (passes.append(name), one(self, name, part))\n"
              "r = worker.run_job(DirJob(1, sys.argv[1], sys.argv[2], ('open', 'secret'), False, 1 << 20, 1 << 40, "
              "True, CopyOptions(read_threads=2, lookup_devs=(os.stat(sys.argv[1]).st_dev,))))\n"
              "print(r.files, [(f.path.rsplit('/', 1)[1], f.errno, f.step) for f in r.failures], len(passes))")
    run = subprocess.run(["setpriv", f"--reuid={nobody.uid}", f"--regid={nobody.gid}", "--clear-groups",
                          SYSTEM_PYTHON, "-c", script, str(src), str(dst)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(nobody.pythonpath), "PATH": "/usr/bin:/bin"}, cwd="/",
                         timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "1 [('secret', 13, 'open')] 2\n", run.stdout  # (2: both names in one pass)
    assert (dst / "open").read_bytes() == b"yes" and not (dst / "secret").exists()
    assert temp_leftovers(dst) == []
