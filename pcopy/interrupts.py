"""What SIGINT and SIGTERM mean in pcopy's parent process, and how processes are started so that
a signal can never catch one half-made.

The parent: the first signal raises CopyInterruptedError (130/143) where the parent is, so the
clean-up runs on the way up, except inside a `deferred()` section (creating a temporary file
and recording its name, starting workers), where it is held and raised at the section's end.
Later signals, while that bounded clean-up runs, are ignored: a second Ctrl-C 50 ms after the
first must not abandon temporary files or workers. A third one leaves at once (an escape hatch
for a clean-up stuck on a hung file system).

Children: `signals_blocked()` blocks SIGINT and SIGTERM in the parent around fork, so a child
starts with them pending instead of running the parent's handler (Python's handlers and the
signal mask are both inherited through fork, and the mask through exec, so spawn and forkserver
children too). The child installs its own handlers and only then unblocks (pool.serve).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from pcopy.errors import CopyInterruptedError

SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Signals that end the clean-up at once: the third (first + one ignored) and later.
GIVE_UP_AFTER = 3

# How soon a signal that landed inside the import machinery is tried again (see handle).
RETRY_S = 0.005
_CAN_RETRY = hasattr(signal, "setitimer") and hasattr(signal, "SIGALRM")


def _in_import_machinery(frame: Any) -> bool:
    """Whether Python was running importlib's own code when the signal came (not a module's
    body being imported: an exception leaves that through importlib's clean-up as an
    ImportError would)."""
    return frame is not None and frame.f_code.co_filename.startswith("<frozen importlib")


class InterruptGuard:
    """SIGINT and SIGTERM raise CopyInterruptedError, once; see the module note."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.count = 0
        self.deferring = 0
        self.held: int | None = None
        # handle()'s raise landed where Python cannot let an exception out (a weakref callback,
        # a __del__: "Exception ignored in ..."): check() raises it again where it can.
        self.swallowed = False
        self.previous_hook: Callable[[Any], Any] = sys.unraisablehook
        # A signal held back because it landed inside importlib (see handle), and the SIGALRM
        # handler that was there before the retry's (put back by restore only: a timer that
        # fired just before a cancel still trips SIGALRM, and with no Python handler by then
        # Python prints "Signal 14 ignored due to race condition", a storm trial saw).
        self.pending: int | None = None
        self.previous_alarm: Any = None
        self.alarm_set = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.first is None and _CAN_RETRY and _in_import_machinery(frame):
            # An exception raised here can leave importlib's lock held for good: its module-lock
            # weakref callback takes the lock one bytecode before the `try` that releases it
            # (the raise is then also swallowed, "Exception ignored in ... cb"). Imports in any
            # other thread then wait for ever, in this process and in a child forked after it:
            # the bar's display thread importing tqdm never ended (progress.close bounds the
            # wait). So the signal is held and tried again a moment later, by a timer: the
            # import machinery is left within microseconds.
            if self.pending is None:
                self.pending = signum
                if not self.alarm_set:
                    self.previous_alarm = signal.signal(signal.SIGALRM, self._retry)
                    self.alarm_set = True
                signal.setitimer(signal.ITIMER_REAL, RETRY_S)
            return
        if self.pending is not None:  # another signal, outside importlib: the held one is first
            signum = self.pending
            self._cancel_retry()
        self.count += 1
        if self.first is not None:
            if self.count >= GIVE_UP_AFTER:
                os._exit(128 + self.first)
            return  # already stopping: the clean-up is bounded, let it finish
        self.first = signum
        if self.deferring:
            self.held = signum
            return
        raise CopyInterruptedError(signum)

    def _retry(self, signum: int, frame: Any) -> None:
        """SIGALRM, set by handle: the held signal, handled now (or again later)."""
        if self.pending is None:
            return
        if _in_import_machinery(frame):
            signal.setitimer(signal.ITIMER_REAL, RETRY_S)
            return
        self.handle(self.pending, frame)

    def _cancel_retry(self) -> None:
        self.pending = None
        signal.setitimer(signal.ITIMER_REAL, 0)  # (_retry stays: a SIGALRM already due finds nothing)

    def install(self) -> dict[int, Any]:
        """The handlers, and the hook that catches a swallowed raise; returns what restore()
        puts back."""
        self.previous_hook, sys.unraisablehook = sys.unraisablehook, self.unraisable
        return {sig: signal.signal(sig, self.handle) for sig in SIGNALS}

    def restore(self, previous: dict[int, Any]) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)
        sys.unraisablehook = self.previous_hook
        if self.pending is not None:  # (a retry still due)
            self._cancel_retry()
        if self.alarm_set:  # the caller's SIGALRM back (None: not set from Python, the default)
            signal.signal(signal.SIGALRM, signal.SIG_DFL if self.previous_alarm is None else self.previous_alarm)
            self.alarm_set = False

    def unraisable(self, args: Any) -> None:
        """sys.unraisablehook: the interrupt raised where it could only be printed and dropped
        (importlib's module-lock weakref callback, run during an import, was one: SIGTERM then
        printed a traceback and the copy went on to exit 0). Noted for check(), not printed."""
        if isinstance(args.exc_value, CopyInterruptedError):
            self.swallowed = True
            return
        self.previous_hook(args)

    @contextmanager
    def deferring_section(self) -> Iterator[None]:
        self.deferring += 1
        try:
            yield
        finally:
            self.deferring -= 1
        if not self.deferring and self.held is not None:
            signum, self.held = self.held, None
            raise CopyInterruptedError(signum)


def check() -> None:
    """Raise the interrupt again if its first raise was dropped (InterruptGuard.unraisable).
    Called where the copy may stop: between the steps of its loop, and before it reports
    success."""
    guard = active_guard()
    if guard is not None and guard.swallowed:
        guard.swallowed = False
        raise CopyInterruptedError(guard.first if guard.first is not None else signal.SIGINT)


def active_guard() -> InterruptGuard | None:
    """The InterruptGuard handling SIGINT in this process, if any (only the main thread may ask
    for handlers to change, but any thread may read them)."""
    handler = signal.getsignal(signal.SIGINT)
    owner = getattr(handler, "__self__", None)
    return owner if isinstance(owner, InterruptGuard) else None


def deferred() -> Any:
    """A section no signal interrupts halfway: the guard raises at its end instead. Outside
    pcopy's parent (no guard installed) it changes nothing."""
    guard = active_guard()
    return guard.deferring_section() if guard is not None else nullcontext()


@contextmanager
def signals_blocked(all_threads: bool = False) -> Iterator[None]:
    """SIGINT and SIGTERM held back in this thread (so in processes it starts) while inside; in
    the main thread only, unless all_threads. Windows has no signal masks: there a child relies
    on installing its handlers first thing."""
    if not hasattr(signal, "pthread_sigmask") or (
            not all_threads and threading.get_ident() != threading.main_thread().ident):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def unblock_signals() -> None:
    """In a child, once its own handlers are in place: let the held signals in."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


@contextmanager
def signals_raise() -> Iterator[None]:
    """Install an InterruptGuard for a copy, unless the caller (the CLI, for the whole life of
    the process) already did. Only the main thread may install handlers: library calls from
    other threads keep the process' handlers."""
    if threading.current_thread() is not threading.main_thread() or active_guard() is not None:
        yield
        return
    guard = InterruptGuard()
    previous = guard.install()
    try:
        yield
    finally:
        guard.restore(previous)
