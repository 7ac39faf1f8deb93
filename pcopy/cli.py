"""The command line: options -> one Config -> pcopy.command.run -> output and exit code.

Exit codes (pcopy.command): 0 all copied; 1 some entries failed (or the report could not be
written); 2 usage error or refused input; 3 --max-delete exceeded (nothing deleted); 130 SIGINT;
143 SIGTERM. The plain `pcopy SRC DST [-j N] [-q] [--[no-]progress]` is run without this module
(pcopy.fastpath).
"""

import sys
from enum import Enum
from typing import Annotated, Any, NoReturn, Optional

import typer
from typer.core import TyperCommand

from pcopy import __version__
from pcopy.command import (
    EXIT_USAGE,
    Output,
    bar_wanted,
    err,
    leave,
    local_jobs,
    run,
    running_as_root,
)
from pcopy.config import (
    DEFAULT_BUFFER_BYTES,
    Compare,
    Config,
    Engine,
    Method,
    default_jobs,
    parse_size,
)

# add_completion: --install-completion / --show-completion (bash, zsh, fish, powershell); typer
# imports its completion code only when one of them, or a shell's completion request, is used.
app = typer.Typer(add_completion=True, rich_markup_mode=None, pretty_exceptions_enable=False)

# click's base error class, wherever this typer keeps click (0.28 vendors it as typer._click).
_ClickError: type[Exception] = sys.modules[typer.BadParameter.__module__].ClickException

# Where _ArgvCommand keeps the raw arguments in the click context's meta.
_ARGV_KEY = "pcopy.argv"


class _ArgvCommand(TyperCommand):
    """Keeps the raw argument list: click collects --include and --exclude into separate
    lists, losing how they interleave, and rsync-style rules depend on that order. Storing the
    list here (not reading sys.argv) works the same under typer's CliRunner."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta[_ARGV_KEY] = list(args)
        return super().parse_args(ctx, args)

    # A usage error is exit 2 like a refusal; with --json/--json-lines it is also reported as
    # the one JSON object a script waits for (click prints the message on stderr as usual).
    def make_context(self, info_name: Any, args: list[str], parent: Any = None, **extra: Any) -> Any:
        argv = list(args)  # parsing consumes the list it is given
        try:
            return super().make_context(info_name, args, parent, **extra)
        except _ClickError as exc:
            _json_usage_error(argv, exc)
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _ClickError as exc:
            _json_usage_error(ctx.meta.get(_ARGV_KEY, []), exc)
            raise


def _json_usage_error(args: list[str], exc: Any) -> None:
    options = args[:args.index("--")] if "--" in args else args
    if "--json" in options or "--json-lines" in options:
        output = Output(json_report="--json" in options, quiet=True, itemize=False, log=None,
                        json_lines="--json-lines" in options)
        output.refused(None, None, exc.format_message())


class StartMethod(str, Enum):
    fork = "fork"
    forkserver = "forkserver"
    spawn = "spawn"


def _size(text: str, option: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{option}'") from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pcopy {__version__}")
        raise typer.Exit()


@app.command(cls=_ArgvCommand, context_settings={"help_option_names": ["-h", "--help"]})
def copy_command(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(help="File or directory to copy.", show_default=False)],
    dst: Annotated[str, typer.Argument(help="Where the copy goes (created if missing).",
                                       show_default=False)],
    jobs: Annotated[Optional[int], typer.Option(
        "-j", "--jobs", min=1, show_default=False,
        help="Worker processes (default: CPUs available to pcopy; 4 per CPU when SRC or DST is "
             "network or FUSE storage, where every request is a round trip): at most this many, and "
             "never more than 4 per CPU; a worker starts only when every running one is busy, "
             "and a tree too small to pay for a pool is copied by pcopy itself.")] = None,
    chunk_size: Annotated[Optional[str], typer.Option(
        "--chunk-size", metavar="SIZE", show_default=False,
        help="Split files larger than this into byte ranges copied by several workers "
             "(e.g. 1048576, 64K, 8M, 1.5G; binary units). Default: no split, one stream per file (faster "
             "on local file systems).")] = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, max=256, show_default=False,
        help="Threads per worker (default: adapted to the storage: one on a local disk, more "
             "while the workers mostly wait, as on a network or FUSE file system).")] = None,
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
        "--json", help="Print one JSON report on stdout (schema: docs/json.md), also when the "
                       "run is refused.")] = False,
    json_lines: Annotated[bool, typer.Option(
        "--json-lines", help="Print one JSON object per line on stdout: one per change and "
                             "failure, then the stats (docs/json.md).")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print errors only.")] = False,
    start_method: Annotated[Optional[StartMethod], typer.Option(
        "--start-method", show_default=False,
        help="multiprocessing start method (default: fork on Linux, spawn elsewhere).")] = None,
    checksum: Annotated[bool, typer.Option(
        "-c", "--checksum", help="Judge existing files by content (BLAKE2b digests when sizes "
                                 "match) instead of size and mtime.")] = False,
    ignore_times: Annotated[bool, typer.Option(
        "-I", "--ignore-times", help="Copy every file, even when size and mtime match.")] = False,
    update: Annotated[bool, typer.Option(
        "-u", "--update", help="Never replace a DST file whose mtime is newer than SRC's.")] = False,
    no_clobber: Annotated[bool, typer.Option(
        "--no-clobber", help="Never replace an existing DST entry (they count as skipped).")] = False,
    delete: Annotated[bool, typer.Option(
        "--delete", help="Mirror: after a copy without failures, remove DST entries SRC lacks "
                         "(excluded ones stay; symlinks are removed, never followed).")] = False,
    delete_anyway: Annotated[bool, typer.Option(
        "--delete-anyway", help="--delete even when some entries failed to copy (implies "
                                "--delete).")] = False,
    max_delete: Annotated[Optional[int], typer.Option(
        "--max-delete", min=0, metavar="N", show_default=False,
        help="With --delete: if more than N entries would be deleted, delete none and exit "
             "3.")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(
        "--exclude", metavar="PATTERN", show_default=False,
        help="Skip paths matching PATTERN (rsync rules; repeatable; with --include the first "
             "matching rule in command-line order wins).")] = None,
    include: Annotated[Optional[list[str]], typer.Option(
        "--include", metavar="PATTERN", show_default=False,
        help="Keep paths matching PATTERN even if a later --exclude matches.")] = None,
    exclude_from: Annotated[Optional[list[str]], typer.Option(
        "--exclude-from", metavar="FILE", show_default=False,
        help="Read exclude patterns from FILE, one per line ('+ ' includes, '- ' excludes, "
             "'-' is stdin).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "-n", "--dry-run", help="Report what would be copied, replaced, skipped and deleted; "
                                "change nothing.")] = False,
    itemize: Annotated[bool, typer.Option(
        "-i", "-v", "--itemize", "--verbose",
        help="Print one line per changed entry on stdout: copied/replaced/deleted/attributes "
             "PATH (attributes: an up-to-date file whose permissions or times were set).")] = False,
    log: Annotated[Optional[str], typer.Option(
        "--log", metavar="FILE", show_default=False,
        help="Append the changed entries and the summary to FILE.")] = None,
    no_perms: Annotated[bool, typer.Option(
        "--no-perms", help="Do not copy permissions: copies get SRC's bits less the umask, "
                           "without set-ID bits.")] = False,
    no_times: Annotated[bool, typer.Option(
        "--no-times", help="Do not copy times (re-runs then copy every file again).")] = False,
    no_hard_links: Annotated[bool, typer.Option(
        "--no-hard-links", help="Copy hard-linked names as separate files.")] = False,
    xattrs: Annotated[bool, typer.Option(
        "--xattrs", help="Copy extended attributes (Linux).")] = False,
    owner: Annotated[Optional[bool], typer.Option(
        "--owner/--no-owner", show_default=False,
        help="Set the owner to SRC's (default when root; otherwise usually fails, and each "
             "failure is reported).")] = None,
    group: Annotated[Optional[bool], typer.Option(
        "--group/--no-group", show_default=False,
        help="Set the group to SRC's (default when root; a user may set groups they belong "
             "to).")] = None,
    link_dest: Annotated[Optional[list[str]], typer.Option(
        "--link-dest", metavar="DIR", show_default=False,
        help="Hard-link files unchanged against DIR (an earlier snapshot) instead of copying "
             "them; repeatable (up to 20, first match wins); a relative DIR is relative to "
             "DST.")] = None,
    backup: Annotated[bool, typer.Option(
        "-b", "--backup", help="Keep each DST file that is replaced or deleted: as NAME~ "
                               "beside it, or under --backup-dir.")] = False,
    backup_dir: Annotated[Optional[str], typer.Option(
        "--backup-dir", metavar="DIR", show_default=False,
        help="With --backup (implied): keep replaced/deleted files at DIR/<path> (relative: "
             "to DST; must be on DST's file system).")] = None,
    suffix: Annotated[Optional[str], typer.Option(
        "--suffix", metavar="SUFFIX", show_default=False,
        help="Backup suffix (default ~, or none with --backup-dir).")] = None,
    bwlimit_rate: Annotated[Optional[str], typer.Option(
        "--bwlimit", metavar="RATE", show_default=False,
        help="Limit the whole run to RATE bytes per second, shared by all workers (e.g. 500K, "
             "10M; a bare number is KiB/s; 0: no limit).")] = None,
    partial: Annotated[bool, typer.Option(
        "--partial", help="Keep an interrupted large file (hidden .NAME.pcopy-partial) and "
                          "resume it on the next run.")] = False,
    partial_progress: Annotated[bool, typer.Option(
        "-P", help="Same as --partial --progress.")] = False,
    archive: Annotated[bool, typer.Option(
        "-a", "--archive", help="Accepted for rsync habits: pcopy always keeps what rsync -a "
                                "keeps (and hard links, like -H).")] = False,
    recursive: Annotated[bool, typer.Option(
        "-r", "--recursive", help="Accepted for rsync habits: directories are always copied "
                                  "recursively.")] = False,
    engine: Annotated[Engine, typer.Option(
        "--engine", case_sensitive=False,
        help="local: worker processes on this machine; ray: workers on a Ray cluster whose "
             "nodes all see SRC and DST at the same paths (pip install 'pcopy[ray]'; -j "
             "default: the cluster's CPUs).")] = Engine.LOCAL,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", metavar="ADDR", show_default=False,
        help="With --engine ray: the cluster to use (default: $RAY_ADDRESS, else a cluster "
             "started with `ray start` here, else a new local Ray).")] = None,
    version: Annotated[Optional[bool], typer.Option(
        "-V", "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = None,
) -> None:
    """Copy SRC to DST in parallel, preserving modes, times, symlinks, hard links and holes.

    SRC a directory: DST becomes its copy (merged into DST when DST exists). SRC a file: DST is
    its copy, or DST/<name> when DST is a directory. Up-to-date files (same size and mtime) are
    skipped. Exit codes: 0 all copied, 1 some entries failed, 2 usage error or refused input,
    3 --max-delete exceeded (nothing deleted), 130/143 interrupted.
    """
    from pcopy.metadata import XATTRS_SUPPORTED

    if checksum and ignore_times:
        raise typer.BadParameter("--checksum and --ignore-times exclude each other")
    if json_report and json_lines:
        raise typer.BadParameter("--json and --json-lines exclude each other")
    if ray_address is not None and engine is not Engine.RAY:
        raise typer.BadParameter("--ray-address needs --engine ray")
    if xattrs and not XATTRS_SUPPORTED:
        raise typer.BadParameter("--xattrs: extended attributes are not supported on this platform")
    filters = None
    if exclude or include or exclude_from:
        from pcopy.filters import FilterSet, ordered_filter_args

        try:
            filters = FilterSet.from_options(ordered_filter_args(ctx.meta.get(_ARGV_KEY, [])))
        except (OSError, ValueError) as exc:
            err(f"pcopy: {exc}" if not isinstance(exc, OSError) or not exc.filename
                else f"pcopy: {exc.strerror}: {exc.filename!r}")
            raise typer.Exit(EXIT_USAGE) from None
    root = running_as_root()
    snapshot = _snapshot_options(link_dest, backup, backup_dir, suffix, bwlimit_rate,
                                 partial or partial_progress)
    if partial_progress and progress is None:
        progress = True
    cpus = default_jobs()
    config = Config(
        # (-j with --engine ray counts the cluster's workers: this machine's CPUs do not bound it)
        jobs=jobs if engine is Engine.RAY and jobs is not None else local_jobs(jobs, cpus),
        jobs_auto=jobs is None,
        chunk_bytes=_size(chunk_size, "--chunk-size") if chunk_size is not None else None,
        threads=threads,
        method=Method.READWRITE if buffer_size is not None else method,
        buffer_bytes=_size(buffer_size, "--buffer-size") if buffer_size is not None else DEFAULT_BUFFER_BYTES,
        dereference=dereference,
        verify=verify,
        fsync=fsync,
        start_method=start_method.value if start_method is not None else None,
        preserve_owner=owner if owner is not None else root,
        preserve_group=group if group is not None else root,
        preserve_hard_links=not no_hard_links,
        preserve_perms=not no_perms,
        preserve_times=not no_times,
        preserve_xattrs=xattrs,
        compare=Compare.CHECKSUM if checksum else Compare.ALWAYS if ignore_times else Compare.QUICK,
        update_only=update,
        replace_existing=not no_clobber,
        dry_run=dry_run,
        delete=delete or delete_anyway,
        delete_after_failures=delete_anyway,
        max_delete=max_delete,
        filters=filters,
        record_changes=itemize or log is not None or json_report or json_lines,
        **snapshot,
        engine=engine,
        ray_address=ray_address,
    )
    output = Output(json_report, quiet, itemize, log, json_lines)
    raise typer.Exit(run(src, dst, config, bar_wanted(progress, quiet), output, jobs_given=jobs is not None))


def _snapshot_options(link_dest: list[str] | None, backup: bool, backup_dir: str | None,
                      suffix: str | None, rate: str | None, partial: bool) -> dict[str, Any]:
    """Config fields of the snapshot options (docs/backups.md); bad values exit 2."""
    from pcopy.bwlimit import parse_rate
    from pcopy.config import MAX_LINK_DEST

    if link_dest and len(link_dest) > MAX_LINK_DEST:
        raise typer.BadParameter(f"at most {MAX_LINK_DEST} directories", param_hint="--link-dest")
    try:
        bwlimit_bytes = parse_rate(rate) if rate is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--bwlimit") from None
    return {"link_dest": tuple(link_dest or ()), "backup": backup or backup_dir is not None,
            "backup_dir": backup_dir, "backup_suffix": suffix, "bwlimit_bytes": bwlimit_bytes,
            "partial": partial}


def main() -> NoReturn:
    leave(lambda: app(prog_name="pcopy"))
