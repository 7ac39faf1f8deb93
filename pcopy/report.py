"""CopyReport (the result of a copy, as data) and how it is shown: escaped names, summary, JSON."""

from __future__ import annotations

import errno as errno_module
from dataclasses import dataclass, field
from typing import Any

from pcopy.jobs import CopyFailure

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
    """What a copy did. `files` counts every non-directory entry copied (hard links included)."""

    files: int = 0
    dirs: int = 0
    bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    seconds: float = 0.0
    failures: list[CopyFailure] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "skipped_bytes": self.skipped_bytes,
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
        return (
            f"pcopy: {self.files} files, {self.dirs} dirs, {format_bytes(self.bytes)} in "
            f"{self.seconds:.2f} s ({format_bytes(rate)}/s); skipped {self.skipped}, failed {self.failed}"
        )


def format_failure(failure: CopyFailure) -> str:
    return f"pcopy: {escape(failure.path)}: {failure.message}"


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
