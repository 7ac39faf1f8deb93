"""Executor: where jobs run. Inline in the parent (-j 1, and trees too small to pay for a pool),
or on a pool.WorkerPool fed with apply_async and a bounded number of jobs in flight.

A worker that dies (SIGKILL, the OOM killer) takes the jobs it had not answered with it; the
pool replaces it and says which jobs it had and which one it was running. The others were only
caught up in the death and are sent again as they are. The one it was running is retried once,
split into one job per entry, so that a second death names the one entry that causes it, which
is then reported failed. Jobs are idempotent (entries are written to temporary names and
renamed; a byte range is written at fixed offsets), so running one twice is safe, and a result
that arrives twice is counted once.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pcopy.config import Config
from pcopy.jobs import BatchJob, CopyFailure, DirJob, GroupJob, Job, JobResult, RangeJob, ScanJob
from pcopy.worker import init_worker, run_job

if TYPE_CHECKING:  # imported when a pool starts: multiprocessing is kept off the start-up path
    from pcopy.pool import Call, EnginePool

# Jobs outstanding per worker: one running and one waiting (pool.CALLS_PER_WORKER), so a
# worker never waits for the parent to hand it the next job. The rest wait in the runner, where
# they can still be grouped (GroupJob) once the workers report that they wait on the storage.
MAX_IN_FLIGHT_PER_WORKER = 2

# A pool only pays for itself when there is more than one job's worth of work: below this the
# parent copies alone and a tiny tree costs no process start-up at all.
POOL_THRESHOLD_JOBS = 2

# How long the parent waits for a result before it looks after progress (seconds).
WAIT_SLICE_S = 0.1

# A job lost with this many dead workers is reported failed instead of being tried again.
MAX_ATTEMPTS = 2

WORKER_DIED = "worker process died while copying this entry (killed, e.g. by the OOM killer)"

# How long the progress Manager may take to stop before it is killed (seconds).
MANAGER_STOP_S = 0.5
# How long the Manager may take to start and hand out the progress queue (~50 ms; seconds on a
# loaded machine under spawn) before pcopy gives up the bar and copies on without it.
MANAGER_START_S = 10.0

# The longest directory a Unix socket path can start with ("/manager" and the terminating NUL
# must fit in sun_path: 104 bytes on macOS, 108 on Linux).
MAX_SOCKET_DIR = 90

# How often the Manager process looks for its parent (seconds).
PARENT_CHECK_S = 0.2


def default_start_method() -> str:
    """fork where it is safe and cheapest (Linux: no re-import in workers, ~1 ms per worker);
    spawn elsewhere (macOS' system libraries are not fork-safe; Windows has only spawn)."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def job_dst_dirs(job: Job) -> set[str]:
    """Directories a job writes temporary files in."""
    if isinstance(job, GroupJob):
        return set().union(*map(job_dst_dirs, job.jobs))
    if isinstance(job, RangeJob):
        return set()  # a range writes into the parent's own temporary file
    if isinstance(job, (DirJob, ScanJob)):
        return {job.dst_dir}  # (a scan's new subdirectories are empty until their own jobs run)
    return {os.path.dirname(t.dst) for t in job.tasks}


def job_paths(job: Job) -> list[str]:
    if isinstance(job, GroupJob):
        return [path for member in job.jobs for path in job_paths(member)]
    if isinstance(job, RangeJob):
        return [job.src]
    if isinstance(job, DirJob):
        return [os.path.join(job.src_dir, name) for name in job.names]
    if isinstance(job, ScanJob):
        return [job.src_dir]
    return [t.src for t in job.tasks]


def _init_manager(parent: int, home: str | None) -> None:
    """The progress Manager's process: SIGINT and SIGTERM are the parent's to act on (it shuts
    the Manager down); it leaves on its own once the parent is gone (even SIGKILLed). It makes
    home, its socket's directory (_manager_home), itself, before anything else, so that
    whichever of the two is left removes it: the parent after stopping the Manager, or the
    Manager once the parent is gone."""
    import threading
    import time

    from pcopy.interrupts import unblock_signals

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):  # a closed terminal: leave through watch (home removed)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if home is not None:
        try:
            os.mkdir(home, 0o700)
        except OSError:  # no socket then: the parent goes on without the workers' progress
            os._exit(1)
    unblock_signals()

    from pcopy.pool import parent_alive

    alive = parent_alive(parent)

    def watch() -> None:
        while alive():
            time.sleep(PARENT_CHECK_S)
        _remove_home(home)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


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
        # Results are delivered by pool.poll (in this thread) and handled in wait, one by one.
        self.results: deque[JobResult] = deque()
        # Jobs run inline (-j 1, small trees) report straight to on_progress as they go (a
        # large file shows its bytes moving, not 0 % until it ends).
        self.inline_progress = _DirectProgress(on_progress)
        self.progress_queue: Any = None
        self.ctx: Any = None
        self.pool: EnginePool | None = None
        self.manager: Any = None
        self.manager_home: str | None = None  # the directory of the Manager's socket (_manager_home)
        self.held: list[Job] = []
        self.pending: dict[int, Job] = {}  # job_id -> job, submitted and not yet returned
        self.attempts: dict[int, int] = {}  # job_id -> times its worker died running it
        # Jobs of workers that died: their temporary files are removed once no worker runs
        # (the directories they wrote in may hold live workers' temporary files meanwhile).
        self.abandoned: list[Job] = []
        self.split_ids = itertools.count(-1, -1)  # ids for per-entry retries, never the planner's
        self.max_in_flight = MAX_IN_FLIGHT_PER_WORKER * config.jobs
        self.threads = 1  # the thread limit the last result's worker reported (pcopy.threads)

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

    def has_room(self) -> bool:
        """Whether submit would send a job at once (not wait for a result first)."""
        return self.pool is None or len(self.pending) < self.max_in_flight

    def collect(self) -> bool:
        """Handle the results already in, without waiting for any: whether a job could now be
        sent at once. (The parent's walk lists directory after directory; a worker whose
        calls were answered meanwhile must not wait for the end of the walk.)"""
        self.wait(block=False)
        return self.has_room()

    def running(self) -> int:
        """Calls submitted and not yet returned (a worker runs one at a time; more wait)."""
        return len(self.pending)

    def run_here(self, job: Job) -> None:
        """Run job in this process now, whatever the pool (pcopy's own work: a listing)."""
        self._run_inline(job)

    def _run_inline(self, job: Job) -> None:
        try:
            result = run_job(job, self.inline_progress if self.want_progress else None)
        except BaseException:
            self.on_abandoned([job])
            raise
        self._drain_progress()
        self._deliver(result)

    def _deliver(self, result: JobResult) -> None:
        """A job's result to on_result; a group's, one per member."""
        self.threads = result.threads
        if result.parts is None:
            self.on_result(result)
            return
        for part in result.parts:
            self.on_result(part)

    def _apply(self, job: Job) -> None:
        while len(self.pending) >= self.max_in_flight:
            self.wait(block=True)
        self._send(job)
        self.wait(block=False)

    def _send(self, job: Job) -> None:
        assert self.pool is not None
        self.pending[job.job_id] = job
        def failed(exc: BaseException) -> None:
            self.results.append(_call_failed(job, exc))

        self.pool.apply_async(run_job, (job,), callback=self.results.append, error_callback=failed)

    def _start_pool(self) -> None:
        from pcopy.interrupts import deferred, signals_blocked
        from pcopy.pool import WorkerPool

        if self.config.engine == "ray":
            # Ray actors instead of local processes, and no Manager: its proxies are refused
            # inside Ray workers; progress travels on a Ray queue the pool owns.
            from pcopy.raypool import RayPool

            with deferred():  # (actors start asynchronously: this takes milliseconds)
                ray_pool = RayPool(self.config.jobs, initializer=init_worker, on_lost=self._lost,
                                   progress=self.want_progress, on_progress=self.on_progress)
            self.progress_queue = ray_pool.progress_queue
            self.pool = ray_pool
            return
        if self.ctx is None:
            import multiprocessing

            self.ctx = multiprocessing.get_context(self.config.start_method or default_start_method())
            _start_helpers(self.ctx.get_start_method())
            if self.want_progress:
                # Imported here: multiprocessing.managers alone costs ~30 ms of start-up.
                from multiprocessing.managers import SyncManager

                # Only when someone watches progress: a Manager is one more process (~50 ms).
                # It starts with signals held back, like the workers (interrupts.signals_blocked).
                with _deadline(lambda: self.manager, MANAGER_START_S):
                    with deferred(), signals_blocked():  # (one section: a raise finds it started)
                        self.manager_home = _manager_home()
                        address = os.path.join(self.manager_home, "manager") if self.manager_home else None
                        self.manager = SyncManager(address=address, ctx=self.ctx)
                        try:
                            self.manager.start(_init_manager, (os.getpid(), self.manager_home))
                        except (OSError, EOFError):  # no directory (_init_manager), or past the deadline
                            _reap(self.manager)
                            self.manager = None
                    try:
                        self.progress_queue = self.manager.Queue() if self.manager is not None else None
                    except Exception:  # the Manager is already gone: no bar, the copy goes on
                        self.progress_queue = None
        self.pool = WorkerPool(self.config.jobs, self.ctx, initializer=init_worker,
                               initargs=(self.progress_queue,), on_lost=self._lost)

    # -- results ------------------------------------------------------------------------------
    def wait(self, block: bool) -> None:
        """Handle finished jobs; with block, wait in short slices (serving progress between
        them) until at least one finished."""
        while True:
            self._drain_progress()
            if not self.results and self.pool is not None:
                self.pool.poll(WAIT_SLICE_S if block else 0)
            if not self.results:
                if not block or not self.pending:
                    return  # (blocking: the jobs waited for were lost and reported failed)
                continue
            result = self.results.popleft()
            if self.pending.pop(result.job_id, None) is None:
                continue  # a lost job's first run returned after all: counted once
            self._deliver(result)
            block = False

    def _drain_progress(self) -> None:
        source = self.progress_queue  # (jobs run inline report directly: _DirectProgress)
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
        except queue.Empty:
            pass
        except Exception:  # the Manager died: that costs the bar, never the copy
            self.progress_queue = None
        if nbytes or files or found or sized:
            self.on_progress(nbytes, files, found, sized)

    def _lost(self, calls: list[Call], culprit: Call | None) -> None:
        """A worker died with these calls unanswered (the pool starts another for them)."""
        assert self.pool is not None
        jobs: list[Job] = [call.args[0] for call in calls]
        self.abandoned.extend(jobs)  # a SIGKILLed worker could not remove its temporary file
        for call, job in zip(calls, jobs, strict=True):
            if job.job_id not in self.pending:
                continue
            if call is not culprit:
                self.pool.resubmit(call)  # only caught up in the death: not its fault
            elif isinstance(job, GroupJob):
                # Any member may be the one: each goes again alone (no attempt counted yet), and
                # a member that kills its worker alone is narrowed down as below.
                del self.pending[job.job_id]
                for member in job.jobs:
                    self._send(member)
            elif self.attempts.get(job.job_id, 0) + 1 >= MAX_ATTEMPTS:
                del self.pending[job.job_id]
                self.on_result(JobResult(job.job_id, failures=[
                    CopyFailure(path, None, WORKER_DIED) for path in job_paths(job)]))
            elif isinstance(job, BatchJob) and len(job.tasks) > 1:
                # One entry per job, each with one death already counted against it.
                del self.pending[job.job_id]
                self.on_result(JobResult(job.job_id))  # the batch is replaced by its parts
                for task in job.tasks:
                    self._send_single(BatchJob(next(self.split_ids), (task,), job.options))
            elif isinstance(job, DirJob) and len(job.names) > 1:
                del self.pending[job.job_id]
                self.on_result(JobResult(job.job_id))
                for name in job.names:
                    self._send_single(job._replace(job_id=next(self.split_ids), names=(name,)))
            elif isinstance(job, ScanJob) and job.copy_names:
                # Listed again without copying: its names go out as DirJobs, which the split
                # above narrows down to the one entry, if one of them is what kills workers.
                self.attempts[job.job_id] = self.attempts.get(job.job_id, 0) + 1
                self._send(job._replace(copy_names=False))
            else:
                self.attempts[job.job_id] = self.attempts.get(job.job_id, 0) + 1
                self.pool.resubmit(call)

    def _send_single(self, job: Job) -> None:
        self.attempts[job.job_id] = 1
        self._send(job)

    def run_held(self) -> None:
        """Run what is still held, inline: too little work came to be worth starting a pool."""
        held, self.held = self.held, []
        for job in held:
            self._run_inline(job)

    def close(self, terminate: bool) -> None:
        """Stop the workers (terminate: now, mid-job) and the Manager; bounded in time."""
        if self.pool is not None:
            pool, self.pool = self.pool, None
            if terminate:
                # Workers remove their temporary file on SIGTERM; one killed after the grace
                # time, or caught between creating it and knowing its name, cannot.
                pool.terminate()
                self.abandoned.extend(self.pending.values())
            else:
                pool.close()
        if self.abandoned:  # no worker runs now: what is left in their directories is debris
            abandoned, self.abandoned = self.abandoned, []
            self.on_abandoned(abandoned)
        if self.manager is not None:
            if not terminate:
                self._drain_progress()  # what the workers said last, before the Manager goes
            manager, self.manager = self.manager, None
            self.progress_queue = None
            _stop_manager(manager)
        home, self.manager_home = self.manager_home, None
        _remove_home(home)


class _DirectProgress:
    """The progress channel of jobs run in the parent: a put is a call."""

    def __init__(self, on_progress: Callable[[int, int, int, int], None]) -> None:
        self.put = lambda item: on_progress(*item)


def _start_helpers(method: str) -> None:
    """multiprocessing's own helper processes, before any of pcopy's: the resource tracker
    (spawn, forkserver), and the fork server. The tracker's start ends by unblocking SIGINT and
    SIGTERM in the calling thread, whatever the mask was: started by the first worker's start,
    inside signals_blocked, it let that worker (or the fork server) start with them unblocked,
    and a Ctrl-C to the process group then killed the fork server in its imports (pcopy: EOFError,
    "Aborted!", exit 1). So the tracker first, on its own; then the fork server, blocked."""
    if method == "fork" or sys.platform == "win32":
        return
    from multiprocessing import resource_tracker

    from pcopy.interrupts import deferred, signals_blocked

    with deferred():
        resource_tracker.ensure_running()
        if method == "forkserver":
            from multiprocessing import forkserver

            with signals_blocked():
                forkserver.ensure_running()


def _manager_home() -> str | None:
    """A name for a directory of this run's own, to hold the Manager's Unix socket (the Manager
    makes it: _init_manager). Left to multiprocessing, the socket goes into a /tmp/pymp-*
    directory that only the Manager's own clean exit removes, and the Manager is killed
    (_stop_manager): every run with a bar left one behind. In TMPDIR, or where that is too
    long for a socket's path (a test's tmp_path was), the first of the usual temporary
    directories that is not: left to multiprocessing, the socket would go to a pymp-* directory
    after all. None where sockets are not files (Windows: a named pipe) or no such directory is
    short enough."""
    if sys.platform == "win32":
        return None
    import tempfile

    # Unguessable, so no one else's file or link can be in its place (mkdir refuses those).
    name = f"pcopy-{os.getpid()}-{os.urandom(6).hex()}"
    for base in (tempfile.gettempdir(), "/tmp", "/var/tmp", "/usr/tmp"):
        home = os.path.join(base, name)
        if len(os.fsencode(home)) <= MAX_SOCKET_DIR and os.path.isdir(base):
            return home
    return None


@contextmanager
def _deadline(manager: Callable[[], Any], seconds: float) -> Iterator[None]:
    """Kill the process of the Manager manager() returns if the block has not ended within
    seconds. Its start waits for the Manager's address with no limit (and with signals held
    back: a SIGTERM then waits too), and so does every request to it; a Manager that never
    answers would hang pcopy before its copy began. Killed, it closes its end: the wait ends in
    EOFError, the bar is given up and the copy goes on."""
    import threading

    def kill() -> None:
        process = getattr(manager(), "_process", None)
        if process is not None and process.exitcode is None:
            process.kill()

    timer = threading.Timer(seconds, kill)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()


def _reap(manager: Any) -> None:
    """A Manager whose process ended before it served (start raised)."""
    process = getattr(manager, "_process", None)
    if process is not None:
        process.join(MANAGER_STOP_S)


def _remove_home(home: str | None) -> None:
    if home is None:
        return
    import shutil

    shutil.rmtree(home, ignore_errors=True)


def _stop_manager(manager: Any) -> None:
    """SyncManager.shutdown asks politely and waits up to a second, twice; a Manager holds
    nothing worth a wait (it ignores SIGTERM, see _init_manager): kill it."""
    process = getattr(manager, "_process", None)
    if process is None:
        manager.shutdown()
        return
    if process.exitcode is None:
        process.kill()
        process.join(MANAGER_STOP_S)
    manager.shutdown()  # bookkeeping only now: finds the process gone


def _call_failed(job: Job, exc: BaseException) -> JobResult:
    """A job whose call itself failed (it could not be sent, or its result not received)."""
    return JobResult(job.job_id, failures=[CopyFailure(p, None, f"internal error: {exc!r}")
                                           for p in job_paths(job)])
