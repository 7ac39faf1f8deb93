"""The parent's progress display: the only module that imports tqdm (workers never touch it;
tqdm issues #484 and #796 show what goes wrong when they do).

Three parts with one job each:

- Tally: the counts the runner reports (found, done, skipped), kept under a lock because the
  runner writes them from the main thread and the display reads them from its own thread.
- Display: turns snapshots of a Tally into the text of frames. Pure (the time is an argument),
  so its rules are tested with plain calls: while the tree is still being counted a frame shows
  what was found and done so far and no percentage or ETA; once the count is final, a
  percentage that never decreases and reaches 100 only when every file is done, and an ETA.
- TqdmProgress: a tqdm line on stderr, redrawn by a thread every REFRESH_S whatever the main
  thread is doing (walking a large tree, waiting for results). That thread and close() are the
  only code that touches tqdm.

Sizes are binary (KiB, MiB, GiB), exactly as the summary line prints them (report.format_bytes).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections import deque
from typing import Any, NamedTuple, Protocol, runtime_checkable

from pcopy.report import format_bytes

# How often the bar is redrawn (seconds): smooth to a person, and each redraw (one formatted line,
# one write) costs ~40 us of the parent's CPU, so 4 a second are nothing next to the copy.
REFRESH_S = 0.25

# How long close waits for the display thread (seconds): it stops within a frame, or within
# tqdm's import (~30 ms) if it is still in it; only a thread stuck for good waits this long
# (see close), and an interrupted pcopy must still end within 2 s of the signal.
CLOSE_WAIT_S = 0.5

# The rate behind the ETA and the rate shown: bytes done over about the last RATE_WINDOW_S
# seconds. Long enough that one worker's 8 MiB report does not make it jump, short enough that
# the move from small files to large ones shows within a few seconds.
RATE_WINDOW_S = 5.0

# The ETA counts down between frames and is re-estimated upwards only when the copy has clearly
# slowed: the fresh estimate exceeds the countdown by this factor and by ETA_SLACK_S seconds.
# Without it the ETA would bounce a second up and down with every batch of reports.
ETA_RISE_FACTOR = 1.25
ETA_SLACK_S = 2.0

# Width of the bar itself at most (characters); the rest of the line is the numbers.
BAR_MAX_WIDTH = 30
BAR_MIN_WIDTH = 5
DEFAULT_COLUMNS = 80


@runtime_checkable
class ProgressSink(Protocol):
    """What the runner tells a display. `active` False means nobody listens, so the runner need
    not start a Manager queue to carry worker progress at all.

    Found: add_found for entries whose sizes are known (stat'ed by the parent); add_names for
    names handed to workers unstat'ed, whose sizes follow through add_sizes. A later name of a
    hard-linked inode arrives as add_found(0, -size): its bytes are counted once, with the
    first name. walk_done: the walk is over, so once every name has its size the totals are
    final. Done: advance (bytes and files processed: copied, skipped as up to date, or failed),
    and add_skipped for the part of them that was up to date."""

    active: bool

    def add_found(self, files: int, nbytes: int) -> None: ...
    def add_names(self, files: int) -> None: ...
    def add_sizes(self, files: int, nbytes: int) -> None: ...
    def advance(self, nbytes: int, files: int) -> None: ...
    def add_skipped(self, files: int, nbytes: int) -> None: ...
    def walk_done(self) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    """No display: every call does nothing."""

    active = False

    def add_found(self, files: int, nbytes: int) -> None:
        pass

    def add_names(self, files: int) -> None:
        pass

    def add_sizes(self, files: int, nbytes: int) -> None:
        pass

    def advance(self, nbytes: int, files: int) -> None:
        pass

    def add_skipped(self, files: int, nbytes: int) -> None:
        pass

    def walk_done(self) -> None:
        pass

    def close(self) -> None:
        pass


class Snapshot(NamedTuple):
    """The counts at one instant. `walked`: the walk is over, so files_found is the total;
    `final`: also every name has its size, so bytes_found is the total too. The done counts
    include skipped files."""

    files_found: int
    bytes_found: int
    files_done: int
    bytes_done: int
    skipped: int
    skipped_bytes: int
    final: bool
    walked: bool = False

    @property
    def complete(self) -> bool:
        """Every file counted is processed: the only state that shows 100 %."""
        return self.final and self.files_done >= self.files_found and self.bytes_done >= self.bytes_found


class Tally:
    """The runner's reports, summed (the same calls as ProgressSink). A lock, not the GIL, keeps
    a snapshot consistent: a total and the count of names still without a size change together,
    or a display thread could see the count final while a size is still missing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.files_found = 0
        self.bytes_found = 0
        self.unsized = 0  # names found whose sizes have not been reported yet
        self.walk_finished = False
        self.files_done = 0
        self.bytes_done = 0
        self.skipped = 0
        self.skipped_bytes = 0

    def add_found(self, files: int, nbytes: int) -> None:
        with self._lock:
            self.files_found += files
            self.bytes_found += nbytes

    def add_names(self, files: int) -> None:
        with self._lock:
            self.files_found += files
            self.unsized += files

    def add_sizes(self, files: int, nbytes: int) -> None:
        with self._lock:
            self.bytes_found += nbytes
            self.unsized -= files

    def advance(self, nbytes: int, files: int) -> None:
        with self._lock:
            self.bytes_done += nbytes
            self.files_done += files

    def add_skipped(self, files: int, nbytes: int) -> None:
        with self._lock:
            self.skipped += files
            self.skipped_bytes += nbytes

    def walk_done(self) -> None:
        with self._lock:
            self.walk_finished = True

    def snapshot(self) -> Snapshot:
        with self._lock:
            # unsized can go below zero when a killed worker's names are stat'ed again.
            return Snapshot(self.files_found, self.bytes_found, self.files_done, self.bytes_done,
                            self.skipped, self.skipped_bytes, self.walk_finished and self.unsized <= 0,
                            self.walk_finished)


class Frame(NamedTuple):
    """One line: `left`, a bar filled to `percent` (None: no bar), `right`, then `tail`, which
    is what a narrow terminal loses first (the bar's width leaves room for left and right)."""

    left: str
    percent: int | None
    right: str
    tail: str = ""

    def text(self) -> str:
        """The line with '||' where the bar goes (for tests and logs)."""
        middle = "||" if self.percent is not None else ""
        return f"{self.left}{middle}{self.right}{self.tail}"


def format_count(n: int) -> str:
    return f"{n:,}"


def format_pair(done: int, total: int) -> str:
    """'1.1/2.4 GiB' when both have the same unit, else '512.0 MiB/2.4 GiB'."""
    done_text, total_text = format_bytes(done), format_bytes(total)
    done_value, done_unit = done_text.split(" ")
    if total_text.endswith(" " + done_unit):
        return f"{done_value}/{total_text}"
    return f"{done_text}/{total_text}"


def format_duration(seconds: float) -> str:
    """0:07, 12:34, 1:02:03 (hours only when needed)."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Display:
    """The rules that turn snapshots into frames. Holds what carries from one frame to the next:
    the highest percentage shown (so it never goes back), recent samples for the rates, and the
    ETA's countdown."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.shown_percent = -1
        # (time, bytes processed, bytes copied): processed (skipped included) drives the ETA, as
        # it does the percentage; copied is the rate shown, the summary's kind of rate.
        self.samples: deque[tuple[float, int, int]] = deque([(start, 0, 0)])
        self.eta: float | None = None
        self.eta_at = start

    def rates(self, snap: Snapshot, now: float) -> tuple[float, float]:
        """(processed, copied) bytes per second over about the last RATE_WINDOW_S (since the
        start, when shorter). Skipped bytes are reported a moment after they count as done (with
        their job's result), so the copied rate can lag a little; never below zero."""
        copied = snap.bytes_done - snap.skipped_bytes
        self.samples.append((now, snap.bytes_done, copied))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()
        then, done_then, copied_then = self.samples[0]
        if now <= then:
            return 0.0, 0.0
        return (snap.bytes_done - done_then) / (now - then), max(0, copied - copied_then) / (now - then)

    def percent(self, snap: Snapshot) -> int:
        """Floor of the fraction done (by bytes; by files when there are no bytes), never above
        99 before everything is done and never below what was shown before."""
        if snap.complete:
            value = 100
        else:
            if snap.bytes_found > 0:
                fraction = snap.bytes_done / snap.bytes_found
            else:
                fraction = snap.files_done / snap.files_found if snap.files_found else 0.0
            value = min(99, math.floor(100 * fraction))
        self.shown_percent = max(self.shown_percent, value)
        return self.shown_percent

    def remaining(self, snap: Snapshot, rate: float, now: float) -> float | None:
        """Seconds left, as a countdown that rises only when the copy clearly slowed."""
        if rate <= 0:
            return self.eta  # nothing moved in the window: keep the last estimate
        fresh = max(0, snap.bytes_found - snap.bytes_done) / rate
        if self.eta is not None:
            countdown = max(0.0, self.eta - (now - self.eta_at))
            if countdown <= fresh <= countdown * ETA_RISE_FACTOR + ETA_SLACK_S:
                fresh = countdown
        self.eta, self.eta_at = fresh, now
        return fresh

    def frame(self, snap: Snapshot, now: float, closing: bool = False) -> Frame:
        """The frame for snap at time now. closing: the run's last frame, with the elapsed time
        and the average copy rate (as the summary line has them) instead of an ETA."""
        files_done = min(snap.files_done, snap.files_found)
        bytes_done = min(snap.bytes_done, snap.bytes_found) if snap.final else snap.bytes_done
        processed_rate, copy_rate = self.rates(snap, now)
        elapsed = now - self.start
        if closing:
            copied = max(0, snap.bytes_done - snap.skipped_bytes)
            copy_rate = copied / elapsed if elapsed > 0 else 0.0
        skipped = f" | {format_count(snap.skipped)} skipped" if snap.skipped else ""
        if not snap.final:
            # Still counting: done against what was found so far, a "+" on each total that may
            # still grow (the file count is final once the walk is over, the bytes once every
            # name has its size), and nothing that pretends to know the end.
            # Files copied are found files too: where workers list the directories (slow
            # storage, Ray), a listing reaches the parent with its job's result, after the
            # files it copied were counted done, and "0/0+ files" would stand for seconds.
            files_more = "" if snap.walked else "+"
            found = snap.files_found if snap.walked else max(snap.files_found, snap.files_done)
            return Frame(f"pcopy: counting | {format_count(min(snap.files_done, found))}/{format_count(found)}"
                         f"{files_more} files | {format_pair(bytes_done, max(snap.bytes_found, bytes_done))}+"
                         f" | {format_bytes(copy_rate)}/s", None, "", skipped)
        percent = self.percent(snap)
        left = f"pcopy: {percent:3d}%"
        files = f" {format_count(files_done)}/{format_count(snap.files_found)} files"
        if snap.complete and snap.files_found and snap.skipped >= snap.files_found:
            return Frame(left, percent, f"{files} | up to date: {format_count(snap.skipped)} files skipped")
        numbers = f" {format_pair(bytes_done, snap.bytes_found)} |{files} | {format_bytes(copy_rate)}/s"
        if closing:
            return Frame(left, percent, f"{numbers} | in {format_duration(elapsed)}", skipped)
        eta = self.remaining(snap, processed_rate, now)
        return Frame(left, percent, f"{numbers} | ETA {format_duration(eta) if eta is not None else '?'}", skipped)


class _TallySink:
    """A sink whose runner calls only move counters (so they cost the copy nothing); what is
    shown is made from self.tally's snapshots."""

    def __init__(self) -> None:
        self.tally = Tally()

    def add_found(self, files: int, nbytes: int) -> None:
        self.tally.add_found(files, nbytes)

    def add_names(self, files: int) -> None:
        self.tally.add_names(files)

    def add_sizes(self, files: int, nbytes: int) -> None:
        self.tally.add_sizes(files, nbytes)

    def advance(self, nbytes: int, files: int) -> None:
        self.tally.advance(nbytes, files)

    def add_skipped(self, files: int, nbytes: int) -> None:
        self.tally.add_skipped(files, nbytes)

    def walk_done(self) -> None:
        self.tally.walk_done()


class TqdmProgress(_TallySink):
    """One line on stderr, redrawn every REFRESH_S by a display thread."""

    active = True

    def __init__(self, stream: Any = None, refresh_s: float = REFRESH_S) -> None:
        super().__init__()
        self._display = Display(time.monotonic())
        self._stream = stream or sys.stderr
        self._bar: Any = None  # made by the display thread
        self._stop = threading.Event()
        self._refresh_s = refresh_s
        self._thread = threading.Thread(target=self._loop, name="pcopy-progress", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the display thread, draw the last frame and end the line."""
        if self._stop.is_set():
            return
        self._stop.set()
        # Bounded: a Ctrl-C that lands while the main thread is inside an import can leave the
        # interpreter's import lock held for good (the signal's exception unwinds importlib
        # between an acquire and its release), and a display thread still importing tqdm then
        # waits for it forever (about 1 in 60 signals 0.05-0.4 s into a run hung pcopy so).
        self._thread.join(CLOSE_WAIT_S)
        if self._thread.is_alive():
            return  # no last frame: the run's own last line still says how it ended
        if self._bar is None:
            return  # tqdm could not be imported or the stream was unusable from the start
        self._draw(closing=True, redraw=False)
        with contextlib.suppress(OSError, ValueError):  # stderr closed or full: the copy goes on
            self._bar.close()  # draws the last frame once more and ends the line (leave=True)

    # The display thread's side.
    def _loop(self) -> None:
        """Import tqdm and make the bar here, not in __init__: the import (~30 ms of CPU) then
        overlaps the walk and the copy instead of delaying their start."""
        try:
            from tqdm import tqdm  # type: ignore[import-untyped]  # only when a bar is shown

            # One bar, drawn by this thread: a thread lock is all it needs. tqdm's default also
            # makes a multiprocessing lock, importing multiprocessing here while the main thread
            # may be importing it too (see close).
            if "_lock" not in vars(tqdm):
                tqdm.set_lock(threading.RLock())
            # total=100 and n=percent: the bar is filled from the Display's percentage, never
            # from tqdm's arithmetic (which rounds 99.6 % up to 100 %). tqdm draws nothing by
            # itself: update() is never called; only _draw (this thread, then close) refreshes.
            # nrows: tqdm hides bars below the screen's last row and takes an unsized
            # terminal's 0 rows for -1, drawing nothing at all; this bar is on the first row.
            ncols = _columns(self._stream)
            first = self._display.frame(self.tally.snapshot(), time.monotonic())
            self._bar = tqdm(total=100, initial=first.percent or 0, file=self._stream, ncols=ncols, nrows=2,
                             leave=True, bar_format=self._bar_format(first, ncols))
        except (ImportError, OSError, ValueError):
            return
        while not self._stop.wait(self._refresh_s):
            if not self._draw():
                return

    def _draw(self, closing: bool = False, redraw: bool = True) -> bool:
        """Draw the current frame; False when the stream went away (closed pipe, full disk):
        the display stops, the copy goes on."""
        frame = self._display.frame(self.tally.snapshot(), time.monotonic(), closing)
        bar = self._bar
        try:
            bar.ncols = _columns(self._stream)  # the terminal may have been resized
            bar.bar_format = self._bar_format(frame, bar.ncols)
            bar.n = frame.percent or 0
            if redraw:
                bar.refresh()
        except (OSError, ValueError):
            return False
        return True

    @staticmethod
    def _bar_format(frame: Frame, ncols: int) -> str:
        """A tqdm bar_format: the frame's texts (braces escaped) around a bar as wide as the
        terminal leaves room for, at most BAR_MAX_WIDTH; none when that is under BAR_MIN_WIDTH.
        tqdm trims what does not fit from the end (the tail)."""
        left, right, tail = (text.replace("{", "{{").replace("}", "}}")
                             for text in (frame.left, frame.right, frame.tail))
        if frame.percent is None:
            return left + right + tail
        room = ncols - len(frame.left) - len(frame.right) - 2
        if room - len(frame.tail) >= BAR_MIN_WIDTH:
            room -= len(frame.tail)  # the bar narrows for the tail, down to its least width
        if room < BAR_MIN_WIDTH:
            return f"{left}{right}{tail}"
        return f"{left}|{{bar:{min(room, BAR_MAX_WIDTH)}}}|{right}{tail}"


def _columns(stream: Any) -> int:
    """The terminal's width; 80 where it does not say (not a terminal, or a pseudo-terminal
    whose size was never set reports 0 columns)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or DEFAULT_COLUMNS
    except (AttributeError, ValueError, OSError):
        return DEFAULT_COLUMNS


class CallbackProgress(_TallySink):
    """Progress for library callers: callback(bytes_done, bytes_total, files_done), from the
    calling thread, after each batch of worker reports (as before the display was reworked).
    bytes_total grows while the tree is being read; a hard-linked inode's bytes count once and
    up-to-date files count as done, so after a copy without failures the last call has
    bytes_done == bytes_total. The file total and the walk's state are in self.tally."""

    active = True

    def __init__(self, callback: Any) -> None:
        super().__init__()
        self._callback = callback

    def advance(self, nbytes: int, files: int) -> None:
        self.tally.advance(nbytes, files)
        snap = self.tally.snapshot()
        self._callback(snap.bytes_done, snap.bytes_found, snap.files_done)

    def close(self) -> None:
        pass
