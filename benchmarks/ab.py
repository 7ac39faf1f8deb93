"""Two pcopy builds against each other, runs interleaved in random order, every copy verified.

    python benchmarks/ab.py OLD/bin/pcopy NEW/bin/pcopy [--pairs 40] [--src TREE] [--dst DIR]

On a shared machine the speed moves by tens of percent within minutes, and a tool timed in one
block after another's inherits whatever the machine did meanwhile (hyperfine's order alone moved
a median by 12% here). Interleaving pairs, each pair in random order, gives both builds the same
moments. Each run is `pcopy SRC DST -q` (the destination removed first); where `perf` can count
it, the threads the run started are counted too (syscalls:sys_enter_clone3), which is how a
copy that grows threads where it should not shows. The default tree is bench.py's small
workload (20,000 files), generated on first use.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench
from sample_tree import compare


def perf_prefix() -> list[str]:
    """perf stat counting thread starts, if this machine lets perf read that tracepoint."""
    if shutil.which("perf") is None:
        return []
    probe = subprocess.run(["perf", "stat", "-x,", "-e", "syscalls:sys_enter_clone3", "true"],
                           capture_output=True, text=True, check=False)
    return ["perf", "stat", "-x,", "-e", "syscalls:sys_enter_clone3"] if probe.returncode == 0 else []


def one_run(prefix: list[str], exe: str, src: Path, dst: Path) -> tuple[float, int | None]:
    """(wall seconds, threads started or None); raises if the run fails or the copy differs."""
    shutil.rmtree(dst, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.run([*prefix, exe, str(src), str(dst), "-q"], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"ab: {exe} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    differences = compare(str(src), str(dst))
    if differences:
        raise SystemExit(f"ab: {exe}: the copy differs from the source: {differences[:5]}")
    threads = None
    if prefix:
        threads = int(proc.stderr.strip().splitlines()[-1].split(",")[0])
    return wall, threads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the first build's pcopy executable")
    parser.add_argument("new", help="the second build's pcopy executable")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--src", type=Path, default=None, help="the tree to copy (default: bench.py's small)")
    parser.add_argument("--dst", type=Path, default=Path("/dev/shm/pcopy-ab") if Path("/dev/shm").is_dir()
                        else Path("benchmarks/work/ab-dst"), help="where the copies go (removed before each)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    src = args.src or bench.build_tree(bench.make_workloads(True, None)["small"][0])
    prefix = perf_prefix()
    builds = {"old": args.old, "new": args.new}
    walls: dict[str, list[float]] = {name: [] for name in builds}
    threads: dict[str, list[int]] = {name: [] for name in builds}
    rng = random.Random(args.seed)
    for _ in range(args.pairs):
        order = list(builds)
        rng.shuffle(order)
        for name in order:
            wall, started = one_run(prefix, builds[name], src, args.dst)
            walls[name].append(wall)
            if started is not None:
                threads[name].append(started)
    shutil.rmtree(args.dst, ignore_errors=True)
    # Every worker process starts one thread of its own (pool.py, its job receiver): the fewest
    # any run started is the baseline, and a run above it grew threads.
    base = min((t for ts in threads.values() for t in ts), default=0)
    for name, exe in builds.items():
        times = sorted(walls[name])
        line = (f"{name} ({exe}): median {statistics.median(times):.3f} s, quartiles "
                f"{times[len(times) // 4]:.3f}-{times[3 * len(times) // 4]:.3f} s, {len(times)} verified runs")
        if threads[name]:
            line += (f"; runs that started more than {base} threads: {sum(t > base for t in threads[name])}, "
                     f"most {max(threads[name])}")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
