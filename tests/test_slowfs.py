"""The slow-storage benchmark's FUSE mount (benchmarks/slowfs) does what its numbers rely on:
data passes through unchanged, requests are counted, and concurrent requests overlap instead of
queueing behind one another. Skipped, with the reason, where FUSE cannot be used (no /dev/fuse,
fuse3/libfuse3-dev/gcc missing: benchmarks/slowfs/setup.sh installs them)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import slowfs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "slowfs"))
from slowmount import SlowMount, total_ops

# Large enough that scheduling noise on a busy 2-core machine (thread start, a few ms) is small
# beside it, small enough that the whole module stays around a second.
DELAY_MS = 30.0


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowMount]:
    with slowfs(tmp_path_factory, "slowfs", DELAY_MS) as slow:
        yield slow
    assert not os.path.ismount(slow.mountpoint)


def test_written_file_lands_in_backing_byte_identical(mount: SlowMount) -> None:
    data = os.urandom(300 * 1024) + b"end"  # several WRITE requests (at most 128 KiB each)
    (mount.mountpoint / "sub").mkdir()
    (mount.mountpoint / "sub" / "f.bin").write_bytes(data)
    os.chmod(mount.mountpoint / "sub" / "f.bin", 0o640)
    os.utime(mount.mountpoint / "sub" / "f.bin", ns=(1_000_000_123, 2_000_000_456))
    backing = mount.backing / "sub" / "f.bin"
    assert backing.read_bytes() == data
    st = backing.stat()
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, 2_000_000_456)
    assert (mount.mountpoint / "sub" / "f.bin").read_bytes() == data


def test_counters_count_each_request_type_and_reset(mount: SlowMount) -> None:
    # An earlier test's last RELEASE may still arrive (the kernel sends it after close()
    # returns, asynchronously): reset until nothing more trickles in.
    deadline = time.monotonic() + 5
    mount.reset()
    while total_ops(mount.counters()) and time.monotonic() < deadline:
        time.sleep(0.1)
        mount.reset()
    assert total_ops(mount.counters()) == 0
    (mount.mountpoint / "c.txt").write_bytes(b"x" * 10)
    os.stat(mount.mountpoint / "c.txt")
    ops = mount.counters()["ops"]
    assert ops["CREATE"] == 1
    assert ops["WRITE"] == 1
    assert ops["FLUSH"] >= 1 and ops["RELEASE"] == 1  # RELEASE arrives after close(): settled
    assert ops["LOOKUP"] >= 2  # the negative lookup before create, the stat's lookup
    assert ops["GETATTR"] >= 1
    mount.reset()
    assert total_ops(mount.counters()) == 0


def test_concurrent_stats_overlap(mount: SlowMount) -> None:
    names = [mount.mountpoint / f"s{i}" for i in range(8)]
    for name in names:
        (mount.backing / name.name).write_bytes(b"")
    started = time.perf_counter()
    os.stat(names[0])
    one = time.perf_counter() - started
    assert one >= DELAY_MS / 1000  # the delay is really injected

    barrier = threading.Barrier(len(names) + 1)
    errors: list[BaseException] = []

    def stat(path: Path) -> None:
        barrier.wait()
        try:
            os.stat(path)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=stat, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    mount.reset()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    stats = mount.counters()
    assert not errors
    # Serialised, 8 stats would take 8x one stat; overlapping, about 1x.
    assert wall < 4 * one, f"8 concurrent stats took {wall:.3f} s, one alone {one:.3f} s"
    assert stats["max_in_flight"] >= 4
    assert stats["ops"]["LOOKUP"] >= 8
