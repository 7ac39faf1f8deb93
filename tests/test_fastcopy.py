"""The fast-copy chain, one syscall at a time made to fail (as CPython's zero-copy tests do)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pcopy.worker
from pcopy import fastcopy
from pcopy.config import Config
from pcopy.fastcopy import copy_range, data_segments
from pcopy.runner import run_copy
from pcopy.target import locate

DATA = os.urandom(300_000)


@pytest.fixture
def fds(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    src = tmp_path / "src"
    src.write_bytes(DATA)
    dst = tmp_path / "dst"
    s = os.open(src, os.O_RDONLY)
    d = os.open(dst, os.O_RDWR | os.O_CREAT, 0o600)
    yield s, d, dst
    os.close(s)
    os.close(d)


def _copy(s: int, d: int, fast: bool = True, length: int | None = None, offset: int = 0) -> tuple[int, int]:
    calls = []
    n = copy_range(s, d, offset, length, use_fast_paths=fast, buffer_bytes=4096, on_bytes=calls.append)
    return n, sum(calls)


def _fail_with(code: int) -> Any:
    def fail(*args: object, **kwargs: object) -> int:
        raise OSError(code, os.strerror(code))
    return fail


def test_default_chain_copies_everything(fds: tuple[int, int, Path]) -> None:
    s, d, dst = fds
    assert _copy(s, d) == (len(DATA), len(DATA))
    assert dst.read_bytes() == DATA


@pytest.mark.skipif(not hasattr(os, "copy_file_range"), reason="no copy_file_range here")
def test_copy_file_range_unsupported_falls_back_to_sendfile(fds: tuple[int, int, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    s, d, dst = fds
    monkeypatch.setattr(os, "copy_file_range", _fail_with(errno.EXDEV))
    used = []
    real_sendfile = os.sendfile
    monkeypatch.setattr(os, "sendfile", lambda *a: used.append(1) or real_sendfile(*a))
    assert _copy(s, d)[0] == len(DATA)
    assert dst.read_bytes() == DATA
    assert used or not fastcopy._HAS_SENDFILE_TO_FILE


def test_all_fast_paths_unsupported_fall_back_to_read_write(fds: tuple[int, int, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    s, d, dst = fds
    monkeypatch.setattr(os, "copy_file_range", _fail_with(errno.ENOSYS), raising=False)
    monkeypatch.setattr(os, "sendfile", _fail_with(errno.EINVAL), raising=False)
    assert _copy(s, d) == (len(DATA), len(DATA))
    assert dst.read_bytes() == DATA


@pytest.mark.parametrize("name", ["copy_file_range", "sendfile"])
def test_enospc_is_raised_not_fallen_back(fds: tuple[int, int, Path], monkeypatch: pytest.MonkeyPatch,
                                          name: str) -> None:
    s, d, _ = fds
    if name == "sendfile":
        monkeypatch.setattr(os, "copy_file_range", _fail_with(errno.ENOSYS), raising=False)
    monkeypatch.setattr(os, name, _fail_with(errno.ENOSPC), raising=False)
    read_calls = []
    monkeypatch.setattr(fastcopy, "_copy_loop", lambda *a: read_calls.append(a) or 0)
    with pytest.raises(OSError) as info:
        _copy(s, d)
    assert info.value.errno == errno.ENOSPC
    assert read_calls == []


@pytest.mark.skipif(not hasattr(os, "copy_file_range"), reason="no copy_file_range here")
def test_error_after_partial_write_is_raised(fds: tuple[int, int, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    s, d, _ = fds
    real = os.copy_file_range
    calls = []

    def flaky(*args: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            return real(args[0], args[1], 1000, *args[3:])
        raise OSError(errno.EXDEV, "cross-device")  # would be "unsupported" if nothing was written

    monkeypatch.setattr(os, "copy_file_range", flaky)
    with pytest.raises(OSError):
        _copy(s, d)


@pytest.mark.skipif(not hasattr(os, "copy_file_range"), reason="no copy_file_range here")
def test_zero_from_kernel_path_means_read_for_real(fds: tuple[int, int, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # procfs-like files report size 0 and make copy_file_range/sendfile return 0 at once.
    s, d, dst = fds
    monkeypatch.setattr(os, "copy_file_range", lambda *a: 0)
    monkeypatch.setattr(os, "sendfile", lambda *a: 0)
    assert _copy(s, d)[0] == len(DATA)
    assert dst.read_bytes() == DATA


@pytest.mark.parametrize("fast", [True, False])
def test_ranges_land_at_their_offsets(fds: tuple[int, int, Path], fast: bool) -> None:
    s, d, dst = fds
    os.ftruncate(d, len(DATA))
    for offset in range(0, len(DATA), 70_000)[::-1]:  # out of order, as workers finish
        _copy(s, d, fast=fast, offset=offset, length=min(70_000, len(DATA) - offset))
    assert dst.read_bytes() == DATA


def test_copy_stops_at_eof_when_source_is_shorter(fds: tuple[int, int, Path]) -> None:
    s, d, _ = fds
    assert _copy(s, d, offset=len(DATA) - 10, length=100)[0] == 10


def test_data_segments_skip_holes(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as fh:
        fh.truncate(64 << 20)
        fh.seek(32 << 20)
        fh.write(b"x" * 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        segments = list(data_segments(fd, 0, 64 << 20))
    finally:
        os.close(fd)
    assert sum(length for _, length in segments) < 1 << 20 or not fastcopy._HAS_SEEK_DATA
    assert any(off <= 32 << 20 < off + length for off, length in segments)


@pytest.mark.skipif(not hasattr(os, "copy_file_range"), reason="no copy_file_range here")
def test_a_short_first_call_continues_where_it_stopped(fds: tuple[int, int, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    s, d, dst = fds
    real = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", lambda a, b, count, *rest: real(a, b, min(count, 1000), *rest))
    assert _copy(s, d) == (len(DATA), len(DATA))
    assert dst.read_bytes() == DATA


def test_copy_positional_writes_its_range_only(fds: tuple[int, int, Path]) -> None:
    s, d, dst = fds
    os.ftruncate(d, len(DATA))
    seen: list[int] = []
    assert fastcopy.copy_positional(s, d, 1000, 200_000, seen.append, buffer_bytes=65536) == 200_000
    assert sum(seen) == 200_000 and max(seen) <= 65536
    data = dst.read_bytes()
    assert data[1000:201_000] == DATA[1000:201_000]
    assert data[:1000] == bytes(1000) and data[201_000:] == bytes(len(DATA) - 201_000)
    # A source that ends early: only what is there, no error (the caller compares the count).
    assert fastcopy.copy_positional(s, d, len(DATA) - 10, 100, seen.append) == 10


@pytest.mark.skipif(not hasattr(os, "copy_file_range"), reason="no copy_file_range here")
def test_copy_file_range_works_is_answered_by_copying_the_first_byte(fds: tuple[int, int, Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    s, d, dst = fds
    assert fastcopy.copy_file_range_works(s, d) is True
    assert dst.read_bytes() == DATA[:1]
    monkeypatch.setattr(os, "copy_file_range", _fail_with(errno.EXDEV))
    assert fastcopy.copy_file_range_works(s, d) is False
    monkeypatch.setattr(os, "copy_file_range", _fail_with(errno.EIO))
    with pytest.raises(OSError):
        fastcopy.copy_file_range_works(s, d)  # a real error is not "unsupported"


@pytest.mark.skipif(not hasattr(os, "copy_file_range"), reason="no copy_file_range here")
@pytest.mark.parametrize("in_kernel", [True, False])
def test_ranges_are_copied_in_kernel_only_where_copy_file_range_works(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      in_kernel: bool) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(100_000)
    (src / "big").write_bytes(data)
    if not in_kernel:  # as between ext4 and tmpfs
        monkeypatch.setattr(os, "copy_file_range", _fail_with(errno.EXDEV))
    ranges: list[tuple[int, int, bool]] = []
    positional: list[int] = []
    real_range, real_positional = pcopy.worker._run_range, pcopy.worker.copy_positional

    def recording(job: Any, progress: Any) -> Any:
        ranges.append((job.offset, job.length, job.in_kernel))
        return real_range(job, progress)

    def counting(*args: Any, **kwargs: Any) -> int:
        positional.append(1)
        return real_positional(*args, **kwargs)

    monkeypatch.setattr(pcopy.worker, "_run_range", recording)
    monkeypatch.setattr(pcopy.worker, "copy_positional", counting)
    report = run_copy(locate(str(src), str(tmp_path / "dst")), Config(jobs=1, chunk_bytes=30_000))
    assert report.failures == [] and report.files == 1
    assert (tmp_path / "dst" / "big").read_bytes() == data
    assert ranges == [(0, 30_000, in_kernel), (30_000, 30_000, in_kernel), (60_000, 30_000, in_kernel),
                      (90_000, 10_000, in_kernel)]
    assert len(positional) == (0 if in_kernel else 4)  # pread/pwrite only where the kernel cannot


def test_without_a_chunk_size_a_large_file_is_one_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(3 * 1024 * 1024)
    (src / "big").write_bytes(data)
    ranges: list[int] = []
    real = pcopy.worker._run_range
    monkeypatch.setattr(pcopy.worker, "_run_range", lambda job, progress: ranges.append(1) or real(job, progress))
    report = run_copy(locate(str(src), str(tmp_path / "dst")), Config(jobs=1, batch_bytes=1024 * 1024))
    assert report.failures == [] and report.files == 1 and report.bytes == len(data)
    assert (tmp_path / "dst" / "big").read_bytes() == data
    assert ranges == []  # no byte ranges: the file went to a worker whole


def test_to_a_slow_destination_copy_file_range_takes_it_all_in_one_call(
        fds: tuple[int, int, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    s, d, dst = fds
    calls: list[int] = []
    real = getattr(os, "copy_file_range", None)
    if real is None:
        pytest.skip("no copy_file_range here")
    monkeypatch.setattr(os, "copy_file_range", lambda *a: calls.append(a[2]) or real(*a))
    got: list[int] = []
    assert copy_range(s, d, 0, len(DATA), use_fast_paths=True, buffer_bytes=4096, on_bytes=got.append,
                      slow_dst=True) == len(DATA)
    assert dst.read_bytes() == DATA and sum(got) == len(DATA)
    assert calls[0] == len(DATA)  # one request for the whole file (a server-side copy)


def test_to_a_slow_destination_writes_go_in_1_mib_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3 * 1024 * 1024 + 12345)
    (tmp_path / "src").write_bytes(data)
    monkeypatch.setattr(os, "copy_file_range", _fail_with(errno.EXDEV))  # (another file system)
    monkeypatch.setattr(os, "sendfile", _fail_with(errno.EINVAL))  # must not be used: 64 KiB writes
    writes: list[int] = []
    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, buf, off: writes.append(len(buf)) or real_pwrite(fd, buf, off))
    s = os.open(tmp_path / "src", os.O_RDONLY)
    d = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert copy_range(s, d, 0, len(data), use_fast_paths=True, buffer_bytes=4096, on_bytes=lambda n: None,
                          slow_dst=True) == len(data)
    finally:
        os.close(s)
        os.close(d)
    assert (tmp_path / "dst").read_bytes() == data
    assert writes == [1 << 20] * 3 + [12345]


@pytest.mark.parametrize("size", [4 << 20, (9 << 20) + 7])
def test_reading_from_slow_storage_in_threads_puts_every_part_in_place(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "src").write_bytes(data)
    s = os.open(tmp_path / "src", os.O_RDONLY)
    d = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT, 0o600)
    seen: list[int] = []
    try:
        assert pcopy.worker.read_in_threads(s, d, 0, size, 8, seen.append) == size
    finally:
        os.close(s)
        os.close(d)
    assert (tmp_path / "dst").read_bytes() == data
    assert sum(seen) == size


def test_reading_in_threads_counts_a_source_that_shrank(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(os.urandom(6 << 20))
    s = os.open(tmp_path / "src", os.O_RDONLY)
    d = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.truncate(tmp_path / "src", 5 << 20)  # after the stat the caller saw 6 MiB
        assert pcopy.worker.read_in_threads(s, d, 0, 6 << 20, 3, lambda n: None) == 5 << 20
    finally:
        os.close(s)
        os.close(d)


@pytest.mark.parametrize(("size", "read_threads", "devices", "advice"), [
    (6000, 4, (1, 2), "willneed"),  # a small file from a slow SRC: asked for whole (one READ on FUSE)
    (100, 4, (1, 2), None),  # within one page: nothing to split
    (1 << 20, 4, (1, 2), "sequential"),  # past the read-ahead window: a larger window instead
    (6000, 0, (1, 2), None),  # a local SRC: the kernel's own read-ahead
    (6000, 4, (1, 1), None),  # within one file system: copy_file_range may need no READ at all
])
def test_a_file_from_a_slow_source_is_asked_for_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int,
                                                      read_threads: int, devices: tuple[int, int],
                                                      advice: str | None) -> None:
    """FUSE drops a first read-ahead while its queue is congested, and the pages of a small
    file are then read one by one, a request each: a small file from slow storage is asked for
    whole with POSIX_FADV_WILLNEED first. The copy is the same either way."""
    if pcopy.worker._FADVISE is None:
        pytest.skip("no posix_fadvise here")
    names = {os.POSIX_FADV_WILLNEED: "willneed", os.POSIX_FADV_SEQUENTIAL: "sequential"}
    given: list[tuple[int, int, str]] = []
    real = pcopy.worker._FADVISE
    monkeypatch.setattr(pcopy.worker, "_FADVISE", lambda fd, offset, length, how: (
        given.append((offset, length, names.get(how, str(how)))), real(fd, offset, length, how)))
    data = os.urandom(size)
    (tmp_path / "src").write_bytes(data)
    s = os.open(tmp_path / "src", os.O_RDONLY)
    d = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert pcopy.worker.copy_bytes(s, d, 0, size, True, 1 << 20, lambda n: None, devices, True, False,
                                       read_threads) == size
    finally:
        os.close(s)
        os.close(d)
    assert (tmp_path / "dst").read_bytes() == data
    assert given == ([] if advice is None else [(0, size, advice)])
