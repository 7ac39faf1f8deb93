"""Threads inside a job, as many as the storage rewards: the worker's answer to slow storage.

On a network or FUSE file system every metadata operation is a round trip and a worker spends
almost all its time waiting in system calls, which release the GIL. More processes would keep
more requests in flight, at the price of a process each; a few threads per worker do it
cheaply. On a page cache the same worker is CPU-bound and threads would only fight over the
GIL, so how many a job uses is decided per worker process by measurement (Concurrency):

- It starts at one thread (the page-cache path stays exactly as it was: no thread is started).
- After each window of copying (at least WINDOW_S of it) it compares the process's CPU time
  with the wall time. Mostly waiting (CPU below LOW_UTILISATION of the wall time): the limit
  doubles, as long as the last doubling raised the rate of entries per second by at least
  MIN_GAIN; one that did not is undone and the limit held for HOLD_WINDOWS windows before it
  tries again. Mostly computing (above HIGH_UTILISATION): the limit halves.
- No peer does this (rclone's --checkers/--transfers and dcp's rank count are the user's guess).

each() runs one job's entries on up to `limit` threads (the calling thread is one of them); each
thread counts into a JobResult of its own, merged at the end, so no count is shared. A worker
told to stop (SIGTERM raises WorkerStop in its main thread) raises the same exception in every
other thread of the job (PyThreadState_SetAsyncExc: what a signal does to the main thread), so
each removes the temporary file it was writing on its way out, and waits for them, bounded.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from pcopy.errors import WorkerStop
from pcopy.interrupts import signals_blocked
from pcopy.jobs import JobResult

T = TypeVar("T")

MAX_THREADS = 64  # per worker process; at 1 ms per request, 64 in flight per worker
WINDOW_S = 0.2  # copying measured before the limit changes
LOW_UTILISATION = 0.5  # CPU seconds per wall second below which a worker is mostly waiting
HIGH_UTILISATION = 0.85  # above which it is CPU-bound
MIN_GAIN = 1.2  # a doubling must raise entries per second by this much to be kept
HOLD_WINDOWS = 10  # windows a rejected doubling waits before the next try
STOP_GRACE_S = 0.5  # how long a stopping job waits for its threads' clean-up


class Concurrency:
    """How many threads this worker's jobs use (see the module's note)."""

    __slots__ = ("cpu", "hold", "items", "last_rate", "limit", "wall")

    def __init__(self, limit: int = 1) -> None:
        self.limit = limit
        self.items = 0  # the current window: entries, wall and CPU seconds
        self.wall = 0.0
        self.cpu = 0.0
        self.last_rate = 0.0  # entries per second of the window before the last doubling
        self.hold = 0

    def observe(self, items: int, wall: float, cpu: float, threads: int) -> None:
        """Count one copy phase. Phases that could not use the whole limit (fewer entries than
        threads) say nothing about it and are left out."""
        if threads < self.limit or items < 2:
            return
        self.items += items
        self.wall += wall
        self.cpu += cpu
        if self.wall < WINDOW_S:
            return
        rate = self.items / self.wall
        utilisation = self.cpu / self.wall
        self.items, self.wall, self.cpu = 0, 0.0, 0.0
        self.decide(rate, utilisation)

    def decide(self, rate: float, utilisation: float) -> None:
        if utilisation > HIGH_UTILISATION:
            if self.limit > 1:
                self.limit //= 2
            self.last_rate = 0.0
            return
        if utilisation >= LOW_UTILISATION:
            return
        if self.last_rate and rate < self.last_rate * MIN_GAIN:  # the last doubling did not pay
            self.limit = max(1, self.limit // 2)
            self.last_rate = 0.0
            self.hold = HOLD_WINDOWS
            return
        if self.hold:
            self.hold -= 1
            return
        if self.limit < MAX_THREADS:
            self.last_rate = rate
            self.limit = min(MAX_THREADS, self.limit * 2)


# One per worker process (and one for jobs the parent runs itself).
concurrency = Concurrency()


def each(items: Sequence[T], work: Callable[[T, JobResult], None], result: JobResult,
         threads: int, measure: Concurrency | None = None) -> None:
    """work(item, result) for every item, on up to `threads` threads. With measure, the phase's
    wall and CPU time are counted towards its next limit."""
    threads = min(threads, len(items))
    start, cpu = (time.perf_counter(), time.process_time()) if measure is not None else (0.0, 0.0)
    if threads <= 1:
        for item in items:
            work(item, result)
    else:
        _in_threads(items, work, result, threads)
    if measure is not None:
        measure.observe(len(items), time.perf_counter() - start, time.process_time() - cpu, threads)


def _in_threads(items: Sequence[T], work: Callable[[T, JobResult], None], result: JobResult,
                threads: int) -> None:
    taken = itertools.count()  # next() on a count is atomic under the GIL
    parts = [_part(result) for _ in range(threads)]
    errors: list[BaseException] = []  # a bug in work (it records OS errors itself): the job fails

    def run(part: JobResult) -> None:
        while not errors and (i := next(taken)) < len(items):
            work(items[i], part)

    def helper_run(part: JobResult) -> None:
        try:
            run(part)
        except Exception as exc:
            errors.append(exc)
        except BaseException:
            pass  # told to stop (_stop): its clean-up ran on the way here

    helpers = [threading.Thread(target=helper_run, args=(part,), daemon=True) for part in parts[1:]]
    try:
        with signals_blocked():  # helpers inherit the mask: signals are for the main thread
            for helper in helpers:
                helper.start()
        try:
            run(parts[0])
        except Exception as exc:
            errors.append(exc)
        for helper in helpers:
            helper.join()
    except BaseException:  # stopped (SIGTERM in a worker, an interrupt inline): so are the others
        errors.append(_Stopped())
        _stop(helpers)
        raise
    if errors:
        raise errors[0]
    for part in parts:
        result.absorb(part)


class _Stopped(WorkerStop):
    """Raised in a job's other threads when the job stops."""


def _part(result: JobResult) -> JobResult:
    part = JobResult(result.job_id)
    if result.changes is not None:
        part.changes = []
    return part


def _stop(helpers: list[threading.Thread]) -> None:
    """Raise _Stopped in every helper still running (each cleans up on its way out), then wait
    for them, bounded: a thread stuck in a system call that never returns is left to the
    process' exit."""
    for helper in helpers:
        if helper.is_alive() and helper.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(helper.ident), ctypes.py_object(_Stopped))
    deadline = time.monotonic() + STOP_GRACE_S
    for helper in helpers:
        helper.join(max(0.0, deadline - time.monotonic()))
