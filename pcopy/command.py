"""Running a copy once its options are known, and leaving: shared by the typer command
(pcopy.cli) and the plain command line that skips typer (pcopy.fastpath). Nothing here imports
typer: that import alone is ~40 ms, most of a small copy's start-up.

Exit codes: 0 all copied; 1 some entries failed (or the report could not be written);
2 usage error or refused input; 3 --max-delete exceeded (nothing deleted); 130 SIGINT; 143 SIGTERM.
"""

import contextlib
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from pcopy.config import Config, Engine

if TYPE_CHECKING:
    from pcopy.report import CopyReport
    from pcopy.target import Target

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_DELETE_LIMIT = 3  # the same value as pcopy.report.EXIT_DELETE_LIMIT

# -j beyond this many workers per CPU is not started: more processes only wait on each other
# (with a pool that started every worker up front, -j 1000 on 3,000 files took 7.8 s here).
MAX_JOBS_PER_CPU = 4


def local_jobs(jobs: int | None, cpus: int) -> int:
    """Worker processes on this machine: -j, at most MAX_JOBS_PER_CPU per CPU; default one per CPU."""
    return min(jobs, MAX_JOBS_PER_CPU * cpus) if jobs is not None else cpus


def running_as_root() -> bool:
    """Owner and group are kept by default only when pcopy may set them (cp -a, rsync -a)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def err(line: str) -> None:
    """One line on stderr; never fails on names the terminal's encoding cannot show, nor on a
    stderr that cannot be written (there is nowhere left to say so)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.buffer.write((line + "\n").encode(sys.stderr.encoding or "utf-8", "backslashreplace"))
        sys.stderr.flush()


def write_out(text: str) -> bool:
    """Write text to stdout and flush it; False, after one line on stderr, when it cannot be
    written (a full disk, /dev/full, a closed pipe): the report is lost, not the copy."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        err(f"pcopy: cannot write to standard output: {reason}")
        return False
    return True


def bar_wanted(progress: bool | None, quiet: bool) -> bool:
    """--progress/--no-progress, else a bar when stderr is a terminal and not -q."""
    return progress if progress is not None else sys.stderr.isatty() and not quiet


class Output:
    """Display choices (never copy settings): JSON (one document or one object per event) or a
    summary, itemized changes, a log file. Nothing written here may end in a traceback."""

    def __init__(self, json_report: bool, quiet: bool, itemize: bool, log: str | None,
                 json_lines: bool = False) -> None:
        self.json_report = json_report
        self.json_lines = json_lines
        self.quiet = quiet
        self.itemize = itemize
        self.log = log
        self.started = ""
        if json_report or json_lines:
            from pcopy.report import iso_now

            self.started = iso_now()

    def _emit_json(self, doc: dict[str, Any]) -> bool:
        from pcopy.report import dumps, report_events

        if self.json_lines:
            return write_out("".join(dumps(event, indent=None) + "\n" for event in report_events(doc)))
        return write_out(dumps(doc) + "\n")

    def _run_info(self, src: str | None, dst: str | None) -> Any:
        from pcopy.report import RunInfo, iso_now

        return RunInfo(src, dst, self.started or iso_now(), iso_now())

    def refused(self, src: str | None, dst: str | None, error: BaseException | str) -> int:
        """A run refused before anything was written: exit 2, and with --json/--json-lines the
        one JSON object that says why (the message is on stderr as well)."""
        if self.json_report or self.json_lines:
            from pcopy.report import report_document

            self._emit_json(report_document(None, self._run_info(src, dst), error=error, exit_code=EXIT_USAGE))
        return EXIT_USAGE

    def interrupted(self, src: str, dst: str, exit_code: int, message: str) -> int:
        """An interrupted run (130/143): with --json/--json-lines one JSON object saying so (its
        counts are not known: the copy stopped before its report was made)."""
        if self.json_report or self.json_lines:
            from pcopy.report import report_document

            self._emit_json(report_document(None, self._run_info(src, dst), error=message,
                                            exit_code=exit_code))
        return exit_code

    def show(self, report: "CopyReport", target: "Target", src: str | None = None,
             dst: str | None = None) -> int:
        """Print the report; returns the exit code (1 when the report or the log cannot be
        written and the copy itself succeeded)."""
        from pcopy.jobs import Kind

        if report.delete_skipped:
            err(f"pcopy: --delete skipped: {report.failed} entries failed (--delete-anyway deletes anyway)")
        if report.delete_limited:
            err("pcopy: --delete stopped by --max-delete: more entries would be deleted than "
                "allowed; nothing was deleted")
        code = report.exit_code
        written = True
        if self.json_report or self.json_lines:
            from pcopy.report import report_document

            doc = report_document(report, self._run_info(src, dst), roots=(target.src, target.dst))
            written = self._emit_json(doc)
        # Paths relative to DST for a tree; a single file's path as it is.
        lines = (report.change_lines(target.dst if target.src_kind is Kind.DIR else None)
                 if self.itemize or self.log is not None else [])
        if not (self.json_report or self.json_lines):
            text = [*lines] if self.itemize else []
            if not self.quiet:
                text.append(report.summary())
            if text:
                written = write_out("".join(line + "\n" for line in text))
        if self.log is not None:
            try:
                with open(self.log, "a", encoding="utf-8", errors="backslashreplace") as fh:
                    fh.writelines(line + "\n" for line in lines)
                    fh.write(report.summary() + "\n")
            except OSError as exc:
                err(f"pcopy: cannot write --log file: {exc.strerror}: {self.log!r}")
                written = False
        return code if written else code or EXIT_FAILURES


def run(src: str, dst: str, config: Config, show_bar: bool, output: Output, jobs_given: bool = True) -> int:
    from pcopy.errors import CopyInterruptedError, RefusedError
    from pcopy.interrupts import InterruptGuard
    from pcopy.jobs import Kind
    from pcopy.progress import NullProgress, ProgressSink, TqdmProgress
    from pcopy.report import escape, format_failure
    from pcopy.runner import run_copy
    from pcopy.target import locate

    # For the rest of the process: the first signal unwinds with clean-up; later ones, while the
    # (bounded) clean-up runs and the interruption is reported, do not cut it short.
    InterruptGuard().install()
    try:
        target = locate(src, dst)
        if config.delete and target.src_kind is not Kind.DIR:
            err("pcopy: --delete needs SRC to be a directory")
            return output.refused(src, dst, "--delete needs SRC to be a directory")
        sink: ProgressSink = TqdmProgress() if show_bar else NullProgress()
        if config.engine is Engine.RAY:  # connect, and check every node sees SRC and DST
            from pcopy.raypool import ray_session

            with ray_session(target, config, jobs_given) as config:
                report = run_copy(target, config, sink)
        else:
            report = run_copy(target, config, sink)
    except RefusedError as exc:
        err(f"pcopy: {exc}")
        return output.refused(src, dst, exc)
    except CopyInterruptedError as exc:
        name = "SIGINT" if exc.exit_code == 130 else "SIGTERM"
        if exc.kept is not None:
            message = (f"interrupted by {name}; the new copy so far is kept in {escape(exc.kept)} "
                       "(the same command again finishes it)")
        else:
            kept = "; partial files kept for the next --partial run" if config.partial else ""
            message = f"interrupted by {name}; temporary files removed, files under final names are complete{kept}"
        err(f"pcopy: {message}")
        return output.interrupted(src, dst, exc.exit_code, message)
    except OSError as exc:
        err(f"pcopy: {exc.strerror or exc}: {exc.filename!r}" if exc.filename else f"pcopy: {exc}")
        return EXIT_FAILURES
    for warning in report.warnings:
        err(f"pcopy: warning: {warning}")
    for failure in report.failures:
        err(format_failure(failure))
    return output.show(report, target, src, dst)


def leave(command: Callable[[], object]) -> NoReturn:
    """Run the command line's command and end the process with its exit code (SystemExit's)."""
    from pcopy.errors import CopyInterruptedError

    code = 0
    try:
        try:
            command()
        except CopyInterruptedError as exc:  # after the copy, while its report was written
            err(f"pcopy: interrupted by {'SIGINT' if exc.exit_code == 130 else 'SIGTERM'}")
            raise SystemExit(exc.exit_code) from None
    except SystemExit as exc:
        if exc.code is not None and not isinstance(exc.code, int):
            raise  # a message for Python to print
        code = exc.code or 0
    # Leave without interpreter finalization. Everything pcopy opened is closed by now (pool
    # joined, log file written); finalization would only tear down modules and free memory the
    # OS takes back anyway: 15-35 ms, a sixth of a small copy's wall time. It also resets signal
    # handlers, so a second Ctrl-C arriving then would kill us with -SIGINT instead of the
    # documented 130.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (pcopy --json | head)
            stream.flush()
    _remove_mp_tempdir()
    os._exit(code)


def _remove_mp_tempdir() -> None:
    """multiprocessing's temporary directory, made for the forkserver's socket (--start-method
    forkserver): its exit handler would remove it, and os._exit skips that (every such run
    left a /tmp/pymp-* behind). The forkserver leaves once pcopy is gone; it needs the socket's
    name no more."""
    process = sys.modules.get("multiprocessing.process")
    if process is None:
        return
    config = getattr(process.current_process(), "_config", {})
    tempdir = config.get("tempdir") if isinstance(config, dict) else None
    if isinstance(tempdir, str):
        import shutil

        shutil.rmtree(tempdir, ignore_errors=True)
