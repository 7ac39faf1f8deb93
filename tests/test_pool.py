"""pool.WorkerPool on its own: results, lost calls named exactly, bounded stops, lazy workers,
no process left behind, for each start method."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from pcopy.pool import WorkerPool

METHODS = ["fork", "spawn", "forkserver"]


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def drive(pool: WorkerPool, done: list[Any], count: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while len(done) < count and time.monotonic() < deadline:
        pool.poll(0.05)
    assert len(done) >= count, f"only {len(done)} of {count} answers"


@pytest.mark.parametrize("method", METHODS)
def test_results_errors_and_a_clean_close(method: str) -> None:
    pool = WorkerPool(3, multiprocessing.get_context(method))
    done: list[Any] = []
    for i in range(20):
        pool.apply_async(square, (i,), callback=done.append, error_callback=done.append)
    pool.apply_async(fail, ("no",), callback=done.append, error_callback=done.append)
    drive(pool, done, 21)
    assert sorted(x for x in done if isinstance(x, int)) == [i * i for i in range(20)]
    errors = [x for x in done if isinstance(x, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], ValueError) and str(errors[0]) == "no"
    processes = [w.process for w in pool.workers]
    assert 1 <= len(processes) <= 3
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 2
    assert all(p._closed or p.exitcode == 0 for p in processes)


def test_workers_start_only_for_work() -> None:
    pool = WorkerPool(1000, multiprocessing.get_context("fork"))
    done: list[Any] = []
    for _ in range(3):
        pool.apply_async(nap, (0.3,), callback=done.append)
    assert len(pool.workers) == 3  # not 1000
    drive(pool, done, 3)
    pool.close()


def test_a_killed_worker_names_the_call_it_was_running() -> None:
    lost: list[tuple[list[int], int | None]] = []
    pool: WorkerPool

    def on_lost(calls: Any, culprit: Any) -> None:
        lost.append(([c.call_id for c in calls], culprit.call_id if culprit else None))
        for call in calls:
            pool.resubmit(call)

    pool = WorkerPool(1, multiprocessing.get_context("fork"), on_lost=on_lost)
    done: list[int] = []
    first = pool.apply_async(nap, (5,), callback=done.append)
    second = pool.apply_async(nap, (0,), callback=done.append)  # queued behind it, same worker
    time.sleep(0.3)
    os.kill(pool.workers[0].process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        pool.poll(0.05)
    assert lost == [([first.call_id, second.call_id], first.call_id)]
    drive(pool, done, 2, seconds=15)
    pool.close()


def test_terminate_is_bounded_even_for_a_worker_that_ignores_sigterm() -> None:
    pool = WorkerPool(2, multiprocessing.get_context("fork"), initializer=signal.signal,
                      initargs=(signal.SIGTERM, signal.SIG_IGN))
    for _ in range(4):
        pool.apply_async(nap, (30,))
    time.sleep(0.3)
    pids = [w.process.pid for w in pool.workers]
    started = time.monotonic()
    unanswered = pool.terminate()
    assert time.monotonic() - started < 2.5
    assert len(unanswered) == 4
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_workers_leave_when_the_parent_is_killed(tmp_path: Any) -> None:
    """A parent SIGKILLed (no clean-up at all): its workers notice and leave within a second."""
    pids_file = tmp_path / "pids"
    child = os.fork()
    if child == 0:  # the doomed parent
        try:
            # Workers with SIGTERM's default action, whatever handler this test process has.
            pool = WorkerPool(3, multiprocessing.get_context("fork"), initializer=signal.signal,
                              initargs=(signal.SIGTERM, signal.SIG_DFL))
            for _ in range(3):
                pool.apply_async(nap, (30,))
            pids_file.write_text(" ".join(str(w.process.pid) for w in pool.workers))
            time.sleep(60)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 10
    while not pids_file.exists() or len(pids_file.read_text().split()) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    workers = [int(p) for p in pids_file.read_text().split()]
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    killed = time.monotonic()
    while time.monotonic() - killed < 1.0:
        alive = [p for p in workers if _alive(p)]
        if not alive:
            break
        time.sleep(0.02)
    assert [p for p in workers if _alive(p)] == []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class _FlakyContext:
    """A start-method context whose first `failures` process starts end as a start with a dead
    fork server does: EOFError."""

    def __init__(self, failures: int) -> None:
        self.real = multiprocessing.get_context("fork")
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def Process(self, *args: Any, **kwargs: Any) -> Any:  # (multiprocessing's name)
        process = self.real.Process(*args, **kwargs)
        if self.failures:
            self.failures -= 1

            def start() -> None:
                raise EOFError

            process.start = start
        return process


def test_a_worker_start_that_ends_in_eof_is_tried_again() -> None:
    pool = WorkerPool(1, _FlakyContext(failures=1))  # type: ignore[arg-type]
    done: list[Any] = []
    pool.apply_async(square, (7,), callback=done.append, error_callback=done.append)
    drive(pool, done, 1)
    assert done == [49]
    pool.close()


def test_a_worker_that_cannot_start_is_an_os_error_saying_so() -> None:
    pool = WorkerPool(1, _FlakyContext(failures=2))  # type: ignore[arg-type]
    with pytest.raises(OSError, match="cannot start a worker process"):
        pool.apply_async(square, (7,))
    pool.close()
