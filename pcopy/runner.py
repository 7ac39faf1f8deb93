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

from pcopy import bwlimit
from pcopy.backup import back_up, mirror_rules
from pcopy.backup import prepare as prepare_backups
from pcopy.config import Config
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
    STEP_MKDIR,
    STEP_RENAME,
    STEP_WALK,
    BatchJob,
    CopyFailure,
    CopyOptions,
    EntryTask,
    Job,
    JobResult,
    Kind,
    RangeJob,
)
from pcopy.linkdest import find_link, link_into_place
from pcopy.metadata import (
    apply_metadata,
    copy_xattrs,
    create_temp,
    current_umask,
    masked_mode,
    remove_leftovers,
    temp_mode,
    temp_path,
)
from pcopy.plan import HardLink, Planner, SplitFile, dst_path, options_for, split_ranges
from pcopy.progress import NullProgress, ProgressSink
from pcopy.report import CopyReport
from pcopy.target import Target, dst_refused
from pcopy.walk import Entry, Names, make_entry, walk_tree
from pcopy.worker import ChangedError, judge_task, task_from_stat


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
        self.dirs: list[tuple[str, Entry]] = []  # (dst, entry) in walk order, for the end
        self.fresh_dirs: set[str] = set()  # rel paths of directories this run created
        self.blocked_dirs: set[str] = set()  # rel paths whose destination could not be made
        # What results hand back (large files, hard links, files beyond a job's budget) is
        # planned from the main loop, never from inside a result handler (no re-entrant submits).
        self.followups: deque[EntryTask] = deque()
        self.mirror_target: Target | None = None  # --delete: run mirror() for it after the copy
        self.link_fallbacks = 0  # --link-dest: matches the file system would not link
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
            self.finish_dirs()
        except BaseException:  # interrupted (or a bug): no temporary file of ours stays behind
            self.remove_parent_temps()
            raise
        self.report.seconds = time.perf_counter() - start
        return self.report

    def settle(self) -> None:
        """Run everything planned, and everything results hand back, to the end."""
        executor = self.executor
        while True:
            self.drain_followups()
            if executor.pending:
                executor.wait(block=True)
            elif jobs := self.planner.flush():
                self.submit_all(jobs)
            elif executor.held:
                executor.run_held()
            elif not self.followups:
                return

    def drain_followups(self) -> None:
        while self.followups:
            self.submit_all(self.planner.add_task(self.followups.popleft()))

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
        root = target.dst
        root_entry = make_entry(target.src, "", os.stat(target.src))
        assert root_entry is not None
        self.make_dir(root_entry, root, parents=True)
        filters = self.config.filters
        for item in walk_tree(target.src, dereference=self.config.dereference,
                              on_error=self.walk_error, chunk=self.config.batch_files,
                              excluded=filters.excluded if filters else None):
            if isinstance(item, Names):
                if item.rel_dir not in self.blocked_dirs:
                    self.progress.add_names(len(item.names))  # the worker reports their sizes
                    check_dst = item.rel_dir not in self.fresh_dirs
                    self.executor.submit(self.planner.dir_job(item, dst_path(root, item.rel_dir), check_dst))
            elif os.path.dirname(item.rel) in self.blocked_dirs:
                self.blocked_dirs.add(item.rel)
            else:
                self.make_dir(item, dst_path(root, item.rel))
            self.drain_followups()

    def plan(self, entry: Entry, dst: str, check_dst: bool) -> None:
        self.progress.add_found(1, entry.size if entry.kind is Kind.FILE else 0)
        self.submit_all(self.planner.add(entry, dst, check_dst))

    def submit_all(self, jobs: list[BatchJob | SplitFile]) -> None:
        for job in jobs:
            if isinstance(job, SplitFile):
                self.start_split(job.task)
            else:
                self.executor.submit(job)

    def walk_error(self, path: str, exc: OSError) -> None:
        self.report.failures.append(CopyFailure.of(path, exc, STEP_WALK))

    # -- directories ----------------------------------------------------------------------------
    def make_dir(self, entry: Entry, dst: str, parents: bool = False) -> None:
        """Create dst private (0700) so nothing is readable before its final mode is applied at
        the end; an existing directory is merged into. A dry run only looks: a directory that
        is not there counts as made, and nothing below it can exist (check_dst False)."""
        if self.config.dry_run:
            self.look_at_dir(entry, dst, parents)
            return
        try:
            if parents:
                os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
            os.mkdir(dst, 0o700)
            self.fresh_dirs.add(entry.rel)
        except FileExistsError:
            # The top-level DST may be a symlink to a directory: merged into, as cp and rsync do.
            st = os.stat(dst) if parents else os.lstat(dst)
            if not stat.S_ISDIR(st.st_mode):
                self.blocked_dirs.add(entry.rel)
                self.report.failures.append(CopyFailure(
                    entry.src, None, f"destination {dst!r} exists and is not a directory", STEP_MKDIR))
                return
            # An existing directory may hold temporary files of a run that was killed (and
            # partial files, which only a run with --partial continues: others clear them).
            with suppress(OSError):
                remove_leftovers(dst, keep_partial=self.config.partial)
        except OSError as exc:
            if parents:  # the DST root: nothing was written, nothing could be (exit 2)
                raise dst_refused(dst, exc) from exc
            self.blocked_dirs.add(entry.rel)
            self.report.failures.append(CopyFailure.of(entry.src, exc, STEP_MKDIR))
            return
        self.dirs.append((dst, entry))

    def look_at_dir(self, entry: Entry, dst: str, parents: bool) -> None:
        try:
            st = os.stat(dst) if parents else os.lstat(dst)
        except FileNotFoundError:
            self.fresh_dirs.add(entry.rel)
        except OSError as exc:
            self.blocked_dirs.add(entry.rel)
            self.report.failures.append(CopyFailure.of(entry.src, exc, STEP_COMPARE))
            return
        else:
            if not stat.S_ISDIR(st.st_mode):
                self.blocked_dirs.add(entry.rel)
                self.report.failures.append(CopyFailure(
                    entry.src, None, f"destination {dst!r} exists and is not a directory", STEP_MKDIR))
                return
        self.dirs.append((dst, entry))

    def finish_dirs(self) -> None:
        """Directory metadata bottom-up (reverse walk order puts children before parents), after
        their contents, so read-only directories copy and their mtimes are not disturbed."""
        self.report.dirs = len(self.dirs)
        if self.config.dry_run:
            return
        config = self.config
        for dst, entry in reversed(self.dirs):
            mode = entry.mode if config.preserve_perms else masked_mode(entry.mode, current_umask())
            task = EntryTask(entry.src, dst, Kind.DIR, 0, mode, entry.uid, entry.gid,
                             entry.atime_ns, entry.mtime_ns)
            try:
                if entry.rel not in self.fresh_dirs and self._dir_up_to_date(dst, task):
                    continue  # an up-to-date re-run writes nothing, not even directory times
                if config.preserve_xattrs:
                    copy_xattrs(entry.src, dst, follow_symlinks=True)
                apply_metadata(dst, task, self.preserve_owner, preserve_group=self.preserve_group,
                               times=config.preserve_times)
                if self.config.fsync:
                    _fsync_path(dst)  # makes the renames into it durable
            except OSError as exc:
                self.report.failures.append(CopyFailure.of(dst, exc, STEP_METADATA))

    def _dir_up_to_date(self, dst: str, task: EntryTask) -> bool:
        """An existing directory whose mode, mtime (and owner, where kept) already match and
        into which this run wrote nothing (its mtime would have moved). Extended attributes
        are always re-applied."""
        if self.config.preserve_xattrs or not self.config.preserve_times:
            return False
        st = os.stat(dst)
        return (stat.S_IMODE(st.st_mode) == stat.S_IMODE(task.mode) and st.st_mtime_ns == task.mtime_ns
                and (not self.preserve_owner or st.st_uid == task.uid)
                and (not self.preserve_group or st.st_gid == task.gid))

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
                _fsync_path(state.tmp)
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


def _fsync_path(path: str) -> None:
    """fsync a file or (POSIX) a directory by path; Windows cannot open directories."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
