"""The plain command line, `pcopy SRC DST` with at most -j N, -q and --[no-]progress, run
without typer.

Importing typer (and the click it vendors) takes ~40 ms: a tiny copy took 69 ms with it and
takes 42 without, a 20,000-file one on a page cache ~7% less. Most runs, interactive and
scripted alike, give two operands and perhaps -j, -q or --no-progress, so those are recognised
here and run with the very Config the typer command builds for them (tests/test_fastpath.py
compares the two for every form accepted here). Anything else goes to typer, which parses and
reports it as it always has: any other option, --help, an option given twice, an operand
starting with '-', '--', a -j value that is not a plain positive decimal number, a missing or
extra operand. On Windows everything goes to typer: click expands wildcards in the arguments
there.
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple, NoReturn

_JOBS = ("-j", "--jobs")
_QUIET = ("-q", "--quiet")
_PROGRESS = {"--progress": True, "--no-progress": False}


class Plain(NamedTuple):
    src: str
    dst: str
    jobs: int | None
    quiet: bool
    progress: bool | None = None  # None: a bar when stderr is a terminal (and not -q)


def _count(text: str) -> int | None:
    # What click's int type would also accept ("+4", " 4", "4_0", other scripts' digits) is
    # left to it: only ASCII digits here.
    if text.isascii() and text.isdigit() and int(text) >= 1:
        return int(text)
    return None


def parse(args: list[str]) -> Plain | None:
    """The plain command line in args (argv without the program), or None for typer's parser."""
    if os.name != "posix":
        return None
    operands: list[str] = []
    jobs: int | None = None
    quiet = False
    progress: bool | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") and arg:
            operands.append(arg)
            continue
        if arg in _QUIET and not quiet:
            quiet = True
            continue
        if arg in _PROGRESS and progress is None:
            progress = _PROGRESS[arg]
            continue
        if jobs is not None:
            return None  # given twice, or another option: typer's
        if arg in _JOBS and i < len(args):
            value, i = args[i], i + 1
        elif arg.startswith("--jobs="):
            value = arg[len("--jobs="):]
        elif arg.startswith("-j") and len(arg) > 2 and not arg.startswith("--"):
            value = arg[2:]
        else:
            return None
        jobs = _count(value)
        if jobs is None:
            return None
    if len(operands) != 2:
        return None
    return Plain(operands[0], operands[1], jobs, quiet, progress)


def run(plain: Plain) -> int:
    """Copy as `pcopy SRC DST [-j N] [-q] [--[no-]progress]` does; the exit code."""
    from pcopy import command
    from pcopy.config import Config, default_jobs

    root = command.running_as_root()
    # The fields pcopy.cli.copy_command sets otherwise than Config's defaults for these options
    # (tests/test_fastpath.py checks every field against it).
    config = Config(jobs=command.local_jobs(plain.jobs, default_jobs()), jobs_auto=plain.jobs is None,
                    preserve_owner=root, preserve_group=root)
    output = command.Output(json_report=False, quiet=plain.quiet, itemize=False, log=None)
    return command.run(plain.src, plain.dst, config, command.bar_wanted(plain.progress, plain.quiet), output,
                       jobs_given=plain.jobs is not None)


def main(plain: Plain) -> NoReturn:
    from pcopy.command import leave

    leave(lambda: sys.exit(run(plain)))
