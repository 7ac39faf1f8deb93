"""run_job: what a pool worker (or the parent, with -j 1) does with one job. It never raises:
failures travel back as data in the JobResult."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from pcopy import bwlimit, lookupstat, threads
from pcopy.backup import back_up
from pcopy.config import PROGRESS_BYTES, PROGRESS_INTERVAL_S
from pcopy.errors import WorkerStop
from pcopy.fastcopy import copy_positional, copy_range, data_segments, digest_range, is_sparse
from pcopy.jobs import (
    ATTRIBUTES,
    COMPARE_ALWAYS,
    COMPARE_QUICK,
    COPIED,
    DST_ATTRS,
    DST_DIFFERS,
    DST_MISSING,
    DST_SAME,
    HARDLINKED,
    REPLACED,
    STEP_CHECK,
    STEP_COMPARE,
    STEP_COPY,
    STEP_CREATE,
    STEP_FSYNC,
    STEP_METADATA,
    STEP_OPEN,
    STEP_RENAME,
    STEP_STAT,
    BatchJob,
    CopyFailure,
    CopyOptions,
    DirJob,
    EntryTask,
    GroupJob,
    Job,
    JobResult,
    Kind,
    RangeJob,
    ScanJob,
    tag_step,
)
from pcopy.linkdest import find_link, link_into_place
from pcopy.metadata import (
    O_BINARY,
    O_CLOEXEC,
    O_NOFOLLOW,
    UTIME_FD,
    apply_metadata,
    copy_xattrs,
    create_temp,
    current_umask,
    make_special,
    masked_mode,
    remove_leftovers,
    remove_made_temps,
    set_times,
    temp_mode,
    temp_path,
)
from pcopy.opendirs import HELD
from pcopy.partial import open_partial, resumable
from pcopy.scan import scan_dir
from pcopy.walk import kind_of


class ProgressQueue(Protocol):
    def put(self, item: Any) -> None: ...


class _Terminated(WorkerStop):
    """Raised inside a job when the worker is told to stop, so `finally` blocks remove temp files."""


_in_job = False
_EUID = os.geteuid() if hasattr(os, "geteuid") else -1
_EGID = os.getegid() if hasattr(os, "getegid") else -1
_HAS_BLOCKS = hasattr(os.stat_result, "st_blocks")
_worker_queue: ProgressQueue | None = None  # set once per pool worker by init_worker


def _on_sigterm(signum: int, frame: object) -> None:
    if _in_job:
        raise _Terminated
    os._exit(128 + signum)  # idle between jobs: nothing to clean up


_stop_dropped = False  # _Terminated was raised where Python drops exceptions (_unraisable)


def _unraisable(args: Any) -> None:
    """sys.unraisablehook in a worker: a SIGTERM whose _Terminated landed in a __del__ or a
    weakref callback (importlib's module locks have one) is printed as "Exception ignored" and
    lost. Not printed: the worker leaves once its job ends, as the parent asked."""
    global _stop_dropped
    if isinstance(args.exc_value, _Terminated):
        _stop_dropped = True
        return
    sys.__unraisablehook__(args)


def init_worker(progress_queue: ProgressQueue | None = None) -> None:
    """Pool initializer (it runs before the worker lets signals in, see pool.serve). The parent
    alone decides what an interrupt means: workers ignore SIGINT (a Ctrl-C reaches the whole
    process group) and turn SIGTERM (the parent stopping them, or the pool when the parent is
    gone) into a clean exit that removes the temporary file they were writing. The progress
    queue comes here once per worker rather than with every job: unpickling a Manager proxy
    costs a round trip."""
    global _worker_queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.unraisablehook = _unraisable
    _worker_queue = progress_queue


class _Progress:
    """Batches byte counts before they go on the queue: one put per PROGRESS_BYTES or interval.
    A message is (bytes done, files done, bytes found, names sized): the last two are a DirJob's
    stat results, so the display knows its total is final once every walked name is sized."""

    __slots__ = ("found_bytes", "last", "lock", "owner", "pending_bytes", "pending_files", "queue", "sized_names")

    def __init__(self, queue: ProgressQueue) -> None:
        self.lock = threading.Lock()  # a job's threads (pcopy.threads) count into one
        # Only the job's own thread sends: a Manager proxy used from another thread opens a
        # connection of its own (and names the thread, making threading objects for it).
        self.owner = threading.get_ident()
        self.queue = queue
        self.pending_bytes = 0
        self.pending_files = 0
        self.found_bytes = 0  # sizes the worker stat'ed: the display's total grows by these
        self.sized_names = 0  # names of a DirJob stat'ed (or failed to), whatever became of them
        self.last = time.monotonic()

    def add_found(self, n: int, names: int) -> None:
        with self.lock:
            self.found_bytes += n
            self.sized_names += names

    def add_bytes(self, n: int) -> None:
        with self.lock:
            self.pending_bytes += n
            if ((self.pending_bytes >= PROGRESS_BYTES or time.monotonic() - self.last >= PROGRESS_INTERVAL_S)
                    and threading.get_ident() == self.owner):
                self._flush()

    def add_file(self) -> None:
        with self.lock:
            self.pending_files += 1
            if time.monotonic() - self.last >= PROGRESS_INTERVAL_S and threading.get_ident() == self.owner:
                self._flush()

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        if self.pending_bytes or self.pending_files or self.found_bytes or self.sized_names:
            try:
                self.queue.put((self.pending_bytes, self.pending_files, self.found_bytes, self.sized_names))
            except Exception:  # the channel broke (its process died): it costs the bar only
                self.queue = _NO_PROGRESS
                _lose_progress_channel()
            self.pending_bytes = self.pending_files = self.found_bytes = self.sized_names = 0
        self.last = time.monotonic()


class _NoProgress:
    def put(self, item: Any) -> None:
        pass


_NO_PROGRESS = _NoProgress()


def _lose_progress_channel() -> None:
    """A progress channel that failed once is not used again by this worker."""
    global _worker_queue
    _worker_queue = None


def _ignore(_: int) -> None:
    return None


def run_job(job: Job, queue: ProgressQueue | None = None) -> JobResult:
    """Run one job; a failure of one entry is recorded and the next entry goes on. Progress goes
    to queue, or in a pool worker to the queue given to init_worker."""
    global _in_job
    queue = queue if queue is not None else _worker_queue
    progress = _Progress(queue) if queue is not None else None
    try:
        _in_job = True
        threads.configure((job.jobs[0] if isinstance(job, GroupJob) else job).options.threads)
        threads.on_wait(progress.flush if progress is not None else None)
        result = _run_group(job, progress) if isinstance(job, GroupJob) else _run_one(job, progress)
        result.threads = threads.concurrency.limit  # what the parent groups jobs by
        if _stop_dropped:
            raise _Terminated
        return result
    except _Terminated:
        remove_made_temps()  # (on the way out each thread removed its own, as far as it knew it)
        os._exit(128 + signal.SIGTERM)
    finally:
        _in_job = False
        if progress is not None:
            progress.flush()


def _run_one(job: BatchJob | DirJob | RangeJob | ScanJob, progress: _Progress | None) -> JobResult:
    if isinstance(job, DirJob):
        return _run_dir(job, progress)
    if isinstance(job, ScanJob):
        return _run_scan(job, progress)
    if isinstance(job, RangeJob):
        return _run_range(job, progress)
    return _run_batch(job, progress)


def _run_group(group: GroupJob, progress: _Progress | None) -> JobResult:
    """The group's jobs at once, one thread each (at most the thread limit), sharing the limit;
    measured as one phase (their CPU times overlap, so none of them can measure itself)."""
    members = group.jobs
    results: list[JobResult | None] = [None] * len(members)
    limit = threads.concurrency.limit
    at_once = min(len(members), limit)

    def run(i: int, _: JobResult) -> None:
        threads.grouped(at_once)
        try:
            results[i] = _run_one(members[i], progress)
        finally:
            threads.grouped(1)

    start, cpu, waited = time.perf_counter(), time.process_time(), threads.waits()
    threads.each(range(len(members)), run, JobResult(group.job_id), at_once)
    parts = [r for r in results if r is not None]
    entries = sum(r.files + r.skipped + len(r.failures) + r.hardlinked for r in parts)
    # Only a group of the size this limit calls for says something about it (the parent may
    # have formed this one at an older limit, or had fewer jobs left).
    full = len(members) >= threads.group_size(limit) and entries >= limit
    threads.concurrency.observe("group", entries, time.perf_counter() - start, time.process_time() - cpu,
                                limit if full else 0, start, threads.waits_since(waited))
    return JobResult(group.job_id, parts=parts)


def _run_batch(job: BatchJob, progress: _Progress | None) -> JobResult:
    result = JobResult(job.job_id)
    if job.options.record_changes:
        result.changes = []
    limit = _threads(job.options)
    on_bytes = _on_bytes(progress, limit)

    def copy(task: EntryTask, part: JobResult) -> None:
        _copy_one(task, job.options, None, part, on_bytes)
        if progress is not None:
            progress.add_file()

    threads.each(job.tasks, copy, result, limit, measure=threads.job_measure())
    return result


def _on_bytes(progress: _Progress | None, limit: int | None) -> Callable[[int], None]:
    """What a job's copies call as bytes move: the progress count and, with threads, the check
    that lets a stopping job's other threads leave mid-file (threads.check_stop)."""
    count: Callable[[int], None] = progress.add_bytes if progress else _ignore
    if limit == 1 or (limit is None and threads.job_threads() == 1):
        return count  # one thread (a page cache): nothing to check, not a call more per file

    def checked(nbytes: int) -> None:
        threads.check_stop(nbytes)
        count(nbytes)

    return checked


def _threads(options: CopyOptions) -> int | None:
    """How many threads a job's entries may use: None, the job's share of the worker's limit
    (pcopy.threads), except one with --bwlimit (a process' slot in the shared budget is
    written by one thread only)."""
    return 1 if options.bwlimit_bytes else None


def _copy_one(task: EntryTask, options: CopyOptions, dst_dir: DstDir | None, result: JobResult,
              on_bytes: Callable[[int], None]) -> None:
    step = STEP_COMPARE
    try:
        # Default options: one attribute test, then the quick check exactly as before.
        state = judge_task(task, options)
        if state >= DST_SAME:  # DST_SAME or DST_ATTRS
            _count_skipped(result, task.size, on_bytes, task.dst if state == DST_ATTRS else None)
            return
        if options.link_dest and options.compare != COMPARE_ALWAYS and _link_from_dest(task, options, state, result):
            on_bytes(task.size)
            return
        if options.backup and state != DST_DIFFERS:
            # Nothing of the user's is there to keep: only what a worker of this run that died
            # wrote (a retried job judges a directory it created as empty, see check_dst).
            options = options._replace(backup=False)
        step = STEP_COPY  # copy_entry tags its other steps
        if options.dry_run:
            copied = task.size  # what a real run would copy; nothing is opened for writing
            on_bytes(copied)
        elif options.partial and resumable(task):
            copied = _copy_resumable(task, options, on_bytes, result)
        else:
            copied = copy_entry(task, options, on_bytes, dst_dir)
        if options.backup and state == DST_DIFFERS:
            result.backed_up += 1
        _count_copied(result, task.dst, copied, state == DST_DIFFERS)
    except (OSError, ChangedError) as exc:
        result.failures.append(CopyFailure.of(task.src, exc, step))


def _link_from_dest(task: EntryTask, options: CopyOptions, state: int, result: JobResult) -> bool:
    """--link-dest: link task.dst to an unchanged earlier copy; False: it must be copied."""
    if task.kind is not Kind.FILE and task.kind is not Kind.SYMLINK:
        return False
    candidate = find_link(task, options)
    if candidate is None:
        return False
    if not options.dry_run and not link_into_place(candidate, task, options, missing=state == DST_MISSING):
        result.link_fallbacks += 1
        return False
    result.hardlinked += 1
    result.hardlinked_bytes += task.size
    if options.backup and state == DST_DIFFERS:
        result.backed_up += 1
    if result.changes is not None:
        result.changes.append((HARDLINKED, task.dst))
    return True


def _copy_span(src_fd: int, dst_fd: int, offset: int, length: int | None, options: CopyOptions,
               on_bytes: Callable[[int], None], devices: tuple[int, int] | None = None,
               dst_at_offset: bool = False, use_fast_paths: bool | None = None) -> int:
    """copy_range (or, from a slow SRC, read_in_threads), in slices paced by the run's shared
    budget when --bwlimit is set."""
    fast = options.use_fast_paths if use_fast_paths is None else use_fast_paths
    if not options.bwlimit_bytes or length is None:
        return copy_bytes(src_fd, dst_fd, offset, length, fast, options.buffer_bytes, on_bytes, devices,
                          dst_at_offset, options.slow_dst, options.read_threads)
    throttle = bwlimit.attach(options.bwlimit_path)
    done = 0
    while done < length:
        want = min(throttle.slice_bytes, length - done)
        got = copy_range(src_fd, dst_fd, offset + done, want, use_fast_paths=fast,
                         buffer_bytes=min(options.buffer_bytes, throttle.slice_bytes),
                         on_bytes=on_bytes, devices=devices)
        done += got
        throttle.spend(got)
        if got < want:
            break  # the source ended early: the caller's checks decide
    return done


# A file from a slow SRC (a round trip per request) is read by several threads from this size:
# reads of one file at different offsets overlap where each stream is bound by the read-ahead
# window per round trip (128 KiB on FUSE). 256 MiB at 5 ms per request: 6.99 s with one
# stream, 1.79 / 1.34 / 1.09 s with 4 / 8 / 16 threads; 16 MiB at 1 ms: 0.12 -> 0.05 s.
READ_SPLIT_MIN_BYTES = 4 * 1024 * 1024
READ_PART_MIN_BYTES = 2 * 1024 * 1024  # no thread gets less
FADVISE_MIN_BYTES = 128 * 1024  # from here a slow SRC is read with a doubled read-ahead window
_FADVISE = getattr(os, "posix_fadvise", None)
_PAGE = 4096  # (the smallest page size: a file no larger is one page, one READ)


def copy_bytes(src_fd: int, dst_fd: int, offset: int, length: int | None, fast: bool, buffer_bytes: int,
               on_bytes: Callable[[int], None], devices: tuple[int, int] | None, dst_at_offset: bool,
               slow_dst: bool, read_threads: int) -> int:
    """copy_range with what the storage calls for (CopyOptions.slow_dst, read_threads)."""
    if read_threads > 1 and fast and length is not None:
        _advise(src_fd, offset, length, devices)
        if length >= READ_SPLIT_MIN_BYTES:
            return read_in_threads(src_fd, dst_fd, offset, length, read_threads, on_bytes)
    return copy_range(src_fd, dst_fd, offset, length, use_fast_paths=fast, buffer_bytes=buffer_bytes,
                      on_bytes=on_bytes, devices=devices, dst_at_offset=dst_at_offset, slow_dst=slow_dst)


def _advise(src_fd: int, offset: int, length: int, devices: tuple[int, int] | None) -> None:
    """Tell the kernel how a range of a file from a slow SRC will be read."""
    if _FADVISE is None:
        return
    if length > FADVISE_MIN_BYTES:
        advice = os.POSIX_FADV_SEQUENTIAL  # (as cp does: the kernel reads further ahead)
    elif length > _PAGE and devices is not None and devices[0] != devices[1]:
        # The whole small file asked for at once: FUSE drops a first read-ahead while its queue
        # is congested (fuse_readahead), and the pages are then read one by one, a READ each
        # (delayfs, 1,000 files of 0.2-8 KiB in 100 directories: 1.27 READs per file). A
        # read-ahead asked for is not dropped. (Not within one file system: there
        # copy_file_range may have the server copy it, with no READ at all.)
        advice = os.POSIX_FADV_WILLNEED
    else:
        return
    with contextlib.suppress(OSError):
        _FADVISE(src_fd, offset, length, advice)


def read_in_threads(src_fd: int, dst_fd: int, offset: int, length: int, most: int,
                    on_bytes: Callable[[int], None]) -> int:
    """[offset, offset+length) as up to `most` contiguous parts, each copied by its own thread
    with 1 MiB positional reads and writes (threads leave as a stopping job's do: on_bytes
    raises). Returns the bytes copied (fewer only if SRC ended early: the caller checks)."""
    parts = max(1, min(most, length // READ_PART_MIN_BYTES))
    step = -(-length // parts)
    spans = [(start, min(step, offset + length - start)) for start in range(offset, offset + length, step)]
    if os.fstat(dst_fd).st_size < offset + length:
        os.ftruncate(dst_fd, offset + length)  # sized first: no part waits for another's end

    def copy(span: tuple[int, int], part: JobResult) -> None:
        part.bytes += copy_positional(src_fd, dst_fd, span[0], span[1], on_bytes)

    counted = JobResult(0)
    threads.each(spans, copy, counted, len(spans))
    return counted.bytes


def _copy_resumable(task: EntryTask, options: CopyOptions, on_bytes: Callable[[int], None],
                    result: JobResult) -> int:
    """--partial: copy into the file's partial name, continuing what an interrupted run wrote
    there when the source is provably the same (pcopy.partial), then rename it into place.
    An interruption or an I/O error keeps the partial file for the next run; a source that
    changed, or a copy --verify rejects, removes it. Returns the bytes copied in this run."""
    src_flags = os.O_RDONLY | O_BINARY | O_CLOEXEC | (0 if options.dereference else O_NOFOLLOW)
    src_fd = os.open(task.src, src_flags)
    try:
        dst_fd, path, offset = open_partial(src_fd, task)
        try:
            try:
                if offset:
                    result.resumed += 1
                    result.resumed_bytes += offset
                    on_bytes(offset)
                copied = _copy_span(src_fd, dst_fd, offset, task.size - offset, options, on_bytes)
                _check_unchanged(src_fd, task.size, task.mtime_ns, offset + copied, sparse=False)
                if options.verify:
                    check_same(src_fd, dst_fd, 0, None)
                if options.preserve_xattrs:
                    copy_xattrs(task.src, dst_fd, follow_symlinks=options.dereference)
                if options.fsync:
                    os.fsync(dst_fd)
                apply_metadata(path, task, options.preserve_owner, fd=dst_fd,
                               preserve_group=options.preserve_group, times=options.preserve_times)
            finally:
                os.close(dst_fd)
            if options.backup:
                back_up(task.dst, options)
            os.replace(path, task.dst)
        except ChangedError:
            _remove(path)  # written from another version of the source: worthless
            raise
    finally:
        os.close(src_fd)
    return copied


def _count_skipped(result: JobResult, size: int, on_bytes: Callable[[int], None],
                   attributes_of: str | None = None) -> None:
    """An up-to-date entry; attributes_of: its DST path when its permissions or times were set."""
    result.skipped += 1
    result.skipped_bytes += size
    if attributes_of is not None:
        result.attributes += 1
        if result.changes is not None:
            result.changes.append((ATTRIBUTES, attributes_of))
    on_bytes(size)


def _count_copied(result: JobResult, dst: str, copied: int, replaced: bool) -> None:
    result.bytes += copied
    result.files += 1
    if replaced:
        result.replaced += 1
        result.replaced_bytes += copied
    if result.changes is not None:
        result.changes.append((REPLACED if replaced else COPIED, dst))


class DstDir(NamedTuple):
    """What a worker learns from one stat of a destination directory, for all files in it."""

    dev: int
    new_file_gid: int  # group a new file gets: the directory's if it is set-group-ID


def _dst_dir(path: str, fd: int | None = None) -> DstDir | None:
    try:
        st = os.stat(path) if fd is None else os.fstat(fd)
    except OSError:
        return None
    gid = st.st_gid if st.st_mode & stat.S_ISGID else _EGID
    return DstDir(st.st_dev, gid)


def _run_dir(job: DirJob, progress: _Progress | None) -> JobResult:
    """stat every name, then copy them, except what the parent must plan: large files (byte
    ranges), files with several links (hard links), and, when the names hold more than
    job_bytes, the files beyond that budget (the parent spreads them over all workers, instead
    of this one worker copying them in a row)."""
    with _DirFds(job.src_dir, job.dst_dir) as fds:
        return _run_dir_open(job, progress, fds)


def _run_dir_open(job: DirJob, progress: _Progress | None, fds: _DirFds) -> JobResult:
    result = JobResult(job.job_id)
    if job.options.record_changes:
        result.changes = []
    on_bytes = _on_bytes(progress, _threads(job.options))
    dst_dir = _dst_dir(job.dst_dir, fds.dst)
    lean = _Lean.of(job, dst_dir)
    if lean is None:
        fds = fds.source_only()  # the general path names destination files by full paths
    elif lean.check_dst:
        lean.quick_dst = lookupstat.quick_in(fds.dst, job.options.lookup_devs)
    return _run_dir_in(job, progress, result, on_bytes, dst_dir, lean, fds)


def _run_scan(job: ScanJob, progress: _Progress | None) -> JobResult:
    """List one directory (pcopy.scan), then copy the names it keeps, with the same open
    directories."""
    with _DirFds(job.src_dir, job.dst_dir if not job.options.dry_run else None) as fds:
        if job.leftovers and not job.options.dry_run:
            # What a killed run left here (temporary files; partial ones too, unless this run
            # continues them), before anything of this run is written into it.
            with contextlib.suppress(OSError):
                remove_leftovers(job.dst_dir, keep_partial=job.options.partial)
        result, here = scan_dir(job, fds.dst, fds.src)
        if here is not None:
            result.absorb(_run_dir_open(here, progress, fds))
    return result


class _DirFds:
    """The job's source (and, for the lean path, destination) directory opened once, so the
    per-file calls name a file relative to it (the *at calls) instead of by a full path: on a
    network or FUSE file system without attribute caching every component of a path is a round
    trip (LOOKUP, GETATTR) per call. None where *at calls are missing (Windows) or a directory
    cannot be opened: then full paths, as before."""

    __slots__ = ("dst", "src")

    def __init__(self, src_dir: str | None, dst_dir: str | None) -> None:
        self.src = _open_dir(src_dir) if src_dir is not None else None
        self.dst = _open_dir(dst_dir) if dst_dir is not None and self.src is not None else None

    def __enter__(self) -> _DirFds:
        return self

    def source_only(self) -> _DirFds:
        """The same source directory, no destination one (not to be closed: self owns it)."""
        view = _DirFds(None, None)
        view.src = self.src
        return view

    def __exit__(self, *exc: object) -> None:
        for fd in (self.src, self.dst):
            if fd is not None:
                os.close(fd)


_AT_CALLS = (hasattr(os, "O_DIRECTORY") and {os.open, os.stat, os.rename, os.unlink} <= os.supports_dir_fd
             and os.stat in os.supports_follow_symlinks)


def _open_dir(path: str) -> int | None:
    # Relative to a directory an earlier job of this run left held, where there is one.
    return HELD.open(path) if _AT_CALLS else None


def _run_dir_in(job: DirJob, progress: _Progress | None, result: JobResult, on_bytes: Callable[[int], None],
                dst_dir: DstDir | None, lean: _Lean | None, fds: _DirFds) -> JobResult:
    follow = job.options.dereference
    # Plain concatenation: os.path.join costs ~2 us, twice per file.
    src_prefix = os.path.join(job.src_dir, "")
    dst_prefix = os.path.join(job.dst_dir, "")
    limit = _threads(job.options)
    # On a FUSE mount that caches no names (options.lookup_devs): the attributes each name's
    # LOOKUP returns (one round trip per name, not two).
    quick_src = lookupstat.quick_in(fds.src, job.options.lookup_devs)
    stat_name = lookupstat.stat_at if quick_src else os.stat

    def sort(name: str, st: os.stat_result, part: JobResult) -> _Item | None:
        """What to do with one stat'ed name: the item to copy, or None (handed back to the
        parent, or a failure recorded)."""
        if lean is not None and lean.takes(st):
            return name, st, None
        src = src_prefix + name
        task = task_from_stat(src, dst_prefix + name, st, job.check_dst)
        if task is None:
            part.failures.append(CopyFailure(src, None, "not a file, symlink or special file", STEP_STAT))
        elif task.kind is Kind.FILE and (task.size > job.split_bytes or (task.nlink > 1 and job.hand_back_links)):
            part.handed_back.append(task)
        else:
            return name, st, task
        return None

    def copy(item: _Item, part: JobResult, held: int | None = None) -> None:
        name, st, task = item
        if task is not None:
            _copy_one(task, job.options, dst_dir, part, on_bytes)
        elif lean is not None:
            lean.copy(src_prefix + name, dst_prefix + name, st, part, on_bytes, name, fds, held)
        if progress is not None:
            progress.add_file()

    if quick_src and lean is not None and _REOPEN and not job.check_dst and fds.src is not None and fds.dst is not None:
        # From a slow SRC that caches no names, into a directory this run made: each name is
        # stat'ed and copied in one pass, from one lookup of it (_Opened), instead of a stat
        # phase and a copy phase that each look it up. (Where names are cached, the two phases
        # cost no more requests, and stat a job's names together while the listing's entries
        # are still valid: on slowfs with 1 s caches, as libfuse's passthrough_ll keeps them,
        # one pass took 1.15 s against 0.86 s for 1,000 files, with 877 LOOKUPs against 251.)
        opened = _Opened(job, fds.src, sort, copy, progress)
        threads.each(job.names, opened.copy, result, limit, measure=threads.job_measure())
        return result

    todo: list[_Item] = []  # appends are atomic (threads)

    def look(name: str, part: JobResult) -> None:
        try:
            st = (stat_name(name, dir_fd=fds.src, follow_symlinks=follow) if fds.src is not None
                  else os.stat(src_prefix + name, follow_symlinks=follow))
        except OSError as exc:
            part.failures.append(CopyFailure.of(src_prefix + name, exc, STEP_STAT))
            return
        if (item := sort(name, st, part)) is not None:
            todo.append(item)

    # From a slow SRC (read_threads: latency.storage_options) the stats are measured too: a
    # worker's first job would otherwise stat all its names, up to 256 round trips, on one
    # thread before its copy phase could grow any (delayfs at 1 ms, 1,000 files in one
    # directory, slow -> local: 2.22 -> 1.55 s). From a local SRC they are CPU-bound and would
    # halve the limit the copy phase grew.
    threads.each(job.names, look, result, limit, kind="stat",
                 measure=threads.job_measure() if job.options.read_threads else None)
    total = sum(_size(item) for item in todo)
    if progress is not None:
        progress.add_found(total + sum(t.size for t in result.handed_back), len(job.names))
    if total > job.job_bytes:  # past the job's byte budget: the parent spreads the rest
        todo = _within_budget(todo, job, result)
    threads.each(todo, copy, result, limit, measure=threads.job_measure())
    return result


# (name, stat, task): task None for a file the lean path copies (no EntryTask built).
_Item = tuple[str, os.stat_result, "EntryTask | None"]


def _size(item: _Item) -> int:
    _name, st, task = item
    return task.size if task is not None else st.st_size


# Reopening a file through /proc/self/fd/N: a new open file of the inode an O_PATH descriptor
# holds, without resolving its name again (Linux; elsewhere the two phases).
_O_PATH = getattr(os, "O_PATH", 0)
_REOPEN = bool(_O_PATH) and _AT_CALLS and sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")


class _Opened:
    """A DirJob's names from a SRC on one of lookup_devs (a FUSE mount that caches no names)
    into a new directory, each stat'ed and copied by one thread in one go. Each name is
    resolved once, by an O_PATH open (a LOOKUP: no OPEN, nothing to FLUSH or RELEASE); its
    attributes are those that LOOKUP brought (lookupstat.stat_fd, no request), and a file to
    copy is opened for reading through it. The two phases resolve it twice, for the stat and
    for the open: on benchmarks/slowfs/delayfs.py at 1 ms, 7.2 requests per small file read
    become 6.4 (1,000 files in one directory). O_PATH opens no device or FIFO, whatever the
    name turns out to be.

    The job's byte budget is spent in the order the files come (the parent gets those that do
    not fit, as after the two phases), and the bar's total grows by each name's size as it is
    stat'ed rather than by the job's at once."""

    __slots__ = ("copy_item", "flags", "job", "lock", "progress", "sort", "spent", "src_fd")

    def __init__(self, job: DirJob, src_fd: int, sort: Callable[[str, os.stat_result, JobResult], _Item | None],
                 copy: Callable[[_Item, JobResult, int | None], None], progress: _Progress | None) -> None:
        self.job = job
        self.src_fd = src_fd
        self.sort = sort
        self.copy_item = copy
        self.progress = progress
        self.flags = _O_PATH | O_CLOEXEC | (0 if job.options.dereference else O_NOFOLLOW)
        self.lock = threading.Lock()
        self.spent = 0

    def _fits(self, size: int) -> bool:
        """Whether a file of size bytes fits what is left of the job's byte budget (taking it)."""
        with self.lock:
            if size and self.spent + size > self.job.job_bytes:
                return False
            self.spent += size
            return True

    def copy(self, name: str, part: JobResult) -> None:
        item = None
        try:
            held = os.open(name, self.flags, dir_fd=self.src_fd)
        except OSError as exc:
            part.failures.append(CopyFailure.of(os.path.join(self.job.src_dir, name), exc, STEP_STAT))
            self._sized(0)
            return
        try:
            item = self._sort(name, held, part)
            if item is not None and item[2] is None:  # the lean path: read through held
                self.copy_item(item, part, held)
                item = None
        finally:
            os.close(held)
        if item is not None:  # the general path opens the file by its name
            self.copy_item(item, part, None)

    def _sort(self, name: str, held: int, part: JobResult) -> _Item | None:
        """The item to copy for name (None: a failure, or handed back to the parent), its size
        counted on the bar and against the budget."""
        try:
            st = lookupstat.stat_fd(held, name)
        except OSError as exc:
            part.failures.append(CopyFailure.of(os.path.join(self.job.src_dir, name), exc, STEP_STAT))
            self._sized(0)
            return None
        handed = len(part.handed_back)
        item = self.sort(name, st, part)
        size = _size(item) if item is not None else sum(t.size for t in part.handed_back[handed:])
        self._sized(size)
        if item is not None and not self._fits(size):
            part.handed_back.append(item[2] or _task_of(self.job, item))
            return None
        return item

    def _sized(self, size: int) -> None:
        if self.progress is not None:
            self.progress.add_found(size, 1)


def _task_of(job: DirJob, item: _Item) -> EntryTask:
    name, st, _ = item
    task = task_from_stat(os.path.join(job.src_dir, name), os.path.join(job.dst_dir, name), st, job.check_dst)
    assert task is not None  # (task_from_stat makes a task of every regular file the lean path takes)
    return task


def _within_budget(todo: list[_Item], job: DirJob, result: JobResult) -> list[_Item]:
    """The entries that fit job.job_bytes (in order; empty ones always do); the others are
    handed back to the parent."""
    kept = []
    spent = 0
    for item in todo:
        size = _size(item)
        if size and spent + size > job.job_bytes:
            result.handed_back.append(item[2] or _task_of(job, item))
            continue
        spent += size
        kept.append(item)
    return kept


class _Lean:
    """The per-file path of most files of most runs, without an EntryTask or a chain of calls:
    a regular, non-sparse file of one link, copied with the default options, whose permissions
    and owner can be given at creation (no set-ID bits, nothing the umask strips, owner
    already right). Its syscalls are those of copy_entry; it saves ~10 us of Python per file,
    about a third of a 20,000-file copy's CPU. Anything else takes the general path."""

    __slots__ = ("buffer_bytes", "check_dst", "devices_dst", "direct", "euid", "group", "hand_back_links",
                 "new_gid", "odd_bits", "owner", "quick_dst", "read_threads", "slow_dst", "split_bytes", "src_flags")

    def __init__(self, job: DirJob, dst_dir: DstDir) -> None:
        options = job.options
        self.check_dst = job.check_dst
        # In a directory this run made inside a new DST's stage (pcopy.stage): written under its
        # final name, no temporary name and rename (7 of a small file's 16 requests on FUSE).
        self.direct = options.staged and not job.check_dst
        self.quick_dst = False  # the quick check's lstat by pcopy.lookupstat (see _run_dir_open)
        self.split_bytes = job.split_bytes
        self.hand_back_links = job.hand_back_links
        self.odd_bits = 0o7000 | current_umask()  # bits a file cannot simply be created with
        self.owner = options.preserve_owner
        self.group = options.preserve_group
        self.euid = _EUID
        self.new_gid = dst_dir.new_file_gid
        self.devices_dst = dst_dir.dev
        self.buffer_bytes = options.buffer_bytes
        self.slow_dst = options.slow_dst
        self.read_threads = options.read_threads
        self.src_flags = os.O_RDONLY | O_BINARY | O_CLOEXEC | (0 if options.dereference else O_NOFOLLOW)

    @classmethod
    def of(cls, job: DirJob, dst_dir: DstDir | None) -> _Lean | None:
        """The lean path for this job's files, or None when its options need the general one."""
        o = job.options
        if (dst_dir is None or not o.plain or o.verify or o.fsync or not o.use_fast_paths
                or not UTIME_FD or not _HAS_BLOCKS):
            return None
        return cls(job, dst_dir)

    def takes(self, st: os.stat_result) -> bool:
        mode = st.st_mode
        size = st.st_size
        return (stat.S_ISREG(mode) and 0 < size <= self.split_bytes and not mode & self.odd_bits
                and (st.st_nlink == 1 or not self.hand_back_links)
                and st.st_blocks * 512 >= size  # not sparse (is_sparse)
                and (not self.owner or st.st_uid == self.euid)
                and (not self.group or st.st_gid == self.new_gid))

    def copy(self, src: str, dst: str, st: os.stat_result, result: JobResult,
             on_bytes: Callable[[int], None], name: str, fds: _DirFds, held: int | None = None) -> None:
        """copy_entry for a file `takes` accepted, with dst_state's quick check. Where the
        job's directories are open (fds), every call names the file relative to them; held,
        an O_PATH descriptor of the source file (_Opened), is reopened instead."""
        size = st.st_size
        step = STEP_COMPARE  # what a failure was doing (a local: free on the way)
        src_at, dst_at = (name, name) if fds.dst is not None else (src, dst)
        try:
            replacing = False
            if self.check_dst:
                there = _existing(dst_at, fds.dst, dst, quick=self.quick_dst)
                if there is not None:
                    state = _file_up_to_date(dst, size, st.st_mtime_ns, st.st_mode, there)
                    if state != DST_DIFFERS:
                        _count_skipped(result, size, on_bytes, dst if state == DST_ATTRS else None)
                        return
                    replacing = True
            step = STEP_OPEN
            src_fd = (os.open(src_at, self.src_flags, dir_fd=fds.src if fds.dst is not None else None)
                      if held is None else  # (the magic link is one: no O_NOFOLLOW)
                      os.open(f"/proc/self/fd/{held}", self.src_flags & ~O_NOFOLLOW))
            try:
                step = STEP_CREATE
                dst_fd, tmp = self._create(dst_at, stat.S_IMODE(st.st_mode), fds.dst, dst)
                try:
                    try:
                        step = STEP_COPY
                        copied = (copy_range(src_fd, dst_fd, 0, size, use_fast_paths=True,
                                             buffer_bytes=self.buffer_bytes, on_bytes=on_bytes,
                                             devices=(st.st_dev, self.devices_dst), dst_at_offset=True,
                                             slow_dst=self.slow_dst)
                                  if self.read_threads <= 1 else
                                  copy_bytes(src_fd, dst_fd, 0, size, True, self.buffer_bytes, on_bytes,
                                             (st.st_dev, self.devices_dst), True, self.slow_dst,
                                             self.read_threads))
                        step = STEP_CHECK
                        _check_unchanged(src_fd, size, st.st_mtime_ns, copied, sparse=False)
                        step = STEP_METADATA
                        os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                    finally:
                        os.close(dst_fd)
                    if tmp is not None:
                        step = STEP_RENAME
                        os.replace(tmp, dst_at, src_dir_fd=fds.dst, dst_dir_fd=fds.dst)
                except BaseException:
                    _remove(dst_at if tmp is None else tmp, fds.dst)  # (direct: a name this call created)
                    raise
            finally:
                os.close(src_fd)
        except (OSError, ChangedError) as exc:
            result.failures.append(CopyFailure.of(src, exc, step))
            return
        _count_copied(result, dst, size, replacing)

    def _create(self, dst: str, mode: int, dir_fd: int | None, shown: str) -> tuple[int, str | None]:
        """The file to write: (fd, its temporary name), or (fd, None) where it is created under
        its final name (direct). A name already there (a job run again after its worker died
        mid-file) is replaced the usual way, through a temporary name."""
        if self.direct:
            try:
                return os.open(dst, _DIRECT_FLAGS, mode, dir_fd=dir_fd), None
            except FileExistsError:
                pass
        return create_temp(dst, mode, dir_fd, shown)


_DIRECT_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | O_BINARY | O_NOFOLLOW | O_CLOEXEC


def task_from_stat(src: str, dst: str, st: os.stat_result, check_dst: bool) -> EntryTask | None:
    """The task for one stat'ed entry; None for a directory or an unknown file type."""
    mode = st.st_mode
    kind = kind_of(mode)
    if kind is None or kind is Kind.DIR:
        return None
    size = st.st_size if kind is Kind.FILE else 0
    blocks = getattr(st, "st_blocks", None)
    return EntryTask(src, dst, kind, size, mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns,
                     getattr(st, "st_rdev", 0), kind is Kind.FILE and is_sparse(size, blocks), check_dst,
                     st.st_dev, st.st_ino, st.st_nlink)


class ChangedError(Exception):
    """The source changed while it was copied, or --verify found a difference; the copy was
    discarded."""


def check_same(src_fd: int, dst_fd: int, offset: int, length: int | None) -> None:
    """--verify: both sides read back and their digests compared (in the worker, in parallel)."""
    if digest_range(src_fd, offset, length) != digest_range(dst_fd, offset, length):
        raise ChangedError("verification failed: the copy differs from the source")


def judge_task(task: EntryTask, options: CopyOptions) -> int:
    """What to do with task.dst: DST_MISSING, DST_DIFFERS or DST_SAME. Default options take the
    plain quick check (one attribute test on the per-file path); the others go through judge."""
    if options.plain:
        return dst_state(task) if task.check_dst else DST_MISSING
    return judge(task, options)


def dst_state(task: EntryTask) -> int:
    """DST_MISSING, DST_DIFFERS or DST_SAME for task.dst, by the quick check of rsync, rclone
    and robocopy: same type, size and mtime (symlinks: same target); one lstat."""
    there = _existing(task.dst)
    if there is None:
        return DST_MISSING
    if task.kind is Kind.FILE:
        return _file_up_to_date(task.dst, task.size, task.mtime_ns, task.mode, there)
    return DST_SAME if _same_symlink(task, there) else DST_DIFFERS


def _existing(dst: str, dir_fd: int | None = None, shown: str | None = None, *,
              quick: bool = False) -> os.stat_result | None:
    """The lstat of what is at dst (a name in dir_fd, if given), None when nothing is. A
    directory where a non-directory belongs is an error (naming `shown`), never replaced.
    quick: dir_fd is on one of the job's lookup_devs, the lstat is pcopy.lookupstat's."""
    try:
        there = (lookupstat.stat_at(dst, dir_fd=dir_fd, follow_symlinks=False) if quick and dir_fd is not None
                 else os.lstat(dst, dir_fd=dir_fd))
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(there.st_mode):
        raise IsADirectoryError(21, "cannot overwrite directory with non-directory", shown or dst)
    return there


def _file_up_to_date(dst: str, size: int, mtime_ns: int, mode: int, there: os.stat_result) -> int:
    """The quick check for a regular file: same type, size and mtime (DST_SAME), else
    DST_DIFFERS. An up-to-date file whose permissions changed in SRC gets them (DST_ATTRS)."""
    if stat.S_ISREG(there.st_mode) and there.st_size == size and there.st_mtime_ns == mtime_ns:
        return DST_ATTRS if _sync_mode(dst, mode, there) else DST_SAME
    return DST_DIFFERS


def _same_symlink(task: EntryTask, st: os.stat_result) -> bool:
    return task.kind is Kind.SYMLINK and stat.S_ISLNK(st.st_mode) and os.readlink(task.dst) == os.readlink(task.src)


def _sync_mode(dst: str, mode: int, there: os.stat_result) -> bool:
    """An up-to-date file whose permissions changed in SRC (chmod leaves the mtime alone) gets
    them in DST too, as rsync -a does: one compare of what the lstat of dst already gave.
    Returns whether it changed them."""
    if stat.S_IMODE(there.st_mode) != stat.S_IMODE(mode):
        try:
            os.chmod(dst, stat.S_IMODE(mode))
        except OSError as exc:
            tag_step(exc, STEP_METADATA)
            raise
        return True
    return False


def judge(task: EntryTask, options: CopyOptions) -> int:
    """dst_state with the non-default options (--checksum, --ignore-times, --update,
    --no-clobber, --no-perms). May adjust task.mode (--no-perms) and, for --checksum, fix the
    times of a destination whose content already matches (DST_ATTRS when it sets permissions
    or times, or in a dry run would). Reads only in a dry run."""
    if not options.preserve_perms:
        task.mode = masked_mode(task.mode, current_umask())
    if not task.check_dst:
        return DST_MISSING
    try:
        st = os.lstat(task.dst)
    except FileNotFoundError:
        return DST_MISSING
    if not options.replace_existing:
        return DST_SAME  # --no-clobber: whatever is there stays, a directory included
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "cannot overwrite directory with non-directory", task.dst)
    if options.update_only and st.st_mtime_ns > task.mtime_ns and _same_type(task.kind, st.st_mode):
        # --update: the destination is newer, keep it; an entry of another type is replaced
        # whatever its time, as rsync does (a newer DST symlink where SRC has a file).
        return DST_SAME
    if options.compare == COMPARE_ALWAYS:
        return DST_DIFFERS
    if task.kind is Kind.FILE:
        if not stat.S_ISREG(st.st_mode) or st.st_size != task.size:
            return DST_DIFFERS
        if options.compare == COMPARE_QUICK:
            if st.st_mtime_ns != task.mtime_ns:
                return DST_DIFFERS
        elif not same_content(task, options):
            return DST_DIFFERS
        changed = False
        if st.st_mtime_ns != task.mtime_ns and options.preserve_times:
            # Same bytes, other times (touched, or restored from elsewhere): set the times so
            # the next quick check agrees, instead of copying the content again (rsync -c does too).
            changed = True
            if not options.dry_run:
                try:
                    os.utime(task.dst, ns=(task.atime_ns, task.mtime_ns), follow_symlinks=False)
                except OSError as exc:
                    tag_step(exc, STEP_METADATA)
                    raise
        if options.preserve_perms:
            if options.dry_run:
                changed = changed or stat.S_IMODE(st.st_mode) != stat.S_IMODE(task.mode)
            else:
                changed = _sync_mode(task.dst, task.mode, st) or changed
        return DST_ATTRS if changed else DST_SAME
    return DST_SAME if _same_symlink(task, st) else DST_DIFFERS


def _same_type(kind: Kind, mode: int) -> bool:
    return kind_of(mode) is kind


def same_content(task: EntryTask, options: CopyOptions) -> bool:
    """--checksum: BLAKE2b digests of source and destination (sizes already equal)."""
    follow = 0 if options.dereference else O_NOFOLLOW
    src_fd = os.open(task.src, os.O_RDONLY | O_BINARY | O_CLOEXEC | follow)
    try:
        dst_fd = os.open(task.dst, os.O_RDONLY | O_BINARY | O_CLOEXEC | O_NOFOLLOW)
        try:
            return digest_range(src_fd, 0, None) == digest_range(dst_fd, 0, None)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def copy_entry(task: EntryTask, options: CopyOptions, on_bytes: Callable[[int], None],
               dst_dir: DstDir | None = None) -> int:
    """Copy one entry to a temporary name and rename it over task.dst. Returns bytes copied.
    dst_dir (optional) describes task.dst's directory and lets a file skip syscalls."""
    if task.kind is not Kind.FILE:
        tmp = temp_path(task.dst)
        try:
            make_special(task, tmp)
        except OSError as exc:
            tag_step(exc, STEP_CREATE)
            raise
        step = STEP_METADATA
        try:
            if options.preserve_xattrs:
                copy_xattrs(task.src, tmp, follow_symlinks=False)
            apply_metadata(tmp, task, options.preserve_owner, preserve_group=options.preserve_group,
                           times=options.preserve_times)
            step = STEP_RENAME
            if options.backup:
                back_up(task.dst, options)
            os.replace(tmp, task.dst)
        except BaseException as exc:
            tag_step(exc, step)
            _remove(tmp)
            raise
        return 0

    src_flags = os.O_RDONLY | O_BINARY | O_CLOEXEC | (0 if options.dereference else O_NOFOLLOW)
    try:
        src_fd = os.open(task.src, src_flags)
    except OSError as exc:
        tag_step(exc, STEP_OPEN)
        raise
    step = STEP_CREATE  # what a failure was doing (a local: free on the way)
    try:
        # Created with its final permissions where that is enough (no set-ID bits, nothing the
        # umask strips, owner already right): then no fchmod or fchown is needed afterwards.
        perms = stat.S_IMODE(task.mode)
        owner_ok = (not options.preserve_owner and not options.preserve_group) or (
            dst_dir is not None
            and (not options.preserve_owner or task.uid == _EUID)
            and (not options.preserve_group or task.gid == dst_dir.new_file_gid))
        final_at_create = owner_ok and not perms & 0o7000 and not perms & current_umask()
        dst_fd, tmp = create_temp(task.dst, perms if final_at_create else temp_mode(task.mode, False))
        try:
            try:
                devices = (task.dev, dst_dir.dev) if dst_dir is not None else None
                step = STEP_COPY
                copied = _copy_whole(src_fd, dst_fd, task, options, on_bytes, devices)
                step = STEP_CHECK
                _check_unchanged(src_fd, task.size, task.mtime_ns, copied, task.sparse)
                if options.verify:
                    check_same(src_fd, dst_fd, 0, None)
                step = STEP_METADATA
                if options.preserve_xattrs:
                    copy_xattrs(task.src, dst_fd, follow_symlinks=options.dereference)
                if options.fsync:
                    step = STEP_FSYNC
                    os.fsync(dst_fd)
                    step = STEP_METADATA
                if final_at_create:
                    if options.preserve_times:
                        set_times(dst_fd, tmp, task)
                else:
                    apply_metadata(tmp, task, options.preserve_owner, fd=dst_fd,
                                   preserve_group=options.preserve_group, times=options.preserve_times)
            finally:
                os.close(dst_fd)
            step = STEP_RENAME
            if options.backup:
                back_up(task.dst, options)
            os.replace(tmp, task.dst)
        except BaseException:
            _remove(tmp)
            raise
    except BaseException as exc:
        tag_step(exc, step)
        raise
    finally:
        os.close(src_fd)
    return task.size or copied


def _check_unchanged(src_fd: int, size: int, mtime_ns: int, copied: int, sparse: bool) -> None:
    """A file that was written to while we copied it would leave a mix of old and new bytes:
    compare size and mtime with what the walk saw, and refuse the copy if they moved."""
    st = os.fstat(src_fd)
    if st.st_size != size or st.st_mtime_ns != mtime_ns:
        raise ChangedError(f"file changed during copy (size {size} -> {st.st_size})")
    if not sparse and size and copied != size:
        raise ChangedError(f"file changed during copy ({copied} of {size} bytes read)")


def _copy_whole(src_fd: int, dst_fd: int, task: EntryTask, options: CopyOptions,
                on_bytes: Callable[[int], None], devices: tuple[int, int] | None) -> int:
    if not task.sparse:
        # The size the stat saw bounds the copy (no extra call to find EOF: growth is caught by
        # _check_unchanged); a file that says 0 bytes may still have content (procfs): read it.
        return _copy_span(src_fd, dst_fd, 0, task.size or None, options, on_bytes, devices,
                          dst_at_offset=True, use_fast_paths=options.use_fast_paths and task.size > 0)
    # Holes stay holes: size the file first, then copy only the data segments.
    os.ftruncate(dst_fd, task.size)
    copied = 0
    for offset, length in data_segments(src_fd, 0, task.size):
        copied += _copy_span(src_fd, dst_fd, offset, length, options, on_bytes)
    return copied


def _run_range(job: RangeJob, progress: _Progress | None) -> JobResult:
    result = JobResult(job.job_id)
    on_bytes: Callable[[int], None] = progress.add_bytes if progress else _ignore
    opts = job.options
    step = STEP_OPEN
    try:
        src_fd = os.open(job.src, os.O_RDONLY | O_BINARY | O_CLOEXEC)
        try:
            step = STEP_CREATE  # the parent's pre-sized temporary file
            dst_fd = os.open(job.tmp, os.O_RDWR | O_BINARY | O_CLOEXEC | O_NOFOLLOW)
            try:
                step = STEP_COPY
                end = job.offset + job.length
                segments = (data_segments(src_fd, job.offset, end) if job.sparse
                            else [(job.offset, job.length)])
                for offset, length in segments:
                    if opts.use_fast_paths and not job.in_kernel and not opts.bwlimit_bytes:
                        copied = copy_positional(src_fd, dst_fd, offset, length, on_bytes)
                    else:
                        copied = _copy_span(src_fd, dst_fd, offset, length, opts, on_bytes)
                    if copied != length:
                        step = STEP_CHECK
                        raise ChangedError("file shrank during copy")
                    result.bytes += copied
                step = STEP_CHECK
                if opts.verify:
                    check_same(src_fd, dst_fd, job.offset, job.length)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
    except (OSError, ChangedError) as exc:
        result.failures.append(CopyFailure.of(job.src, exc, step))
    return result


def _remove(path: str, dir_fd: int | None = None) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path, dir_fd=dir_fd)
