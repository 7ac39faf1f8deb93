"""Where pcopy's time goes on the small workload: py-spy CPU profiles (parent and workers apart)
and strace syscall counts per file, at -j 1 and the default -j, with cp -a and shutil.copytree's
syscall counts for comparison.

    python benchmarks/profile_pcopy.py [--quick] [--jobs 1,default] [--out benchmarks/results/profile.md]

py-spy is pip-installed into this environment when missing (a benchmark-only tool); strace comes
from Debian. The profile is of CPU samples (py-spy without --idle): time a process spends
blocked, e.g. the parent waiting for results, does not show up in it.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402  (a sibling script, not a package)

PY_SPY_RATE = 250  # samples/s: enough for a ~1-5 s run to give a few hundred samples per process
TOP = 15


def ensure_py_spy() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=False)
    return str(exe) if exe.exists() else shutil.which("py-spy")


def pcopy_argv(src: Path, dst: Path, jobs: str) -> list[str]:
    argv = [bench.pcopy_executable(), str(src), str(dst), "--no-progress", "-q"]
    return argv + (["-j", jobs] if jobs != "default" else [])


def parse_raw(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    """py-spy raw (collapsed) output -> {role: [(frames root first, samples)]}. With -s a child's
    stack starts "process PARENT;process CHILD;...". A process that runs multiprocessing's pool
    worker loop is a worker; its frames from before the fork (the parent's call chain, inherited
    by fork) are dropped, so that the worker's own work is what is counted."""
    by_pid: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        procs = [i for i, f in enumerate(frames) if f.startswith("process ")]
        pid = frames[procs[-1]].split(":", 1)[0] if procs else "?"
        by_pid[pid].append((frames[procs[-1] + 1:] if procs else frames, int(count)))
    roles: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for stacks in by_pid.values():
        worker = any(f.startswith("worker (multiprocessing/pool.py") for frames, _ in stacks for f in frames)
        for frames, samples in stacks:
            if worker:
                starts = [i for i, f in enumerate(frames) if "_bootstrap (multiprocessing/process.py" in f]
                frames = frames[starts[-1]:] if starts else frames
            roles["workers" if worker else "parent"].append((frames, samples))
    return roles


def short(frame: str) -> str:
    """'func (path/to/module.py:123)' -> 'func (module.py)': lines differ per sample."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0]
    return f"{name} ({'/'.join(file.split('/')[-2:])})" if file else name


def summarise_profile(stacks: list[tuple[list[str], int]]) -> list[str]:
    total = sum(count for _, count in stacks)
    if not total:
        return ["(no samples)"]
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    importing = 0
    for frames, count in stacks:
        if frames:
            self_time[short(frames[-1])] += count
        for frame in {short(f) for f in frames}:
            inclusive[frame] += count
        if any(f.startswith("_find_and_load") for f in frames):
            importing += count
    lines = [f"{total} samples ({total / PY_SPY_RATE:.2f} CPU s); imports: {importing / total:.0%}", "",
             "| self % | function (leaf) |", "|---:|---|"]
    lines += [f"| {count / total:.1%} | `{name}` |" for name, count in self_time.most_common(TOP)]
    lines += ["", "| incl. % | function (on the stack; pcopy's and multiprocessing's) |", "|---:|---|"]
    ours = [(name, count) for name, count in inclusive.most_common()
            if "(pcopy/" in name or "(multiprocessing/" in name]
    lines += [f"| {count / total:.1%} | `{name}` |" for name, count in ours[:TOP]]
    return lines


def parse_strace(path: Path) -> list[tuple[str, int, int]]:
    """strace -c summary -> [(syscall, calls, errors)], most called first."""
    rows: list[tuple[str, int, int]] = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) in (5, 6) and parts[0][0].isdigit() and parts[-1] != "total":
            calls = int(parts[3])
            errors = int(parts[4]) if len(parts) == 6 else 0
            rows.append((parts[-1], calls, errors))
    return sorted(rows, key=lambda r: -r[1])


def strace_counts(argv: list[str], files: int, workdir: Path) -> list[str]:
    out = workdir / "strace.txt"
    subprocess.run(["strace", "-f", "-c", "-o", str(out), *argv], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    rows = parse_strace(out)
    total = sum(calls for _, calls, _ in rows)
    lines = [f"{total} syscalls, {total / files:.1f} per file", "",
             "| syscall | calls | per file | errors |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {calls} | {calls / files:.2f} | {errors} |" for name, calls, errors in rows[:TOP]]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="the quick small workload (5000 files)")
    parser.add_argument("--jobs", default="1,default", help="comma list of -j values ('default': none)")
    parser.add_argument("--out", type=Path, default=bench.DEFAULT_OUT / "profile.md")
    args = parser.parse_args()
    workload = bench.make_workloads(not args.quick, None)["small"][0]
    src = bench.build_tree(workload)
    desc = bench.describe_tree(src)  # also warms the page cache
    files, nbytes = bench.tree_size(desc)
    py_spy = ensure_py_spy()
    if shutil.which("strace") is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "strace"], check=False)
    report = [f"# pcopy profile: {workload.name} ({files} files, {nbytes / bench.MIB:.1f} MiB)", "",
              f"Source {bench.mount_of(src)}, target tmpfs (/dev/shm), warm cache, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start.", ""]
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        work = Path(tmp)
        dst = work / "dst"
        for jobs in args.jobs.split(","):
            argv = pcopy_argv(src, dst, jobs)
            report += [f"## pcopy -j {jobs}", ""]
            started = time.perf_counter()
            code = subprocess.run(argv, check=False).returncode
            wall = time.perf_counter() - started
            problems = bench.verify(desc, bench.describe_tree(dst)) if code == 0 else {}
            report += [f"Unprofiled run: {wall:.3f} s wall, exit {code}, "
                       f"{'verified OK' if code == 0 and not problems else 'NOT a faithful copy'}; "
                       f"{files / wall:,.0f} files/s.", ""]
            if py_spy:
                bench.remove_tree(dst)
                raw = work / "raw.txt"
                spy = [py_spy, "record", "-s", "-f", "raw", "-r", str(PY_SPY_RATE), "-o", str(raw), "--"]
                subprocess.run([*spy, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               check=False)
                for role, stacks in sorted(parse_raw(raw).items()):
                    report += [f"### py-spy, {role}", "", *summarise_profile(stacks), ""]
            if shutil.which("strace"):
                bench.remove_tree(dst)
                report += ["### strace -c -f (all processes)", "", *strace_counts(argv, files, work), ""]
            bench.remove_tree(dst)
        if shutil.which("strace"):
            for name in ("cp", "shutil"):
                report += [f"## {bench.TOOLS[name].label}: strace -c -f", "",
                           *strace_counts(bench.TOOLS[name].command(src, dst), files, work), ""]
                bench.remove_tree(dst)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
