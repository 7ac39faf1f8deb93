"""Walking, target rules and the in-process engine (-j 1) on pyfakefs' fake file system."""

from __future__ import annotations

import inspect
import os
import sys

import pytest
from pyfakefs.fake_filesystem_unittest import Patcher

from pcopy.config import Config, Method
from pcopy.errors import RefusedError
from pcopy.jobs import CopyOptions, Kind
from pcopy.plan import Planner
from pcopy.runner import run_copy
from pcopy.scan import scan_dir
from pcopy.target import locate


@pytest.fixture
def fake() -> object:
    # pyfakefs does not fake copy_file_range/sendfile; running them on fake descriptor numbers
    # could touch real files, so these tests use the read/write loop only.
    with Patcher() as patcher:
        yield patcher.fs


def _walk(root: str, dereference: bool = False, chunk: int = 256) -> tuple[list[tuple[str, Kind | None]], list[str]]:
    """Drive ScanJobs as the runner does, breadth-first, making DST under /dst: (rel path, DIR for
    directories / None for names the workers will stat), and the paths of listing errors."""
    planner = Planner(Config(batch_files=chunk, dereference=dereference), CopyOptions(dereference=dereference))
    errors: list[str] = []
    entries: list[tuple[str, Kind | None]] = []
    st = os.stat(root)
    os.mkdir("/dst")
    todo = [planner.scan_job(root, "", "/dst", False, False, frozenset({(st.st_dev, st.st_ino)}) if dereference
                             else frozenset())]
    while todo:
        job = todo.pop(0)
        result, here = scan_dir(job, None, None)
        errors += [f.path for f in result.failures]
        for found in result.dirs or ():
            assert os.path.isdir(found.dst) and found.fresh
            entries.append((found.entry.rel, found.entry.kind))
            todo.append(planner.scan_job(found.entry.src, found.entry.rel, found.dst, False, False, found.ancestors))
        chunks = list(result.names or ()) + ([here.names] if here is not None else [])
        for names in chunks:
            assert 0 < len(names) <= chunk
            entries += [(os.path.join(job.rel, name), None) for name in names]
        assert result.listed == sum(map(len, chunks))
    return entries, errors


def test_walk_yields_every_entry_once_dirs_before_contents(fake: object) -> None:
    fs = fake
    fs.create_file("/src/a.txt", contents="a")  # type: ignore[attr-defined]
    fs.create_file("/src/d/b.txt", contents="b")  # type: ignore[attr-defined]
    fs.create_file("/src/d/e/c.txt", contents="c")  # type: ignore[attr-defined]
    fs.create_dir("/src/empty")  # type: ignore[attr-defined]
    fs.create_symlink("/src/d/link", "../a.txt")  # type: ignore[attr-defined]
    entries, errors = _walk("/src")
    rels = [rel for rel, _ in entries]
    assert sorted(rels) == sorted(["a.txt", "d", "d/b.txt", "d/e", "d/e/c.txt", "empty", "d/link"])
    assert len(rels) == len(set(rels))
    for rel in rels:  # every entry comes after its parent directory
        parent = os.path.dirname(rel)
        if parent:
            assert rels.index(parent) < rels.index(rel)
    kinds = dict(entries)
    assert kinds["d/link"] is None and kinds["a.txt"] is None  # not stat'ed by the walk
    assert {rel for rel, kind in entries if kind is Kind.DIR} == {"d", "d/e", "empty"}
    assert errors == []


def test_walk_dereference_follows_links_and_reports_loops(fake: object) -> None:
    fs = fake
    fs.create_file("/src/d/f", contents="x")  # type: ignore[attr-defined]
    fs.create_symlink("/src/d/up", "..")  # type: ignore[attr-defined]
    fs.create_symlink("/src/tofile", "d/f")  # type: ignore[attr-defined]
    fs.create_symlink("/src/dangling", "nowhere")  # type: ignore[attr-defined]
    entries, errors = _walk("/src", dereference=True)
    kinds = dict(entries)
    assert kinds["tofile"] is None and kinds["dangling"] is None  # workers stat (and report) them
    assert "d/up" not in kinds  # its target is an ancestor: a loop, reported, not entered
    assert errors == ["/src/d/up"]


def test_walk_is_not_recursive(fake: object) -> None:
    fs = fake
    deep = "/src/" + "/".join(["d"] * 200)
    fs.create_file(deep + "/leaf", contents="x")  # type: ignore[attr-defined]
    limit = sys.getrecursionlimit()
    # Leave the walk far fewer frames than the tree is deep: a recursive walk would fail.
    sys.setrecursionlimit(len(inspect.stack()) + 60)
    try:
        entries, _ = _walk("/src")
    finally:
        sys.setrecursionlimit(limit)
    assert len(entries) == 201


def test_walk_hands_names_over_in_chunks(fake: object) -> None:
    fs = fake
    for i in range(10):
        fs.create_file(f"/src/f{i}", contents="x")  # type: ignore[attr-defined]
    entries, _ = _walk("/src", chunk=3)  # _walk checks every chunk holds 1..3 names
    assert sorted(rel for rel, _ in entries) == sorted(f"f{i}" for i in range(10))


def test_locate_rules_on_fake_paths(fake: object) -> None:
    fs = fake
    fs.create_file("/a/src/f", contents="x")  # type: ignore[attr-defined]
    fs.create_file("/a/file", contents="y")  # type: ignore[attr-defined]
    fs.create_dir("/b")  # type: ignore[attr-defined]
    fs.create_symlink("/alias", "/a/src")  # type: ignore[attr-defined]
    assert locate("/a/src/", "/b").dst == "/b"
    assert locate("/a/file", "/b").dst == "/b/file"
    assert locate("/a/src", "/a/src.new").dst == "/a/src.new"
    for dst in ("/a/src", "/a/src/inner", "/alias/inner", "/a/file"):
        with pytest.raises(RefusedError):
            locate("/a/src", dst)
    with pytest.raises(RefusedError):
        locate("/missing", "/b")
    with pytest.raises(RefusedError, match="same file"):
        locate("/a/file", "/a")


def test_engine_copies_inline_on_fake_fs(fake: object) -> None:
    fs = fake
    fs.create_file("/src/a.txt", contents="hello", st_mode=0o100640)  # type: ignore[attr-defined]
    fs.create_file("/src/d/big.bin", contents=bytes(range(256)) * 40)  # type: ignore[attr-defined]
    fs.create_dir("/src/empty")  # type: ignore[attr-defined]
    fs.create_symlink("/src/d/link", "../a.txt")  # type: ignore[attr-defined]
    os.utime("/src/a.txt", ns=(1_000_000_123, 2_000_000_456))
    config = Config(jobs=1, method=Method.READWRITE, buffer_bytes=1000, chunk_bytes=3000)
    report = run_copy(locate("/src", "/dst"), config)
    assert report.failures == []
    assert (report.files, report.dirs) == (3, 3)
    with open("/dst/a.txt") as fh:
        assert fh.read() == "hello"
    with open("/dst/d/big.bin", "rb") as fh:  # 10240 bytes, split in 4 ranges of <= 3000
        assert fh.read() == bytes(range(256)) * 40
    assert os.readlink("/dst/d/link") == "../a.txt"
    st = os.stat("/dst/a.txt")
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o640, 2_000_000_456)
    assert os.path.isdir("/dst/empty")
    assert [n for n in os.listdir("/dst/d") if ".pcopy-" in n] == []

    again = run_copy(locate("/src", "/dst"), config)  # up to date: nothing copied
    assert (again.files, again.skipped, again.failures) == (0, 3, [])
