"""A bounded signal storm in the suite (tests/storm.py has the rows and the checks; run it by hand
with many more trials). Every row gets trials at random moments, a third of them in the first
150 ms, at -j 2 and -j 8; every guarantee is checked on every trial and all failures are listed."""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import pytest
import storm  # beside the tests (pytest puts this directory on sys.path), a script as well

# The whole storm's time in CI (the suite must stay well under 10 minutes on 2 cores).
BUDGET_S = float(os.environ.get("PCOPY_STORM_BUDGET_S", "75"))
MIN_TRIALS_PER_ROW = 3


@pytest.fixture(scope="module")
def storm_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("storm") / "src"
    src.mkdir()
    # Two 16 MiB files and 400 files of 32 KiB: a copy of a few tenths of a second, long
    # enough for signals to land during the walk, the pool's start and the copying.
    storm.make_tree(src, large=2, large_mib=16, small=400, small_kib=32)
    return src


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for process groups")
def test_signal_storm(storm_src: Path, tmp_path: Path) -> None:
    seed = int(os.environ.get("PCOPY_STORM_SEED", time.time()))
    rng = random.Random(seed)
    trials: list[storm.Trial] = []
    start = time.monotonic()
    # -j 8 with 4 threads in each worker: their stops (every thread's temporary file removed)
    # are stormed too; on this local tree the default would stay at one thread.
    for jobs, extra in ((2, []), (8, ["--threads", "4"])):
        runner = storm.Storm(storm_src, tmp_path / f"j{jobs}", jobs, extra)
        runner.work.mkdir()
        runner.prepare()
        share = BUDGET_S / 2 - (time.monotonic() - start) / 2
        trials += storm.run_storm(runner, list(storm.ROWS), trials=50, seed=rng.randrange(1 << 30), budget_s=share)
    per_row = {row: sum(t.row == row for t in trials) for row in storm.ROWS}
    failed = [f"{t.row} at {t.delay_s * 1000:.0f} ms (exit {t.code}): {'; '.join(t.problems)}"
              for t in trials if t.problems]
    assert not failed, f"seed {seed}: {len(failed)} of {len(trials)} trials failed:\n" + "\n".join(failed)
    assert min(per_row.values()) >= MIN_TRIALS_PER_ROW, per_row


# What Python 3.11's site printed when a storm's first SIGINT landed while it ran the editable
# install's .pth line (a CI run), followed by pcopy's own line for the second SIGINT.
SITE_REPORT = """Error processing line 1 of /v/lib/python3.11/site-packages/__editable__.pcopy-0.1.0.pth:

  Traceback (most recent call last):
    File "/usr/lib/python3.11/functools.py", line 972, in __set_name__
      def __set_name__(self, owner, name):

  KeyboardInterrupt

  The above exception was the direct cause of the following exception:

  Traceback (most recent call last):
    File "<frozen site>", line 186, in addpackage
    File "/usr/lib/python3.11/ipaddress.py", line 672, in <module>
      class _BaseNetwork(_IPAddressBase):
  RuntimeError: Error calling __set_name__ on 'cached_property' instance 'broadcast_address' in '_BaseNetwork'

Remainder of file ignored
"""
# CI, 2026-12-02: a SIGINT at 16 ms, while Python 3.11 checked whether the console script is a
# zip archive it could import from.
ARGV0_REPORT = """Failed checking if argv[0] is an import path entry
Traceback (most recent call last):
  File "<frozen zipimport>", line 92, in __init__
KeyError: '/tmp/ci/.venv/bin/pcopy'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "<frozen zipimport>", line 94, in __init__
  File "<frozen zipimport>", line 433, in _read_directory
KeyboardInterrupt
"""
# 3 of 800 runs signalled 4-30 ms in (2026-12-03): a SIGINT in the weakref callback that drops an
# import's module lock.
LOCK_CB_REPORT = """Exception ignored in: <function _get_module_lock.<locals>.cb at 0x7f59a0920c20>
Traceback (most recent call last):
  File "<frozen importlib._bootstrap>", line 198, in cb
KeyboardInterrupt:\x20
"""  # (Python prints the empty message after ": ")
PCOPY_LINE = "pcopy: interrupted by SIGINT; temporary files removed, files under final names are complete\n"


def test_startup_reports_are_told_apart() -> None:
    assert storm.startup_reports(SITE_REPORT + PCOPY_LINE) == (1, PCOPY_LINE)
    assert storm.startup_reports(SITE_REPORT * 2) == (2, "")
    # Only a report at the start, of a KeyboardInterrupt: anything else stays for the checks.
    assert storm.startup_reports(PCOPY_LINE + SITE_REPORT) == (0, PCOPY_LINE + SITE_REPORT)
    other = SITE_REPORT.replace("KeyboardInterrupt", "ImportError")
    assert storm.startup_reports(other) == (0, other)
    assert storm.startup_reports(ARGV0_REPORT + PCOPY_LINE) == (1, PCOPY_LINE)
    assert storm.startup_reports(SITE_REPORT + ARGV0_REPORT + PCOPY_LINE) == (2, PCOPY_LINE)
    not_interrupted = ARGV0_REPORT.replace("\nKeyboardInterrupt\n", "\nPermissionError: no\n")
    assert storm.startup_reports(not_interrupted + PCOPY_LINE) == (0, not_interrupted + PCOPY_LINE)
    ours = 'Traceback (most recent call last):\n  File "/v/pcopy/runner.py", line 1, in run\nKeyboardInterrupt\n'
    assert storm.startup_reports(not_interrupted + ours) == (0, not_interrupted + ours)
    bar = "\rpcopy: 100%|###| 70.7/70.7 KiB | 10/10 files\n"
    assert storm.startup_reports(LOCK_CB_REPORT + bar) == (1, bar)
    in_pcopy = LOCK_CB_REPORT.replace("<frozen importlib._bootstrap>", "/v/pcopy/runner.py")
    assert storm.startup_reports(in_pcopy) == (0, in_pcopy)
