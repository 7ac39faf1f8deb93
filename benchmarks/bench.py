"""pcopy's benchmark suite: pcopy against shutil.copytree, cp -a, rsync -a, rclone and the original
teaching copier, on the same seeded trees and the same target filesystems, every copy verified.

    python benchmarks/bench.py --quick            # reduced sizes, a few minutes (make bench)
    python benchmarks/bench.py --full             # the real sizes (make bench-full)
    python benchmarks/bench.py --workloads small,tiny --tools pcopy,shutil --targets tmpfs --reps 3

Method: for each workload and target, one untimed warm-up round, then --reps timed rounds in which
the tools alternate (A B C A B C ...). The destination is removed (and, on disk, `sync`ed) before
every run. A timed run counts only if the command exits 0 and the copy matches the source (type,
bytes, mode, mtime_ns, symlink targets; the categories a tool does not claim to preserve are
reported as notes, see Tool.unpreserved). Wall time covers the whole command, interpreter start-up
included. Memory is polled from /proc: the parent's VmHWM and the peak sum of VmRSS over the
process tree.

Writes RESULTS.md (tables, pass/fail lines for pcopy's speed targets, the machine), results.json
(every run) and chart.png into benchmarks/work/results/ (untracked); with --publish, into the
tracked benchmarks/RESULTS.md and benchmarks/results/, which the README quotes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sample_tree import describe_tree, make_tree  # noqa: E402  (a sibling script, not a package)

MIB = 1024 * 1024
WORK = HERE / "work"
SRC_ROOT = WORK / "src"
# Where a run's results go: an untracked place, unless --publish (the tracked files the docs quote).
DEFAULT_OUT = WORK / "results"
DEFAULT_MARKDOWN = WORK / "results" / "RESULTS.md"
PUBLISH_OUT = HERE / "results"
PUBLISH_MARKDOWN = HERE / "RESULTS.md"
PYTHON = sys.executable
BIN_DIR = Path(sys.executable).parent

# The parent's /proc status is read this often (~30 us a read), so that even a 0.1 s command
# gives several samples; its VmHWM is a high-water mark, so only growth in the last interval
# before exit can be missed. The process tree is rescanned every TREE_SCAN_EVERY samples: a scan
# of /proc costs ~1.3 ms here, and every 50 ms keeps the monitor under ~3% of one core.
SAMPLE_INTERVAL_S = 0.01
TREE_SCAN_EVERY = 5

# A run that takes longer than this is killed and recorded as a failure rather than hanging.
RUN_TIMEOUT_S = 3600.0

# Verification categories (see verify()). Differences in other categories always fail a run.
CATEGORIES = ("missing", "extra", "type", "content", "file_mode", "file_mtime", "dir_mode",
              "dir_mtime", "link_target")


# --------------------------------------------------------------------------------------------
# Workloads


@dataclass(frozen=True)
class Workload:
    """A seeded tree; the same fields always generate the same tree (sample_tree.make_tree)."""

    name: str
    group: str  # tiny, small, large, huge, mixed or scale
    files: int
    dirs: int
    large: int = 0
    large_mib: int = 0
    symlinks: int = 0
    empty_dirs: int = 0
    seed: int = 1


def make_workloads(full: bool, scale_sizes: Sequence[int] | None) -> dict[str, list[Workload]]:
    """Workload groups at full or quick size. Quick keeps the shape, shrinks the bytes/counts."""
    if full:
        groups = {
            "tiny": [Workload("tiny", "tiny", 10, 0)],
            "small": [Workload("small", "small", 20_000, 200, symlinks=20, empty_dirs=5)],
            "large": [Workload("large", "large", 0, 0, large=8, large_mib=256)],
            "huge": [Workload("huge", "huge", 0, 0, large=1, large_mib=2048)],
            "mixed": [Workload("mixed", "mixed", 3000, 60, large=20, large_mib=32, symlinks=20,
                               empty_dirs=5)],
        }
        sizes = scale_sizes or (25_000, 50_000, 100_000, 200_000)
    else:
        groups = {
            "tiny": [Workload("tiny", "tiny", 10, 0)],
            "small": [Workload("small-q", "small", 5000, 50, symlinks=20, empty_dirs=5)],
            "large": [Workload("large-q", "large", 0, 0, large=4, large_mib=64)],
            "huge": [Workload("huge-q", "huge", 0, 0, large=1, large_mib=256)],
            "mixed": [Workload("mixed-q", "mixed", 1000, 20, large=4, large_mib=16, symlinks=20,
                               empty_dirs=5)],
        }
        # Large enough that pcopy's start-up (~0.2-0.3 s) does not dominate files/s.
        sizes = scale_sizes or (5000, 10_000, 20_000, 40_000)
    # ~100 files per directory, like the small workload.
    groups["scale"] = [Workload(f"scale-{n}", "scale", n, max(1, n // 100)) for n in sizes]
    return groups


def vary_modes(root: str) -> None:
    """Give some files and directories non-default modes (deterministically), so that a copier
    that does not preserve modes is caught: make_tree leaves everything at 0644/0755."""
    index = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            index += 1
            if index % 7 == 3:
                os.chmod(path, 0o600)
            elif index % 11 == 5:
                os.chmod(path, 0o755)
            elif index % 13 == 0:
                os.chmod(path, 0o444)
        for i, name in enumerate(sorted(dirnames)):
            if i % 5 == 4:
                os.chmod(os.path.join(dirpath, name), 0o750)


def build_tree(workload: Workload) -> Path:
    """The workload's source tree under benchmarks/work/src, generated once and reused while its
    parameters are unchanged (a marker file records them; a half-written tree is never reused)."""
    SRC_ROOT.mkdir(parents=True, exist_ok=True)
    root = SRC_ROOT / workload.name
    marker = SRC_ROOT / f"{workload.name}.json"
    params = dataclasses.asdict(workload)
    if root.is_dir() and marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    partial = SRC_ROOT / f"{workload.name}.partial"
    for old in (root, partial):
        if old.exists():
            shutil.rmtree(old)
    marker.unlink(missing_ok=True)
    started = time.perf_counter()
    make_tree(str(partial), workload.files, workload.dirs, workload.large, workload.large_mib,
              workload.seed, workload.symlinks, workload.empty_dirs)
    vary_modes(str(partial))
    os.rename(partial, root)
    marker.write_text(json.dumps(params))
    log(f"  generated {root} in {time.perf_counter() - started:.1f} s")
    # rsync 3.5.0 -a leaves the copy of a directory modified less than ~0.6 s before with its
    # own mtime (measured: source 0.13-0.58 s old wrong, 0.73 s and older right; cause not
    # traced): the tiny tree, copied right after it was made, failed verification 5 of 5 rounds.
    time.sleep(1.1)
    return root



def tree_size(desc: dict[str, tuple[object, ...]]) -> tuple[int, int]:
    """(regular files, bytes) of a described tree."""
    files = [v for v in desc.values() if v[0] == "file"]
    return len(files), sum(int(v[3]) for v in files)  # type: ignore[call-overload]


def verify(src: dict[str, tuple[object, ...]], dst: dict[str, tuple[object, ...]]) -> dict[str, list[str]]:
    """Differences between source and copy, by category (empty dict: a faithful copy)."""
    found: dict[str, list[str]] = {}

    def add(category: str, rel: str) -> None:
        found.setdefault(category, []).append(rel)

    for rel in src.keys() - dst.keys():
        add("missing", rel)
    for rel in dst.keys() - src.keys():
        add("extra", rel)
    for rel in src.keys() & dst.keys():
        a, b = src[rel], dst[rel]
        if a == b:
            continue
        if a[0] != b[0]:
            add("type", rel)
        elif a[0] == "link":
            add("link_target", rel)
        elif a[0] == "file":
            if a[3:] != b[3:]:
                add("content", rel)
            if a[1] != b[1]:
                add("file_mode", rel)
            if a[2] != b[2]:
                add("file_mtime", rel)
        elif a[0] == "dir":
            if a[1] != b[1]:
                add("dir_mode", rel)
            if a[2] != b[2]:
                add("dir_mtime", rel)
        else:
            add("type", rel)
    return found


# --------------------------------------------------------------------------------------------
# Tools


@dataclass(frozen=True)
class Tool:
    name: str
    label: str
    command: Callable[[Path, Path], list[str]]
    executable: str  # what must be on PATH (or exist) for the tool to run
    apt_package: str | None = None  # installed from Debian when missing
    # Verification categories the tool does not claim to preserve: reported, not failed.
    unpreserved: frozenset[str] = frozenset()
    env: dict[str, str] = field(default_factory=dict)


# pcopy is timed as users get it: a regular (not editable) pip install of this checkout into its
# own virtualenv, whose modules pip byte-compiles. The development install is editable: its
# import hook costs ~15 ms of start-up, and where PYTHONDONTWRITEBYTECODE is set every start
# compiles pcopy's modules from source (~30 ms) - neither is what a user of pcopy runs.
BENCH_VENV = WORK / "venv"
REPO = HERE.parent


def install_pcopy(allow_install: bool) -> None:
    """(Re)install this checkout into BENCH_VENV, so the times are those of the current code."""
    bench_pip = BENCH_VENV / "bin" / "pip"
    if not allow_install:
        if not (BENCH_VENV / "bin" / "pcopy").exists():
            log(f"--no-install: timing the pcopy of this environment ({BIN_DIR}), not {BENCH_VENV}")
        return
    quiet = ["--quiet", "--disable-pip-version-check"]
    if not bench_pip.exists():
        log(f"creating {BENCH_VENV} for a regular install of pcopy")
        subprocess.run([PYTHON, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run([str(bench_pip), "install", *quiet, str(REPO)], check=True)
    # --no-deps --force-reinstall: this checkout's code, whatever version number it carries.
    subprocess.run([str(bench_pip), "install", *quiet, "--no-deps", "--force-reinstall", str(REPO)],
                   check=True)


def pcopy_executable() -> str:
    for found in (BENCH_VENV / "bin" / "pcopy", BIN_DIR / "pcopy"):
        if found.exists():
            return str(found)
    return shutil.which("pcopy") or "pcopy"


def _pcopy(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda src, dst: [pcopy_executable(), str(src), str(dst), "--no-progress", "-q", *extra]


SHUTIL_SCRIPT = "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], symlinks=True)"

TOOLS: dict[str, Tool] = {tool.name: tool for tool in (
    Tool("pcopy", "pcopy (default -j)", _pcopy(), "pcopy"),
    Tool("pcopy-j1", "pcopy -j 1", _pcopy("-j", "1"), "pcopy"),
    Tool("pcopy-j2", "pcopy -j 2", _pcopy("-j", "2"), "pcopy"),
    Tool("pcopy-j4", "pcopy -j 4", _pcopy("-j", "4"), "pcopy"),
    Tool("pcopy-buf1024", "pcopy --buffer-size 1024", _pcopy("--buffer-size", "1024"), "pcopy"),
    Tool("shutil", "shutil.copytree (copy2, symlinks=True)",
         lambda src, dst: [PYTHON, "-c", SHUTIL_SCRIPT, str(src), str(dst)], PYTHON),
    Tool("cp", "cp -a", lambda src, dst: ["cp", "-a", str(src), str(dst)], "cp", "coreutils"),
    Tool("rsync", "rsync -a", lambda src, dst: ["rsync", "-a", f"{src}/", f"{dst}/"], "rsync", "rsync"),
    # --links: symlinks copied as symlinks (else rclone skips them); --create-empty-src-dirs: else
    # empty directories are dropped. Not used: -M/--metadata, which in rclone 1.60 fails on
    # dangling symlinks (chmod follows the link). So rclone keeps file mtimes but not modes, and
    # neither directory modes nor directory mtimes.
    Tool("rclone", "rclone copy --links --create-empty-src-dirs",
         lambda src, dst: ["rclone", "copy", "--links", "--create-empty-src-dirs", str(src), str(dst)],
         "rclone", "rclone", frozenset({"file_mode", "dir_mode", "dir_mtime"}),
         {"RCLONE_CONFIG": "/dev/null"}),  # no config file needed for local-to-local
    Tool("teaching", "teaching copier (Pool(3), 1 KiB loop)",
         lambda src, dst: [PYTHON, str(HERE / "teaching_copier.py"), str(src), str(dst)], PYTHON),
)}

# The scale workload exists to show pcopy's growth; cp is there as a cheap reference line.
SCALE_DEFAULT_TOOLS = ("pcopy", "cp")


def find_executable(tool: Tool) -> str | None:
    if tool.executable == "pcopy":
        found = pcopy_executable()
        return found if os.access(found, os.X_OK) else None
    if os.path.isabs(tool.executable):
        return tool.executable if os.access(tool.executable, os.X_OK) else None
    return shutil.which(tool.executable)


def ensure_tools(tools: list[Tool], allow_install: bool) -> dict[str, str]:
    """Install missing peers from Debian packages; returns {tool name: why it is missing}."""
    missing = [t for t in tools if find_executable(t) is None]
    packages = sorted({t.apt_package for t in missing if t.apt_package})
    if packages and allow_install:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            log(f"cannot install {packages}: needs root and apt-get")
        else:
            log(f"installing {packages} with apt-get")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            lock = ["-o", "DPkg::Lock::Timeout=300"]
            subprocess.run(["apt-get", *lock, "update", "-qq"], env=env, check=False)
            subprocess.run(["apt-get", *lock, "install", "-y", "-qq", *packages], env=env, check=False)
    reasons: dict[str, str] = {}
    for tool in tools:
        if find_executable(tool) is None:
            how = "apt-get install failed" if allow_install and tool.apt_package else "not installed"
            reasons[tool.name] = f"{tool.executable}: {how}"
    return reasons


def tool_version(tool: Tool) -> str:
    argv = {"cp": ["cp", "--version"], "rsync": ["rsync", "--version"],
            "rclone": ["rclone", "version"]}.get(tool.name)
    if tool.name.startswith("pcopy"):
        argv = [pcopy_executable(), "--version"]
    elif argv is None:
        return f"Python {platform.python_version()}"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return out.splitlines()[0].strip() if out else "unknown"


# --------------------------------------------------------------------------------------------
# Running one command and watching its memory


def _read_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM (KiB) of a process; empty when it is gone or a zombie."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", "rb") as fh:
        for line in fh:
            if line.startswith((b"VmRSS:", b"VmHWM:")):
                key, value = line.split(b":", 1)
                out[key.decode()] = int(value.split()[0])
    return out


def _descendants(pid: int) -> list[int]:
    """All processes below pid, from a scan of /proc/*/stat (this kernel lacks
    /proc/PID/task/TID/children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Field 4 (ppid) follows the command name, which is in parentheses and may hold spaces.
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class MemoryMonitor(threading.Thread):
    """Polls a running command: the parent's VmHWM and the peak of VmRSS summed over its tree.
    Samples are taken only once the child has exec'd (its cmdline differs from ours), so the
    forked copy of this script is never measured. (wait4's ru_maxrss is no substitute: execve
    folds the spawning process's own high-water mark into it, here this script's.)"""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stop = threading.Event()
        self.parent_peak_kib = 0
        self.tree_peak_kib = 0
        self.max_processes = 0
        self.samples = 0
        self.pids: list[int] = []
        with open("/proc/self/cmdline", "rb") as fh:
            self.own_cmdline = fh.read()

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(SAMPLE_INTERVAL_S)

    def sample(self) -> None:
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
            if not cmdline or cmdline == self.own_cmdline:
                return  # not exec'd yet, or already a zombie
            status = _read_status(self.pid)
        except (OSError, ValueError):
            return
        if "VmHWM" not in status:
            return
        total = status.get("VmRSS", 0)
        if self.samples % TREE_SCAN_EVERY == 0:
            self.pids = _descendants(self.pid)
        for child in self.pids:
            with contextlib.suppress(OSError, ValueError):  # it may have exited meanwhile
                total += _read_status(child).get("VmRSS", 0)
        self.samples += 1
        self.parent_peak_kib = max(self.parent_peak_kib, status["VmHWM"])
        self.tree_peak_kib = max(self.tree_peak_kib, total)
        self.max_processes = max(self.max_processes, 1 + len(self.pids))


@dataclass
class Run:
    """One execution of one tool; round 0 is the warm-up (not counted)."""

    workload: str
    group: str
    target: str
    tool: str
    round: int
    wall_s: float
    exit_code: int
    ok: bool
    failure: str | None
    not_preserved: dict[str, int]
    parent_peak_kib: int | None  # None: the command ended before the first sample
    tree_peak_kib: int | None
    processes: int
    samples: int
    loadavg: list[float]
    started: str


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):  # already gone
        os.killpg(pid, 9)


def run_command(argv: list[str], env: dict[str, str]) -> tuple[float, int, str, MemoryMonitor]:
    """Run argv to completion: (wall seconds, exit code, stderr tail, memory monitor)."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env=dict(os.environ, **env), start_new_session=True)
        monitor = MemoryMonitor(proc.pid)
        monitor.start()
        # Popen.wait(timeout) polls with sleeps of up to 50 ms, which would quantize every time;
        # a blocking wait returns the moment the command exits, and a timer enforces the limit.
        killer = threading.Timer(RUN_TIMEOUT_S, _kill_group, (proc.pid,))
        killer.start()
        proc.wait()
        wall = time.perf_counter() - started
        killer.cancel()
        monitor.stop.set()
        monitor.join()
        err.seek(0)
        tail = err.read()[-2000:].decode("utf-8", "replace").strip()
    return wall, proc.returncode, tail, monitor


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def measure(tool: Tool, workload: Workload, target: str, src: Path, dst: Path, round_no: int,
            src_desc: dict[str, tuple[object, ...]] | None) -> Run:
    """One run of tool on a fresh destination; verified against src_desc when given."""
    remove_tree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.sync()  # start from no dirty pages: the previous run's writeback must not land in this one
    load = list(os.getloadavg())
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    wall, code, err, monitor = run_command(tool.command(src, dst), tool.env)
    failure: str | None = None
    not_preserved: dict[str, int] = {}
    if code != 0:
        failure = f"exit code {code}: {err.splitlines()[-1] if err else 'no stderr'}"
    elif src_desc is not None:
        if not dst.is_dir():
            failure = "no copy was made"
        else:
            for category, paths in sorted(verify(src_desc, describe_tree(dst)).items()):
                if category in tool.unpreserved:
                    not_preserved[category] = len(paths)
                elif failure is None:
                    failure = f"wrong copy: {category} ({len(paths)} entries, e.g. {sorted(paths)[0]})"
    sampled = monitor.samples > 0
    return Run(
        workload=workload.name, group=workload.group, target=target, tool=tool.name, round=round_no,
        wall_s=wall, exit_code=code, ok=failure is None, failure=failure, not_preserved=not_preserved,
        parent_peak_kib=monitor.parent_peak_kib if sampled else None,
        tree_peak_kib=monitor.tree_peak_kib if sampled else None,
        processes=monitor.max_processes, samples=monitor.samples, loadavg=load, started=started)


# --------------------------------------------------------------------------------------------
# Summaries and targets


@dataclass
class Summary:
    workload: str
    group: str
    target: str
    tool: str
    files: int
    bytes: int
    runs: int
    failures: int
    failure: str | None
    median_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    vs_pcopy: float | None = None  # this tool's median time / pcopy default's (>1: pcopy faster)
    files_per_s: float | None = None
    mib_per_s: float | None = None
    parent_peak_mib: float | None = None
    tree_peak_mib: float | None = None
    not_preserved: dict[str, int] = field(default_factory=dict)
    missing: str | None = None


def summarise(runs: list[Run], sizes: dict[str, tuple[int, int]], missing: dict[str, str],
              plan: list[tuple[Workload, str, list[str]]]) -> list[Summary]:
    out: list[Summary] = []
    for workload, target, tool_names in plan:
        files, nbytes = sizes.get(workload.name, (0, 0))
        for name in tool_names:
            if name in missing:
                out.append(Summary(workload.name, workload.group, target, name, files, nbytes, 0, 0, None,
                                   missing=missing[name]))
                continue
            mine = [r for r in runs if r.workload == workload.name and r.target == target
                    and r.tool == name and r.round > 0]
            good = [r for r in mine if r.ok]
            bad = [r for r in mine if not r.ok]
            s = Summary(workload.name, workload.group, target, name, files, nbytes, len(mine), len(bad),
                        bad[0].failure if bad else None)
            if good:
                walls = [r.wall_s for r in good]
                s.median_s = statistics.median(walls)
                s.min_s, s.max_s = min(walls), max(walls)
                s.files_per_s = files / s.median_s
                s.mib_per_s = nbytes / MIB / s.median_s
                parents = [r.parent_peak_kib for r in good if r.parent_peak_kib is not None]
                trees = [r.tree_peak_kib for r in good if r.tree_peak_kib is not None]
                s.parent_peak_mib = max(parents) / 1024 if parents else None
                s.tree_peak_mib = max(trees) / 1024 if trees else None
                for r in good:
                    for category, count in r.not_preserved.items():
                        s.not_preserved[category] = max(s.not_preserved.get(category, 0), count)
            out.append(s)
        base = next((s for s in out if s.workload == workload.name and s.target == target
                     and s.tool == "pcopy"), None)
        for s in out:
            if (s.workload == workload.name and s.target == target and base is not None
                    and base.median_s and s.median_s):
                s.vs_pcopy = s.median_s / base.median_s
    return out


def _find(summaries: list[Summary], group: str, target: str, tool: str) -> list[Summary]:
    return [s for s in summaries if s.group == group and s.target == target and s.tool == tool]


def check_targets(summaries: list[Summary], targets: list[str],
                  groups: Sequence[str]) -> list[tuple[str, str]]:
    """pcopy's speed targets as (PASS/FAIL/N/A, explanation) lines, from the medians, for the
    workload groups that were selected (N/A: selected, but a tool was missing or failed)."""
    lines: list[tuple[str, str]] = []

    def one(group: str, target: str, tool: str) -> Summary | None:
        found = _find(summaries, group, target, tool)
        return found[0] if found and found[0].median_s else None

    def na(what: str, group: str, target: str, tools: Sequence[str]) -> None:
        why = []
        for tool in tools:
            found = _find(summaries, group, target, tool)
            if not found:
                why.append(f"{tool} not run")
            elif found[0].missing:
                why.append(f"{tool} missing")
            elif not found[0].median_s:
                why.append(f"{tool} failed: {found[0].failure}")
        lines.append(("N/A", f"{what}: {'; '.join(why) or 'no data'}"))

    def faster(group: str, target: str, peer: str, factor: float, what: str, strict: bool) -> None:
        mine, theirs = one(group, target, "pcopy"), one(group, target, peer)
        if mine is None or theirs is None or mine.median_s is None or theirs.median_s is None:
            na(what, group, target, ("pcopy", peer))
            return
        speedup = theirs.median_s / mine.median_s
        ok = speedup > factor if strict else speedup >= factor
        lines.append(("PASS" if ok else "FAIL",
                      f"{what}: pcopy {mine.median_s:.3f} s vs {peer} {theirs.median_s:.3f} s "
                      f"= {speedup:.2f}x"))

    for target in targets:
        if "small" in groups:
            faster("small", target, "shutil", 2.5, f"small [{target}] >= 2.5x faster than shutil.copytree",
                   False)
            # (issue 11: 1.2x cp -a, as well as 2.5x shutil; it was "faster than cp -a" before)
            faster("small", target, "cp", 1.2, f"small [{target}] >= 1.2x faster than cp -a", False)
            faster("small", target, "rsync", 1.0, f"small [{target}] faster than rsync -a", True)
        for group in ("large", "huge"):
            if group in groups:
                faster(group, target, "shutil", 1.5,
                       f"{group} [{target}] >= 1.5x faster than shutil.copytree", False)
                faster(group, target, "cp", 1.0, f"{group} [{target}] not slower than cp -a", False)
        tiny = one("tiny", target, "pcopy")
        if "tiny" not in groups:
            pass
        elif tiny is None or tiny.median_s is None:
            na(f"tiny [{target}] <= 0.15 s", "tiny", target, ("pcopy",))
        else:
            lines.append(("PASS" if tiny.median_s <= 0.15 else "FAIL",
                          f"tiny [{target}] <= 0.15 s wall: pcopy median {tiny.median_s:.3f} s"))
        if "scale" not in groups:
            continue
        if not any(s.group == "scale" and s.target == target for s in summaries):
            continue  # not planned on this target (quick mode runs scale on tmpfs only)
        scale = sorted((s for s in _find(summaries, "scale", target, "pcopy") if s.median_s),
                       key=lambda s: s.files)
        if len(scale) < 2:
            na(f"scale [{target}] files/s and parent RSS", "scale", target, ("pcopy",))
            continue
        rates = [s.files_per_s or 0.0 for s in scale]
        worst = max(abs(rate / rates[0] - 1) for rate in rates)
        shown = ", ".join(f"{s.files}: {s.files_per_s:.0f}" for s in scale)
        lines.append(("PASS" if worst <= 0.2 else "FAIL",
                      f"scale [{target}] files/s within +-20% of the {scale[0].files}-file rate: {shown} "
                      f"(worst {worst:+.0%})"))
        rss = [s.parent_peak_mib or 0.0 for s in scale]
        growth = rss[-1] / rss[0] - 1
        lines.append(("PASS" if growth <= 0.2 else "FAIL",
                      f"scale [{target}] parent peak RSS flat (<= +20% from {scale[0].files} to "
                      f"{scale[-1].files} files): " + ", ".join(f"{r:.1f}" for r in rss)
                      + f" MiB ({growth:+.0%})"))
    return lines


# --------------------------------------------------------------------------------------------
# Machine description and output


def mount_of(path: Path) -> str:
    """'fstype on mountpoint (options)' for the filesystem holding path: options such as
    discard or noatime change file-creation and deletion costs."""
    real = os.path.realpath(path)
    best = ("?", "/", "")
    with open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            mnt = parts[1]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[1]):
                best = (parts[2], mnt, parts[3])
    return f"{best[0]} on {best[1]} ({best[2]})"


def describe_machine(targets: dict[str, Path]) -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kib = int(fh.readline().split()[1])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "source_fs": mount_of(SRC_ROOT),
        "target_fs": {name: mount_of(path) for name, path in targets.items()},
        "loadavg_start": list(os.getloadavg()),
    }


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(machine: dict[str, Any], config: dict[str, Any], summaries: list[Summary],
             verdicts: list[tuple[str, str]], versions: dict[str, str], chart: str | None) -> str:
    out = [
        "# pcopy benchmark results", "",
        f"Mode: **{config['mode']}**, {config['reps']} timed round(s) after {config['warmup']} warm-up "
        f"round(s); tools alternate within each round, in a seeded order that changes from round to round. "
        f"Generated by `{config['command']}`.", "",
        "## Machine", "",
        f"- Date (UTC): {machine['date']}",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores ({machine['cores_available']} available), "
        f"{machine['memory_gib']} GiB RAM",
        f"- Kernel: {machine['kernel']} ({machine['os']}); Python {machine['python']}",
        f"- Source: {machine['source_fs']}; targets: "
        + ", ".join(f"{k} = {v}" for k, v in machine["target_fs"].items()),
        f"- Load average at start {machine['loadavg_start']}, at end {machine.get('loadavg_end')} "
        "(other work on the machine makes timings noisy when these are high)",
        "- Page cache: warm. Each source tree is read in full (hashed for verification) just before "
        "its runs, and the warm-up round reads it again; RAM is far larger than any tree. Writes go "
        "to the page cache: no tool fsyncs, the time excludes writeback, and `sync` runs between "
        "runs so one run's writeback does not land in the next.",
        "- Memory: parent = the command's own process (VmHWM, polled every "
        f"{SAMPLE_INTERVAL_S * 1000:.0f} ms); tree = peak of VmRSS summed over the command and all its "
        f"descendants (process list rescanned every {SAMPLE_INTERVAL_S * TREE_SCAN_EVERY * 1000:.0f} ms; "
        "pages shared after fork count once per process). '-': the command ended before a sample.",
        f"- pcopy: `{pcopy_executable()}` (a regular pip install of this checkout, byte-compiled as "
        "pip leaves it, re-installed at the start of every bench run).", "",
        "Tool versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()), "",
        "## pcopy speed targets", "",
    ]
    out += [f"- **{verdict}** {text}" for verdict, text in verdicts] or ["- (no targets measured)"]
    out += ["", "## Results", "",
            "Time: median (min-max) wall seconds of the whole command over the verified runs. "
            "x pcopy: the tool's median / pcopy default's (above 1: pcopy is faster).", ""]
    keys: list[tuple[str, str]] = []
    for s in summaries:
        if (s.workload, s.target) not in keys:
            keys.append((s.workload, s.target))
    for workload, target in keys:
        rows = [s for s in summaries if s.workload == workload and s.target == target]
        first = rows[0]
        out += [f"### {workload} -> {target} ({first.files} files, {first.bytes / MIB:.1f} MiB)", "",
                "| tool | median s | min-max s | x pcopy | files/s | MiB/s | parent MiB | tree MiB | ok "
                "| notes |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for s in rows:
            notes = []
            if s.missing:
                notes.append(f"MISSING: {s.missing}")
            if s.failure:
                notes.append(f"FAILED {s.failures}/{s.runs}: {s.failure}")
            if s.not_preserved:
                notes.append("not preserved: " + ", ".join(f"{k} ({v})" for k, v in s.not_preserved.items()))
            spread = "-" if s.min_s is None else f"{s.min_s:.3f}-{s.max_s:.3f}"
            out.append(
                f"| {TOOLS[s.tool].label} | {fmt(s.median_s, '.3f')} | {spread} | {fmt(s.vs_pcopy, '.2f')} "
                f"| {fmt(s.files_per_s, ',.0f')} | {fmt(s.mib_per_s, ',.1f')} "
                f"| {fmt(s.parent_peak_mib, '.1f')} | {fmt(s.tree_peak_mib, '.1f')} "
                f"| {s.runs - s.failures}/{s.runs} | {'; '.join(notes).replace('|', '/')} |")
        out.append("")
    if chart:
        out += [f"![chart]({chart})", ""]
    return "\n".join(out)


def make_chart(summaries: list[Summary], path: Path) -> str | None:
    """Median time per tool (min-max whiskers) for each workload and target, and the scale curves.
    Returns None, with a log line, when matplotlib is unavailable."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        log(f"no chart: {exc}")
        return None
    panels: list[tuple[str, str]] = []
    for s in summaries:
        if s.group != "scale" and (s.workload, s.target) not in panels:
            panels.append((s.workload, s.target))
    scale = [s for s in summaries if s.group == "scale" and s.median_s]
    count = len(panels) + (2 if scale else 0)
    if count == 0:
        return None
    cols = 2
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.2 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax, (workload, target) in zip(flat, panels, strict=False):
        rows_ = [s for s in summaries if s.workload == workload and s.target == target]
        names = [s.tool for s in rows_]
        medians = [s.median_s or 0.0 for s in rows_]
        low = [(s.median_s - s.min_s) if s.median_s and s.min_s is not None else 0.0 for s in rows_]
        high = [(s.max_s - s.median_s) if s.median_s and s.max_s is not None else 0.0 for s in rows_]
        colours = ["tab:red" if n == "pcopy" else "tab:orange" if n.startswith("pcopy") else "tab:blue"
                   for n in names]
        ax.barh(names, medians, xerr=[low, high], color=colours)
        for i, s in enumerate(rows_):
            if not s.median_s:
                ax.text(0, i, " missing" if s.missing else " failed", va="center", color="black")
        ax.invert_yaxis()
        ax.set_title(f"{workload} -> {target}: wall time, s (lower is better)", fontsize=9)
        ax.tick_params(labelsize=8)
    if scale:
        ax_rate, ax_rss = flat[len(panels)], flat[len(panels) + 1]
        for tool in sorted({s.tool for s in scale}):
            for target in sorted({s.target for s in scale}):
                pts = sorted((s for s in scale if s.tool == tool and s.target == target),
                             key=lambda s: s.files)
                xs = [s.files for s in pts]
                ax_rate.plot(xs, [s.files_per_s for s in pts], marker="o", label=f"{tool} {target}")
                ax_rss.plot(xs, [s.parent_peak_mib for s in pts], marker="o", label=f"{tool} {target}")
        ax_rate.set_title("scale: files/s (higher is better)", fontsize=9)
        ax_rss.set_title("scale: parent peak RSS, MiB", fontsize=9)
        for ax in (ax_rate, ax_rss):
            ax.set_xscale("log")
            ax.set_xlabel("files")
            ax.legend(fontsize=7)
            ax.tick_params(labelsize=8)
    for ax in flat[count:]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def ensure_matplotlib(allow_install: bool) -> None:
    """matplotlib draws the chart; it is a benchmark-only dependency, pip-installed on demand."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if allow_install:
            log("installing matplotlib into this environment (benchmark only)")
            subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "matplotlib"], check=False)


def kib(value: int | None) -> str:
    return "   -" if value is None else f"{value / 1024:6.1f}"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="reduced sizes and repetitions (default)")
    mode.add_argument("--full", action="store_true", help="the real sizes")
    parser.add_argument("--workloads", default="tiny,small,large,huge,mixed,scale",
                        help="comma list of tiny, small, large, huge, mixed, scale")
    parser.add_argument("--tools", default=None,
                        help=f"comma list of {', '.join(TOOLS)} (default: all; scale: "
                             f"{', '.join(SCALE_DEFAULT_TOOLS)})")
    parser.add_argument("--targets", default="tmpfs,disk", help="comma list of tmpfs, disk")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds (quick 2, full 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    parser.add_argument("--scale-sizes", default=None, help="comma list of file counts for scale")
    parser.add_argument("--publish", action="store_true",
                        help=f"write the tracked results ({PUBLISH_MARKDOWN.relative_to(HERE.parent)}, "
                             f"{PUBLISH_OUT.relative_to(HERE.parent)}/) instead of "
                             f"{DEFAULT_OUT.relative_to(HERE.parent)}/")
    parser.add_argument("--out", type=Path, default=None,
                        help="where results.json and chart.png go (overrides --publish)")
    parser.add_argument("--markdown", type=Path, default=None, help="the results table (overrides --publish)")
    parser.add_argument("--no-install", action="store_true",
                        help="do not apt-get/pip install missing peers or matplotlib")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = PUBLISH_OUT if args.publish else DEFAULT_OUT
    if args.markdown is None:
        args.markdown = PUBLISH_MARKDOWN if args.publish else DEFAULT_MARKDOWN
    return args


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    full = bool(args.full)
    reps = args.reps if args.reps is not None else (5 if full else 2)
    if reps < 1 or args.warmup < 0:
        sys.exit("bench: --reps must be >= 1 and --warmup >= 0")
    scale_sizes = [int(n) for n in _split(args.scale_sizes)] if args.scale_sizes else None
    groups = make_workloads(full, scale_sizes)
    chosen = _split(args.workloads)
    unknown = [g for g in chosen if g not in groups]
    tool_names = _split(args.tools) if args.tools else None
    unknown += [t for t in tool_names or [] if t not in TOOLS]
    shm = Path("/dev/shm")
    all_targets = {"disk": WORK / "dst"}
    if shm.is_dir():
        all_targets["tmpfs"] = shm / "pcopy-bench" / "dst"
    target_names = _split(args.targets)
    unknown += [t for t in target_names if t not in ("tmpfs", "disk")]
    if unknown:
        sys.exit(f"bench: unknown workload/tool/target: {', '.join(unknown)}")
    skipped_targets = [t for t in target_names if t not in all_targets]
    target_names = [t for t in target_names if t in all_targets]
    if skipped_targets:
        log(f"no /dev/shm here: skipping target(s) {skipped_targets}")

    plan: list[tuple[Workload, str, list[str]]] = []
    for group in chosen:
        names = tool_names or list(SCALE_DEFAULT_TOOLS if group == "scale" else TOOLS)
        targets_here = target_names
        if group == "scale" and not full and "tmpfs" in target_names:
            # Quick mode: the scale curve on tmpfs only; on disk it would double the suite's time.
            targets_here = ["tmpfs"]
        for workload in groups[group]:
            plan.extend((workload, target, names) for target in targets_here)
    tools_used = sorted({name for _, _, names in plan for name in names}, key=list(TOOLS).index)
    if any(name.startswith("pcopy") for name in tools_used):
        install_pcopy(not args.no_install)
    missing = ensure_tools([TOOLS[n] for n in tools_used], not args.no_install)
    for name, why in missing.items():
        log(f"MISSING {name}: {why}")
    ensure_matplotlib(not args.no_install)

    machine = describe_machine({t: all_targets[t] for t in target_names})
    versions = {name: tool_version(TOOLS[name]) for name in tools_used if name not in missing
                and (name == "pcopy" or not name.startswith("pcopy"))}
    command = "python benchmarks/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    config = {"mode": "full" if full else "quick", "reps": reps, "warmup": args.warmup,
              "workloads": chosen, "targets": target_names, "command": command.strip()}
    log(f"bench: {config['mode']} mode, {len(plan)} workload x target combinations, reps {reps}")

    runs: list[Run] = []
    sizes: dict[str, tuple[int, int]] = {}
    described: tuple[str, dict[str, tuple[object, ...]]] | None = None
    started = time.perf_counter()
    try:
        for workload, target, names in plan:
            src = build_tree(workload)
            if described is None or described[0] != workload.name:
                # Hashing the whole source also leaves it in the page cache (warm) for the runs.
                described = (workload.name, describe_tree(src))
            src_desc = described[1]
            sizes[workload.name] = tree_size(src_desc)
            dst = all_targets[target] / workload.name
            tools = [TOOLS[n] for n in names if n not in missing]
            log(f"{workload.name} -> {target}: {sizes[workload.name][0]} files, "
                f"{sizes[workload.name][1] / MIB:.1f} MiB, tools {[t.name for t in tools]}")
            for round_no in range(1 - args.warmup, reps + 1):
                # A new (seeded) order every round: on a disk, the run right after the deletion
                # of the teaching copier's output (2 GiB written 1 KiB at a time, ext4 with
                # online discard) is up to 2x slower, and no tool should always be that run. A
                # rotation would not do: it keeps every tool's neighbours.
                order = list(tools)
                random.Random(round_no).shuffle(order)
                for tool in order:
                    timed = round_no > 0
                    run = measure(tool, workload, target, src, dst, max(round_no, 0),
                                  src_desc if timed else None)
                    runs.append(run)
                    status = "ok" if run.ok else f"FAILED: {run.failure}"
                    log(f"  {'round ' + str(round_no) if timed else 'warm-up'} {tool.name:14s} "
                        f"{run.wall_s:8.3f} s  parent {kib(run.parent_peak_kib)} MiB  "
                        f"tree {kib(run.tree_peak_kib)} MiB  {status}")
            remove_tree(dst)
    except KeyboardInterrupt:
        log("interrupted: writing what was measured so far")
    finally:
        if "tmpfs" in all_targets:  # do not leave copies in RAM
            shutil.rmtree(all_targets["tmpfs"].parent, ignore_errors=True)
    machine["loadavg_end"] = list(os.getloadavg())
    machine["bench_seconds"] = round(time.perf_counter() - started, 1)

    summaries = summarise(runs, sizes, missing, [p for p in plan if p[0].name in sizes])
    verdicts = check_targets(summaries, target_names, chosen)
    args.out.mkdir(parents=True, exist_ok=True)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    chart = make_chart(summaries, args.out / "chart.png")
    chart_rel = os.path.relpath(chart, args.markdown.parent) if chart else None
    text = markdown(machine, config, summaries, verdicts, versions, chart_rel)
    args.markdown.write_text(text + "\n")
    results = {"machine": machine, "config": config, "versions": versions, "missing": missing,
               "targets": [{"verdict": v, "text": t} for v, t in verdicts],
               "summaries": [dataclasses.asdict(s) for s in summaries],
               "runs": [dataclasses.asdict(r) for r in runs]}
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)
    log(f"wrote {args.markdown}, {args.out / 'results.json'}" + (f", {chart}" if chart else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
