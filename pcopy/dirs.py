"""Destination directories: made (private) before anything goes into them, their metadata set
after everything has.

prepare_dir is what the parent does for DST itself and what a worker's ScanJob does for each
subdirectory it finds; Directories is the parent's record of them all, finished bottom-up at the
end of the run (permissions applied last, so a read-only directory can still be filled, and
mtimes set after the last write into them).
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys

import pcopy.threads
from pcopy.config import Config
from pcopy.jobs import STEP_COMPARE, STEP_METADATA, STEP_MKDIR, CopyFailure, EntryTask, FoundDir, JobResult, Kind
from pcopy.metadata import apply_metadata, copy_xattrs, current_umask, masked_mode
from pcopy.opendirs import HELD, OpenDirs
from pcopy.report import CopyReport
from pcopy.target import dst_refused
from pcopy.walk import Entry

# Threads that finish directories on slow storage (CopyOptions.slow_dst): each directory is three
# or four round trips (chown, chmod, utime; a stat on a re-run), one directory after another
# 16 ms at 1 ms per request.
FINISH_THREADS = 16
# Directories held open while existing ones are stat'ed top-down (Directories._look): a level's
# parents, for their children (wider levels fall back to a farther ancestor: correct, dearer).
# Well below macOS's default descriptor limit (256).
LOOK_HELD = 128


class NotADirectory(Exception):
    """DST has something other than a directory where a directory goes."""

    def __init__(self, dst: str) -> None:
        super().__init__(f"destination {dst!r} exists and is not a directory")


def prepare_dir(dst: str, *, dry_run: bool, parents: bool = False, look_first: bool = False,
                at: tuple[int, str] | None = None) -> os.stat_result | None:
    """Make dst private (0700: nothing in it is reachable before its final mode is applied at
    the end), or merge into the directory already there (its ScanJob clears what a killed run
    left in it). Returns the existing directory's stat, None when this run made it; a dry run
    only looks (None: it would make it). look_first:
    it probably exists (a re-run): one stat instead of a failed mkdir and a stat. With at (an
    open directory and dst's name in it) the calls name it relative to that directory: one
    round trip on a network file system instead of one per path component. Raises
    NotADirectory, OSError."""
    dir_fd, name = at if at is not None else (None, dst)
    follow = parents  # the top-level DST may be a symlink to a directory: merged into, as cp does
    st: os.stat_result | None = None
    if dry_run or look_first:
        try:
            st = (_held_stat(dst) if parents and at is None
                  else os.stat(name, dir_fd=dir_fd, follow_symlinks=follow))
        except FileNotFoundError:
            if dry_run:
                return None
    if st is None:
        try:
            if parents:
                os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
            os.mkdir(name, 0o700, dir_fd=dir_fd)
            return None
        except FileExistsError:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=follow)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectory(dst)
    return st


def _held_stat(path: str) -> os.stat_result:
    """stat (following symlinks) of DST's root through a descriptor held for the run
    (pcopy.opendirs): the parent's jobs and the directory finish then start from it instead of
    resolving DST's path again (two round trips per component on a network file system)."""
    st = HELD.stat(path) if _AT_CALLS else None
    return st if st is not None else os.stat(path)  # (missing, not a directory, no *at calls)


def may_hold_leftovers(there: os.stat_result | None, src_mtime_ns: int) -> bool:
    """Whether an existing DST directory may hold what a killed run left (temporary and partial
    files): not when its mtime is still the one a finished run gave it (SRC's), since creating
    any of them would have moved it. Saves listing every directory of an up-to-date tree."""
    return there is not None and there.st_mtime_ns != src_mtime_ns


class Directories:
    """The parent's record of DST's directories: which this run made (nothing can be in them
    yet), which could not be made (nothing goes below them), and all of them in walk order, a
    parent before its children, for finish()."""

    def __init__(self, config: Config, report: CopyReport, preserve_owner: bool, preserve_group: bool) -> None:
        self.config = config
        self.report = report
        self.preserve_owner = preserve_owner
        self.preserve_group = preserve_group
        self.made: list[tuple[str, Entry]] = []  # (dst, entry) in walk order
        self.fresh: set[str] = set()  # rel paths of directories this run created
        self.blocked: set[str] = set()  # rel paths whose destination could not be made

    def make(self, entry: Entry, dst: str, parents: bool = False,
             look_first: bool = True) -> tuple[bool, os.stat_result | None]:
        """prepare_dir(dst) and record it; a failure is reported (for DST itself, parents=True,
        it refuses the run: exit 2). Returns (whether anything can go into it, the existing
        directory's stat or None when this run made it)."""
        config = self.config
        try:
            there = prepare_dir(dst, dry_run=config.dry_run, parents=parents, look_first=look_first)
        except NotADirectory as exc:
            self.blocked.add(entry.rel)
            self.report.failures.append(CopyFailure(entry.src, None, str(exc), STEP_MKDIR))
            return False, None
        except OSError as exc:
            if parents and not config.dry_run:  # DST's root: nothing was written, nothing could be
                raise dst_refused(dst, exc) from exc
            self.blocked.add(entry.rel)
            self.report.failures.append(CopyFailure.of(entry.src, exc, STEP_COMPARE if config.dry_run else STEP_MKDIR))
            return False, None
        self.add(entry, dst, there is None)
        return True, there

    def add(self, entry: Entry, dst: str, fresh: bool) -> None:
        if fresh:
            self.fresh.add(entry.rel)
        self.made.append((dst, entry))

    def add_found(self, found: FoundDir) -> None:
        self.add(found.entry, found.dst, found.fresh)

    def finish(self, threads: int = 1) -> None:
        """Directory metadata bottom-up (reverse walk order puts children before parents), after
        their contents, so read-only directories copy and their mtimes are not disturbed. With
        threads > 1 (slow storage) the directories of one depth are done together, deepest
        first: their round trips overlap, and a parent still comes after all of its children."""
        self.report.dirs = len(self.made)
        if self.config.dry_run or not self.made:
            return
        with _RootRelative(next((dst for dst, entry in self.made if not entry.rel), "")) as at:
            owners = self._known_owners(at)
            found = self._look(threads, at)
            if threads <= 1:
                for dst, entry in reversed(self.made):
                    self._finish_one(dst, entry, at, owners.get(entry.rel), found.get(entry.rel), slow=False)
                return
            for level in _deepest_first(self.made):
                pcopy.threads.each(level, lambda item, _part: self._finish_one(
                    *item, at, owners.get(item[1].rel), found.get(item[1].rel)),
                    JobResult(0), threads=min(threads, len(level)))

    def _look(self, threads: int, at: _RootRelative) -> dict[str, os.stat_result]:
        """The stat of each directory that existed before the run, by rel path, for the check
        whether it is up to date: taken top-down (a depth at a time), each directory opened
        relative to its parent, held open meanwhile. On a network file system that is three
        round trips (the parent's GETATTR, the LOOKUP, the fstat's GETATTR) at any depth, where
        a stat by path from DST's root costs two per component."""
        if not _AT_CALLS or not self._checks_up_to_date() or len(self.fresh) == len(self.made):
            return {}
        existing = [item for item in self.made if item[1].rel not in self.fresh]
        found: dict[str, os.stat_result] = {}
        held = OpenDirs(LOOK_HELD)
        if at.fd is not None:
            with contextlib.suppress(OSError):  # (EMFILE: then from the top)
                held.adopt(at.root, os.dup(at.fd))

        def look(item: tuple[str, Entry], _part: JobResult) -> None:
            if (st := held.stat(item[0])) is not None:  # (else _up_to_date stats it by path)
                found[item[1].rel] = st

        try:
            for level in reversed(_deepest_first(existing)):
                pcopy.threads.each(level, look, JobResult(0), threads=min(threads, len(level)))
        finally:
            held.clear()
        return found

    def _known_owners(self, at: _RootRelative) -> dict[str, tuple[int, int]]:
        """The (uid, gid) of directories known without asking the file system, by rel path: DST's
        root (one stat), and on Linux each directory this run made below a chain of directories
        it made up to the root: owned by this process, in its group, or in the root's where the
        root is set-group-ID (inherited downwards with the bit). Their chown is skipped when it
        would change nothing: a round trip per directory on a network file system."""
        if not (self.preserve_owner or self.preserve_group) or at.fd is None or not self.fresh:
            return {}  # (nothing made: an up-to-date re-run would spend a round trip on it)
        try:
            root = os.fstat(at.fd)
        except OSError:
            return {}
        owners = {"": (root.st_uid, root.st_gid)}
        if not _SYSV_GROUPS:
            return owners
        made = (os.geteuid(), root.st_gid if root.st_mode & stat.S_ISGID else os.getegid())
        for _dst, entry in self.made:  # (walk order: a parent before its children)
            if entry.rel and entry.rel in self.fresh and os.path.dirname(entry.rel) in owners:
                owners[entry.rel] = made
        return owners

    def _finish_one(self, dst: str, entry: Entry, at: _RootRelative, owner: tuple[int, int] | None,
                    found: os.stat_result | None, slow: bool = True) -> None:
        config = self.config
        mode = entry.mode if config.preserve_perms else masked_mode(entry.mode, current_umask())
        task = EntryTask(entry.src, dst, Kind.DIR, 0, mode, entry.uid, entry.gid,
                         entry.atime_ns, entry.mtime_ns)
        dir_fd, name = at.split(dst)
        keep_owner, keep_group = self.preserve_owner, self.preserve_group
        if owner is not None:
            keep_owner = keep_owner and entry.uid != owner[0]
            keep_group = keep_group and entry.gid != owner[1]
        itself = None
        try:
            if entry.rel not in self.fresh and self._up_to_date(name, dir_fd, task, found):
                return  # an up-to-date re-run writes nothing, not even directory times
            # On slow storage, the directory itself, opened relative to its nearest held
            # ancestor (a level's parents stay held for the next, shallower level), so that its
            # three calls resolve no name. Relative to DST's root each would look up every
            # component on a network or FUSE file system without name caching (delayfs, a tree
            # 6 deep: ~18 requests per directory, against 1). On a local one a path costs less
            # than holding it.
            if slow and dir_fd is not None and (itself := HELD.open(dst)) is not None:
                dir_fd, name = itself, "."
            if config.preserve_xattrs:
                copy_xattrs(entry.src, dst, follow_symlinks=True)
            apply_metadata(name, task, keep_owner, preserve_group=keep_group,
                           times=config.preserve_times, dir_fd=dir_fd)
            if config.fsync:
                fsync_path(dst)  # makes the renames into it durable
        except OSError as exc:  # (list.append: safe from several threads)
            self.report.failures.append(CopyFailure.of(dst, exc, STEP_METADATA))
        finally:
            if itself is not None:
                os.close(itself)

    def _checks_up_to_date(self) -> bool:
        """Whether an existing directory can be left alone (else its metadata is always set)."""
        return not self.config.preserve_xattrs and self.config.preserve_times

    def _up_to_date(self, name: str, dir_fd: int | None, task: EntryTask, found: os.stat_result | None) -> bool:
        """An existing directory whose mode, mtime (and owner, where kept) already match and
        into which this run wrote nothing (its mtime would have moved). Extended attributes
        are always re-applied. found: its stat taken after the copy (_look), or None."""
        if not self._checks_up_to_date():
            return False
        st = found if found is not None else os.stat(name, dir_fd=dir_fd)
        return (stat.S_IMODE(st.st_mode) == stat.S_IMODE(task.mode) and st.st_mtime_ns == task.mtime_ns
                and (not self.preserve_owner or st.st_uid == task.uid)
                and (not self.preserve_group or st.st_gid == task.gid))


def _deepest_first(made: list[tuple[str, Entry]]) -> list[list[tuple[str, Entry]]]:
    """The directories grouped by depth below DST, deepest first, each group in reverse walk
    order."""
    levels: dict[int, list[tuple[str, Entry]]] = {}
    for item in reversed(made):
        rel = item[1].rel
        levels.setdefault(rel.count(os.sep) + 1 if rel else 0, []).append(item)
    return [levels[depth] for depth in sorted(levels, reverse=True)]


# Directory metadata named relative to DST's root: on a network file system a full path costs a
# round trip per component above DST too, for each of a directory's three or four calls.
_AT_CALLS = ({os.stat, os.chmod, os.utime} <= os.supports_dir_fd
             and (not hasattr(os, "chown") or os.chown in os.supports_dir_fd))
# Linux gives a new directory the creator's group, or its parent's where the parent is
# set-group-ID (BSD and macOS: always the parent's).
_SYSV_GROUPS = sys.platform.startswith("linux")
class _RootRelative:
    """DST's root held open, so a directory below it is named (root fd, relative path)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.prefix = os.path.join(root, "")
        self.fd: int | None = None

    def __enter__(self) -> _RootRelative:
        self.fd = HELD.open(self.root) if self.root and _AT_CALLS else None  # (held since prepare_dir)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)

    def split(self, dst: str) -> tuple[int | None, str]:
        if self.fd is not None:
            if dst == self.root:
                return self.fd, "."
            if dst.startswith(self.prefix):
                return self.fd, dst[len(self.prefix):]
        return None, dst


def fsync_path(path: str) -> None:
    """fsync a file or (POSIX) a directory by path; Windows cannot open directories."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
