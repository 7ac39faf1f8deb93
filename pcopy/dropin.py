"""pcopy.copytree: a drop-in for shutil.copytree that copies files in parallel.

    >>> import pcopy
    >>> pcopy.copytree("src", "dst", jobs=4)   # doctest: +SKIP
    'dst'

Same signature, return value, exceptions, error tuples and messages as shutil.copytree; only the
file copies run in parallel. How it is built:

- The walk is shutil's own algorithm, run in the calling thread: each directory is listed when it
  is entered (so copying into a subdirectory of src works as in shutil >= 3.9), `ignore` is called
  once per directory with os.fspath(src spelling) and the listing's names, the destination
  directory is made with os.makedirs(dst, exist_ok=dirs_exist_ok), symlinks/special files are
  classified with the same DirEntry calls.
- Files are copied by either of two executors:
  * copy_function is shutil.copy2 (the default, checked by identity as shutil does): regular files
    (and, with symlinks=True, symlinks) go to pcopy's engine (batches, byte ranges, a process
    pool). Anything else, e.g. a FIFO, socket, device node or a dangling link, is handed to
    shutil.copy2 in the calling thread so the outcome (SpecialFileError "`path` is a named pipe",
    ...) is shutil's own. An entry the engine could not copy is tried once more with shutil's
    own code in the calling thread, so the error recorded is exactly the exception shutil raises
    (errno, strerror and the path as the caller spelled it) and a transient failure heals.
  * any other copy_function (shutil.copy, a closure, ...) is called once per file in the calling
    process, from a thread pool of `jobs` threads (closures, side effects and unpicklable state
    work; a pool worker process could not run them). jobs=1 calls it in the calling thread.
- Failures are collected, put in the order shutil's recursion would have produced them, and
  raised once as shutil.Error after everything else was copied.
- Directory metadata (shutil.copystat) is applied after all contents, children before parents.

Documented differences, each where shutil has a known bug or where being atomic matters:
- dirs_exist_ok=True always copies (no size+mtime quick check, as shutil never skips). Files
  are written to a hidden temporary name and renamed over the destination, so an existing
  destination symlink is replaced, never written through (shutil writes into the link's target,
  or, when that is the source file, reports a SameFileError split into characters, gh-102931),
  an existing hard link or FIFO is replaced rather than written in place, and a read-only
  existing file is replaced where shutil (non-root) raises EACCES. An existing destination
  *directory* symlink is followed, as shutil's os.makedirs(exist_ok=True) follows it.
- Ownership is not copied, as copy2 does not copy it (the engine would chown when root).
- symlinks=True, dirs_exist_ok=True: an existing destination symlink is replaced by the source
  link; shutil fails with EEXIST (gh-105919).
- ignore_dangling_symlinks=True: a relative link target is looked up from the link's own
  directory, as the OS resolves it; shutil looks it up from the current directory (gh-91205),
  skipping valid relative links and failing on some dangling ones. Absolute targets: as shutil.
- A shutil.Error whose first argument is a message (SameFileError) raised by copy_function is
  recorded as one (src, dst, message) tuple; shutil splits the message into characters.
- Extended attributes are not copied on the engine path (copy2 copies them on Linux); sparse
  files keep their holes; per-file "shutil.copyfile" audit events are not raised on the engine
  path ("shutil.copytree" is raised per directory, as shutil does).
- No signal handlers are installed: SIGINT raises KeyboardInterrupt as it would in shutil, the
  pool is terminated on the way out (workers remove their temporary files) and the call returns
  only after every worker has stopped. In the thread-pool path, calls already running finish
  first (threads cannot be stopped); calls not started are cancelled.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

from pcopy.config import DEFAULT_CHUNK_BYTES, Config, default_jobs
from pcopy.jobs import CopyFailure
from pcopy.progress import NullProgress
from pcopy.runner import CopyRun
from pcopy.walk import make_entry

__all__ = ["copytree"]

StrPath = Union[str, "os.PathLike[str]"]
_DstT = TypeVar("_DstT", bound=StrPath)
IgnoreFunction = Callable[[str, list[str]], Iterable[str]]
CopyFunction = Callable[[Any, Any], object]

# Calls outstanding per thread in the thread-pool path: enough that no thread waits for the walk,
# few enough that memory stays flat on a tree of millions of files.
THREAD_IN_FLIGHT_PER_JOB = 4

# A copytree called while other threads run does not fork: a forked child inherits locks other
# threads hold (logging, stdio buffers, allocator arenas of C extensions) and can deadlock on them;
# Python 3.12 warns about exactly this. forkserver forks from a clean single-threaded server.
# Measured on the 2-core dev box (600 files of 2 KB, jobs=2, median of 5): fork 53-166 ms,
# forkserver 273-314 ms, spawn 394-480 ms per call: forkserver's workers import pcopy afresh,
# a fixed ~150-200 ms that is small next to any copy worth parallelising, and spawn costs more.
THREADED_START_METHOD = "forkserver"

@dataclass(slots=True)
class _Dir:
    """A directory being copied, spelled as shutil's recursion spells it at this level."""

    src: Any  # top: the caller's src; below: the DirEntry (copy2/copy) or os.path.join(src, name)
    dst: Any
    key: tuple[int, ...]  # sorts this directory's errors where shutil's recursion reports them
    count: int = 0  # entries listed (ignored ones included)


@dataclass
class _Walker:
    """shutil._copytree as an explicit stack (no recursion limit), with the file copies handed to
    on_file / on_symlink instead of done in line."""

    symlinks: bool
    ignore: IgnoreFunction | None
    ignore_dangling_symlinks: bool
    dirs_exist_ok: bool
    use_srcentry: bool
    on_file: Callable[[os.DirEntry[Any], Any, Any, Any, tuple[int, ...]], None]
    on_symlink: Callable[[os.DirEntry[Any], Any, Any, Any, str, tuple[int, ...]], None]
    errors: list[tuple[tuple[int, ...], Any]] = field(default_factory=list)
    dirs: list[_Dir] = field(default_factory=list)  # post-order: children before parents
    by_path: dict[str, _Dir] = field(default_factory=dict)  # dirname of a child's path -> _Dir

    def record(self, key: tuple[int, ...], srcname: Any, dstname: Any, why: BaseException) -> None:
        """Record a failure the way shutil._copytree's except clauses do."""
        if isinstance(why, shutil.Error) and why.args and not isinstance(why.args[0], str):
            self.errors.extend((key, item) for item in why.args[0])  # a nested copytree's list
        else:
            self.errors.append((key, (srcname, dstname, str(why))))

    def walk(self, top: _Dir, entries: list[os.DirEntry[Any]], ignored: Iterable[str]) -> None:
        self._register(top)
        stack: list[tuple[_Dir, Iterator[tuple[int, os.DirEntry[Any]]], Iterable[str]]] = [
            (top, enumerate(entries), ignored)]
        while stack:
            current, items, ignored_names = stack[-1]
            for index, srcentry in items:
                if srcentry.name in ignored_names:
                    continue
                child = self._visit(current, index, srcentry)
                if child is not None:
                    stack.append(child)
                    break
            else:
                stack.pop()
                self.dirs.append(current)

    def _visit(self, parent: _Dir, index: int, srcentry: os.DirEntry[Any]
               ) -> tuple[_Dir, Iterator[tuple[int, os.DirEntry[Any]]], Iterable[str]] | None:
        srcname = os.path.join(parent.src, srcentry.name)
        dstname = os.path.join(parent.dst, srcentry.name)
        srcobj = srcentry if self.use_srcentry else srcname
        key = (*parent.key, index)
        try:
            is_symlink = srcentry.is_symlink()
            if is_symlink and os.name == "nt":
                # A directory junction looks like a symlink but is entered, as shutil does.
                lst = srcentry.stat(follow_symlinks=False)
                if getattr(lst, "st_reparse_tag", None) == getattr(stat, "IO_REPARSE_TAG_MOUNT_POINT", -1):
                    is_symlink = False
            if is_symlink:
                linkto = os.readlink(srcname)
                if self.symlinks:
                    self.on_symlink(srcentry, srcname, dstname, srcobj, linkto, key)
                    return None
                # A relative target is looked up from the link's own directory, where the OS
                # resolves it; shutil looks it up from the current directory (gh-91205).
                if self.ignore_dangling_symlinks and not os.path.exists(
                        os.path.join(os.path.dirname(srcname), linkto)):
                    return None
                if srcentry.is_dir():
                    return self._enter(srcobj, dstname, key)
                self.on_file(srcentry, srcname, dstname, srcobj, key)
            elif srcentry.is_dir():
                return self._enter(srcobj, dstname, key)
            else:
                self.on_file(srcentry, srcname, dstname, srcobj, key)
        except OSError as why:  # shutil.Error is an OSError too
            self.record(key, srcname, dstname, why)
        return None

    def _enter(self, srcobj: Any, dstname: Any, key: tuple[int, ...]
               ) -> tuple[_Dir, Iterator[tuple[int, os.DirEntry[Any]]], Iterable[str]]:
        """What shutil.copytree does on entering a subdirectory; an OSError is recorded by the
        caller against the subdirectory's entry, as shutil's parent frame records it."""
        sys.audit("shutil.copytree", srcobj, dstname)
        with os.scandir(srcobj) as itr:
            entries = list(itr)
        ignored: Iterable[str] = ()
        if self.ignore is not None:
            ignored = self.ignore(os.fspath(srcobj), [x.name for x in entries])
        os.makedirs(dstname, exist_ok=self.dirs_exist_ok)
        child = _Dir(srcobj, dstname, key, len(entries))
        self._register(child)
        return child, enumerate(entries), ignored

    def _register(self, d: _Dir) -> None:
        # Engine failures name the source path; its dirname leads back to this _Dir. Spelled via
        # a placeholder child so trailing slashes come out exactly as in the children's paths.
        placeholder = b"x" if isinstance(os.fspath(d.src), bytes) else "x"
        self.by_path[os.path.dirname(_fs(os.path.join(d.src, placeholder)))] = d


def _fs(path: Any) -> str:
    """A path as the engine takes it (str; bytes paths decoded as the OS does)."""
    return os.fsdecode(os.fspath(path))


def _start_method(requested: str | None) -> str | None:
    if requested is not None:
        return requested
    if threading.active_count() > 1 or threading.current_thread() is not threading.main_thread():
        return THREADED_START_METHOD
    return None  # the engine's default (fork on Linux)


def _make_config(jobs: int, chunk_size: int | None, symlinks: bool, start_method: str | None) -> Config:
    """symlinks=False follows links (shutil copies what a link points to), so the engine must open
    sources without O_NOFOLLOW; shutil copies hard links as separate files."""
    return Config(jobs=jobs, chunk_bytes=chunk_size, dereference=not symlinks,
                  preserve_hard_links=False, start_method=_start_method(start_method))


def _retry_with_shutil(walker: _Walker, failures: list[CopyFailure], copy_function: CopyFunction,
                       symlinks: bool) -> None:
    """Copy what the engine could not, once, with shutil's own code in this thread: the error
    recorded is then exactly shutil's exception (and a transient failure heals)."""
    by_dir: dict[str, list[CopyFailure]] = {}
    for failure in failures:
        by_dir.setdefault(os.path.dirname(failure.path), []).append(failure)
    for parent_path, group in by_dir.items():
        parent = walker.by_path.get(parent_path)
        if parent is None:  # cannot happen: every engine path came from a registered directory
            for failure in group:
                walker.errors.append(((sys.maxsize,), (failure.path, "", failure.message)))
            continue
        # The listing order gives the error order; names are looked up in a fresh listing (a
        # directory that was not changed lists in the same order).
        listing: dict[str, tuple[int, os.DirEntry[Any]]] = {}
        try:
            with os.scandir(parent.src) as itr:
                listing = {_fs(e.name): (i, e) for i, e in enumerate(itr)}
        except OSError:
            pass
        spell_bytes = isinstance(os.fspath(parent.src), bytes)
        for failure in group:
            base = os.path.basename(failure.path)
            name: Any = os.fsencode(base) if spell_bytes else base
            # A name the new listing lacks sorts after its siblings, before the copystat error.
            index, srcentry = listing.get(base, (parent.count, None))
            srcname = os.path.join(parent.src, name)
            dstname = os.path.join(parent.dst, name)
            srcobj = srcentry if srcentry is not None else srcname
            try:
                if symlinks and srcentry is not None and srcentry.is_symlink():
                    os.symlink(os.readlink(srcname), dstname)
                    shutil.copystat(srcobj, dstname, follow_symlinks=False)
                else:
                    if os.path.islink(dstname):
                        os.unlink(dstname)  # replace a destination link, never write through it
                    copy_function(srcobj, dstname)
            except OSError as why:
                walker.record((*parent.key, index), srcname, dstname, why)


def _copy_with_engine(walker: _Walker, top: _Dir, entries: list[os.DirEntry[Any]],
                      ignored: Iterable[str], config: Config) -> None:
    # shutil.copy2 never chowns; the engine would when running as root.
    run = CopyRun(dataclasses.replace(config, preserve_owner=False), NullProgress())

    def on_file(srcentry: os.DirEntry[Any], srcname: Any, dstname: Any, srcobj: Any,
                key: tuple[int, ...]) -> None:
        try:
            st: os.stat_result | None = srcentry.stat()  # follows a link, as copy2 does
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            entry = make_entry(_fs(srcname), "", st)
            assert entry is not None
            # check_dst=False: shutil never skips an up-to-date destination; it always copies.
            run.plan(entry, _fs(dstname), check_dst=False)
        else:
            # FIFO, socket, device, vanished or dangling: shutil's own outcome, in this thread.
            shutil.copy2(srcobj, dstname)

    def on_symlink(srcentry: os.DirEntry[Any], srcname: Any, dstname: Any, srcobj: Any, linkto: str,
                   key: tuple[int, ...]) -> None:
        entry = make_entry(_fs(srcname), "", srcentry.stat(follow_symlinks=False))
        assert entry is not None
        run.plan(entry, _fs(dstname), check_dst=False)

    walker.on_file = on_file
    walker.on_symlink = on_symlink
    # run.run terminates and joins the pool on any exception (KeyboardInterrupt included), so no
    # worker is left writing when this returns or raises.
    report = run.run(lambda: walker.walk(top, entries, ignored))
    if report.failures:
        _retry_with_shutil(walker, report.failures, shutil.copy2, symlinks=not config.dereference)


class _ThreadCopier:
    """Calls copy_function from a bounded thread pool in this process (or in line for jobs=1)."""

    def __init__(self, walker: _Walker, copy_function: CopyFunction, jobs: int) -> None:
        self.walker = walker
        self.copy_function = copy_function
        self.pool = ThreadPoolExecutor(jobs, thread_name_prefix="pcopy-copytree") if jobs > 1 else None
        self.limit = THREAD_IN_FLIGHT_PER_JOB * jobs
        self.pending: dict[Future[object], tuple[tuple[int, ...], Any, Any]] = {}

    def on_file(self, srcentry: os.DirEntry[Any], srcname: Any, dstname: Any, srcobj: Any,
                key: tuple[int, ...]) -> None:
        if self.pool is None:
            self.copy_function(srcobj, dstname)  # OSError recorded by the walker, as in shutil
            return
        while len(self.pending) >= self.limit:
            self.collect(FIRST_COMPLETED)
        future = self.pool.submit(self.copy_function, srcobj, dstname)
        self.pending[future] = (key, srcname, dstname)

    def on_symlink(self, srcentry: os.DirEntry[Any], srcname: Any, dstname: Any, srcobj: Any, linkto: str,
                   key: tuple[int, ...]) -> None:
        # shutil makes links itself, never through copy_function; two cheap syscalls, in line.
        os.symlink(linkto, dstname)
        shutil.copystat(srcobj, dstname, follow_symlinks=False)

    def collect(self, return_when: str) -> None:
        done, _ = wait(list(self.pending), return_when=return_when)
        for future in done:
            key, srcname, dstname = self.pending.pop(future)
            exc = future.exception()
            if exc is None:
                continue
            if isinstance(exc, OSError):
                self.walker.record(key, srcname, dstname, exc)
            else:
                raise exc  # anything else stops the copy, as it would stop shutil's loop

    def run(self, top: _Dir, entries: list[os.DirEntry[Any]], ignored: Iterable[str]) -> None:
        self.walker.on_file = self.on_file
        self.walker.on_symlink = self.on_symlink
        if self.pool is None:
            self.walker.walk(top, entries, ignored)
            return
        try:
            self.walker.walk(top, entries, ignored)
            while self.pending:
                self.collect(FIRST_COMPLETED)
        finally:
            # On an exception (KeyboardInterrupt included) calls not started are cancelled and
            # the running ones finish before we return: no thread writes after the call.
            self.pool.shutdown(wait=True, cancel_futures=True)


def _unused(*args: Any) -> None:
    raise AssertionError("walker callbacks are set by the executor")


def copytree(
    src: StrPath,
    dst: _DstT,
    symlinks: bool = False,
    ignore: IgnoreFunction | None = None,
    copy_function: CopyFunction = shutil.copy2,
    ignore_dangling_symlinks: bool = False,
    dirs_exist_ok: bool = False,
    *,
    jobs: int | None = None,
    chunk_size: int | None = DEFAULT_CHUNK_BYTES,
    start_method: str | None = None,
) -> _DstT:
    """Recursively copy the directory tree src to dst, copying files in parallel; returns dst.

    A drop-in for :func:`shutil.copytree` (same arguments, return value, exceptions, and one
    :class:`shutil.Error` listing ``(srcname, dstname, str(why))`` for every failure, raised after
    everything else was copied). Extra keyword-only arguments:

    - ``jobs``: parallel workers (default: the CPUs available). With the default
      ``copy_function=shutil.copy2`` files are copied by pcopy's process pool; with any other
      ``copy_function`` it is called once per file, in this process, from a pool of ``jobs``
      threads (so closures and side effects work); ``jobs=1`` copies in the calling thread.
    - ``chunk_size``: files larger than this many bytes are copied as byte ranges by several
      workers (engine path only). Default None: every file is one stream (faster on local
      file systems).
    - ``start_method``: the multiprocessing start method of the pool. Default: the platform's
      (fork on Linux), or "forkserver" when the process runs other threads, where forking
      could deadlock a worker on a lock another thread held.

    Choices where shutil has known bugs are listed in the module documentation: destination
    files are replaced atomically (never written through a symlink, existing symlinks replaced
    with symlinks=True), and dangling links are judged from the link's own directory.
    """
    n_jobs = default_jobs() if jobs is None else jobs
    config = _make_config(n_jobs, chunk_size, symlinks, start_method)  # validates before writing
    sys.audit("shutil.copytree", src, dst)
    with os.scandir(src) as itr:
        entries = list(itr)
    ignored: Iterable[str] = ()
    if ignore is not None:
        ignored = ignore(os.fspath(src), [x.name for x in entries])
    os.makedirs(dst, exist_ok=dirs_exist_ok)

    use_srcentry = copy_function is shutil.copy2 or copy_function is shutil.copy
    walker = _Walker(symlinks, ignore, ignore_dangling_symlinks, dirs_exist_ok, use_srcentry,
                     on_file=_unused, on_symlink=_unused)
    top = _Dir(src, dst, (), len(entries))
    if copy_function is shutil.copy2:
        _copy_with_engine(walker, top, entries, ignored, config)
    else:
        _ThreadCopier(walker, copy_function, n_jobs).run(top, entries, ignored)

    # Directory metadata after all contents, children first, as shutil's recursion applies it.
    for d in walker.dirs:
        try:
            shutil.copystat(d.src, d.dst)
        except OSError as why:
            if getattr(why, "winerror", None) is None:  # access times may fail on Windows
                walker.errors.append(((*d.key, d.count + 1), (d.src, d.dst, str(why))))
    if walker.errors:
        walker.errors.sort(key=lambda item: item[0])  # stable: a nested list keeps its order
        raise shutil.Error([error for _, error in walker.errors])
    return dst
