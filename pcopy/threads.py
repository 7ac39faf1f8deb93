"""Threads inside a job, as many as the storage rewards: the worker's answer to slow storage.

On a network or FUSE file system every metadata operation is a round trip and a worker spends
almost all its time waiting in system calls, which release the GIL. More processes would keep
more requests in flight, at the price of a process each; a few threads per worker do it
cheaply. On a page cache the same worker is CPU-bound and threads would only fight over the
GIL, so how many a job uses is decided per worker process by measurement (Concurrency):

- It starts at one thread (the page-cache path stays exactly as it was: no thread is started).
- After each window of copying (a few entries, twice the limit at least) it compares the
  process's CPU time with the wall time. A worker that computes only a fraction u of the time
  is grown towards TARGET_UTILISATION in one step (x TARGET/u, at most MAX_STEP, in powers of
  two), as long as the last growth raised the rate of entries per second by at least MIN_GAIN;
  one that did not is undone and the limit held for HOLD_WINDOWS windows before it tries
  again. Mostly computing (above HIGH_UTILISATION): the limit halves.
- Only a worker that blocks grows: at least MIN_WAITS_PER_ENTRY voluntary context switches
  (a thread sleeping in a system call: each round trip to a network or FUSE server is one, a
  file written there three or more, an up-to-date file on a re-run one per slow side) per
  entry of the window. On a page cache the CPU a worker is missing went to other processes
  (two workers and the parent on two cores, a bench harness, the kernel freeing a removed
  tree), not to waiting: without this check 8 of 20 runs of a 20,000-file copy to tmpfs
  started 4-312 threads (grown, found not to pay, tried again), and with half a switch per
  entry one window of 4 files held up 10 ms with 2 switches still did. Where the count is
  unknown (no getrusage), growth rests on the CPU share alone.
- No peer does this (rclone's --checkers/--transfers and dcp's rank count are the user's guess).

each() runs one job's entries on up to `limit` threads (the calling thread is one of them); each
thread counts into a JobResult of its own, merged at the end, so no count is shared. A job
told to stop (SIGTERM raises WorkerStop in a worker's main thread, an interrupt in the parent's)
sets `stopping`: the other threads take no further entry and leave the one they copy at their
next check_stop (as bytes move), removing its temporary file; a file whose bytes are all
written is finished and renamed, which is as good. The stop waits for them, bounded. (Raising
in other threads with PyThreadState_SetAsyncExc was tried first: an exception can land as a
thread leaves, outside any handler, and print a traceback.)
"""

from __future__ import annotations

import _thread
import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pcopy.errors import WorkerStop
from pcopy.interrupts import signals_blocked
from pcopy.jobs import JobResult
from pcopy.opendirs import HELD, descriptor_limit

try:
    from resource import RUSAGE_SELF, getrusage
except ImportError:  # Windows
    getrusage = None  # type: ignore[assignment]


def waits() -> int | None:
    """Voluntary context switches of this process so far (its threads slept in a system
    call, a lock or a sleep); None where the platform does not say."""
    return getrusage(RUSAGE_SELF).ru_nvcsw if getrusage is not None else None


def waits_since(before: int | None) -> int | None:
    """Voluntary context switches since waits() returned `before`."""
    now = waits() if before is not None else None
    return None if now is None or before is None else now - before

T = TypeVar("T")

MAX_THREADS = 64  # per worker process; at 1 ms per request, 64 in flight per worker
MIN_ITEMS = 4  # entries a window needs (and twice the limit) before the limit changes
MIN_WINDOW_S = 0.01
TARGET_UTILISATION = 0.6  # CPU seconds per wall second a worker is grown towards
HIGH_UTILISATION = 0.85  # above which it is CPU-bound: the limit halves
MAX_STEP = 8  # the most one window may multiply the limit by
MIN_GAIN = 1.2  # a growth must raise entries per second by this much to be kept
HOLD_WINDOWS = 10  # windows a rejected growth waits before the next try
MIN_WAITS_PER_ENTRY = 1.0  # voluntary context switches per entry a window needs to grow
FDS_KEPT = 32  # descriptors left for the process itself (pipes, directories, the Manager)
FDS_PER_THREAD = 4  # a source, a destination, and the job's two open directories, at most
THREADS_PER_MEMBER = 4  # see group_size
MAX_GROUP = 16
STOP_GRACE_S = 0.5
TICK_S = 0.1  # see on_wait  # how long a stopping job waits for its threads' clean-up


class _Window:
    """One kind of phase's measurements (kinds differ in cost: making a directory, copying a
    file), so that a growth is judged against the same kind of work."""

    __slots__ = ("cpu", "items", "last_limit", "last_rate", "waits", "wall")

    def __init__(self) -> None:
        self.items = 0  # the current window: entries, wall and CPU seconds, waits (see waits())
        self.wall = 0.0
        self.cpu = 0.0
        self.waits: int | None = 0
        self.last_rate = 0.0  # entries per second before the last growth (0: none to judge)
        self.last_limit = 1


class Concurrency:
    """How many threads this worker's jobs use (see the module's note)."""

    __slots__ = ("changed", "fixed", "hold", "limit", "windows")

    def __init__(self, limit: int = 1) -> None:
        self.limit = limit
        self.fixed = False  # --threads: the user's limit, never changed
        self.hold = 0
        self.windows: dict[str, _Window] = {}
        self.changed = 0.0  # when the limit last changed (time.perf_counter)

    def observe(self, kind: str, items: int, wall: float, cpu: float, threads: int, started: float,
                waited: int | None = None) -> None:
        """Count one phase of a kind (waited: its voluntary context switches, None if not
        known). Phases that could not use the whole limit (fewer entries than threads), or
        started before it was set, say nothing about it and are left out."""
        if threads < self.limit or items < 2 or started < self.changed or self.fixed:
            return
        window = self.windows.get(kind)
        if window is None:
            window = self.windows[kind] = _Window()
        window.items += items
        window.wall += wall
        window.cpu += cpu
        window.waits = None if window.waits is None or waited is None else window.waits + waited
        if window.items < max(MIN_ITEMS, 2 * self.limit) or window.wall < MIN_WINDOW_S:
            return
        rate = window.items / window.wall
        utilisation = window.cpu / window.wall
        blocked = window.waits is None or window.waits >= MIN_WAITS_PER_ENTRY * window.items
        _clear(window)
        self.decide(window, rate, utilisation, blocked)

    def decide(self, window: _Window, rate: float, utilisation: float, blocked: bool = True) -> None:
        before = self.limit
        self._decide(window, rate, utilisation, blocked)
        if self.limit != before:
            self.changed = time.perf_counter()
            for other in self.windows.values():  # measured at the old limit: start again
                _clear(other)

    def _decide(self, window: _Window, rate: float, utilisation: float, blocked: bool) -> None:
        """Grow towards TARGET_UTILISATION in one step (up to MAX_STEP times: a worker that
        computes 1 % of the time could use ~60 threads) if it blocked, keep a growth only if it
        paid, halve when CPU-bound."""
        if utilisation > HIGH_UTILISATION:
            if self.limit > 1:
                self.limit //= 2
            window.last_rate = 0.0
            return
        if window.last_rate and rate < window.last_rate * MIN_GAIN:  # the last growth did not pay
            self.limit = min(self.limit, window.last_limit)
            window.last_rate = 0.0
            self.hold = HOLD_WINDOWS
            return
        window.last_rate = 0.0
        if self.hold:
            self.hold -= 1
            return
        step = min(MAX_STEP, TARGET_UTILISATION / max(utilisation, 1e-6))
        most = max_threads()
        if step < 2 or self.limit >= most or not blocked:
            return
        window.last_rate, window.last_limit = rate, self.limit
        self.limit = min(most, self.limit * _power_of_two_below(step))


def _clear(window: _Window) -> None:
    window.items, window.wall, window.cpu, window.waits = 0, 0.0, 0.0, 0


def max_threads() -> int:
    """MAX_THREADS, or fewer where the process may open few files: each thread holds a source
    and a destination descriptor, and some stay for the process' own use and for the
    directories it holds open (pcopy.opendirs: a 64-descriptor limit holds 16 and allows 4
    threads)."""
    soft = descriptor_limit()
    if soft is None:
        return MAX_THREADS
    return max(1, min(MAX_THREADS, (soft - FDS_KEPT - HELD.limit) // FDS_PER_THREAD))


def _power_of_two_below(x: float) -> int:
    n = 1
    while n * 2 <= x:
        n *= 2
    return n


# One per worker process (and one for jobs the parent runs itself).
concurrency = Concurrency()

# Per thread: how many jobs of a GroupJob share the limit (1: a job alone).
_local = threading.local()

# Every helper thread running, of every job, as the lock it releases when it ends: a stop waits
# for all of them, however nested.
_live: set[Any] = set()


def reset() -> None:
    """A new run starts from one thread: what an earlier run in this process learnt was about
    its own storage. (Workers start from their parent's state when they fork.)"""
    global concurrency, stopping
    concurrency = Concurrency()
    stopping = False


def configure(fixed: int) -> None:
    """--threads N: N threads per worker from now on (0: adapted, from where it is)."""
    concurrency.fixed = fixed > 0
    if fixed:
        concurrency.limit = fixed


def job_threads() -> int:
    """Threads the job running in this thread may use: the limit, shared by a group's jobs."""
    return max(1, concurrency.limit // getattr(_local, "share", 1))


def job_measure() -> Concurrency | None:
    """What a job's phase reports to: nothing inside a group (the group measures itself: its
    jobs' CPU times overlap), nor alone while the limit calls for groups (a lone job is not
    what the limit is about: the storage may serialise one directory's work)."""
    if getattr(_local, "share", 1) > 1 or group_size(concurrency.limit) > 1:
        return None
    return concurrency


def group_size(limit: int) -> int:
    """Jobs the parent groups into one call (GroupJob) for a worker at this thread limit: one
    per THREADS_PER_MEMBER threads, so that the requests in flight span directories (a
    directory's creates and renames queue on its lock)."""
    return max(1, min(MAX_GROUP, limit // THREADS_PER_MEMBER))


def on_wait(tick: Callable[[], None] | None) -> None:
    """What this thread calls every TICK_S while it waits for its job's other threads (the
    job's progress: only its own thread sends it)."""
    _local.tick = tick


def grouped(share: int) -> None:
    """This thread runs one of `share` jobs of a group."""
    _local.share = share


def each(items: Sequence[T], work: Callable[[T, JobResult], None], result: JobResult,
         threads: int | None = None, measure: Concurrency | None = None, kind: str = "copy") -> None:
    """work(item, result) for every item, on up to `threads` threads (None: the job's share of
    the limit, job_threads). With measure, the items go in windows, each counted towards the
    next limit as a phase of this kind, and the next window uses it: a worker that starts at
    one thread on slow storage is at 64 after ~40 entries, not after whole jobs. On one thread
    a window lasts MIN_WINDOW_S (a page cache: hundreds of files, a clock read per file);
    on several, twice the limit in entries."""
    n = len(items)
    done = 0
    while done < n:
        limit = job_threads() if threads is None else threads
        start = time.perf_counter()
        cpu = time.process_time() if measure is not None else 0.0
        waited = waits() if measure is not None else None
        if limit <= 1 or n - done < 2:
            end = done
            while end < n:
                work(items[end], result)
                end += 1
                if (measure is not None and end - done >= MIN_ITEMS
                        and time.perf_counter() - start >= MIN_WINDOW_S):
                    break
            used = 1
        else:
            size = max(MIN_ITEMS, 2 * limit)
            end = done + size if measure is not None and n - done >= 2 * size else n
            used = min(limit, end - done)
            _in_threads(items[done:end], work, result, used)
        if measure is not None:
            measure.observe(kind, end - done, time.perf_counter() - start, time.process_time() - cpu, used, start,
                            waits_since(waited))
        done = end


# -- helper threads, kept between phases ------------------------------------------------------
# A thread costs ~80 us of CPU to start and end, and a worker on slow storage runs two phases
# per directory (stat the names, copy the files), each on up to the limit's threads: 800-1,700
# thread starts per 1,000-file copy at 1 ms, ~10% of the worker's CPU. So a helper that finished
# its task waits IDLE_S for the next one (of any job in this process) before it ends.
#
# Bare threads (_thread), not threading.Thread: a Thread object lives in weak sets whose
# clean-up callbacks then run in the worker's main thread, and a SIGTERM handler raising there
# (WorkerStop) is swallowed as "Exception ignored" (found by the signal storm). A helper keeps
# the signal mask it started with (signals blocked: _in_threads starts them so).
IDLE_S = 2.0


class _Helper:
    __slots__ = ("go", "task")

    def __init__(self) -> None:
        self.go = _thread.allocate_lock()  # released when a task is handed to this helper
        self.go.acquire()
        self.task: tuple[Callable[..., None], tuple[Any, ...], Any] | None = None


_idle: list[_Helper] = []
_idle_lock = _thread.allocate_lock()


def _launch(fn: Callable[..., None], args: tuple[Any, ...]) -> Any:
    """fn(*args) on a helper thread, an idle one if there is one; returns the lock it releases
    once fn has returned. fn should catch what it raises: a helper whose fn raised ends (with
    the unraisable-exception report) instead of waiting for the next task. Call with signals
    blocked."""
    done = _thread.allocate_lock()
    done.acquire()
    _live.add(done)
    with _idle_lock:
        helper = _idle.pop() if _idle else None
    try:
        if helper is None:
            helper = _Helper()
            helper.task = (fn, args, done)
            _thread.start_new_thread(_serve, (helper,))
        else:
            helper.task = (fn, args, done)
            helper.go.release()
    except BaseException:  # (no thread to be had: nothing will release it)
        _live.discard(done)
        raise
    return done


def _serve(helper: _Helper) -> None:
    """A helper's life: its task, then the next one handed to it, until none came for IDLE_S."""
    while True:
        assert helper.task is not None
        fn, args, done = helper.task
        helper.task = None
        try:
            fn(*args)
        except BaseException:  # (a helper that ends here must not be handed another task)
            _live.discard(done)
            done.release()
            raise
        with _idle_lock:
            _idle.append(helper)  # (idle before done: the job's next phase finds it)
        _live.discard(done)
        done.release()
        if not helper.go.acquire(timeout=IDLE_S):
            with _idle_lock:
                if helper in _idle:  # no one took it: it ends
                    _idle.remove(helper)
                    return
            helper.go.acquire()  # taken as its wait ended: the task is on its way


def idle_helpers() -> int:
    """Helper threads waiting for a task (for tests)."""
    return len(_idle)


def running_helpers() -> int:
    """Tasks on helper threads that have not returned yet, of every job (for tests)."""
    return len(_live)


def _forget_helpers() -> None:
    """In a forked child: its parent's helper threads do not exist there."""
    global _idle_lock
    _idle.clear()
    _live.clear()
    _idle_lock = _thread.allocate_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


def _in_threads(items: Sequence[T], work: Callable[[T, JobResult], None], result: JobResult,
                threads: int) -> None:
    taken = itertools.count()  # next() on a count is atomic under the GIL
    parts = [_part(result) for _ in range(threads)]
    errors: list[BaseException] = []  # a bug in work (it records OS errors itself): the job fails

    def run(part: JobResult) -> None:
        while not errors and not stopping and (i := next(taken)) < len(items):
            work(items[i], part)

    def helper_run(part: JobResult, share: int) -> None:
        try:
            _local.share = share
            run(part)
        except Exception as exc:
            errors.append(exc)
        except BaseException:
            pass  # stopped (check_stop): its clean-up ran on the way here

    share = getattr(_local, "share", 1)
    dones = []
    try:
        with signals_blocked():  # new helpers inherit the mask: signals are for the main thread
            for part in parts[1:]:
                dones.append(_launch(helper_run, (part, share)))
        try:
            run(parts[0])
        except Exception as exc:
            errors.append(exc)
        tick = getattr(_local, "tick", None)
        for done in dones:  # (interruptible by a signal in the main thread)
            while not done.acquire(timeout=TICK_S if tick is not None else -1):
                tick()  # type: ignore[misc]
    except BaseException:  # stopped (SIGTERM in a worker, an interrupt inline): so are the others
        _stop()
        raise
    if errors:
        raise errors[0]
    for part in parts:
        result.absorb(part)


class _Stopped(WorkerStop):
    """Raised in a job's other threads when the job stops (check_stop)."""


# Set when a job stops: every helper thread, of every job, takes no further entry and leaves
# the one it is copying at its next check_stop (removing its temporary file on the way).
stopping = False


def check_stop(nbytes: int) -> None:
    """Called by helper threads as bytes move (their on_bytes): raises once the job stops."""
    if stopping:
        raise _Stopped


def _part(result: JobResult) -> JobResult:
    part = JobResult(result.job_id)
    if result.changes is not None:
        part.changes = []
    return part


def _stop() -> None:
    """Tell every helper thread to stop (they check between entries and as bytes move), then
    wait for them, bounded: one stuck in a system call that does not return is left to the
    process' exit, and a worker then removes the temporary file it was making (pcopy.metadata
    notes every temporary name before the file exists)."""
    global stopping
    stopping = True
    deadline = time.monotonic() + STOP_GRACE_S
    for done in list(_live):
        if done.acquire(timeout=max(0.0, deadline - time.monotonic())):
            done.release()  # (its own thread released it: leave it released for its waiter)
