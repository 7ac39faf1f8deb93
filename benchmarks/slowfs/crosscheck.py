"""pcopy's slow-storage defaults on a mount they were not tuned on, with workloads that are not
bench_slow.py's: delayfs.py (Python, libfuse3's high-level API, at most 10 requests at once)
and four tree shapes, against cp -a (writing) and rsync -a (reading, up-to-date re-run).

    python benchmarks/slowfs/crosscheck.py [--delays 0.2,1,5] [--workloads flat,wide,deep,mixed]
                                           [--reps 1] [--pcopy PATH] [--out FILE]

Workloads (made once under benchmarks/work/crosscheck/src, the same bytes every time):
  flat   1,000 files of 0.2-8 KiB in one directory
  wide   1,000 such files in 100 directories
  deep   1,092 files, 3 per directory, in a tree 6 levels deep with 3 branches (364 directories)
  mixed  300 small files in 10 directories and two files of 32 MiB

Every timed copy is compared with its source (type, bytes, mode, mtime_ns: sample_tree.py; a
copy to the mount in the mount's backing directory) and a run that fails or differs is reported
as such, not timed. Operation counts per file come
from the mount (its own names: a LOOKUP shows as a getattr). Needs fuse3 (setup.sh) and
pip access for mfusepy, which goes into a venv of its own under benchmarks/work.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE.parent / "work" / "crosscheck"
VENV = WORK / "venv"
sys.path.insert(0, str(HERE.parent))
from sample_tree import compare  # noqa: E402  (a sibling script, not a package)

WORKLOADS = ("flat", "wide", "deep", "mixed")
MOUNT_WAIT_S = 10.0


def _files(directory: Path, count: int, rng: random.Random) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (directory / f"f{i:04d}.txt").write_bytes(rng.randbytes(rng.randint(200, 8000)))


def make_workload(kind: str, root: Path) -> None:
    rng = random.Random(kind)
    if kind == "flat":
        _files(root, 1000, rng)
    elif kind == "wide":
        for i in range(100):
            _files(root / f"d{i:03d}", 10, rng)
    elif kind == "deep":
        def level(directory: Path, depth: int) -> None:
            _files(directory, 3, rng)
            if depth < 6:
                for branch in range(3):
                    level(directory / f"s{branch}", depth + 1)
        level(root, 1)
    elif kind == "mixed":
        for i in range(10):
            _files(root / f"d{i:02d}", 30, rng)
        for i in range(2):
            (root / f"big{i}.bin").write_bytes(rng.randbytes(32 << 20))
    else:
        raise ValueError(kind)


def source(kind: str) -> Path:
    root = WORK / "src" / kind
    done = root.with_name(kind + ".done")
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        make_workload(kind, root)
        done.touch()
    return root


def daemon_python() -> str:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if subprocess.run([str(python), "-c", "import mfusepy"], capture_output=True).returncode:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "mfusepy"], check=True)
    return str(python)


class Mount:
    def __init__(self, delay_ms: float) -> None:
        self.backing = WORK / "backing"
        self.point = WORK / "mnt"
        self.state = WORK / "state"
        self.delay_ms = delay_ms

    @contextmanager
    def mounted(self) -> Iterator[Mount]:
        for path in (self.backing, self.state):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
        self.point.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.point):
            # (the wait below would return at once, and every count would be another daemon's)
            raise SystemExit(f"crosscheck: {self.point} is already a mount point (a stale mount? "
                             f"fusermount3 -u {self.point})")
        with open(WORK / "delayfs.log", "w") as log:
            proc = subprocess.Popen([daemon_python(), str(HERE / "delayfs.py"), str(self.backing), str(self.point),
                                     str(self.delay_ms), str(self.state)], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + MOUNT_WAIT_S
            while not os.path.ismount(self.point):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"delayfs did not mount: see {WORK / 'delayfs.log'}")
                time.sleep(0.05)
            yield self
        finally:
            subprocess.run(["fusermount3", "-u", str(self.point)], check=False)
            try:
                proc.wait(timeout=MOUNT_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def counts(self) -> dict[str, int]:
        """Operations since the last call (the daemon resets its counters as it dumps them)."""
        result = self.state / "counts.json"
        result.unlink(missing_ok=True)
        (self.state / "dump").touch()
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not result.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("delayfs did not write its counters")
            time.sleep(0.01)
        counts: dict[str, int] = json.loads(result.read_text())
        return counts


def timed(argv: list[str], mount: Mount, src: Path, dst: Path) -> tuple[float | None, float, str]:
    """(seconds or None if the run failed or the copy differs, operations on the mount, note)."""
    mount.counts()
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    seconds = time.perf_counter() - start
    ops = sum(mount.counts().values())
    if proc.returncode:
        return None, ops, f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}"
    differences = compare(str(src), str(dst))
    if differences:
        return None, ops, f"copy differs: {differences[0]}"
    return seconds, ops, ""


def run_delay(delay_ms: float, kinds: list[str], reps: int, pcopy: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    local_out = WORK / "out"
    with Mount(delay_ms).mounted() as mount:
        for kind in kinds:
            src = source(kind)
            nfiles = sum(len(files) for _, _, files in os.walk(src))
            on_mount = mount.point / kind
            in_backing = mount.backing / kind
            to_mount = [pcopy, "-q", str(src), str(on_mount)]
            cases = {
                "local -> slow": (("cp -a", ["cp", "-a", str(src), str(on_mount)]), ("pcopy", to_mount)),
                "re-run, up to date": (("rsync -a", ["rsync", "-a", f"{src}/", f"{on_mount}/"]), ("pcopy", to_mount)),
                "slow -> local": (("rsync -a", ["rsync", "-a", f"{on_mount}/", f"{local_out}/"]),
                                  ("pcopy", [pcopy, "-q", str(on_mount), str(local_out)])),
            }
            for case, tools in cases.items():
                row: dict[str, object] = {"delay_ms": delay_ms, "workload": kind, "case": case, "files": nfiles}
                for role, (name, argv) in zip(("peer", "pcopy"), tools, strict=True):
                    times, ops, notes = [], [], []
                    for _ in range(reps):
                        if case == "local -> slow":  # cleared in the backing directory: no round trips
                            shutil.rmtree(in_backing, ignore_errors=True)
                        elif case == "re-run, up to date" and not in_backing.exists():
                            subprocess.run([pcopy, "-q", str(src), str(on_mount)], check=True)
                        elif case == "slow -> local":
                            shutil.rmtree(local_out, ignore_errors=True)
                        # (what a copy to the mount wrote is checked in the backing directory:
                        # the same files, without a round trip per entry)
                        dst = local_out if case == "slow -> local" else in_backing
                        seconds, count, note = timed(argv, mount, src, dst)
                        ops.append(count / nfiles)
                        if seconds is None:
                            notes.append(note)
                        else:
                            times.append(seconds)
                    row[role] = name
                    row[role + "_s"] = statistics.median(times) if times else None
                    row[role + "_ops"] = statistics.median(ops)
                    row[role + "_failed"] = notes
                rows.append(row)
                print(line(row), flush=True)
    shutil.rmtree(local_out, ignore_errors=True)
    return rows


def line(row: dict[str, object]) -> str:
    peer_s, pcopy_s = row["peer_s"], row["pcopy_s"]
    ratio = f"{peer_s / pcopy_s:.1f}x" if isinstance(peer_s, float) and isinstance(pcopy_s, float) else "-"
    def sec(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, float) else "failed"
    failed = "; ".join(str(n) for n in [*row["peer_failed"], *row["pcopy_failed"]])  # type: ignore[misc]
    return (f"| {row['delay_ms']} ms | {row['workload']} | {row['case']} | {row['peer']} {sec(peer_s)} | "
            f"{sec(pcopy_s)} | {ratio} | {row['peer_ops']:.1f} | {row['pcopy_ops']:.1f} | {failed or 'verified'} |")


HEADER = ("| delay | workload | case | peer, s | pcopy, s | peer / pcopy | peer ops/file | pcopy ops/file | copies |\n"
          "|---|---|---|---|---:|---:|---:|---:|---|")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delays", default="1", help="milliseconds per operation, comma-separated (default 1)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--reps", type=int, default=1, help="runs of each tool per case (median; default 1)")
    parser.add_argument("--pcopy", default=shutil.which("pcopy", path=str(Path(sys.executable).parent)) or "pcopy")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    kinds = args.workloads.split(",")
    if unknown := set(kinds) - set(WORKLOADS):
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if shutil.which("fusermount3") is None or shutil.which("rsync") is None:
        parser.error("needs fusermount3 and rsync (bash benchmarks/slowfs/setup.sh installs them)")
    print(HEADER, flush=True)
    rows = []
    for delay in (float(d) for d in args.delays.split(",")):
        rows += run_delay(delay, kinds, args.reps, args.pcopy)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0 if all(not r["peer_failed"] and not r["pcopy_failed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
