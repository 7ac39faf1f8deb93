"""Executor: where jobs run. Inline in the parent (-j 1, and trees too small to pay for a pool),
or in one multiprocessing.Pool fed with apply_async and a bounded number of jobs in flight.

A Pool loses the task of a worker that dies (SIGKILL, the OOM killer): its apply_async never
completes. The executor notices a dead worker (its pid leaves the pool's live processes) and
learns from a shared slot table which job that worker was running. It then replaces the whole
pool (a worker killed while holding one of the pool's queue locks would wedge the survivors; the
survivors remove their temporary files on SIGTERM) and submits every job that had not returned
again. The dead worker's job is retried once, split into one job per entry so that a second
death names the one entry that causes it, which is then reported failed. Jobs are idempotent
(entries are written to temporary names and renamed; a byte range is written at fixed offsets),
so running one twice is safe, and a result that arrives twice is counted once.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import queue
import signal
import sys
from collections.abc import Callable
from typing import Any

from pcopy.config import Config
from pcopy.jobs import BatchJob, CopyFailure, DirJob, Job, JobResult, RangeJob
from pcopy.worker import NO_JOB, init_worker, run_job

# Jobs outstanding per worker: enough that a worker never waits for the parent to hand it the
# next job, few enough that memory stays flat (a batch job is ~256 small records).
MAX_IN_FLIGHT_PER_WORKER = 4

# A pool only pays for itself when there is more than one job's worth of work: below this the
# parent copies alone and a tiny tree costs no process start-up at all.
POOL_THRESHOLD_JOBS = 2

# How long the parent waits for a result before it looks after its workers (dead ones, progress).
WAIT_SLICE_S = 0.1

# A job lost with this many dead workers is reported failed instead of being tried again.
MAX_ATTEMPTS = 2

WORKER_DIED = "worker process died while copying this entry (killed, e.g. by the OOM killer)"

# Size of the shared table of (worker pid, current job id) slots. Replacement workers take the
# next slot, so it only wraps after this many worker starts in one run.
WORKER_SLOTS = 1024


def default_start_method() -> str:
    """fork where it is safe and cheapest (Linux: no re-import in workers, ~1 ms per worker);
    spawn elsewhere (macOS' system libraries are not fork-safe; Windows has only spawn)."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def job_dst_dirs(job: Job) -> set[str]:
    """Directories a job writes temporary files in."""
    if isinstance(job, RangeJob):
        return set()  # a range writes into the parent's own temporary file
    if isinstance(job, DirJob):
        return {job.dst_dir}
    return {os.path.dirname(t.dst) for t in job.tasks}


def job_paths(job: Job) -> list[str]:
    if isinstance(job, RangeJob):
        return [job.src]
    if isinstance(job, DirJob):
        return [os.path.join(job.src_dir, name) for name in job.names]
    return [t.src for t in job.tasks]


@functools.cache
def _quiet_pool_class() -> type[Any]:
    """multiprocessing.Pool whose worker-handler thread sleeps until a worker exits or the pool
    changes state. CPython's also wakes whenever a result is waiting in the result pipe, and
    spins until the result-handler thread has read it: ~20 wake-ups per result, ~7% of all CPU
    of a 20,000-file copy on 2 cores, taken from the workers. Worker deaths still wake it
    (their sentinels), and so do close/terminate and an empty cache (the change notifier).
    Defined on first use: importing multiprocessing.pool is kept off the start-up path."""
    from multiprocessing.pool import Pool

    class QuietPool(Pool):
        def _get_sentinels(self) -> list[Any]:
            return [self._change_notifier._reader]  # type: ignore[attr-defined]

    return QuietPool


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Executor:
    def __init__(self, config: Config, want_progress: bool, on_result: Callable[[JobResult], None],
                 on_progress: Callable[[int, int, int, int], None],
                 on_abandoned: Callable[[list[Job]], None] = lambda jobs: None) -> None:
        """on_abandoned(jobs) is called once the workers that ran jobs are gone for good without
        finishing them (killed, or terminated), so their leftovers can be cleaned up."""
        self.on_abandoned = on_abandoned
        self.config = config
        self.want_progress = want_progress
        self.on_result = on_result
        self.on_progress = on_progress
        self.results: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
        self.inline_progress: queue.SimpleQueue[tuple[int, int, int, int]] = queue.SimpleQueue()
        self.progress_queue: Any = None
        self.ctx: Any = None
        self.pool: Any = None
        self.manager: Any = None
        self.worker_pids: set[int] = set()
        self.held: list[Job] = []
        self.pending: dict[int, Job] = {}  # job_id -> job, submitted and not yet returned
        self.attempts: dict[int, int] = {}  # job_id -> times its worker died running it
        self.split_ids = itertools.count(-1, -1)  # ids for per-entry retries, never the planner's
        self.slots: Any = None
        self.slot_counter: Any = None
        self.max_in_flight = MAX_IN_FLIGHT_PER_WORKER * config.jobs

    # -- submission ---------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if self.pool is None:
            if self.config.jobs == 1:
                self._run_inline(job)
                return
            self.held.append(job)
            if len(self.held) < POOL_THRESHOLD_JOBS:
                return
            self._start_pool()
            held, self.held = self.held, []
            for waiting in held:
                self._apply(waiting)
            return
        self._apply(job)

    def _run_inline(self, job: Job) -> None:
        try:
            result = run_job(job, self.inline_progress if self.want_progress else None)
        except BaseException:
            self.on_abandoned([job])
            raise
        self._drain_progress()
        self.on_result(result)

    def _apply(self, job: Job) -> None:
        while len(self.pending) >= self.max_in_flight:
            self.wait(block=True)
        self._send(job)
        self.wait(block=False)

    def _send(self, job: Job) -> None:
        self.pending[job.job_id] = job
        self.pool.apply_async(run_job, (job,), callback=self.results.put,
                              error_callback=lambda exc, job=job: self.results.put(_call_failed(job, exc)))

    def _start_pool(self) -> None:
        if self.ctx is None:
            import multiprocessing

            self.ctx = multiprocessing.get_context(self.config.start_method or default_start_method())
            if self.want_progress:
                # Imported here: multiprocessing.managers alone costs ~30 ms of start-up.
                from multiprocessing.managers import SyncManager

                # Only when someone watches progress: a Manager is one more process (~50 ms).
                self.manager = SyncManager(ctx=self.ctx)
                self.manager.start(_ignore_sigint)
                self.progress_queue = self.manager.Queue()
            self.slots = self.ctx.RawArray("q", 2 * WORKER_SLOTS)
            self.slot_counter = self.ctx.Value("i", 0)
        self.pool = _quiet_pool_class()(self.config.jobs, initializer=init_worker,
                                        initargs=(self.progress_queue, self.slots, self.slot_counter),
                                        context=self.ctx)
        self.worker_pids = {p.pid for p in self.pool._pool}

    # -- results ------------------------------------------------------------------------------
    def wait(self, block: bool) -> None:
        """Handle finished jobs; with block, wait in short slices (serving progress and looking
        after workers between them) until at least one finished."""
        while True:
            self._drain_progress()
            try:
                result = self.results.get(timeout=WAIT_SLICE_S) if block else self.results.get_nowait()
            except queue.Empty:
                if not block:
                    return
                self._check_workers()
                if not self.pending:
                    return  # the jobs waited for were lost and reported failed
                continue
            if self.pending.pop(result.job_id, None) is None:
                continue  # a lost job's first run returned after all: counted once
            self.on_result(result)
            block = False

    def _drain_progress(self) -> None:
        source = self.progress_queue if self.pool is not None else self.inline_progress
        if source is None:
            return
        nbytes = files = found = sized = 0
        try:
            while True:
                b, f, t, s = source.get_nowait()
                nbytes += b
                files += f
                found += t
                sized += s
        except (queue.Empty, EOFError, OSError):
            pass
        if nbytes or files or found or sized:
            self.on_progress(nbytes, files, found, sized)

    def _check_workers(self) -> None:
        """A worker that died took its job with it: replace the pool, send lost jobs again."""
        if self.pool is None or not self.pending:
            return
        alive = {p.pid for p in self.pool._pool if p.exitcode is None}
        dead = self.worker_pids - alive
        if not dead:
            return
        dead_jobs = [self.slots[i + 1] for i in range(0, len(self.slots), 2) if self.slots[i] in dead]
        culprits = {job_id for job_id in dead_jobs if job_id != NO_JOB}
        if NO_JOB in dead_jobs:
            self._unstick_task_lock()
        self.pool.terminate()
        self.pool.join()
        self.wait(block=False)  # results that made it out before the terminate still count
        lost = list(self.pending.values())
        self.pending.clear()
        self.on_abandoned(lost)  # a SIGKILLed worker could not remove its temporary file
        self._start_pool()
        for job in lost:
            if job.job_id not in culprits:
                self._send(job)  # only caught up in the restart: not its fault
            elif self.attempts.get(job.job_id, 0) + 1 >= MAX_ATTEMPTS:
                self.on_result(JobResult(job.job_id, failures=[
                    CopyFailure(path, None, WORKER_DIED) for path in job_paths(job)]))
            elif isinstance(job, BatchJob) and len(job.tasks) > 1:
                # One entry per job, each with one death already counted against it.
                self.on_result(JobResult(job.job_id))  # the batch is replaced by its parts
                for task in job.tasks:
                    self._send_single(BatchJob(next(self.split_ids), (task,), job.options))
            elif isinstance(job, DirJob) and len(job.names) > 1:
                self.on_result(JobResult(job.job_id))
                for name in job.names:
                    self._send_single(job._replace(job_id=next(self.split_ids), names=(name,)))
            else:
                self.attempts[job.job_id] = self.attempts.get(job.job_id, 0) + 1
                self._send(job)

    def _send_single(self, job: Job) -> None:
        self.attempts[job.job_id] = 1
        self._send(job)

    def _unstick_task_lock(self) -> None:
        """An idle worker waits for its next task holding the pool's task-queue read lock; killed
        there, it never releases it, and Pool.terminate (which takes that lock first) would hang.
        If the lock stays taken, release it on the dead worker's behalf (a pool-private detail,
        CPython 3.10-3.14: Pool._inqueue._rlock)."""
        lock = getattr(getattr(self.pool, "_inqueue", None), "_rlock", None)
        if lock is None:
            return
        if lock.acquire(timeout=WAIT_SLICE_S):
            lock.release()
        else:
            with contextlib.suppress(ValueError):
                lock.release()

    def run_held(self) -> None:
        """Run what is still held, inline: too little work came to be worth starting a pool."""
        held, self.held = self.held, []
        for job in held:
            self._run_inline(job)

    def close(self, terminate: bool) -> None:
        if self.pool is not None:
            if terminate:
                self.pool.terminate()  # workers remove their temporary files on SIGTERM...
            else:
                self.pool.close()
            self.pool.join()
            self.pool = None
            if terminate:  # ...except one caught between creating it and knowing its name
                self.on_abandoned(list(self.pending.values()))
        if self.manager is not None:
            self.manager.shutdown()
            self.manager = None


def _call_failed(job: Job, exc: BaseException) -> JobResult:
    """A job whose call itself failed (it could not be sent, or its result not received)."""
    return JobResult(job.job_id, failures=[CopyFailure(p, None, f"internal error: {exc!r}")
                                           for p in job_paths(job)])
