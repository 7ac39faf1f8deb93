"""Move bytes between two open file descriptors by the fastest path the OS offers.

The chain follows CPython's shutil zero-copy helpers: try os.copy_file_range (in-kernel, may
reflink or use server-side copy), then os.sendfile (in-kernel, Linux can write to regular files),
then a plain read/write loop. A fast path gives up (private _GiveUp) only when it wrote nothing
yet and the error says "not supported here"; every other error, ENOSPC first of all, is raised.
All copies use explicit offsets so byte-range jobs of one file can run in different processes.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator

# Bytes per fast-path syscall: large enough that syscall cost vanishes, small enough that the
# progress bar moves smoothly and an interrupt is noticed within a few milliseconds.
FAST_CALL_BYTES = 8 * 1024 * 1024

# errno values that mean "this path cannot copy these two files", never "the copy failed".
_GIVE_UP_ERRNOS = frozenset(
    code
    for code in (
        getattr(errno, name, None)
        for name in ("ENOSYS", "EXDEV", "EINVAL", "EOPNOTSUPP", "ENOTSUP", "ETXTBSY", "EPERM",
                     "EBADF", "ENOTSOCK")
    )
    if code is not None
)

_HAS_COPY_FILE_RANGE = hasattr(os, "copy_file_range")
# Only Linux's sendfile writes to a regular file; macOS and the BSDs need a socket.
_HAS_SENDFILE_TO_FILE = hasattr(os, "sendfile") and sys.platform.startswith("linux")
_HAS_SEEK_DATA = hasattr(os, "SEEK_DATA") and hasattr(os, "SEEK_HOLE")
_HAS_PREADV = hasattr(os, "preadv") and hasattr(os, "pwrite")

# Files larger than this go to a slow destination (a mount where every request is a round trip)
# in requests of POSITIONAL_BUFFER_BYTES (the FUSE max_write; NFS wsize is 1 MiB too) instead of
# sendfile's 64 KiB pipe-sized ones: 256 MiB at 1 ms per request, 5.86 s -> 0.61 s
# (docs/benchmarks-slow.md, "Large files"). Smaller files are one request either way.
SLOW_DST_MIN_BYTES = 64 * 1024

# Byte ranges of one file copied by several processes go through a buffer this size, which stays
# in a core's L2 cache between the read and the write (an 8 MiB buffer measured 1.3-3x slower).
POSITIONAL_BUFFER_BYTES = 1024 * 1024

OnBytes = Callable[[int], None]


class _GiveUp(Exception):
    """A fast path is not available for this pair of files; nothing was written."""


def _copy_in_kernel(send: Callable[[int, int], int], offset: int, length: int | None,
                    on_bytes: OnBytes) -> int:
    """The loop shared by copy_file_range and sendfile: send(position, count) -> bytes sent."""
    done = 0
    while length is None or done < length:
        count = FAST_CALL_BYTES if length is None else min(FAST_CALL_BYTES, length - done)
        try:
            sent = send(offset + done, count)
        except OSError as exc:
            if done == 0 and exc.errno in _GIVE_UP_ERRNOS:
                raise _GiveUp from exc
            raise
        if sent == 0:
            # Some file systems (procfs, sysfs, some FUSE) report 0 for files that have content:
            # nothing was written, so let a later path read it for real.
            if done == 0 and (length is None or length > 0):
                raise _GiveUp
            break
        done += sent
        on_bytes(sent)
    return done


def _copy_file_range(src_fd: int, dst_fd: int, offset: int, length: int | None,
                     on_bytes: OnBytes) -> int:
    return _copy_in_kernel(lambda pos, count: os.copy_file_range(src_fd, dst_fd, count, pos, pos),
                           offset, length, on_bytes)


def _copy_sendfile(src_fd: int, dst_fd: int, offset: int, length: int | None,
                   on_bytes: OnBytes) -> int:
    os.lseek(dst_fd, offset, os.SEEK_SET)  # sendfile writes at dst's file position
    return _copy_in_kernel(lambda pos, count: os.sendfile(dst_fd, src_fd, pos, count), offset, length, on_bytes)


def _read_blocks(fd: int, offset: int, length: int | None, block_bytes: int) -> Iterator[bytes]:
    """Blocks of [offset, offset+length) of fd (length None: to EOF); lseek + read rather than
    pread so it runs on Windows too."""
    os.lseek(fd, offset, os.SEEK_SET)
    done = 0
    while length is None or done < length:
        data = os.read(fd, block_bytes if length is None else min(block_bytes, length - done))
        if not data:
            return
        done += len(data)
        yield data


def _copy_loop(src_fd: int, dst_fd: int, offset: int, length: int | None, buffer_bytes: int,
               on_bytes: OnBytes) -> int:
    """The portable path: read a buffer, write it all, repeat (a 1024-byte buffer reproduces the
    original teaching copier)."""
    os.lseek(dst_fd, offset, os.SEEK_SET)
    done = 0
    for data in _read_blocks(src_fd, offset, length, buffer_bytes):
        view = memoryview(data)
        while view:
            written = os.write(dst_fd, view)
            view = view[written:]
        done += len(data)
        on_bytes(len(data))
    return done


# (source device, destination device) pairs where copy_file_range said "not supported": the
# answer holds for every file between them, so later files go straight to the next path instead
# of paying one failed syscall each (e.g. ext4 -> tmpfs, 20,000 files: 20,000 EXDEVs).
_NO_COPY_FILE_RANGE: set[tuple[int, int]] = set()


def _one_call(src_fd: int, dst_fd: int, offset: int, length: int, devices: tuple[int, int] | None,
              dst_at_offset: bool) -> int:
    """The whole range in one in-kernel call: bytes written, or 0 when neither fast path could
    start (the full chain then decides). Real errors (ENOSPC, EIO) are raised."""
    if _HAS_COPY_FILE_RANGE and devices not in _NO_COPY_FILE_RANGE:
        try:
            return os.copy_file_range(src_fd, dst_fd, length, offset, offset)
        except OSError as exc:
            if exc.errno not in _GIVE_UP_ERRNOS:
                raise
            if devices is not None:
                _NO_COPY_FILE_RANGE.add(devices)
    if _HAS_SENDFILE_TO_FILE:
        if not dst_at_offset:
            os.lseek(dst_fd, offset, os.SEEK_SET)  # sendfile writes at dst's file position
        try:
            return os.sendfile(dst_fd, src_fd, offset, length)
        except OSError as exc:
            if exc.errno not in _GIVE_UP_ERRNOS:
                raise
    return 0


def copy_range(src_fd: int, dst_fd: int, offset: int, length: int | None, *,
               use_fast_paths: bool, buffer_bytes: int, on_bytes: OnBytes,
               devices: tuple[int, int] | None = None, dst_at_offset: bool = False,
               slow_dst: bool = False) -> int:
    """Copy [offset, offset+length) of src_fd to the same offsets of dst_fd (length None: to EOF).

    Returns the number of bytes copied, which is smaller than length only if src ended early.
    devices, when known, lets a "not supported" answer of copy_file_range be remembered.
    dst_at_offset: dst_fd's file position is already offset (a new file, offset 0), so sendfile
    needs no lseek first. slow_dst: the destination is a round trip per request (see
    SLOW_DST_MIN_BYTES): copy_file_range for all of it in one call (one request to a server
    that copies itself), else 1 MiB positional writes, never sendfile.
    """
    if use_fast_paths and slow_dst and length is not None and length > SLOW_DST_MIN_BYTES:
        return copy_to_slow(src_fd, dst_fd, offset, length, on_bytes, devices)
    if use_fast_paths and length is not None and 0 < length <= FAST_CALL_BYTES:
        # Most files fit one call: one syscall and no Python loop (a 20,000-file tree spends
        # ~2 us per file less). A short count (the file shrank, a signal) continues the usual way.
        sent = _one_call(src_fd, dst_fd, offset, length, devices, dst_at_offset)
        if sent:
            on_bytes(sent)
            if sent == length:
                return sent
            return sent + copy_range(src_fd, dst_fd, offset + sent, length - sent, use_fast_paths=True,
                                     buffer_bytes=buffer_bytes, on_bytes=on_bytes, devices=devices)
    if use_fast_paths:
        if _HAS_COPY_FILE_RANGE and devices not in _NO_COPY_FILE_RANGE:
            try:
                return _copy_file_range(src_fd, dst_fd, offset, length, on_bytes)
            except _GiveUp as exc:
                if devices is not None and exc.__cause__ is not None:  # an errno, not a 0 result
                    _NO_COPY_FILE_RANGE.add(devices)
        if _HAS_SENDFILE_TO_FILE:
            try:
                return _copy_sendfile(src_fd, dst_fd, offset, length, on_bytes)
            except _GiveUp:
                pass
    return _copy_loop(src_fd, dst_fd, offset, length, buffer_bytes, on_bytes)


def copy_to_slow(src_fd: int, dst_fd: int, offset: int, length: int, on_bytes: OnBytes,
                 devices: tuple[int, int] | None = None) -> int:
    """copy_range for a destination where each request is a round trip (see copy_range)."""
    done = 0
    if _HAS_COPY_FILE_RANGE and devices not in _NO_COPY_FILE_RANGE:
        try:
            while done < length:
                sent = os.copy_file_range(src_fd, dst_fd, length - done, offset + done, offset + done)
                if sent == 0:
                    break
                done += sent
                on_bytes(sent)
        except OSError as exc:
            if done or exc.errno not in _GIVE_UP_ERRNOS:
                raise
            if devices is not None:
                _NO_COPY_FILE_RANGE.add(devices)
        if done:
            return done
    return copy_positional(src_fd, dst_fd, offset, length, on_bytes)


def copy_file_range_works(src_fd: int, dst_fd: int) -> bool:
    """Whether copy_file_range can copy between these two files (same kind of file system, a
    kernel that has it), found by copying the first byte of src to offset 0 of dst: for a caller
    that writes that byte anyway, the answer costs nothing."""
    if not _HAS_COPY_FILE_RANGE:
        return False
    try:
        os.copy_file_range(src_fd, dst_fd, 1, 0, 0)
    except OSError as exc:
        if exc.errno in _GIVE_UP_ERRNOS:
            return False
        raise
    return True


def copy_positional(src_fd: int, dst_fd: int, offset: int, length: int, on_bytes: OnBytes,
                    buffer_bytes: int = POSITIONAL_BUFFER_BYTES) -> int:
    """[offset, offset+length) by pread into one reused buffer and pwrite from it, for byte
    ranges of one file copied by several processes. The kernel serialises writes into one file
    (the inode lock) whatever the call, sendfile's included; here the read half of each step
    runs outside that lock, so the processes overlap. Measured, 2 GiB ext4 -> tmpfs with 2
    processes: 0.81-0.88 s against 0.94-1.01 s for one sendfile stream (medians of two sessions);
    2 sendfile streams gain nothing and cost twice the CPU.
    Returns the bytes copied (fewer than length only if src ended early)."""
    if not _HAS_PREADV:  # Windows: no pread; the portable loop (file positions are per process)
        return _copy_loop(src_fd, dst_fd, offset, length, buffer_bytes, on_bytes)
    view = memoryview(bytearray(buffer_bytes))
    done = 0
    while done < length:
        got = os.preadv(src_fd, [view[: min(buffer_bytes, length - done)]], offset + done)
        if got == 0:
            break
        written = 0
        while written < got:
            written += os.pwrite(dst_fd, view[written:got], offset + done + written)
        done += got
        on_bytes(got)
    return done


def data_segments(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the data (non-hole) parts of [start, end) of a file.

    Where the OS cannot tell holes from data, the whole range is one segment (copied densely).
    """
    if not _HAS_SEEK_DATA:
        yield start, end - start
        return
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                return
            if pos == start and exc.errno in _GIVE_UP_ERRNOS:
                yield start, end - start
                return
            raise
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data
        pos = hole


def is_sparse(size: int, blocks: int | None) -> bool:
    """A file whose allocated blocks cover less than its size has holes worth keeping."""
    return blocks is not None and size > 0 and blocks * 512 < size


# Verification reads in blocks of this size: large enough for throughput, small enough to stay
# in the CPU cache between read and hash.
VERIFY_BLOCK_BYTES = 1024 * 1024


def digest_range(fd: int, offset: int, length: int | None) -> bytes:
    """BLAKE2b-128 of [offset, offset+length) of fd (length None: to EOF).

    BLAKE2b is in every Python (hashlib), runs at about 1 GB/s per core in C, and unlike a CRC
    a collision cannot be produced by accident or on purpose; 128 bits are plenty for equality.
    """
    import hashlib  # only --verify needs it: kept off the start-up path

    h = hashlib.blake2b(digest_size=16)
    for data in _read_blocks(fd, offset, length, VERIFY_BLOCK_BYTES):
        h.update(data)
    return h.digest()
