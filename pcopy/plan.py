"""make_plan's pieces: turn walked entries and a Config into jobs. Pure: no I/O, no processes.

- The walk is jobs too: a ScanJob per directory, listed by a worker, which makes the destination
  subdirectories and copies the directory's names itself or hands them back in chunks of up to
  batch_files; each chunk becomes one DirJob, and the worker stats the names (so one
  apply_async, ~30 us, is shared by hundreds of files, and the parent stats nothing).
- Entries whose stat is known (a single-file copy, pcopy.copytree's listing, what a DirJob hands
  back) are batched: a job closes at batch_files entries or batch_bytes bytes.
- Files larger than chunk_bytes (when one is set) become a SplitFile: the runner pre-sizes a temporary file and
  sends byte ranges from split_ranges to different workers.
- Further names of a hard-linked inode become HardLink records, made after all data is copied.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterable
from typing import NamedTuple

from pcopy.config import Compare, Config, Method
from pcopy.fastcopy import is_sparse
from pcopy.jobs import (
    COMPARE_ALWAYS,
    COMPARE_CHECKSUM,
    COMPARE_QUICK,
    BatchJob,
    CopyOptions,
    DirJob,
    EntryTask,
    Kind,
    ScanJob,
)
from pcopy.walk import Entry, Names


class SplitFile(NamedTuple):
    """A large file the runner copies as byte ranges into one pre-sized temporary file."""

    task: EntryTask


class HardLink(NamedTuple):
    """dst must become another name of first_dst (they share an inode in the source)."""

    src: str
    dst: str
    first_dst: str


_COMPARE_CODES = {Compare.QUICK: COMPARE_QUICK, Compare.CHECKSUM: COMPARE_CHECKSUM,
                  Compare.ALWAYS: COMPARE_ALWAYS}


def options_for(config: Config, preserve_owner: bool, preserve_group: bool | None = None, *,
                dst_root: str = "", link_dest: tuple[str, ...] = (), backup_dir: str = "",
                bwlimit_path: str = "", slow_dst: bool = False, read_threads: int = 0,
                lookup_devs: tuple[int, ...] = (), staged: bool = False) -> CopyOptions:
    """The workers' options. link_dest and backup_dir are the resolved (absolute) directories,
    bwlimit_path the run's shared counters (pcopy.backup.prepare, pcopy.bwlimit)."""
    compare = _COMPARE_CODES[config.compare]
    backup = config.backup or config.backup_dir is not None
    plain = (compare == COMPARE_QUICK and not config.update_only and config.replace_existing
             and not config.dry_run and config.preserve_perms
             and config.preserve_times and not config.preserve_xattrs and not link_dest
             and not backup and not config.bwlimit_bytes and not config.partial)
    suffix = config.backup_suffix if config.backup_suffix is not None else ("" if backup_dir else "~")
    return CopyOptions(
        use_fast_paths=config.method is Method.AUTO,
        buffer_bytes=config.buffer_bytes,
        preserve_owner=preserve_owner,
        dereference=config.dereference,
        verify=config.verify,
        fsync=config.fsync,
        preserve_group=preserve_owner if preserve_group is None else preserve_group,
        preserve_perms=config.preserve_perms,
        preserve_times=config.preserve_times,
        preserve_xattrs=config.preserve_xattrs,
        compare=compare,
        update_only=config.update_only,
        replace_existing=config.replace_existing,
        dry_run=config.dry_run,
        record_changes=config.record_changes,
        plain=plain,
        dst_root=dst_root,
        link_dest=link_dest,
        backup=backup,
        backup_dir=backup_dir,
        backup_suffix=suffix,
        bwlimit_bytes=config.bwlimit_bytes or 0,
        bwlimit_path=bwlimit_path,
        partial=config.partial,
        threads=config.threads or 0,
        slow_dst=slow_dst,
        read_threads=read_threads,
        lookup_devs=lookup_devs,
        staged=staged,
    )


def split_ranges(segments: Iterable[tuple[int, int]], chunk_bytes: int) -> list[tuple[int, int]]:
    """Cut (offset, length) data segments into ranges of at most chunk_bytes each."""
    ranges: list[tuple[int, int]] = []
    for offset, length in segments:
        end = offset + length
        ranges.extend((start, min(chunk_bytes, end - start)) for start in range(offset, end, chunk_bytes))
    return ranges


def entry_task(entry: Entry, dst: str, check_dst: bool) -> EntryTask:
    return EntryTask(
        src=entry.src, dst=dst, kind=entry.kind, size=entry.size if entry.kind is Kind.FILE else 0,
        mode=entry.mode, uid=entry.uid, gid=entry.gid, atime_ns=entry.atime_ns,
        mtime_ns=entry.mtime_ns, rdev=entry.rdev,
        sparse=entry.kind is Kind.FILE and is_sparse(entry.size, entry.blocks),
        check_dst=check_dst, dev=entry.dev, ino=entry.ino, nlink=entry.nlink,
    )


class Planner:
    """Feeds on non-directory entries and hands back jobs as soon as they are full."""

    def __init__(self, config: Config, options: CopyOptions,
                 on_link: Callable[[int], None] | None = None) -> None:
        self.config = config
        self.options = options
        self.on_link = on_link  # called with the size of each later name that becomes a HardLink
        # Files larger than this are split into byte ranges; no chunk size: none is. --partial
        # copies every file as one stream: a resumable file must be a prefix of its source.
        self.split_bytes = (config.chunk_bytes if config.chunk_bytes is not None and not config.partial
                            else sys.maxsize)
        self._ids = itertools.count()
        self._batch: list[EntryTask] = []
        self._batch_bytes = 0
        self._first_names: dict[tuple[int, int], str] = {}
        self.links: list[HardLink] = []

    def next_id(self) -> int:
        return next(self._ids)

    def add(self, entry: Entry, dst: str, check_dst: bool) -> list[BatchJob | SplitFile]:
        """Plan one stat'ed entry; returns the jobs that became ready (often none)."""
        return self.add_task(entry_task(entry, dst, check_dst))

    def dir_job(self, names: Names, dst_dir: str, check_dst: bool) -> DirJob:
        """A chunk of unstat'ed names for a worker to stat and copy (see DirJob)."""
        return DirJob(self.next_id(), names.src_dir, dst_dir, names.names, check_dst,
                      split_bytes=self.split_bytes, job_bytes=self.config.batch_bytes,
                      hand_back_links=self.config.preserve_hard_links, options=self.options)

    def scan_job(self, src_dir: str, rel: str, dst_dir: str, check_dst: bool, leftovers: bool,
                 ancestors: frozenset[tuple[int, int]]) -> ScanJob:
        """One directory for a worker to list (see ScanJob)."""
        config = self.config
        return ScanJob(self.next_id(), src_dir, rel, dst_dir, check_dst, leftovers, ancestors, config.batch_files,
                       copy_names=True, split_bytes=self.split_bytes, job_bytes=config.batch_bytes,
                       hand_back_links=config.preserve_hard_links, filters=config.filters or None,
                       options=self.options)

    def add_task(self, task: EntryTask) -> list[BatchJob | SplitFile]:
        """Plan one entry whose stat is known (also what a DirJob hands back)."""
        if task.kind is Kind.FILE and task.nlink > 1 and self.config.preserve_hard_links:
            key = (task.dev, task.ino)
            first = self._first_names.get(key)
            if first is not None:
                self.links.append(HardLink(task.src, task.dst, first))
                if self.on_link is not None:
                    self.on_link(task.size)
                return []
            self._first_names[key] = task.dst
        if task.kind is Kind.FILE and task.size > self.split_bytes:
            return [SplitFile(task)]
        self._batch.append(task)
        self._batch_bytes += task.size
        if len(self._batch) >= self.config.batch_files or self._batch_bytes >= self.config.batch_bytes:
            return [self._close_batch()]
        return []

    def flush(self) -> list[BatchJob | SplitFile]:
        return [self._close_batch()] if self._batch else []

    def _close_batch(self) -> BatchJob:
        job = BatchJob(self.next_id(), tuple(self._batch), self.options)
        self._batch = []
        self._batch_bytes = 0
        return job


def dst_path(dst_root: str, rel: str) -> str:
    return os.path.join(dst_root, rel) if rel else dst_root
