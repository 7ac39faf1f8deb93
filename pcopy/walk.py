"""walk_tree: a streaming, read-only scandir walk of the source tree.

Iterative (an explicit stack, so 300-deep trees hit no recursion limit), one directory open at a
time, and entries are yielded as they are read so copying starts before a large tree is listed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
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
    stat them, so the parent's cost per file is one directory-entry read (no syscall)."""

    src_dir: str
    rel_dir: str
    names: tuple[str, ...]


def walk_tree(root: str, *, dereference: bool, on_error: OnError, chunk: int = 256,
              excluded: Excluded | None = None) -> Iterator[Entry | Names]:
    """Walk below root (not root itself): every directory as an Entry (stat'ed: its metadata
    and loop detection need it), everything else as Names chunks. A directory's Entry comes
    before anything inside it.

    File types come from the directory entry (d_type), so files cost no syscall here. With
    dereference, symlinks are followed (one stat each, to tell directories); a directory that
    is its own ancestor (a loop) is reported through on_error as ELOOP and not entered. Errors
    never stop the walk.

    excluded (optional) filters by relative path: names with is_dir=False (d_type is known, so
    no stat), directories with is_dir=True before they are stat'ed or entered.
    """
    root_st = os.stat(root)
    # Ancestors are only needed to detect loops, which only followed symlinks can make.
    root_ancestors = frozenset({(root_st.st_dev, root_st.st_ino)}) if dereference else frozenset()
    stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [(root, "", root_ancestors)]
    while stack:
        path, rel, ancestors = stack.pop()
        try:
            listing = os.scandir(path)
        except OSError as exc:
            on_error(path, exc)
            continue
        names: list[str] = []
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
                if not is_dir:
                    names.append(item.name)
                    if len(names) >= chunk:
                        yield Names(path, rel, tuple(names))
                        names = []
                    continue
                child_rel = os.path.join(rel, item.name) if rel else item.name
                try:
                    st = item.stat(follow_symlinks=dereference)
                except OSError as exc:
                    on_error(item.path, exc)
                    continue
                entry = make_entry(item.path, child_rel, st)
                if entry is None or entry.kind is not Kind.DIR:  # replaced since the listing
                    names.append(item.name)
                    continue
                if dereference:
                    key = (st.st_dev, st.st_ino)
                    if key in ancestors:
                        on_error(item.path, OSError(errno.ELOOP, "symlink loop", item.path))
                        continue
                    stack.append((item.path, child_rel, ancestors | {key}))
                else:
                    stack.append((item.path, child_rel, ancestors))
                yield entry
        if names:
            yield Names(path, rel, tuple(names))
