"""Planning on plain records: batching, byte-range splitting, hard links, target resolution."""

from __future__ import annotations

import stat

import pytest

from pcopy.config import Config, Method, parse_size
from pcopy.errors import RefusedError
from pcopy.jobs import BatchJob, Kind
from pcopy.plan import Planner, SplitFile, options_for, split_ranges
from pcopy.target import PathInfo, resolve_target
from pcopy.walk import Entry


def entry(name: str, size: int = 10, kind: Kind = Kind.FILE, ino: int = 0, nlink: int = 1,
          blocks: int | None = None) -> Entry:
    mode = (stat.S_IFREG if kind is Kind.FILE else stat.S_IFLNK) | 0o644
    return Entry(src=f"/s/{name}", rel=name, kind=kind, size=size, mode=mode, uid=0, gid=0,
                 atime_ns=1, mtime_ns=2, dev=1, ino=ino, nlink=nlink, blocks=blocks)


def planner(**kw: object) -> Planner:
    config = Config(jobs=2, **kw)  # type: ignore[arg-type]
    return Planner(config, options_for(config, preserve_owner=False))


def test_small_files_are_batched_by_count() -> None:
    p = planner(batch_files=3, batch_bytes=1 << 30)
    ready = [job for i in range(7) for job in p.add(entry(f"f{i}"), f"/d/f{i}", check_dst=False)]
    ready += p.flush()
    assert [len(j.tasks) for j in ready if isinstance(j, BatchJob)] == [3, 3, 1]
    assert len({j.job_id for j in ready if isinstance(j, BatchJob)}) == 3
    assert [t.dst for j in ready if isinstance(j, BatchJob) for t in j.tasks] == [f"/d/f{i}" for i in range(7)]


def test_batch_closes_on_bytes() -> None:
    p = planner(batch_files=1000, batch_bytes=100, chunk_bytes=1000)
    first = p.add(entry("a", 60), "/d/a", False)
    second = p.add(entry("b", 60), "/d/b", False)
    assert first == []
    assert len(second) == 1 and isinstance(second[0], BatchJob) and len(second[0].tasks) == 2
    assert p.flush() == []


def test_large_file_becomes_split_file_and_is_not_batched() -> None:
    p = planner(chunk_bytes=100)
    out = p.add(entry("big", 101), "/d/big", True)
    assert len(out) == 1 and isinstance(out[0], SplitFile)
    assert out[0].task.size == 101 and out[0].task.check_dst
    assert p.add(entry("edge", 100), "/d/edge", True) == []  # exactly chunk size stays whole
    assert p.flush()[0].tasks[0].dst == "/d/edge"  # type: ignore[union-attr]


def test_split_ranges_cover_segments_exactly() -> None:
    assert split_ranges([(0, 250)], 100) == [(0, 100), (100, 100), (200, 50)]
    assert split_ranges([(0, 100)], 100) == [(0, 100)]
    assert split_ranges([(10, 5), (1000, 150)], 100) == [(10, 5), (1000, 100), (1100, 50)]
    assert split_ranges([], 100) == []


def test_hard_links_become_link_records_after_first_name() -> None:
    p = planner()
    p.add(entry("a", ino=7, nlink=2), "/d/a", False)
    assert p.add(entry("b", ino=7, nlink=2), "/d/b", False) == []
    jobs = p.flush()
    assert [t.dst for t in jobs[0].tasks] == ["/d/a"]  # type: ignore[union-attr]
    assert [(link.dst, link.first_dst) for link in p.links] == [("/d/b", "/d/a")]


def test_hard_links_can_be_turned_off() -> None:
    p = planner(preserve_hard_links=False)
    p.add(entry("a", ino=7, nlink=2), "/d/a", False)
    p.add(entry("b", ino=7, nlink=2), "/d/b", False)
    assert len(p.flush()[0].tasks) == 2  # type: ignore[union-attr]
    assert p.links == []


def test_sparse_is_detected_from_blocks() -> None:
    p = planner()
    p.add(entry("holey", 1 << 20, blocks=8), "/d/h", False)
    p.add(entry("dense", 4096, blocks=8), "/d/d", False)
    tasks = p.flush()[0].tasks  # type: ignore[union-attr]
    assert [t.sparse for t in tasks] == [True, False]


def test_options_follow_config() -> None:
    assert options_for(Config(jobs=1, method=Method.READWRITE, buffer_bytes=1024), False).use_fast_paths is False
    assert options_for(Config(jobs=1), True).preserve_owner is True


@pytest.mark.parametrize(("text", "value"), [
    ("1048576", 1048576), ("64K", 64 << 10), ("8M", 8 << 20), ("1G", 1 << 30), ("2k", 2048), ("4MiB", 4 << 20),
])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "0", "1.5", "0.1K", "12X"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_config_rejects_zero_jobs() -> None:
    with pytest.raises(ValueError):
        Config(jobs=0)


# -- target resolution on records ----------------------------------------------------------------

def info(given: str, real: str | None = None, kind: Kind | None = None, ino: int = 0, **kw: object) -> PathInfo:
    return PathInfo(given=given, abspath=given.rstrip("/") or "/", realpath=real or given.rstrip("/"),
                    kind=kind, lexists=kind is not None or bool(kw.pop("lexists", False)),
                    dev=1, ino=ino, ends_with_sep=given.endswith("/"), **kw)  # type: ignore[arg-type]


def test_dir_into_new_dst() -> None:
    t = resolve_target(info("/a/src", kind=Kind.DIR, ino=1), info("/b/dst"))
    assert (t.src, t.dst, t.src_kind) == ("/a/src", "/b/dst", Kind.DIR)


def test_dir_merges_into_existing_dir_never_nested() -> None:
    t = resolve_target(info("/a/src/", kind=Kind.DIR, ino=1), info("/b/dst", kind=Kind.DIR, ino=2))
    assert t.dst == "/b/dst"


@pytest.mark.parametrize(("dst", "real"), [
    ("/a/src", "/a/src"), ("/a/src/sub", "/a/src/sub"), ("/alias/sub", "/a/src/sub"), ("/alias", "/a/src"),
])
def test_dst_inside_or_equal_src_is_refused(dst: str, real: str) -> None:
    with pytest.raises(RefusedError):
        resolve_target(info("/a/src", kind=Kind.DIR, ino=1), info(dst, real=real))


def test_sibling_with_common_prefix_is_not_inside() -> None:
    t = resolve_target(info("/a/src", kind=Kind.DIR, ino=1), info("/a/src.new"))
    assert t.dst == "/a/src.new"


def test_dir_onto_file_is_refused() -> None:
    with pytest.raises(RefusedError, match="non-directory"):
        resolve_target(info("/a/src", kind=Kind.DIR, ino=1), info("/b/f", kind=Kind.FILE, ino=2))


def test_missing_or_unreadable_src_is_refused() -> None:
    with pytest.raises(RefusedError, match="does not exist"):
        resolve_target(info("/nope"), info("/b"))
    with pytest.raises(RefusedError, match="Permission denied"):
        resolve_target(info("/a", kind=Kind.FILE, ino=1, error="Permission denied"), info("/b"))


def test_file_into_dir_goes_to_dir_slash_name() -> None:
    src = info("/a/f.txt", kind=Kind.FILE, ino=1)
    t = resolve_target(src, info("/b", kind=Kind.DIR, ino=2), inner=info("/b/f.txt"))
    assert t.dst == "/b/f.txt"
    t = resolve_target(src, info("/new/"), inner=info("/new/f.txt"))
    assert t.dst == "/new/f.txt"


def test_same_file_is_refused() -> None:
    src = info("/a/f", kind=Kind.FILE, ino=5)
    with pytest.raises(RefusedError, match="same file"):
        resolve_target(src, info("/a/hardlink", kind=Kind.FILE, ino=5))
    with pytest.raises(RefusedError, match="same file"):
        resolve_target(src, info("/a", kind=Kind.DIR, ino=9), inner=info("/a/f", kind=Kind.FILE, ino=5))


def test_symlinked_src_file_is_read_through_its_real_path() -> None:
    src = PathInfo("/a/link", "/a/link", "/real/f", Kind.FILE, True, True, 1, 3)
    assert resolve_target(src, info("/b/f")).src == "/real/f"


def test_dir_job_carries_names_and_limits() -> None:
    from pcopy.jobs import DirJob
    from pcopy.walk import Names

    p = planner(chunk_bytes=1000, batch_bytes=5000)
    job = p.dir_job(Names("/s/d", "d", ("a", "b")), "/t/d", check_dst=False)
    assert isinstance(job, DirJob)
    assert (job.src_dir, job.dst_dir, job.names, job.check_dst) == ("/s/d", "/t/d", ("a", "b"), False)
    assert (job.split_bytes, job.job_bytes, job.hand_back_links) == (1000, 5000, True)
    assert p.dir_job(Names("/s", "", ("c",)), "/t", True).job_id != job.job_id


def test_handed_back_tasks_are_split_or_linked() -> None:
    from pcopy.plan import entry_task

    p = planner(chunk_bytes=100)
    big = entry_task(entry("big", 500), "/d/big", True)
    assert [type(j) for j in p.add_task(big)] == [SplitFile]
    first = entry_task(entry("a", 10, ino=3, nlink=2), "/d/a", True)
    second = entry_task(entry("b", 10, ino=3, nlink=2), "/d/b", True)
    assert p.add_task(first) == [] and p.add_task(second) == []
    assert [t.dst for t in p.flush()[0].tasks] == ["/d/a"]  # type: ignore[union-attr]
    assert [(link.dst, link.first_dst) for link in p.links] == [("/d/b", "/d/a")]
