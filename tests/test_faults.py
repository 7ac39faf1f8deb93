"""Faults made to happen for real: signals, killed workers and parents, a full disk, a source that
changes under the copy, a corrupt copy caught by --verify, few file descriptors."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import tmpfs

import pcopy.worker
from pcopy import fastcopy
from pcopy.config import Config, Method
from pcopy.executor import WORKER_DIED
from pcopy.runner import CopyRun, run_copy
from pcopy.stage import stage_path
from pcopy.target import locate

MIB = 1024 * 1024


def make_tree(root: Path, large: int = 3, large_mib: int = 48, small: int = 600) -> None:
    (root / "d").mkdir(parents=True)
    block = os.urandom(MIB)
    for i in range(large):
        with open(root / f"large{i}.bin", "wb") as fh:
            for j in range(large_mib):
                fh.write(block[j:] + block[:j])
    for i in range(small):
        (root / "d" / f"s{i:04d}.txt").write_bytes(block[i:i + 3000])


def temp_files(root: Path) -> list[str]:
    return [name for _, _, files in os.walk(root) for name in files if ".pcopy-" in name]


def assert_complete_files_only(src: Path, dst: Path) -> None:
    """Every file under its final name in dst is byte-identical to its source."""
    for dirpath, _, files in os.walk(dst):
        for name in files:
            copied = Path(dirpath) / name
            original = src / copied.relative_to(dst)
            assert copied.read_bytes() == original.read_bytes(), f"partial or wrong: {copied}"


def processes_mentioning(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(pid))
    return found


def wait_gone(marker: str, seconds: float = 15.0) -> list[int]:
    # Workers normally leave within milliseconds; the bound is generous because once, while
    # another job saturated the disk with 2 GiB copies, one took longer than 5 s.
    deadline = time.monotonic() + seconds
    while (left := processes_mentioning(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def start(src: Path, dst: Path, *args: str) -> subprocess.Popen[bytes]:
    # A slow read/write loop keeps large files in flight when the signal arrives.
    return subprocess.Popen([sys.executable, "-m", "pcopy", str(src), str(dst), "-j", "2", "--no-progress",
                             "--buffer-size", "1024", "--chunk-size", "64M", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


@pytest.fixture(scope="module")
def big_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Large enough that a 1 KiB read/write loop on 2 workers takes seconds: signals and kills
    # land while large and small files are in flight. Shared read-only by the tests below.
    src = tmp_path_factory.mktemp("faults") / "src"
    make_tree(src, large=6, large_mib=160)
    return src


@pytest.fixture
def tree(big_src: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    yield big_src, tmp_path / "dst"
    wait_gone(str(tmp_path / "dst"), 2)


def staged(dst: Path) -> Path:
    """Where a run writes a new DST meanwhile (pcopy.stage), once it exists; else DST."""
    stage = Path(stage_path(str(dst)))
    return stage if stage.exists() else dst


def final_files(root: Path) -> int:
    return sum(1 for _, _, files in os.walk(root) for name in files if ".pcopy-" not in name)


def wait_in_flight(dst: Path, seconds: float = 20) -> None:
    """Wait until the copy is half-way: some files complete, others in flight (temporary files)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        where = staged(dst)
        if where.exists() and temp_files(where) and final_files(where):
            return
        time.sleep(0.01)
    raise AssertionError("the copy never got half-way")


def rerun_json(src: Path, dst: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "pcopy", str(src), str(dst), "--json", "-j", "2"],
                         capture_output=True, check=False)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "dst_exists"),
                         [(signal.SIGINT, 130, False), (signal.SIGTERM, 143, False), (signal.SIGINT, 130, True)])
def test_signal_mid_copy_leaves_only_complete_files(tree: tuple[Path, Path], signum: int, code: int,
                                                    dst_exists: bool) -> None:
    """A new DST is written in its stage: the interrupted run keeps the stage (and says where);
    the same command adopts it and publishes it. Into an existing DST the files go to their
    final names through temporary ones. (--buffer-size takes the general per-file path, which
    uses temporary names in a stage too, so the stage holds complete files only here; files
    the lean path writes in place are covered by the storm, which checks that the re-run makes
    them whole.)"""
    src, dst = tree
    if dst_exists:
        dst.mkdir()
    proc = start(src, dst)
    wait_in_flight(dst)
    sent = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err
    assert time.monotonic() - sent < 5
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in err.decode()
    where = staged(dst)
    assert (where == dst) == dst_exists
    assert dst_exists or (not dst.exists() and str(where) in lines[0] and "finishes it" in lines[0])
    assert wait_gone(str(dst)) == []  # no worker keeps running (or writing) after exit
    assert temp_files(where) == []
    assert_complete_files_only(src, where)
    complete = final_files(where)
    assert 0 < complete < 606
    report = rerun_json(src, dst)  # the same command finishes the job, copying only what is missing
    assert (report["files"], report["skipped"]) == (606 - complete, complete)
    assert not staged(dst).name.endswith(".pcopy-new")  # published
    assert_complete_files_only(src, dst)
    assert sum(len(f) for _, _, f in os.walk(dst)) == 606


@pytest.mark.slow
def test_second_signal_during_cleanup_still_exits(tree: tuple[Path, Path]) -> None:
    src, dst = tree
    proc = start(src, dst)
    wait_in_flight(dst)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert wait_gone(str(dst)) == []


@pytest.mark.slow
def test_sigkill_leftovers_are_removed_by_the_next_run(tree: tuple[Path, Path]) -> None:
    src, dst = tree
    proc = start(src, dst)
    wait_in_flight(dst)
    proc.kill()
    proc.communicate(timeout=20)
    # Workers notice their parent is gone and leave on their own (within ~1 s).
    assert wait_gone(str(dst)) == []
    assert not dst.exists()  # the new DST was still in its stage: the re-run adopts it
    rerun_json(src, dst)
    assert staged(dst) == dst
    assert temp_files(dst) == []
    assert_complete_files_only(src, dst)
    assert sum(len(f) for _, _, f in os.walk(dst)) == 606


@pytest.mark.slow
def test_killed_worker_is_detected_and_its_job_retried(tree: tuple[Path, Path]) -> None:
    src, dst = tree
    proc = start(src, dst)
    deadline = time.monotonic() + 5
    while len(workers := children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    wait_in_flight(dst)
    os.kill(workers[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "failed 0" in out.decode()
    assert temp_files(dst) == []
    assert_complete_files_only(src, dst)
    assert sum(len(f) for _, _, f in os.walk(dst)) == 606


def poison_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file copy that creates a file named "poison" SIGKILLs its worker, as the OOM killer
    would: through a temporary name (create_temp) or under its final name in a new DST's stage
    (_Lean._create, which also takes a final name already there to create_temp). fork: workers
    inherit the patch."""
    real_temp, real_create = pcopy.worker.create_temp, pcopy.worker._Lean._create

    def deadly_temp(dst: str, mode: int, dir_fd: int | None = None, shown: str | None = None) -> tuple[int, str]:
        if dst.endswith("poison"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_temp(dst, mode, dir_fd, shown)

    def deadly_create(self: Any, dst: str, mode: int, dir_fd: int | None, shown: str) -> tuple[int, str | None]:
        if dst.endswith("poison"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_create(self, dst, mode, dir_fd, shown)  # type: ignore[no-any-return]

    monkeypatch.setattr(pcopy.worker, "create_temp", deadly_temp)
    monkeypatch.setattr(pcopy.worker._Lean, "_create", deadly_create)


@pytest.mark.parametrize("dst_exists", [False, True])
def test_an_entry_that_kills_its_worker_twice_is_reported_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                dst_exists: bool) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02d}").write_text(f"file {i}")
    (src / "poison").write_text("kills whoever copies it")
    if dst_exists:
        (tmp_path / "dst").mkdir()
    poison_creates(monkeypatch)
    config = Config(jobs=2, batch_files=8, start_method="fork")
    report = run_copy(locate(str(src), str(tmp_path / "dst")), config)
    assert [(Path(f.path).name, f.message) for f in report.failures] == [("poison", WORKER_DIED)]
    # In a directory that existed, the retry skips what the dead worker had finished; in a new
    # DST's stage it copies all again (each name there taken over through a temporary one).
    assert (report.files + report.skipped if dst_exists else report.files) == 40
    assert sorted(os.listdir(tmp_path / "dst")) == [f"f{i:02d}" for i in range(40)]
    assert_complete_files_only(src, tmp_path / "dst")
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]  # (no stage left)


def test_a_poisoned_entry_in_a_group_of_jobs_is_narrowed_down_to_itself(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With threads (fixed here, as on slow storage), jobs of several directories go to a worker
    in one call (GroupJob): a group whose worker dies is sent again as its members, a member
    that dies alone as its entries, and only the entry that kills its worker fails."""
    src = tmp_path / "src"
    for d in range(12):
        for i in range(5):
            (src / f"d{d:02d}" / f"f{i}").parent.mkdir(parents=True, exist_ok=True)
            (src / f"d{d:02d}" / f"f{i}").write_text(f"file {d}/{i}")
    (src / "d03" / "poison").write_text("kills whoever copies it")
    groups: list[int] = []
    real_submit = CopyRun.submit_group

    def counted(self: CopyRun, jobs: Any) -> None:
        groups.append(len(jobs))
        real_submit(self, jobs)

    poison_creates(monkeypatch)
    # Groups form only from jobs that wait for a worker. On a page cache the workers can keep up
    # with the walk (in one CI run every call held one job), so here each create in the new DST
    # takes 30 ms, as on slow storage, and up to 4 of what waits go together.
    deadly_create = pcopy.worker._Lean._create

    def slow_create(self: Any, dst: str, mode: int, dir_fd: int | None, shown: str) -> tuple[int, str | None]:
        time.sleep(0.03)
        return deadly_create(self, dst, mode, dir_fd, shown)  # type: ignore[no-any-return]

    monkeypatch.setattr(pcopy.worker._Lean, "_create", slow_create)
    monkeypatch.setattr(CopyRun, "group_size", lambda self, waiting: min(waiting, 4))
    monkeypatch.setattr(CopyRun, "submit_group", counted)
    dst = tmp_path / "dst"
    report = run_copy(locate(str(src), str(dst)), Config(jobs=2, threads=8, start_method="fork"))
    assert max(groups) >= 2  # jobs did go in groups
    assert [(Path(f.path).name, f.message) for f in report.failures] == [("poison", WORKER_DIED)]
    assert report.files == 60
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("f*")) == sorted(
        f"d{d:02d}/f{i}" for d in range(12) for i in range(5))
    assert temp_files(dst) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "8m") as mount:
        yield mount


@pytest.mark.slow
@pytest.mark.parametrize("chunk", ["64M", "1M"])
def test_disk_full_fails_fast_with_complete_files_only(tmp_path: Path, small_disk: Path, chunk: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(os.urandom(3 * MIB))
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pcopy", str(src), str(small_disk / "dst"), "-j", "2",
                          "--chunk-size", chunk, "--json"], capture_output=True, timeout=60, check=False)
    assert time.monotonic() - started < 15
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["failed"] >= 1 and "No space left on device" in out.stderr.decode()
    assert {f["error"] for f in report["failures"]} == {"ENOSPC"}
    assert temp_files(small_disk) == []
    assert_complete_files_only(src, small_disk / "dst")


def test_source_growing_during_copy_is_reported_not_half_copied(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "growing.log").write_bytes(b"x" * 10_000)
    (src / "steady.txt").write_text("fine")
    real = fastcopy.copy_range

    def copy_then_append(src_fd: int, dst_fd: int, *args: Any, **kwargs: Any) -> int:
        done = real(src_fd, dst_fd, *args, **kwargs)
        with open(src / "growing.log", "ab") as fh:  # a writer appends while we copy
            fh.write(b"more")
        return done

    monkeypatch.setattr(pcopy.worker, "copy_range", copy_then_append)
    report = run_copy(locate(str(src), str(tmp_path / "dst")), Config(jobs=1))
    assert [Path(f.path).name for f in report.failures] == ["growing.log"]
    assert "changed during copy" in report.failures[0].message
    assert sorted(os.listdir(tmp_path / "dst")) == ["steady.txt"]


@pytest.mark.parametrize("chunk", [1 << 30, 4096])
def test_verify_catches_a_corrupt_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.bin").write_bytes(os.urandom(20_000))
    real = fastcopy.copy_range

    def corrupting(src_fd: int, dst_fd: int, offset: int, *args: Any, **kwargs: Any) -> int:
        done = real(src_fd, dst_fd, offset, *args, **kwargs)
        os.lseek(dst_fd, offset, os.SEEK_SET)
        os.write(dst_fd, b"\x00\x01")  # a bit flip on the way to the disk
        return done

    monkeypatch.setattr(pcopy.worker, "copy_range", corrupting)
    config = Config(jobs=1, verify=True, chunk_bytes=chunk, method=Method.READWRITE)
    report = run_copy(locate(str(src), str(tmp_path / "dst")), config)
    assert [f.message for f in report.failures][:1] == ["verification failed: the copy differs from the source"]
    assert os.listdir(tmp_path / "dst") == []
    plain = run_copy(locate(str(src), str(tmp_path / "dst2")), Config(jobs=1, chunk_bytes=chunk))
    assert plain.failures == []  # without --verify the corruption would have gone unnoticed


@pytest.mark.slow
def test_many_files_with_64_file_descriptors(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(20):
        (src / f"d{d:02d}").mkdir(parents=True)
        for i in range(1000):
            (src / f"d{d:02d}" / f"{i:04d}").write_bytes(b"%d" % i)

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    out = subprocess.run([sys.executable, "-m", "pcopy", str(src), str(tmp_path / "dst"), "-j", "2", "--json"],
                         capture_output=True, preexec_fn=low_fd_limit, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["files"] == 20_000


def _failed_paths(src: Path, dst: Path, jobs: int) -> tuple[int, list[str]]:
    out = subprocess.run([sys.executable, "-m", "pcopy", str(src), str(dst), "-j", str(jobs), "--json",
                          "--chunk-size", "4K"], capture_output=True, check=False)
    return out.returncode, sorted(f["path"] for f in json.loads(out.stdout)["failures"])


def test_errors_do_not_depend_on_jobs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "tree").mkdir(parents=True)
    for i in range(300):
        (src / "tree" / f"f{i}").write_bytes(os.urandom(i * 50))
    (src / "clash-file").write_text("a file where dst has a directory")
    (src / "clash-dir").mkdir()
    (src / "clash-dir" / "inner").write_text("x")
    results = []
    for jobs in (1, 32):
        dst = tmp_path / f"dst{jobs}"
        (dst / "clash-file").mkdir(parents=True)
        (dst / "clash-file" / "keep").write_text("keep")
        (dst / "clash-dir").write_text("a file where src has a directory")
        code, failed = _failed_paths(src, dst, jobs)
        results.append((code, failed))
    assert results[0] == results[1]
    assert results[0][0] == 1
    assert results[0][1] == ["clash-dir", "clash-file"]  # relative to SRC
