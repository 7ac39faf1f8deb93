"""--bwlimit precision: bytes written per second over every 5 s window of a limited copy.

A tree of one large file and many small ones is copied with --bwlimit; a sampler sums the sizes
of everything in DST (hidden temporary files included, so bytes count when they are written,
not when renamed) every 50 ms. Reported: the rate over every 5 s window that lies inside the
copy (min, max, deviation from the limit), the whole run's rate, and when the small files were
done (they must not wait for the large file: the workers share one budget slice by slice).
The copy is verified against its source.

    python benchmarks/bwlimit.py                       # 10M and 500K, -j 2
    python benchmarks/bwlimit.py --rates 10M --large-mib 120 --jobs 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sample_tree import compare

from pcopy.bwlimit import parse_rate

WINDOW_S = 5.0
SAMPLE_S = 0.05


def tree_bytes(root: Path) -> tuple[int, int]:
    """(bytes of every file below root, small files complete under their final names)."""
    total = done = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue  # renamed between the listing and the stat
            total += st.st_size
            if name.startswith("s") and not name.startswith("."):
                done += 1
    return total, done


def measure(cmd: list[str], dst: Path) -> tuple[list[tuple[float, int, int]], float]:
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    samples = [(0.0, 0, 0)]
    while proc.poll() is None:
        time.sleep(SAMPLE_S)
        if dst.exists():
            samples.append((time.monotonic() - start, *tree_bytes(dst)))
    if proc.returncode != 0:
        raise SystemExit(f"pcopy exited {proc.returncode}")
    return samples, time.monotonic() - start


def windows(samples: list[tuple[float, int, int]]) -> list[float]:
    rates = []
    j = 0
    for t0, b0, _ in samples:
        while j < len(samples) and samples[j][0] < t0 + WINDOW_S:
            j += 1
        if j == len(samples):
            break
        t1, b1, _ = samples[j]
        rates.append((b1 - b0) / (t1 - t0))
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="10M,500K")
    parser.add_argument("--seconds", type=float, default=15.0, help="planned length of each copy")
    parser.add_argument("--small", type=int, default=2000, help="small files (16 KiB each)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work" / "bwlimit")
    parser.add_argument("--pcopy", default=f"{sys.executable} -m pcopy")
    args = parser.parse_args()
    failed = False
    for text in args.rates.split(","):
        rate = parse_rate(text)
        assert rate is not None
        shutil.rmtree(args.work, ignore_errors=True)
        src, dst = args.work / "src", args.work / "dst"
        (src / "small").mkdir(parents=True)
        small_bytes = 16 * 1024
        small = min(args.small, int(rate * args.seconds / 2 / small_bytes))
        for i in range(small):
            (src / "small" / f"s{i}").write_bytes(os.urandom(small_bytes))
        large = max(1 << 20, int(rate * args.seconds) - small * small_bytes)
        (src / "large").write_bytes(os.urandom(large))
        total = large + small * small_bytes
        cmd = [*args.pcopy.split(), str(src), str(dst), "--bwlimit", text, "-j", str(args.jobs), "-q"]
        samples, elapsed = measure(cmd, dst)
        rates = windows(samples)
        problems = compare(str(src), str(dst))
        small_done = next((t for t, _, d in samples if d >= small), elapsed)
        print(f"--bwlimit {text} ({rate} B/s), -j {args.jobs}: {total / 2**20:.1f} MiB "
              f"(1 x {large / 2**20:.1f} MiB + {small} x 16 KiB) in {elapsed:.2f} s = "
              f"{total / elapsed / rate:.1%} of the limit over the whole run")
        if rates:
            lo, hi = min(rates), max(rates)
            print(f"  {len(rates)} windows of {WINDOW_S:.0f} s: min {lo / rate:.1%}, max {hi / rate:.1%} "
                  f"of the limit (worst deviation {max(abs(lo / rate - 1), abs(hi / rate - 1)):.1%})")
            failed |= max(abs(lo / rate - 1), abs(hi / rate - 1)) > 0.10
        print(f"  small files all done after {small_done:.2f} s of {elapsed:.2f} s; copy "
              + ("verified" if not problems else f"DIFFERS: {problems[:3]}"))
        failed |= bool(problems)
    shutil.rmtree(args.work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
