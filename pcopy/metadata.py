"""Metadata and special files: ownership, mode, times, temporary names, FIFOs and device nodes."""

from __future__ import annotations

import os
import random
import re
import stat
from contextlib import suppress
from threading import get_ident

from pcopy.jobs import EntryTask, Kind

# Temporary files are hidden, next to their final name, and recognisable so a later run can
# remove leftovers of a killed one: ".NAME.pcopy-XXXXXXXX".
TEMP_MARKER = ".pcopy-"
# Longest name most file systems accept (NAME_MAX); a temporary name must fit in it too.
NAME_MAX_BYTES = 255
_TEMP_SUFFIX_BYTES = len(TEMP_MARKER) + 8 + 1  # marker, 8 hex digits, the leading dot

O_BINARY = getattr(os, "O_BINARY", 0)  # Windows would translate newlines without it
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)

_UTIME_FOLLOWS = os.utime in os.supports_follow_symlinks
UTIME_FD = os.utime in os.supports_fd
_CHMOD_FD = os.chmod in os.supports_fd
_HAS_CHOWN = hasattr(os, "chown")


# Names up to this many characters fit in NAME_MAX with the temporary suffix however they
# encode (4 bytes per character at most in UTF-8): no need to encode them to measure.
_SHORT_NAME_CHARS = (NAME_MAX_BYTES - _TEMP_SUFFIX_BYTES) // 4


def temp_path(dst: str, shown: str | None = None) -> str:
    """A fresh hidden name in dst's directory; long names are cut so it fits in NAME_MAX.
    shown: dst's full path, when dst is a name relative to an open directory.

    Runs once per file: string formatting and random.getrandbits (reseeded in every forked
    worker by the random module) instead of os.path and secrets, which cost several times more.
    The name is noted for the calling thread (_made) before anything has it. With shown, dst is
    a bare name (relative to an open directory) and so is the name returned.
    """
    full = shown if shown is not None else dst
    sep = max(full.rfind(os.sep), full.rfind(os.altsep)) if os.altsep else full.rfind(os.sep)
    head, name = full[: sep + 1], full[sep + 1:]
    if len(name) > _SHORT_NAME_CHARS:
        raw = os.fsencode(name)[: NAME_MAX_BYTES - _TEMP_SUFFIX_BYTES]
        name = os.fsdecode(raw)
    temp = f".{name}{TEMP_MARKER}{random.getrandbits(32):08x}"
    path = head + temp
    made = _made.get(get_ident())
    if made is None:
        _made[get_ident()] = [path]
    else:
        made.append(path)
        if len(made) > _MADE_KEPT:
            del made[0]
    return path if shown is None else temp


# The last temporary names each thread made: a worker told to stop removes them, including one
# whose creation was interrupted after the file existed but before its name reached the caller
# (a signal is raised as the system call returns). An entry makes at most three (its file, a
# backup's link, a --link-dest link); older names were renamed or removed long ago, and
# unlinking them fails harmlessly.
_MADE_KEPT = 4
_made: dict[int, list[str]] = {}


def remove_made_temps() -> None:
    """A worker stopping: remove what its threads' current entries may have created. (A name
    already renamed into place no longer exists: unlinking it fails, harmlessly.)"""
    for made in list(_made.values()):
        for path in list(made):
            with suppress(OSError):
                os.unlink(path)


_TEMP_RE = re.compile(r"^\..*\.pcopy-[0-9a-f]{8}$", re.DOTALL)


def is_temp_name(name: str) -> bool:
    """True for the names temp_path makes (and only those: a user's ".x.pcopy-notes" is safe)."""
    return _TEMP_RE.fullmatch(name) is not None


# --partial: an interrupted large file stays under this deterministic hidden name,
# ".NAME.pcopy-partial", so the next run finds it and continues (pcopy.partial).
PARTIAL_MARKER = ".pcopy-partial"
_PARTIAL_SUFFIX_BYTES = len(PARTIAL_MARKER) + 1


def partial_path(dst: str) -> str:
    """The one partial name of dst (long names cut so it fits in NAME_MAX, as temp_path)."""
    head, name = os.path.split(dst)
    if len(name) > (NAME_MAX_BYTES - _PARTIAL_SUFFIX_BYTES) // 4:
        name = os.fsdecode(os.fsencode(name)[: NAME_MAX_BYTES - _PARTIAL_SUFFIX_BYTES])
    return os.path.join(head, f".{name}{PARTIAL_MARKER}")


def is_partial_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(PARTIAL_MARKER) and len(name) > _PARTIAL_SUFFIX_BYTES


def remove_leftovers(directory: str, keep: frozenset[str] | set[str] = frozenset(), *,
                     keep_partial: bool = True, dir_fd: int | None = None) -> int:
    """Remove temporary files a killed run (SIGKILL, power cut) left in directory, except the
    paths in keep; returns how many. Only non-directories with pcopy's exact temporary-name
    pattern are touched. Partial files (--partial, ".NAME.pcopy-partial") are data an
    interrupted run kept on purpose: they stay unless keep_partial is False (a run without
    --partial clears them, as debris). dir_fd: directory opened already (listed and changed
    through it: no lookup of its path, one round trip fewer on a network file system)."""
    removed = 0
    prefix = os.path.join(directory, "")
    with os.scandir(directory if dir_fd is None else dir_fd) as listing:
        for item in listing:
            if ((is_temp_name(item.name) or (not keep_partial and is_partial_name(item.name)))
                    and prefix + item.name not in keep and not item.is_dir(follow_symlinks=False)):
                try:
                    os.unlink(prefix + item.name if dir_fd is None else item.name, dir_fd=dir_fd)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def create_temp(dst: str, mode: int, dir_fd: int | None = None, shown: str | None = None) -> tuple[int, str]:
    """Create and open (read-write, so --verify can read it back) a new temporary file for dst;
    never follows or reuses an existing entry. With dir_fd, dst is a name in that directory
    (and so is the temporary name returned); shown is then its full path."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | O_BINARY | O_NOFOLLOW | O_CLOEXEC
    while True:
        path = temp_path(dst, shown)
        try:
            return os.open(path, flags, mode, dir_fd=dir_fd), path
        except FileExistsError:  # 2**32 names: a clash is a leftover, try another name
            continue


def temp_mode(mode: int, shared_writes: bool) -> int:
    """Permissions of a temporary file while it is written: the final bits for the owner only,
    so no one else can read it before it is complete. A file written by several processes
    (byte ranges) must be reopenable for writing by its owner, hence S_IWUSR there."""
    bits = stat.S_IMODE(mode) & stat.S_IRWXU
    return bits | stat.S_IWUSR if shared_writes else bits


def apply_metadata(path: str, task: EntryTask, preserve_owner: bool, fd: int | None = None, *,
                   preserve_group: bool | None = None, times: bool = True, dir_fd: int | None = None) -> None:
    """Ownership, then mode (chown clears set-id bits), then times. Symlinks: owner and times.
    preserve_group None follows preserve_owner; times False leaves the times the write gave.
    dir_fd: path is relative to that open directory (where the platform has the *at calls)."""
    is_link = task.kind is Kind.SYMLINK
    group = preserve_owner if preserve_group is None else preserve_group
    if (preserve_owner or group) and _HAS_CHOWN:
        # -1 leaves that id alone: a non-root user may set a group it belongs to (--group)
        # without being allowed to give the file away (--owner).
        uid = task.uid if preserve_owner else -1
        gid = task.gid if group else -1
        if fd is not None:
            os.fchown(fd, uid, gid)
        else:
            os.chown(path, uid, gid, follow_symlinks=False, dir_fd=dir_fd)
    if not is_link:
        if fd is not None and _CHMOD_FD:
            os.chmod(fd, stat.S_IMODE(task.mode))
        else:
            os.chmod(path, stat.S_IMODE(task.mode), dir_fd=dir_fd)
    if not times:
        return
    times_ns = (task.atime_ns, task.mtime_ns)
    if fd is not None and UTIME_FD:
        os.utime(fd, ns=times_ns)
    elif not is_link:
        os.utime(path, ns=times_ns, dir_fd=dir_fd)
    elif _UTIME_FOLLOWS:
        os.utime(path, ns=times_ns, follow_symlinks=False, dir_fd=dir_fd)


def masked_mode(mode: int, umask: int) -> int:
    """--no-perms: the mode a new entry gets, as cp without -p gives it: the source's
    permission bits without set-ID/sticky bits, less what the umask removes."""
    return stat.S_IFMT(mode) | (stat.S_IMODE(mode) & 0o777 & ~umask)


# Extended attributes are a Linux (and a few other systems') API in Python: os.listxattr exists
# only there, so --xattrs is refused elsewhere instead of silently copying none.
XATTRS_SUPPORTED = hasattr(os, "listxattr")


def copy_xattrs(src: str, dst: str | int, *, follow_symlinks: bool) -> None:
    """Copy every extended attribute of src (a path) to dst (an open fd or a path, never
    followed). The first attribute that cannot be read or set raises OSError with its name."""
    for name in os.listxattr(src, follow_symlinks=follow_symlinks):
        try:
            value = os.getxattr(src, name, follow_symlinks=follow_symlinks)
            if isinstance(dst, int):
                os.setxattr(dst, name, value)
            else:
                os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError as exc:
            raise OSError(exc.errno, f"extended attribute {name}: {exc.strerror}", src) from exc


def set_times(fd: int, path: str, task: EntryTask) -> None:
    """Only the times (a file created with its final mode and owner)."""
    if UTIME_FD:
        os.utime(fd, ns=(task.atime_ns, task.mtime_ns))
    else:
        os.utime(path, ns=(task.atime_ns, task.mtime_ns))


def make_special(task: EntryTask, path: str) -> None:
    """Create a symlink, FIFO, device node or socket node at path (never opening the source)."""
    private = stat.S_IMODE(task.mode) & stat.S_IRWXU
    if task.kind is Kind.SYMLINK:
        os.symlink(os.readlink(task.src), path)
    elif task.kind is Kind.FIFO:
        os.mkfifo(path, private)
    elif task.kind is Kind.DEVICE:
        os.mknod(path, stat.S_IFMT(task.mode) | private, task.rdev)
    elif task.kind is Kind.SOCKET:
        # A socket node carries no data; recreate the node (as cp -a does), never connect to it.
        os.mknod(path, stat.S_IFSOCK | private)
    else:
        raise ValueError(f"not a special file kind: {task.kind}")


_umask_cache: list[int] = []


def current_umask() -> int:
    """This process' umask, read without changing it where the OS allows (changing it, even
    for an instant, would race other threads of a library caller). Unknown: assume it strips
    everything, so permissions are always set explicitly."""
    if not _umask_cache:
        value = 0o777
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("Umask:"):
                        value = int(line.split()[1], 8)
                        break
        except (OSError, ValueError):
            pass
        _umask_cache.append(value)
    return _umask_cache[0]
