"""The progress sink with plain calls: the Tally's idea of a final count, the Display's rules
(no percentage while counting, a percentage that only rises and reaches 100 only at the end, the
ETA's countdown), the tqdm line drawn by its thread, and the counts the runner reports on real
trees (hard links once, skipped files, split files, re-runs)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from treeutil import assert_same_tree

import pcopy
import pcopy.progress
from pcopy.progress import (
    CallbackProgress,
    Display,
    NullProgress,
    ProgressSink,
    Snapshot,
    Tally,
    TqdmProgress,
    format_duration,
    format_pair,
)

MiB = 1 << 20


def snap(found: int = 10, found_bytes: int = 1000, done: int = 0, done_bytes: int = 0, skipped: int = 0,
         skipped_bytes: int = 0, final: bool = True) -> Snapshot:
    return Snapshot(found, found_bytes, done, done_bytes, skipped, skipped_bytes, final)


# -- Tally: when the count is final ----------------------------------------------------------------

def test_count_is_final_only_after_the_walk_and_every_size() -> None:
    tally = Tally()
    tally.add_names(5)  # handed to a worker unstat'ed
    tally.add_found(1, 100)  # stat'ed by the parent
    assert not tally.snapshot().final
    tally.walk_done()
    assert not tally.snapshot().final  # the worker has not reported the five sizes yet
    tally.add_sizes(3, 300)
    assert not tally.snapshot().final
    tally.add_sizes(2, 200)
    s = tally.snapshot()
    assert s.final and s.files_found == 6 and s.bytes_found == 600


def test_sizes_before_the_walk_ends_are_not_final() -> None:
    tally = Tally()
    tally.add_names(2)
    tally.add_sizes(2, 10)
    assert not tally.snapshot().final  # more directories may come
    tally.walk_done()
    assert tally.snapshot().final


def test_a_hard_links_later_name_leaves_the_byte_total() -> None:
    tally = Tally()
    tally.add_names(3)
    tally.add_sizes(3, 3 * 500)  # a, b (a's second name), c: each name stat'ed with its size
    tally.add_found(0, -500)  # b becomes a link to a
    tally.walk_done()
    tally.advance(1000, 2)  # a and c copied
    assert not tally.snapshot().complete  # b, the link, is not made yet
    tally.advance(0, 1)
    assert tally.snapshot().complete


# -- Display: the rules of the frames -----------------------------------------------------------

def test_counting_frames_show_what_is_known_and_no_percentage_or_eta() -> None:
    display = Display(0.0)
    frame = display.frame(snap(found=1234, found_bytes=5 * MiB, done=12, done_bytes=MiB, final=False), 1.0)
    text = frame.text()
    assert frame.percent is None
    assert "%" not in text and "ETA" not in text
    assert text == "pcopy: counting | 12/1,234+ files | 1.0/5.0 MiB+ | 1.0 MiB/s"


def test_files_done_before_their_listing_arrived_count_as_found() -> None:
    """Workers that list directories (slow storage, Ray) report files done before the listing
    reaches the parent: the lower bound is then the files done, not 0/0+ for seconds."""
    display = Display(0.0)
    text = display.frame(snap(found=0, found_bytes=0, done=654, done_bytes=2 * MiB, final=False), 1.0).text()
    assert "| 654/654+ files | 2.0/2.0 MiB+ |" in text


def test_after_the_walk_files_done_show_against_the_final_file_count() -> None:
    display = Display(0.0)
    walking = display.frame(snap(found=1208, done=437, final=False), 1.0)
    sizing = display.frame(snap(found=1208, done=437, final=False)._replace(walked=True), 1.0)
    assert "| 437/1,208+ files |" in walking.text()
    assert sizing.percent is None and "| 437/1,208 files |" in sizing.text() and "ETA" not in sizing.text()


def test_percentage_is_floored_capped_and_reaches_100_only_when_all_is_done() -> None:
    display = Display(0.0)
    assert display.frame(snap(done_bytes=999, done=9), 1.0).percent == 99  # 99.9 % is not 100
    assert display.frame(snap(done_bytes=1000, done=9), 2.0).percent == 99  # all bytes, a file to go
    final = display.frame(snap(done_bytes=1000, done=10), 3.0)
    assert final.percent == 100 and "1,000 B/1,000 B" not in final.text()
    assert "10/10 files" in final.text()


def test_percentage_never_goes_back() -> None:
    display = Display(0.0)
    assert display.frame(snap(found_bytes=1000, done_bytes=600), 1.0).percent == 60
    # A size reported late makes the fraction smaller: the shown percentage holds.
    assert display.frame(snap(found_bytes=2000, done_bytes=700), 2.0).percent == 60
    assert display.frame(snap(found_bytes=2000, done_bytes=1300), 3.0).percent == 65


def test_files_decide_when_there_are_no_bytes() -> None:
    display = Display(0.0)
    assert display.frame(snap(found=4, found_bytes=0, done=1), 1.0).percent == 25
    empty = display.frame(snap(found=0, found_bytes=0), 2.0)
    assert empty.percent == 100 and "0/0 files" in empty.text()


def test_files_done_never_shown_above_the_total() -> None:
    frame = Display(0.0).frame(snap(found=3, done=5, done_bytes=1000), 1.0)
    assert "3/3 files" in frame.text()


def test_an_all_skipped_run_says_it_was_up_to_date() -> None:
    frame = Display(0.0).frame(snap(found=7, done=7, done_bytes=1000, skipped=7, skipped_bytes=1000), 1.0,
                               closing=True)
    assert frame.percent == 100 and "up to date: 7 files skipped" in frame.text()
    partly = Display(0.0).frame(snap(found=7, done=7, done_bytes=1000, skipped=3, skipped_bytes=300), 1.0,
                                closing=True)
    assert "up to date" not in partly.text() and "3 skipped" in partly.text()


def test_rates_are_of_copied_bytes_and_binary_units() -> None:
    display = Display(0.0)
    # 10 MiB processed in 2 s, of which 6 MiB were up to date: 2.0 MiB/s copied, as the summary counts.
    frame = display.frame(snap(found_bytes=20 * MiB, done_bytes=10 * MiB, skipped_bytes=6 * MiB), 2.0)
    assert "2.0 MiB/s" in frame.text()
    assert "10.0/20.0 MiB" in frame.text()
    # The ETA goes by processed bytes (skipped ones pass quickly too): 10 MiB left at 5 MiB/s.
    assert "ETA 0:02" in frame.text()


def test_closing_frame_has_average_rate_and_elapsed_time() -> None:
    display = Display(0.0)
    display.frame(snap(found_bytes=100 * MiB, done_bytes=90 * MiB), 1.0)
    last = display.frame(snap(found_bytes=100 * MiB, done_bytes=100 * MiB, done=10), 80.0, closing=True)
    assert "ETA" not in last.text() and "in 1:20" in last.text() and "1.2 MiB/s" in last.text()


def test_eta_counts_down_through_jitter_and_rises_when_the_copy_slows() -> None:
    display = Display(0.0)
    eta = [display.remaining(snap(found_bytes=1000, done_bytes=d), rate, t)
           for t, d, rate in ((1.0, 100, 100.0), (2.0, 180, 80.0), (3.0, 300, 120.0))]
    # 9.0 s, then 10.25 s (within the slack of the countdown, 8.0): held at the countdown 8.0,
    # then 5.83 s: fresh and lower, taken.
    assert eta == [9.0, 8.0, pytest.approx(700 / 120)]
    # The rate falls to a fifth: a real slowdown is shown, not hidden by the countdown.
    slower = display.remaining(snap(found_bytes=1000, done_bytes=320), 24.0, 4.0)
    assert slower == pytest.approx(680 / 24)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00"), (7.4, "0:07"), (754, "12:34"), (3723, "1:02:03")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_pair_shares_the_unit() -> None:
    assert format_pair(int(1.1 * (1 << 30)), int(2.4 * (1 << 30))) == "1.1/2.4 GiB"
    assert format_pair(512 * MiB, int(2.4 * (1 << 30))) == "512.0 MiB/2.4 GiB"


# -- the tqdm line and its thread ---------------------------------------------------------------

def frames_of(output: str) -> list[str]:
    return [f.strip() for f in re.split(r"[\r\n]", output) if f.strip()]


def test_the_thread_redraws_while_the_main_thread_is_busy() -> None:
    out = io.StringIO()
    bar = TqdmProgress(stream=out, refresh_s=0.02)
    bar.add_names(2)
    bar.walk_done()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # busy, never calling into the sink (a long walk)
        pass
    bar.add_sizes(2, 2048)
    bar.advance(2048, 2)
    bar.close()
    frames = frames_of(out.getvalue())
    # ~50 ticks in 1 s; a loaded machine gets fewer (7 of 25 seen in 0.5 s at load 30), and
    # without the thread there would be two (the first and the last).
    assert len(frames) >= 6, frames
    assert all("counting" in f for f in frames[:-2])
    assert "100%" in frames[-1] and "2/2 files" in frames[-1] and "2.0/2.0 KiB" in frames[-1]
    assert out.getvalue().endswith("\n")


def test_a_bar_made_after_the_copy_ended_is_drawn_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """The display thread may make the tqdm bar only after a quick copy is over: its first
    frame then says 100 %, and its bar must say so too."""
    gate = threading.Event()

    def late_columns(stream: Any) -> int:
        gate.wait(5)  # the thread stops here, before its first frame, until the copy is over
        return 100

    monkeypatch.setattr(pcopy.progress, "_columns", late_columns)
    out = io.StringIO()
    bar = TqdmProgress(stream=out, refresh_s=10)
    bar.add_found(2, 2048)
    bar.walk_done()
    bar.advance(2048, 2)
    gate.set()
    bar.close()
    frames = frames_of(out.getvalue())
    assert frames and all(re.match(r"pcopy: 100%\|#+\|", f) for f in frames), frames


def test_close_twice_draws_once() -> None:
    out = io.StringIO()
    bar = TqdmProgress(stream=out)
    bar.close()
    text = out.getvalue()
    bar.close()
    assert out.getvalue() == text


def test_a_closed_stream_does_not_break_the_copy() -> None:
    out = io.StringIO()
    bar = TqdmProgress(stream=out, refresh_s=0.01)
    out.close()
    time.sleep(0.05)
    bar.advance(1, 1)
    bar.close()  # no exception: the display gives up, the copy goes on


def test_sinks_follow_the_protocol() -> None:
    assert isinstance(NullProgress(), ProgressSink)
    assert isinstance(CallbackProgress(print), ProgressSink)
    bar = TqdmProgress(stream=io.StringIO())
    assert isinstance(bar, ProgressSink)
    bar.close()


# -- what the runner reports, on real trees ------------------------------------------------------

class Recorder(Tally):
    """A sink that only counts (the runner's calls, exactly as a display would get them)."""

    active = True

    def close(self) -> None:
        self.closed = self.snapshot()


def make_tree(root: Path) -> tuple[int, int]:
    """Files in several directories, a hard-linked file with three names, a symlink, an empty
    file, a 3 MiB file; returns (names, distinct bytes)."""
    names = total = 0
    for d in range(3):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(40):
            data = os.urandom(100 + 37 * i)
            (root / f"d{d}" / f"f{i}").write_bytes(data)
            names += 1
            total += len(data)
    (root / "linked").write_bytes(b"x" * 5000)
    os.link(root / "linked", root / "d0" / "second")
    os.link(root / "linked", root / "d1" / "third")
    (root / "big").write_bytes(os.urandom(3 * MiB))
    (root / "empty").write_bytes(b"")
    os.symlink("big", root / "link-to-big")
    return names + 6, total + 5000 + 3 * MiB


@pytest.mark.parametrize("options", [
    {"jobs": 1}, {"jobs": 2}, {"jobs": 2, "chunk_size": MiB}, {"jobs": 2, "dry_run": True},
])
def test_runner_counts_a_tree_exactly(tmp_path: Path, options: dict[str, Any]) -> None:
    names, total = make_tree(tmp_path / "src")
    sink = Recorder()
    report = pcopy.copy(tmp_path / "src", tmp_path / "dst", progress=sink, **options)
    assert report.exit_code == 0
    end = sink.closed
    assert end.final and end.complete
    assert (end.files_found, end.bytes_found) == (names, total)  # the hard-linked inode once
    assert (end.files_done, end.bytes_done) == (names, total)
    assert end.skipped == 0


def test_runner_counts_a_rerun_as_skipped(tmp_path: Path) -> None:
    names, total = make_tree(tmp_path / "src")
    pcopy.copy(tmp_path / "src", tmp_path / "dst", jobs=2)
    sink = Recorder()
    report = pcopy.copy(tmp_path / "src", tmp_path / "dst", jobs=2, chunk_size=MiB, progress=sink)
    end = sink.closed
    assert report.skipped == names == end.skipped  # links already in place count as skipped too
    assert end.complete and (end.files_done, end.bytes_done) == (names, total)
    assert end.skipped_bytes == total


def test_runner_counts_every_name_without_hard_links(tmp_path: Path) -> None:
    names, total = make_tree(tmp_path / "src")
    sink = Recorder()
    pcopy.copy(tmp_path / "src", tmp_path / "dst", jobs=2, preserve_hard_links=False, progress=sink)
    end = sink.closed
    assert end.complete and (end.files_found, end.bytes_found) == (names, total + 2 * 5000)


def test_runner_counts_a_single_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"y" * 12345)
    sink = Recorder()
    pcopy.copy(tmp_path / "f", tmp_path / "g", progress=sink)
    assert sink.closed.complete and sink.closed[:4] == (1, 12345, 1, 12345)


def test_callback_sees_bytes_done_reach_the_total_with_hard_links(tmp_path: Path) -> None:
    names, total = make_tree(tmp_path / "src")
    calls: list[tuple[int, int, int]] = []
    pcopy.copy(tmp_path / "src", tmp_path / "dst", jobs=2,
               progress=lambda done, tot, files: calls.append((done, tot, files)))
    assert calls[-1] == (total, total, names)
    assert all(done <= tot for done, tot, _ in calls)


def test_a_progress_object_that_is_neither_is_refused_before_copying(tmp_path: Path) -> None:
    class OldSink:  # the protocol before add_found/add_names/...: not a ProgressSink any more
        active = True

        def add_total(self, nbytes: int) -> None: ...
        def advance(self, nbytes: int, files: int) -> None: ...
        def close(self) -> None: ...

    (tmp_path / "f").write_bytes(b"z")
    with pytest.raises(TypeError, match="progress must be"):
        pcopy.copy(tmp_path / "f", tmp_path / "g", progress=OldSink())  # type: ignore[arg-type]
    assert not (tmp_path / "g").exists()


# -- what a run with a bar leaves behind, and a display thread that never ends -------------------

def _small_tree(root: Path, dirs: int = 4, files: int = 30) -> None:
    """Enough directories that a pool (and, with a bar, the Manager) starts."""
    for d in range(dirs):
        sub = root / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(files):
            (sub / f"f{f}").write_bytes(b"x" * (100 + f))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A TMPDIR short enough for pcopy to keep its Manager's socket in it (a pytest tmp_path
    can be too long for a socket's path: pcopy then uses /tmp, see the test of that)."""
    path = Path(tempfile.mkdtemp(prefix="pc-", dir="/tmp" if os.path.isdir("/tmp") else None))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _pcopy_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, TMPDIR=str(tmp))
    env.pop("COLUMNS", None)
    return env


@pytest.mark.skipif(sys.platform == "win32", reason="fork and forkserver")
@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_a_run_with_a_bar_leaves_nothing_in_the_temporary_directory(tmp_path: Path, short_tmp: Path,
                                                                   start_method: str) -> None:
    """The Manager's socket lived in a /tmp/pymp-* directory that only the Manager's own clean
    exit removes, and pcopy kills it: every run with a bar left one behind. The forkserver's
    socket is in such a directory too, which multiprocessing removes at exit, and pcopy leaves
    by os._exit."""
    _small_tree(tmp_path / "src")
    tmp = short_tmp
    proc = subprocess.run([sys.executable, "-m", "pcopy", str(tmp_path / "src"), str(tmp_path / "dst"),
                           "--progress", "-j", "2", "--start-method", start_method],
                          capture_output=True, env=_pcopy_env(tmp), timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert b"100%" in proc.stderr  # the bar (so the Manager) was there
    assert sorted(os.listdir(tmp)) == []


@pytest.mark.skipif(not os.path.isdir("/tmp"), reason="the fallback is /tmp")
def test_a_temporary_directory_too_long_for_a_socket_is_left_empty_too(tmp_path: Path) -> None:
    """A TMPDIR too long for a socket's path (a pytest tmp_path of 90-odd bytes was, in CI's
    checkout): the Manager's directory goes to /tmp, and is removed from there too. (Left to
    multiprocessing, a pymp-* directory stayed in TMPDIR.)"""
    _small_tree(tmp_path / "src")
    tmp = tmp_path / ("t" * 100)
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pcopy", str(tmp_path / "src"), str(tmp_path / "dst"),
                             "--progress", "-j", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_pcopy_env(tmp))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"100%" in err
    assert sorted(os.listdir(tmp)) == []
    assert [name for name in os.listdir("/tmp") if name.startswith(f"pcopy-{proc.pid}-")] == []


# pcopy, with a SIGINT sent to itself just as it removes its Manager's directory at the end.
SIGINT_AT_TEARDOWN = """
import os, signal, sys
from pcopy import executor
real = executor._remove_home
def interrupted(home):
    if home is not None:
        os.kill(os.getpid(), signal.SIGINT)  # (handled at the next bytecode: before the removal)
    real(home)
executor._remove_home = interrupted
from pcopy.entry import main
main()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="the Manager's socket is a named pipe there: no directory")
def test_an_interrupt_during_the_teardown_still_removes_the_managers_directory(tmp_path: Path,
                                                                              short_tmp: Path) -> None:
    """The teardown (workers, Manager, its directory, the bar) is one deferred section: a signal
    that landed between the Manager's kill and its directory's removal left the directory (the
    Manager, killed, no longer removes it itself). A storm trial with TMPDIR on slowfs at 1 ms,
    where the removal takes milliseconds, met it: SIGINT at 1,005 ms of a 1.01 s copy."""
    _small_tree(tmp_path / "src")
    proc = subprocess.run([sys.executable, "-c", SIGINT_AT_TEARDOWN, str(tmp_path / "src"),
                           str(tmp_path / "dst"), "--progress", "-j", "2"],
                          capture_output=True, env=_pcopy_env(short_tmp), timeout=60, check=False)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.decode().endswith("\n") and b"Traceback" not in proc.stderr, proc.stderr
    assert sorted(os.listdir(short_tmp)) == []


# pcopy with a progress Manager that never answers: at its start (it never sends its address)
# or at the progress queue's creation (it never replies); a 1 s deadline instead of 10.
MANAGER_HANGS = """
import sys, time
from multiprocessing import managers
from pcopy import executor
executor.MANAGER_START_S = 1.0
def hang(*args, **kwargs):
    time.sleep(120)
if sys.argv.pop(1) == "start":
    executor._init_manager = hang
else:
    managers.Server.create = hang
from pcopy.entry import main
main()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="fork: the patches reach the Manager")
@pytest.mark.parametrize("where", ["start", "queue"])
def test_a_manager_that_never_answers_costs_the_bar_not_the_copy(tmp_path: Path, short_tmp: Path,
                                                                  where: str) -> None:
    """The Manager's start waits for its address, and the queue's creation for its reply, with
    no limit of multiprocessing's (the start with signals held back, so a SIGTERM waited too).
    A deadline kills a Manager that does not answer: the copy goes on without the workers'
    progress, and nothing is left behind."""
    _small_tree(tmp_path / "src")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", MANAGER_HANGS, where, str(tmp_path / "src"),
                           str(tmp_path / "dst"), "--progress", "-j", "2", "--start-method", "fork"],
                          capture_output=True, env=_pcopy_env(short_tmp), timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 30
    assert_same_tree(tmp_path / "src", tmp_path / "dst", atime=False)  # (the copy's reads move atimes)
    assert sorted(os.listdir(short_tmp)) == []


def test_the_manager_removes_its_directory_when_pcopy_is_killed(tmp_path: Path, short_tmp: Path) -> None:
    """SIGKILLed, pcopy cannot clean up; its Manager notices and removes its socket's directory."""
    _small_tree(tmp_path / "src", dirs=8, files=400)
    tmp = short_tmp
    proc = subprocess.Popen([sys.executable, "-m", "pcopy", str(tmp_path / "src"), str(tmp_path / "dst"),
                             "--progress", "-j", "2", "--buffer-size", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_pcopy_env(tmp))
    try:
        deadline = time.monotonic() + 30
        # (tempfile.gettempdir, which pcopy asks for TMPDIR, checks it by writing and removing a
        # file of its own there: a listing can catch that one, so wait for the directory itself.)
        while (not any(name.startswith("pcopy-") for name in os.listdir(tmp)) and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.005)
        assert proc.poll() is None, "the copy ended before its Manager was seen: make the tree larger"
        assert [name for name in os.listdir(tmp) if name.startswith("pcopy-")] != []
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while os.listdir(tmp) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(tmp) == []


STUCK_IMPORT = """
import _imp, io, sys, time
import pcopy.progress as progress

progress.CLOSE_WAIT_S = 0.5
# What a Ctrl-C landing inside importlib can leave: the import lock held by the main thread for
# good. The display thread's `from tqdm import tqdm` then waits for it forever.
_imp.acquire_lock()
bar = progress.TqdmProgress(stream=io.StringIO(), refresh_s=0.05)
time.sleep(0.2)
started = time.monotonic()
bar.close()
print(round(time.monotonic() - started, 2), "tqdm" in sys.modules, flush=True)
"""


def test_close_does_not_wait_forever_for_a_display_thread_stuck_in_an_import() -> None:
    proc = subprocess.run([sys.executable, "-c", STUCK_IMPORT], capture_output=True, text=True, timeout=30,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    waited, imported = proc.stdout.split()
    assert 0.4 <= float(waited) < 5 and imported == "False", proc.stdout


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2")
def test_with_pcopy_debug_stacks_sigusr2_prints_every_threads_stack(tmp_path: Path) -> None:
    """What the storm does to a trial that hangs: SIGUSR2 to pcopy's process group, a second
    for the dumps, then SIGKILL. With PCOPY_DEBUG_STACKS set (the storm sets it) pcopy.entry
    has registered SIGUSR2 with faulthandler, so the stacks are on stderr. Reading the stacks of
    threads that run is not safe (why it is off by default): a dump can crash part-way through
    its first stack (CI once got a single importlib frame, then "File ???"), so the stacks must
    start every time and reach one of pcopy's frames in one of up to eight runs (measured: 3 of 12
    dumps crashed the parent, SIGSEGV, before any pcopy frame)."""
    _small_tree(tmp_path / "src", dirs=8, files=400)
    for attempt in range(8):
        dst = tmp_path / f"dst{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "pcopy", str(tmp_path / "src"), str(dst),
                                 "--progress", "-j", "2", "--buffer-size", "1024"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                env=dict(_pcopy_env(tmp_path), PCOPY_DEBUG_STACKS="1"))
        deadline = time.monotonic() + 30
        while not (tmp_path / f".{dst.name}.pcopy-new").exists() and time.monotonic() < deadline:
            time.sleep(0.005)  # (the stage exists: pcopy.entry ran long before)
        assert proc.poll() is None, "the copy ended before the signal: make the tree larger"
        os.killpg(proc.pid, signal.SIGUSR2)
        time.sleep(1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert b"most recent call first" in err, err[-2000:]
        if b"pcopy/" in err:
            return
    pytest.fail(f"no pcopy frame in 8 dumps; the last: {err[-2000:]!r}")
