"""--partial: resumable large files.

A large file is written under its one partial name, ".NAME.pcopy-partial" in DST's directory
(metadata.partial_path), never under its final name; it is renamed into place when complete.
An interrupted copy (Ctrl-C, kill, a crash, a full disk) leaves that file, and leftover
clean-up keeps partial files (metadata.remove_leftovers' keep_partial). The next run with
--partial continues from its end instead of starting over, after checking that the source is
the one the partial data came from:

- the source identity: when a partial file is started, its atime is set to a stamp made from
  the source's size and mtime (stamp_for). Writing never changes a file's atime, and the stamp
  lies in the future (after 2106), so relatime, the Linux default, does not move it when
  something reads the file either (it updates an atime only when it is older than the mtime
  or a day old). A source whose size or mtime differs now has another stamp. Where the stamp
  cannot be kept (strictatime mounts after a read, file systems whose times end in 2038), the
  check fails and the copy starts over: never wrong, only slower.
- its content: the digest of the last written block (up to CHECK_BYTES) must equal the digest
  of the same bytes of the source, which also catches a tail a crash left unwritten or zeroed.

Anything else (no partial file, a failed check, a partial longer than the source) starts the
file from its first byte, in the same partial file. Only non-sparse files of at least
MIN_BYTES take this path: restarting a smaller file costs less than the checks, and a sparse
file is copied around its holes into a file pre-sized to its full length, whose length would
not tell how far the copy got. With --partial, files are not split into byte ranges either.
"""

from __future__ import annotations

import os
import stat

from pcopy.fastcopy import digest_range
from pcopy.jobs import EntryTask, Kind
from pcopy.metadata import O_BINARY, O_CLOEXEC, O_NOFOLLOW, partial_path, temp_mode

# Files this large or larger are copied resumably: at ~1 GB/s, restarting 4 MiB costs ~4 ms.
MIN_BYTES = 4 * 1024 * 1024
# The tail compared before resuming: 1 MiB of source and partial read and hashed (~1 ms).
CHECK_BYTES = 1024 * 1024
# Stamps are whole seconds (every time precision stores them exactly) from 2**32 s (2106, in
# the future, see above) on, 30 bits of the (size, mtime) digest: up to 2140, within what ext4,
# XFS (bigtime), btrfs and tmpfs store.
_STAMP_BASE_S = 1 << 32
_STAMP_RANGE_S = 1 << 30


def resumable(task: EntryTask) -> bool:
    return task.kind is Kind.FILE and not task.sparse and task.size >= MIN_BYTES


def stamp_for(size: int, mtime_ns: int) -> int:
    """The atime (ns) that marks a partial file as written from a source of this size and mtime."""
    from hashlib import blake2b  # (here: hashlib loads OpenSSL, ~4 ms of every start)

    digest = blake2b(f"{size}:{mtime_ns}".encode(), digest_size=8).digest()
    return (_STAMP_BASE_S + int.from_bytes(digest, "big") % _STAMP_RANGE_S) * 1_000_000_000


def open_partial(src_fd: int, task: EntryTask) -> tuple[int, str, int]:
    """Open (creating it if needed) task.dst's partial file for writing. Returns the fd, its
    path and the offset to continue from (0: from the start; the file is then empty)."""
    path = partial_path(task.dst)
    flags = os.O_RDWR | O_BINARY | O_NOFOLLOW | O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        # Writable by its owner (shared_writes) so a later run as the same user can reopen it.
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, temp_mode(task.mode, shared_writes=True))
        offset = 0
    else:
        try:
            offset = _resume_offset(src_fd, fd, task)
            if offset == 0:
                os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
    # Always (re)stamped: reading the tail for the check may have moved the atime (relatime).
    try:
        os.utime(fd, ns=(stamp_for(task.size, task.mtime_ns), os.fstat(fd).st_mtime_ns))
    except BaseException:
        os.close(fd)
        raise
    return fd, path, offset


def _resume_offset(src_fd: int, fd: int, task: EntryTask) -> int:
    """How many bytes of the partial file can be kept (0: none)."""
    st = os.fstat(fd)
    size = st.st_size
    if (not stat.S_ISREG(st.st_mode) or size == 0 or size > task.size
            or st.st_atime_ns // 1_000_000_000 * 1_000_000_000 != stamp_for(task.size, task.mtime_ns)):
        return 0
    block = min(CHECK_BYTES, size)
    if digest_range(src_fd, size - block, block) != digest_range(fd, size - block, block):
        return 0
    return size
