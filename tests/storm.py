"""A signal storm: pcopy interrupted, its workers killed, at random moments, many times, with
every guarantee of docs/interruption.md checked on every trial.

Used by tests/test_storm.py (a bounded number of trials, in CI) and by hand for long runs:

    .venv/bin/python tests/storm.py --trials 300 --rows all --jobs 8 [--seed N] [--tree DIR] [--threads 8]
        [--start-method forkserver]

Rows (what is done to a running `pcopy SRC DST -j N`):
    int, term          SIGINT / SIGTERM to pcopy alone
    int-bar, term-bar  the same with a bar (--progress): its display thread and the Manager
    group-int/-term    the same to its whole process group (what Ctrl-C in a terminal does)
    twice              SIGINT, then a second SIGINT 0-100 ms later (to the group)
    kill-worker        SIGKILL of one worker: the copy must still complete (exit 0)
    kill-parent        SIGKILL of pcopy: its workers must be gone within 1 s
    kill-manager       SIGKILL of the progress Manager (--progress): the copy must complete
The moment is uniform over the copy's duration, with a third of the trials in its first 150 ms
(interpreter start, imports, pool start-up).

Checked on every trial: exit code (130/143 by the first signal; 0 if the copy ended first; 0
for worker/Manager kills), exit within 2 s of the first signal, at most one line on stderr
besides a bar's frames and no traceback, no temporary file left (nor anything in pcopy's
TMPDIR), no process of pcopy's alive 1 s after it exits, every file under its final name
identical to its source, and a re-run that completes the copy (exit 0, identical tree).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pcopy.stage import stage_path

ROWS = ("int", "term", "int-bar", "term-bar", "group-int", "group-term", "twice", "kill-worker", "kill-parent",
        "kill-manager")
BAR_ROWS = ("int-bar", "term-bar", "kill-manager")  # run with --progress
# A frame of the bar (docs/progress.md), not a line of pcopy's own.
BAR_FRAME = re.compile(r"pcopy: (counting \||\s*\d+%)")
EARLY_S = 0.15  # the first moments: interpreter start, imports, pool start-up
EXIT_BOUND_S = 2.0  # a signalled pcopy ends within this
GONE_BOUND_S = 1.0  # no process of pcopy's is alive this long after it ended


def make_tree(root: Path, large: int, large_mib: int, small: int, small_kib: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    block = rng.randbytes(1 << 20)
    for i in range(large):
        with open(root / f"large{i}.bin", "wb") as fh:
            for j in range(large_mib):
                fh.write(block[j:] + block[:j])
    for d in range(max(1, small // 200)):
        (root / f"d{d:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(small):
        start = rng.randrange(0, len(block) - small_kib * 1024)
        (root / f"d{i % max(1, small // 200):02d}" / f"f{i:05d}.dat").write_bytes(
            block[start:start + small_kib * 1024])


def pcopy_command() -> list[str]:
    """The console script next to this interpreter (as users run pcopy), else python -m pcopy."""
    script = Path(sys.executable).parent / "pcopy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pcopy"]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group pgid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def pool_processes(pid: int) -> list[int]:
    """pcopy's workers and Manager: its children, except multiprocessing's helpers (the resource
    tracker; the fork server, whose children they are under forkserver)."""
    found = []
    for child in children_of(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing.forkserver" in cmdline:
            found += children_of(child)
        elif b"multiprocessing.resource_tracker" not in cmdline:
            found.append(child)
    return found


def digest_tree(root: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = (path.stat().st_size, hashlib.blake2b(path.read_bytes()).hexdigest())
    return out


@dataclass
class Trial:
    row: str
    delay_s: float
    code: int | None = None
    problems: list[str] = field(default_factory=list)
    # The signal came before pcopy's first line had run (the interpreter was still starting):
    # see handles_sigterm. Only the weaker guarantees hold there (docs/interruption.md).
    before_pcopy: bool = False
    # The twice row's second SIGINT: when it was sent, and whether pcopy's handlers were in place.
    second: tuple[int, float] | None = None
    second_before_pcopy: bool = False


# Reports the interpreter prints of a KeyboardInterrupt it swallowed while starting, before it
# goes on: the SIGINT is lost before pcopy's first line runs. Python 3.11's site, running a .pth
# file's import line (an editable install's finder imports pathlib), wraps one that lands in a
# class body's __set_name__ in a RuntimeError; and its check whether the script (argv[0]) is an
# import path entry (zipimport reading the console script) prints one with "Failed checking if
# argv[0] is an import path entry" (Modules/main.c, pymain_get_importer); and one that lands in
# the weakref callback of an import's module lock (importlib's _get_module_lock) is "Exception
# ignored in" it (a SIGINT at 4-30 ms: 3 of 800 runs, and one CI storm trial at 11 ms).
STARTUP_REPORT = re.compile(
    r"Error processing line \d+ of [^\n]*\.pth:\n.*?\nRemainder of file ignored\n"
    # (only the interpreter's own frozen frames, so a traceback of pcopy's after it is never
    # taken for part of it)
    r"|(?:Failed checking if argv\[0\] is an import path entry"
    r"|Exception ignored in: <function _get_module_lock\.<locals>\.cb at 0x[0-9a-f]+>)"
    r"\nTraceback \(most recent call last\):\n"
    r"(?:(?!  File \"[^<])(?!\npcopy: ).)*?\nKeyboardInterrupt:? ?\n", re.DOTALL)


def startup_reports(err: str) -> tuple[int, str]:
    """How many of the interpreter's reports of a swallowed KeyboardInterrupt begin err, and the
    rest."""
    taken = 0
    while (match := STARTUP_REPORT.match(err)) and "KeyboardInterrupt" in match.group(0):
        taken, err = taken + 1, err[match.end():]
    return taken, err


def handles_sigterm(pid: int) -> bool:
    """Whether pcopy's own signal handling is in place in process pid: the interpreter itself
    catches only SIGINT, pcopy's entry catches SIGTERM too (the SigCgt mask in /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except OSError:
        pass
    return False


def stage_of(dst: Path) -> Path:
    """Where pcopy writes a new DST until it is complete (pcopy.stage)."""
    return Path(stage_path(str(dst)))


@dataclass
class Storm:
    src: Path
    work: Path
    jobs: int
    extra: list[str]
    source_digest: dict[str, tuple[int, str]] = field(default_factory=dict)
    duration_s: float = 1.0  # a whole uninterrupted copy, measured

    def prepare(self) -> None:
        self.source_digest = digest_tree(self.src)
        times = []
        for _ in range(2):
            dst = self.work / "calibrate"
            shutil.rmtree(dst, ignore_errors=True)
            start = time.monotonic()
            subprocess.run([*pcopy_command(), str(self.src), str(dst), "-j", str(self.jobs), "-q", *self.extra],
                           check=True, stdin=subprocess.DEVNULL)
            times.append(time.monotonic() - start)
        shutil.rmtree(self.work / "calibrate", ignore_errors=True)
        self.duration_s = min(times)

    @property
    def tmp(self) -> Path:
        """pcopy's TMPDIR (the progress Manager's socket directory goes there)."""
        return self.work / "tmp"

    def _check_tmp(self, row: str, problems: list[str]) -> None:
        left = sorted(os.listdir(self.tmp))
        if row == "kill-parent" and "forkserver" in self.extra:
            # The fork server's socket directory: multiprocessing's, removed by pcopy's exit
            # (command.leave), which a SIGKILL skips (a known limit, docs/interruption.md).
            left = [name for name in left if not name.startswith("pymp-")]
        if left:
            problems.append(f"left in TMPDIR: {left}")
        shutil.rmtree(self.tmp, ignore_errors=True)

    def moment(self, rng: random.Random) -> float:
        if rng.random() < 1 / 3:
            return rng.uniform(0, EARLY_S)
        return rng.uniform(0, self.duration_s * 1.1)

    def run(self, row: str, rng: random.Random) -> Trial:
        trial = Trial(row, self.moment(rng))
        dst = self.work / "dst"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.rmtree(stage_of(dst), ignore_errors=True)
        args = [*pcopy_command(), str(self.src), str(dst), "-j", str(self.jobs), *self.extra]
        args.append("--progress" if row in BAR_ROWS else "--no-progress")
        self.tmp.mkdir(exist_ok=True)
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True,
                                env=dict(os.environ, TMPDIR=str(self.tmp), PCOPY_DEBUG_STACKS="1"))
        first_signal = self._act(row, proc, trial, rng)
        try:
            _, err_bytes = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # Every thread's stack, from pcopy and its children (with PCOPY_DEBUG_STACKS,
            # pcopy.entry registers SIGUSR2 with faulthandler), goes into the failure: a hang
            # that CI met once (term-bar, 30 s, nothing on stderr) is then seen.
            with contextlib.suppress(ProcessLookupError):  # (SIGUSR2 ends what did not register it)
                os.killpg(proc.pid, signal.SIGUSR2)
                time.sleep(1)
                os.killpg(proc.pid, signal.SIGKILL)
            _, err_bytes = proc.communicate()
            trial.problems.append("hung: still running 30 s after the trial's action; stacks: "
                                  + err_bytes.decode("utf-8", "replace")[-6000:])
        ended = time.monotonic()
        trial.code = proc.returncode
        err = err_bytes.decode("utf-8", "replace")
        self._check(row, trial, proc, first_signal, ended, err, dst)
        return trial

    def _act(self, row: str, proc: subprocess.Popen[bytes], trial: Trial,
             rng: random.Random) -> tuple[int, float] | None:
        """Do the row's action at the trial's moment; returns (signal, when) for signal rows."""
        time.sleep(trial.delay_s)
        now = time.monotonic()
        if proc.poll() is not None:
            return None  # the copy ended before the moment came
        trial.before_pcopy = not handles_sigterm(proc.pid)
        try:
            if row in ("int", "term", "int-bar", "term-bar"):
                sig = signal.SIGINT if row.startswith("int") else signal.SIGTERM
                os.kill(proc.pid, sig)
                return sig, now
            if row in ("group-int", "group-term", "twice"):
                sig = signal.SIGTERM if row == "group-term" else signal.SIGINT
                os.killpg(proc.pid, sig)
                if row == "twice":
                    time.sleep(rng.uniform(0, 0.1))
                    trial.second_before_pcopy = not handles_sigterm(proc.pid)
                    trial.second = signal.SIGINT, time.monotonic()
                    os.killpg(proc.pid, signal.SIGINT)
                return sig, now
            if row == "kill-parent":
                os.kill(proc.pid, signal.SIGKILL)
                return signal.SIGKILL, now
            if row in ("kill-worker", "kill-manager"):
                victims = [p for p in pool_processes(proc.pid) if self._is_role(p, row)]
                if victims:
                    os.kill(rng.choice(victims), signal.SIGKILL)
                return None
        except ProcessLookupError:
            pass
        return None

    @staticmethod
    def _is_role(pid: int, row: str) -> bool:
        """Workers and the Manager are both children of pcopy; the Manager is the one that was
        started first (lowest pid of a run is not reliable: use its thread count: a Manager
        serves each connection from a thread of its own, a worker has two threads)."""
        try:
            threads = len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            return False
        is_manager = threads > 2
        return is_manager if row == "kill-manager" else not is_manager

    def _check(self, row: str, trial: Trial, proc: subprocess.Popen[bytes], first: tuple[int, float] | None,
               ended: float, err: str, dst: Path) -> None:
        problems = trial.problems
        code = proc.returncode
        taken, rest = startup_reports(err)
        if taken and trial.before_pcopy and row in ("int", "int-bar", "group-int", "twice"):
            # Python's start-up took the first SIGINT before pcopy's first line and went on
            # (see startup_reports): pcopy itself saw only what came after it.
            err = rest
            if row == "twice" and trial.second is not None and taken == 1:
                first, trial.before_pcopy = trial.second, trial.second_before_pcopy
            else:
                first, trial.before_pcopy = None, False
        if trial.before_pcopy and code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            # pcopy's handler answered, so its handlers were in place when the signal landed:
            # the storm was descheduled between reading /proc and sending it (a loaded machine).
            trial.before_pcopy = False
        if trial.before_pcopy and first is not None and row != "kill-parent":
            # Python's own start-up: SIGTERM's default action or a KeyboardInterrupt, before
            # pcopy did anything. What must still hold: nothing written, nothing left running.
            if dst.exists():
                problems.append(f"signalled before pcopy started, yet DST exists (stderr: {err[:600]!r})")
            self._check_gone(proc.pid, ended, problems)
            self._check_tmp(row, problems)
            return
        if first is None or row in ("kill-worker", "kill-manager"):
            if code != 0:
                problems.append(f"exit {code}, expected 0 (stderr: {err.strip()[-300:]!r})")
        elif row == "kill-parent":
            if code == 0:
                # It exited between the storm's last look (poll) and the kill, which then hit a
                # process already ended: the copy finished, so it must be whole.
                if not dst.exists() or digest_tree(dst) != self.source_digest:
                    problems.append("exit 0 as SIGKILL was sent, yet the copy is not complete")
            elif code != -signal.SIGKILL:
                problems.append(f"exit {code} after SIGKILL")
        else:
            sig, sent = first
            if code != 128 + sig and code != 0:
                problems.append(f"exit {code}, expected {128 + sig} (stderr: {err.strip()[-300:]!r})")
            if ended - sent > EXIT_BOUND_S:
                problems.append(f"ended {ended - sent:.2f} s after the signal")
        lines = [line for line in err.splitlines() if line.strip() and not BAR_FRAME.match(line.strip())]
        if "Traceback" in err or "Exception ignored" in err:
            problems.append(f"traceback on stderr: {err[-500:]!r}")
        elif len(lines) > 1:
            problems.append(f"{len(lines)} lines on stderr: {err[-300:]!r}")
        self._check_gone(proc.pid, ended, problems)
        self._check_tmp(row, problems)
        # A new DST is written in its stage (pcopy.stage), kept by an interrupted run: its files
        # may be partial (it is not DST), its temporary files must be gone all the same.
        stage = stage_of(dst)
        temps = [n for where in (dst, stage) for _, _, files in os.walk(where) for n in files if ".pcopy-" in n]
        if temps and (row != "kill-parent" or code == 0):  # a SIGKILLed pcopy cannot clean up: the re-run does
            problems.append(f"temporary files left: {temps[:3]}")
        if stage.exists() and code in (128 + signal.SIGINT, 128 + signal.SIGTERM) and str(stage) not in err:
            problems.append(f"the stage was kept without saying so: {err[-300:]!r}")
        if stage.exists() and dst.exists():
            problems.append("both DST and its stage exist")
        if code == 0 and (stage.exists() or digest_tree(dst) != self.source_digest):
            problems.append("exit 0, yet the copy is not whole in DST")
        copied = digest_tree(dst) if dst.exists() else {}
        for rel, value in copied.items():
            if ".pcopy-" not in rel and self.source_digest.get(rel) != value:
                problems.append(f"{rel} under its final name differs from its source")
                break
        rerun = subprocess.run([*pcopy_command(), str(self.src), str(dst), "-j", str(self.jobs), "-q", *self.extra],
                               capture_output=True, stdin=subprocess.DEVNULL, check=False)
        if rerun.returncode != 0:
            problems.append(f"re-run exit {rerun.returncode}: {rerun.stderr.decode()[-300:]!r}")
        elif digest_tree(dst) != self.source_digest:
            problems.append("re-run did not complete the copy")
        elif stage.exists():
            problems.append("re-run left the stage behind")


    @staticmethod
    def _check_gone(pgid: int, ended: float, problems: list[str]) -> None:
        """No process of pcopy's process group alive GONE_BOUND_S after pcopy ended."""
        while (alive := group_members(pgid)) and time.monotonic() < ended + GONE_BOUND_S:
            time.sleep(0.02)
        if alive:
            problems.append(f"processes alive {GONE_BOUND_S} s after exit: {alive}")
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def run_storm(storm: Storm, rows: list[str], trials: int, seed: int, budget_s: float | None = None,
              report: Callable[[Trial], None] = lambda t: None) -> list[Trial]:
    """trials per row (interleaved), or fewer if budget_s runs out."""
    rng = random.Random(seed)
    done: list[Trial] = []
    start = time.monotonic()
    # A shell's background job (`make test &`) starts with SIGINT ignored, and an ignored signal
    # stays ignored across exec: every pcopy would start deaf to the storm's SIGINTs until its own
    # handler, and copy on through a signal sent before it. (A handler is reset to the default.)
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for _ in range(trials):
            for row in rows:
                if budget_s is not None and time.monotonic() - start > budget_s:
                    return done
                trial = storm.run(row, rng)
                done.append(trial)
                report(trial)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=300, help="trials per row")
    parser.add_argument("--rows", default="all", help="comma-separated rows, or all")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--large", type=int, default=4, help="large files (64 MiB each)")
    parser.add_argument("--small", type=int, default=2000, help="small files (64 KiB each)")
    parser.add_argument("--work", default=None, help="a directory for the trees (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=0,
                        help="pass --threads N to pcopy (threads inside workers: their stops are stormed too)")
    parser.add_argument("--start-method", default=None, choices=("fork", "forkserver", "spawn"),
                        help="pass --start-method to pcopy")
    args = parser.parse_args()
    rows = list(ROWS) if args.rows == "all" else args.rows.split(",")
    work = Path(args.work or tempfile.mkdtemp(prefix="pcopy-storm-"))
    src = work / "src"
    if not src.exists():
        src.mkdir(parents=True)
        make_tree(src, args.large, 64, args.small, 64)
    extra = ["--threads", str(args.threads)] if args.threads else []
    if args.start_method:
        extra += ["--start-method", args.start_method]
    storm = Storm(src, work, args.jobs, extra)
    storm.prepare()
    print(f"seed {args.seed}; a whole copy takes {storm.duration_s:.2f} s; rows {rows}", flush=True)
    tally: dict[str, list[int]] = {row: [0, 0, 0] for row in rows}

    def report(trial: Trial) -> None:
        if sum(n for n, _, _ in tally.values()) % 40 == 0:
            print(f"{time.strftime('%H:%M:%S')} {sum(n for n, _, _ in tally.values())} trials done", flush=True)
        tally[trial.row][0] += 1
        tally[trial.row][2] += trial.before_pcopy
        if trial.problems:
            tally[trial.row][1] += 1
            print(f"FAIL {trial.row} at {trial.delay_s * 1000:.0f} ms (exit {trial.code}): "
                  + "; ".join(trial.problems), flush=True)

    run_storm(storm, rows, args.trials, args.seed, report=report)
    print("row            trials  failures  before pcopy's first line")
    for row, (n, bad, early) in tally.items():
        print(f"{row:<14} {n:>6}  {bad:>8}  {early:>8}")
    return 1 if any(bad for _, bad, _ in tally.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
