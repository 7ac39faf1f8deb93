"""Exceptions that end a whole copy. Per-entry failures are data (jobs.CopyFailure), not these."""

from __future__ import annotations


class RefusedError(Exception):
    """The copy was refused before anything was written (bad SRC/DST combination): exit 2."""


class CopyInterruptedError(BaseException):
    """SIGINT or SIGTERM arrived; carries the exit code (130 or 143). A BaseException so that no
    `except Exception` on the way up swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum
        self.kept: str | None = None  # a new DST's stage, kept for the next run (pcopy.stage)


class WorkerStop(BaseException):
    """Raised by a pool worker's own signal handler inside a job so that `finally` blocks run
    (its temporary file removed); the worker then leaves quietly (pool.serve)."""
