"""pcopy.latency: a local directory measures as microseconds, a directory on the latency mount
(benchmarks/slowfs) as its injected delay, and probing writes nothing. The slowfs tests are
skipped, with the reason, where FUSE cannot be used."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import slowfs

from pcopy import latency
from pcopy.latency import ROUND_TRIP_S, is_round_trip_storage, probe_kinds, probe_latency

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "slowfs"))
from slowmount import SlowMount

# Far above a local call (about a microsecond) and above scheduling noise on a busy machine, small
# enough that the module stays well under a second.
DELAY_MS = 5.0
WRITING_OPS = ("CREATE", "WRITE", "MKDIR", "MKNOD", "SYMLINK", "LINK", "RENAME", "UNLINK", "RMDIR",
               "SETATTR", "FALLOCATE", "FSYNC", "FSYNCDIR", "COPY_FILE_RANGE")


def snapshot(root: Path) -> list[tuple[str, int, int]]:
    """Every entry under root (root included) with its mtime_ns and size."""
    out = [(".", root.stat().st_mtime_ns, root.stat().st_size)]
    for entry in sorted(root.rglob("*")):
        st = entry.lstat()
        out.append((str(entry.relative_to(root)), st.st_mtime_ns, st.st_size))
    return out


def test_local_directory_costs_microseconds(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    seconds = probe_latency(tmp_path)
    assert seconds is not None
    # About 1 us here; 1 ms leaves room for a loaded machine (the minimum of 3 calls) and is still
    # 5x below the mount below.
    assert 0 < seconds < 1e-3
    assert is_round_trip_storage(tmp_path, threshold_s=1e-3) is False


def test_every_kind_is_measured_on_posix(tmp_path: Path) -> None:
    kinds = probe_kinds(tmp_path)
    expected = {"fstatvfs", "reopen", "scandir"} if hasattr(os, "fstatvfs") else {"scandir"}
    assert expected <= set(kinds)
    assert all(0 < s < 1e-3 for s in kinds.values())
    assert set(probe_kinds(tmp_path, first_only=True)) == {next(iter(kinds))}


def test_a_file_probes_its_directory_and_a_missing_path_gives_none(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    assert probe_latency(tmp_path / "f") is not None
    assert probe_latency(tmp_path / "missing" / "deeper") is None
    assert is_round_trip_storage(tmp_path / "missing" / "deeper") is None


def test_probing_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_bytes(b"data")
    before = snapshot(tmp_path)
    probe_kinds(tmp_path)
    probe_kinds(tmp_path / "sub" / "f")
    assert snapshot(tmp_path) == before


def test_fallbacks_where_calls_are_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if hasattr(os, "fstatvfs"):
        monkeypatch.delattr(os, "fstatvfs")  # a platform without statvfs: the reopen is timed
    assert set(probe_kinds(tmp_path, first_only=True)) <= {"reopen", "scandir"}
    assert probe_latency(tmp_path) is not None

    def no_open(*args: object, **kwargs: object) -> int:
        raise PermissionError("directories cannot be opened here")  # what Windows says

    monkeypatch.setattr(os, "open", no_open)  # only the listing is left
    assert set(probe_kinds(tmp_path)) == {"scandir"}
    assert probe_latency(tmp_path) is not None

    def no_listing(path: object) -> object:
        raise OSError("no listing either")

    monkeypatch.setattr(os, "scandir", no_listing)
    assert probe_kinds(tmp_path) == {}
    assert probe_latency(tmp_path) is None


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        probe_kinds(tmp_path, kinds=("ping",))


def test_budget_stops_sampling_early() -> None:
    calls: list[int] = []

    def slow_call() -> None:
        calls.append(1)
        import time
        time.sleep(0.02)

    assert latency._min_time(slow_call, samples=10, budget_s=0.03) >= 0.02
    assert 1 <= len(calls) <= 2


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowMount]:
    with slowfs(tmp_path_factory, "slowfs-latency", DELAY_MS) as slow:
        yield slow


def test_slow_mount_measures_its_delay_and_writes_nothing(mount: SlowMount) -> None:
    (mount.backing / "tree" / "sub").mkdir(parents=True, exist_ok=True)
    (mount.backing / "tree" / "sub" / "f").write_bytes(b"data")
    before = snapshot(mount.backing / "tree")
    mount.reset()
    seconds = probe_latency(mount.mountpoint / "tree" / "sub")
    ops = mount.counters()["ops"]
    assert seconds is not None
    # One request per timed call: at least the delay, and not several round trips' worth.
    assert DELAY_MS / 1000 <= seconds < 2.5 * DELAY_MS / 1000
    assert seconds > ROUND_TRIP_S
    assert ops["STATFS"] == latency.SAMPLES  # the calls timed were really sent to the "server"
    assert not {op: n for op, n in ops.items() if op in WRITING_OPS and n}
    assert snapshot(mount.backing / "tree") == before
    assert is_round_trip_storage(mount.mountpoint / "tree") is True


def test_slow_mount_every_kind_is_a_round_trip(mount: SlowMount) -> None:
    (mount.backing / "k").mkdir(exist_ok=True)
    kinds = probe_kinds(mount.mountpoint / "k", samples=2)
    assert {"fstatvfs", "reopen", "scandir"} <= set(kinds)
    assert all(s >= DELAY_MS / 1000 for s in kinds.values())


def test_without_o_directory_a_file_or_missing_path_probes_a_directory(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where directories cannot be opened apart from files (Windows: no O_DIRECTORY), the probe
    finds the directory by stat instead: a file's own, a missing path's nearest (nearest=True)."""
    monkeypatch.setattr(latency, "_O_DIRECTORY", 0)
    (tmp_path / "f").write_bytes(b"x")
    assert latency._open_directory(str(tmp_path / "f"), nearest=False) == (str(tmp_path), None)
    assert latency._open_directory(str(tmp_path / "no" / "such"), nearest=True) == (str(tmp_path), None)
    assert probe_latency(tmp_path / "f") is not None  # (scandir of the directory, timed)
