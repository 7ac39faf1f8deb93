"""pcopy.copy: the CLI's engine as one typed function."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from pcopy.config import DEFAULT_BUFFER_BYTES, DEFAULT_CHUNK_BYTES, Compare, Config, Engine, Method, default_jobs
from pcopy.errors import RefusedError
from pcopy.jobs import Kind
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
    chunk_size: int | None = DEFAULT_CHUNK_BYTES,
    threads: int | None = None,
    method: Method | str = Method.AUTO,
    buffer_size: int = DEFAULT_BUFFER_BYTES,
    dereference: bool = False,
    verify: bool = False,
    fsync: bool = False,
    preserve_hard_links: bool = True,
    start_method: str | None = None,
    progress: ProgressCallback | ProgressSink | None = None,
    checksum: bool = False,
    ignore_times: bool = False,
    update: bool = False,
    no_clobber: bool = False,
    delete: bool = False,
    delete_anyway: bool = False,
    max_delete: int | None = None,
    filters: Sequence[tuple[str, str]] | None = None,
    dry_run: bool = False,
    record_changes: bool = False,
    preserve_perms: bool = True,
    preserve_times: bool = True,
    preserve_xattrs: bool = False,
    preserve_owner: bool | None = None,
    preserve_group: bool | None = None,
    engine: Engine | str = Engine.LOCAL,
    ray_address: str | None = None,
) -> CopyReport:
    """Copy src to dst exactly as `pcopy SRC DST` does and return the report.

    Per-entry failures are in ``report.failures`` (check ``report.exit_code``); refused input
    raises :class:`pcopy.RefusedError`; SIGINT/SIGTERM raise :class:`pcopy.CopyInterruptedError`
    after temporary files are removed. ``progress`` is called as
    ``progress(bytes_done, bytes_total, files_done)`` from the calling thread, after each batch
    of worker reports: bytes_total grows while the tree is being read, counts a hard-linked
    inode's bytes once, and up-to-date files count as done, so after a copy without failures the
    last call has bytes_done == bytes_total (docs/progress.md). ``progress`` may instead be a
    ``pcopy.progress.ProgressSink``, which also learns file totals, skipped files and when the
    count is final.

    The backup options mirror the CLI's: ``checksum`` (-c), ``ignore_times`` (-I), ``update``
    (-u), ``no_clobber``, ``delete``/``delete_anyway``/``max_delete`` (``report.exit_code`` is 3
    when the limit stopped the deletion), ``filters`` as ("include" | "exclude" |
    "exclude-from", value) pairs in order, ``dry_run``, ``record_changes`` (fills
    ``report.changes`` with (action, dst path) pairs), and what metadata to keep
    (``preserve_owner``/``preserve_group`` None: when running as root).

    ``engine="ray"`` runs the jobs on a Ray cluster (``pip install 'pcopy[ray]'``): the one
    this process is connected to already, else ``ray_address`` (None: Ray's convention,
    ``RAY_ADDRESS`` first). Every node must see src and dst at the same paths (checked first:
    :class:`pcopy.RefusedError` otherwise); ``jobs`` None means the cluster's CPUs.
    """
    if checksum and ignore_times:
        raise ValueError("checksum and ignore_times exclude each other")
    filter_set = None
    if filters:
        from pcopy.filters import FilterSet

        filter_set = FilterSet.from_options(filters)
    config = Config(
        jobs=jobs if jobs is not None else default_jobs(),
        jobs_auto=jobs is None,
        chunk_bytes=chunk_size,
        threads=threads,
        method=Method(method),
        buffer_bytes=buffer_size,
        dereference=dereference,
        verify=verify,
        fsync=fsync,
        preserve_hard_links=preserve_hard_links,
        start_method=start_method,
        compare=Compare.CHECKSUM if checksum else Compare.ALWAYS if ignore_times else Compare.QUICK,
        update_only=update,
        replace_existing=not no_clobber,
        delete=delete or delete_anyway,
        delete_after_failures=delete_anyway,
        max_delete=max_delete,
        filters=filter_set,
        dry_run=dry_run,
        record_changes=record_changes,
        preserve_perms=preserve_perms,
        preserve_times=preserve_times,
        preserve_xattrs=preserve_xattrs,
        preserve_owner=preserve_owner,
        preserve_group=preserve_group,
        engine=Engine(engine),
        ray_address=ray_address,
    )
    if ray_address is not None and config.engine is not Engine.RAY:
        raise ValueError("ray_address needs engine='ray'")
    target = locate(os.fspath(src), os.fspath(dst))
    if config.delete and target.src_kind is not Kind.DIR:
        raise RefusedError("--delete needs SRC to be a directory")
    sink: ProgressSink | None
    sink = progress if progress is None or isinstance(progress, ProgressSink) else CallbackProgress(progress)
    if isinstance(sink, CallbackProgress) and not callable(progress):  # e.g. a sink of an older protocol
        raise TypeError("progress must be a callable (bytes_done, bytes_total, files_done) "
                        "or a pcopy.progress.ProgressSink")
    if config.engine is Engine.RAY:
        from pcopy.raypool import ray_session

        with ray_session(target, config, jobs_given=jobs is not None) as ray_config:
            return run_copy(target, ray_config, sink)
    return run_copy(target, config, sink)
