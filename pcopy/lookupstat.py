"""A stat of a name in one round trip on FUSE: the attributes its LOOKUP just returned.

On a FUSE mount without attribute caching (attr_timeout 0, as latency-bound and network-backed
FUSE file systems are often run) a stat of a name costs two requests: the LOOKUP that resolves
the name, whose reply carries the attributes, and a GETATTR, because the kernel takes the
attributes it was just given as already expired. statx() with AT_STATX_DONT_SYNC returns the
attributes the kernel holds instead of asking again.

That is as fresh as os.stat only where every stat resolves its name with a LOOKUP: a mount
that keeps no name valid (entry_timeout 0; benchmarks/slowfs and delayfs, and latency-bound
mounts generally). Where names are cached, the attributes held can be older than a plain stat
would return: the kernel marks them stale when this machine changes the file (a write, a
rename) and only a GETATTR, which DONT_SYNC skips, refreshes them. So the parent probes each
slow side once (lookup_devs: a FUSE mount by /proc/self/mountinfo, whose names are looked up
again one kernel tick later), the jobs carry the devices that passed, and a worker takes this
stat only in a directory on one of them (dev_of: asked with DONT_SYNC, no request). NFS and SMB
are never among them: they revalidate a name without refreshing its attributes. A file whose
size or mtime changed after its stat is not copied anyway (ChangedError, from a fresh fstat
after its bytes are read). Linux only; elsewhere, without statx in the C library, or for a
mount that does not fill the basic fields, plain os.stat.

Measured on benchmarks/slowfs/delayfs.py (2026-12-02): a stat relative to an open directory,
2 requests with os.stat, 1 with stat_at.
"""

from __future__ import annotations

import errno
import os
import stat
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


def _load() -> tuple[Any, ...] | None:
    """(libc's statx, struct statx, ctypes.byref, ctypes.get_errno) where statx exists. Called
    (ctypes imported) only by a run with a slow side to probe and by its workers when the jobs
    carry lookup_devs: a copy on local storage starts as it did."""
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
    return call, Statx, ctypes.byref, ctypes.get_errno


_lock = threading.Lock()
_api: tuple[Any, ...] | None = None
_api_loaded = False
# How long after a name's last LOOKUP a stat of it may still be answered from the cache where
# names are not cached: until the kernel's next tick (10 ms at HZ=100, the slowest), plus the
# probe's polling interval and margin. A mount passes the probe only with LOOKUPs this close.
_TICK_S = 0.015
_POLL_S = 0.001  # (at HZ=1000 a tick; the probe then takes ~2-3 ms)
_PROBE_LIMIT_S = 1.0  # a mount still undecided then (round trips of ~0.5 s) is left out
# The shortest round trip for which the probe is made (its bar is half of it: see lookup_devs).
# A mount that fast makes a request cost little anyway.
PROBE_FROM_S = 200e-6


def _forget_lock() -> None:
    # A forked child must not inherit the lock held by a thread that does not exist in it.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_lock)


def _statx(dir_fd: int, name: bytes, flags: int, shown: str) -> Any:
    assert _api is not None
    call, statx_type, byref, get_errno = _api
    buf = statx_type()
    while call(dir_fd, name, flags, _STATX_BASIC_STATS, byref(buf)) != 0:
        err = get_errno()
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


def _load_api() -> bool:
    global _api, _api_loaded
    with _lock:
        if not _api_loaded:
            _api, _api_loaded = _load(), True
    return _api is not None


def dev_of(dir_fd: int) -> int | None:
    """The device of the open directory dir_fd, with no request to its file system (the
    kernel's cached inode); None without statx."""
    if not _load_api():
        return None
    try:
        buf = _statx(dir_fd, b"", _AT_EMPTY_PATH | _AT_STATX_DONT_SYNC, "")
    except OSError:
        return None
    return os.makedev(buf.dev_major, buf.dev_minor)


def quick_in(dir_fd: int | None, devs: tuple[int, ...]) -> bool:
    """Whether the stats of names in the open directory dir_fd may be stat_at's: its device is
    one of devs (a job's CopyOptions.lookup_devs)."""
    return bool(devs) and dir_fd is not None and dev_of(dir_fd) in devs


def _timed(dir_fd: int, name: bytes) -> float:
    started = time.perf_counter()
    _statx(dir_fd, name, _AT_SYMLINK_NOFOLLOW | _AT_STATX_DONT_SYNC, "")
    return time.perf_counter() - started


def _named_in(where: str, name: str | None, fuse: dict[int, bool]) -> tuple[int, int, bytes] | None:
    """(device, where opened, name) when where is on a FUSE mount (fuse: read_mounts()) and
    name, a directory (None: the first name listed in where), is on the same mount; None
    otherwise, and then nothing is left open."""
    listed = name is None
    try:
        fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        dev = dev_of(fd)
        if dev is not None and fuse.get(dev, False):
            if name is None:
                with os.scandir(fd) as entries:
                    name = next((entry.name for entry in entries), None)
            if name is not None:
                buf = _statx(fd, os.fsencode(name), _AT_SYMLINK_NOFOLLOW | _AT_STATX_DONT_SYNC, name)
                # (a directory named in its parent: a file's copy stats no names, nothing to probe)
                if os.makedev(buf.dev_major, buf.dev_minor) == dev and (listed or stat.S_ISDIR(buf.mode)):
                    return dev, fd, os.fsencode(name)
    except OSError:
        pass
    os.close(fd)
    return None


def _candidate(directory: str, fuse: dict[int, bool]) -> tuple[int, int, bytes] | None:
    """A name to probe directory's mount with: its own name in its parent, or where it is the
    root of its mount (its name is then the parent mount's), the first name listed in it (one
    READDIR; an up-to-date re-run lists nothing else)."""
    path = os.path.abspath(directory)
    parent, name = os.path.split(path)
    return (_named_in(parent, name, fuse) if name else None) or _named_in(path, None, fuse)


def lookup_devs(sides: list[tuple[str, float]]) -> tuple[int, ...]:
    """The devices of those directories where stat_at is as fresh as os.stat: a FUSE mount
    whose kernel keeps no name valid past the tick it was looked up in (entry_timeout 0).

    Told by timing stat_at of a name on it every millisecond: a LOOKUP, a round trip, once the
    kernel tick in which the name was last looked up has passed where names are not cached;
    never a request where they are. A mount passes with two such round trips, each within
    _TICK_S (a tick at HZ=100, with margin) of the last, a sample counting as one when it takes more than
    half the directory's round trip (its seconds in sides, pcopy.latency's probe): one
    preempted cache hit cannot pass for both. Only where that round trip is PROBE_FROM_S or
    more: a cache hit through ctypes took up to 36 us on a loaded machine here, and must stay
    well below the bar. (A mount whose names stay valid less than _TICK_S passes too: the
    attributes a stat then takes are at most that old.) Costs ~9 requests in a row (opening the
    parent, three LOOKUPs, slowfs's permission GETATTRs) and two ticks where names are not
    cached: 5.8 / 13.7 / 44 ms on slowfs at 0.25 / 1 / 5 ms per request; ~16-22 ms and 2
    requests where they are; nothing off FUSE."""
    probed = {directory: s for directory, s in sides if s >= PROBE_FROM_S}
    found: list[tuple[int, int, bytes, float]] = []
    if probed and _load_api():
        fuse = read_mounts()
        for directory, round_trip_s in probed.items():
            if (candidate := _candidate(directory, fuse)) is not None:
                if any(candidate[0] == dev for dev, _fd, _name, _s in found):
                    os.close(candidate[1])  # (SRC and DST on one mount: probed once)
                    continue
                found.append((*candidate, round_trip_s / 2))
    if not found:
        return ()
    started = time.monotonic()
    looked_up: dict[int, list[float]] = {dev: [started] for dev, _fd, _name, _s in found}
    uncached: dict[int, bool] = {}
    try:
        while len(uncached) < len(found) and time.monotonic() - started < _PROBE_LIMIT_S:
            time.sleep(_POLL_S)
            for dev, fd, name, threshold_s in found:
                if dev in uncached:
                    continue
                round_trip = _timed(fd, name) > threshold_s
                now = time.monotonic()
                times = looked_up[dev]
                if round_trip:
                    times.append(now)
                    if len(times) == 3:  # (the name's first stat, in _candidate, and two more)
                        uncached[dev] = True
                elif now - times[-1] > _TICK_S:
                    uncached[dev] = False  # a tick gone without a LOOKUP: names are cached
    except OSError:
        uncached.clear()
    finally:
        for _dev, fd, _name, _s in found:
            os.close(fd)
    return tuple(dev for dev, yes in uncached.items() if yes)


def stat_at(name: str, *, dir_fd: int, follow_symlinks: bool = True) -> os.stat_result:
    """os.stat(name, dir_fd=dir_fd, follow_symlinks=...), called the same way, taking the
    attributes the kernel holds after resolving the name. Only for a directory on a device
    lookup_devs() returned."""
    flags = _AT_STATX_DONT_SYNC | (0 if follow_symlinks else _AT_SYMLINK_NOFOLLOW)
    buf = _statx(dir_fd, os.fsencode(name), flags, name)
    if buf.mask & _STATX_BASIC_STATS != _STATX_BASIC_STATS:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    return _result(buf)


def stat_fd(fd: int, shown: str) -> os.stat_result:
    """os.fstat(fd) for a file just opened by name (O_PATH will do) in a directory on a device
    lookup_devs() returned: the attributes its LOOKUP brought, with no request."""
    buf = _statx(fd, b"", _AT_EMPTY_PATH | _AT_STATX_DONT_SYNC, shown)
    if buf.mask & _STATX_BASIC_STATS != _STATX_BASIC_STATS:
        return os.fstat(fd)
    return _result(buf)


def _result(buf: Any) -> os.stat_result:
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
