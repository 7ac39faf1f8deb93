"""run_job: what a pool worker (or the parent, with -j 1) does with one job. It never raises:
failures travel back as data in the JobResult."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from pcopy.config import PROGRESS_BYTES, PROGRESS_INTERVAL_S
from pcopy.fastcopy import copy_range, data_segments, digest_range
from pcopy.jobs import BatchJob, CopyFailure, CopyOptions, EntryTask, Job, JobResult, Kind, RangeJob
from pcopy.metadata import (
    O_BINARY,
    O_CLOEXEC,
    O_NOFOLLOW,
    apply_metadata,
    create_temp,
    make_special,
    temp_mode,
    temp_path,
)


class ProgressQueue(Protocol):
    def put(self, item: Any) -> None: ...


class _Terminated(BaseException):
    """Raised inside a job when the worker is told to stop, so `finally` blocks remove temp files."""


_in_job = False
_worker_queue: ProgressQueue | None = None  # set once per pool worker by init_worker
# This worker's slot in the parent's shared table: slots[2*i] = pid, slots[2*i+1] = the job it
# runs (-1 when idle), so the parent knows which job a dead worker took with it. Plain shared
# memory, no lock: a worker killed at any instant cannot leave anything locked behind.
_slots: Any = None
_slot = -1
NO_JOB = -1


def _on_sigterm(signum: int, frame: object) -> None:
    if _in_job:
        raise _Terminated
    os._exit(128 + signum)  # idle between jobs: nothing to clean up


def init_worker(progress_queue: ProgressQueue | None = None, slots: Any = None,
                slot_counter: Any = None) -> None:
    """Pool initializer. The parent alone decides what an interrupt means: workers ignore SIGINT
    (a Ctrl-C reaches the whole process group) and turn SIGTERM (Pool.terminate) into a clean
    exit that removes the temporary file they were writing. The progress queue comes here once
    per worker rather than with every job: unpickling a Manager proxy costs a round trip."""
    global _worker_queue, _slots, _slot
    _worker_queue = progress_queue
    if slots is not None and slot_counter is not None:
        with slot_counter.get_lock():
            _slot = slot_counter.value % (len(slots) // 2)
            slot_counter.value += 1
        _slots = slots
        slots[2 * _slot] = os.getpid()
        slots[2 * _slot + 1] = NO_JOB
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


# How often a worker checks that the process that started it is still there (seconds).
PARENT_CHECK_S = 1.0


def _exit_with_parent(parent: int) -> None:
    """If pcopy itself is killed (SIGKILL cannot be caught), its workers would wait for jobs
    forever as orphans: each worker leaves on its own once its parent is gone. (getppid is
    portable; Linux's PR_SET_PDEATHSIG is not.)"""
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(1)


class _Progress:
    """Batches byte counts before they go on the queue: one put per PROGRESS_BYTES or interval."""

    __slots__ = ("last", "pending_bytes", "pending_files", "queue")

    def __init__(self, queue: ProgressQueue) -> None:
        self.queue = queue
        self.pending_bytes = 0
        self.pending_files = 0
        self.last = time.monotonic()

    def add_bytes(self, n: int) -> None:
        self.pending_bytes += n
        if self.pending_bytes >= PROGRESS_BYTES or time.monotonic() - self.last >= PROGRESS_INTERVAL_S:
            self.flush()

    def add_file(self) -> None:
        self.pending_files += 1
        if time.monotonic() - self.last >= PROGRESS_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self.pending_bytes or self.pending_files:
            self.queue.put((self.pending_bytes, self.pending_files))
            self.pending_bytes = self.pending_files = 0
        self.last = time.monotonic()


def _ignore(_: int) -> None:
    return None


def run_job(job: Job, queue: ProgressQueue | None = None) -> JobResult:
    """Run one job; a failure of one entry is recorded and the next entry goes on. Progress goes
    to queue, or in a pool worker to the queue given to init_worker."""
    global _in_job
    _in_job = True
    if _slots is not None:
        _slots[2 * _slot + 1] = job.job_id
    queue = queue if queue is not None else _worker_queue
    progress = _Progress(queue) if queue is not None else None
    try:
        if isinstance(job, RangeJob):
            return _run_range(job, progress)
        return _run_batch(job, progress)
    except _Terminated:
        os._exit(128 + signal.SIGTERM)  # temp files were removed on the way out
    finally:
        _in_job = False
        if _slots is not None:
            _slots[2 * _slot + 1] = NO_JOB
        if progress is not None:
            progress.flush()


def _run_batch(job: BatchJob, progress: _Progress | None) -> JobResult:
    result = JobResult(job.job_id)
    on_bytes: Callable[[int], None] = progress.add_bytes if progress else _ignore
    for task in job.tasks:
        try:
            if task.check_dst and up_to_date(task):
                result.skipped += 1
                result.skipped_bytes += task.size
                on_bytes(task.size)
            else:
                result.bytes += copy_entry(task, job.options, on_bytes)
                result.files += 1
        except (OSError, ChangedError) as exc:
            result.failures.append(CopyFailure.of(task.src, exc))
        if progress is not None:
            progress.add_file()
    return result


class ChangedError(Exception):
    """The source changed while it was copied, or --verify found a difference; the copy was
    discarded."""


def check_same(src_fd: int, dst_fd: int, offset: int, length: int | None) -> None:
    """--verify: both sides read back and their digests compared (in the worker, in parallel)."""
    if digest_range(src_fd, offset, length) != digest_range(dst_fd, offset, length):
        raise ChangedError("verification failed: the copy differs from the source")


def up_to_date(task: EntryTask) -> bool:
    """The quick check of rsync/rclone/robocopy: same type, size and mtime (symlinks: same target).
    A destination directory where a non-directory belongs is an error, never replaced."""
    try:
        st = os.lstat(task.dst)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "cannot overwrite directory with non-directory", task.dst)
    if task.kind is Kind.FILE:
        return stat.S_ISREG(st.st_mode) and st.st_size == task.size and st.st_mtime_ns == task.mtime_ns
    if task.kind is Kind.SYMLINK:
        return stat.S_ISLNK(st.st_mode) and os.readlink(task.dst) == os.readlink(task.src)
    return False


def copy_entry(task: EntryTask, options: CopyOptions, on_bytes: Callable[[int], None]) -> int:
    """Copy one entry to a temporary name and rename it over task.dst. Returns bytes copied."""
    if task.kind is not Kind.FILE:
        tmp = temp_path(task.dst)
        make_special(task, tmp)
        try:
            apply_metadata(tmp, task, options.preserve_owner)
            os.replace(tmp, task.dst)
        except BaseException:
            _remove(tmp)
            raise
        return 0

    src_flags = os.O_RDONLY | O_BINARY | O_CLOEXEC | (0 if options.dereference else O_NOFOLLOW)
    src_fd = os.open(task.src, src_flags)
    try:
        dst_fd, tmp = create_temp(task.dst, temp_mode(task.mode, shared_writes=False))
        try:
            try:
                copied = _copy_whole(src_fd, dst_fd, task, options, on_bytes)
                _check_unchanged(src_fd, task, copied)
                if options.verify:
                    check_same(src_fd, dst_fd, 0, None)
                if options.fsync:
                    os.fsync(dst_fd)
                apply_metadata(tmp, task, options.preserve_owner, fd=dst_fd)
            finally:
                os.close(dst_fd)
            os.replace(tmp, task.dst)
        except BaseException:
            _remove(tmp)
            raise
    finally:
        os.close(src_fd)
    return task.size or copied


def _check_unchanged(src_fd: int, task: EntryTask, copied: int) -> None:
    """A file that was written to while we copied it would leave a mix of old and new bytes:
    compare size and mtime with what the walk saw, and refuse the copy if they moved."""
    st = os.fstat(src_fd)
    if st.st_size != task.size or st.st_mtime_ns != task.mtime_ns:
        raise ChangedError(f"file changed during copy (size {task.size} -> {st.st_size})")
    if not task.sparse and task.size and copied != task.size:
        raise ChangedError(f"file changed during copy ({copied} of {task.size} bytes read)")


def _copy_whole(src_fd: int, dst_fd: int, task: EntryTask, options: CopyOptions,
                on_bytes: Callable[[int], None]) -> int:
    if not task.sparse:
        return copy_range(src_fd, dst_fd, 0, None, use_fast_paths=options.use_fast_paths,
                          buffer_bytes=options.buffer_bytes, on_bytes=on_bytes)
    # Holes stay holes: size the file first, then copy only the data segments.
    os.ftruncate(dst_fd, task.size)
    copied = 0
    for offset, length in data_segments(src_fd, 0, task.size):
        copied += copy_range(src_fd, dst_fd, offset, length, use_fast_paths=options.use_fast_paths,
                             buffer_bytes=options.buffer_bytes, on_bytes=on_bytes)
    return copied


def _run_range(job: RangeJob, progress: _Progress | None) -> JobResult:
    result = JobResult(job.job_id)
    on_bytes: Callable[[int], None] = progress.add_bytes if progress else _ignore
    opts = job.options
    try:
        src_fd = os.open(job.src, os.O_RDONLY | O_BINARY | O_CLOEXEC)
        try:
            dst_fd = os.open(job.tmp, os.O_RDWR | O_BINARY | O_CLOEXEC | O_NOFOLLOW)
            try:
                end = job.offset + job.length
                segments = (data_segments(src_fd, job.offset, end) if job.sparse
                            else [(job.offset, job.length)])
                for offset, length in segments:
                    copied = copy_range(src_fd, dst_fd, offset, length, use_fast_paths=opts.use_fast_paths,
                                        buffer_bytes=opts.buffer_bytes, on_bytes=on_bytes)
                    if copied != length:
                        raise ChangedError("file shrank during copy")
                    result.bytes += copied
                if opts.verify:
                    check_same(src_fd, dst_fd, job.offset, job.length)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
    except (OSError, ChangedError) as exc:
        result.failures.append(CopyFailure.of(job.src, exc))
    return result


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
