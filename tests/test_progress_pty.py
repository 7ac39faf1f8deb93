"""The bar as a person sees it: pcopy runs in a pseudo-terminal (a real process on a real tree),
and the frames it draws are read back and checked: no percentage or ETA while the tree is being
counted, then a percentage that never decreases, no 100 % before every file is done, files done
never above the total, and a last frame at 100 % with the full file count and the distinct
bytes (a hard-linked inode once). A re-run says that everything was up to date."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from pcopy.report import format_bytes

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")

COLUMNS = 150  # wide enough that no frame is trimmed
TIMEOUT_S = 60
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
PERCENT = re.compile(r"^pcopy: +(\d+)%")
FILES = re.compile(r"([\d,]+)/([\d,]+) files")


# pcopy's CLI, with every file's copy slowed by a few milliseconds in the workers (forked, so
# they inherit the patch): on a fast or an idle machine alike the copy then lasts long enough
# (about 1,200 files x 2.5 ms over 2 workers: 1.5 s and more) for the bar to draw frames in both
# of its phases. Everything else is the real program: walk, pool, progress queue, display thread.
# The delay computes rather than sleeps: a sleeping worker looks like slow storage and would
# take more threads (pcopy.threads), and the copy would no longer last long enough.
DRIVER = """
import sys, time
import pcopy.worker
from pcopy.cli import main

real_copy_range = pcopy.worker.copy_range
delay_s = float(sys.argv.pop(1))

def slow_copy_range(*args, **kwargs):
    end = time.perf_counter() + delay_s
    while time.perf_counter() < end:
        pass
    return real_copy_range(*args, **kwargs)

pcopy.worker.copy_range = slow_copy_range
main()
"""


def run_in_pty(*args: str, delay_s: float = 0.0) -> tuple[int, list[str]]:
    """Run pcopy ARGS (each file's copy delay_s slower) with a terminal of COLUMNS columns as its
    stdin, stdout and stderr; return its exit code and every line it drew (split on carriage
    returns and newlines, ANSI sequences removed)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        try:
            os.execv(sys.executable, [sys.executable, "-c", DRIVER, str(delay_s), *args])
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, COLUMNS, 0, 0))
    output = bytearray()
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not data:
                break
            output += data
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"pcopy did not finish in {TIMEOUT_S} s; drew {bytes(output[-500:])!r}")
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    lines = re.split(r"[\r\n]", ANSI.sub(b"", bytes(output)).decode("utf-8", "replace"))
    return os.waitstatus_to_exitcode(status), [line.strip() for line in lines if line.strip()]


class Frame(NamedTuple):
    text: str
    percent: int | None  # None: still counting
    files_done: int
    files_total: int | None  # while counting: found so far


def parse_frames(lines: list[str]) -> list[Frame]:
    frames = []
    for line in lines:
        if line.startswith("pcopy: counting"):
            match = re.search(r"^pcopy: counting \| ([\d,]+)/([\d,]+)\+? files \| ", line)
            assert match, line
            frames.append(Frame(line, None, int(match[1].replace(",", "")), int(match[2].replace(",", ""))))
            continue
        percent = PERCENT.match(line)
        if percent is None:
            continue  # the summary line, on stdout
        files = FILES.search(line)
        assert files, line
        frames.append(Frame(line, int(percent[1]), int(files[1].replace(",", "")), int(files[2].replace(",", ""))))
    return frames


def assert_bar_matches(frame: Frame) -> None:
    """The bar, where drawn, is filled to the percentage shown (one cell of rounding)."""
    bar = re.search(r"%\|([^|]*)\|", frame.text)
    if bar and frame.percent is not None:
        cells = bar[1]
        filled = cells.count("\u2588") + (0 if cells.rstrip(" \u2588") == "" else 1)
        assert abs(filled - frame.percent * len(cells) / 100) <= 1, frame.text


def make_tree(root: Path) -> tuple[int, int]:
    """1,200 small files in 12 directories, 4 files of 6 MiB, a file with three names, a symlink;
    returns (names, distinct bytes)."""
    names = total = 0
    for d in range(12):
        (root / f"d{d:02d}").mkdir(parents=True)
        for i in range(100):
            data = os.urandom(2000 + i)
            (root / f"d{d:02d}" / f"f{i:03d}").write_bytes(data)
            names += 1
            total += len(data)
    (root / "large").mkdir()
    for i in range(4):
        (root / "large" / f"l{i}").write_bytes(os.urandom(6 << 20))
    (root / "linked").write_bytes(os.urandom(300_000))
    os.link(root / "linked", root / "d00" / "linked-2")
    os.link(root / "linked", root / "d05" / "linked-3")
    os.symlink("linked", root / "symlink")
    return names + 4 + 3 + 1, total + 4 * (6 << 20) + 300_000


def test_frames_drawn_in_a_terminal_tell_the_truth(tmp_path: Path) -> None:
    names, total = make_tree(tmp_path / "src")
    code, lines = run_in_pty(str(tmp_path / "src"), str(tmp_path / "dst"), "-j", "2", delay_s=0.0025)
    assert code == 0, lines
    frames = parse_frames(lines)
    assert len(frames) >= 6, lines  # a frame every 0.25 s

    counting = [f for f in frames if f.percent is None]
    shown = [f for f in frames if f.percent is not None]
    assert counting and shown, lines
    # Counting first, then percentages: no frame pretends to know the end before it is known.
    assert frames[: len(counting)] == counting, lines
    for f in counting:
        assert "%" not in f.text and "ETA" not in f.text, f.text
        assert f.files_done <= (f.files_total or 0) <= names, f.text
    percents = [f.percent for f in shown]
    assert percents == sorted(percents), lines  # never decreases
    for f in shown:
        assert f.files_total == names, f.text  # the total is final once a percentage shows
        assert f.files_done <= names, f.text
        assert_bar_matches(f)
        if f.percent == 100:
            assert f.files_done == names, f.text  # no 100 % before every file is done
        elif f is not shown[-1]:
            assert "ETA" in f.text, f.text

    last = frames[-1]
    assert last.percent == 100 and last.files_done == names, last.text
    size = format_bytes(total).split(" ")
    assert f" {size[0]}/{size[0]} {size[1]} " in last.text, last.text  # distinct bytes, done = total
    assert "ETA" not in last.text and " in 0:" in last.text

    # A re-run finds everything up to date and says so.
    code, lines = run_in_pty(str(tmp_path / "src"), str(tmp_path / "dst"), "-j", "2")
    assert code == 0
    frames = parse_frames(lines)
    for f in frames:
        assert_bar_matches(f)
    last = frames[-1]
    assert last.percent == 100 and f"up to date: {names:,} files skipped" in last.text, lines
