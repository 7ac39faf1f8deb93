"""A new DST is written under a hidden name beside it and renamed into place at the end.

Why: every file pcopy writes into an existing tree goes to a temporary name and is renamed
over its final one, so no path ever holds a partial file under its final name. On storage
where each metadata call is a round trip the rename is the dearest part of a small file: 7 of
its 16 requests on a FUSE mount without caching (two permission GETATTRs of the directory, the
LOOKUPs of both names, two more GETATTRs, the RENAME), and 5 of them under the directory's lock,
which serialises every create and rename in one directory. When DST does not exist yet,
nothing under it is visible to anyone until the run publishes it, so its files can be created
under their final names inside a hidden directory (the stage) and the stage renamed to DST
once, at the end: 16 -> 9 requests per small file, and a directory's lock held for 3 of them
instead of 8 (slowfs at 1 ms: 800 files in one directory 7.5 -> 3.2 s, in 8 directories 1.24
-> 0.71 s; a 20,000-file copy on a page cache 0.68 -> 0.63 s).

- The stage is DST's parent/.NAME.pcopy-new. Its name is fixed, not random, so that a run
  that did not finish (SIGINT or SIGTERM, a SIGKILL, a power cut) leaves it where the next run
  of the same command finds it: that run adopts it as an existing DST (the quick check skips
  every file that is complete, replaces the rest) and publishes it.
- A file written in place that a death cut short has the wrong size or mtime (the times are
  set last), so the adopting run's quick check replaces it. An interrupted run keeps the stage
  rather than publish it, and says where it is: a worker stopped in the middle of a file may
  have left part of it there.
- Only where it is simple: SRC a directory, DST missing, the local engine, and none of --delete,
  --link-dest, --backup(-dir), --partial, --dry-run (they work on DST as it is). Everything
  else writes into DST as before.
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress
from typing import NamedTuple

from pcopy.config import Config, Engine
from pcopy.jobs import Kind
from pcopy.metadata import NAME_MAX_BYTES, O_CLOEXEC, O_DIRECTORY
from pcopy.report import escape
from pcopy.target import Target

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

STAGE_SUFFIX = ".pcopy-new"


class Stage(NamedTuple):
    final: str  # DST, as the target names it
    path: str  # where the copy is written meanwhile
    adopted: bool  # an earlier run's stage, continued
    lock_fd: int | None = None  # the stage held (flock) while this run writes in it


class PublishError(OSError):
    """The finished copy could not be renamed to DST (something appeared there meanwhile)."""


def stage_path(dst: str) -> str:
    head, name = os.path.split(dst)
    return os.path.join(head, f".{name}{STAGE_SUFFIX}")


def plan_stage(target: Target, config: Config) -> Stage | None:
    """The stage for this run, or None when it writes into DST directly."""
    if (target.src_kind is not Kind.DIR or config.engine is not Engine.LOCAL or config.dry_run
            or config.delete or config.link_dest or config.backup or config.backup_dir is not None
            or config.partial):
        return None
    dst = target.dst
    name = os.path.basename(dst)
    if not name or len(os.fsencode(name)) + len(STAGE_SUFFIX) + 1 > NAME_MAX_BYTES:  # (no stage)
        return None
    try:
        os.lstat(dst)
        return None  # DST exists: merged into as it is
    except FileNotFoundError:
        pass
    except OSError:
        return None  # (the run itself reports what is wrong with DST)
    path = stage_path(dst)
    try:
        there = os.lstat(path)
    except FileNotFoundError:
        return Stage(dst, path, adopted=False)
    except OSError:
        return None
    if not stat.S_ISDIR(there.st_mode) or _holds(path, target.src):
        return None  # not a stage of ours (a file of that name; SRC itself, or SRC inside it)
    return Stage(dst, path, adopted=True)


def claim(stage: Stage) -> Stage | None:
    """Make the stage (a new one) and hold it for this run: an exclusive flock on it, so that
    two runs of one command at once never write into one stage (the second writes into DST as
    before, and the first, finding DST there at the end, keeps its copy staged and says so).
    None: another run holds it, or it cannot be made or opened (Windows cannot open a
    directory). Where flock fails otherwise (a file system that does not lock), the stage is
    used unlocked."""
    adopted = stage.adopted
    if not adopted:
        try:
            os.makedirs(os.path.dirname(stage.path) or ".", exist_ok=True)
            os.mkdir(stage.path, 0o700)  # private until the root's metadata is applied at the end
        except FileExistsError:
            adopted = True
        except OSError:
            return None  # (the run reports what is wrong with DST's parent)
    try:
        fd = os.open(stage.path, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    except OSError:
        if not adopted:
            drop_if_empty(stage)
        return None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            pass
    return stage._replace(adopted=adopted, lock_fd=fd)


def release(stage: Stage) -> None:
    if stage.lock_fd is not None:
        with suppress(OSError):
            os.close(stage.lock_fd)


def drop_if_empty(stage: Stage) -> None:
    """An interrupted run's stage with nothing in it is not kept."""
    with suppress(OSError):
        os.rmdir(stage.path)


def _holds(directory: str, path: str) -> bool:
    inner, outer = os.path.realpath(path), os.path.realpath(directory)
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def publish(stage: Stage) -> None:
    """Rename the finished stage to DST. Where DST appeared meanwhile, PublishError (the stage
    stays: nothing is merged into or over what someone else put there)."""
    if os.path.lexists(stage.final):
        raise PublishError(17, f"{escape(stage.final)} appeared while the copy ran; the copy is kept under "
                           "the hidden name", stage.path)
    try:
        os.rename(stage.path, stage.final)
    except OSError as exc:
        raise PublishError(exc.errno, f"cannot rename the copy to DST ({exc.strerror}); it is kept under "
                           "the hidden name", stage.path) from exc


def rebase(path: str, stage: Stage) -> str:
    """A path the run reported under the stage, as it is under DST."""
    if path == stage.path:
        return stage.final
    if path.startswith(stage.path + os.sep):
        return stage.final + path[len(stage.path):]
    return path
