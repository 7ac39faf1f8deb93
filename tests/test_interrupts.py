"""pcopy.interrupts: an interrupt whose raise Python had to drop (it landed in a __del__ or a
weakref callback: "Exception ignored in ...") is neither printed nor lost; check() raises it
again where the copy can stop. A storm trial found SIGTERM landing in importlib's module-lock
callback: a traceback on stderr, and the copy went on to exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pcopy import interrupts
from pcopy.errors import CopyInterruptedError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="os.kill(SIGTERM) ends the process on Windows")


class SignalledWhileCollected:
    """Sends SIGTERM to this process from __del__ and keeps running Python there, so the
    handler runs (and raises) inside __del__, where the exception cannot propagate."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        total = 0
        for i in range(100_000):  # the handler runs at the next bytecode boundaries
            total += i


def test_a_dropped_interrupt_is_raised_again_by_check(capfd: pytest.CaptureFixture[str]) -> None:
    with interrupts.signals_raise():
        guard = interrupts.active_guard()
        assert guard is not None
        interrupts.check()  # nothing pending: no raise
        SignalledWhileCollected()  # collected at once
        assert guard.swallowed and guard.first == signal.SIGTERM
        with pytest.raises(CopyInterruptedError) as raised:
            interrupts.check()
        assert raised.value.exit_code == 128 + signal.SIGTERM
        interrupts.check()  # raised once only
    assert "Exception ignored" not in capfd.readouterr().err
    assert sys.unraisablehook is not guard.unraisable  # put back with the handlers


def test_other_unraisable_exceptions_still_reach_the_previous_hook() -> None:
    seen: list[BaseException | None] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda args: seen.append(args.exc_value)
    try:
        with interrupts.signals_raise():
            class Broken:
                def __del__(self) -> None:
                    raise ValueError("from __del__")

            Broken()
    finally:
        sys.unraisablehook = previous
    assert len(seen) == 1 and isinstance(seen[0], ValueError)


WORKER_SCRIPT = """
import os, sys, types
from pcopy import worker
from pcopy.jobs import BatchJob, CopyOptions
src, dst = sys.argv[1], sys.argv[2]
worker.init_worker()
# What the hook sees when SIGTERM's _Terminated lands in a __del__ during a job:
worker._in_job = True
class Dropped:
    def __del__(self):
        os.kill(os.getpid(), 15)
        total = 0
        for i in range(100_000):
            total += i
Dropped()
worker._in_job = False
task = worker.task_from_stat(src, dst, os.stat(src), True)
worker.run_job(BatchJob(1, (task,), CopyOptions()))
print("the worker went on after its job")
"""


def test_a_worker_whose_stop_was_dropped_leaves_after_its_job(tmp_path: Path) -> None:
    src, dst = tmp_path / "f", tmp_path / "g"
    src.write_bytes(b"x" * 1000)
    run = subprocess.run([sys.executable, "-c", WORKER_SCRIPT, str(src), str(dst)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 128 + signal.SIGTERM, (run.returncode, run.stdout, run.stderr)
    assert run.stderr == "" and "went on" not in run.stdout
    assert [p.name for p in tmp_path.iterdir() if ".pcopy-" in p.name] == []
