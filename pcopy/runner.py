"""run_copy: the one owner of processes. Data flow:

    parent: DST made (0700), then the root's ScanJob ──▶ executor.submit
    workers: a ScanJob lists one directory, makes its subdirectories in DST and hands them back
              (each a ScanJob of its own) with the names it did not copy itself
              ──▶ parent: Directories records them; names go out as DirJobs (Planner.dir_job),
              several jobs per call (GroupJob) once workers report that they wait on storage
    executor: a pool.WorkerPool (apply_async; one pair of pipes per worker, no shared lock; at
              most MAX_IN_FLIGHT_PER_WORKER * jobs outstanding, the rest wait here, directories
              to list first) or, for -j 1 and trees too small to pay for a pool, the parent itself.
    workers: run_job(job) -> JobResult ──callback──▶ parent: counts (CopyReport.add), failures,
              and what a job hands back (large files, hard links, files past its byte budget)
              ──▶ Planner.add_task ──BatchJob / SplitFile──▶ executor.submit / SplitFiles
    workers ──(bytes, files, bytes found, names sized)──▶ Manager().Queue ──▶ parent
              ──▶ ProgressSink (tqdm), only when a display listens
    end: hard links (HardLinks), --delete, then directory metadata bottom-up (Directories),
              then the CopyReport.

The parent keeps the order-sensitive work (each directory recorded after its parent, a split
file's rename after its last range, hard links after all data, directory metadata after
contents); workers list, stat and copy. Signals (interrupts.py): SIGINT/SIGTERM stop the walk,
terminate the pool within a bound (workers remove the temporary files their threads were
writing; a worker still there after the grace time is killed), the parent removes the temporary
files it made (ParentTemps: created and recorded in one deferred section) and those of workers
that stopped mid-job, and CopyInterruptedError carries 130/143 up to the caller.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from pcopy import bwlimit, interrupts, threads
from pcopy.backup import mirror_rules
from pcopy.backup import prepare as prepare_backups
from pcopy.config import SLOW_JOBS_PER_CPU, Config
from pcopy.dirs import FINISH_THREADS, Directories, may_hold_leftovers
from pcopy.errors import CopyInterruptedError
from pcopy.executor import Executor, job_dst_dirs
from pcopy.hardlinks import HardLinks
from pcopy.interrupts import signals_raise
from pcopy.jobs import (
    DELETED,
    STEP_RENAME,
    BatchJob,
    CopyFailure,
    CopyOptions,
    DirJob,
    EntryTask,
    FoundDir,
    GroupJob,
    Job,
    JobResult,
    Kind,
    ScanJob,
)
from pcopy.latency import storage_options
from pcopy.metadata import (
    remove_leftovers,
)
from pcopy.opendirs import HELD
from pcopy.plan import Planner, SplitFile, options_for
from pcopy.progress import NullProgress, ProgressSink
from pcopy.report import CopyReport
from pcopy.splits import SplitFiles
from pcopy.stage import PublishError, Stage, claim, drop_if_empty, plan_stage, publish, rebase, release
from pcopy.target import Target, dst_refused
from pcopy.temps import ParentTemps
from pcopy.walk import Entry, Names, make_entry

# Chunks of names waiting to be submitted before the walk yields to them (~256 names each: the
# walk may run ahead of the copy by ~260,000 names, ~30 MB).
DIR_JOBS_AHEAD = 1024


class CopyRun:
    """The state of one copy: what the parent knows and must finish. Callers that walk
    themselves (pcopy.copytree) drive it with run(feed), calling plan() from feed."""

    def __init__(self, config: Config, progress: ProgressSink, target: Target | None = None,
                 stage: Stage | None = None) -> None:
        """target (optional) lets the snapshot options (--link-dest, --backup-dir) be resolved
        against DST; it may raise RefusedError (exit 2) before anything is written. stage: the
        run writes into this new DST's stage (pcopy.stage; target.dst is the stage's path)."""
        self.progress = progress
        self.stage = stage
        self.report = CopyReport()
        storage = (storage_options(target.src, target.dst, dst_new=stage is not None and not stage.adopted)
                   if target is not None else {})
        if config.engine != "local":
            storage.pop("lookup_devs", None)  # (device numbers name mounts of this machine only)
        slow = bool(storage) and (storage["slow_dst"] or storage["read_threads"] > 0)
        if slow and config.jobs_auto and config.engine == "local":
            config = dataclasses.replace(config, jobs=config.jobs * SLOW_JOBS_PER_CPU)
        self.config = config
        root = hasattr(os, "geteuid") and os.geteuid() == 0
        self.preserve_owner = root if config.preserve_owner is None else config.preserve_owner
        self.preserve_group = self.preserve_owner if config.preserve_group is None else config.preserve_group
        snapshot: dict[str, Any] = {}
        if target is not None:
            prepared = prepare_backups(target, config)
            self.report.warnings.extend(prepared.warnings)
            snapshot = {"dst_root": prepared.dst_root, "link_dest": prepared.link_dest,
                        "backup_dir": prepared.backup_dir, **storage}
        # --bwlimit: the run's shared byte counters (pcopy.bwlimit), removed at the end of run().
        self.bwlimit_path = bwlimit.create(config.bwlimit_bytes) if config.bwlimit_bytes else ""
        self.options: CopyOptions = options_for(config, self.preserve_owner, self.preserve_group,
                                                bwlimit_path=self.bwlimit_path, staged=stage is not None,
                                                **snapshot)
        self.report.dry_run = config.dry_run
        # A later name of a hard-linked inode: its bytes were found with each name, copied once.
        self.planner = Planner(config, self.options, on_link=lambda nbytes: progress.add_found(0, -nbytes))
        # Temporary files the parent made (split files, hard links) and has not yet renamed or
        # removed: an interruption removes them, a worker's clean-up keeps them.
        self.temps = ParentTemps()
        self.directories = Directories(config, self.report, self.preserve_owner, self.preserve_group)
        # What results hand back is submitted from the main loop (submit_waiting), never from
        # inside a result handler (no re-entrant submits): directories to list, chunks of names
        # to copy, and entries to plan (large files, hard links, files beyond a job's budget).
        self.scans: deque[ScanJob] = deque()
        self.scans_out: dict[int, ScanJob] = {}  # submitted, not yet returned
        # The parent's walk (walk_here): directories found, not yet made, and whether their
        # parent existed before (then they may exist too); a stack: depth first.
        self.walk_stack: list[tuple[FoundDir, bool]] = []
        self.dir_jobs: deque[DirJob] = deque()
        self.followups: deque[EntryTask] = deque()
        self.mirror_target: Target | None = None  # --delete: run mirror() for it after the copy
        self.link_fallbacks = 0  # --link-dest: matches the file system would not link
        threads.reset()
        self.executor = Executor(config, progress.active, self.on_result, self.on_progress, self.clean_after)
        owner = (self.preserve_owner, self.preserve_group)
        self.splits = SplitFiles(config, self.options, self.report, progress, self.temps, self.executor.submit,
                                 self.planner.next_id, self.planner.split_bytes, owner)
        self.hard_links = HardLinks(config, self.options, self.report, progress, self.temps)
        # Where directories are listed: here when SRC and DST answer from memory and the engine
        # is local; by the workers (ScanJobs) on slow or network storage, and on Ray (where
        # every node must see the tree: the listing is spread like the copy).
        self.walk_here = (config.engine == "local" and not self.options.slow_dst
                          and not self.options.read_threads)

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
                self.hard_links.make_all(self.planner.links)  # before the bar closes: it counts them
                interrupts.check()
                ok = True
            finally:
                # One piece (bounded: each step's waits are): a signal raised halfway left what
                # the rest would have removed, e.g. the Manager's directory once the Manager was
                # killed (a storm trial, TMPDIR on slowfs). It is raised at the end instead.
                with interrupts.deferred():
                    self.executor.close(terminate=not ok)
                    self.progress.close()
                    if self.bwlimit_path:
                        bwlimit.remove(self.bwlimit_path)
            if fallbacks := self.link_fallbacks + self.splits.link_fallbacks:
                self.report.warnings.append(
                    f"{fallbacks} unchanged entries could not be hard-linked from --link-dest "
                    "(another device, too many links, or no hard links there): copied instead")
            if self.mirror_target is not None:
                # Before directory metadata: removing entries changes their directories' mtimes.
                mirror(self.mirror_target, self.config, self.report, self.options)
            self.directories.finish(threads=FINISH_THREADS if self.options.slow_dst else 1)
            interrupts.check()  # (a signal whose raise was dropped: the copy is not a success)
        except BaseException:  # interrupted (or a bug): no temporary file of ours stays behind
            self.temps.remove_all()
            self.splits.forget()
            raise
        finally:
            HELD.clear()  # the directories this process held for the run (pcopy.opendirs)
        self.report.seconds = time.perf_counter() - start
        return self.report

    def settle(self, walk_only: bool = False) -> None:
        """Run everything planned, and everything results hand back, to the end (walk_only:
        until every directory has been listed)."""
        executor = self.executor
        while True:
            interrupts.check()
            self.submit_waiting()
            if walk_only and not self.scans_out and not self.walk_stack:
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
            if (self.walk_here and (self.scans or self.walk_stack) and len(self.dir_jobs) < DIR_JOBS_AHEAD
                    and (not self.dir_jobs or not self.executor.has_room())):
                # Local storage: the parent lists (a page cache answers in microseconds, and a
                # job per directory would cost more than the listing), handing every name to
                # the workers, and lists on while they are busy, depth first, making each
                # directory just before its listing: the walk of the old design.
                if self.dir_jobs and self.executor.collect():
                    continue  # a worker answered: feed it before listing on
                if not self.scans:
                    self.make_and_list(*self.walk_stack.pop(), parents=not self.directories.made)
                    continue
                scan = self.scans.popleft()._replace(copy_names=False, make_subdirs=False)
                self.scans_out[scan.job_id] = scan
                self.executor.run_here(scan)
            elif self.scans and not self.walk_here and (len(self.dir_jobs) < DIR_JOBS_AHEAD or not self.dir_jobs):
                if self.list_here(self.scans[0]):
                    scan = self.scans.popleft()._replace(copy_names=False)
                    self.scans_out[scan.job_id] = scan
                    self.executor.run_here(scan)
                    continue
                scans = [self.scans.popleft() for _ in range(self.group_size(len(self.scans)))]
                if self.lock_bound():
                    # A listing hands its names back at once, to go out in groups spanning
                    # directories, instead of holding a worker on one directory's lock for as
                    # long as its copy takes. (A directory that existed is compared there: a
                    # re-run's names mostly need nothing written.)
                    scans = [scan if scan.check_dst else scan._replace(copy_names=False) for scan in scans]
                for scan in scans:
                    self.scans_out[scan.job_id] = scan  # (before submit: -j 1 runs it right here)
                self.submit_group(scans)
            elif self.dir_jobs:
                if self.all_busy() and self.lock_bound():
                    # A call queued behind a busy worker's would hold what the next idle worker
                    # could take at once, as one group.
                    return
                self.submit_group([self.dir_jobs.popleft() for _ in range(self.group_size(len(self.dir_jobs)))])
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
        ancestors = frozenset({(st.st_dev, st.st_ino)}) if self.config.dereference else frozenset()
        self.walk_stack.append((FoundDir(root_entry, target.dst, False, ancestors, False), True))
        if not self.walk_here:
            self.make_and_list(*self.walk_stack.pop(), parents=True)
        self.settle(walk_only=True)

    def make_and_list(self, found: FoundDir, look_first: bool, parents: bool = False) -> None:
        """Make a directory the parent's walk found (just before listing it: see
        ScanJob.make_subdirs), then queue its listing."""
        entry = found.entry
        if parents and self.stage is not None and not self.stage.adopted:
            # A new stage, made by pcopy.stage.claim: this run's own, nothing in it yet.
            self.directories.add(entry, found.dst, True)
            ok, there = True, None
        else:
            ok, there = self.directories.make(entry, found.dst, parents=parents, look_first=look_first)
        if ok:
            self.scans.append(self.planner.scan_job(
                entry.src, entry.rel, found.dst, there is not None, may_hold_leftovers(there, entry.mtime_ns),
                found.ancestors))

    def list_here(self, scan: ScanJob) -> bool:
        """Whether the parent lists this directory itself: writing to slow storage, a directory
        this run made, every worker with a call. A listing sent then would wait behind their
        copying (a second or more each), one level of the tree per wait (the issue's tree, depth
        8: 7.8 s instead of 4.8); listed here, its names go to the workers. (An existing
        directory's listing stays in a worker: a re-run's is quick there, and its names are
        best compared where they are listed.)"""
        if self.config.engine != "local" or not self.lock_bound() or scan.check_dst:
            return False
        # Results that came in meanwhile free their workers: a walk that lists one directory
        # after another here must not leave them idle.
        self.executor.wait(block=False)
        return self.all_busy()

    def all_busy(self) -> bool:
        """Every worker has a call (a call sent now would wait for one of them)."""
        return self.executor.running() >= self.config.jobs

    def lock_bound(self) -> bool:
        """Writing to slow storage with the thread limit grown to grouping: each directory's
        creates and renames queue on its lock, so the copy's time is set by how many
        directories are in flight at once. (Reads from slow storage scale within a directory.)"""
        return self.options.slow_dst and threads.group_size(self.executor.threads) > 1

    def group_size(self, waiting: int) -> int:
        """Jobs per call, of `waiting`: one, until the workers report that they wait on the
        storage (their thread limit grew, pcopy.threads); then enough that their threads span
        directories. Writing to slow storage (lock_bound), what waits is spread over the idle
        workers (all of them, when none is idle), one call each: a directory's creates and
        renames queue on its lock, so its time hardly depends on its share of threads, and a
        second call queued behind a worker's first would add a round. Otherwise no more than
        leaves every worker two calls of what waits (reads scale within a directory: smaller
        calls balance better)."""
        if self.lock_bound():
            idle = self.config.jobs - self.executor.running()  # (0 or less: all busy)
            fair = -(-waiting // (idle if idle > 0 else self.config.jobs))
        else:
            fair = -(-waiting // (2 * self.config.jobs))
        return max(1, min(threads.group_size(self.executor.threads), fair, waiting))

    def submit_group(self, jobs: list[DirJob] | list[ScanJob]) -> None:
        self.executor.submit(jobs[0] if len(jobs) == 1 else GroupJob(self.planner.next_id(), tuple(jobs)))

    def on_scanned(self, scan: ScanJob, result: JobResult) -> None:
        """A directory listed: its subdirectories to list in turn, its names to copy."""
        for found in result.dirs or ():
            if not scan.make_subdirs:  # the parent's walk: made when their turn comes
                self.walk_stack.append((found, scan.check_dst))
                continue
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
                self.splits.start(job.task)
            else:
                self.executor.submit(job)

    def clean_after(self, jobs: list[Job]) -> None:
        """Remove temporary files that workers which stopped mid-job (killed, terminated, or
        interrupted inline) left in the jobs' directories; the parent's own split-file
        temporaries there are kept (their ranges are re-run, or removed on interruption)."""
        keep = set(self.temps.paths)
        for directory in set().union(*(job_dst_dirs(job) for job in jobs)):
            with suppress(OSError):
                remove_leftovers(directory, keep)

    # -- results --------------------------------------------------------------------------------
    def on_result(self, result: JobResult) -> None:
        self.followups.extend(result.handed_back)
        scan = self.scans_out.pop(result.job_id, None)
        if scan is not None:
            self.on_scanned(scan, result)
        if self.splits.on_result(result):
            return
        self.report.add(result)
        self.link_fallbacks += result.link_fallbacks
        if result.skipped:
            self.progress.add_skipped(result.skipped, result.skipped_bytes)


def run_copy(target: Target, config: Config, progress: ProgressSink | None = None) -> CopyReport:
    """Copy target.src to target.dst with config. Per-entry failures are in the report; raises
    CopyInterruptedError on SIGINT/SIGTERM after cleaning up."""
    planned = plan_stage(target, config)
    if planned is None:
        with signals_raise():
            return _run_plain(target, config, progress)
    stage: Stage | None = None
    published = False
    try:
        with signals_raise():
            with interrupts.deferred():  # (a signal meanwhile: raised once stage is set)
                stage = claim(planned)
            if stage is None:  # held by another run, or it could not be made
                return _run_plain(target, config, progress)
            staged = target._replace(dst=stage.path)
            run = CopyRun(config, progress or NullProgress(), staged, stage)
            report = run.run(lambda: run.copy_tree(staged))
            with interrupts.deferred():
                try:
                    publish(stage)
                    published = True
                except PublishError as exc:
                    report.failures.append(CopyFailure.of(stage.path, exc, STEP_RENAME))  # (where the copy is)
    except CopyInterruptedError as exc:
        if stage is not None and not published:
            drop_if_empty(stage)
            exc.kept = stage.path if os.path.lexists(stage.path) else None
        raise
    finally:
        if stage is not None:
            release(stage)
    if published:
        # Reports name what is under DST now.
        report.changes = [(action, rebase(path, stage)) for action, path in report.changes]
        report.failures = [failure._replace(path=rebase(failure.path, stage)) for failure in report.failures]
    return report


def _run_plain(target: Target, config: Config, progress: ProgressSink | None) -> CopyReport:
    run = CopyRun(config, progress or NullProgress(), target)
    feed = run.copy_tree if target.src_kind is Kind.DIR else run.copy_single
    if config.delete and target.src_kind is Kind.DIR:
        run.mirror_target = target
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
