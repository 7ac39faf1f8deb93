"""pcopy.interrupts: an interrupt whose raise Python had to drop (it landed in a __del__ or a
weakref callback: "Exception ignored in ...") is neither printed nor lost; check() raises it
again where the copy can stop. A storm trial found SIGTERM landing in importlib's module-lock
callback: a traceback on stderr, and the copy went on to exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


# Code that runs as importlib's own does (its frames carry importlib's file name). The real
# case: importlib's module-lock weakref callback takes the import lock one bytecode before the
# `try` that releases it; a raise there left the lock held for good, and the next fork (a
# worker's or the Manager's start, with SIGINT/SIGTERM blocked) waited for it for ever.
IMPORTLIB_LIKE = compile("""
def busy(kill, *args):
    kill(*args)  # (os.kill itself: the handler runs when it returns, in this frame)
    total = 0
    for i in range(300_000):  # the handler runs at the next bytecode boundaries (several ms)
        total += i
    return total
""", "<frozen importlib._bootstrap>", "exec")


def _busy_in_import_machinery() -> Callable[..., int]:
    namespace: dict[str, Any] = {}
    exec(IMPORTLIB_LIKE, namespace)
    return namespace["busy"]  # type: ignore[no-any-return]


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="the retry is a SIGALRM timer")
def test_an_interrupt_inside_the_import_machinery_is_raised_just_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interrupts, "RETRY_S", 0.2)  # (so the checks below run before the retry)
    busy = _busy_in_import_machinery()
    alarm_before = signal.getsignal(signal.SIGALRM)
    with interrupts.signals_raise():
        guard = interrupts.active_guard()
        assert guard is not None
        busy(os.kill, os.getpid(), signal.SIGTERM)  # no raise in there...
        assert guard.first is None and guard.pending == signal.SIGTERM
        started = time.monotonic()
        with pytest.raises(CopyInterruptedError) as raised:  # ...but just after
            while time.monotonic() - started < 5:
                time.sleep(0.001)
        assert time.monotonic() - started < 1
        assert raised.value.exit_code == 128 + signal.SIGTERM
        assert guard.pending is None and guard.first == signal.SIGTERM
    assert signal.getsignal(signal.SIGALRM) == alarm_before  # the retry's handler is gone with the guard


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="the retry is a SIGALRM timer")
def test_a_held_interrupt_stays_the_first_when_another_signal_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interrupts, "RETRY_S", 0.2)
    busy = _busy_in_import_machinery()
    with interrupts.signals_raise():
        guard = interrupts.active_guard()
        assert guard is not None
        busy(os.kill, os.getpid(), signal.SIGINT)
        assert guard.pending == signal.SIGINT
        with pytest.raises(CopyInterruptedError) as raised:
            os.kill(os.getpid(), signal.SIGTERM)  # outside: handled at once, as the SIGINT
            time.sleep(1)
        assert raised.value.exit_code == 128 + signal.SIGINT
        assert guard.count == 1 and guard.pending is None
        # The retry's handler stays while the guard does: a timer that fired just before the
        # second signal cancelled it still trips SIGALRM, and finding no Python handler then,
        # Python printed "OSError: Signal 14 ignored due to race condition" (a CI storm trial).
        assert signal.getsignal(signal.SIGALRM) == guard._retry


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
