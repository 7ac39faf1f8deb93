"""pcopy.copy: the CLI's engine as one typed function."""

from __future__ import annotations

import os
from collections.abc import Callable

from pcopy.config import DEFAULT_BUFFER_BYTES, DEFAULT_CHUNK_BYTES, Config, Method, default_jobs
from pcopy.progress import CallbackProgress, ProgressSink
from pcopy.report import CopyReport
from pcopy.runner import run_copy
from pcopy.target import locate

ProgressCallback = Callable[[int, int, int], None]


def copy(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    jobs: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
    method: Method | str = Method.AUTO,
    buffer_size: int = DEFAULT_BUFFER_BYTES,
    dereference: bool = False,
    verify: bool = False,
    fsync: bool = False,
    preserve_hard_links: bool = True,
    start_method: str | None = None,
    progress: ProgressCallback | ProgressSink | None = None,
) -> CopyReport:
    """Copy src to dst exactly as `pcopy SRC DST` does and return the report.

    Per-entry failures are in ``report.failures`` (check ``report.exit_code``); refused input
    raises :class:`pcopy.RefusedError`; SIGINT/SIGTERM raise :class:`pcopy.CopyInterruptedError`
    after temporary files are removed. ``progress`` is called as
    ``progress(bytes_done, bytes_total, files_done)`` from the calling thread.
    """
    config = Config(
        jobs=jobs if jobs is not None else default_jobs(),
        chunk_bytes=chunk_size,
        method=Method(method),
        buffer_bytes=buffer_size,
        dereference=dereference,
        verify=verify,
        fsync=fsync,
        preserve_hard_links=preserve_hard_links,
        start_method=start_method,
    )
    target = locate(os.fspath(src), os.fspath(dst))
    sink: ProgressSink | None
    sink = progress if progress is None or isinstance(progress, ProgressSink) else CallbackProgress(progress)
    return run_copy(target, config, sink)
