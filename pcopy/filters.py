"""rsync-style include/exclude rules: ``--exclude``, ``--include`` and ``--exclude-from``.

A path relative to SRC is tested against the rules in command-line order; the first rule that matches
decides (an include keeps the path, an exclude drops it) and a path no rule matches is kept. The
pattern language follows rsync's "PATTERN MATCHING RULES" (rsync(1), checked against rsync 3.x):

- ``*`` matches any run of characters except ``/``; ``**`` matches anything, ``/`` included;
  ``?`` matches one character except ``/``; ``[...]`` is a character class (``[!...]`` or ``[^...]``
  negate it, ``a-z`` ranges and ``[:alpha:]``-style POSIX classes work) and never matches ``/``.
  A backslash escapes the next character, but only when the pattern holds a wildcard (``*?[``);
  a pattern without one is compared literally, backslashes included (rsync does the same).
- A leading ``/`` anchors the pattern to the SRC root.
- A trailing ``/`` makes the rule match directories only.
- A pattern with no ``/`` (other than a trailing one) and no ``**`` is matched against the final
  path component, at any depth.
- Any other pattern is matched against the whole relative path. Unanchored, it may start at any
  directory boundary: ``foo/*/bar`` matches ``x/foo/y/bar``. A pattern starting with ``**/`` also
  matches at the root (``**/foo`` matches ``foo``), because rsync tests such patterns against the
  path with a ``/`` in front; an anchored ``/**/foo`` does not match ``foo``.
- A trailing ``/***`` matches the directory itself and everything below it: ``dir/***`` is
  ``dir/`` plus ``dir/**``.
- An unterminated ``[`` class or an unknown ``[:name:]`` makes the rule match nothing (rsync
  aborts the match); an empty pattern is ignored by ``from_options``.

Excluded directories are not walked at all: the walker asks ``excluded(rel, True)`` before it
descends, so nothing below an excluded directory is ever seen. As in rsync this means that
``--include 'a/b/c' --exclude '*'`` excludes ``a`` itself (``*`` matches the name ``a``) and so
``a/b/c`` is never reached; include the directories on the way (``--include '*/'``, or
``--include a/ --include a/b/ ...``) to reach a deep file.

Case matters on every platform, as it does in rsync.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["FilterSet", "Rule", "ordered_filter_args"]

# rsync decides between a plain string compare and wildcard matching by these three characters.
_WILDCARDS = frozenset("*?[")

# POSIX character classes as rsync knows them. rsync tests them with the C library's ctype
# functions in the C locale, so they are ASCII-only here too.
_POSIX_CLASSES: dict[str, str] = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "\\x21-\\x7e",
    "lower": "a-z",
    "print": "\\x20-\\x7e",
    "punct": "".join(re.escape(c) for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "space": " \\t\\n\\r\\f\\v",
    "upper": "A-Z",
    "xdigit": "0-9A-Fa-f",
}

# A regex fragment that can never match: rsync abandons the whole pattern on a malformed class.
_NEVER = "(?!)"

# Windows callers may hand in paths with backslashes; on POSIX a backslash is an ordinary name
# character and must be left alone, so only os.sep/os.altsep other than "/" are translated.
_FOREIGN_SEPS = tuple(sep for sep in (os.sep, os.altsep) if sep and sep != "/")

_OPTION_KINDS = {"--include": "include", "--exclude": "exclude", "--exclude-from": "exclude-from"}


class _MalformedPatternError(Exception):
    """Private: the pattern can never match (rsync's ABORT_ALL)."""


def _class_end(pattern: str, start: int) -> tuple[str, int]:
    """Translate the class that opens at pattern[start] == '['; return (regex, index after it).

    Follows rsync's wildmatch: ']' right after '[' (or '[!') is literal, a backslash escapes the
    next character, 'a-z' is a range (empty when reversed), '[:name:]' a POSIX class. The class
    never matches '/', as rsync's does not.
    """
    i = start + 1
    n = len(pattern)
    negate = i < n and pattern[i] in "!^"
    if negate:
        i += 1
    items: list[str] = []
    prev: str | None = None  # the last single character, the possible start of a range
    first = True
    while True:
        if i >= n:
            raise _MalformedPatternError  # no closing ']'
        ch = pattern[i]
        if ch == "]" and not first:
            i += 1
            break
        first = False
        if ch == "\\":
            if i + 1 >= n:
                raise _MalformedPatternError
            ch = pattern[i + 1]
            i += 2
        elif ch == "-" and prev is not None and i + 1 < n and pattern[i + 1] != "]":
            hi = pattern[i + 1]
            i += 2
            if hi == "\\":
                if i >= n:
                    raise _MalformedPatternError
                hi = pattern[i]
                i += 1
            if prev <= hi:
                items.append(f"{re.escape(prev)}-{re.escape(hi)}")
            prev = None  # as in rsync, a range cannot start another range
            continue
        elif ch == "[" and i + 1 < n and pattern[i + 1] == ":":
            close = pattern.find("]", i + 2)
            if close < 0:
                raise _MalformedPatternError
            if close - 1 >= i + 2 and pattern[close - 1] == ":":
                name = pattern[i + 2 : close - 1]
                if name not in _POSIX_CLASSES:
                    raise _MalformedPatternError
                items.append(_POSIX_CLASSES[name])
                i = close + 1
                prev = None
                continue
            # No ":]" before the next ']': the '[' is an ordinary member (rsync's fallback).
            i += 1
        else:
            i += 1
        items.append(re.escape(ch))
        prev = ch
    body = "".join(items)
    if negate:
        return f"[^/{body}]", i
    if not body:
        return _NEVER, i
    return f"(?!/)[{body}]", i


def _translate(pattern: str) -> str:
    """Regex source for a wildcard pattern (without anchors); raises _MalformedPatternError."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif ch == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            out.append(".*" if j - i >= 2 else "[^/]*")
            i = j
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[":
            fragment, i = _class_end(pattern, i)
            out.append(fragment)
        else:
            out.append(re.escape(ch))
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Rule:
    """One include or exclude rule, compiled once when it is made.

    Only ``include`` and ``pattern`` are given; the other fields are derived from the pattern in
    ``__post_init__`` and say how ``matches`` tests a path.
    """

    include: bool
    pattern: str
    dir_only: bool = field(init=False, repr=False, compare=False)
    # True: the pattern is tested against the last path component only.
    name_only: bool = field(init=False, repr=False, compare=False)
    # A pattern without wildcards that tests the last component: a plain string compare.
    literal: str | None = field(init=False, repr=False, compare=False)
    # Everything else: a compiled regex, fullmatch'ed against the name or the relative path.
    regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    # "dir/***": a match of "dir" itself (the optional tail group did not take part) only counts
    # for a directory.
    wild3: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        body = self.pattern
        anchored = body.startswith("/")
        if anchored:
            body = body[1:]
        dir_only = body.endswith("/")
        body = body.rstrip("/")
        wild3 = body.endswith("/***")
        if wild3:
            body = body[:-4]
        has_slash = wild3 or "/" in body
        wild = wild3 or any(ch in _WILDCARDS for ch in body)
        name_only = not anchored and not has_slash and "**" not in body
        literal: str | None = None
        regex: re.Pattern[str] | None = None
        if body:
            if name_only and not wild:
                literal = body
            else:
                regex = self._compile(body, anchored=anchored, name_only=name_only, wild=wild,
                                      wild3=wild3)
        # The dataclass is frozen (rules are shared and hashed); the derived fields are set once here.
        object.__setattr__(self, "dir_only", dir_only)
        object.__setattr__(self, "name_only", name_only)
        object.__setattr__(self, "literal", literal)
        object.__setattr__(self, "regex", regex)
        object.__setattr__(self, "wild3", wild3)

    @staticmethod
    def _compile(body: str, *, anchored: bool, name_only: bool, wild: bool,
                 wild3: bool) -> re.Pattern[str] | None:
        # Unanchored path patterns may start at any directory boundary (rsync tries the match
        # after every '/'), which "(?:.*/)?" in front of a full match expresses.
        prefix = "" if anchored or name_only else "(?:.*/)?"
        if not wild:
            source = prefix + re.escape(body)
        else:
            try:
                if not anchored and body.startswith("**"):
                    # rsync tests a leading-"**" pattern against "/" + path, so "**/x" also
                    # matches "x" at the root: "**/" becomes "any leading directories or none".
                    # The leading "**" already reaches every boundary, so no prefix is added
                    # (a second one would only multiply the backtracking).
                    rest = body.lstrip("*")
                    if rest.startswith("/"):
                        source = "(?:.*/)?" + _translate(rest[1:])
                    else:
                        source = ".*" + _translate(rest)
                else:
                    source = prefix + _translate(body)
            except _MalformedPatternError:
                return None
        if wild3:
            source += "(?P<below>/.*)?"
        # DOTALL: file names may contain newlines, and "**" must cross them like anything else.
        return re.compile(source, re.DOTALL)

    def matches(self, rel: str, name: str, is_dir: bool) -> bool:
        """Whether this rule applies to rel ('/'-separated, relative to SRC) whose last component
        is name."""
        if self.dir_only and not is_dir:
            return False
        if self.literal is not None:
            return name == self.literal
        if self.regex is None:
            return False  # empty or malformed pattern: matches nothing
        match = self.regex.fullmatch(name if self.name_only else rel)
        if match is None:
            return False
        if self.wild3 and match.start("below") < 0:
            return is_dir
        return True


class FilterSet:
    """An ordered list of rules; ``excluded`` answers for one path, first matching rule wins.

    Cost per call: one separator check, one ``rfind`` for the last component, then per rule until
    one matches either a string compare (plain name patterns like ``.git`` or ``node_modules``)
    or one ``re.fullmatch`` of a regex compiled in the constructor. Name patterns only look at the
    last component, so their cost does not grow with depth; path patterns scan the relative path
    (unanchored ones retry at each '/', so roughly length x depth in the worst case). An empty set
    is falsy so a caller can skip the call entirely.
    """

    __slots__ = ("_rules",)

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules: tuple[Rule, ...] = tuple(rules)

    @classmethod
    def from_options(cls, ordered: Sequence[tuple[str, str]]) -> FilterSet:
        """Build the rules from ("include" | "exclude" | "exclude-from", value) pairs in
        command-line order (see ``ordered_filter_args``).

        An ``exclude-from`` file holds one pattern per line (``-`` reads standard input). As in
        rsync: blank lines and lines starting with ';' or '#' are skipped; a line starting with
        "+ " or "- " is an include or exclude; a line that is just "!" clears every rule so far;
        anything else is an exclude. Whitespace is part of the pattern (rsync keeps it too); the
        line end ("\\n" or "\\r\\n") is not. Empty patterns are ignored, as rsync ignores them.

        Raises OSError (with the file name) when a file cannot be read, ValueError for an unknown
        kind or a file with NUL bytes (not a pattern list).
        """
        rules: list[Rule] = []
        for kind, value in ordered:
            if kind == "include" or kind == "exclude":
                if value.strip("/"):
                    rules.append(Rule(include=kind == "include", pattern=value))
            elif kind == "exclude-from":
                for include, pattern in _read_pattern_file(value):
                    if pattern is None:
                        rules.clear()
                    elif pattern.strip("/"):
                        rules.append(Rule(include=include, pattern=pattern))
            else:
                raise ValueError(
                    f"unknown filter option {kind!r} (expected include, exclude or exclude-from)"
                )
        return cls(rules)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def excluded(self, rel: str, is_dir: bool) -> bool:
        """Whether rel (relative to SRC, '/' or os.sep separators) is excluded.

        is_dir must come from lstat (a symlink to a directory is not a directory here), because
        dir-only rules ("name/") do not match symlinks in rsync either. The root ("") is never
        excluded.
        """
        for sep in _FOREIGN_SEPS:
            rel = rel.replace(sep, "/")
        if rel.startswith("/"):
            rel = rel.lstrip("/")
        if not rel:
            return False
        name = rel[rel.rfind("/") + 1 :]
        for rule in self._rules:
            if rule.matches(rel, name, is_dir):
                return not rule.include
        return False

    def __bool__(self) -> bool:
        return bool(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:
        shown = ", ".join(f"{'+' if r.include else '-'} {r.pattern}" for r in self._rules)
        return f"FilterSet([{shown}])"


def _read_pattern_file(path: str) -> list[tuple[bool, str | None]]:
    """(include, pattern) pairs of an exclude-from file; pattern None stands for a "!" line."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise OSError(e.errno, f"cannot read --exclude-from file: {e.strerror}", path) from e
    if b"\0" in data:
        raise ValueError(f"--exclude-from file {path!r} contains NUL bytes: not a list of patterns")
    out: list[tuple[bool, str | None]] = []
    for raw in data.split(b"\n"):
        # Bytes, then os.fsdecode: a pattern may name a file whose name is not valid UTF-8, and
        # fsdecode maps it the same way os.scandir maps the name it must match.
        line = os.fsdecode(raw[:-1] if raw.endswith(b"\r") else raw)
        if not line or line[0] in ";#":
            continue
        if line == "!":
            out.append((False, None))
        elif line.startswith("+ "):
            out.append((True, line[2:]))
        elif line.startswith("- "):
            out.append((False, line[2:]))
        else:
            out.append((False, line))
    return out


def ordered_filter_args(argv: Sequence[str]) -> list[tuple[str, str]]:
    """The --include/--exclude/--exclude-from options of a raw argument list, in their order.

    click/typer collect each option into its own list, which loses how includes and excludes
    interleave, and rule order decides the result; so the CLI re-reads argv with this. Accepts
    "--exclude X" and "--exclude=X" forms; stops at "--" (what follows is positional). The token
    after a bare option is always its value, even if it starts with "-", as click does. The scan
    does not know the other options, so a value of another option that is literally
    "--exclude" would be misread; click would have parsed the same argv differently only then.

    Raises ValueError when the last argument is a filter option without its value.
    """
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        kind = _OPTION_KINDS.get(name)
        if kind is None:
            i += 1
        elif eq:
            out.append((kind, value))
            i += 1
        elif i + 1 < len(argv):
            out.append((kind, argv[i + 1]))
            i += 2
        else:
            raise ValueError(f"option {name} requires a value")
    return out
