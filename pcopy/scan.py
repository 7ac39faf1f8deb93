"""scan_dir: a worker's part of the walk. One ScanJob lists one source directory, makes the
destination directories of its subdirectories, and hands them back for jobs of their own, so
every worker reads directories at once: on a network file system a serial walk in the parent
would bound the copy at (directories x round trips).

The parent keeps what depends on order: it records each directory a scan made (parents before
children, since a child is only found when its parent's scan returns) and sets their metadata
bottom-up at the end (pcopy.dirs).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from pcopy import lookupstat, threads
from pcopy.dirs import NotADirectory, may_hold_leftovers, prepare_dir
from pcopy.jobs import STEP_COMPARE, STEP_MKDIR, STEP_WALK, CopyFailure, DirJob, FoundDir, JobResult, Kind, ScanJob
from pcopy.walk import list_dir, make_entry

# A directory with subdirectories hands its names back for DirJobs (finding the subdirectories
# never waits on copying files), unless it has this few: then one job does both.
COPY_WITH_SUBDIRS = 16


def scan_dir(job: ScanJob, dst_fd: int | None, src_fd: int | None) -> tuple[JobResult, DirJob | None]:
    """List job.src_dir, make its subdirectories in DST, and say what is left: the result (with
    dirs, names and listing failures) and the DirJob for the names this job copies itself, if
    any. src_fd/dst_fd: the two directories opened (None: use paths)."""
    result = JobResult(job.job_id, dirs=[], names=[])
    options = job.options

    def walk_error(path: str, exc: OSError) -> None:
        result.failures.append(CopyFailure.of(path, exc, STEP_WALK))

    names, subdirs = list_dir(job.src_dir, job.rel, dereference=options.dereference, on_error=walk_error,
                              excluded=job.filters.excluded if job.filters else None, dir_fd=src_fd)
    found: list[FoundDir] = []  # appends are atomic: threads share these two lists
    not_dirs: list[str] = []

    quick = bool(subdirs) and lookupstat.quick_in(src_fd, options.lookup_devs)
    stat_name = lookupstat.stat_at if quick else os.stat

    def make(name: str, part: JobResult) -> None:
        made = _make_subdir(job, name, src_fd, dst_fd, part, not_dirs, stat_name)
        if made is not None:
            found.append(made)

    threads.each(subdirs, make, result, measure=threads.job_measure(), kind="scan")
    # Listing order, whichever thread made which (the order of the tree's runs stays the same).
    order = {name: i for i, name in enumerate(subdirs)}
    found.sort(key=lambda d: order[os.path.basename(d.dst)])
    result.dirs = found
    names += not_dirs
    result.listed = len(names)
    chunk = job.batch_files
    here: list[str] = []
    if job.copy_names and (not found or len(names) <= COPY_WITH_SUBDIRS):
        here, names = names[:chunk], names[chunk:]
    result.names = [tuple(names[i:i + chunk]) for i in range(0, len(names), chunk)]
    if not here:
        return result, None
    return result, DirJob(job.job_id, job.src_dir, job.dst_dir, tuple(here), job.check_dst, job.split_bytes,
                          job.job_bytes, job.hand_back_links, options)


def _make_subdir(job: ScanJob, name: str, src_fd: int | None, dst_fd: int | None, part: JobResult,
                 not_dirs: list[str], stat_name: Callable[..., os.stat_result] = os.stat) -> FoundDir | None:
    """stat one subdirectory and make its destination; None when it is not to be entered (a
    failure, recorded in part; a loop; or no longer a directory: then it goes to not_dirs).
    stat_name: os.stat, or pcopy.lookupstat's where src_fd is on one of options.lookup_devs."""
    options = job.options
    src = os.path.join(job.src_dir, name)
    try:
        st = (stat_name(name, dir_fd=src_fd, follow_symlinks=options.dereference) if src_fd is not None
              else os.stat(src, follow_symlinks=options.dereference))
    except OSError as exc:
        part.failures.append(CopyFailure.of(src, exc, STEP_WALK))
        return None
    entry = make_entry(src, os.path.join(job.rel, name) if job.rel else name, st)
    if entry is None or entry.kind is not Kind.DIR:  # replaced since the listing: a file now
        not_dirs.append(name)
        return None
    ancestors = job.ancestors
    if options.dereference:
        key = (st.st_dev, st.st_ino)
        if key in ancestors:  # a symlink to one of its own ancestors
            part.failures.append(CopyFailure.of(src, OSError(errno.ELOOP, "symlink loop", src), STEP_WALK))
            return None
        ancestors = ancestors | {key}
    dst = os.path.join(job.dst_dir, name)
    if not job.make_subdirs:
        return FoundDir(entry, dst, False, ancestors, False)
    try:
        there = (None if options.dry_run and not job.check_dst  # nothing can be below a new directory
                 else prepare_dir(dst, dry_run=options.dry_run, look_first=job.check_dst,
                                  at=(dst_fd, name) if dst_fd is not None else None))
    except NotADirectory as exc:
        part.failures.append(CopyFailure(src, None, str(exc), STEP_MKDIR))
        return None
    except OSError as exc:
        part.failures.append(CopyFailure.of(src, exc, STEP_COMPARE if options.dry_run else STEP_MKDIR))
        return None
    return FoundDir(entry, dst, there is None, ancestors, may_hold_leftovers(there, st.st_mtime_ns))
