"""ParentTemps: the temporary files the parent itself makes (split files' pre-sized targets, hard
links' second names) until they are renamed into place or removed.

Created and recorded in one deferred section (interrupts.deferred: a signal cannot fall between
the two), so an interruption removes every one of them; a worker's clean-up after a death keeps
them (a split file's ranges are run again into it).
"""

from __future__ import annotations

import os
from contextlib import suppress

from pcopy.interrupts import deferred


class ParentTemps:
    def __init__(self) -> None:
        self.paths: set[str] = set()

    def add(self, path: str) -> None:
        """Record path (call inside the deferred section that created it)."""
        self.paths.add(path)

    def renamed(self, tmp: str, dst: str) -> None:
        """tmp renamed over dst: no longer ours to remove (one deferred section for both)."""
        with deferred():
            os.replace(tmp, dst)
            self.paths.discard(tmp)

    def drop(self, path: str) -> None:
        """Remove one (it failed or is not wanted)."""
        remove(path)
        self.paths.discard(path)

    def remove_all(self) -> None:
        for path in self.paths:
            remove(path)
        self.paths.clear()


def remove(path: str) -> None:
    with suppress(OSError):
        os.unlink(path)
