"""--delete: remove DST entries that SRC lacks, so DST becomes an exact mirror of SRC.

Two passes, so that a limit can be checked before anything is removed:

1. scan: walk DST iteratively, one directory handle per level, lstat only. An entry is a candidate
   when SRC has no entry (lexists) at the same relative path; a candidate directory is listed so
   that each entry below it is counted and deleted on its own, contents before the directory.
   The result is the plan: relative paths in deletion order, plus the identity (st_dev, st_ino)
   of every directory the scan opened.
2. execute (not for dry_run, not when max_delete is exceeded): remove the planned entries. Every
   directory on the way is reopened from the DST root one component at a time with O_NOFOLLOW
   and must be the directory the scan saw, and entries are removed relative to that handle
   (os.unlink/os.rmdir with dir_fd, i.e. unlinkat; shutil.rmtree's fd-based variant works the
   same way). So a DST directory that is a
   symlink, or is replaced by one while we run, is never followed: nothing outside dst_root is
   read or removed. A DST symlink (to a directory or not) is itself a non-directory: it is
   unlinked, never entered.

Where there is no dir_fd support (Windows), the same passes run on paths with an lstat check of
every directory before it is used; that leaves a small window in which a directory swapped for a
symlink between the check and the removal would be followed, which the fd variant does not have.

Must not run while a copy writes into the same DST: a temporary file of a live copy looks like a
leftover (see below) and would be removed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from pcopy.filters import FilterSet
from pcopy.jobs import STEP_DELETE, CopyFailure
from pcopy.metadata import is_partial_name, is_temp_name

__all__ = ["DeleteResult", "delete_extraneous"]

_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

# The same test shutil uses to pick its symlink-attack-safe rmtree, plus the flags that make
# "open this directory, but not through a symlink" one system call.
_USE_FD = (
    {os.open, os.stat, os.unlink, os.rmdir} <= os.supports_dir_fd
    and os.scandir in os.supports_fd
    and os.stat in os.supports_follow_symlinks
    and bool(_O_DIRECTORY)
    and bool(_O_NOFOLLOW)
)

# A directory handle: a file descriptor in the fd variant, a path otherwise.
_Handle = int | str
_Ident = tuple[int, int]  # (st_dev, st_ino): which directory a handle refers to

# What SRC has at a relative path.
_ABSENT, _SRC_DIR, _SRC_OTHER = 0, 1, 2


@dataclass
class DeleteResult:
    """What delete_extraneous removed (or, with dry_run, would remove).

    deleted: DST paths in the order they were (or would be) removed; every entry counts once,
    a directory comes after its contents. failures: entries that could not be examined or
    removed (they and their parent directories stay). limited: max_delete was exceeded, so
    nothing was removed. would_delete: how many entries the plan held.
    """

    deleted: list[str] = field(default_factory=list)
    failures: list[CopyFailure] = field(default_factory=list)
    limited: bool = False
    would_delete: int = 0
    backed_up: int = 0  # with backup_to: files moved to their backup paths


def delete_extraneous(
    src_root: str,
    dst_root: str,
    *,
    filters: FilterSet | None = None,
    max_delete: int | None = None,
    dry_run: bool = False,
    backup_to: Callable[[str], str] | None = None,
    keep: Callable[[str, bool], bool] | None = None,
) -> DeleteResult:
    """Remove every entry below dst_root that has no counterpart (lexists) below src_root.

    - Excluded paths (filters.excluded(rel, is_dir), the same relative paths and lstat-based
      is_dir as the copy walk) are protected: neither deleted nor entered. As in rsync, a
      protected entry inside an otherwise extraneous directory keeps that directory (and its
      parents) in place; that is not a failure.
    - Leftover temporary files (".NAME.pcopy-XXXXXXXX", non-directories) are removed even when a
      filter excludes them (a pattern such as ".*" would match every one of them), unless SRC has
      an entry of that very name; they are pcopy's own debris, never user data.
    - A DST directory whose SRC counterpart is a directory (or a symlink to one: SRC is looked up
      by path) is entered and its entries judged one by one. If the counterpart exists but is
      not a directory, the DST directory is left as it is: it is not extraneous, and resolving
      the type conflict is the copy's business.
    - backup_to (--backup): a non-directory is renamed to backup_to(rel), an absolute path on
      the same file system (its directories are created), instead of being removed; counted in
      backed_up. keep(rel, is_dir) True protects an entry like an exclude (partial files with
      --partial, the backups themselves).
    - max_delete: the candidates are counted first; if there are more than max_delete, nothing
      at all is removed and limited is True. rsync deletes up to N and then stops; for a backup,
      a half-applied mirror is worse than none, and a count over the limit usually means a
      wrong SRC (an unmounted disk, a typo) rather than a real change.
    - dry_run: the same scan, and `deleted` lists what a real run would remove; nothing changes.
    - A failure (permission, an entry that vanished or changed type) is recorded for that path
      and the rest goes on; a directory that cannot be emptied is left, without a second report.

    Raises OSError (before anything is removed) when src_root is not a directory: every DST
    entry would otherwise look extraneous. A missing dst_root means there is nothing to delete.
    """
    if max_delete is not None and max_delete < 0:
        raise ValueError(f"max_delete must be >= 0, not {max_delete}")
    if not stat.S_ISDIR(os.stat(src_root).st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), src_root)
    result = DeleteResult()
    plan, idents = _scan(src_root, dst_root, filters or None, result.failures, keep)
    result.would_delete = len(plan)
    if max_delete is not None and len(plan) > max_delete:
        result.limited = True
        return result
    if dry_run:
        result.deleted = [os.path.join(dst_root, rel) for rel, _ in plan]
        if backup_to is not None:
            result.backed_up = sum(1 for _, is_dir in plan if not is_dir)
    elif plan:
        _execute(dst_root, plan, idents, result, backup_to)
    return result


# ---------------------------------------------------------------- directory handles


def _open_root(path: str) -> tuple[_Handle, _Ident]:
    """The DST root itself is followed if it is a symlink: the user named it."""
    if _USE_FD:
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        st = os.fstat(fd)
        return fd, (st.st_dev, st.st_ino)
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    return path, (st.st_dev, st.st_ino)


def _open_child(parent: _Handle, name: str) -> tuple[_Handle, _Ident]:
    """A subdirectory, never through a symlink (ELOOP/ENOTDIR if name is not a real directory)."""
    if isinstance(parent, int):
        fd = os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=parent)
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        return fd, (st.st_dev, st.st_ino)
    path = os.path.join(parent, name)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory (anymore)", path)
    return path, (st.st_dev, st.st_ino)


def _close(handle: _Handle) -> None:
    if isinstance(handle, int):
        os.close(handle)


def _list(handle: _Handle) -> list[tuple[str, bool]]:
    """(name, is_dir) of every entry, is_dir from lstat (d_type), sorted by name so that the
    plan, and thus dry-run output, is the same from one run to the next."""
    with os.scandir(handle) as it:
        return sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in it)


def _remove(parent: _Handle, name: str, is_dir: bool) -> None:
    # unlink and rmdir never follow a final symlink, and dir_fd pins the parent directory.
    if isinstance(parent, int):
        if is_dir:
            os.rmdir(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
    elif is_dir:
        os.rmdir(os.path.join(parent, name))
    else:
        os.unlink(os.path.join(parent, name))


def _move(parent: _Handle, name: str, target: str) -> None:
    """--backup: rename the entry to target (absolute), relative to the pinned parent handle.
    A directory in the way at target makes this fail: the entry then stays, nothing is lost."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if isinstance(parent, int):
        os.rename(name, target, src_dir_fd=parent)  # rename replaces a file (POSIX: renameat)
    else:
        os.replace(os.path.join(parent, name), target)


def _failure(path: str, error: OSError, what: str) -> CopyFailure:
    return CopyFailure(path=path, errno=error.errno, message=f"{what}: {error.strerror or error}",
                       step=STEP_DELETE)


# ---------------------------------------------------------------- pass 1: scan


@dataclass
class _Frame:
    rel: str  # relative to dst_root, os.sep separators; "" for the root
    handle: _Handle
    entries: list[tuple[str, bool]]
    pos: int = 0
    doomed: bool = False  # the whole directory goes: everything below is a candidate
    keeps: bool = False  # something below stays (protected or failed), so this directory stays


def _src_state(src_root: str, parent_rel: str, rel: str) -> int:
    """What SRC has at rel: _ABSENT, _SRC_DIR (a directory or a symlink to one) or _SRC_OTHER.

    Raises OSError when that cannot be known (EACCES, ELOOP, SRC vanishing under us): the caller
    then keeps the DST entry, since deleting on a failed lookup could empty a whole backup.
    """
    path = os.path.join(src_root, rel)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        # Only trust "absent" while the SRC directory that should hold it is still there; if it
        # has gone (SRC removed or unmounted during the run) every entry would look absent.
        parent = os.path.join(src_root, parent_rel) if parent_rel else src_root
        if not stat.S_ISDIR(os.stat(parent).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "SRC directory changed during the run", parent) from None
        return _ABSENT
    if stat.S_ISDIR(st.st_mode):
        return _SRC_DIR
    if stat.S_ISLNK(st.st_mode):
        try:
            if stat.S_ISDIR(os.stat(path).st_mode):
                return _SRC_DIR
        except OSError:
            pass  # a dangling or looping link: it exists, and is not a directory
    return _SRC_OTHER


def _scan(
    src_root: str, dst_root: str, filters: FilterSet | None, failures: list[CopyFailure],
    keep: Callable[[str, bool], bool] | None = None,
) -> tuple[list[tuple[str, bool]], dict[str, _Ident]]:
    """The plan: (rel, is_dir) in deletion order, and the identity of each directory opened."""
    plan: list[tuple[str, bool]] = []
    idents: dict[str, _Ident] = {}
    try:
        root, ident = _open_root(dst_root)
    except FileNotFoundError:
        return plan, idents  # no DST yet (e.g. a dry run before the first copy): nothing to delete
    except OSError as e:
        failures.append(_failure(dst_root, e, "cannot open DST for --delete"))
        return plan, idents
    try:
        entries = _list(root)
    except OSError as e:
        _close(root)
        failures.append(_failure(dst_root, e, "cannot list DST for --delete"))
        return plan, idents
    idents[""] = ident
    frames = [_Frame("", root, entries)]
    try:
        while frames:
            frame = frames[-1]
            if frame.pos == len(frame.entries):
                frames.pop()
                _close(frame.handle)
                if frame.doomed:
                    if frame.keeps:
                        frames[-1].keeps = True
                    else:
                        plan.append((frame.rel, True))
                continue
            name, is_dir = frame.entries[frame.pos]
            frame.pos += 1
            rel = os.path.join(frame.rel, name) if frame.rel else name
            # A temporary file of a killed run (metadata.temp_path's exact name form, so a
            # user's ".x.pcopy-notes" is not one).
            if keep is not None and keep(rel, is_dir):
                frame.keeps = True  # protected (a backup, a partial file): not deleted, not entered
                continue
            # (and a partial file of --partial, kept above only while --partial is on)
            leftover = not is_dir and (is_temp_name(name) or is_partial_name(name))
            if filters and not leftover and filters.excluded(rel, is_dir):
                frame.keeps = True  # protected: not deleted, not entered
                continue
            doomed = frame.doomed
            if not doomed:
                try:
                    state = _src_state(src_root, frame.rel, rel)
                except OSError as e:
                    failures.append(_failure(os.path.join(dst_root, rel), e,
                                             "kept: cannot look up its SRC counterpart"))
                    continue
                if state == _ABSENT:
                    doomed = True
                elif not (is_dir and state == _SRC_DIR):
                    continue  # exists in SRC; a type conflict is for the copy to resolve
            if doomed and not is_dir:
                plan.append((rel, False))
                continue
            # A directory to enter: judged entry by entry, or (doomed) emptied and removed.
            dst_path = os.path.join(dst_root, rel)
            try:
                handle, ident = _open_child(frame.handle, name)
            except OSError as e:
                failures.append(_failure(dst_path, e, "cannot open DST directory"))
                frame.keeps = True
                continue
            try:
                entries = _list(handle)
            except OSError as e:
                _close(handle)
                failures.append(_failure(dst_path, e, "cannot list DST directory"))
                frame.keeps = True
                continue
            idents[rel] = ident
            frames.append(_Frame(rel, handle, entries, doomed=doomed))
    finally:
        for frame in frames:  # only when something unexpected escaped the loop
            _close(frame.handle)
    return plan, idents


# ---------------------------------------------------------------- pass 2: execute


def _execute(
    dst_root: str, plan: list[tuple[str, bool]], idents: dict[str, _Ident], result: DeleteResult,
    backup_to: Callable[[str], str] | None = None,
) -> None:
    try:
        root, ident = _open_root(dst_root)
    except OSError as e:
        result.failures.append(_failure(dst_root, e, "cannot open DST for --delete"))
        return
    # stack[i] is the handle of the directory named by the first i components of the current
    # parent; it follows the plan's depth-first order, so each directory is opened once.
    stack: list[tuple[tuple[str, ...], _Handle]] = [((), root)]
    broken: set[tuple[str, ...]] = set()  # directories that could not be (re)entered safely
    blocked: set[str] = set()  # directories to keep: something inside was not removed
    try:
        if ident != idents.get(""):
            result.failures.append(CopyFailure(dst_root, None, "DST root was replaced during the run", STEP_DELETE))
            return
        for rel, is_dir in plan:
            head, name = os.path.split(rel)
            if is_dir and rel in blocked:
                _block(head, blocked)
                continue
            parent = _enter(dst_root, head, stack, broken, idents, result.failures)
            if parent is None:
                _block(head, blocked)
                continue
            try:
                if backup_to is not None and not is_dir:
                    _move(parent, name, backup_to(rel))
                    result.backed_up += 1
                else:
                    _remove(parent, name, is_dir)
            except FileNotFoundError:
                # Someone else removed it first: the mirror wants it gone and it is; not a
                # failure, but not ours to list either.
                continue
            except OSError as e:
                result.failures.append(_failure(os.path.join(dst_root, rel), e, "cannot delete"))
                _block(head, blocked)
                continue
            result.deleted.append(os.path.join(dst_root, rel))
    finally:
        for _, handle in stack:
            _close(handle)


def _block(rel_dir: str, blocked: set[str]) -> None:
    """Keep rel_dir and its ancestors: one failure inside must not cascade into ENOTEMPTY reports."""
    while rel_dir and rel_dir not in blocked:
        blocked.add(rel_dir)
        rel_dir = os.path.dirname(rel_dir)


def _enter(
    dst_root: str,
    head: str,
    stack: list[tuple[tuple[str, ...], _Handle]],
    broken: set[tuple[str, ...]],
    idents: dict[str, _Ident],
    failures: list[CopyFailure],
) -> _Handle | None:
    """The handle of directory head (relative), opened component by component from the root
    without following symlinks and checked against the scan; None if that is not possible."""
    parts = tuple(head.split(os.sep)) if head else ()
    while len(stack) > 1 and (len(stack) - 1 > len(parts) or stack[-1][0] != parts[: len(stack) - 1]):
        _close(stack.pop()[1])
    while len(stack) - 1 < len(parts):
        here = parts[: len(stack)]
        if here in broken:
            return None
        rel = os.sep.join(here)
        path = os.path.join(dst_root, rel)
        try:
            handle, ident = _open_child(stack[-1][1], here[-1])
        except OSError as e:
            broken.add(here)
            failures.append(_failure(path, e, "not entered: DST directory changed during the run"))
            return None
        if ident != idents.get(rel):
            _close(handle)
            broken.add(here)
            failures.append(CopyFailure(path, None, "not entered: DST directory was replaced during the run",
                                        STEP_DELETE))
            return None
        stack.append((here, handle))
    return stack[-1][1]
