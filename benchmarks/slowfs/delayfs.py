"""A second latency mount, built unlike slowfs on purpose: libfuse3's high-level (path-based)
API through Python (mfusepy), sleeping DELAY ms in every operation, libfuse's default
multithreaded loop (at most 10 requests at once), no attribute, entry or negative caching.

    python delayfs.py BACKING MOUNTPOINT DELAY_MS STATE_DIR

Used by crosscheck.py to check pcopy's slow-storage defaults on a mount they were not tuned
on. Unlike slowfs (C, low-level API, a thread per request), this daemon holds Python's GIL for
~100-150 us of CPU per request, so at 1 ms and below its own throughput (~7,000 requests/s on 2
cores), not the latency, is what bounds a parallel copier; at 5 ms its 10 threads do.

Operation counts (the high-level API's names: a LOOKUP is a getattr, and libfuse adds a
getattr after create, mkdir and setattr) are written to STATE_DIR/counts.json, and reset,
whenever STATE_DIR/dump appears (crosscheck.py makes it), and at exit.
"""
import errno
import functools
import json
import os
import sys
import threading
import time

import mfusepy as fuse

COUNTS: dict[str, int] = {}
OPS = {"access", "chmod", "chown", "getattr", "readdir", "readlink", "mknod", "rmdir", "mkdir", "statfs",
       "unlink", "symlink", "rename", "link", "utimens", "open", "create", "read", "write", "truncate",
       "flush", "release", "fsync"}  # (opendir, releasedir: libfuse answers them, no delay)
LOCK = threading.Lock()


class DelayFS(fuse.Operations):
    def __init__(self, root: str, delay_s: float) -> None:
        self.root = os.path.realpath(root)
        self.delay = delay_s

    def _p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _wait(self, op: str) -> None:
        with LOCK:
            COUNTS[op] = COUNTS.get(op, 0) + 1
        time.sleep(self.delay)

    use_ns = True  # times as nanoseconds, so copies keep their exact mtimes

    def __getattribute__(self, name):
        """Every operation in OPS sleeps first (mfusepy 3 ignores a __call__ hook); unimplemented
        ones (libfuse_ignore) stay unregistered, answered by libfuse without a delay."""
        attr = object.__getattribute__(self, name)
        if name not in OPS or getattr(attr, "libfuse_ignore", False):
            return attr

        @functools.wraps(attr)  # (mfusepy reads the signature: create gets the open flags)
        def delayed(*args, **kwargs):
            object.__getattribute__(self, "_wait")(name)
            try:
                return attr(*args, **kwargs)
            except fuse.FuseOSError:
                raise
            except OSError as exc:
                raise fuse.FuseOSError(exc.errno or errno.EIO) from None
        return delayed

    def access(self, path, mode):
        if not os.access(self._p(path), mode):
            raise fuse.FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        os.chmod(self._p(path), mode)

    def chown(self, path, uid, gid):
        os.lchown(self._p(path), uid, gid)

    def getattr(self, path, fh=None):
        st = os.lstat(self._p(path))
        return {"st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns,
                **{k: getattr(st, k) for k in ("st_gid", "st_mode", "st_nlink", "st_size", "st_uid", "st_ino",
                                                "st_blocks")}}

    def readdir(self, path, fh):
        here = os.lstat(self._p(path))
        out = [(".", {"st_mode": here.st_mode, "st_ino": here.st_ino}, 0),
               ("..", {"st_mode": here.st_mode, "st_ino": 1}, 0)]
        with os.scandir(self._p(path)) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                out.append((e.name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0))
        return out

    def readlink(self, path):
        return os.readlink(self._p(path))

    def mknod(self, path, mode, dev):
        os.mknod(self._p(path), mode, dev)

    def rmdir(self, path):
        os.rmdir(self._p(path))

    def mkdir(self, path, mode):
        os.mkdir(self._p(path), mode)

    def statfs(self, path):
        sv = os.statvfs(self._p(path))
        return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                             "f_files", "f_flag", "f_frsize", "f_namemax")}

    def unlink(self, path):
        os.unlink(self._p(path))

    def symlink(self, target, source):
        os.symlink(source, self._p(target))

    def rename(self, old, new):
        os.rename(self._p(old), self._p(new))

    def link(self, target, source):
        os.link(self._p(source), self._p(target))

    def utimens(self, path, times=None):
        if times is None:
            os.utime(self._p(path), follow_symlinks=False)
        else:
            os.utime(self._p(path), ns=times, follow_symlinks=False)

    def open(self, path, flags):
        return os.open(self._p(path), flags & ~os.O_CREAT)

    def create(self, path, mode, flags):
        return os.open(self._p(path), flags | os.O_CREAT, mode)

    def read(self, path, length, offset, fh):
        return os.pread(fh, length, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._p(path), length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)

    def fsync(self, path, datasync, fh):
        os.fsync(fh)


def dump(state: str) -> None:
    with LOCK:
        counts = dict(COUNTS)
        COUNTS.clear()
    tmp = os.path.join(state, "counts.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(counts, fh)
    os.replace(tmp, os.path.join(state, "counts.json"))


def watch(state: str) -> None:
    """Dump the counters when STATE/dump appears (the main thread is inside libfuse's loop,
    where a Python signal handler would never run)."""
    trigger = os.path.join(state, "dump")
    while True:
        if os.path.exists(trigger):
            # The trigger goes first: a caller that sees counts.json may at once ask again,
            # and that request must not be taken for this one.
            os.unlink(trigger)
            dump(state)
        time.sleep(0.02)


if __name__ == "__main__":
    backing, mountpoint, delay_ms, state = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    threading.Thread(target=watch, args=(state,), daemon=True).start()
    try:
        fuse.FUSE(DelayFS(backing, delay_ms / 1000), mountpoint, foreground=True, nothreads=False,
                  attr_timeout=0, entry_timeout=0, negative_timeout=0, use_ino=True)
    finally:
        dump(state)
