"""The command line: options -> one Config -> run_copy -> output and exit code, all in one place.

Exit codes: 0 all copied; 1 some entries failed; 2 usage error or refused input;
130 SIGINT; 143 SIGTERM.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from typing import Annotated, Optional

import typer

from pcopy import __version__
from pcopy.config import DEFAULT_BUFFER_BYTES, DEFAULT_CHUNK_BYTES, Config, Method, default_jobs, parse_size

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2

app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


class StartMethod(str, Enum):
    fork = "fork"
    forkserver = "forkserver"
    spawn = "spawn"


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pcopy {__version__}")
        raise typer.Exit()


def _err(line: str) -> None:
    """One line on stderr; never fails on names the terminal's encoding cannot show."""
    sys.stderr.buffer.write((line + "\n").encode(sys.stderr.encoding or "utf-8", "backslashreplace"))
    sys.stderr.flush()


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def copy_command(
    src: Annotated[str, typer.Argument(help="File or directory to copy.", show_default=False)],
    dst: Annotated[str, typer.Argument(help="Where the copy goes (created if missing).",
                                       show_default=False)],
    jobs: Annotated[Optional[int], typer.Option(
        "-j", "--jobs", min=1, show_default=False,
        help="Worker processes (default: CPUs available to pcopy).")] = None,
    chunk_size: Annotated[Optional[str], typer.Option(
        "--chunk-size", metavar="SIZE", show_default=False,
        help="Files larger than this are split into byte ranges copied in parallel "
             "(e.g. 1048576, 64K, 8M, 1G; default 256M).")] = None,
    method: Annotated[Method, typer.Option(
        "--method", case_sensitive=False,
        help="auto: kernel copy (copy_file_range, sendfile) with fallbacks; readwrite: the "
             "plain read/write loop.")] = Method.AUTO,
    buffer_size: Annotated[Optional[str], typer.Option(
        "--buffer-size", metavar="SIZE", show_default=False,
        help="Use the read/write loop with this buffer (1024 reproduces the original teaching "
             "copier; implies --method readwrite).")] = None,
    dereference: Annotated[bool, typer.Option(
        "-L", "--dereference", help="Copy what symlinks in the tree point to (loops are "
                                    "detected and reported).")] = False,
    verify: Annotated[bool, typer.Option(
        "--verify", help="After copying each file, re-read source and copy and compare BLAKE2b "
                         "digests; a mismatch is reported and the copy discarded.")] = False,
    fsync: Annotated[bool, typer.Option(
        "--fsync", help="Flush each file (and each directory) to stable storage before it is "
                        "renamed into place, for backups that must survive a power cut.")] = False,
    progress: Annotated[Optional[bool], typer.Option(
        "--progress/--no-progress", show_default=False,
        help="Show a progress bar on stderr (default: when stderr is a terminal).")] = None,
    json_report: Annotated[bool, typer.Option(
        "--json", help="Print a machine-readable report on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print errors only.")] = False,
    start_method: Annotated[Optional[StartMethod], typer.Option(
        "--start-method", show_default=False,
        help="multiprocessing start method (default: fork on Linux, spawn elsewhere).")] = None,
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = None,
) -> None:
    """Copy SRC to DST in parallel, preserving modes, times, symlinks, hard links and holes.

    SRC a directory: DST becomes its copy (merged into DST when DST exists). SRC a file: DST is
    its copy, or DST/<name> when DST is a directory. Up-to-date files (same size and mtime) are
    skipped. Exit codes: 0 all copied, 1 some entries failed, 2 usage error or refused input,
    130/143 interrupted.
    """
    config = Config(
        jobs=jobs if jobs is not None else default_jobs(),
        chunk_bytes=_size(chunk_size) if chunk_size is not None else DEFAULT_CHUNK_BYTES,
        method=Method.READWRITE if buffer_size is not None else method,
        buffer_bytes=_size(buffer_size) if buffer_size is not None else DEFAULT_BUFFER_BYTES,
        dereference=dereference,
        verify=verify,
        fsync=fsync,
        start_method=start_method.value if start_method is not None else None,
    )
    show_bar = progress if progress is not None else (sys.stderr.isatty() and not quiet)
    raise typer.Exit(_run(src, dst, config, show_bar, json_report, quiet))


def _run(src: str, dst: str, config: Config, show_bar: bool, json_report: bool, quiet: bool) -> int:
    from pcopy.errors import CopyInterruptedError, RefusedError
    from pcopy.progress import NullProgress, ProgressSink, TqdmProgress
    from pcopy.report import format_failure
    from pcopy.runner import InterruptGuard, run_copy
    from pcopy.target import locate

    # For the rest of the process: the first signal unwinds with clean-up, a second exits at once,
    # also while the interruption is being reported.
    InterruptGuard().install()
    try:
        target = locate(src, dst)
        sink: ProgressSink = TqdmProgress() if show_bar else NullProgress()
        report = run_copy(target, config, sink)
    except RefusedError as exc:
        _err(f"pcopy: {exc}")
        return EXIT_USAGE
    except CopyInterruptedError as exc:
        name = "SIGINT" if exc.exit_code == 130 else "SIGTERM"
        _err(f"pcopy: interrupted by {name}; temporary files removed, files under final names are complete")
        return exc.exit_code
    except OSError as exc:
        _err(f"pcopy: {exc.strerror or exc}: {exc.filename!r}" if exc.filename else f"pcopy: {exc}")
        return EXIT_FAILURES
    for failure in report.failures:
        _err(format_failure(failure))
    if json_report:
        typer.echo(report.to_json())
    elif not quiet:
        typer.echo(report.summary())
    return report.exit_code


def main() -> None:
    try:
        app(prog_name="pcopy")
    except SystemExit as exc:
        if exc.code in (128 + 2, 128 + 15):
            # Interrupted: leave without interpreter finalization, which resets signal handlers
            # to their defaults - a second Ctrl-C arriving then would kill us with -SIGINT
            # instead of the documented 130.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(exc.code))
        raise
