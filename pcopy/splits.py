"""SplitFiles: large files copied as byte ranges (only with --chunk-size). The parent judges the
destination, pre-sizes a temporary file, sends one RangeJob per range, and when the last range is
back checks the source, sets the metadata and renames the file into place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from pcopy.backup import back_up
from pcopy.config import Config
from pcopy.dirs import fsync_path
from pcopy.fastcopy import copy_file_range_works, data_segments
from pcopy.interrupts import deferred
from pcopy.jobs import (
    ATTRIBUTES,
    COMPARE_ALWAYS,
    DST_ATTRS,
    DST_DIFFERS,
    DST_MISSING,
    DST_SAME,
    HARDLINKED,
    STEP_CHECK,
    STEP_COMPARE,
    STEP_CREATE,
    STEP_METADATA,
    STEP_RENAME,
    CopyFailure,
    CopyOptions,
    EntryTask,
    Job,
    JobResult,
    RangeJob,
)
from pcopy.linkdest import find_link, link_into_place
from pcopy.metadata import apply_metadata, copy_xattrs, create_temp, temp_mode
from pcopy.plan import split_ranges
from pcopy.progress import ProgressSink
from pcopy.report import CopyReport
from pcopy.temps import ParentTemps
from pcopy.worker import ChangedError, judge_task


@dataclass
class _Split:
    """A large file in flight: its temporary file and how many of its ranges are still out."""

    task: EntryTask
    tmp: str
    remaining: int
    failures: list[CopyFailure] = field(default_factory=list)
    replaces: bool = False  # an existing destination entry will be replaced


class SplitFiles:
    def __init__(self, config: Config, options: CopyOptions, report: CopyReport, progress: ProgressSink,
                 temps: ParentTemps, submit: Callable[[Job], None], next_id: Callable[[], int],
                 chunk_bytes: int, owner: tuple[bool, bool]) -> None:
        """owner: (preserve_owner, preserve_group) as the run decided them."""
        self.config = config
        self.options = options
        self.report = report
        self.progress = progress
        self.temps = temps
        self.submit = submit
        self.next_id = next_id
        self.chunk_bytes = chunk_bytes
        self.preserve_owner, self.preserve_group = owner
        self.splits: dict[int, _Split] = {}
        self.range_owner: dict[int, int] = {}  # job_id of a RangeJob -> its split file's id
        self.link_fallbacks = 0  # --link-dest matches the file system would not link

    def start(self, task: EntryTask) -> None:
        step = STEP_COMPARE
        report = self.report
        try:
            found = judge_task(task, self.options)
            if found >= DST_SAME:  # DST_SAME or DST_ATTRS
                report.skipped += 1
                report.skipped_bytes += task.size
                if found == DST_ATTRS:
                    report.attributes += 1
                    if self.config.record_changes:
                        report.changes.append((ATTRIBUTES, task.dst))
                self.progress.advance(task.size, 1)
                self.progress.add_skipped(1, task.size)
                return
            if self.options.link_dest and self.link(task, found):
                return
            if self.config.dry_run:  # counted as one file, as a real run reports it
                report.count_file(task.dst, task.size, found == DST_DIFFERS, self.config.record_changes)
                report.bytes += task.size
                self.progress.advance(task.size, 1)
                return
            step = STEP_CREATE
            with deferred():  # a signal cannot fall between creating it and knowing its name
                fd, tmp = create_temp(task.dst, temp_mode(task.mode, shared_writes=True))
                self.temps.add(tmp)
        except OSError as exc:
            report.failures.append(CopyFailure.of(task.src, exc, step))
            return
        try:
            os.ftruncate(fd, task.size)  # pre-sized: every range can be written in place
            in_kernel = self.options.use_fast_paths and _copy_file_range_works(task.src, fd)
        except OSError as exc:
            os.close(fd)
            self.temps.drop(tmp)
            report.failures.append(CopyFailure.of(task.src, exc, STEP_CREATE))
            return
        os.close(fd)
        try:
            segments = _segments(task)
        except OSError as exc:
            self.temps.drop(tmp)
            report.failures.append(CopyFailure.of(task.src, exc, STEP_CREATE))
            return
        # Where copy_file_range works between the two files the ranges are copied in the kernel
        # (2 GiB ext4 -> ext4, 2 ranges: 0.86-0.95 s; pread/pwrite was bimodal, 0.6 or 2 s);
        # elsewhere (e.g. ext4 -> tmpfs: EXDEV) by pread/pwrite, whose reads overlap the other
        # ranges' writes, where sendfile ranges would simply queue on the lock.
        ranges = split_ranges(segments, self.chunk_bytes)
        file_id = self.next_id()
        self.splits[file_id] = _Split(task, tmp, remaining=len(ranges), replaces=found == DST_DIFFERS)
        if not ranges:  # all hole
            self.finish(file_id)
            return
        for offset, length in ranges:
            job = RangeJob(self.next_id(), file_id, task.src, tmp, offset, length, task.sparse, self.options,
                           in_kernel)
            self.range_owner[job.job_id] = file_id
            self.submit(job)

    def link(self, task: EntryTask, found: int) -> bool:
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
        self.report.add(JobResult(-1, hardlinked=1, hardlinked_bytes=task.size,
                                  backed_up=int(self.options.backup and found == DST_DIFFERS),
                                  changes=[(HARDLINKED, task.dst)] if self.config.record_changes else None))
        self.progress.advance(task.size, 1)
        return True

    def on_result(self, result: JobResult) -> bool:
        """A RangeJob's result (False: not one of ours)."""
        file_id = self.range_owner.pop(result.job_id, None)
        if file_id is None:
            return False
        state = self.splits[file_id]
        self.report.bytes += result.bytes
        state.failures.extend(result.failures)
        state.remaining -= 1
        if state.remaining == 0:
            self.finish(file_id)
        return True

    def finish(self, file_id: int) -> None:
        state = self.splits.pop(file_id)
        task = state.task
        config = self.config
        step = STEP_CHECK
        try:
            if state.failures:
                raise ChangedError(state.failures[0].message)
            st = os.stat(task.src)
            if st.st_size != task.size or st.st_mtime_ns != task.mtime_ns:
                raise ChangedError(f"file changed during copy (size {task.size} -> {st.st_size})")
            step = STEP_METADATA
            if config.preserve_xattrs:
                copy_xattrs(task.src, state.tmp, follow_symlinks=True)
            apply_metadata(state.tmp, task, self.preserve_owner, preserve_group=self.preserve_group,
                           times=config.preserve_times)
            if config.fsync:
                fsync_path(state.tmp)
            step = STEP_RENAME
            if self.options.backup and state.replaces and back_up(task.dst, self.options):
                self.report.backed_up += 1
            self.temps.renamed(state.tmp, task.dst)
        except (OSError, ChangedError) as exc:
            self.temps.drop(state.tmp)
            failure = state.failures[0] if state.failures else CopyFailure.of(task.src, exc, step)
            self.report.failures.append(failure)
            return
        self.report.count_file(task.dst, task.size, state.replaces, config.record_changes)
        self.progress.advance(0, 1)

    def forget(self) -> None:
        """Interrupted: the temporary files are the caller's to remove (ParentTemps)."""
        self.splits.clear()


def _copy_file_range_works(src: str, dst_fd: int) -> bool:
    fd = os.open(src, os.O_RDONLY)
    try:
        return copy_file_range_works(fd, dst_fd)
    finally:
        os.close(fd)


def _segments(task: EntryTask) -> list[tuple[int, int]]:
    if not task.sparse:
        return [(0, task.size)]
    fd = os.open(task.src, os.O_RDONLY)
    try:
        return list(data_segments(fd, 0, task.size))
    finally:
        os.close(fd)
