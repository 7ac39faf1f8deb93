"""Plain, picklable records that cross the process boundary: tasks, jobs and their results.

Nothing here refers to multiprocessing, so the same jobs can later run on another engine
(a cluster pool with the same apply_async API) unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pcopy.walk import Entry


class Kind(str, Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    FIFO = "fifo"
    DEVICE = "device"
    SOCKET = "socket"


class CopyOptions(NamedTuple):
    """What a worker needs to know about how to copy; a subset of Config."""

    use_fast_paths: bool = True  # False: the plain read/write loop only
    buffer_bytes: int = 1024 * 1024
    preserve_owner: bool = False  # chown only works (and is wanted) when running as root
    dereference: bool = False
    verify: bool = False  # re-read both sides and compare digests before the rename
    fsync: bool = False  # flush each file to stable storage before its rename
    preserve_group: bool = False
    preserve_perms: bool = True
    preserve_times: bool = True
    preserve_xattrs: bool = False
    # How an existing destination is judged (COMPARE_*), whether it may be replaced at all, and
    # whether anything is written. `plain` is True when all of these are at their defaults, so
    # the per-file loop tests one attribute instead of several on the default path.
    compare: int = 0
    update_only: bool = False
    replace_existing: bool = True
    dry_run: bool = False
    record_changes: bool = False  # JobResult.changes lists each copied/replaced destination (plain either way)
    plain: bool = True
    # Snapshot backups (docs/backups.md); any of them makes `plain` False.
    dst_root: str = ""  # DST (a tree's root, a single file's directory): relative paths below it
    link_dest: tuple[str, ...] = ()  # absolute directories, checked in order
    backup: bool = False
    backup_dir: str = ""  # absolute; "" with backup: beside the file, NAME + backup_suffix
    backup_suffix: str = "~"
    bwlimit_bytes: int = 0  # 0: no limit
    bwlimit_path: str = ""  # the run's shared byte counters (pcopy.bwlimit)
    partial: bool = False
    threads: int = 0  # threads per worker; 0: adapted to the storage (pcopy.threads)
    # Where SRC/DST are on storage whose every call is a round trip (pcopy.latency, measured at
    # the start): large files are then written in 1 MiB requests and read by several threads.
    slow_dst: bool = False
    read_threads: int = 0  # > 1: a large file from a slow SRC is read by this many threads
    # Devices (FUSE mounts that cache no names, probed by the parent) where a name's stat takes
    # the attributes its LOOKUP returned: one round trip instead of two (pcopy.lookupstat).
    lookup_devs: tuple[int, ...] = ()
    # DST is a new directory's stage (pcopy.stage): nothing in it is visible until the run
    # publishes it, so a file in a directory this run made is written under its final name.
    staged: bool = False


# CopyOptions.compare values (ints: compared once per file in the workers).
COMPARE_QUICK = 0  # size and mtime_ns
COMPARE_CHECKSUM = 1  # size and content digest
COMPARE_ALWAYS = 2  # never up to date (--ignore-times)

# What a worker found at a destination before copying (see worker.dst_state).
DST_MISSING = 0  # nothing there: the entry is copied
DST_DIFFERS = 1  # something else there: the entry is replaced
DST_SAME = 2  # up to date (or must not be replaced): skipped

# Actions in JobResult.changes and CopyReport.changes.
COPIED = "copied"
REPLACED = "replaced"
DELETED = "deleted"
HARDLINKED = "hardlinked"  # --link-dest: linked from an earlier snapshot instead of copied
# An up-to-date entry whose permissions or times were set on DST (no content copied): rsync's
# `.f...p.....` lines.
ATTRIBUTES = "attributes"
DST_ATTRS = 3  # dst_state/judge: up to date once its attributes were set (counted as skipped)

# CopyFailure.step: what was being done when an entry failed. Plain strings so the record stays
# plain picklable data; the JSON report carries them (docs/json.md lists them).
STEP_WALK = "walk"  # listing a SRC directory
STEP_STAT = "stat"  # reading a SRC entry's attributes
STEP_COMPARE = "compare"  # looking at what DST already has (quick check, --checksum digests)
STEP_OPEN = "open"  # opening the SRC file
STEP_MKDIR = "mkdir"  # creating a DST directory
STEP_CREATE = "create"  # creating the temporary DST entry (file, symlink, FIFO, device)
STEP_COPY = "copy"  # moving the bytes
STEP_CHECK = "check"  # SRC changed while it was copied, or --verify found a difference
STEP_METADATA = "metadata"  # mode, owner, times, extended attributes
STEP_FSYNC = "fsync"
STEP_RENAME = "rename"  # the temporary entry renamed over the final name
STEP_LINK = "link"  # a later name of a hard-linked file
STEP_DELETE = "delete"  # --delete
STEP_OTHER = "other"  # recorded without a step


@dataclass(slots=True)  # not frozen: a frozen dataclass' __init__ costs ~2x, once per file
class EntryTask:
    """One non-directory entry to copy: a file, symlink, FIFO, device node or socket."""

    src: str
    dst: str
    kind: Kind
    size: int
    mode: int  # full st_mode of the source
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    rdev: int = 0
    sparse: bool = False
    # False when the parent created the destination directory in this run: nothing can be there,
    # so the worker skips the quick check (saves one lstat per file on a fresh copy).
    check_dst: bool = True
    dev: int = 0
    ino: int = 0
    nlink: int = 1


class BatchJob(NamedTuple):
    """Many small entries copied one after another by one worker."""

    job_id: int
    tasks: tuple[EntryTask, ...]
    options: CopyOptions


class DirJob(NamedTuple):
    """Up to a batch of names in one source directory, stat'ed and copied by the worker. Files
    larger than split_bytes and files with more than one link are handed back to the parent
    (byte ranges and hard links are the parent's to plan), and so are files beyond job_bytes,
    so one job never holds a worker for much longer than another."""

    job_id: int
    src_dir: str
    dst_dir: str
    names: tuple[str, ...]
    check_dst: bool
    split_bytes: int
    job_bytes: int
    hand_back_links: bool
    options: CopyOptions


class ScanJob(NamedTuple):
    """One source directory for a worker to list: it makes the destination directories of the
    subdirectories it finds and hands them back (each becomes a ScanJob of its own), so the walk
    runs in every worker at once instead of one directory after another in the parent. Its
    non-directory names it copies itself (as a DirJob would) when they are few or the directory
    is a leaf; otherwise it hands them back in chunks, so that finding the subdirectories never
    waits on copying (on slow storage the walk's speed bounds the whole copy's)."""

    job_id: int
    src_dir: str
    rel: str  # relative to SRC, os.sep-joined ("" for the root)
    dst_dir: str
    check_dst: bool  # False: dst_dir was made in this run, nothing can be in it
    leftovers: bool  # dst_dir may hold a killed run's temporary files: clear them first
    # --copy-links: (st_dev, st_ino) of src_dir and its ancestors, to refuse a symlink loop.
    ancestors: frozenset[tuple[int, int]]
    batch_files: int
    copy_names: bool  # False (a retry after the job's worker died): hand back every name
    split_bytes: int
    job_bytes: int
    hand_back_links: bool
    filters: Any  # pcopy.filters.FilterSet or None (plain, picklable rules)
    options: CopyOptions
    # False: subdirectories are only stat'ed, the caller makes each just before its own listing
    # (the parent's walk on local storage: on ext4 a directory made long before its files
    # spreads them over block groups, 20,000 files 4.3 -> 7.9 s).
    make_subdirs: bool = True


class FoundDir(NamedTuple):
    """A subdirectory a ScanJob found: its stat, where it now is in DST, and whether this run made
    it (fresh) or merged into an existing one."""

    entry: Entry
    dst: str
    fresh: bool
    ancestors: frozenset[tuple[int, int]]
    leftovers: bool  # an existing directory that may hold a killed run's temporary files


class RangeJob(NamedTuple):
    """Bytes [offset, offset + length) of a large file, written into its pre-sized temporary file."""

    job_id: int
    file_id: int
    src: str
    tmp: str
    offset: int
    length: int
    sparse: bool
    options: CopyOptions
    # copy_file_range works between these files: in-kernel copies. Otherwise the fast path for a
    # range is pread/pwrite, which overlaps with the other ranges' writes (fastcopy.copy_positional).
    in_kernel: bool = False


class GroupJob(NamedTuple):
    """Several jobs one worker runs at once, each on threads of its own. On slow storage the
    creates and renames in one directory queue on that directory's lock (the kernel's, and a
    file server's), so the requests in flight must span directories: the parent groups jobs
    when the workers say they are waiting (JobResult.threads). A group that kills its worker is
    sent again as its members, one by one (pcopy.executor)."""

    job_id: int
    jobs: tuple[BatchJob | DirJob | ScanJob, ...]


Job = BatchJob | DirJob | RangeJob | ScanJob | GroupJob


class CopyFailure(NamedTuple):
    """An entry that could not be copied. errno is None when the failure has no OS error number;
    step says what was being done (STEP_*)."""

    path: str
    errno: int | None
    message: str
    step: str = STEP_OTHER

    @classmethod
    def of(cls, path: str, exc: BaseException, step: str = STEP_OTHER) -> CopyFailure:
        """The failure an exception describes (OS errors keep their errno and strerror). A step
        tagged on the exception where it was raised (tag_step) wins over the caller's guess."""
        step = getattr(exc, STEP_ATTR, step)
        if isinstance(exc, OSError):
            return cls(path, exc.errno, exc.strerror or str(exc), step)
        return cls(path, None, str(exc), step)


# The attribute tag_step sets on an exception on its way up.
STEP_ATTR = "pcopy_step"


def tag_step(exc: BaseException, step: str) -> None:
    """Note on exc the step it was raised in (the innermost tag wins); costs nothing unless
    something failed."""
    if not hasattr(exc, STEP_ATTR):
        setattr(exc, STEP_ATTR, step)


@dataclass(slots=True)
class JobResult:
    job_id: int
    files: int = 0  # entries copied or replaced (files, symlinks, special files)
    bytes: int = 0
    replaced: int = 0  # of files: those that replaced an existing destination entry
    replaced_bytes: int = 0
    skipped: int = 0  # up-to-date entries left alone (quick check)
    skipped_bytes: int = 0
    failures: list[CopyFailure] = field(default_factory=list)
    handed_back: list[EntryTask] = field(default_factory=list)  # DirJob: for the parent to plan
    # (action, dst) of each copied/replaced entry; None unless CopyOptions.record_changes, so
    # the default path builds no per-file list.
    changes: list[tuple[str, str]] | None = None
    hardlinked: int = 0  # --link-dest: entries linked instead of copied (not in `files`)
    hardlinked_bytes: int = 0
    backed_up: int = 0  # --backup: DST entries moved aside before they were replaced
    resumed: int = 0  # --partial: files continued from an interrupted copy
    resumed_bytes: int = 0  # bytes those files did not copy again
    link_fallbacks: int = 0  # --link-dest matches the file system would not link: copied
    attributes: int = 0  # of skipped: entries whose permissions or times were set (DST_ATTRS)
    # ScanJob: what the listing found. None (not an empty list) for the other jobs: a result
    # costs nothing more per file on the copy path.
    dirs: list[FoundDir] | None = None
    names: list[tuple[str, ...]] | None = None  # chunks of names handed back for DirJobs
    listed: int = 0  # non-directory names found (those copied here and those handed back)
    parts: list[JobResult] | None = None  # GroupJob: its members' results
    threads: int = 1  # the worker's thread limit when the job ended (pcopy.threads)

    def absorb(self, other: JobResult) -> None:
        """Add other's counts and lists to this result's (the parts of one job run on threads)."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures.extend(other.failures)
        self.handed_back.extend(other.handed_back)
        if other.changes:
            if self.changes is None:
                self.changes = []
            self.changes.extend(other.changes)


_COUNTS = ("files", "bytes", "replaced", "replaced_bytes", "skipped", "skipped_bytes", "hardlinked",
           "hardlinked_bytes", "backed_up", "resumed", "resumed_bytes", "link_fallbacks", "attributes")
