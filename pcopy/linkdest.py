"""--link-dest: an entry unchanged against an earlier snapshot's copy is hard-linked from it.

Run by the workers, in parallel, for each entry that is not up to date in DST itself. The
candidates are DIR/<relative path> for each --link-dest DIR in the order given; the first that
passes is linked. "Unchanged" is rsync's rule for a link: the quick check (same type, size and
mtime) or, with -c, the same content; and the attributes a link would otherwise get wrong must
match too, since a link cannot have its own: permissions, owner and group where they are kept,
mtime where times are kept, extended attributes with --xattrs. Regular files and symlinks (same
target) are linked, as rsync does on Linux; other entries are created anew.

The link is made under a temporary name and renamed over DST's name, so replacing is atomic like
a copy. A link that the file system refuses (another device below a mount point, too many links,
no hard links at all) is not an error: the entry is copied, and the run says so once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from pcopy.backup import back_up, relative
from pcopy.fastcopy import digest_range
from pcopy.jobs import COMPARE_CHECKSUM, CopyOptions, EntryTask, Kind
from pcopy.metadata import O_BINARY, O_CLOEXEC, O_NOFOLLOW, temp_path

# errno values of a link that cannot be made here, where copying still can.
LINK_IMPOSSIBLE = frozenset(
    code for code in (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EOPNOTSUPP,
                      getattr(errno, "ENOTSUP", None)) if code is not None)


def find_link(task: EntryTask, options: CopyOptions) -> str | None:
    """The first --link-dest entry that may stand for task.src, or None."""
    rel = relative(task.dst, options.dst_root)
    for base in options.link_dest:
        candidate = os.path.join(base, rel)
        try:
            st = os.lstat(candidate)
        except OSError:
            continue
        if _matches(task, candidate, st, options):
            return candidate
    return None


def _matches(task: EntryTask, candidate: str, st: os.stat_result, options: CopyOptions) -> bool:
    if task.kind is Kind.FILE:
        if not stat.S_ISREG(st.st_mode) or st.st_size != task.size:
            return False
        if options.preserve_perms and stat.S_IMODE(st.st_mode) != stat.S_IMODE(task.mode):
            return False
    elif task.kind is Kind.SYMLINK:
        if not stat.S_ISLNK(st.st_mode) or os.readlink(candidate) != os.readlink(task.src):
            return False
    else:
        return False
    # The quick check needs equal mtimes; with -c the content decides, but a link carries the
    # candidate's mtime, so it must match too where times are kept.
    if (options.compare != COMPARE_CHECKSUM or options.preserve_times) and st.st_mtime_ns != task.mtime_ns:
        return False
    if options.preserve_owner and st.st_uid != task.uid:
        return False
    if options.preserve_group and st.st_gid != task.gid:
        return False
    if options.preserve_xattrs and _xattrs(candidate) != _xattrs(task.src, follow=options.dereference):
        return False
    if task.kind is Kind.FILE and options.compare == COMPARE_CHECKSUM and task.size:
        return _digest(task.src, options.dereference) == _digest(candidate, False)
    return True


def _digest(path: str, follow: bool) -> bytes:
    fd = os.open(path, os.O_RDONLY | O_BINARY | O_CLOEXEC | (0 if follow else O_NOFOLLOW))
    try:
        return digest_range(fd, 0, None)
    finally:
        os.close(fd)


def _xattrs(path: str, follow: bool = False) -> dict[str, bytes]:
    return {name: os.getxattr(path, name, follow_symlinks=follow)
            for name in os.listxattr(path, follow_symlinks=follow)}


def link_into_place(candidate: str, task: EntryTask, options: CopyOptions, missing: bool = False) -> bool:
    """Make task.dst another name of candidate (backing up what it replaces). False when the
    file system cannot link it here (the caller copies instead); other errors are raised.
    missing: nothing was at task.dst; then the link is made under its final name at once (a
    new name appears with its whole content in one step: nothing to make atomic, one rename
    saved per file of a snapshot), and only if something appeared there since, as usual, but
    without a backup (it can only be what a worker of this run that died wrote)."""
    if missing:
        try:
            os.link(candidate, task.dst, follow_symlinks=False)
            return True
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno in LINK_IMPOSSIBLE:
                return False
            raise
    tmp = temp_path(task.dst)
    try:
        os.link(candidate, tmp, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in LINK_IMPOSSIBLE:
            return False
        raise
    try:
        if options.backup and not missing:
            back_up(task.dst, options)
        os.replace(tmp, task.dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True
