"""Mount, read the counters of, and unmount the latency-injecting FUSE file system (slowfs.c).

    with SlowMount(backing, mountpoint, delay_ms=1.0) as mount:
        mount.reset()                 # counters to zero
        ...                           # work on mountpoint
        stats = mount.counters()      # {"ops": {"LOOKUP": n, ...}, "busy_ns": ..., ...}

Shared by benchmarks/slowfs/bench_slow.py and tests/test_slowfs.py. The daemon runs in the
foreground as a child of this process; it is unmounted (fusermount3 -u) and waited for on exit,
and killed by its own pid only if it does not go.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "slowfs.c"
BINARY = HERE.parent / "work" / "slowfs" / "slowfs"

# How long to wait for the mount to appear, for a counter file to be written, for the daemon to
# leave after unmount. Generous: the machine is shared and may be busy.
MOUNT_WAIT_S = 10.0
STATS_WAIT_S = 5.0
EXIT_WAIT_S = 10.0


class SlowfsUnavailable(Exception):
    """FUSE cannot be used here; the message says what is missing."""


def unavailable_reason() -> str | None:
    """Why slowfs cannot run on this machine, or None when it can (building it if needed)."""
    if not sys.platform.startswith("linux"):
        return f"slowfs needs Linux FUSE; this is {sys.platform}"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no FUSE in this kernel or container)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not installed (run benchmarks/slowfs/setup.sh)"
    try:
        build()
    except SlowfsUnavailable as exc:
        return str(exc)
    return None


def build() -> Path:
    """Compile slowfs.c into BINARY when it is missing or older than the source."""
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    if shutil.which("gcc") is None or shutil.which("pkg-config") is None:
        raise SlowfsUnavailable("gcc/pkg-config missing (run benchmarks/slowfs/setup.sh)")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True,
                           text=True, check=False)
    if flags.returncode != 0:
        raise SlowfsUnavailable("libfuse3-dev missing (run benchmarks/slowfs/setup.sh)")
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    tmp = BINARY.with_suffix(f".{os.getpid()}.tmp")  # two builds at once do not collide
    done = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(tmp), str(SOURCE), *flags.stdout.split()],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SlowfsUnavailable(f"building slowfs failed: {done.stderr.strip()[:500]}")
    os.replace(tmp, BINARY)
    return BINARY


class SlowMount:
    """One slowfs daemon: BACKING mounted at MOUNTPOINT with a fixed delay per request."""

    def __init__(self, backing: Path, mountpoint: Path, delay_ms: float, threads: int = 256,
                 stats_path: Path | None = None, cache_s: float = 0.0) -> None:
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        self.delay_ms = delay_ms
        self.threads = threads
        self.cache_s = cache_s  # names and attributes valid this long (0: nothing cached)
        self.stats_path = stats_path or self.mountpoint.parent / f".{self.mountpoint.name}.stats.json"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_path = self.stats_path.with_suffix(".log")

    def __enter__(self) -> SlowMount:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        binary = build()
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.mountpoint):
            raise SlowfsUnavailable(f"{self.mountpoint} is already a mount point (a stale mount? "
                                    f"fusermount3 -u {self.mountpoint})")
        self.stats_path.unlink(missing_ok=True)
        with open(self._log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(binary), "--delay-ms", repr(self.delay_ms), "--threads", str(self.threads),
                 "--cache-s", repr(self.cache_s), "--stats", str(self.stats_path), str(self.backing),
                 str(self.mountpoint)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not (os.path.ismount(self.mountpoint) and self.stats_path.exists()):
            if self.process.poll() is not None:
                output = self._log_path.read_text(errors="replace").strip()
                self.process = None
                raise SlowfsUnavailable(f"slowfs exited at mount: {output or 'no message'}")
            if time.monotonic() > deadline:
                self.stop()
                raise SlowfsUnavailable(f"slowfs did not mount {self.mountpoint} in {MOUNT_WAIT_S} s")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.process is None:
            return
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True, check=False)
        try:
            self.process.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            # Busy mount (a tool still inside it): detach it lazily, then end our own daemon.
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True,
                           check=False)
            self.process.kill()
            self.process.wait(EXIT_WAIT_S)
        self.process = None

    def _read(self) -> dict[str, Any]:
        with open(self.stats_path) as fh:
            data: dict[str, Any] = json.load(fh)
        return data

    def _signal(self, sig: int) -> dict[str, Any]:
        """Send sig to the daemon and return the counters file it writes in answer."""
        if self.process is None:
            raise RuntimeError("slowfs is not mounted")
        before = self._read()["seq"]
        os.kill(self.process.pid, sig)
        deadline = time.monotonic() + STATS_WAIT_S
        while True:
            try:
                data = self._read()
                if data["seq"] != before:
                    return data
            except (OSError, ValueError):
                pass  # between the daemon's write and rename: try again
            if time.monotonic() > deadline:
                raise RuntimeError("slowfs did not write its counters")
            time.sleep(0.002)

    def reset(self) -> None:
        """Counters to zero."""
        self._signal(signal.SIGUSR2)

    def counters(self, settle: bool = True) -> dict[str, Any]:
        """The counters since the last reset. With settle, first wait until no request is in
        flight and the counts stay still: the kernel sends RELEASE after close() has returned,
        so a tool's last requests can arrive after the tool has exited."""
        data = self._signal(signal.SIGUSR1)
        if not settle:
            return data
        pause = max(0.02, 3 * self.delay_ms / 1000)
        deadline = time.monotonic() + STATS_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(pause)
            again = self._signal(signal.SIGUSR1)
            if again["in_flight"] == 0 and again["ops"] == data["ops"]:
                return again
            data = again
        return data


def total_ops(stats: dict[str, Any]) -> int:
    return int(sum(stats["ops"].values()))
