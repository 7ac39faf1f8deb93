"""Slow-storage benchmark: pcopy against cp -a, rsync -a, shutil.copytree and rclone on a FUSE
mount that adds a fixed delay to every request (benchmarks/slowfs/slowfs.c), counting the
requests ("round trips") each tool needs per file. Every copy is verified.

    python benchmarks/slowfs/bench_slow.py --quick        # a few minutes (make bench-slow)
    python benchmarks/slowfs/bench_slow.py                # the full matrix (see docs/benchmarks-slow.md)
    python benchmarks/slowfs/bench_slow.py --delays 1 --reps 3 --publish

Cases: local-slow (local tree -> mount), slow-local (mount -> local), slow-slow (mount -> mount,
the same mount), rerun (local tree -> mount again, onto a complete, up-to-date copy: what a daily
backup does). Before each run the destination is removed (or, for rerun, re-made complete)
directly in the backing directory, not through the mount, `sync` is called, and the mount's
counters are reset; after it, the counters are read once the mount is quiet, and the copy is
compared with the source in the backing directory (type, bytes, mode, mtime_ns, the root
included).

Writes report.md, results.json and chart.png to --out (default benchmarks/work/slow-results/,
untracked); with --publish also benchmarks/RESULTS-slow.md and benchmarks/RESULTS-slow.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
REPO = BENCH.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(BENCH))
from sample_tree import describe_tree, lognormal_size  # noqa: E402  (sibling scripts, not packages)
from slowmount import SlowfsUnavailable, SlowMount, total_ops, unavailable_reason  # noqa: E402

WORK = BENCH / "work"
SRC_ROOT = WORK / "slow-src"
BACKING = WORK / "slow-backing"
MOUNTPOINT = WORK / "slow-mnt"
LOCAL_DST = WORK / "slow-local-dst"
BENCH_VENV = WORK / "venv"  # shared with bench.py: a regular (not editable) install of this checkout
DEFAULT_OUT = WORK / "slow-results"
PUBLISH_MD = BENCH / "RESULTS-slow.md"
PUBLISH_PNG = BENCH / "RESULTS-slow.png"
PYTHON = sys.executable
KIB = 1024

CASES = {
    "local-slow": "local → slow",
    "slow-local": "slow → local",
    "slow-slow": "slow → slow",
    "rerun": "re-run, up to date (local → slow)",
}

CATEGORIES = ("missing", "extra", "type", "content", "file_mode", "file_mtime", "dir_mode", "dir_mtime",
              "link_target")


# --------------------------------------------------------------------------------------------
# The workload


@dataclass(frozen=True)
class Workload:
    files: int
    dirs: int
    median_bytes: int = 3 * KIB
    seed: int = 11

    @property
    def name(self) -> str:
        return f"small-{self.files}f-{self.dirs}d-{self.median_bytes}b-s{self.seed}"


def generate(root: Path, wl: Workload) -> None:
    """wl.files files (log-normal sizes around wl.median_bytes) in wl.dirs directories nested at
    random, some files and directories with non-default modes. The same Workload, the same tree."""
    rng = random.Random(wl.seed)
    dirs = [root]
    root.mkdir(parents=True)
    for i in range(wl.dirs):
        path = rng.choice(dirs) / f"d{i:03d}"
        path.mkdir()
        dirs.append(path)
    block = rng.randbytes(1 << 20)
    for i in range(wl.files):
        size = min(lognormal_size(rng, median=wl.median_bytes), len(block))
        start = rng.randrange(0, len(block) - size + 1)
        path = rng.choice(dirs[1:] or dirs) / f"f{i:05d}.dat"
        path.write_bytes(block[start:start + size])
        if i % 7 == 3:
            path.chmod(0o600)
        elif i % 11 == 5:
            path.chmod(0o755)
        elif i % 13 == 0:
            path.chmod(0o444)
    for i, path in enumerate(dirs[1:]):
        if i % 5 == 4:
            path.chmod(0o750)


def build_tree(wl: Workload) -> Path:
    """The workload's tree under benchmarks/work/slow-src, generated once and then reused."""
    root = SRC_ROOT / wl.name
    if root.is_dir() and (SRC_ROOT / f"{wl.name}.done").exists():
        return root
    partial = SRC_ROOT / f"{wl.name}.partial"
    for old in (root, partial):
        if old.exists():
            remove(old)
    started = time.perf_counter()
    generate(partial, wl)
    os.rename(partial, root)
    (SRC_ROOT / f"{wl.name}.done").touch()
    log(f"generated {root} in {time.perf_counter() - started:.1f} s")
    return root



def verify(src: dict[str, tuple[object, ...]], dst: dict[str, tuple[object, ...]]) -> dict[str, list[str]]:
    """Differences between a source and its copy, by category (empty: a faithful copy)."""
    found: dict[str, list[str]] = {}
    for rel in src.keys() - dst.keys():
        found.setdefault("missing", []).append(rel)
    for rel in dst.keys() - src.keys():
        found.setdefault("extra", []).append(rel)
    for rel in src.keys() & dst.keys():
        a, b = src[rel], dst[rel]
        if a == b:
            continue
        if a[0] != b[0]:
            found.setdefault("type", []).append(rel)
        elif a[0] == "file":
            for category, index in (("content", slice(3, None)), ("file_mode", 1), ("file_mtime", 2)):
                if a[index] != b[index]:
                    found.setdefault(category, []).append(rel)
        elif a[0] == "dir":
            for category, i in (("dir_mode", 1), ("dir_mtime", 2)):
                if a[i] != b[i]:
                    found.setdefault(category, []).append(rel)
        else:
            found.setdefault("link_target" if a[0] == "link" else "type", []).append(rel)
    return found


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --------------------------------------------------------------------------------------------
# The tools


@dataclass(frozen=True)
class Tool:
    name: str
    label: str
    command: Callable[[Path, Path], list[str]]
    executable: str
    apt_package: str | None = None
    # Verification categories the tool does not claim to preserve: reported, not failed.
    unpreserved: frozenset[str] = frozenset()
    env: dict[str, str] = field(default_factory=dict)
    # Has an up-to-date mode (skips files whose size and mtime match): runs in the rerun case.
    rerun: bool = True


def pcopy_executable() -> str:
    return str(BENCH_VENV / "bin" / "pcopy")


def _pcopy(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda src, dst: [pcopy_executable(), str(src), str(dst), "--no-progress", "-q", *extra]


SHUTIL_SCRIPT = "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], symlinks=True)"

TOOLS: dict[str, Tool] = {t.name: t for t in (
    # cp -a and shutil.copytree have no up-to-date mode: a re-run copies everything again
    # (shutil refuses an existing DST), so they sit out the rerun case.
    Tool("cp", "cp -a", lambda s, d: ["cp", "-a", f"{s}/.", str(d)], "cp", "coreutils", rerun=False),
    Tool("rsync", "rsync -a", lambda s, d: ["rsync", "-a", f"{s}/", f"{d}/"], "rsync", "rsync"),
    Tool("shutil", "shutil.copytree", lambda s, d: [PYTHON, "-c", SHUTIL_SCRIPT, str(s), str(d)], PYTHON,
         rerun=False),
    # A local-to-local rclone copy as fair as its options allow: --links (symlinks as symlinks),
    # --create-empty-src-dirs, --local-no-check-updated (no second stat of every source file to
    # see whether it changed during the copy: cp and rsync do not do that either). Its default
    # concurrency (--transfers 4 --checkers 8) is kept: that is what its users get. Not -M: it
    # would add the mode and the owner, at more requests per file; rclone keeps file mtimes but
    # neither modes nor directory times, reported as "not preserved", not as failures.
    Tool("rclone", "rclone copy", lambda s, d: ["rclone", "copy", "--links", "--create-empty-src-dirs",
                                                "--local-no-check-updated", str(s), str(d)],
         "rclone", "rclone", frozenset({"file_mode", "dir_mode", "dir_mtime"}), {"RCLONE_CONFIG": "/dev/null"}),
    Tool("pcopy", "pcopy (default)", _pcopy(), "pcopy"),
    Tool("pcopy-j8", "pcopy -j 8", _pcopy("-j", "8"), "pcopy"),
    Tool("pcopy-j16", "pcopy -j 16", _pcopy("-j", "16"), "pcopy"),
    Tool("pcopy-j64", "pcopy -j 64", _pcopy("-j", "64"), "pcopy"),
)}


def install_pcopy() -> None:
    """(Re)install this checkout into BENCH_VENV (as bench.py does), with matplotlib for the chart."""
    pip = BENCH_VENV / "bin" / "pip"
    quiet = ["--quiet", "--disable-pip-version-check"]
    if not pip.exists():
        log(f"creating {BENCH_VENV} for a regular install of pcopy")
        subprocess.run([PYTHON, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run([str(pip), "install", *quiet, str(REPO)], check=True)
    subprocess.run([str(pip), "install", *quiet, "--no-deps", "--force-reinstall", str(REPO)], check=True)
    probe = subprocess.run([str(BENCH_VENV / "bin" / "python"), "-c", "import matplotlib"],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        log("installing matplotlib into the bench venv (for the chart)")
        subprocess.run([str(pip), "install", *quiet, "matplotlib"], check=False)


def missing_tools(tools: Sequence[Tool]) -> dict[str, str]:
    """Tools that cannot run here, with the reason (setup.sh installs rsync and rclone)."""
    out = {}
    for tool in tools:
        exe = pcopy_executable() if tool.executable == "pcopy" else tool.executable
        if not (os.access(exe, os.X_OK) if os.path.isabs(exe) else shutil.which(exe)):
            out[tool.name] = f"{exe} not found" + (f" (apt package {tool.apt_package}; run "
                                                   "benchmarks/slowfs/setup.sh)" if tool.apt_package else "")
    return out


def tool_version(tool: Tool) -> str:
    argv = {"cp": ["cp", "--version"], "rsync": ["rsync", "--version"], "rclone": ["rclone", "version"],
            "pcopy": [pcopy_executable(), "--version"]}.get(tool.name)
    if argv is None:
        return f"Python {platform.python_version()}"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return out.splitlines()[0].strip() if out else "unknown"


# --------------------------------------------------------------------------------------------
# Running


@dataclass
class Run:
    delay_ms: float
    case: str
    tool: str
    rep: int
    files: int
    wall_s: float
    ok: bool
    failure: str = ""
    not_preserved: dict[str, int] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)
    total_ops: int = 0
    busy_ns: int = 0
    max_in_flight: int = 0


def run_command(argv: list[str], env: dict[str, str], timeout_s: float) -> tuple[int, str]:
    """Runs argv in its own session; on timeout the whole process group is killed."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env={**os.environ, **env}, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return -1, f"timed out after {timeout_s:.0f} s"
    return proc.returncode, err.decode(errors="replace").strip()


def paths_for(case: str, local_src: Path) -> tuple[Path, Path, Path]:
    """(source as the tool sees it, destination as the tool sees it, destination's real path)."""
    if case in ("local-slow", "rerun"):
        return local_src, MOUNTPOINT / "dst", BACKING / "dst"
    if case == "slow-local":
        return MOUNTPOINT / "src", LOCAL_DST, LOCAL_DST
    return MOUNTPOINT / "src", MOUNTPOINT / "dst", BACKING / "dst"


def measure(tool: Tool, case: str, rep: int, mount: SlowMount, local_src: Path,
            expected: dict[str, tuple[object, ...]], files: int, timeout_s: float) -> Run:
    src, dst, dst_real = paths_for(case, local_src)
    remove(dst_real)
    if case == "rerun":
        # A complete, up-to-date copy made directly in the backing directory (not timed).
        subprocess.run(["cp", "-a", f"{local_src}/.", str(dst_real)], check=True)
    os.sync()
    mount.reset()
    started = time.perf_counter()
    code, err = run_command(tool.command(src, dst), tool.env, timeout_s)
    wall = time.perf_counter() - started
    stats = mount.counters()
    run = Run(mount.delay_ms, case, tool.name, rep, files, wall, False, ops=dict(stats["ops"]),
              total_ops=total_ops(stats), busy_ns=int(stats["busy_ns"]),
              max_in_flight=int(stats["max_in_flight"]))
    if code != 0:
        run.failure = f"exit {code}: {err.splitlines()[-1] if err else ''}"[:300]
        return run
    diffs = verify(expected, describe_tree(dst_real)) if dst_real.is_dir() else {"missing": ["."]}
    run.not_preserved = {k: len(v) for k, v in diffs.items() if k in tool.unpreserved}
    bad = {k: v for k, v in diffs.items() if k not in tool.unpreserved}
    if bad:
        run.failure = "copy differs: " + "; ".join(f"{k} {len(v)} (e.g. {sorted(v)[0]})" for k, v in bad.items())
        return run
    run.ok = True
    return run


def calibrate(mount: SlowMount) -> dict[str, float]:
    """What one request really costs on this mount, and whether 8 concurrent ones overlap."""
    # The source tree on the mount where a case put it there (slow -> local), else whatever the
    # mount holds (an empty src left by an earlier run is no use: nothing to stat in it).
    target = MOUNTPOINT / "src" if (BACKING / "src").is_dir() and any((BACKING / "src").iterdir()) else MOUNTPOINT
    if not any(target.iterdir()):
        (target / "calibration").mkdir()
    count = 50
    started = time.perf_counter()
    for _ in range(count):
        os.stat(MOUNTPOINT)  # one GETATTR
    one = (time.perf_counter() - started) / count
    names = sorted(os.listdir(target))[:8]
    barrier = threading.Barrier(len(names) + 1)

    def stat(name: str) -> None:
        barrier.wait()
        os.stat(target / name)

    started = time.perf_counter()
    os.stat(target / names[0])
    single = time.perf_counter() - started
    threads = [threading.Thread(target=stat, args=(n,)) for n in names]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    parallel = time.perf_counter() - started
    return {"getattr_ms": one * 1000, "stat_ms": single * 1000, "stats8_parallel_ms": parallel * 1000}


# --------------------------------------------------------------------------------------------
# Summaries and output


@dataclass
class Summary:
    delay_ms: float
    case: str
    tool: str
    files: int
    runs: int
    ok_runs: int
    median_s: float | None
    min_s: float | None
    max_s: float | None
    rt_per_file: float | None
    avg_in_flight: float | None
    max_in_flight: int | None
    ops_per_file: dict[str, float]
    failure: str
    not_preserved: dict[str, int]


def summarise(runs: list[Run]) -> list[Summary]:
    out = []
    keys: list[tuple[float, str, str]] = []
    for r in runs:
        if (r.delay_ms, r.case, r.tool) not in keys:
            keys.append((r.delay_ms, r.case, r.tool))
    order = list(TOOLS)
    keys.sort(key=lambda k: (k[0], list(CASES).index(k[1]), order.index(k[2])))
    for delay, case, tool in keys:
        group = [r for r in runs if (r.delay_ms, r.case, r.tool) == (delay, case, tool)]
        ok = [r for r in group if r.ok]
        times = [r.wall_s for r in ok]
        files = group[0].files
        ops: dict[str, float] = {}
        if ok:
            for name in ok[0].ops:
                value = statistics.median(r.ops.get(name, 0) for r in ok) / files
                if value:
                    ops[name] = round(value, 2)
        out.append(Summary(
            delay, case, tool, files, len(group), len(ok),
            statistics.median(times) if times else None, min(times) if times else None,
            max(times) if times else None,
            statistics.median(r.total_ops for r in ok) / files if ok else None,
            statistics.median(r.busy_ns / 1e9 / r.wall_s for r in ok) if ok else None,
            max(r.max_in_flight for r in ok) if ok else None, ops,
            next((r.failure for r in group if not r.ok), ""),
            ok[0].not_preserved if ok else {}))
    return out


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


# Issue 11: (case, peer, minimum speed-up of pcopy's default over the peer, round trips per file
# of pcopy's default at most the peer's).
TARGETS = (("local-slow", "cp", 12.0), ("slow-local", "rsync", 12.0), ("rerun", "rsync", 5.0))


def target_lines(rows: list[Summary]) -> list[str]:
    out = []
    for case, peer, goal in TARGETS:
        mine = next((s for s in rows if s.case == case and s.tool == "pcopy"), None)
        other = next((s for s in rows if s.case == case and s.tool == peer), None)
        if not (mine and other and mine.median_s and other.median_s and mine.rt_per_file and other.rt_per_file):
            continue
        speedup = other.median_s / mine.median_s
        fewer = mine.rt_per_file <= other.rt_per_file
        out.append(f"{CASES[case]}: {speedup:.2f}x faster than {TOOLS[peer].label} (target >= {goal:g}x: "
                   f"{'PASS' if speedup >= goal else 'FAIL'}); round trips/file {mine.rt_per_file:.1f} vs "
                   f"{other.rt_per_file:.1f} (target <=: {'PASS' if fewer else 'FAIL'})")
    return out


def markdown(meta: dict[str, Any], summaries: list[Summary], chart: str | None) -> str:
    machine = meta["machine"]
    lines = [
        "# pcopy on slow storage: benchmark results", "",
        f"Generated {meta['date']} by " + " and ".join(f"`{c}`" for c in meta["commands"])
        + f" ({meta['seconds']:.0f} s of runs). "
        "Method, mount and cases: [docs/benchmarks-slow.md](../docs/benchmarks-slow.md).", "",
        "**The machine is shared**: "
        f"{machine['cpus']} cores, other sessions' test suites and benchmarks ran on it at the same "
        f"time (load average {machine['loadavg_start']} at start, {machine['loadavg_end']} at end). "
        "The slowfs daemon also runs on these cores, so CPU-bound rows (small delays, many jobs) are "
        "noisier than latency-bound ones.", "",
        f"- Mount: slowfs (libfuse {machine['libfuse']}), a delay per request, no attribute/entry "
        "caching (timeouts 0), no readdirplus, no writeback cache, up to 256 requests served at once.",
        f"- Kernel {machine['kernel']}; Python {machine['python']}; pcopy from `{pcopy_executable()}` "
        "(a regular pip install of this checkout).",
        "- Versions: " + "; ".join(f"{k}: {v}" for k, v in meta["versions"].items()),
        f"- Reps: {meta['reps']} per tool and case (median shown; tools in a new seeded order each "
        "round); every run verified against the source (type, bytes, mode, mtime_ns, root included).",
        "- Round trips/file: requests the mount received during the run (median over the runs) / files.",
        "",
    ]
    if meta["missing"]:
        lines += ["Missing tools: " + "; ".join(f"{k}: {v}" for k, v in meta["missing"].items()), ""]
    for delay in sorted({s.delay_ms for s in summaries}):
        rows = [s for s in summaries if s.delay_ms == delay]
        cases = [c for c in CASES if any(s.case == c for s in rows)]
        cal = meta["calibration"].get(str(delay), {})
        files = rows[0].files
        lines += [f"## {delay:g} ms per request ({files} files, {meta['workloads'][str(delay)]})", ""]
        if cal:
            lines += [f"Measured on the mount: one GETATTR {cal['getattr_ms']:.2f} ms; one stat of a file "
                      f"{cal['stat_ms']:.2f} ms; 8 stats of 8 files at once {cal['stats8_parallel_ms']:.2f} ms.", ""]
        header = "| tool |" + "".join(f" {CASES[c]}, s | round trips/file |" for c in cases)
        lines += [header, "|---|" + "---:|---:|" * len(cases)]
        for tool in TOOLS:
            cells = []
            present = False
            for case in cases:
                s = next((x for x in rows if x.case == case and x.tool == tool), None)
                present |= s is not None
                if s is None:
                    cells += ["–", "–"]
                elif s.median_s is None:
                    cells += ["FAILED", "–"]
                else:
                    cells += [f"{s.median_s:.2f}", f"{s.rt_per_file:.1f}"]
            if present:
                lines.append(f"| {TOOLS[tool].label} | " + " | ".join(cells) + " |")
        lines += ["", "Issue 11's targets for pcopy's default (speed-up = peer's median / pcopy's):", ""]
        lines += [f"- {t}" for t in target_lines(rows)] or ["- (not measured)"]
        lines += ["", "<details><summary>details: spread, requests in flight, requests per file by type"
                  "</summary>", "",
                  "| case | tool | median s | min–max s | ok | in flight avg / max | requests per file | notes |",
                  "|---|---|---:|---:|---:|---:|---|---|"]
        for s in rows:
            top = sorted(s.ops_per_file.items(), key=lambda kv: -kv[1])
            notes = []
            if s.failure:
                notes.append(f"FAILED {s.runs - s.ok_runs}/{s.runs}: {s.failure}")
            if s.not_preserved:
                notes.append("not preserved: " + ", ".join(f"{k} ({v})" for k, v in s.not_preserved.items()))
            spread = "–" if s.min_s is None else f"{s.min_s:.2f}–{s.max_s:.2f}"
            lines.append(
                f"| {s.case} | {TOOLS[s.tool].label} | {fmt(s.median_s, '.2f')} | {spread} | {s.ok_runs}/{s.runs} "
                f"| {fmt(s.avg_in_flight, '.1f')} / {s.max_in_flight if s.max_in_flight is not None else '–'} | "
                + " ".join(f"{k} {v:g}" for k, v in top) + f" | {'; '.join(notes).replace('|', '/')} |")
        lines += ["", "</details>", ""]
    if chart:
        lines += [f"![wall time per tool and case]({chart})", ""]
    return "\n".join(lines)


def draw_chart(results_json: Path, png: Path) -> None:
    """Median wall time per tool, one panel per delay and case (run in the bench venv, where
    matplotlib is installed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(results_json.read_text())
    summaries = data["summaries"]
    delays = sorted({s["delay_ms"] for s in summaries})
    cases = [c for c in CASES if any(s["case"] == c for s in summaries)]
    fig, axes = plt.subplots(len(delays), len(cases), figsize=(4.2 * len(cases), 0.45 * len(TOOLS) * len(delays) + 1),
                             squeeze=False)
    for row, delay in enumerate(delays):
        for col, case in enumerate(cases):
            ax = axes[row][col]
            rows = [s for s in summaries if s["delay_ms"] == delay and s["case"] == case]
            names = [TOOLS[s["tool"]].label for s in rows]
            medians = [s["median_s"] or 0.0 for s in rows]
            colours = ["tab:red" if s["tool"] == "pcopy" else "tab:orange" if s["tool"].startswith("pcopy")
                       else "tab:blue" for s in rows]
            ax.barh(names, medians, color=colours)
            for i, s in enumerate(rows):
                label = (f" {s['median_s']:.2f} s, {s['rt_per_file']:.1f} rt/f" if s["median_s"] is not None
                         else " failed")
                ax.text(medians[i], i, label, va="center", fontsize=7)
            ax.invert_yaxis()
            ax.set_xlim(0, max(medians or [1]) * 1.6 or 1)
            ax.set_title(f"{CASES[case]}, {delay:g} ms/request", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("wall s (lower is better)", fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def make_chart(results_json: Path, png: Path) -> bool:
    python = BENCH_VENV / "bin" / "python"
    done = subprocess.run([str(python), __file__, "--chart", str(results_json), str(png)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log(f"no chart: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return done.returncode == 0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a few minutes: 250 files in 2 directories, 1 ms, 1 rep")
    parser.add_argument("--files", type=int, default=None, help="files in the workload (default 5000)")
    parser.add_argument("--dirs", type=int, default=None, help="directories (default files/100)")
    parser.add_argument("--file-budget-ms", type=float, default=None,
                        help="at delay D use at most BUDGET/D files (default 250: 1250 files at 0.2 ms, "
                             "250 at 1 ms, 50 at 5 ms), so that the full run fits in well under an hour; 0: no cap")
    parser.add_argument("--delays", default=None, help="comma list of ms per request (default 0.2,1,5)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma list of {', '.join(TOOLS)}")
    parser.add_argument("--reps", type=int, default=None, help="timed runs per tool and case (default 3)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before one run is killed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report.md, results.json, chart.png")
    parser.add_argument("--publish", action="store_true",
                        help="also write benchmarks/RESULTS-slow.md and benchmarks/RESULTS-slow.png")
    parser.add_argument("--no-install", action="store_true",
                        help="do not (re)install pcopy into benchmarks/work/venv")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="measure nothing: make the report (and with --publish the tracked one) from the "
                             "results.json of earlier runs, combined (e.g. one run per delay)")
    parser.add_argument("--chart", nargs=2, type=Path, metavar=("JSON", "PNG"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.chart:
        draw_chart(*args.chart)
        return 0
    if args.merge:
        meta, runs = merge(args.merge)
        write_outputs(meta, runs, args.out, args.publish)
        return 0 if all(r.ok for r in runs) else 1
    quick = args.quick
    files = args.files or (250 if quick else 5000)
    budget = args.file_budget_ms if args.file_budget_ms is not None else (0 if quick else 250.0)
    reps = args.reps or (1 if quick else 3)
    try:
        delays = [float(d) for d in split(args.delays or ("1" if quick else "0.2,1,5"))]
    except ValueError:
        sys.exit("bench_slow: --delays wants numbers, e.g. 0.2,1,5")
    cases, tool_names = split(args.cases), split(args.tools)
    unknown = [c for c in cases if c not in CASES] + [t for t in tool_names if t not in TOOLS]
    if unknown:
        sys.exit(f"bench_slow: unknown case/tool: {', '.join(unknown)}")
    if files < 1 or reps < 1 or any(d < 0 for d in delays) or (args.dirs is not None and args.dirs < 1):
        sys.exit("bench_slow: --files, --reps, --dirs must be >= 1 and delays >= 0")
    reason = unavailable_reason()
    if reason:
        sys.exit(f"bench_slow: FUSE not usable: {reason}")
    for path in (MOUNTPOINT,):
        if os.path.ismount(path):
            sys.exit(f"bench_slow: {path} is still mounted (another run? else: fusermount3 -u {path})")

    tools = [TOOLS[n] for n in tool_names]
    if any(t.executable == "pcopy" for t in tools) and not args.no_install:
        install_pcopy()
    missing = missing_tools(tools)
    for name, why in missing.items():
        log(f"MISSING {name}: {why}")
    tools = [t for t in tools if t.name not in missing]
    versions = {t.name: tool_version(t) for t in tools if not t.name.startswith("pcopy-")}
    if "pcopy" in versions:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=False).stdout.strip()
        versions["pcopy"] += f" (checkout {sha or 'unknown'})"
    libfuse = subprocess.run(["pkg-config", "--modversion", "fuse3"], capture_output=True, text=True,
                             check=False).stdout.strip()
    machine = {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
               "libfuse": libfuse, "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    command = "python benchmarks/slowfs/bench_slow.py " + " ".join(sys.argv[1:] if argv is None else argv)
    runs: list[Run] = []
    calibration: dict[str, dict[str, float]] = {}
    workloads: dict[str, str] = {}
    started = time.perf_counter()
    try:
        for delay in delays:
            n = files if not budget or delay <= 0 else max(1, min(files, round(budget / delay)))
            wl = Workload(n, args.dirs or max(1, n // 100))
            local_src = build_tree(wl)
            expected = describe_tree(local_src)
            workloads[str(delay)] = f"{wl.dirs} directories, median {wl.median_bytes // KIB} KiB, seed {wl.seed}"
            for stale in (BACKING, LOCAL_DST):
                remove(stale)
            BACKING.mkdir(parents=True)
            if any(c in ("slow-local", "slow-slow") for c in cases):
                subprocess.run(["cp", "-a", f"{local_src}/.", str(BACKING / "src")], check=True)
                if verify(expected, describe_tree(BACKING / "src")):
                    sys.exit("bench_slow: the slow source differs from the local tree after cp -a")
            with SlowMount(BACKING, MOUNTPOINT, delay_ms=delay) as mount:
                calibration[str(delay)] = calibrate(mount)
                log(f"delay {delay:g} ms, {n} files: {calibration[str(delay)]}")
                for case in cases:
                    here = [t for t in tools if case != "rerun" or t.rerun]
                    for rep in range(1, reps + 1):
                        order = list(here)
                        random.Random(rep * 1000 + int(delay * 10)).shuffle(order)
                        for tool in order:
                            run = measure(tool, case, rep, mount, local_src, expected, n, args.timeout)
                            runs.append(run)
                            log(f"  {delay:g} ms {case:10s} rep {rep} {tool.name:10s} {run.wall_s:8.2f} s "
                                f"{run.total_ops / n:6.1f} rt/file  "
                                f"{'ok' if run.ok else 'FAILED: ' + run.failure}")
                remove(BACKING / "dst")
    except KeyboardInterrupt:
        log("interrupted: writing what was measured so far")
    finally:
        remove(LOCAL_DST)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commands": [command.strip()], "seconds": time.perf_counter() - started, "reps": reps,
            "machine": machine, "versions": versions, "missing": missing, "calibration": calibration,
            "workloads": workloads}
    write_outputs(meta, runs, args.out, args.publish)
    return 0 if all(r.ok for r in runs) else 1


def merge(paths: Sequence[Path]) -> tuple[dict[str, Any], list[Run]]:
    """The runs and the (combined) description of earlier results.json files: several partial runs
    (say one per delay) make one report. A later file's runs of the same delay, case and tool
    are added to the earlier ones' (their medians are taken together)."""
    metas, runs = [], []
    for path in paths:
        data = json.loads(path.read_text())
        metas.append(data["meta"])
        runs += [Run(**r) for r in data["runs"]]
    meta = dict(metas[-1])
    meta["commands"] = [c for m in metas for c in m.get("commands", [m.get("command", "?")])]
    meta["seconds"] = sum(m["seconds"] for m in metas)
    meta["reps"] = max(m["reps"] for m in metas)
    meta["machine"] = dict(metas[-1]["machine"], loadavg_start=metas[0]["machine"]["loadavg_start"])
    for key in ("calibration", "workloads", "versions", "missing"):
        meta[key] = {k: v for m in metas for k, v in m[key].items()}
    return meta, runs


def write_outputs(meta: dict[str, Any], runs: list[Run], out: Path, publish: bool) -> None:
    summaries = summarise(runs)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    results.write_text(json.dumps({"meta": meta, "summaries": [dataclasses.asdict(s) for s in summaries],
                                   "runs": [dataclasses.asdict(r) for r in runs]}, indent=1) + "\n")
    chart = out / "chart.png"
    have_chart = make_chart(results, chart)
    (out / "report.md").write_text(markdown(meta, summaries, "chart.png" if have_chart else None) + "\n")
    log(f"wrote {out}/report.md, results.json" + (", chart.png" if have_chart else ""))
    if publish:
        if have_chart:
            shutil.copyfile(chart, PUBLISH_PNG)
        PUBLISH_MD.write_text(markdown(meta, summaries, PUBLISH_PNG.name if have_chart else None) + "\n")
        log(f"published {PUBLISH_MD}" + (f" and {PUBLISH_PNG}" if have_chart else ""))
    print((out / "report.md").read_text())


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SlowfsUnavailable as exc:
        sys.exit(f"bench_slow: {exc}")
