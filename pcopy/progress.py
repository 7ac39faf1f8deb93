"""The parent's progress display: the only module that imports tqdm (workers never touch it;
tqdm issues #484 and #796 show what goes wrong when they do)."""

from __future__ import annotations

import sys
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ProgressSink(Protocol):
    """What the runner tells the display. `active` False means nobody listens, so the runner
    need not start a Manager queue to carry worker progress at all."""

    active: bool

    def add_total(self, nbytes: int) -> None: ...
    def advance(self, nbytes: int, files: int) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    active = False

    def add_total(self, nbytes: int) -> None:
        pass

    def advance(self, nbytes: int, files: int) -> None:
        pass

    def close(self) -> None:
        pass


class TqdmProgress:
    """One bar on stderr: bytes, a total that grows while the walk goes on, rate, ETA, files."""

    active = True

    def __init__(self, stream: Any = None) -> None:
        from tqdm import tqdm  # type: ignore[import-untyped]  # imported only when a bar is shown: keeps start-up fast

        self._bar = tqdm(
            total=0, unit="B", unit_scale=True, unit_divisor=1024, file=stream or sys.stderr,
            dynamic_ncols=True, mininterval=0.1, leave=True, desc="pcopy",
        )
        self._files = 0

    def add_total(self, nbytes: int) -> None:
        self._bar.total = (self._bar.total or 0) + nbytes

    def advance(self, nbytes: int, files: int) -> None:
        if files:
            self._files += files
            self._bar.set_postfix_str(f"{self._files} files", refresh=False)
        self._bar.update(nbytes)

    def close(self) -> None:
        self._bar.close()


class CallbackProgress:
    """Progress for library callers: callback(bytes_done, bytes_total, files_done)."""

    active = True

    def __init__(self, callback: Any) -> None:
        self._callback = callback
        self._done = 0
        self._total = 0
        self._files = 0

    def add_total(self, nbytes: int) -> None:
        self._total += nbytes

    def advance(self, nbytes: int, files: int) -> None:
        self._done += nbytes
        self._files += files
        self._callback(self._done, self._total, self._files)

    def close(self) -> None:
        pass
