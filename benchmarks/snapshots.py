"""A 7-day snapshot series: pcopy --link-dest against rsync -a --link-dest.

Day 0 copies a generated tree (default 50,000 files of log-normal sizes around 4 KiB in 100
directories, plus a symlink per directory) in full; every later day 1 % of the files are
rewritten (new content, new size, new mtime) and a new snapshot is made with --link-dest
pointing at the previous day's, by both tools into their own backup roots:

    pcopy SRC pcopy/dayK --link-dest ../dayK-1            (relative to DST, as rsync reads it)
    rsync -a --link-dest=../dayK-1 SRC/ rsync/dayK/

Measured per snapshot: wall time; bytes written (the kernel's write accounting of the tool's
process tree, wait4 rusage ru_oublock x 512: what reached the block layer's queue, so it includes
directory and inode blocks) and the data bytes of new inodes; inodes used (entries of the
snapshot whose inode no earlier snapshot of that tool has; "new data" counts regular files
only). Verified after every snapshot, before
the source changes again: each snapshot equals its source (type, mode, mtime, size, content
digest, link targets, directory modes and mtimes), and the inode sharing is the same for both
tools (the set of paths that share their inode with the previous day's snapshot).

    python benchmarks/snapshots.py                    # 50,000 files, 7 days, pcopy and rsync
    python benchmarks/snapshots.py --files 5000 --days 3 --work /dev/shm/snapbench
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sample_tree import describe, lognormal_size

HERE = Path(__file__).resolve().parent
CHANGED_FRACTION = 0.01


def make_source(root: Path, files: int, dirs: int, rng: random.Random) -> list[Path]:
    paths: list[Path] = []
    for d in range(dirs):
        sub = root / f"dir{d:03d}"
        sub.mkdir(parents=True)
        os.symlink(f"f{d}", sub / "link")
    for i in range(files):
        path = root / f"dir{i % dirs:03d}" / f"f{i}"
        path.write_bytes(rng.randbytes(lognormal_size(rng)))
        paths.append(path)
    return paths


def change_files(paths: list[Path], day: int, rng: random.Random) -> int:
    """Rewrite 1 % of the files, each with a new size and an mtime of that day."""
    chosen = rng.sample(paths, max(1, int(len(paths) * CHANGED_FRACTION)))
    stamp = time.time_ns() + day * 86_400 * 10**9
    for path in chosen:
        path.write_bytes(rng.randbytes(lognormal_size(rng) + 1))
        os.utime(path, ns=(stamp, stamp))
    return len(chosen)


def run(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and bytes written (ru_oublock: the process and the children it waited for)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{argv[0]} exited {code}: {err}")
    return seconds, usage.ru_oublock * 512


def differences(a: dict[str, tuple[object, ...]], b: dict[str, tuple[object, ...]]) -> list[str]:
    """sample_tree.compare's lines, for a source described once per day."""
    problems = [f"missing in copy: {rel}" for rel in sorted(a.keys() - b.keys())]
    problems += [f"extra in copy: {rel}" for rel in sorted(b.keys() - a.keys())]
    problems += [f"differs: {rel}" for rel in sorted(a.keys() & b.keys()) if a[rel] != b[rel]]
    return problems


def inode_map(root: Path) -> dict[str, tuple[int, int, int]]:
    """rel -> (dev, ino, size) for every entry below root."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_dev, st.st_ino, st.st_size)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--work", type=Path, default=HERE / "work" / "snapshots")
    parser.add_argument("--pcopy", default=f"{sys.executable} -m pcopy", help="command that runs pcopy")
    parser.add_argument("--tools", default="pcopy,rsync")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--json", type=Path, help="write the per-snapshot numbers here")
    args = parser.parse_args()
    tools = args.tools.split(",")
    if "rsync" in tools and shutil.which("rsync") is None:
        raise SystemExit("rsync is not installed")
    rng = random.Random(args.seed)
    if args.work.exists():
        shutil.rmtree(args.work)
    src = args.work / "src"
    paths = make_source(src, args.files, args.dirs, rng)
    commands = {
        "pcopy": lambda day, prev: [*args.pcopy.split(), str(src), str(args.work / "pcopy" / day),
                                    *(["--link-dest", f"../{prev}"] if prev else []), "-q"],
        "rsync": lambda day, prev: ["rsync", "-a", *([f"--link-dest=../{prev}"] if prev else []),
                                    f"{src}/", f"{args.work / 'rsync' / day}/"],
    }
    for tool in tools:
        (args.work / tool).mkdir(parents=True)
    seen: dict[str, set[tuple[int, int]]] = {tool: set() for tool in tools}
    rows: list[dict[str, object]] = []
    problems = 0
    print(f"{args.files} files in {args.dirs} directories (+{args.dirs} symlinks), {args.days} days, "
          f"{CHANGED_FRACTION:.0%} changed per day; work dir {args.work}")
    print(f"{'day':>3} {'tool':6} {'wall s':>7} {'written MiB':>11} {'new data MiB':>12} "
          f"{'new inodes':>10} {'shared':>7}  verified")
    for k in range(args.days):
        day, prev = f"day{k}", (f"day{k - 1}" if k else None)
        changed = change_files(paths, k, rng) if k else 0
        os.sync()
        order = tools if k % 2 == 0 else list(reversed(tools))  # neither always runs first
        shared_sets: dict[str, set[str]] = {}
        results: dict[str, tuple[float, int]] = {}
        for tool in order:
            results[tool] = run(commands[tool](day, prev))
        expected = describe(str(src))
        for tool in tools:
            seconds, written = results[tool]
            snap = args.work / tool / day
            inodes = inode_map(snap)
            new = {rel: v for rel, v in inodes.items() if (v[0], v[1]) not in seen[tool]}
            seen[tool].update((v[0], v[1]) for v in inodes.values())
            if prev:
                before = inode_map(args.work / tool / prev)
                shared_sets[tool] = {rel for rel, v in inodes.items()
                                     if rel in before and before[rel][:2] == v[:2]}
            found = differences(expected, describe(str(snap)))
            problems += len(found)
            verdict = "ok" if not found else f"{len(found)} differences, e.g. {found[0]}"
            new_bytes = sum(v[2] for rel, v in new.items() if (snap / rel).is_file() and not (snap / rel).is_symlink())
            shared = len(shared_sets.get(tool, ()))
            print(f"{k:>3} {tool:6} {seconds:7.2f} {written / 2**20:11.1f} {new_bytes / 2**20:12.1f} "
                  f"{len(new):>10} {shared:>7}  {verdict}")
            rows.append({"day": k, "tool": tool, "seconds": seconds, "written_bytes": written,
                         "new_data_bytes": new_bytes, "new_inodes": len(new), "shared_with_previous": shared,
                         "changed_files": changed, "differences": len(found)})
        if len(shared_sets) == 2:
            a, b = (shared_sets[t] for t in tools)
            same = a == b
            problems += 0 if same else 1
            print(f"    inode sharing with day{k - 1}: " + ("identical for both tools" if same else
                  f"DIFFERS: only {tools[0]} {sorted(a - b)[:5]}, only {tools[1]} {sorted(b - a)[:5]}"))
    for tool in tools:
        later = [r["seconds"] for r in rows if r["tool"] == tool and r["day"] != 0]
        first = next(r["seconds"] for r in rows if r["tool"] == tool and r["day"] == 0)
        if later:
            print(f"{tool}: full copy {first:.2f} s; incremental snapshots median {statistics.median(later):.2f} s "  # type: ignore[arg-type]
                  f"(min {min(later):.2f}, max {max(later):.2f})")  # type: ignore[type-var]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print("all snapshots verified" if not problems else f"{problems} PROBLEMS")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
