"""CopyReport (the result of a copy, as data) and how it is shown: escaped names, summary, JSON
(one document, or one event per line). The JSON schema is pcopy/report.schema.json, described in
docs/json.md; bump SCHEMA_VERSION whenever a field changes meaning or goes away."""

from __future__ import annotations

import errno as errno_module
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pcopy.jobs import COPIED, REPLACED, CopyFailure, JobResult

# Version of the JSON report's layout (docs/json.md). Fields may be added without a bump.
SCHEMA_VERSION = 1

# Exit code when --max-delete stopped --delete: more entries would have been deleted than
# allowed, so nothing was deleted (the copy itself may have succeeded).
EXIT_DELETE_LIMIT = 3

_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def escape(path: str) -> str:
    """A path as one printable line: a backslash is doubled; newline, tab and carriage return
    become \\n, \\t, \\r; other control characters and bytes that are not UTF-8 become \\xHH
    (two hex digits, where `ls -b` would write octal \\377). So every name has one unambiguous
    spelling, reports stay parseable and printing never fails. Other characters are shown as
    they are."""
    out = []
    for ch in path:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)


@dataclass
class CopyReport:
    """What a copy did (or, in a dry run, would do). `files` counts every non-directory entry
    copied or replaced (hard links included); `replaced` is the part of it that replaced an
    existing destination entry, so copied = files - replaced."""

    files: int = 0
    dirs: int = 0
    bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    seconds: float = 0.0
    failures: list[CopyFailure] = field(default_factory=list)
    replaced: int = 0
    replaced_bytes: int = 0
    deleted: int = 0  # --delete: entries removed from DST (would be, in a dry run)
    delete_limited: bool = False  # --max-delete was exceeded: nothing deleted, exit 3
    delete_skipped: bool = False  # --delete not run because the copy had failures
    dry_run: bool = False
    # (action, dst path) per copied/replaced/deleted/attributes entry; only filled when asked
    # for (Config.record_changes), so the default run keeps no per-file list.
    changes: list[tuple[str, str]] = field(default_factory=list)
    # Snapshot backups (docs/backups.md). Hard-linked entries (--link-dest) are not in `files`:
    # nothing was copied for them; hardlinked_bytes is what they would have cost.
    hardlinked: int = 0
    hardlinked_bytes: int = 0
    backed_up: int = 0  # --backup: DST entries kept aside before being replaced or deleted
    resumed: int = 0  # --partial: files continued from an interrupted run
    resumed_bytes: int = 0  # bytes those did not copy again (not in `bytes`)
    warnings: list[str] = field(default_factory=list)  # one line each, said once per run
    # Of skipped: up-to-date entries whose permissions or times were set on DST.
    attributes: int = 0

    def add(self, result: JobResult) -> None:
        """Count a finished job (or the part of one a byte range is: its bytes and failures)."""
        self.files += result.files
        self.bytes += result.bytes
        self.replaced += result.replaced
        self.replaced_bytes += result.replaced_bytes
        if result.changes:
            self.changes.extend(result.changes)
        self.hardlinked += result.hardlinked
        self.hardlinked_bytes += result.hardlinked_bytes
        self.backed_up += result.backed_up
        self.resumed += result.resumed
        self.resumed_bytes += result.resumed_bytes
        self.skipped += result.skipped
        self.skipped_bytes += result.skipped_bytes
        self.attributes += result.attributes
        self.failures.extend(result.failures)

    def count_file(self, dst: str, nbytes: int, replaced: bool, record: bool) -> None:
        """One entry the parent copied itself (a split file, a hard link): bytes are counted
        where they are copied."""
        self.files += 1
        if replaced:
            self.replaced += 1
            self.replaced_bytes += nbytes
        if record:
            self.changes.append((REPLACED if replaced else COPIED, dst))

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def copied(self) -> int:
        return self.files - self.replaced

    @property
    def copied_bytes(self) -> int:
        return self.bytes - self.replaced_bytes

    @property
    def exit_code(self) -> int:
        if self.delete_limited:
            return EXIT_DELETE_LIMIT
        return 1 if self.failures else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "bytes": self.bytes,
            "copied": self.copied,
            "copied_bytes": self.copied_bytes,
            "replaced": self.replaced,
            "replaced_bytes": self.replaced_bytes,
            "skipped": self.skipped,
            "skipped_bytes": self.skipped_bytes,
            "attributes": self.attributes,
            "deleted": self.deleted,
            "delete_limited": self.delete_limited,
            "delete_skipped": self.delete_skipped,
            "dry_run": self.dry_run,
            "hardlinked": self.hardlinked,
            "hardlinked_bytes": self.hardlinked_bytes,
            "backed_up": self.backed_up,
            "resumed": self.resumed,
            "resumed_bytes": self.resumed_bytes,
            "warnings": [escape(w) for w in self.warnings],
            "failed": self.failed,
            "seconds": round(self.seconds, 6),
            "exit_code": self.exit_code,
            "failures": [
                {
                    "path": escape(f.path),
                    "errno": f.errno,
                    "error": errno_module.errorcode.get(f.errno) if f.errno is not None else None,
                    "message": f.message,
                    "step": f.step,
                }
                for f in self.failures
            ],
        }

    def to_json(self) -> str:
        import json  # only --json needs it: kept off the start-up path

        return json.dumps(self.to_dict(), indent=2, ensure_ascii=True)

    def summary(self) -> str:
        rate = self.bytes / self.seconds if self.seconds > 0 else 0.0
        line = (
            f"pcopy: {plural(self.files, 'file')}, {plural(self.dirs, 'dir')}, {format_bytes(self.bytes)} in "
            f"{self.seconds:.2f} s ({format_bytes(rate)}/s); skipped {self.skipped}, failed {self.failed}"
        )
        if self.replaced:
            line += f", replaced {self.replaced}"
        if self.hardlinked:
            line += f", hardlinked {self.hardlinked}"
        if self.backed_up:
            line += f", backed up {self.backed_up}"
        if self.resumed:
            line += f", resumed {self.resumed} ({format_bytes(self.resumed_bytes)} kept)"
        if self.attributes:
            line += f", attributes set {self.attributes}"
        if self.deleted or self.delete_limited:
            line += f", deleted {self.deleted}"
        if self.delete_limited:
            line += " (--max-delete exceeded: nothing deleted)"
        if self.dry_run:
            line += " (dry run: nothing changed)"
        return line

    def change_lines(self, dst_root: str | None = None) -> list[str]:
        """One `ACTION PATH` line per change (--itemize, --log); paths relative to dst_root
        when they are below it, escaped so every line stays one line."""
        prefix = os.path.join(dst_root, "") if dst_root else None
        lines = []
        for action, path in self.changes:
            shown = path[len(prefix):] if prefix and path.startswith(prefix) else path
            lines.append(f"{action} {escape(shown)}")
        return lines


def format_failure(failure: CopyFailure) -> str:
    return f"pcopy: {escape(failure.path)}: {failure.message}"


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# ---------------------------------------------------------------- the JSON report (docs/json.md)


class RunInfo(NamedTuple):
    """What the JSON report says about the run beyond the CopyReport: the arguments as given,
    and when it started and ended (ISO 8601, UTC)."""

    src: str | None
    dst: str | None
    started: str
    finished: str


def iso_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def json_path(path: str, key: str = "path") -> dict[str, str]:
    """{key: text} for a path, plus {key + "_b64": base64 of its exact bytes} when the bytes are
    not valid UTF-8 (text then shows each such byte as a \\xHH escape, and is only for reading).
    JSON strings cannot carry arbitrary bytes; this keeps every name recoverable:
    bytes = b64decode(rec[key + "_b64"]) if present, else rec[key].encode("utf-8")."""
    raw = os.fsencode(path)
    try:
        return {key: raw.decode("utf-8")}
    except UnicodeDecodeError:
        from base64 import b64encode  # (only for such names: not part of every start)

        return {key: raw.decode("utf-8", "backslashreplace"), key + "_b64": b64encode(raw).decode("ascii")}


def relative(path: str, roots: tuple[str, ...]) -> str:
    """path relative to the first root it is below ("." for a root itself): the same spelling
    for an entry whether the failure was met on the SRC or the DST side. A path below neither
    (a parent of DST that could not be made) stays absolute."""
    for root in roots:
        if path == root:
            return "."
        prefix = os.path.join(root, "")
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


def report_document(report: CopyReport | None, run: RunInfo, roots: tuple[str, ...] = (),
                    error: BaseException | str | None = None, exit_code: int | None = None) -> dict[str, Any]:
    """The --json document. report None: the run was refused before it started (error says
    why); roots: the SRC and DST roots paths are made relative to."""
    data = (report or CopyReport()).to_dict()
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    from pcopy import __version__

    doc["pcopy_version"] = __version__
    for key, value in (("src", run.src), ("dst", run.dst)):
        doc.update(json_path(value, key) if value is not None else {key: None})
    doc["started"] = run.started
    doc["finished"] = run.finished
    doc.update(data)
    if exit_code is not None:
        doc["exit_code"] = exit_code
    doc["error"] = _error(error)
    doc["failures"] = [_failure_record(f, roots) for f in (report.failures if report else [])]
    doc["changes"] = [{"action": action, **json_path(relative(path, roots))}
                      for action, path in (report.changes if report else [])]
    return doc


def _error(error: BaseException | str | None) -> dict[str, Any] | None:
    """The error of a refused run; its errno comes from the OSError behind it, if any."""
    if error is None:
        return None
    cause = error if isinstance(error, OSError) else getattr(error, "__cause__", None)
    if isinstance(cause, OSError) and cause.errno is not None:
        return {"message": str(error), "errno": cause.errno, "error": errno_module.errorcode.get(cause.errno)}
    return {"message": str(error), "errno": None, "error": None}


def _failure_record(f: CopyFailure, roots: tuple[str, ...]) -> dict[str, Any]:
    return {
        **json_path(relative(f.path, roots)),
        "step": f.step,
        "errno": f.errno,
        "error": errno_module.errorcode.get(f.errno) if f.errno is not None else None,
        "message": f.message,
    }


def report_events(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """--json-lines: the document as events, one per change and failure, then one "stats"
    object with everything else (rclone's --use-json-log, for log pipelines)."""
    events: list[dict[str, Any]] = [{"event": change.pop("action"), **change} for change in
                                    (dict(c) for c in doc["changes"])]
    events += [{"event": "failed", **failure} for failure in doc["failures"]]
    stats = {"event": "stats", **{k: v for k, v in doc.items() if k not in ("changes", "failures")}}
    return [*events, stats]


def dumps(doc: Any, indent: int | None = 2) -> str:
    import json  # only --json needs it: kept off the start-up path

    if indent is None:
        return json.dumps(doc, ensure_ascii=True, separators=(",", ":"))
    return json.dumps(doc, indent=indent, ensure_ascii=True)
