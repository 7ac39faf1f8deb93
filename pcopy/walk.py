"""Reading the source tree: one directory at a time (list_dir), its entries as Entry records.

The walk itself is spread over the workers (pcopy.scan: each directory is a job that hands back
its subdirectories), so no part of it recurses and no process reads every directory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import NamedTuple

from pcopy.jobs import Kind


class Entry(NamedTuple):
    """One source entry: where it is and the lstat (stat with -L) fields planning needs."""

    src: str
    rel: str  # path relative to the source root, with os.sep; "" for the root itself
    kind: Kind
    size: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    dev: int = 0
    ino: int = 0
    nlink: int = 1
    rdev: int = 0
    blocks: int | None = None


OnError = Callable[[str, OSError], None]
# excluded(rel, is_dir): rel is '/'-joined below the root; True drops the entry (and, for a
# directory, everything below it: it is never listed).
Excluded = Callable[[str, bool], bool]


def kind_of(mode: int) -> Kind | None:
    if stat.S_ISREG(mode):
        return Kind.FILE
    if stat.S_ISDIR(mode):
        return Kind.DIR
    if stat.S_ISLNK(mode):
        return Kind.SYMLINK
    if stat.S_ISFIFO(mode):
        return Kind.FIFO
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return Kind.DEVICE
    if stat.S_ISSOCK(mode):
        return Kind.SOCKET
    return None  # door, whiteout, ...: nothing portable to recreate


def make_entry(src: str, rel: str, st: os.stat_result) -> Entry | None:
    kind = kind_of(st.st_mode)
    if kind is None:
        return None
    return Entry(
        src=src, rel=rel, kind=kind, size=st.st_size, mode=st.st_mode, uid=st.st_uid,
        gid=st.st_gid, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns, dev=st.st_dev,
        ino=st.st_ino, nlink=st.st_nlink, rdev=getattr(st, "st_rdev", 0),
        blocks=getattr(st, "st_blocks", None),
    )


class Names(NamedTuple):
    """Up to `chunk` non-directory names of one source directory, not yet stat'ed: the workers
    stat them, so the cost of listing a file is one directory-entry read (no syscall)."""

    src_dir: str
    rel_dir: str
    names: tuple[str, ...]


def list_dir(path: str, rel: str, *, dereference: bool, on_error: OnError,
             excluded: Excluded | None = None, dir_fd: int | None = None) -> tuple[list[str], list[str]]:
    """The names in directory path (rel below the root): (non-directories, directories), in
    listing order. File types come from the directory entry (d_type), so a file costs no
    syscall here; with dereference, symlinks are followed (one stat each, to tell directories).
    excluded (optional) drops names by relative path ('/'-joined), a directory before it is
    ever entered. An error is reported through on_error and ends the listing, never the run.
    dir_fd: path opened (O_PATH will do), to list it from there rather than by its path: on a
    network or FUSE file system without name caching a path costs a LOOKUP per component
    (a directory 6 levels below SRC: 7 requests, against none from the descriptor)."""
    names: list[str] = []
    dirs: list[str] = []
    fd = None
    try:
        if dir_fd is not None and _LIST_FD:
            # "." from the descriptor: the directory itself, no name to look up. Open while its
            # entries are read: a DirEntry stats relative to it (is_dir of a symlink, or where
            # the file system gives no d_type); scandir lists a duplicate of it.
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
        listing = os.scandir(path if fd is None else fd)
    except OSError as exc:
        on_error(path, exc)
        if fd is not None:
            os.close(fd)
        return names, dirs
    try:
        with listing:
            while True:
                try:
                    item = next(listing, None)
                except OSError as exc:
                    on_error(path, exc)
                    break
                if item is None:
                    break
                try:
                    is_dir = item.is_dir(follow_symlinks=dereference)
                except OSError:
                    is_dir = False  # the worker's own stat will report what is wrong with it
                if excluded is not None and excluded(f"{rel}/{item.name}" if rel else item.name, is_dir):
                    continue
                (dirs if is_dir else names).append(item.name)
    finally:
        if fd is not None:
            os.close(fd)
    return names, dirs


_LIST_FD = os.scandir in os.supports_fd and hasattr(os, "O_DIRECTORY")
