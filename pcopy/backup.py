"""--backup / --backup-dir / --suffix (rsync's semantics), and the checks every snapshot
option needs before a run starts (prepare).

Every DST entry that a run replaces or (--delete) removes is kept first:
- with --backup-dir DIR, at DIR/<its path relative to DST><suffix> (suffix "" by default);
- without it, beside itself as NAME<suffix> (suffix "~" by default).

Replacing stays atomic per file: the old entry first gets a second name at its backup path (a
hard link, made under a temporary name and renamed over an older backup), and only then is the
new content renamed over DST's name. At every instant DST's name holds the old or the new entry,
and the old one is never written to (a link-dest snapshot sharing its inode keeps its content).
A deleted entry is renamed to its backup path. Both only work within one file system, so a
backup directory on another device than DST is refused before anything is written (exit 2).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from typing import NamedTuple

from pcopy.config import Config
from pcopy.errors import RefusedError
from pcopy.jobs import CopyOptions, Kind
from pcopy.metadata import is_partial_name, temp_path
from pcopy.target import Target


class Prepared(NamedTuple):
    """What the workers need of the snapshot options, resolved and checked once."""

    dst_root: str
    link_dest: tuple[str, ...]
    backup_dir: str
    warnings: list[str]


def _show(path: str) -> str:
    from pcopy.report import escape

    return escape(path)


def device_of(path: str) -> int:
    """st_dev of path, or of its nearest existing ancestor (DST may not exist yet)."""
    probe = os.path.abspath(path)
    while True:
        try:
            return os.stat(probe).st_dev
        except FileNotFoundError:
            parent = os.path.dirname(probe)
            if parent == probe:
                raise
            probe = parent


def prepare(target: Target, config: Config) -> Prepared:
    """Resolve --link-dest and --backup-dir (relative ones against DST, as rsync does) and
    check them. A link-dest directory that is missing, not a directory, or on another device
    than DST is dropped with one warning (its files are copied); a backup directory on another
    device is refused (RefusedError: exit 2)."""
    dst_root = target.dst if target.src_kind is Kind.DIR else os.path.dirname(target.dst)
    warnings: list[str] = []
    backup_dir = ""
    needs_dev = bool(config.link_dest) or config.backup_dir is not None
    dst_dev = device_of(dst_root) if needs_dev else 0
    if config.backup_dir is not None:
        if config.backup_dir == "":
            raise RefusedError("--backup-dir must not be empty")
        backup_dir = os.path.normpath(os.path.join(dst_root, config.backup_dir))
        if os.path.lexists(backup_dir) and not os.path.isdir(backup_dir):
            raise RefusedError(f"--backup-dir {_show(config.backup_dir)} exists and is not a directory")
        if device_of(backup_dir) != dst_dev:
            raise RefusedError(
                f"--backup-dir {_show(config.backup_dir)} is on another file system than the "
                "destination: backups are made by renaming and hard-linking, which cannot cross devices")
    suffix = config.backup_suffix
    if suffix is not None and os.sep in suffix:
        raise RefusedError(f"--suffix {_show(suffix)} must not contain {os.sep!r}")
    if suffix == "" and config.backup and config.backup_dir is None:
        raise RefusedError("--suffix must not be empty without --backup-dir (the backup would be the file itself)")
    links: list[str] = []
    for given in config.link_dest:
        path = os.path.normpath(os.path.join(dst_root, given))
        try:
            st = os.stat(path)
        except OSError as exc:
            warnings.append(f"--link-dest {_show(given)}: {exc.strerror or exc}; its files are copied instead")
            continue
        if not os.path.isdir(path):
            warnings.append(f"--link-dest {_show(given)} is not a directory; ignored")
        elif st.st_dev != dst_dev:
            warnings.append(f"--link-dest {_show(given)} is on another device than the destination: "
                            "hard links cannot cross devices, files are copied instead")
        elif os.path.realpath(path) == os.path.realpath(dst_root):
            warnings.append(f"--link-dest {_show(given)} is the destination itself; ignored")
        elif path not in links:
            links.append(path)
    return Prepared(dst_root, tuple(links), backup_dir, warnings)


def relative(dst: str, dst_root: str) -> str:
    """dst's path below dst_root (workers build dst as root + os.sep + rel)."""
    prefix = os.path.join(dst_root, "")
    return dst[len(prefix):] if dst.startswith(prefix) else os.path.basename(dst)


def backup_path(dst: str, options: CopyOptions) -> str:
    if options.backup_dir:
        return os.path.join(options.backup_dir, relative(dst, options.dst_root)) + options.backup_suffix
    return dst + options.backup_suffix


def back_up(dst: str, options: CopyOptions) -> bool:
    """Give the entry at dst a second name at its backup path, replacing an older backup there;
    dst itself is left in place for the caller's rename. False when nothing is at dst. An error
    (the backup path is a directory, no permission) is raised: the caller must then not replace
    dst, so nothing is lost."""
    target = backup_path(dst, options)
    if options.backup_dir:
        os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = temp_path(target)
    try:
        os.link(dst, tmp, follow_symlinks=False)
    except FileNotFoundError:
        if not os.path.lexists(dst):
            return False
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK) or stat.S_ISDIR(os.lstat(dst).st_mode):
            raise
        # No hard links here (e.g. FAT) or too many: move it instead. For the instant until the
        # caller's rename, dst's name is empty; its old content is safe at the backup path.
        os.replace(dst, target)
        return True
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def deleted_backup_path(dst_root: str, rel: str, backup_dir: str, suffix: str) -> str:
    """Where --delete moves the DST entry rel (mirror.delete_extraneous' backup_to)."""
    if backup_dir:
        return os.path.join(backup_dir, rel) + suffix
    return os.path.join(dst_root, rel) + suffix


def mirror_rules(options: CopyOptions,
                 partial: bool) -> tuple[Callable[[str], str] | None, Callable[[str, bool], bool]]:
    """For --delete: where a deleted entry goes (None: nowhere, it is removed) and which DST
    entries are never deleted: partial files with --partial, and the backups themselves, as
    rsync protects them (NAME<suffix> beside their files; a backup directory inside DST)."""
    dst_root, backup_dir, suffix = options.dst_root, options.backup_dir, options.backup_suffix
    inside = relative(backup_dir, dst_root) if backup_dir.startswith(os.path.join(dst_root, "")) else None

    def keep(rel: str, is_dir: bool) -> bool:
        if partial and not is_dir and is_partial_name(os.path.basename(rel)):
            return True
        if not options.backup:
            return False
        if inside is not None:
            return rel == inside or rel.startswith(os.path.join(inside, ""))
        return not backup_dir and rel.endswith(suffix)

    def backup_to(rel: str) -> str:
        return deleted_backup_path(dst_root, rel, backup_dir, suffix)

    return (backup_to if options.backup else None), keep
