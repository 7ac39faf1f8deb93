"""run_copy: the one owner of processes. Data flow:

    walk_tree(src) ──directories──▶ parent: make them (private 0700 until the end)
                   ──Names chunks (unstat'ed)──▶ Planner.dir_job ──DirJob──▶ executor.submit
    executor: a pool.WorkerPool (apply_async; one pair of pipes per worker, no shared lock; at
              most MAX_IN_FLIGHT_PER_WORKER * jobs outstanding) or, for -j 1 and trees too small
              to pay for a pool, the parent itself.
    workers: run_job(job) -> JobResult ──callback──▶ results queue ──▶ parent: counts, failures,
              and what a DirJob hands back (large files, hard links, files past its byte budget)
              ──▶ Planner.add_task ──BatchJob / SplitFile (byte ranges)──▶ executor.submit;
              the last range of a split file returning renames it into place
    workers ──(bytes, files, bytes found)──▶ Manager().Queue ──▶ parent ──▶ ProgressSink (tqdm),
              only when a display listens
    end: hard links, --delete, then directory metadata bottom-up, then the CopyReport.

The parent does the order-sensitive work (directories before their files, pre-sizing a split file,
its metadata and rename after its last range, directory metadata after contents); workers stat
and copy. Signals (interrupts.py): SIGINT/SIGTERM stop the walk, terminate the pool within a bound
(workers remove the temporary file they were writing; a worker still there after the grace time is
killed), the parent removes the temporary files it made (parent_temps: created and recorded in one
deferred section) and those of workers that stopped mid-job, and CopyInterruptedError carries
130/143 up to the caller.
"""

from __future__ import annotations

import os
import stat
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from pcopy import bwlimit, threads
from pcopy.backup import back_up, mirror_rules
from pcopy.backup import prepare as prepare_backups
from pcopy.config import Config
from pcopy.dirs import Directories, fsync_path
from pcopy.executor import Executor, job_dst_dirs
from pcopy.fastcopy import copy_file_range_works, data_segments
from pcopy.interrupts import deferred, signals_raise
from pcopy.jobs import (
    ATTRIBUTES,
    COMPARE_ALWAYS,
    COPIED,
    DELETED,
    DST_ATTRS,
    DST_DIFFERS,
    DST_MISSING,
    DST_SAME,
    HARDLINKED,
    REPLACED,
    STEP_CHECK,
    STEP_COMPARE,
    STEP_CREATE,
    STEP_LINK,
    STEP_METADATA,
    STEP_RENAME,
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
)
from pcopy.linkdest import find_link, link_into_place
from pcopy.metadata import (
    apply_metadata,
    copy_xattrs,
    create_temp,
    remove_leftovers,
    temp_mode,
    temp_path,
)
from pcopy.plan import HardLink, Planner, SplitFile, options_for, split_ranges
from pcopy.progress import NullProgress, ProgressSink
from pcopy.report import CopyReport
from pcopy.target import Target, dst_refused
from pcopy.walk import Entry, Names, make_entry
from pcopy.worker import ChangedError, judge_task, task_from_stat

# Chunks of names waiting to be submitted before the walk yields to them (~256 names each: the
# walk may run ahead of the copy by ~260,000 names, ~30 MB).
DIR_JOBS_AHEAD = 1024


@dataclass
class _SplitState:
    """A large file in flight: its temporary file and how many of its ranges are still out."""

    task: EntryTask
    tmp: str
    remaining: int
    failures: list[CopyFailure] = field(default_factory=list)
    replaces: bool = False  # an existing destination entry will be replaced


def _copy_file_range_works(src: str, dst_fd: int) -> bool:
    fd = os.open(src, os.O_RDONLY)
    try:
        return copy_file_range_works(fd, dst_fd)
    finally:
        os.close(fd)


class CopyRun:
    """The state of one copy: what the parent knows and must finish. Callers that walk
    themselves (pcopy.copytree) drive it with run(feed), calling plan() from feed."""

    def __init__(self, config: Config, progress: ProgressSink, target: Target | None = None) -> None:
        """target (optional) lets the snapshot options (--link-dest, --backup-dir) be resolved
        against DST; it may raise RefusedError (exit 2) before anything is written."""
        self.config = config
        self.progress = progress
        self.report = CopyReport()
        root = hasattr(os, "geteuid") and os.geteuid() == 0
        self.preserve_owner = root if config.preserve_owner is None else config.preserve_owner
        self.preserve_group = self.preserve_owner if config.preserve_group is None else config.preserve_group
        snapshot: dict[str, Any] = {}
        if target is not None:
            prepared = prepare_backups(target, config)
            self.report.warnings.extend(prepared.warnings)
            snapshot = {"dst_root": prepared.dst_root, "link_dest": prepared.link_dest,
                        "backup_dir": prepared.backup_dir}
        # --bwlimit: the run's shared byte counters (pcopy.bwlimit), removed at the end of run().
        self.bwlimit_path = bwlimit.create(config.bwlimit_bytes) if config.bwlimit_bytes else ""
        self.options: CopyOptions = options_for(config, self.preserve_owner, self.preserve_group,
                                                bwlimit_path=self.bwlimit_path, **snapshot)
        self.report.dry_run = config.dry_run
        # A later name of a hard-linked inode: its bytes were found with each name, copied once.
        self.planner = Planner(config, self.options, on_link=lambda nbytes: progress.add_found(0, -nbytes))
        self.splits: dict[int, _SplitState] = {}
        # Temporary files the parent made (split files, hard links) and has not yet renamed or
        # removed: an interruption removes them, a worker's clean-up keeps them.
        self.parent_temps: set[str] = set()
        self.range_owner: dict[int, int] = {}  # job_id of a RangeJob -> its split file's id
        self.directories = Directories(config, self.report, self.preserve_owner, self.preserve_group)
        # What results hand back is submitted from the main loop (submit_waiting), never from
        # inside a result handler (no re-entrant submits): directories to list, chunks of names
        # to copy, and entries to plan (large files, hard links, files beyond a job's budget).
        self.scans: deque[ScanJob] = deque()
        self.scans_out: dict[int, ScanJob] = {}  # submitted, not yet returned
        self.dir_jobs: deque[DirJob] = deque()
        self.followups: deque[EntryTask] = deque()
        self.mirror_target: Target | None = None  # --delete: run mirror() for it after the copy
        self.link_fallbacks = 0  # --link-dest: matches the file system would not link
        threads.reset()
        self.executor = Executor(config, progress.active, self.on_result, self.on_progress, self.clean_after)

    # -- driving --------------------------------------------------------------------------------
    def run(self, feed: Callable[[], None]) -> CopyReport:
        """feed() walks and plans (calling self.plan and self.make_dir); the rest is shared."""
        start = time.perf_counter()
        try:
            ok = False
            try:
                feed()
                self.progress.walk_done()
                self.settle()
                self.make_links()  # before the bar closes: its last frame counts the links
                ok = True
            finally:
                self.executor.close(terminate=not ok)
                self.progress.close()
                if self.bwlimit_path:
                    bwlimit.remove(self.bwlimit_path)
            if self.link_fallbacks:
                self.report.warnings.append(
                    f"{self.link_fallbacks} unchanged entries could not be hard-linked from --link-dest "
                    "(another device, too many links, or no hard links there): copied instead")
            if self.mirror_target is not None:
                # Before directory metadata: removing entries changes their directories' mtimes.
                mirror(self.mirror_target, self.config, self.report, self.options)
            self.directories.finish()
        except BaseException:  # interrupted (or a bug): no temporary file of ours stays behind
            self.remove_parent_temps()
            raise
        self.report.seconds = time.perf_counter() - start
        return self.report

    def settle(self, walk_only: bool = False) -> None:
        """Run everything planned, and everything results hand back, to the end (walk_only:
        until every directory has been listed)."""
        executor = self.executor
        while True:
            self.submit_waiting()
            if walk_only and not self.scans_out:
                return
            if executor.pending:
                executor.wait(block=True)
            elif not walk_only and (jobs := self.planner.flush()):
                self.submit_all(jobs)
            elif executor.held:
                executor.run_held()
            elif not (self.followups or self.dir_jobs or self.scans):
                return

    def submit_waiting(self) -> None:
        """Submit what results handed back: directories to list first (the walk is what finds
        work for every worker), unless DIR_JOBS_AHEAD chunks of names already wait (the walk
        may run ahead of the copy, by that much memory)."""
        while True:
            if self.scans and (len(self.dir_jobs) < DIR_JOBS_AHEAD or not self.dir_jobs):
                size = min(self.group_size(), len(self.scans))
                scans = [self.scans.popleft() for _ in range(size)]
                for scan in scans:
                    self.scans_out[scan.job_id] = scan  # (before submit: -j 1 runs it right here)
                self.submit_group(scans)
            elif self.dir_jobs:
                size = min(self.group_size(), len(self.dir_jobs))
                self.submit_group([self.dir_jobs.popleft() for _ in range(size)])
            elif self.followups:
                self.submit_all(self.planner.add_task(self.followups.popleft()))
            else:
                return

    def on_progress(self, nbytes: int, files: int, found: int, sized: int) -> None:
        if found or sized:  # sizes of names the walk handed to workers (add_names)
            self.progress.add_sizes(sized, found)
        self.progress.advance(nbytes, files)

    def copy_single(self, target: Target) -> None:
        entry = make_entry(target.src, "", os.stat(target.src))
        assert entry is not None
        parent = os.path.dirname(target.dst)
        if parent and not self.config.dry_run:
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise dst_refused(target.dst, exc) from exc
        self.progress.add_found(1, entry.size if entry.kind is Kind.FILE else 0)
        # The walk of one file is over before its copy starts (with -j 1 it is copied right here,
        # so the bar would count until the end).
        self.progress.walk_done()
        self.submit_all(self.planner.add(entry, target.dst, check_dst=True))

    def copy_tree(self, target: Target) -> None:
        """DST made here, then the walk runs as ScanJobs in the workers (pcopy.scan): each lists
        one directory and hands back its subdirectories, made in DST, and names to copy."""
        st = os.stat(target.src)
        root_entry = make_entry(target.src, "", st)
        assert root_entry is not None
        if not self.directories.make(root_entry, target.dst, parents=True):
            return
        ancestors = frozenset({(st.st_dev, st.st_ino)}) if self.config.dereference else frozenset()
        self.scans.append(self.planner.scan_job(target.src, "", target.dst, "" not in self.directories.fresh,
                                                self.directories.root_leftovers, ancestors))
        self.settle(walk_only=True)

    def group_size(self) -> int:
        """Jobs per call: one, until the workers report that they wait on the storage (their
        thread limit grew, pcopy.threads); then enough that their threads span directories."""
        return threads.group_size(self.executor.threads)

    def submit_group(self, jobs: list[DirJob] | list[ScanJob]) -> None:
        self.executor.submit(jobs[0] if len(jobs) == 1 else GroupJob(self.planner.next_id(), tuple(jobs)))

    def on_scanned(self, scan: ScanJob, result: JobResult) -> None:
        """A directory listed: its subdirectories to list in turn, its names to copy."""
        for found in result.dirs or ():
            self.directories.add_found(found)
            entry = found.entry
            self.scans.append(self.planner.scan_job(entry.src, entry.rel, found.dst, not found.fresh,
                                                    found.leftovers, found.ancestors))
        if result.listed:
            self.progress.add_names(result.listed)  # the workers report their sizes
        for names in result.names or ():
            self.dir_jobs.append(self.planner.dir_job(Names(scan.src_dir, scan.rel, names), scan.dst_dir,
                                                      scan.check_dst))

    def plan(self, entry: Entry, dst: str, check_dst: bool) -> None:
        self.progress.add_found(1, entry.size if entry.kind is Kind.FILE else 0)
        self.submit_all(self.planner.add(entry, dst, check_dst))

    def submit_all(self, jobs: list[BatchJob | SplitFile]) -> None:
        for job in jobs:
            if isinstance(job, SplitFile):
                self.start_split(job.task)
            else:
                self.executor.submit(job)

    # -- directories ----------------------------------------------------------------------------
    # -- large files as byte ranges -----------------------------------------------------------------
    def start_split(self, task: EntryTask) -> None:
        step = STEP_COMPARE
        try:
            found = judge_task(task, self.options)
            if found >= DST_SAME:  # DST_SAME or DST_ATTRS
                self.report.skipped += 1
                self.report.skipped_bytes += task.size
                if found == DST_ATTRS:
                    self.report.attributes += 1
                    if self.config.record_changes:
                        self.report.changes.append((ATTRIBUTES, task.dst))
                self.progress.advance(task.size, 1)
                self.progress.add_skipped(1, task.size)
                return
            if self.options.link_dest and self.link_split(task, found):
                return
            if self.config.dry_run:  # counted as one file, as a real run reports it
                self.count_file(task.dst, task.size, found == DST_DIFFERS)
                self.report.bytes += task.size
                self.progress.advance(task.size, 1)
                return
            step = STEP_CREATE
            with deferred():  # a signal cannot fall between creating it and knowing its name
                fd, tmp = create_temp(task.dst, temp_mode(task.mode, shared_writes=True))
                self.parent_temps.add(tmp)
        except OSError as exc:
            self.report.failures.append(CopyFailure.of(task.src, exc, step))
            return
        try:
            os.ftruncate(fd, task.size)  # pre-sized: every range can be written in place
            in_kernel = self.options.use_fast_paths and _copy_file_range_works(task.src, fd)
        except OSError as exc:
            os.close(fd)
            self.drop_temp(tmp)
            self.report.failures.append(CopyFailure.of(task.src, exc, STEP_CREATE))
            return
        os.close(fd)
        try:
            segments = self.segments(task)
        except OSError as exc:
            self.drop_temp(tmp)
            self.report.failures.append(CopyFailure.of(task.src, exc, STEP_CREATE))
            return
        # Only with a chunk size set (the default copies every file as one stream, see
        # config.DEFAULT_CHUNK_BYTES). Where copy_file_range works between the two files the ranges
        # are copied in the kernel (2 GiB ext4 -> ext4, 2 ranges: 0.86-0.95 s; pread/pwrite was
        # bimodal, 0.6 or 2 s); elsewhere (e.g. ext4 -> tmpfs: EXDEV) by pread/pwrite, whose reads
        # overlap the other ranges' writes, where sendfile ranges would simply queue on the lock.
        ranges = split_ranges(segments, self.planner.split_bytes)
        file_id = self.planner.next_id()
        state = _SplitState(task, tmp, remaining=len(ranges), replaces=found == DST_DIFFERS)
        self.splits[file_id] = state
        if not ranges:  # all hole
            self.finish_split(file_id)
            return
        for offset, length in ranges:
            job = RangeJob(self.planner.next_id(), file_id, task.src, tmp, offset, length,
                           task.sparse, self.options, in_kernel)
            self.range_owner[job.job_id] = file_id
            self.executor.submit(job)

    def link_split(self, task: EntryTask, found: int) -> bool:
        """--link-dest for a file too large for one job: linked here, or False (copy it)."""
        if self.options.compare == COMPARE_ALWAYS:
            return False
        candidate = find_link(task, self.options)
        if candidate is None:
            return False
        if not self.config.dry_run and not link_into_place(candidate, task, self.options,
                                                            missing=found == DST_MISSING):
            self.link_fallbacks += 1
            return False
        self.on_result(JobResult(-1, hardlinked=1, hardlinked_bytes=task.size,
                                 backed_up=int(self.options.backup and found == DST_DIFFERS),
                                 changes=[(HARDLINKED, task.dst)] if self.config.record_changes else None))
        self.progress.advance(task.size, 1)
        return True

    def segments(self, task: EntryTask) -> list[tuple[int, int]]:
        if not task.sparse:
            return [(0, task.size)]
        fd = os.open(task.src, os.O_RDONLY)
        try:
            return list(data_segments(fd, 0, task.size))
        finally:
            os.close(fd)

    def finish_split(self, file_id: int) -> None:
        state = self.splits.pop(file_id)
        task = state.task
        step = STEP_CHECK
        try:
            if state.failures:
                raise ChangedError(state.failures[0].message)
            st = os.stat(task.src)
            if st.st_size != task.size or st.st_mtime_ns != task.mtime_ns:
                raise ChangedError(f"file changed during copy (size {task.size} -> {st.st_size})")
            step = STEP_METADATA
            if self.config.preserve_xattrs:
                copy_xattrs(task.src, state.tmp, follow_symlinks=True)
            apply_metadata(state.tmp, task, self.preserve_owner, preserve_group=self.preserve_group,
                           times=self.config.preserve_times)
            if self.config.fsync:
                fsync_path(state.tmp)
            step = STEP_RENAME
            if self.options.backup and state.replaces and back_up(task.dst, self.options):
                self.report.backed_up += 1
            with deferred():
                os.replace(state.tmp, task.dst)
                self.parent_temps.discard(state.tmp)
        except (OSError, ChangedError) as exc:
            self.drop_temp(state.tmp)
            failure = state.failures[0] if state.failures else CopyFailure.of(task.src, exc, step)
            self.report.failures.append(failure)
            return
        self.count_file(task.dst, task.size, state.replaces)
        self.progress.advance(0, 1)

    def count_file(self, dst: str, nbytes: int, replaced: bool) -> None:
        """One entry the parent copied (bytes are counted where they are copied)."""
        self.report.files += 1
        if replaced:
            self.report.replaced += 1
            self.report.replaced_bytes += nbytes
        if self.config.record_changes:
            self.report.changes.append((REPLACED if replaced else COPIED, dst))

    def clean_after(self, jobs: list[Job]) -> None:
        """Remove temporary files that workers which stopped mid-job (killed, terminated, or
        interrupted inline) left in the jobs' directories; the parent's own split-file
        temporaries there are kept (their ranges are re-run, or removed on interruption)."""
        keep = set(self.parent_temps)
        for directory in set().union(*(job_dst_dirs(job) for job in jobs)):
            with suppress(OSError):
                remove_leftovers(directory, keep)

    def remove_parent_temps(self) -> None:
        for tmp in self.parent_temps:
            _remove(tmp)
        self.parent_temps.clear()
        self.splits.clear()

    def drop_temp(self, tmp: str) -> None:
        _remove(tmp)
        self.parent_temps.discard(tmp)

    # -- results --------------------------------------------------------------------------------
    def on_result(self, result: JobResult) -> None:
        self.followups.extend(result.handed_back)
        scan = self.scans_out.pop(result.job_id, None)
        if scan is not None:
            self.on_scanned(scan, result)
        file_id = self.range_owner.pop(result.job_id, None)
        if file_id is None:
            self.report.files += result.files
            self.report.bytes += result.bytes
            self.report.replaced += result.replaced
            self.report.replaced_bytes += result.replaced_bytes
            if result.changes:
                self.report.changes.extend(result.changes)
            if result.hardlinked or result.backed_up or result.resumed or result.link_fallbacks:
                self.report.hardlinked += result.hardlinked
                self.report.hardlinked_bytes += result.hardlinked_bytes
                self.report.backed_up += result.backed_up
                self.report.resumed += result.resumed
                self.report.resumed_bytes += result.resumed_bytes
                self.link_fallbacks += result.link_fallbacks
            self.report.skipped += result.skipped
            self.report.skipped_bytes += result.skipped_bytes
            self.report.attributes += result.attributes
            self.report.failures.extend(result.failures)
            if result.skipped:
                self.progress.add_skipped(result.skipped, result.skipped_bytes)
            return
        state = self.splits[file_id]
        self.report.bytes += result.bytes
        state.failures.extend(result.failures)
        state.remaining -= 1
        if state.remaining == 0:
            self.finish_split(file_id)

    # -- hard links -----------------------------------------------------------------------------
    def make_links(self) -> None:
        """Later names of a hard-linked inode, made once all data is in place."""
        skipped = self.report.skipped
        for link in self.planner.links:
            try:
                self.make_link(link)
            except OSError as exc:
                self.report.failures.append(CopyFailure.of(link.src, exc, STEP_LINK))
        self.progress.advance(0, len(self.planner.links))  # processed, as workers count files
        self.progress.add_skipped(self.report.skipped - skipped, 0)

    def make_link(self, link: HardLink) -> None:
        dry_run = self.config.dry_run
        try:
            first: os.stat_result | None = os.lstat(link.first_dst)
        except FileNotFoundError:
            if not dry_run:
                raise
            first = None  # a dry run did not copy it: the link would be made after it
        try:
            current: os.stat_result | None = os.lstat(link.dst)
        except FileNotFoundError:
            current = None
        if current is not None:
            if (first is not None and (current.st_dev, current.st_ino) == (first.st_dev, first.st_ino)
                    and (not dry_run or self.first_kept(link))):
                self.report.skipped += 1
                return
            if not self.config.replace_existing:
                self.report.skipped += 1
                return
            if stat.S_ISDIR(current.st_mode):
                raise IsADirectoryError(21, "cannot overwrite directory with non-directory", link.dst)
        if not dry_run:
            tmp = temp_path(link.dst)
            with deferred():
                os.link(link.first_dst, tmp)
                self.parent_temps.add(tmp)
            try:
                if current is not None and self.options.backup:
                    back_up(link.dst, self.options)
                with deferred():
                    os.replace(tmp, link.dst)
                    self.parent_temps.discard(tmp)
            except OSError:
                self.drop_temp(tmp)
                raise
        if current is not None and self.options.backup:
            self.report.backed_up += 1
        self.count_file(link.dst, 0, current is not None)

    def first_kept(self, link: HardLink) -> bool:
        """Dry run: whether the first name of link's inode stays as it is (a real run replaces
        it with a new inode when it is not up to date, and the link then differs from it).
        link.src shares that inode in SRC, so its stat judges first_dst as well."""
        task = task_from_stat(link.src, link.first_dst, os.lstat(link.src), True)
        return task is not None and judge_task(task, self.options) >= DST_SAME


def _remove(path: str) -> None:
    with suppress(OSError):
        os.unlink(path)


def run_copy(target: Target, config: Config, progress: ProgressSink | None = None) -> CopyReport:
    """Copy target.src to target.dst with config. Per-entry failures are in the report; raises
    CopyInterruptedError on SIGINT/SIGTERM after cleaning up."""
    run = CopyRun(config, progress or NullProgress(), target)
    feed = run.copy_tree if target.src_kind is Kind.DIR else run.copy_single
    if config.delete and target.src_kind is Kind.DIR:
        run.mirror_target = target
    with signals_raise():
        return run.run(lambda: feed(target))


def mirror(target: Target, config: Config, report: CopyReport, options: CopyOptions | None = None) -> None:
    """--delete, after the copy: only when it had no failures (or --delete-anyway), since a
    source entry that could not be read would otherwise look deleted and its backup go too.
    With --backup (options), deleted files are moved to their backup paths instead."""
    from pcopy.mirror import delete_extraneous  # only --delete needs it

    backup_to, keep = None, None
    if options is not None and (options.backup or config.partial):
        backup_to, keep = mirror_rules(options, config.partial)
    if report.failures and not config.delete_after_failures:
        report.delete_skipped = True
        return
    result = delete_extraneous(target.src, target.dst, filters=config.filters,
                               max_delete=config.max_delete, dry_run=config.dry_run,
                               backup_to=backup_to, keep=keep)
    report.failures.extend(result.failures)
    if result.limited:
        report.delete_limited = True
        return
    report.deleted = len(result.deleted)
    report.backed_up += result.backed_up
    if config.record_changes:
        report.changes.extend((DELETED, path) for path in result.deleted)
