"""Where SRC goes: probe the two command-line paths, then decide (pure) or refuse (exit 2)."""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple

from pcopy.errors import RefusedError
from pcopy.jobs import Kind
from pcopy.walk import kind_of


class PathInfo(NamedTuple):
    """What the target rules need to know about one path as the user typed it."""

    given: str
    abspath: str
    realpath: str
    kind: Kind | None  # of what the path leads to (symlinks followed); None: nothing there
    lexists: bool = False  # something (perhaps a dangling symlink) is at the path itself
    is_link: bool = False
    dev: int = 0
    ino: int = 0
    ends_with_sep: bool = False
    error: str | None = None  # why it cannot be read, when it exists but cannot be


class Target(NamedTuple):
    src: str  # what to read
    dst: str  # what to write (for a file SRC into a directory DST: DST/<name of SRC>)
    src_kind: Kind


def _show(path: str) -> str:
    from pcopy.report import escape

    return escape(path)


def resolve_target(src: PathInfo, dst: PathInfo, inner: PathInfo | None = None) -> Target:
    """Apply the contract's target rules. inner is the probe of DST/<name of SRC> when SRC is not
    a directory and DST is (or will be) a directory; it is needed for the same-file check."""
    if src.error is not None:
        raise RefusedError(f"cannot read source {_show(src.given)}: {src.error}")
    if src.kind is None:
        raise RefusedError(f"source {_show(src.given)} does not exist")
    read_from = src.realpath if src.is_link else src.abspath
    if src.kind is Kind.DIR:
        if dst.lexists and dst.kind is not Kind.DIR:
            raise RefusedError(
                f"cannot copy directory {_show(src.given)} onto non-directory {_show(dst.given)}")
        if dst.realpath == src.realpath:
            raise RefusedError(f"{_show(src.given)} and {_show(dst.given)} are the same directory")
        if dst.realpath.startswith(src.realpath.rstrip(os.sep) + os.sep):
            raise RefusedError(
                f"cannot copy {_show(src.given)} into itself: {_show(dst.given)} is inside it")
        return Target(read_from, dst.abspath, Kind.DIR)
    final = dst
    if dst.kind is Kind.DIR or (not dst.lexists and dst.ends_with_sep):
        if inner is None:
            raise ValueError("inner probe needed when the destination is a directory")
        final = inner
    if final.kind is not None and (final.dev, final.ino) == (src.dev, src.ino):
        raise RefusedError(f"{_show(src.given)} and {_show(final.given)} are the same file")
    if final.kind is Kind.DIR:
        raise RefusedError(f"cannot overwrite directory {_show(final.given)} with non-directory")
    return Target(read_from, final.abspath, src.kind)


def probe(path: str, *, check_readable: bool = False) -> PathInfo:
    """Look at one command-line path (follows symlinks, as cp and rsync do for their arguments)."""
    abspath = os.path.abspath(path)
    ends = path.endswith(os.sep) or (os.altsep is not None and path.endswith(os.altsep))
    try:
        lst = os.lstat(abspath)
    except OSError:
        return PathInfo(path, abspath, os.path.realpath(abspath), None, ends_with_sep=ends)
    is_link = stat.S_ISLNK(lst.st_mode)
    try:
        st = os.stat(abspath) if is_link else lst
    except OSError:  # dangling symlink: something is there, but it leads nowhere
        return PathInfo(path, abspath, os.path.realpath(abspath), None, lexists=True,
                        is_link=True, ends_with_sep=ends)
    kind = kind_of(st.st_mode)
    error = _unreadable(abspath, kind) if check_readable else None
    return PathInfo(path, abspath, os.path.realpath(abspath), kind, True, is_link, st.st_dev,
                    st.st_ino, ends, error)


def _unreadable(path: str, kind: Kind | None) -> str | None:
    """Try to open what we will read, so an unreadable SRC is refused before anything is written.
    Special files are never opened (a FIFO would block or lose a writer's data)."""
    try:
        if kind is Kind.DIR:
            with os.scandir(path):
                pass
        elif kind is Kind.FILE:
            os.close(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def locate(src_arg: str, dst_arg: str) -> Target:
    """Probe SRC and DST (and DST/<name of SRC> if needed) and resolve the target, or refuse."""
    src = probe(src_arg, check_readable=True)
    dst = probe(dst_arg)
    inner = None
    if src.kind not in (None, Kind.DIR) and (dst.kind is Kind.DIR or (not dst.lexists and dst.ends_with_sep)):
        name = os.path.basename(src.abspath)
        inner = probe(os.path.join(dst_arg, name))
    target = resolve_target(src, dst, inner)
    # What must be created at the top (the DST directory, or a file's parent) has to be creatable:
    # otherwise refuse now, before anything is written, rather than fail on every entry.
    must_create = target.dst if target.src_kind is Kind.DIR else os.path.dirname(target.dst)
    problem = _not_creatable(must_create) if target.src_kind is not Kind.DIR or not dst.lexists else None
    if problem is not None:
        raise dst_refused(dst.given, problem)
    return target


def dst_refused(dst_given: str, exc: OSError) -> RefusedError:
    """The refusal for a DST that cannot be made: names DST and the real reason (EROFS,
    ENOENT, EACCES...), and keeps the OSError as its cause (the JSON report's errno)."""
    refused = RefusedError(f"cannot create destination {_show(dst_given)}: {exc.strerror or exc}")
    refused.__cause__ = exc
    return refused


def _not_creatable(path: str) -> OSError | None:
    """Why entries cannot be created at path (or below its nearest existing ancestor), if that
    can be told without writing. os.access answers for the real user, which is the user pcopy
    runs as; a read-only mount is EROFS for root too. What only an attempt shows (procfs refuses
    mkdir with ENOENT) is refused when the DST root is created (runner: dst_refused)."""
    probe_at = path
    while not os.path.lexists(probe_at):
        parent = os.path.dirname(probe_at)
        if parent == probe_at:
            break
        probe_at = parent
    if not os.path.isdir(probe_at):
        return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), probe_at)
    st_rdonly = getattr(os, "ST_RDONLY", 0)
    if st_rdonly and hasattr(os, "statvfs"):
        try:
            if os.statvfs(probe_at).f_flag & st_rdonly:
                return OSError(errno.EROFS, os.strerror(errno.EROFS), probe_at)
        except OSError:
            pass  # no answer: the access check and the first mkdir will tell
    # Whether path exists (entries go inside it) or not (it is created inside probe_at).
    if os.access(probe_at, os.W_OK | os.X_OK):
        return None
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), probe_at)
