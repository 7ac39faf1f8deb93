"""OpenDirs: directories held open for a run, so the next one below them is opened relative to
the nearest held ancestor instead of by its full path.

On a network or FUSE file system without attribute caching every component of a path costs
round trips (the parent's GETATTR, the child's LOOKUP) each time the path is resolved: opening
DST/a/b/c/d by full path is ten of them, relative to a held DST/a/b/c two. A re-run of the
issue 11 tree (5,000 files, depth 8) spent ~10 requests per directory more than rsync's walk,
which moves through the tree with chdir; this is the same saving without a process-wide cwd.

Held descriptors name directories only (O_PATH on Linux: the file system sees no open) and are
never read through. A run's directories keep their identity for its duration (pcopy makes or
replaces a directory before any job opens it), so a path held earlier in the run still names
the same directory. Hold them for one run only: clear() at its end; a forked worker lets go of
what it inherited (forget_inherited, at the fork).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict

# Linux: a directory opened only to name entries in it (O_PATH) is not opened on the file
# system: FUSE and network file systems see no OPENDIR/RELEASEDIR for it (two round trips per
# directory of a re-run). It is never read: listings go by path.
DIR_FLAGS = getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_PATH", os.O_RDONLY)


# Enough for the ancestors of what a worker's jobs are in at once and of the directories it had
# just before: a re-run of a deep tree (364 directories of three files, slowfs at 1 ms, 8
# workers) made 8.1-8.2 requests per file holding 64, 7.75-7.8 holding 256 or 512 (rsync -a
# 7.77), since a directory let go is opened again, a LOOKUP and a GETATTR per component.
# At most a quarter of the process's descriptor limit (held_limit: 256 of Linux's default
# 1,024, 64 of macOS's 256), and pcopy.threads leaves them out of what its threads may use.
HELD_DIRS = 256
MIN_HELD = 16
# How long a thread waits for a directory another thread is opening before it opens it too.
OPEN_WAIT_S = 1.0


def descriptor_limit() -> int | None:
    """The process's soft limit on open descriptors; None where it is unknown (Windows: no
    resource module) or unlimited."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def held_limit() -> int:
    """How many directories a process holds: HELD_DIRS, or a quarter of its descriptor limit
    where that is smaller (at least MIN_HELD)."""
    soft = descriptor_limit()
    return HELD_DIRS if soft is None else max(MIN_HELD, min(HELD_DIRS, soft // 4))


class OpenDirs:
    """Up to `limit` directories by path, least recently used let go first. open() gives the
    caller a descriptor of its own to close; several threads may call it at once."""

    def __init__(self, limit: int = HELD_DIRS) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.held: OrderedDict[str, int] = OrderedDict()
        self.opening: dict[str, threading.Event] = {}  # directories a thread is opening now

    def open(self, path: str) -> int | None:
        """A descriptor of directory path (None where it cannot be opened: then the caller uses
        full paths). The components below the nearest held ancestor are opened one by one and
        each is held: the same round trips as one open by full path, and the next directory
        below any of them starts there. A component another thread is opening is waited for,
        not opened twice (the threads of a job, or of the directory finish, reach the same
        new directories at once: a LOOKUP each)."""
        chain = _ancestors(path)  # [top, ..., path]
        while True:
            try:
                with self.lock:
                    depth, fd = self._nearest(chain)  # chain[depth] is held, or depth -1
                    if depth == len(chain) - 1:
                        return fd
                    below = chain[depth + 1]
                    other = self.opening.get(below)
                    if other is None or other.is_set():  # (set: given up on, or its opener stopped)
                        mine = self.opening[below] = threading.Event()
                        other = None
            except OSError:  # (no descriptor to be had: EMFILE)
                return None
            if other is not None:
                if fd is not None:
                    os.close(fd)
                # Then held; or not (it could not be opened), and this thread tries it. An
                # opener that does not finish (a stop signal in its clean-up) is given up on.
                if not other.wait(OPEN_WAIT_S):
                    other.set()
                continue
            try:
                fd = self._open_below(below, fd)
            finally:
                mine.set()  # (first: a signal before the removal leaves it set, taken over)
                with self.lock:
                    if self.opening.get(below) is mine:
                        del self.opening[below]
            if fd is None:
                return None
            os.close(fd)  # (held: the next round starts from it)

    def _open_below(self, below: str, fd: int | None) -> int | None:
        """Open directory below relative to fd, its parent's descriptor (closed here; None: by
        full path) and hold it; a duplicate for the caller, or None."""
        try:
            opened = (os.open(os.path.basename(below), DIR_FLAGS, dir_fd=fd) if fd is not None
                      else os.open(below, DIR_FLAGS))
        except OSError:
            return None
        finally:
            if fd is not None:
                os.close(fd)
        try:
            return self._hold(below, opened)
        except OSError:  # (its duplicate: EMFILE; what was opened is held or closed)
            return None

    def stat(self, path: str) -> os.stat_result | None:
        """fstat of directory path through open() (the directory stays held), or None where it
        cannot be opened or stat'ed (then the caller stats by path)."""
        fd = self.open(path)
        if fd is None:
            return None
        try:
            return os.fstat(fd)
        except OSError:
            return None
        finally:
            os.close(fd)

    def _nearest(self, chain: list[str]) -> tuple[int, int | None]:
        """(index in chain of the deepest held directory, a duplicate of its descriptor), or
        (-1, None). A duplicate: another thread may let the held one go meanwhile."""
        for depth in range(len(chain) - 1, -1, -1):
            fd = self.held.get(chain[depth])
            if fd is not None:
                self.held.move_to_end(chain[depth])
                return depth, os.dup(fd)
        return -1, None

    def adopt(self, path: str, fd: int) -> None:
        """Hold fd, a descriptor of directory path the caller opened (this takes it over)."""
        os.close(self._hold(_ancestors(path)[-1], fd))

    def _hold(self, path: str, opened: int) -> int:
        """Hold opened as path's (unless another thread got there first); a duplicate for the
        caller."""
        with self.lock:
            if path in self.held:
                os.close(opened)
                self.held.move_to_end(path)
                return os.dup(self.held[path])
            self.held[path] = opened
            while len(self.held) > self.limit:
                os.close(self.held.popitem(last=False)[1])
            return os.dup(opened)

    def clear(self) -> None:
        with self.lock:
            while self.held:
                # (A descriptor that cannot be closed is gone already: a caller closed it, or
                # the os module is pyfakefs' in a test that follows a real copy in this process.)
                with contextlib.suppress(OSError):
                    os.close(self.held.popitem()[1])

    def forget_inherited(self) -> None:
        """In a forked child: let go of the parent's, without its lock (a thread of the parent
        may have held it at the fork, and that thread does not exist here)."""
        self.lock = threading.Lock()
        self.opening = {}
        inherited, self.held = self.held, OrderedDict()
        for fd in inherited.values():
            with contextlib.suppress(OSError):
                os.close(fd)


def _ancestors(path: str) -> list[str]:
    """path and the directories above it, from the top down: "/a/b" -> ["/", "/a", "/a/b"];
    "a/b" -> ["a", "a/b"] (relative to the working directory). Trailing separators dropped."""
    path = path.rstrip(os.sep) or path
    chain = [path]
    while (up := os.path.dirname(chain[-1])) and up != chain[-1]:
        chain.append(up)
    chain.reverse()
    return chain


# The process's held directories: the workers' jobs (pcopy.worker) and the parent's own (jobs it
# runs itself, the directory finish).
HELD = OpenDirs(held_limit())
if hasattr(os, "register_at_fork"):  # (a pool worker, a respawned one too, forked mid-run)
    os.register_at_fork(after_in_child=HELD.forget_inherited)
