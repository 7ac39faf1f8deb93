"""CopyReport (the result of a copy, as data) and how it is shown: escaped names, summary, JSON."""

from __future__ import annotations

import errno as errno_module
import os
from dataclasses import dataclass, field
from typing import Any

from pcopy.jobs import CopyFailure

# Exit code when --max-delete stopped --delete: more entries would have been deleted than
# allowed, so nothing was deleted (the copy itself may have succeeded).
EXIT_DELETE_LIMIT = 3

_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def escape(path: str) -> str:
    """A path as one printable line: control characters and bytes that are not UTF-8 become
    backslash escapes (\\n, \\xff), the way `ls -b` shows them, and a backslash is doubled, so
    every name has one unambiguous spelling, reports stay parseable and printing never fails."""
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
    # (action, dst path) per copied/replaced/deleted entry; only filled when asked for
    # (Config.record_changes), so the default run keeps no per-file list.
    changes: list[tuple[str, str]] = field(default_factory=list)
    # Snapshot backups (docs/backups.md). Hard-linked entries (--link-dest) are not in `files`:
    # nothing was copied for them; hardlinked_bytes is what they would have cost.
    hardlinked: int = 0
    hardlinked_bytes: int = 0
    backed_up: int = 0  # --backup: DST entries kept aside before being replaced or deleted
    resumed: int = 0  # --partial: files continued from an interrupted run
    resumed_bytes: int = 0  # bytes those did not copy again (not in `bytes`)
    warnings: list[str] = field(default_factory=list)  # one line each, said once per run

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
            f"pcopy: {self.files} files, {self.dirs} dirs, {format_bytes(self.bytes)} in "
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
