"""The signal storm of tests/storm.py with the snapshot options: every row (SIGINT/SIGTERM to
pcopy or its group, twice, SIGKILL of a worker, of pcopy, of the Manager) at random moments, with
`--bwlimit 400M -b` and with `--link-dest` (a snapshot in which every 7th file differs), at -j 2
and -j 8, every guarantee checked on every trial. By hand (not in the suite: minutes):

    .venv/bin/python tests/storm_backups.py 10        # 10 trials per row and combination
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import storm


def main() -> int:
    trials_per_row = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    work = Path(tempfile.mkdtemp(prefix="pcopy-storm-backups-"))
    failed = 0
    try:
        src = work / "src"
        src.mkdir()
        storm.make_tree(src, large=2, large_mib=16, small=400, small_kib=32)
        snap = work / "snap"
        subprocess.run([*storm.pcopy_command(), str(src), str(snap), "-q"], check=True)
        for path in list(snap.rglob("*.dat"))[::7]:  # these differ: copied, the rest linked
            path.write_bytes(b"x")
        combos = (("bwlimit+backup", ["--bwlimit", "400M", "-b"]), ("link-dest", ["--link-dest", str(snap)]))
        for name, extra in combos:
            for jobs in (2, 8):
                runner = storm.Storm(src, work / f"{name}-{jobs}", jobs, extra)
                runner.work.mkdir()
                runner.prepare()
                trials = storm.run_storm(runner, list(storm.ROWS), trials=trials_per_row,
                                         seed=random.randrange(1 << 30))
                bad = [f"{t.row} at {t.delay_s * 1000:.0f} ms (exit {t.code}): {t.problems}"
                       for t in trials if t.problems]
                failed += len(bad)
                print(f"{name} -j {jobs}: {len(trials)} trials, {len(bad)} failed", flush=True)
                for line in bad[:5]:
                    print("  " + line)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
