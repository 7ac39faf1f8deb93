"""Snapshot backups (issue 14): --link-dest, --backup/--backup-dir/--suffix, --bwlimit,
--partial/-P, and -u replacing an entry of another type. Real trees, through the CLI in-process
(typer's runner) and, where signals are involved, as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import pc, pc_json, tmpfs
from treeutil import assert_same_tree, stamp_times, write

from pcopy import bwlimit
from pcopy.bwlimit import parse_rate, slice_bytes
from pcopy.jobs import BatchJob, CopyOptions
from pcopy.metadata import partial_path, remove_leftovers
from pcopy.partial import MIN_BYTES
from pcopy.worker import run_job, task_from_stat


def ino(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def make_tree(root: Path) -> Path:
    write(root / "same", b"unchanged")
    write(root / "d" / "same2", b"unchanged too")
    write(root / "d" / "e" / "deep", b"deep")
    write(root / "changed", b"old")
    write(root / "chmodded", b"mode")
    os.symlink("same", root / "link")
    stamp_times(root)
    return root


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src")


UNCHANGED = ["same", "d/same2", "d/e/deep", "link"]


# ------------------------------------------------------------------------------- --link-dest

@pytest.mark.parametrize("jobs", ["1", "2"])
def test_link_dest_shares_inodes_of_unchanged_files(src: Path, tmp_path: Path, jobs: str) -> None:
    day1, day2 = tmp_path / "day1", tmp_path / "day2"
    assert pc(src, day1, "-q")[0] == 0
    write(src / "changed", b"new content")  # another size and mtime
    os.chmod(src / "chmodded", 0o600)  # metadata differs: a link would carry the wrong mode
    data = pc_json(src, day2, "--link-dest", "../day1", "-j", jobs, "-i")  # relative: to DST
    assert data["exit_code"] == 0
    assert data["hardlinked"] == len(UNCHANGED)
    assert data["hardlinked_bytes"] == len(b"unchanged") + len(b"unchanged too") + len(b"deep")
    assert data["files"] == 2 and data["copied"] == 2
    assert sorted(data["changes"]) == sorted(
        ["copied changed", "copied chmodded"] + [f"hardlinked {p}" for p in UNCHANGED])
    for rel in UNCHANGED:
        assert ino(day2 / rel) == ino(day1 / rel), rel
    for rel in ("changed", "chmodded"):
        assert ino(day2 / rel) != ino(day1 / rel), rel
    assert (day2 / "changed").read_bytes() == b"new content"
    assert (day1 / "changed").read_bytes() == b"old"  # the old snapshot is never written to
    assert stat.S_IMODE(os.stat(day2 / "chmodded").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(day1 / "chmodded").st_mode) != 0o600
    assert_same_tree(src, day2)


def test_link_dest_owner_mismatch_is_copied(src: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("owners are kept (and compared) only as root")
    day1, day2 = tmp_path / "day1", tmp_path / "day2"
    pc(src, day1, "-q")
    os.chown(day1 / "same", 65534, 65534)
    data = pc_json(src, day2, "--link-dest", day1)
    assert data["hardlinked"] == 5 and data["files"] == 1  # all six entries but that one
    assert ino(day2 / "same") != ino(day1 / "same")
    assert os.stat(day2 / "same").st_uid == os.stat(src / "same").st_uid


def test_link_dest_checksum_compares_content(src: Path, tmp_path: Path) -> None:
    day1 = tmp_path / "day1"
    pc(src, day1, "-q")
    st = os.stat(day1 / "same")
    write(day1 / "same", b"UNCHANGED")  # same size, same mtime, other bytes
    os.utime(day1 / "same", ns=(st.st_atime_ns, st.st_mtime_ns))
    quick = pc_json(src, tmp_path / "quick", "--link-dest", day1, "-i")
    assert "hardlinked same" in quick["changes"]  # the quick check cannot tell
    checked = pc_json(src, tmp_path / "checked", "--link-dest", day1, "-c", "-i")
    assert "copied same" in checked["changes"]
    assert (tmp_path / "checked" / "same").read_bytes() == b"unchanged"
    assert checked["hardlinked"] == 5


def test_several_link_dests_first_match_wins(src: Path, tmp_path: Path) -> None:
    old, newer = tmp_path / "old", tmp_path / "newer"
    pc(src, old, "-q")
    pc(src, newer, "-q")
    os.unlink(newer / "same")  # only the older snapshot has it
    data = pc_json(src, tmp_path / "day3", "--link-dest", newer, "--link-dest", old)
    assert data["hardlinked"] == 6 and data["files"] == 0
    assert ino(tmp_path / "day3" / "same") == ino(old / "same")
    assert ino(tmp_path / "day3" / "changed") == ino(newer / "changed")


def test_link_dest_replaces_a_differing_dst_entry(src: Path, tmp_path: Path) -> None:
    day1, day2 = tmp_path / "day1", tmp_path / "day2"
    pc(src, day1, "-q")
    write(day2 / "same", b"stale")
    data = pc_json(src, day2, "--link-dest", day1, "-i")
    assert "hardlinked same" in data["changes"]
    assert ino(day2 / "same") == ino(day1 / "same")


def test_link_dest_missing_warns_once_and_copies(src: Path, tmp_path: Path) -> None:
    data = pc_json(src, tmp_path / "day2", "--link-dest", tmp_path / "nope", "-j", "2")
    assert data["exit_code"] == 0
    assert data["hardlinked"] == 0 and data["files"] == 6
    assert data["stderr"].count("warning: --link-dest") == 1
    assert len(data["warnings"]) == 1
    assert_same_tree(src, tmp_path / "day2")


def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "other-device", "4m") as mount:
        yield mount


other_device = pytest.fixture(small_tmpfs)


def test_link_dest_on_another_device_copies_and_says_so(src: Path, tmp_path: Path, other_device: Path) -> None:
    day1 = other_device / "day1"
    pc(src, day1, "-q")
    data = pc_json(src, tmp_path / "day2", "--link-dest", day1)
    assert data["exit_code"] == 0 and data["hardlinked"] == 0 and data["files"] == 6
    assert data["stderr"].count("another device") == 1
    assert_same_tree(src, tmp_path / "day2")


def test_link_dest_with_delete_and_dry_run(src: Path, tmp_path: Path) -> None:
    day1, day2 = tmp_path / "day1", tmp_path / "day2"
    pc(src, day1, "-q")
    write(day2 / "gone", b"not in SRC")
    write(src / "changed", b"new content")
    args = (src, day2, "--link-dest", day1, "--delete", "-i")
    dry = pc_json(*args, "-n")
    assert (day2 / "gone").exists() and not (day2 / "same").exists()  # nothing written
    real = pc_json(*args)
    for key in ("files", "hardlinked", "hardlinked_bytes", "deleted", "skipped", "bytes"):
        assert dry[key] == real[key], key
    assert sorted(dry["changes"]) == sorted(real["changes"])
    assert real["deleted"] == 1 and real["hardlinked"] == len(UNCHANGED) + 1
    assert not (day2 / "gone").exists()
    assert ino(day2 / "same") == ino(day1 / "same")
    assert_same_tree(src, day2)
    # A second run finds everything up to date: nothing linked or copied again.
    again = pc_json(*args)
    assert again["hardlinked"] == 0 and again["files"] == 0 and again["deleted"] == 0


def test_link_dest_limit_and_bad_values_exit_2(src: Path, tmp_path: Path) -> None:
    many = [a for i in range(21) for a in ("--link-dest", f"d{i}")]
    code, _, err = pc(src, tmp_path / "dst", *many)
    assert code == 2 and "at most 20" in err
    assert not (tmp_path / "dst").exists()


# ----------------------------------------------------------------------------------- --backup

def test_backup_dir_keeps_replaced_and_deleted_files(src: Path, tmp_path: Path) -> None:
    dst, bak = tmp_path / "dst", tmp_path / "bak"
    pc(src, dst, "-q")
    write(dst / "d" / "extra", b"only in DST")
    write(src / "changed", b"new content")
    write(src / "d" / "same2", b"new too")
    dry = pc_json(src, dst, "--backup-dir", "../bak", "--delete", "-n")
    assert dry["backed_up"] == 3 and not bak.exists()
    data = pc_json(src, dst, "--backup-dir", "../bak", "--delete", "-i", "-j", "2")
    assert data["exit_code"] == 0 and data["backed_up"] == 3
    assert sorted(data["changes"]) == ["deleted d/extra", "replaced changed", "replaced d/same2"]
    assert (bak / "changed").read_bytes() == b"old"
    assert (bak / "d" / "same2").read_bytes() == b"unchanged too"
    assert (bak / "d" / "extra").read_bytes() == b"only in DST"
    assert sorted(str(p.relative_to(bak)) for p in bak.rglob("*") if not p.is_dir()) == [
        "changed", "d/extra", "d/same2"]
    assert_same_tree(src, dst)
    # The next change of the same file replaces the older backup (suffix "" by default).
    write(src / "changed", b"newest")
    pc(src, dst, "--backup-dir", bak, "-q")
    assert (bak / "changed").read_bytes() == b"new content"


def test_backup_suffix_beside_the_file_survives_delete(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    pc(src, dst, "-q")
    write(src / "changed", b"new content")
    data = pc_json(src, dst, "-b", "--delete")
    assert data["backed_up"] == 1 and data["deleted"] == 0  # changed~ is protected, as rsync
    assert (dst / "changed~").read_bytes() == b"old"
    write(src / "changed", b"newer content")
    pc(src, dst, "--backup", "--suffix", ".bak", "-q")
    assert (dst / "changed.bak").read_bytes() == b"new content"
    assert pc(src, dst, "--backup", "--suffix", "")[0] == 2
    assert pc(src, dst, "--backup", "--suffix", "a/b")[0] == 2


def test_backup_of_a_file_a_link_dest_link_replaces(src: Path, tmp_path: Path) -> None:
    day1, dst, bak = tmp_path / "day1", tmp_path / "dst", tmp_path / "bak"
    pc(src, day1, "-q")
    write(dst / "same", b"edited in DST")
    data = pc_json(src, dst, "--link-dest", day1, "--backup-dir", bak)
    assert data["backed_up"] == 1 and data["hardlinked"] == 6
    assert (bak / "same").read_bytes() == b"edited in DST"
    assert ino(dst / "same") == ino(day1 / "same")


def test_backup_dir_on_another_device_is_refused(src: Path, tmp_path: Path, other_device: Path) -> None:
    dst = tmp_path / "dst"
    code, _, err = pc(src, dst, "--backup-dir", other_device / "bak")
    assert code == 2 and "another file system" in err
    assert not dst.exists() and not (other_device / "bak").exists()


def test_backup_that_cannot_be_made_keeps_the_old_file(src: Path, tmp_path: Path) -> None:
    dst, bak = tmp_path / "dst", tmp_path / "bak"
    pc(src, dst, "-q")
    (bak / "changed").mkdir(parents=True)  # a directory where the backup should go
    write(src / "changed", b"new content")
    data = pc_json(src, dst, "--backup-dir", bak)
    assert data["exit_code"] == 1 and data["failed"] == 1
    assert (dst / "changed").read_bytes() == b"old"
    assert [p.name for p in dst.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------------------------------- -u

def test_update_replaces_an_entry_of_another_type_whatever_its_time(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    pc(src, dst, "-q")
    os.unlink(dst / "same")
    os.symlink("elsewhere", dst / "same")
    future = time.time_ns() + 10**12
    os.utime(dst / "same", ns=(future, future), follow_symlinks=False)
    write(dst / "changed", b"newer file")
    os.utime(dst / "changed", ns=(future, future))
    data = pc_json(src, dst, "-u", "-i")
    assert data["changes"] == ["replaced same"]
    assert not (dst / "same").is_symlink() and (dst / "same").read_bytes() == b"unchanged"
    assert (dst / "changed").read_bytes() == b"newer file"  # same type and newer: kept


# ----------------------------------------------------------------------------------- --bwlimit

def test_parse_rate() -> None:
    assert parse_rate("10M") == 10 << 20
    assert parse_rate("500K") == 500 << 10
    assert parse_rate("500") == 500 << 10  # rsync: a bare number is KiB/s
    assert parse_rate("1.5M") == 3 << 19
    assert parse_rate("0") is None
    for bad in ("", "fast", "-1M", "10X"):
        with pytest.raises(ValueError):
            parse_rate(bad)
    assert slice_bytes(1) >= 4096 and slice_bytes(10 << 30) == 1 << 20


def test_bad_bwlimit_exits_2(src: Path, tmp_path: Path) -> None:
    code, _, err = pc(src, tmp_path / "dst", "--bwlimit", "lots")
    assert code == 2 and "--bwlimit" in err


def test_bwlimit_never_runs_faster_than_the_limit(tmp_path: Path) -> None:
    """Only the bound that cannot flake: a slow machine makes the copy slower, never faster.
    (The rate's precision is measured by benchmarks/bwlimit.py.)"""
    src = tmp_path / "src"
    write(src / "big", os.urandom(3 << 20))
    for i in range(40):
        write(src / "small" / f"f{i}", os.urandom(25_000))
    stamp_times(src)
    total = (3 << 20) + 40 * 25_000
    rate = 2 << 20
    start = time.monotonic()
    data = pc_json(src, tmp_path / "dst", "--bwlimit", "2M", "-j", "2")
    elapsed = time.monotonic() - start
    assert data["bytes"] == total
    # The schedule allows rate * t plus BURST_S (0.1 s) of credit.
    assert elapsed >= (total / rate - 0.1) * 0.95, elapsed
    assert_same_tree(src, tmp_path / "dst")


# ----------------------------------------------------------------------------------- --partial

class Interrupt(BaseException):
    """Stands for Ctrl-C or a kill arriving in the middle of a copy."""


class InterruptingQueue:
    """A progress queue whose first report interrupts the copy: the worker reports after its
    first PROGRESS_BYTES (8 MiB), so the copy stops at a known point, every time."""

    def put(self, item: object) -> None:
        raise Interrupt


def job_for(src: Path, dst: Path, **options: Any) -> BatchJob:
    task = task_from_stat(str(src), str(dst), os.stat(src), True)
    assert task is not None
    return BatchJob(1, (task,), CopyOptions(plain=False, dst_root=str(dst.parent), **options))


@pytest.fixture
def big(tmp_path: Path) -> Path:
    path = tmp_path / "big"
    write(path, os.urandom(24 << 20))
    assert path.stat().st_size >= MIN_BYTES
    return path


def test_interrupted_copy_resumes_where_it_stopped(big: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out" / "big"
    dst.parent.mkdir()
    with pytest.raises(Interrupt):
        run_job(job_for(big, dst, partial=True), InterruptingQueue())
    part = Path(partial_path(str(dst)))
    kept = part.stat().st_size
    assert 0 < kept < big.stat().st_size and not dst.exists()
    assert part.read_bytes() == big.read_bytes()[:kept]
    assert remove_leftovers(str(dst.parent)) == 0 and part.exists()  # clean-up keeps it
    result = run_job(job_for(big, dst, partial=True))
    assert result.failures == []
    assert result.resumed == 1 and result.resumed_bytes == kept
    assert result.bytes == big.stat().st_size - kept
    assert dst.read_bytes() == big.read_bytes() and not part.exists()
    assert dst.stat().st_mtime_ns == big.stat().st_mtime_ns


@pytest.mark.parametrize("change", ["source touched", "source rewritten", "tail corrupted"])
def test_partial_from_another_source_starts_over(big: Path, tmp_path: Path, change: str) -> None:
    dst = tmp_path / "big.copy"
    with pytest.raises(Interrupt):
        run_job(job_for(big, dst, partial=True), InterruptingQueue())
    part = Path(partial_path(str(dst)))
    kept = part.stat().st_size
    if change == "source touched":
        os.utime(big, ns=(0, big.stat().st_mtime_ns + 1))
    elif change == "source rewritten":
        st = big.stat()
        with open(big, "r+b") as fh:
            fh.seek(kept - 10)
            fh.write(b"0123456789")
        os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with its old mtime back
    else:
        with open(part, "r+b") as fh:  # a crash left a torn tail
            fh.seek(kept - 1)
            fh.write(b"\0" if big.read_bytes()[kept - 1] else b"\1")
        st = part.stat()
        assert st.st_atime_ns % 10**9 == 0  # the stamp is whole seconds: survives any FS
    result = run_job(job_for(big, dst, partial=True))
    assert result.failures == [] and result.resumed == 0
    assert result.bytes == big.stat().st_size
    assert dst.read_bytes() == big.read_bytes()


def test_leftover_clean_up_without_partial_removes_partial_files(big: Path, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    os.rename(big, src / "big")
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises(Interrupt):
        run_job(job_for(src / "big", dst / "big", partial=True), InterruptingQueue())
    assert pc_json(src, dst, "--partial", "--delete")["resumed"] == 1  # --delete keeps it too
    with pytest.raises(Interrupt):
        run_job(job_for(src / "big", dst / "big2", partial=True), InterruptingQueue())
    assert Path(partial_path(str(dst / "big2"))).exists()
    data = pc_json(src, dst, "--delete")
    assert data["resumed"] == 0 and data["exit_code"] == 0
    assert sorted(os.listdir(dst)) == ["big"]  # a run without --partial clears the debris


def _partial_sizes(dst: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in dst.iterdir() if p.name.endswith(".pcopy-partial")}


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_resumes_end_to_end(tmp_path: Path, how: signal.Signals) -> None:
    """pcopy -P as a process, two large files on two workers, interrupted (Ctrl-C; SIGKILL of
    the whole run: a crash) once half the bytes are written; the next run copies the rest."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for name in ("a", "b"):
        write(src / name, os.urandom(12 << 20))
    stamp_times(src)
    total = 24 << 20
    proc = subprocess.Popen([sys.executable, "-m", "pcopy", src, dst, "-P", "--no-progress",
                             "--bwlimit", "8M", "-j", "2"], stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while sum(_partial_sizes(dst).values() if dst.exists() else [0]) < total // 3:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, how) if how == signal.SIGKILL else proc.send_signal(how)
    proc.wait(timeout=30)
    assert proc.returncode == (130 if how == signal.SIGINT else -signal.SIGKILL)
    # Workers of a killed run leave within a second (they watch their parent).
    time.sleep(1.5)
    kept = _partial_sizes(dst)
    assert kept and sum(kept.values()) >= total // 3
    assert not (dst / "a").exists() or not (dst / "b").exists()
    out = subprocess.run([sys.executable, "-m", "pcopy", src, dst, "--partial", "--json"],
                         capture_output=True, check=False)
    data = json.loads(out.stdout)
    assert data["exit_code"] == 0
    assert data["resumed_bytes"] == sum(kept.values())
    assert data["bytes"] == total - sum(kept.values())
    assert_same_tree(src, dst)


def test_link_dest_for_files_split_into_ranges(tmp_path: Path) -> None:
    """Files larger than --chunk-size are planned by the parent: linked there too."""
    src = tmp_path / "src"
    write(src / "big", os.urandom(300_000))
    write(src / "big2", os.urandom(300_000))
    stamp_times(src)
    day1, day2, bak = tmp_path / "day1", tmp_path / "day2", tmp_path / "bak"
    pc(src, day1, "-q", "--chunk-size", "64K")
    write(day2 / "big2", b"stale")
    dry = pc_json(src, day2, "--link-dest", day1, "--chunk-size", "64K", "-j", "2", "-n", "-i")
    data = pc_json(src, day2, "--link-dest", day1, "--chunk-size", "64K", "-j", "2", "-i",
                   "--backup-dir", bak)
    assert sorted(data["changes"]) == sorted(dry["changes"]) == ["hardlinked big", "hardlinked big2"]
    assert data["hardlinked"] == 2 and data["backed_up"] == 1 and data["files"] == 0
    assert ino(day2 / "big") == ino(day1 / "big") and ino(day2 / "big2") == ino(day1 / "big2")
    assert (bak / "big2").read_bytes() == b"stale"


def test_backup_dir_inside_dst_is_kept_by_delete(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    pc(src, dst, "-q")
    write(src / "changed", b"new content")
    write(dst / "extra", b"x")
    data = pc_json(src, dst, "--backup-dir", "old", "--delete", "-i")  # relative: DST/old
    assert sorted(data["changes"]) == ["deleted extra", "replaced changed"]
    assert (dst / "old" / "changed").read_bytes() == b"old"
    assert (dst / "old" / "extra").read_bytes() == b"x"
    again = pc_json(src, dst, "--backup-dir", "old", "--delete")
    assert again["deleted"] == 0 and (dst / "old" / "extra").exists()


# ------------------------------------------------------------------ the shared budget, unit tests

class FakeClock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now_ns = 0
        self.slept: list[float] = []
        monkeypatch.setattr(bwlimit.time, "monotonic_ns", lambda: self.now_ns)
        monkeypatch.setattr(bwlimit.time, "sleep", self.sleep)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now_ns += int(seconds * 1e9)


def test_throttle_keeps_every_process_on_one_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monkeypatch)
    path = bwlimit.create(1000)  # 1000 B/s, burst 100 B
    try:
        a, b = bwlimit.Throttle(path), bwlimit.Throttle(path)
        assert a.slot != b.slot
        a.spend(500)  # ahead by 500 B: half a second
        assert clock.slept == [0.5]
        b.spend(250)  # the other worker pays for both: the schedule is shared
        assert clock.slept[-1] == pytest.approx(0.25)
        clock.now_ns += 10 * 10**9  # 10 s of nobody copying...
        a.spend(1)
        assert len(clock.slept) == 2  # ...is credit, but only up to the burst:
        b.spend(300)
        assert clock.slept[-1] == pytest.approx((300 - 100) / 1000)  # 100 B of credit left
    finally:
        bwlimit.remove(path)


def test_slots_are_claimed_once_each_by_racing_processes() -> None:
    path = bwlimit.create(1 << 20)
    try:
        for _ in range(5):  # many trials: 24 processes claim at the same instant each time
            go_r, go_w = os.pipe()
            out_r, out_w = os.pipe()
            children = []
            for _ in range(24):
                pid = os.fork()
                if pid == 0:  # the child: wait for the start signal, claim, report, leave
                    try:
                        os.close(go_w)  # else the children keep the start pipe open
                        os.read(go_r, 1)
                        os.write(out_w, b"%d\n" % bwlimit.Throttle(path).slot)
                    finally:
                        os._exit(0)
                children.append(pid)
            os.close(go_r)
            os.close(out_w)
            os.close(go_w)  # EOF wakes every child at once
            for pid in children:
                os.waitpid(pid, 0)
            with os.fdopen(out_r) as fh:
                slots = [int(line) for line in fh]
            assert len(slots) == 24 and len(set(slots)) == 24
            for name in os.listdir(path):
                if name.startswith("slot-"):
                    os.unlink(os.path.join(path, name))
    finally:
        bwlimit.remove(path)


def test_a_retried_job_backs_up_nothing_it_wrote_itself(tmp_path: Path) -> None:
    """A job whose worker died is run again; in a directory this run created (check_dst False)
    what it finds can only be its own earlier work: it is replaced without a backup."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "f", b"data")
    write(dst / "f", b"data")  # what the dead worker had already renamed into place
    task = task_from_stat(str(src / "f"), str(dst / "f"), os.stat(src / "f"), check_dst=False)
    assert task is not None
    options = CopyOptions(plain=False, dst_root=str(dst), backup=True, backup_suffix="~")
    result = run_job(BatchJob(1, (task,), options))
    assert result.failures == [] and result.backed_up == 0
    assert sorted(os.listdir(dst)) == ["f"]


def test_a_link_the_file_system_refuses_is_copied_and_said_once(
        src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mount point below DIR, too many links, no hard links: EXDEV/EMLINK/EPERM from link()
    (-j 1 runs inline, so the patch reaches the copy)."""
    import errno

    from pcopy import linkdest

    day1 = tmp_path / "day1"
    pc(src, day1, "-q")

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(linkdest.os, "link", refuse)
    data = pc_json(src, tmp_path / "day2", "--link-dest", day1, "-j", "1")
    assert data["exit_code"] == 0 and data["hardlinked"] == 0 and data["files"] == 6
    assert data["stderr"].count("could not be hard-linked") == 1
    assert_same_tree(src, tmp_path / "day2")


def test_ignore_times_links_nothing(src: Path, tmp_path: Path) -> None:
    day1 = tmp_path / "day1"
    pc(src, day1, "-q")
    data = pc_json(src, tmp_path / "day2", "--link-dest", day1, "-I")
    assert data["hardlinked"] == 0 and data["files"] == 6


def test_counters_of_killed_runs_are_removed_by_the_next(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that is gone (reuse within the test is practically impossible)
    stale = tmp_path / f"pcopy-bwlimit-{dead.pid}-abc"
    live = tmp_path / f"pcopy-bwlimit-{os.getppid()}-def"
    other = tmp_path / "pcopy-bwlimit-notapid"
    for d in (stale, live, other):
        d.mkdir()
        (d / "counters").write_bytes(b"x")
    assert bwlimit.remove_stale(str(tmp_path)) == 1
    assert not stale.exists() and live.exists() and other.exists()
