"""A stat of a name in one round trip on FUSE: the attributes its LOOKUP just returned.

On a FUSE mount without attribute caching (attr_timeout 0, as latency-bound and network-backed
FUSE file systems are often run) a stat of a name costs two requests: the LOOKUP that resolves
the name, whose reply carries the attributes, and a GETATTR, because the kernel takes the
attributes it was just given as already expired. statx() with AT_STATX_DONT_SYNC returns the
attributes the kernel holds instead of asking again.

On FUSE these are never older than the name's entry: a name whose entry timeout has passed is
looked up again on the way (fuse_dentry_revalidate), and the LOOKUP's reply refreshes them. So
the answer is at most entry_timeout old where a plain stat's is at most attr_timeout old; with
both 0 (benchmarks/slowfs, delayfs) it is as fresh. What pcopy does with the stat also guards
it: the copy of a file whose size or mtime changed since is discarded (ChangedError, from a
fresh fstat after the bytes are read).

Other network file systems are left alone: NFS and SMB revalidate a name without refreshing its
inode's attributes, so DONT_SYNC there can return attributes of any age. FUSE is told by the
device of the directory (asked with DONT_SYNC too: no round trip) against /proc/self/mountinfo.
Linux only; elsewhere, without statx in the C library, or for a mount that does not fill the
basic fields, plain os.stat.

Measured on benchmarks/slowfs/delayfs.py (2026-12-02): a stat relative to an open directory,
2 requests with os.stat, 1 with stat_at.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from typing import Any

_AT_EMPTY_PATH = 0x1000
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_STATX_DONT_SYNC = 0x4000
_STATX_BASIC_STATS = 0x7FF
# Mount types whose attributes DONT_SYNC may take (see the module's note).
_FUSE_TYPES = ("fuse", "fuseblk", "virtiofs")


def _load() -> tuple[Any, Any] | None:
    """(libc's statx, struct statx) where both exist; ctypes is imported only on a machine with
    a FUSE mount (a worker's start-up stays as it was everywhere else)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    class Timestamp(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("reserved", ctypes.c_int32)]

    class Statx(ctypes.Structure):  # linux/stat.h, 256 bytes
        _fields_ = [
            ("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32), ("attributes", ctypes.c_uint64),
            ("nlink", ctypes.c_uint32), ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
            ("mode", ctypes.c_uint16), ("spare0", ctypes.c_uint16), ("ino", ctypes.c_uint64),
            ("size", ctypes.c_uint64), ("blocks", ctypes.c_uint64), ("attributes_mask", ctypes.c_uint64),
            ("atime", Timestamp), ("btime", Timestamp), ("ctime", Timestamp), ("mtime", Timestamp),
            ("rdev_major", ctypes.c_uint32), ("rdev_minor", ctypes.c_uint32),
            ("dev_major", ctypes.c_uint32), ("dev_minor", ctypes.c_uint32),
            ("spare2", ctypes.c_uint64 * 14),
        ]

    try:
        call = ctypes.CDLL(None, use_errno=True).statx  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Statx)]
    call.restype = ctypes.c_int
    return call, Statx


_lock = threading.Lock()
_fuse_devs: dict[int, bool] | None = None  # st_dev -> is a FUSE mount, from /proc/self/mountinfo
_api: tuple[Any, Any] | None = None
_read_at = 0.0
# With no FUSE mount seen, the table is read again after this long (a long-lived process that
# imported pcopy before a mount was made); with one, whenever a directory's device is new.
RECHECK_S = 5.0


def _forget_lock() -> None:
    # A forked child must not inherit the lock held by a thread that does not exist in it.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_lock)


def _statx(dir_fd: int, name: bytes, flags: int, shown: str) -> Any:
    import ctypes

    assert _api is not None
    call, statx_type = _api
    buf = statx_type()
    while call(dir_fd, name, flags, _STATX_BASIC_STATS, ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        if err != errno.EINTR:  # (retried, as os.stat does since PEP 475)
            raise OSError(err, os.strerror(err), shown)
    return buf


def read_mounts(path: str = "/proc/self/mountinfo") -> dict[int, bool]:
    """Each mount's device: whether it is FUSE (an unreadable table or line: nothing is)."""
    devs: dict[int, bool] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as mounts:
            lines = mounts.readlines()
    except OSError:
        return devs
    for line in lines:
        # ID PARENT MAJOR:MINOR ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
        fields = line.split()
        try:
            major, _, minor = fields[2].partition(":")
            kind = fields[fields.index("-") + 1].partition(".")[0]
            devs[os.makedev(int(major), int(minor))] = kind in _FUSE_TYPES
        except (ValueError, IndexError):
            continue
    return devs


def on_fuse(dir_fd: int) -> bool:
    """Whether the open directory dir_fd is on a FUSE mount (where stat_at saves a round trip).
    No request reaches the file system: its device comes from the kernel's cached inode."""
    global _fuse_devs, _api, _read_at
    with _lock:
        if _fuse_devs is None or (_api is None and time.monotonic() - _read_at > RECHECK_S):
            _fuse_devs, _read_at = read_mounts(), time.monotonic()
            _api = _load() if any(_fuse_devs.values()) else None
        if _api is None:  # (no FUSE mount at the last look, or no statx)
            return False
    try:
        buf = _statx(dir_fd, b"", _AT_EMPTY_PATH | _AT_STATX_DONT_SYNC, "")
    except OSError:
        return False
    dev = os.makedev(buf.dev_major, buf.dev_minor)
    with _lock:
        devs = _fuse_devs
        if dev not in devs:  # a mount made since the last read (or a btrfs subvolume: never)
            devs.update(read_mounts())
            devs.setdefault(dev, False)
        return devs[dev]


def stat_at(name: str, dir_fd: int, *, follow_symlinks: bool) -> os.stat_result:
    """os.stat(name, dir_fd=dir_fd, follow_symlinks=...) taking the attributes the kernel holds
    after resolving the name. Only for a dir_fd on_fuse() said yes to."""
    flags = _AT_STATX_DONT_SYNC | (0 if follow_symlinks else _AT_SYMLINK_NOFOLLOW)
    buf = _statx(dir_fd, os.fsencode(name), flags, name)
    if buf.mask & _STATX_BASIC_STATS != _STATX_BASIC_STATS:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    a, m, c = buf.atime, buf.mtime, buf.ctime
    # os.stat_result's order: the ten visible fields, then the float and nanosecond times,
    # st_blksize, st_blocks, st_rdev (built as posixmodule.c's _pystat_fromstructstat does).
    return os.stat_result((
        buf.mode, buf.ino, os.makedev(buf.dev_major, buf.dev_minor), buf.nlink, buf.uid, buf.gid, buf.size,
        a.tv_sec, m.tv_sec, c.tv_sec,
        a.tv_sec + a.tv_nsec * 1e-9, m.tv_sec + m.tv_nsec * 1e-9, c.tv_sec + c.tv_nsec * 1e-9,
        a.tv_sec * 1_000_000_000 + a.tv_nsec, m.tv_sec * 1_000_000_000 + m.tv_nsec,
        c.tv_sec * 1_000_000_000 + c.tv_nsec,
        buf.blksize, buf.blocks, os.makedev(buf.rdev_major, buf.rdev_minor),
    ))
