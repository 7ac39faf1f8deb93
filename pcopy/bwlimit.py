"""--bwlimit: one byte budget per run, shared by all workers without a lock.

How the workers share the budget. The parent creates a small file of 64-bit counters (create)
that every process which copies bytes maps into memory (attach): the pool workers, and the
parent itself when it runs jobs inline. Each process claims a slot of its own once, by creating
a marker file with O_CREAT | O_EXCL (one atomic system call: nothing is ever held that a
process killed at any instant could leave locked). A process writes only its own slot: the
bytes it wrote and the idle credit it forfeited. After each slice of at most `slice_bytes` it
adds the slice to its slot, sums all slots and, when the sum is ahead of the run's schedule
(rate bytes per second since the run started), sleeps until the schedule catches up.

Every process sees the same debt, so busy workers take turns slice by slice: a worker copying
small files gets as many bytes per second as one copying a large file, and the budget of idle
workers goes to the busy ones (a static rate/jobs share would leave a lone large file at half
the limit on 2 workers). Time nobody used (the walk, pool start-up, a slow disk) turns into at
most BURST_S seconds of credit; whoever sees more forfeits the rest in its own slot. So over
any window the bytes stay within the limit plus BURST_S of credit plus one slice per worker.

A worker that dies leaves its slot as it was: the bytes it wrote were written and stay counted,
and nothing waits for it. Slots are never reused within a run (a replacement worker claims a
new one); when all are taken a process shares a slot chosen by its pid, which can undercount
and so let the rate rise above the limit, never stall the copy.
"""

from __future__ import annotations

import mmap
import os
import re
import time

# Processes that can claim a slot of their own in one run: workers plus replacements after a
# worker death; more only share slots (see above). 256 slots keep the sum cheap (~5 us).
SLOTS = 256
_HEADER = 2  # [0]: the run's start (time.monotonic_ns: one clock for every process), [1]: rate
_COUNTERS_NAME = "counters"

# Credit for time nobody used, in seconds of the rate: enough to absorb the gap between two
# files (open, create, rename), small enough that any 5 s window stays within 10 % of the limit
# with a few workers (0.1 s + one slice per worker of 1/50 s each).
BURST_S = 0.1
# Bytes between two looks at the budget: a fiftieth of a second's worth, so a slice never
# moves the rate of a 5 s window by more than 0.4 % per worker; at least 4 KiB (a page; smaller
# would cost a syscall per few bytes), at most 1 MiB (the fast paths' efficiency is reached).
SLICE_PER_S = 50
MIN_SLICE_BYTES = 4096
MAX_SLICE_BYTES = 1 << 20

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*(?:/s)?\s*$", re.IGNORECASE)
_RATE_UNITS = {"": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_rate(text: str) -> int | None:
    """'10M', '500K', '1.5M' -> bytes per second (binary units, as rsync); a bare number is
    KiB/s (rsync's default unit); 0 means no limit (None)."""
    match = _RATE_RE.match(text)
    if not match:
        raise ValueError(f"invalid rate {text!r} (use e.g. 500K, 10M, 1G; a bare number is KiB/s)")
    value = int(float(match.group(1)) * _RATE_UNITS[match.group(2).upper()])
    if value == 0:
        if float(match.group(1)) == 0:
            return None
        raise ValueError(f"rate {text!r} is below 1 byte per second")
    return value


def slice_bytes(rate: int) -> int:
    return max(MIN_SLICE_BYTES, min(MAX_SLICE_BYTES, rate // SLICE_PER_S))


_PREFIX = "pcopy-bwlimit-"


def create(rate: int) -> str:
    """The parent's part: a directory holding the counters, returned as its path; the run's
    clock starts now. Remove it with remove() when the run ends. Its name carries the parent's
    pid, so that a later run can remove the directories of runs that were killed."""
    import tempfile  # only --bwlimit needs it: kept off the start-up path

    remove_stale(tempfile.gettempdir())
    path = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
    with open(os.path.join(path, _COUNTERS_NAME), "wb") as fh:
        header = memoryview(bytearray(8 * _HEADER)).cast("q")
        header[0] = time.monotonic_ns()
        header[1] = rate
        fh.write(header.tobytes())
        fh.write(bytes(8 * 2 * SLOTS))
    return path


def remove(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def remove_stale(directory: str) -> int:
    """Remove the counters of runs whose parent is gone (a SIGKILLed pcopy cannot remove its
    own); returns how many. A directory whose pid is alive stays, even if that pid was reused:
    it is only kept longer. POSIX only: Windows' os.kill(pid, 0) would terminate the process."""
    if os.name != "posix":
        return 0
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        pid_text = name[len(_PREFIX):].split("-", 1)[0] if name.startswith(_PREFIX) else ""
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # alive (or another user's process): not ours to judge
        except ProcessLookupError:
            pass
        except OSError:
            continue
        remove(os.path.join(directory, name))
        removed += 1
    return removed


class Throttle:
    """One process' view of the shared counters."""

    def __init__(self, path: str) -> None:
        fd = os.open(os.path.join(path, _COUNTERS_NAME), os.O_RDWR | getattr(os, "O_BINARY", 0))
        try:
            self._map = mmap.mmap(fd, 8 * (_HEADER + 2 * SLOTS))
        finally:
            os.close(fd)  # the mapping stays valid
        self.counts = memoryview(self._map).cast("q")
        self.start_ns = self.counts[0]
        self.rate = self.counts[1]
        self.slice_bytes = slice_bytes(self.rate)
        self.burst = int(self.rate * BURST_S)
        self.slot = _HEADER + 2 * _claim(path)

    def spend(self, n: int) -> None:
        """Count n bytes just written, then wait until the run's schedule allows them."""
        counts = self.counts
        counts[self.slot] += n  # this slot's only writer: no lost update
        total = sum(counts[_HEADER:])
        allowed = (time.monotonic_ns() - self.start_ns) * self.rate // 1_000_000_000
        if total > allowed:
            time.sleep((total - allowed) / self.rate)
        elif allowed - total > self.burst:
            counts[self.slot + 1] += allowed - total - self.burst  # idle credit forfeited


def _claim(path: str) -> int:
    for slot in range(SLOTS):
        try:
            os.close(os.open(os.path.join(path, f"slot-{slot}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            continue
        return slot
    return os.getpid() % SLOTS


_attached: tuple[int, str, Throttle] | None = None


def attach(path: str) -> Throttle:
    """This process' Throttle for the run at path. A forked worker inherits its parent's
    module state: the pid tells that the slot is not its own, and it claims a new one."""
    global _attached
    if _attached is None or _attached[0] != os.getpid() or _attached[1] != path:
        _attached = (os.getpid(), path, Throttle(path))
    return _attached[2]
