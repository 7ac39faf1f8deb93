"""Is a directory on storage where every metadata call is a round trip to a server?

On a local file system (a page cache) a metadata call costs a microsecond or so; on NFS, SMB, a
FUSE or cloud file system it costs a round trip: a tenth of a millisecond on a fast LAN, several
milliseconds further away. probe_latency() tells the two apart in a few calls, without writing
anything, by timing a call that such file systems do not answer from a client cache:

- "fstatvfs": statfs of an open directory. NFS (FSSTAT, or a GETATTR of the file system's
  attributes in v4), SMB (QUERY_FS_INFO) and FUSE (STATFS) ask the server on every call, with or
  without attribute caching: exactly one round trip. A local file system answers from memory.
- "reopen": the directory opened again relative to itself (open(".", dir_fd=...)) and closed.
  Under NFS's close-to-open consistency an open revalidates the inode (a GETATTR) even while its
  attributes are cached; FUSE sends OPENDIR (and, with default_permissions and no attribute
  cache, GETATTRs first: 3 round trips on benchmarks/slowfs). The close is not waited for.
- "scandir": the first entry of a listing (opening and reading the directory: one or two round
  trips). The only one left where directories cannot be os.open'ed (Windows).

probe_latency() times the first of these that works here (fstatvfs on POSIX) `samples` times and
keeps the minimum: preemption on a loaded machine only ever adds time, so the minimum of a few
is near the true cost. probe_kinds() measures each kind, for callers that want to cross-check.
Measured here (benchmarks/slowfs, a FUSE mount adding a fixed delay per request; 2 shared
cores): delay 0.2 ms -> 0.25 ms, 1 ms -> 1.05 ms, 5 ms -> 5.07 ms, in 3 calls plus one open of
the directory; local ext4, tmpfs, /proc: 0.5-1.2 us. Callers pick their own threshold;
ROUND_TRIP_S is a conservative one. None when nothing can be measured (a missing or unreadable
path, no working call).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from pcopy.lookupstat import lookup_devs

# Above this, calls are round trips (the fastest LAN round trip is ~50-100 us; a local metadata
# call on a loaded machine stays below ~20 us at its minimum).
ROUND_TRIP_S = 50e-6

# Threads reading one large file from slow storage: 8, 16 from 2 ms per round trip (measured up
# to 16: 256 MiB at 5 ms took 1.34 s with 8, 1.09 s with 16, 6.99 s with one).
READ_THREADS = 8
MANY_READ_THREADS = 16
MANY_THREADS_FROM_S = 2e-3

# Default number of timed calls of each kind, and the time after which sampling a kind stops
# early (at least one call of each kind is always timed), so a 100 ms mount is not probed for
# seconds.
SAMPLES = 3
BUDGET_S = 0.05

_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _directory_of(path: str) -> str:
    return path if os.path.isdir(path) else (os.path.dirname(os.path.abspath(path)) or os.sep)


def _min_time(call: Callable[[], object], samples: int, budget_s: float) -> float:
    """The shortest of up to `samples` timings of call() (fewer once budget_s is spent)."""
    best = float("inf")
    started = time.perf_counter()
    for _ in range(max(1, samples)):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
        if t0 - started + best > budget_s:
            break
    return best


def _first_entry(directory: str) -> None:
    with os.scandir(directory) as entries:
        next(entries, None)


KINDS = ("fstatvfs", "reopen", "scandir")


def _measure(kind: str, directory: str, dir_fd: int | None, samples: int, budget_s: float) -> float | None:
    """The minimum time of one kind of call, or None when that call is missing or fails here."""
    try:
        if kind == "fstatvfs":
            fstatvfs = getattr(os, "fstatvfs", None)
            if fstatvfs is None or dir_fd is None:
                return None
            fd = dir_fd
            return _min_time(lambda: fstatvfs(fd), samples, budget_s)
        if kind == "reopen":
            if dir_fd is None or os.open not in os.supports_dir_fd:
                return None
            fd = dir_fd
            return _min_time(lambda: os.close(os.open(".", os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC, dir_fd=fd)),
                             samples, budget_s)
        if kind == "scandir":
            return _min_time(lambda: _first_entry(directory), samples, budget_s)
    except OSError:
        return None
    raise ValueError(f"unknown kind of call {kind!r}; known: {', '.join(KINDS)}")


def _open_directory(path: str, nearest: bool) -> tuple[str, int | None]:
    """The directory to probe for path (path itself, or a file's directory; with nearest, the
    nearest existing one for a missing path) and a descriptor of it: None where directories
    cannot be opened (Windows), or this one is unreadable or missing. Opening it is the only
    call that names the path: on slow storage every stat by path is round trips of its own."""
    there = os.path.abspath(path)
    if not _O_DIRECTORY:  # (Windows: opening tells no directory from a file, nor opens one)
        while nearest and not os.path.isdir(there) and os.path.dirname(there) != there:
            there = os.path.dirname(there)
        return _directory_of(there), None
    while True:
        try:
            return there, os.open(there, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError) as exc:
            parent = os.path.dirname(there)
            if parent == there or (isinstance(exc, FileNotFoundError) and not nearest):
                return there, None
            there = parent
        except OSError:
            return _directory_of(there), None


def probe_kinds(path: str | os.PathLike[str], kinds: tuple[str, ...] = KINDS, samples: int = SAMPLES,
                budget_s: float = BUDGET_S, first_only: bool = False, nearest: bool = False) -> dict[str, float]:
    """Seconds per call, the minimum over samples, for each of `kinds` that works here (a kind
    whose call is missing or fails is left out; empty when none works); with first_only, only the
    first kind that works is measured. A file's directory is probed; with nearest, a missing
    path's nearest existing directory (else nothing works there)."""
    directory, fd = _open_directory(os.fspath(path), nearest)
    results: dict[str, float] = {}
    try:
        for kind in kinds:
            seconds = _measure(kind, directory, fd, samples, budget_s)
            if seconds is not None:
                results[kind] = seconds
                if first_only:
                    break
    finally:
        if fd is not None:
            os.close(fd)
    return results


def probe_latency(path: str | os.PathLike[str], samples: int = SAMPLES,
                  budget_s: float = BUDGET_S, nearest: bool = False) -> float | None:
    """Seconds one metadata round trip costs on the storage holding path (a directory, or a
    file's directory): about 1e-6 on a local file system, the network or FUSE round trip
    elsewhere. The first kind of call that works is timed (fstatvfs, else reopen, else scandir).
    Nothing is written. None when it cannot be measured. See the module docstring."""
    kinds = probe_kinds(path, KINDS, samples, budget_s, first_only=True, nearest=nearest)
    return next(iter(kinds.values()), None)


def storage_options(src: str, dst: str, *, dst_new: bool = False) -> dict[str, Any]:
    """What a copy from src to dst should know of their storage (CopyOptions.slow_dst,
    read_threads and lookup_devs; docs/benchmarks-slow.md, "Large files"): each probed at its
    nearest existing directory. A few microseconds on local file systems, a few round trips on
    slow ones (on a FUSE mount ~9 more and two kernel ticks, pcopy.lookupstat). dst_new: dst is
    a directory this run just made (a new DST's stage, pcopy.stage): nothing in it to stat."""
    src_s = probe_latency(src)
    dst_s = probe_latency(dst, nearest=True)
    read_threads = 0
    if src_s is not None and src_s > ROUND_TRIP_S:
        read_threads = MANY_READ_THREADS if src_s >= MANY_THREADS_FROM_S else READ_THREADS
    # (a DST not made yet gives the probe no name to time; a new DST has nothing to stat)
    sides = ((src, src_s),) if dst_new else ((src, src_s), (dst, dst_s))
    devs = lookup_devs([(path, seconds) for path, seconds in sides if seconds is not None])
    return {"slow_dst": dst_s is not None and dst_s > ROUND_TRIP_S, "read_threads": read_threads,
            "lookup_devs": devs}


def is_round_trip_storage(path: str | os.PathLike[str], threshold_s: float = ROUND_TRIP_S) -> bool | None:
    """True when metadata calls on path's storage cost more than threshold_s each (a network or
    FUSE file system), False when less, None when that cannot be measured."""
    seconds = probe_latency(path)
    return None if seconds is None else seconds > threshold_s
