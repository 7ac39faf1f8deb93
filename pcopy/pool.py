"""WorkerPool: multiprocessing.Pool's apply_async, without a lock shared between processes.

Why not multiprocessing.Pool: its workers share one task queue and one result queue, each
guarded by a lock in shared memory. A worker killed while holding one (an idle worker waits
for its next task holding the task queue's read lock; a busy one holds the result queue's
write lock while it sends) leaves it held for ever: every other worker, the pool's own
threads and Pool.terminate then wait on it. No timeout makes that safe; this design does.

What each process owns, and what its death can leave held:
- The parent owns, per worker, the write end of its job pipe and the read end of its result
  pipe, and all bookkeeping (which calls went to which worker, in order). It never waits on a
  child without a bound: it waits on result pipes and process sentinels together, in slices.
- A worker owns the read end of its own job pipe (read by one thread of its own, which hands
  jobs to its main thread: the parent's writes never wait on a busy worker) and the write end
  of its own result pipe (written by its main thread only). Its death closes both: the parent
  sees end-of-file or the sentinel, and knows exactly which calls it had (the first one was
  running; a worker runs its calls in the order it got them). Nothing else is shared, so a
  death holds nothing that another process waits on.
- A worker exits when its job pipe reaches end-of-file (the parent is gone, even by SIGKILL:
  fork children close the parent's ends they inherited, so the parent is the only writer), or
  when the parent's pid changes (a fallback that needs no pipe semantics).

Signals: workers start with SIGINT/SIGTERM blocked (interrupts.signals_blocked around start),
run the initializer (which installs the worker's handlers), then unblock.

Jobs and results cross as plain pickled data; callbacks run in the parent's thread that calls
poll(), never in a thread of the pool's own.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from pcopy.errors import WorkerStop
from pcopy.interrupts import deferred, signals_blocked, unblock_signals

# select.poll where there is one (not on Windows, whose sentinels are handles, not descriptors);
# what it reports readable, closed or failed, as connection.wait's selector counts it.
_poll = getattr(select, "poll", None) if sys.platform != "win32" else None
_POLL_IN = getattr(select, "POLLIN", 0) | getattr(select, "POLLPRI", 0)

# Calls sent to one worker and not yet answered: one running and one waiting, so the worker
# never waits for the parent; the rest wait in the parent, for whichever worker frees up first
# (a call sent to a worker cannot be taken back by an idle one).
CALLS_PER_WORKER = 2

# How often a worker looks for its parent when the job pipe says nothing (seconds).
PARENT_CHECK_S = 0.2

# Stopping: how long workers get to leave after SIGTERM (they remove their temporary file on
# the way), then after SIGKILL. Bounded so that an interrupted pcopy ends within ~2 s.
TERM_GRACE_S = 1.0
KILL_GRACE_S = 0.5

# How long close() waits for idle workers told to stop before it terminates them.
CLOSE_GRACE_S = 2.0

# Read ends of job pipes held by the parent; a fork child closes the ones it inherited.
_parent_ends: list[Connection] = []


class Call:
    """One apply_async call: what to run and where its outcome goes."""

    __slots__ = ("args", "call_id", "callback", "error_callback", "func")

    def __init__(self, call_id: int, func: Callable[..., Any], args: tuple[Any, ...],
                 callback: Callable[[Any], None] | None,
                 error_callback: Callable[[BaseException], None] | None) -> None:
        self.call_id = call_id
        self.func = func
        self.args = args
        self.callback = callback
        self.error_callback = error_callback


class _Worker:
    __slots__ = ("calls", "jobs", "process", "results")

    def __init__(self, process: Any, jobs: Connection, results: Connection) -> None:
        self.process = process
        self.jobs = jobs  # parent writes
        self.results = results  # parent reads
        self.calls: deque[Call] = deque()  # sent, unanswered, in the order sent


class EnginePool(Protocol):
    """What the executor needs of a pool: WorkerPool and raypool.RayPool both are one."""

    def apply_async(self, func: Callable[..., Any], args: tuple[Any, ...] = (),
                    callback: Callable[[Any], None] | None = None,
                    error_callback: Callable[[BaseException], None] | None = None) -> Call: ...
    def resubmit(self, call: Call) -> None: ...
    def poll(self, timeout: float) -> None: ...
    def close(self) -> None: ...
    def terminate(self) -> list[Call]: ...


class CallQueue:
    """What every pool does with calls before they reach a worker: number them, keep the ones
    no worker has yet (the backlog) and hand them out (_dispatch, the pool's own)."""

    def __init__(self, processes: int, on_lost: Callable[[list[Call], Call | None], None]) -> None:
        self.on_lost = on_lost
        self.max_workers = processes
        self.backlog: deque[Call] = deque()
        self.ids = 0
        self.closed = False

    def apply_async(self, func: Callable[..., Any], args: tuple[Any, ...] = (),
                    callback: Callable[[Any], None] | None = None,
                    error_callback: Callable[[BaseException], None] | None = None) -> Call:
        """Queue func(*args); its result goes to callback (or its exception to error_callback)
        from a later poll()."""
        if self.closed:
            raise ValueError("pool is closed")
        self.ids += 1
        call = Call(self.ids, func, args, callback, error_callback)
        self.backlog.append(call)
        self._dispatch()
        return call

    def resubmit(self, call: Call) -> None:
        """Send a lost call again, ahead of the backlog."""
        self.backlog.appendleft(call)
        self._dispatch()

    def _dispatch(self) -> None:
        raise NotImplementedError


class WorkerPool(CallQueue):
    """apply_async(func, args, callback, error_callback) on up to `processes` worker processes,
    started as the work needs them: a new one only when every running worker is busy, so a run
    with three jobs starts three workers whatever -j says.

    on_lost(calls, culprit) is called (from poll) when a worker dies: calls are the ones it had
    not answered; culprit the one it was running (None if it died idle). The lost calls are the
    caller's to send again (resubmit) or give up; a new worker takes them."""

    def __init__(self, processes: int, ctx: Any, initializer: Callable[..., None] | None = None,
                 initargs: tuple[Any, ...] = (),
                 on_lost: Callable[[list[Call], Call | None], None] = lambda calls, culprit: None) -> None:
        super().__init__(processes, on_lost)
        self.ctx = ctx
        self.initializer = initializer
        self.initargs = initargs
        self.workers: list[_Worker] = []
        self._poller: Any = None  # see _ready
        self._polled_fds: list[int] = []

    # -- starting -------------------------------------------------------------------------------
    def _start_worker(self) -> _Worker:
        """Called with signals blocked and deferred."""
        jobs_r, jobs_w = self.ctx.Pipe(duplex=False)
        results_r, results_w = self.ctx.Pipe(duplex=False)
        # Only a fork child inherits the parent's descriptors (and by the same numbers).
        inherited = ([c.fileno() for c in _parent_ends] + [jobs_w.fileno(), results_r.fileno()]
                     if self.ctx.get_start_method() == "fork" else [])
        process = self.ctx.Process(target=serve, daemon=True, args=(
            jobs_r, results_w, os.getpid(), self.initializer, self.initargs, inherited))
        _parent_ends.extend((jobs_w, results_r))
        try:
            process.start()
        finally:
            jobs_r.close()  # the child's ends: the parent must not keep them (EOF detection)
            results_w.close()
        return _Worker(process, jobs_w, results_r)

    def _start_worker_again(self) -> _Worker:
        """_start_worker, tried twice: under forkserver a start is a conversation with the fork
        server, and one that died (killed, the OOM killer) ends it with EOFError; multiprocessing
        starts a new fork server on the next try. A second failure is an OSError, which pcopy
        reports in one line (exit 1), not click's bare "Aborted!"."""
        try:
            return self._start_worker()
        except EOFError:
            pass
        try:
            return self._start_worker()
        except EOFError as exc:
            raise OSError(f"cannot start a worker process ({self.ctx.get_start_method()}): "
                          "its starter process is gone") from exc

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers]

    # -- calls ----------------------------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        return len(self.backlog) + sum(len(w.calls) for w in self.workers)

    def _dispatch(self) -> None:
        while self.backlog:
            worker = min(self.workers, key=lambda w: len(w.calls)) if self.workers else None
            if worker is None or (worker.calls and len(self.workers) < self.max_workers):
                with deferred(), signals_blocked():
                    worker = self._start_worker_again()
                    self.workers.append(worker)
            elif len(worker.calls) >= CALLS_PER_WORKER:
                return
            call = self.backlog.popleft()
            worker.calls.append(call)
            try:
                worker.jobs.send((call.call_id, call.func, call.args))
            except (OSError, EOFError):
                self._lost(worker)  # died since the last poll: its calls, this one included
            except Exception as exc:  # unpicklable arguments: that call's own failure
                worker.calls.pop()
                if call.error_callback is not None:
                    call.error_callback(exc)

    # -- results --------------------------------------------------------------------------------
    def poll(self, timeout: float) -> None:
        """Wait up to timeout for results (or deaths) and deliver them."""
        ready = self._ready(timeout)
        if not ready:
            return
        for worker in list(self.workers):
            if worker not in self.workers:
                continue  # lost meanwhile: a callback's resubmit found it dead (its process closed)
            exited = worker.process.sentinel in ready
            if exited or worker.results in ready:
                self._read(worker)  # what a dead worker sent before it died still counts
            if exited and worker in self.workers:  # (_read may have found it dead already)
                self._lost(worker)
        self._dispatch()

    def _ready(self, timeout: float) -> set[Any]:
        """The workers' result pipes and process sentinels that are ready (readable, closed or
        exited) within timeout. The parent asks ~3 times per job, most often with timeout 0,
        so where select.poll exists one poll object is kept for the current workers:
        multiprocessing.connection.wait builds and fills a selector on every call (16 us
        against 1 us: ~20 ms of the parent's CPU in a 20,000-file copy, taken from the
        workers on 2 cores)."""
        watched = [w.results for w in self.workers] + [w.process.sentinel for w in self.workers]
        if _poll is None:
            return set(wait(watched, timeout))
        fds = [c.fileno() if isinstance(c, Connection) else c for c in watched]
        if fds != self._polled_fds:
            self._poller = _poll()
            for fd in fds:
                self._poller.register(fd, _POLL_IN)
            self._polled_fds = fds
        by_fd = dict(zip(fds, watched, strict=True))
        events = self._poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
        return {by_fd[fd] for fd, _ in events if fd in by_fd}

    def _read(self, worker: _Worker) -> None:
        try:
            while worker.results.poll():
                call_id, ok, value = worker.results.recv()
                call = worker.calls.popleft()
                assert call.call_id == call_id, "a worker answers its calls in order"
                if ok:
                    if call.callback is not None:
                        call.callback(value)
                elif call.error_callback is not None:
                    call.error_callback(value)
        except (OSError, EOFError):
            self._lost(worker)

    def _lost(self, worker: _Worker) -> None:
        """A worker died (or its pipes broke): hand its calls back. A new worker is started
        when there is work for it (_dispatch)."""
        if worker not in self.workers:
            return
        self.workers.remove(worker)
        calls = list(worker.calls)
        worker.calls.clear()
        _stop([worker], time.monotonic() + KILL_GRACE_S)  # it may be half-dead: make sure
        self.on_lost(calls, calls[0] if calls else None)

    # -- stopping -------------------------------------------------------------------------------
    def close(self) -> None:
        """All calls answered: tell the workers to leave, and wait (bounded) until they have."""
        self.closed = True
        for worker in self.workers:
            with contextlib.suppress(OSError, EOFError):
                worker.jobs.send(None)
        _stop(self.workers, time.monotonic() + CLOSE_GRACE_S, wait_first=True)
        self.workers = []

    def terminate(self) -> list[Call]:
        """Stop now (SIGTERM: workers remove the temporary file they were writing; then SIGKILL
        for any still there after TERM_GRACE_S). Returns the calls that were never answered."""
        self.closed = True
        unanswered = [call for w in self.workers for call in w.calls] + list(self.backlog)
        self.backlog.clear()
        _stop(self.workers, time.monotonic() + TERM_GRACE_S)
        self.workers = []
        return unanswered


def _stop(workers: list[_Worker], deadline: float, wait_first: bool = False) -> None:
    """Workers out, within a bound: (wait_first: give them until deadline to leave on their
    own), SIGTERM, wait until deadline, SIGKILL, wait KILL_GRACE_S. Then close their pipes."""
    alive = [w.process for w in workers if w.process.exitcode is None]
    if wait_first:
        alive = _wait_exit(alive, deadline)
        deadline = time.monotonic() + TERM_GRACE_S
    for process in alive:
        _signal(process.terminate)
    alive = _wait_exit(alive, deadline)
    for process in alive:
        _signal(process.kill)
    _wait_exit(alive, time.monotonic() + KILL_GRACE_S)
    for worker in workers:
        for conn in (worker.jobs, worker.results):
            if conn in _parent_ends:
                _parent_ends.remove(conn)
            conn.close()
        if worker.process.exitcode is not None:
            worker.process.close()  # reaps it; a process that would not die even by SIGKILL stays


def _wait_exit(processes: list[Any], deadline: float) -> list[Any]:
    while processes:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        wait([p.sentinel for p in processes], left)
        processes = [p for p in processes if p.exitcode is None]
    return processes


def _signal(send: Callable[[], None]) -> None:
    with contextlib.suppress(OSError, ValueError):  # gone already
        send()


# -- in the worker ----------------------------------------------------------------------------
def serve(jobs: Connection, results: Connection, parent: int, initializer: Callable[..., None] | None,
          initargs: tuple[Any, ...], inherited: list[int]) -> None:
    """A worker's life: its handlers in place, then signals in; jobs in order until told to stop
    or the parent is gone. Runs with SIGINT/SIGTERM blocked until unblock_signals."""
    code = 0
    try:
        for fd in inherited:  # fork: the parent's ends of every pipe
            if fd not in (jobs.fileno(), results.fileno()):
                with contextlib.suppress(OSError):
                    os.close(fd)
        if initializer is not None:
            initializer(*initargs)
        unblock_signals()
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=_receive, args=(jobs, inbox, parent), daemon=True).start()
        while (item := inbox.get()) is not None:
            call_id, func, args = item
            try:
                message = (call_id, True, func(*args))
            except Exception as exc:
                message = (call_id, False, exc)
            try:
                results.send(message)
            except (OSError, EOFError):
                break  # the parent is gone
            except Exception as exc:  # an unpicklable result or exception: say so, picklably
                results.send((call_id, False, RuntimeError(f"cannot send the result back: {exc!r}")))
    except BaseException as exc:
        # Told to stop mid-job (the job's clean-up has run on the way here), or the parent
        # went away mid-send; anything else is said in one line, never as a traceback. The
        # parent sees the exit either way.
        code = 1
        if not isinstance(exc, (WorkerStop, OSError, EOFError)):
            _say(f"pcopy worker {os.getpid()}: {exc!r}")
    os._exit(code)  # nothing to finalise: skip the interpreter's clean-up (tens of ms)


def _say(line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode("utf-8", "backslashreplace"))


def _receive(jobs: Connection, inbox: queue.SimpleQueue[Any], parent: int) -> None:
    """The worker's reader thread: jobs from the pipe to the main thread, at once, so a parent
    sending never waits on a busy worker. The parent gone (end-of-file, or another parent pid):
    the worker stops as on SIGTERM (the main thread's handler removes its temporary file)."""
    # Signals are for the main thread (only it runs Python's handlers; one delivered to this
    # thread would leave a main thread blocked in a lock wait unaware of it).
    alive = parent_alive(parent)
    with signals_blocked(all_threads=True):
        try:
            while True:
                if not jobs.poll(PARENT_CHECK_S):
                    if not alive():
                        break
                    continue
                item = jobs.recv()
                inbox.put(item)
                if item is None:
                    return
        except (OSError, EOFError):
            pass
    _parent_gone()


def parent_alive(parent: int) -> Callable[[], bool]:
    """In a child of pcopy's (a worker, the Manager): a test of whether pcopy (pid parent) still
    runs, by the cheapest sign. Our parent process is pcopy, and a process whose parent dies is
    handed to another (init, a subreaper): its parent pid changes. Under forkserver our parent
    is the fork server instead (comparing with pcopy's pid said "gone" at the first look, and
    every worker stopped itself 0.2 s into a job): then the fork server's leaving (it follows
    pcopy) or pcopy's pid gone (signal 0) says so."""
    first = os.getppid()
    if first == parent or sys.platform == "win32":  # (Windows: spawn, and no reparenting)
        return lambda: os.getppid() == first

    def alive() -> bool:
        if os.getppid() != first:
            return False
        try:
            os.kill(parent, 0)
        except OSError:  # ESRCH; or EPERM: another user's process has the pid now
            return False
        return True

    return alive


def _parent_gone() -> None:
    import signal

    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
    else:  # Windows: TerminateProcess
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(TERM_GRACE_S)  # the main thread's handler should have ended the process by now
    os._exit(1)
