"""pcopy.threads: the per-worker thread limit (grown while workers wait, halved when they
compute, a growth undone when it did not pay), each() on threads, and a stopped job's threads
removing their temporary files."""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pcopy import threads, worker
from pcopy.errors import WorkerStop
from pcopy.jobs import CopyOptions, DirJob, JobResult
from pcopy.metadata import TEMP_MARKER
from pcopy.opendirs import HELD
from pcopy.runner import CopyRun
from pcopy.threads import Concurrency, each


def feed(c: Concurrency, kind: str, rate: float, utilisation: float, items: int = 200,
         waits: int | None = None) -> None:
    """One window of `items` entries at this rate and CPU share, started now (waits: its
    voluntary context switches; None: not known)."""
    wall = items / rate
    c.observe(kind, items, wall, wall * utilisation, c.limit, time.perf_counter(), waits)


def test_a_waiting_worker_grows_in_one_step_towards_the_target() -> None:
    c = Concurrency()
    feed(c, "copy", rate=60, utilisation=0.012)  # 1 % CPU: x50 wanted, x8 at most per step
    assert c.limit == 8
    feed(c, "copy", rate=400, utilisation=0.1)  # paid (x6.7); 6x more wanted: x4 (powers of two)
    assert c.limit == 32
    feed(c, "copy", rate=1400, utilisation=0.45)  # paid; 0.6/0.45 < 2: stays
    assert c.limit == 32


def test_only_a_worker_that_blocks_grows() -> None:
    """A worker short of CPU on a page cache was preempted (other processes had the cores),
    not waiting on storage: it never sleeps in a system call, and threads would not help."""
    c = Concurrency()
    feed(c, "copy", rate=5000, utilisation=0.3, items=200, waits=3)
    assert c.limit == 1
    feed(c, "copy", rate=5000, utilisation=0.3, items=200, waits=199)  # under one per entry
    assert c.limit == 1
    feed(c, "copy", rate=60, utilisation=0.01, items=200, waits=600)  # three round trips per entry
    assert c.limit == 8
    feed(c, "copy", rate=400, utilisation=0.1, items=200, waits=1000)
    assert c.limit == 32


def test_the_waits_of_a_window_add_up_over_its_phases() -> None:
    c = Concurrency()
    start = time.perf_counter()
    for _ in range(2):  # two phases of 2 entries, 1 wait each: 2 of 4, not enough
        c.observe("copy", 2, 0.006, 0.0001, 1, start, 1)
    assert c.limit == 1
    for _ in range(3):  # three phases of 2 entries, 2 waits each: 6 of 6, enough
        c.observe("copy", 2, 0.004, 0.0001, 1, start, 2)
    assert c.limit == 8
    c = Concurrency()
    c.observe("copy", 4, 0.01, 0.0001, 1, start, 2)
    c.observe("copy", 4, 0.01, 0.0001, 1, start, None)  # not known for part of it: not judged by it
    assert c.limit == 8


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_a_preempted_worker_on_a_page_cache_starts_no_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real copies on the page cache by a worker that shares one CPU with three busy processes:
    windows in which it was preempted compute well under TARGET_UTILISATION / 2 (without the
    waits check each would grow the limit), yet most of them saw no sleep per entry, as round
    trips would make, and none of those grew the limit. (Not all: the disk under the page cache
    may make a write wait now and then, an ext4 journal commit, and a window of 4 files on a
    slow one then counts as blocked; a growth that follows is undone by the rate check.) A
    copy short enough to fit the slices it was given says nothing; it is repeated, 20 times at
    most, until one was preempted (CI once had 5 copies, 30 windows of 2 ms, all unpreempted)."""
    monkeypatch.setattr(threads, "MIN_WINDOW_S", 0.002)  # more windows judged, whatever the disk's speed
    src = tmp_path / "src"
    src.mkdir()
    names = tuple(f"f{i}" for i in range(300))
    for name in names:
        (src / name).write_bytes(b"x" * 100)
    judged: list[tuple[float, bool, bool]] = []  # (utilisation, blocked, grew)
    decide = Concurrency.decide

    def recorded(self: Concurrency, window: Any, rate: float, utilisation: float, blocked: bool = True) -> None:
        before = self.limit
        decide(self, window, rate, utilisation, blocked)
        judged.append((utilisation, blocked, self.limit > before))

    monkeypatch.setattr(Concurrency, "decide", recorded)
    cpu = min(os.sched_getaffinity(0))
    saved = os.sched_getaffinity(0)
    spin = (f"import os, sys, time; os.sched_setaffinity(0, {{{cpu}}}); end = time.monotonic() + 60\n"
            "sys.stdout.write('x'); sys.stdout.flush()\n"
            "while time.monotonic() < end: pass")
    spinners = [subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE) for _ in range(3)]
    try:
        for p in spinners:  # each on the CPU and spinning (starting 3 interpreters can take a while)
            assert p.stdout is not None and p.stdout.read(1) == b"x"
        os.sched_setaffinity(0, {cpu})
        for attempt in range(20):
            dst = tmp_path / f"dst{attempt}"
            dst.mkdir()
            threads.reset()
            result = worker.run_job(DirJob(1, str(src), str(dst), names, True, 1 << 40, 1 << 40, True, CopyOptions()))
            assert result.files == 300 and not result.failures
            if any(u < threads.TARGET_UTILISATION / 2 for u, _, _ in judged):
                break
    finally:
        os.sched_setaffinity(0, saved)
        for p in spinners:
            p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()
        threads.reset()
        HELD.clear()  # the job's directories, held for the rest of this process otherwise
    preempted = [blocked for u, blocked, _ in judged if u < threads.TARGET_UTILISATION / 2]
    assert preempted, f"never preempted in 20 copies: {judged}"
    assert sum(preempted) < len(preempted) / 2, judged
    assert not any(grew and not blocked for _, blocked, grew in judged), judged


def test_a_growth_that_did_not_pay_is_undone_and_held() -> None:
    c = Concurrency()
    feed(c, "copy", rate=60, utilisation=0.01)
    assert c.limit == 8
    feed(c, "copy", rate=62, utilisation=0.01)  # 8 threads, the same rate: something else limits
    assert c.limit == 1
    for _ in range(threads.HOLD_WINDOWS):
        feed(c, "copy", rate=60, utilisation=0.01)
        assert c.limit == 1  # held
    feed(c, "copy", rate=60, utilisation=0.01)
    assert c.limit == 8  # and then tried again


def test_a_cpu_bound_worker_halves_down_to_one_thread() -> None:
    c = Concurrency(limit=8)
    for expected in (4, 2, 1, 1):
        feed(c, "copy", rate=5000, utilisation=0.97)
        assert c.limit == expected


def test_phases_that_cannot_tell_are_left_out() -> None:
    c = Concurrency(limit=8)
    start = time.perf_counter()
    c.observe("copy", 200, 1.0, 0.01, threads=4, started=start)  # could not use the whole limit
    c.observe("copy", 3, 1.0, 0.01, threads=8, started=start)  # too few entries for a window yet
    assert c.limit == 8
    c.changed = time.perf_counter()
    c.observe("copy", 200, 1.0, 0.01, threads=8, started=start)  # started before the last change
    assert c.limit == 8
    c.fixed = True  # --threads
    feed(c, "copy", rate=60, utilisation=0.01)
    assert c.limit == 8


def test_growth_is_judged_against_the_same_kind_of_work() -> None:
    c = Concurrency()
    feed(c, "scan", rate=200, utilisation=0.01)  # making directories
    assert c.limit == 8
    # Copying files is slower per entry than making directories, but no growth of its own is
    # being judged yet: it grows.
    feed(c, "copy", rate=100, utilisation=0.01)
    assert c.limit == 64


@pytest.mark.parametrize("slow_src", [True, False])
def test_stats_from_a_slow_source_grow_the_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   slow_src: bool) -> None:
    """From a slow SRC (options.read_threads, set by the start-up probe) a job's stat phase
    counts towards the worker's thread limit: a worker's first job would otherwise stat all its
    names, each a round trip, on one thread. From a local SRC it does not (its stats compute
    and would halve what a copy to slow storage grew). Each stat here waits 2 ms, as a round
    trip would; the copies themselves are on the page cache and never grow the limit."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    names = tuple(f"f{i:02d}" for i in range(64))
    for name in names:
        (src / name).write_bytes(b"x" * 10)
    real = os.stat
    lock = threading.Lock()
    at_once = [0, 0]  # stats of the job's names in flight now, the most at any time

    def round_trip(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if not isinstance(path, str) or os.path.basename(path) not in names:  # (a full path without dir_fd)
            return real(path, *args, **kwargs)
        with lock:
            at_once[0] += 1
            at_once[1] = max(at_once)
        try:
            time.sleep(0.002)
            return real(path, *args, **kwargs)
        finally:
            with lock:
                at_once[0] -= 1

    monkeypatch.setattr(os, "stat", round_trip)
    threads.reset()
    try:
        result = worker.run_job(DirJob(1, str(src), str(dst), names, True, 1 << 40, 1 << 40, True,
                                       CopyOptions(read_threads=2 if slow_src else 0)))
    finally:
        threads.reset()
        HELD.clear()  # the job's directories, held for the rest of this process otherwise
    assert result.files == 64 and not result.failures
    assert (at_once[1] > 1) is slow_src, at_once


def test_group_size_spans_directories_once_threads_grow() -> None:
    assert threads.group_size(1) == 1
    assert threads.group_size(8) == 2
    assert threads.group_size(64) == threads.MAX_GROUP


@pytest.mark.parametrize(("slow_dst", "limit", "running", "waiting", "expected"), [
    (True, 1, 0, 50, 1),  # not waiting on the storage: one job per call
    (True, 64, 0, 50, 7),  # writing: 50 directories over 8 idle workers: 7, 7, ... (one round)
    (True, 64, 7, 1, 1),
    (True, 64, 6, 50, 16),  # two idle workers: as many as the thread limit lets one call hold
    (True, 64, 8, 50, 7),  # none idle: spread as if all were (the call goes to the first free one)
    (True, 8, 0, 50, 2),  # at 8 threads, 2 directories per call (4 threads each)
    (False, 64, 0, 50, 4),  # reading: two calls per worker of what waits
])
def test_calls_spread_what_waits_over_the_idle_workers(slow_dst: bool, limit: int, running: int, waiting: int,
                                                       expected: int) -> None:
    run = SimpleNamespace(config=SimpleNamespace(jobs=8), options=SimpleNamespace(slow_dst=slow_dst),
                          executor=SimpleNamespace(threads=limit, running=lambda: running))
    run.lock_bound = lambda: CopyRun.lock_bound(run)  # type: ignore[arg-type]
    assert CopyRun.group_size(run, waiting) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("n_threads", [1, 2, 7, 64])
def test_each_runs_every_item_once_and_merges_the_counts(n_threads: int) -> None:
    seen: list[int] = []
    result = JobResult(1, changes=[])
    names: set[str] = set()

    def work(i: int, part: JobResult) -> None:
        seen.append(i)
        names.add(threading.current_thread().name)
        part.files += 1
        part.bytes += i
        assert part.changes is not None
        part.changes.append(("copied", str(i)))
        time.sleep(0.001)  # (lets the threads interleave)

    each(range(100), work, result, n_threads)
    assert sorted(seen) == list(range(100))
    assert (result.files, result.bytes) == (100, sum(range(100)))
    assert sorted(int(p) for _, p in result.changes or []) == list(range(100))
    assert len(names) > 1 if n_threads > 1 else names == {threading.current_thread().name}


def test_each_raises_a_bug_in_work_after_the_other_threads_end() -> None:
    running = []

    def work(i: int, part: JobResult) -> None:
        running.append(i)
        if i == 3:
            raise ValueError("bug")
        time.sleep(0.01)

    with pytest.raises(ValueError, match="bug"):
        each(range(50), work, JobResult(1), 4)
    assert len(running) < 50  # the others stopped taking items
    assert not threads.running_helpers()


def test_a_stop_in_the_main_thread_stops_the_others_and_they_clean_up() -> None:
    cleaned: list[int] = []
    started = threading.Event()

    def work(i: int, part: JobResult) -> None:
        try:
            if threading.current_thread() is threading.main_thread():
                started.wait(1)
                time.sleep(0.05)
                raise WorkerStop  # what a worker's SIGTERM handler raises
            started.set()
            for _ in range(100):  # a long file, slow requests: bytes move now and then
                time.sleep(0.05)
                threads.check_stop(4096)
        except BaseException:
            cleaned.append(i)
            raise

    threads.reset()
    t0 = time.monotonic()
    with pytest.raises(WorkerStop):
        each(range(20), work, JobResult(1), 8)
    assert time.monotonic() - t0 < 0.5 + threads.STOP_GRACE_S
    assert len(cleaned) == 8  # every thread left its entry through its clean-up
    assert not threads.running_helpers()
    threads.reset()


def _idents(n_items: int, n_threads: int) -> set[int]:
    """The threads one each() ran its items on (the calling thread left out)."""
    seen: set[int] = set()
    barrier = threading.Barrier(n_threads, timeout=5)

    def work(i: int, part: JobResult) -> None:
        if i < n_threads:
            barrier.wait()  # every thread takes one of the first items: all of them run
        seen.add(threading.get_ident())

    each(range(n_items), work, JobResult(1), n_threads)
    return seen - {threading.get_ident()}


def test_helper_threads_are_kept_for_the_next_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "IDLE_S", 5.0)
    first = _idents(40, 8)
    assert len(first) == 7
    assert threads.idle_helpers() >= 7
    started: list[object] = []
    real = threads._thread.start_new_thread

    def counted(*args: Any) -> int:
        started.append(args)
        return real(*args)

    monkeypatch.setattr(threads._thread, "start_new_thread", counted)
    second = _idents(40, 8)
    assert (second, started) == (first, [])  # the same seven threads, none started


def test_idle_helpers_end_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "IDLE_S", 0.05)
    before = threading.active_count()
    _idents(40, 8)
    # (helpers an earlier test left may be in a wait begun at its IDLE_S, up to 5 s)
    deadline = time.monotonic() + 15
    while (threads.idle_helpers() or threading.active_count() > before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threads.idle_helpers() == 0
    assert threading.active_count() <= before


def _count_item(i: int, part: JobResult) -> None:
    part.files += 1
    part.bytes += i


def test_a_helper_whose_wait_ends_as_it_is_handed_a_task_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Phases a helper's idle time apart, hundreds of times: each item runs exactly once and
    no phase waits for a helper that left (a hang ends the test run with every thread's stack)."""
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        _hand_overs(monkeypatch)
    finally:
        faulthandler.cancel_dump_traceback_later()


def _hand_overs(monkeypatch: pytest.MonkeyPatch) -> None:
    for trial in range(300):
        monkeypatch.setattr(threads, "IDLE_S", 0.001 * (trial % 4))
        result = JobResult(1)
        each(range(12), _count_item, result, 4)
        assert (result.files, result.bytes) == (12, sum(range(12))), trial
        time.sleep(0.001 * (trial % 3))
    assert not threads.running_helpers()


def test_a_helper_whose_task_raises_is_not_handed_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """(each's tasks catch everything; this is the pool's own guard.) Its phase is told the task
    ended, and it never goes back to the idle helpers, where the next task would wait forever."""
    monkeypatch.setattr(threads, "IDLE_S", 5.0)
    monkeypatch.setattr(threads, "_idle", [])  # (helpers of other tests out of the way)
    reported = threading.Event()  # the thread's exception reached the hook: the thread has ended
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.set())

    def bug() -> None:
        raise RuntimeError("a task that raises")

    done = threads._launch(bug, ())
    assert done.acquire(timeout=5)
    assert reported.wait(5)
    assert threads.idle_helpers() == 0 and not threads.running_helpers()
    result = JobResult(1)
    each(range(12), _count_item, result, 4)  # (new helpers: would hang on one handed to the dead)
    assert result.files == 12


def _phase_in_child(conn: Any) -> None:
    ran = _idents(40, 4)
    conn.send((threads.idle_helpers(), len(ran)))
    os._exit(0)


def test_a_forked_child_starts_its_own_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "IDLE_S", 5.0)
    _idents(40, 4)  # helpers idle in this process when it forks
    assert threads.idle_helpers() >= 3
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    child = ctx.Process(target=_phase_in_child, args=(there,))
    child.start()
    assert here.poll(10)
    idle, ran_on = here.recv()
    child.join(5)
    assert (ran_on, idle) == (3, 3)  # three threads of its own (its parent's are not there)


def _slow_dir_job(src: str, dst: str, ready: multiprocessing.synchronize.Event, where: str) -> None:  # type: ignore[name-defined]
    """A worker's life, in a fork child: handlers in place, 8 fixed threads, every file's copy
    (where="copy") or the creation of every temporary file (where="create": the file exists,
    its name has not reached the caller yet) slow; the parent SIGTERMs it mid-job."""
    worker.init_worker()
    name = "copy_range" if where == "copy" else "create_temp"
    real = getattr(worker, name)

    def slow(*args: object, **kwargs: object) -> object:
        ready.set()
        if where == "copy":
            time.sleep(0.05)
        value = real(*args, **kwargs)
        if where == "create":
            time.sleep(0.05)
        return value

    setattr(worker, name, slow)
    names = tuple(sorted(os.listdir(src)))
    worker.run_job(DirJob(1, src, dst, names, True, 1 << 40, 1 << 40, True, CopyOptions(threads=8)))
    os._exit(0)


@pytest.mark.parametrize("trial", range(8))
@pytest.mark.parametrize("where", ["copy", "create"])
def test_sigterm_mid_threaded_job_leaves_no_temporary_file(tmp_path: Path, trial: int, where: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for i in range(64):
        (src / f"f{i:02d}").write_bytes(os.urandom(2000))
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    process = ctx.Process(target=_slow_dir_job, args=(str(src), str(dst), ready, where))
    process.start()
    assert ready.wait(10)
    time.sleep(0.003 * trial)  # a different moment of the copy each trial
    os.kill(process.pid or 0, signal.SIGTERM)
    process.join(5)
    assert process.exitcode == 128 + signal.SIGTERM
    left = os.listdir(dst)
    assert not [n for n in left if TEMP_MARKER in n], left
    for name in left:  # whatever is under a final name is complete
        assert (dst / name).read_bytes() == (src / name).read_bytes()
