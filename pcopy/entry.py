"""The console script's first module: pcopy's signal handling starts here, before the imports
of the command line and the copy (typer alone takes ~40 ms, long enough for a Ctrl-C to land in).

Until the copy's own InterruptGuard takes over (command.run), nothing has been written and no
process started, so a signal simply ends pcopy with the documented code and one line. What
remains is the ~10 ms in which the interpreter starts, before any of pcopy runs: a signal there
gets Python's default behaviour (docs/interruption.md).
"""

import os
import signal
import sys


def _before_copy(signum: int, frame: object) -> None:
    name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
    try:
        os.write(2, f"pcopy: interrupted by {name} before copying began; nothing was written\n".encode())
    finally:
        os._exit(128 + signum)


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _before_copy)
    if os.environ.get("PCOPY_DEBUG_STACKS") and hasattr(signal, "SIGUSR2"):
        import faulthandler  # (built in: nothing to load)

        # A debugging aid, off by default: `kill -USR2 PID` prints every thread's Python stack
        # on stderr, in pcopy and in the workers and Manager it forks (they inherit it), so a
        # run that hangs can say where (the storm uses it). Reading other threads' stacks
        # while they run is not safe: 2 of 15 runs dumped mid-copy crashed (SIGSEGV).
        faulthandler.register(signal.SIGUSR2, all_threads=True)
    from pcopy.fastpath import parse

    # The plain `pcopy SRC DST [-j N] [-q] [--[no-]progress]` skips typer's ~40 ms import
    # (pcopy.fastpath).
    plain = parse(sys.argv[1:])
    if plain is not None:
        from pcopy.fastpath import main as plain_main

        plain_main(plain)
    from pcopy.cli import main as cli_main

    cli_main()
