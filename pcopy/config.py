"""The one frozen Config that every layer reads; every default lives here."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pcopy.filters import FilterSet

# Large files: by default (None) each is copied as one stream, whatever its size. Linux serialises
# writes into one file (its inode lock) whatever the call, so byte ranges of one file copied by
# several workers gain nothing on local file systems and cost up to twice the CPU. Measured
# (benchmarks/, 2 cores, 2 GiB file, medians of 5 alternating runs): ext4 -> tmpfs, one sendfile
# stream 0.890 s vs 8 pread/pwrite ranges on 2 workers 0.934 s (1.7x the CPU), shutil 0.920 s,
# cp 1.040 s; ext4 -> ext4, one copy_file_range stream 0.76-0.82 s vs 2 parallel 0.86-0.95 s.
# Whole files in parallel do scale (8 x 256 MiB to tmpfs: 0.599 s vs shutil 0.910 s). A chunk
# size, when given, splits larger files into ranges (for file systems where parallel requests
# help, e.g. network mounts).
DEFAULT_CHUNK_BYTES: int | None = None

# A batch job closes when it holds this many files or this many bytes, whichever comes first.
# A per-file apply_async costs ~30 us of IPC; 256 files make that ~0.1 us per file while a batch
# is still small enough that the last batches of a tree spread over all workers.
BATCH_FILES = 256
BATCH_BYTES = 16 * 1024 * 1024

# Buffer of the portable read/write loop when it is the fallback (not chosen by the user).
DEFAULT_BUFFER_BYTES = 1024 * 1024

# Workers report progress at most this often (seconds) or every PROGRESS_BYTES bytes: a Manager
# queue put costs tens of microseconds, so per-read messages would cost more than the copy.
PROGRESS_INTERVAL_S = 0.1
PROGRESS_BYTES = 8 * 1024 * 1024

# rsync accepts up to 20 --link-dest/--compare-dest directories; each one costs an lstat per
# file that is not up to date, so the limit also bounds that cost.
MAX_LINK_DEST = 20


class Compare(str, Enum):
    """How an existing DST file is judged up to date."""

    QUICK = "quick"  # same size and mtime_ns (rsync's quick check): skipped
    CHECKSUM = "checksum"  # same size and the same BLAKE2b digest of the content: skipped
    ALWAYS = "always"  # never up to date: every file is copied again (--ignore-times)


class Method(str, Enum):
    """How file bytes are moved."""

    AUTO = "auto"  # copy_file_range -> sendfile -> read/write loop, whatever the OS offers
    READWRITE = "readwrite"  # the portable read/write loop only, with Config.buffer_bytes


class Engine(str, Enum):
    """Where jobs run."""

    LOCAL = "local"  # worker processes on this machine (pool.WorkerPool), or the parent itself
    RAY = "ray"  # actors on a Ray cluster (raypool.RayPool); needs `pip install 'pcopy[ray]'`


# Worker processes per CPU when -j is not given and SRC or DST is slow storage (a round trip per
# request, pcopy.latency): each worker also grows threads, but creates and renames in one
# directory queue on its lock, and more processes spread the work over more directories at once.
# Measured on slowfs at 1 ms, 1,000 files in 10 directories, 2 CPUs: -j 2 4.56 s, -j 8 1.46 s,
# -j 16 2.21 s, -j 64 2.06 s (local -> slow; slow -> local 1.41 / 0.54 / 0.84 / 0.86 s).
SLOW_JOBS_PER_CPU = 4


def default_jobs() -> int:
    """CPUs available to this process (affinity-aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Config:
    """Everything that decides how a copy runs. Display choices (progress, json) are not here."""

    jobs: int = field(default_factory=default_jobs)
    chunk_bytes: int | None = DEFAULT_CHUNK_BYTES  # None: never split a file
    threads: int | None = None  # per worker; None: as many as the storage rewards (pcopy.threads)
    # jobs is the default (-j not given): on slow storage the run raises it (SLOW_JOBS_PER_CPU).
    jobs_auto: bool = False
    method: Method = Method.AUTO
    buffer_bytes: int = DEFAULT_BUFFER_BYTES
    dereference: bool = False
    preserve_owner: bool | None = None  # None: when running as root (only root may chown)
    preserve_hard_links: bool = True  # names sharing an inode in SRC share one in DST
    # None: as preserve_owner (root keeps both); True/False: chown to the source gid or not.
    preserve_group: bool | None = None
    preserve_perms: bool = True  # False: source permissions masked by the umask, no set-ID bits
    preserve_times: bool = True  # False: copies get the time they were written
    preserve_xattrs: bool = False  # extended attributes (Linux); off by default like cp -a/rsync -a
    compare: Compare = Compare.QUICK
    update_only: bool = False  # never replace a DST file whose mtime is newer than SRC's
    replace_existing: bool = True  # False (--no-clobber): an existing DST entry is never replaced
    dry_run: bool = False  # walk, judge and count, write nothing
    delete: bool = False  # remove DST entries SRC lacks, after a copy without failures
    delete_after_failures: bool = False  # --delete-anyway: delete even when the copy had failures
    max_delete: int | None = None  # more deletions than this: delete nothing, exit 3
    filters: FilterSet | None = None  # --include/--exclude rules; None or empty: everything
    record_changes: bool = False  # collect every copied/replaced/deleted path (--itemize, --log)
    verify: bool = False  # compare content digests of source and copy before each rename
    fsync: bool = False  # flush files (and directories) to stable storage before renames
    batch_files: int = BATCH_FILES
    batch_bytes: int = BATCH_BYTES
    # None: the platform's default start method; else "fork", "forkserver" or "spawn".
    start_method: str | None = None
    # Snapshot backups (docs/backups.md). link_dest: directories whose unchanged files are
    # hard-linked instead of copied (relative ones are resolved against DST, as rsync does).
    link_dest: tuple[str, ...] = ()
    backup: bool = False  # move each DST file that is replaced or deleted aside first
    backup_dir: str | None = None  # ... into this directory (relative: to DST); None: beside it
    backup_suffix: str | None = None  # None: "~" without backup_dir, "" with it (rsync)
    bwlimit_bytes: int | None = None  # bytes per second for the whole run; None: no limit
    partial: bool = False  # keep interrupted large files under a hidden name and resume them
    engine: Engine = Engine.LOCAL
    # Ray's address (--ray-address); None: Ray's own convention (RAY_ADDRESS, then a cluster
    # started with `ray start` on this machine, else a new local Ray). Only with Engine.RAY.
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError("jobs must be at least 1")
        if self.chunk_bytes is not None and self.chunk_bytes < 1:
            raise ValueError("chunk size must be at least 1 byte")
        if self.buffer_bytes < 1:
            raise ValueError("buffer size must be at least 1 byte")
        if self.batch_files < 1 or self.batch_bytes < 1:
            raise ValueError("batch limits must be at least 1")
        if self.max_delete is not None and self.max_delete < 0:
            raise ValueError("max delete must be at least 0")
        if len(self.link_dest) > MAX_LINK_DEST:
            raise ValueError(f"at most {MAX_LINK_DEST} --link-dest directories")
        if self.bwlimit_bytes is not None and self.bwlimit_bytes < 1:
            raise ValueError("bandwidth limit must be at least 1 byte per second")


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Parse '1048576', '64K', '8M', '1G', '1.5G' (binary units, as cp and rsync read them; a
    fraction must come to a whole number of bytes)."""
    from fractions import Fraction

    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"invalid size {text!r} (use e.g. 1048576, 64K, 8M, 1.5G)")
    value = Fraction(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]
    if value.denominator != 1:
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    if value < 1:
        raise ValueError(f"size must be at least 1 byte, got {text!r}")
    return int(value)
