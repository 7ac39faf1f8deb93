"""--partial: a large copy interrupted half-way, then resumed; how many bytes the re-run copies.

Creates a file (default 2 GiB of random bytes), starts `pcopy -P FILE DST/` and sends SIGINT (or
--signal KILL: a crash) once the hidden partial file holds half of it, then runs
`pcopy --partial --json` again and reports what that run copied ("bytes") and kept
("resumed_bytes"), its wall time against a full copy's, and checks the result equals the source.

    python benchmarks/resume.py                   # 2 GiB, SIGINT at ~50 %
    python benchmarks/resume.py --mib 512 --signal KILL
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pcopy.metadata import partial_path

CHUNK = 64 << 20


def same_content(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                return False
            if not x:
                return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=2048)
    parser.add_argument("--at", type=float, default=0.5, help="interrupt at this fraction")
    parser.add_argument("--signal", default="INT", choices=["INT", "TERM", "KILL"])
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work" / "resume")
    parser.add_argument("--pcopy", default=f"{sys.executable} -m pcopy")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    src, dst = args.work / "big", args.work / "dst"
    dst.mkdir()
    with open(src, "wb") as fh:
        for _ in range(args.mib * (1 << 20) // CHUNK):
            fh.write(os.urandom(CHUNK))
        fh.write(os.urandom(args.mib * (1 << 20) % CHUNK))
    size = src.stat().st_size
    part = Path(partial_path(str(dst / "big")))
    pcopy = args.pcopy.split()
    os.sync()
    start = time.monotonic()
    proc = subprocess.Popen([*pcopy, str(src), f"{dst}/", "-P", "--no-progress", "-q"],
                            start_new_session=True)
    while proc.poll() is None:
        if part.exists() and part.stat().st_size >= size * args.at:
            os.killpg(proc.pid, getattr(signal, f"SIG{args.signal}"))
            break
        time.sleep(0.002)
    proc.wait()
    first = time.monotonic() - start
    time.sleep(1.5)  # a killed run's workers leave within a second
    kept = part.stat().st_size if part.exists() else 0
    print(f"{args.mib} MiB file; first run interrupted by SIG{args.signal} after {first:.2f} s "
          f"(exit {proc.returncode}); partial file {kept / 2**20:.1f} MiB ({kept / size:.1%}), "
          f"final name {'exists' if (dst / 'big').exists() else 'absent'}")
    os.sync()
    start = time.monotonic()
    out = subprocess.run([*pcopy, str(src), f"{dst}/", "--partial", "--json"], capture_output=True, check=False)
    second = time.monotonic() - start
    report = json.loads(out.stdout)
    ok = same_content(src, dst / "big") and not part.exists()
    print(f"re-run: exit {report['exit_code']}, copied {report['bytes'] / 2**20:.1f} MiB, kept "
          f"{report['resumed_bytes'] / 2**20:.1f} MiB (resumed {report['resumed']}), {second:.2f} s; "
          f"result {'equals the source' if ok else 'DIFFERS'}")
    os.unlink(dst / "big")
    os.sync()
    start = time.monotonic()
    subprocess.run([*pcopy, str(src), f"{dst}/", "-q"], check=True)
    print(f"for comparison, a full copy: {time.monotonic() - start:.2f} s")
    shutil.rmtree(args.work, ignore_errors=True)
    return 0 if ok and report["bytes"] + report["resumed_bytes"] == size else 1


if __name__ == "__main__":
    sys.exit(main())
