"""pcopy.filters: rsync-style include/exclude rules, checked case by case and against rsync itself."""

from __future__ import annotations

import io
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pcopy.filters import FilterSet, Rule, ordered_filter_args

E = "exclude"
I = "include"  # noqa: E741 - reads like rsync's "+"/"-" in the table below

# (rules in command-line order, path relative to SRC, is_dir, expected: excluded?)
CASES: list[tuple[list[tuple[str, str]], str, bool, bool]] = [
    # no rules: everything is kept
    ([], "a/b/c", False, False),
    # a name pattern (no '/') matches the last component at any depth
    ([(E, "foo")], "foo", False, True),
    ([(E, "foo")], "a/b/foo", False, True),
    ([(E, "foo")], "a/foo/b", False, False),  # the walker never asks for a/foo/b once a/foo is out
    ([(E, "foo")], "foobar", False, False),
    ([(E, "foo")], "a/xfoo", False, False),
    # '*' stays inside one component
    ([(E, "*.o")], "x.o", False, True),
    ([(E, "*.o")], "deep/er/x.o", False, True),
    ([(E, "*.o")], "x.oo", False, False),
    ([(E, "*.o")], ".o", False, True),  # '*' matches the empty run, and dot files (unlike a shell)
    ([(E, "a*")], "b/abc", False, True),
    ([(E, "a/*")], "a/b/c", False, False),  # '*' does not cross '/'
    ([(E, "a/*")], "a/b", False, True),
    # '?' is one character, never '/'
    ([(E, "?.txt")], "a.txt", False, True),
    ([(E, "?.txt")], "ab.txt", False, False),
    ([(E, "/a?b")], "a/b", False, False),
    # character classes, negation, ranges, POSIX classes; never '/'
    ([(E, "[ab].c")], "b.c", False, True),
    ([(E, "[ab].c")], "c.c", False, False),
    ([(E, "[!ab].c")], "c.c", False, True),
    ([(E, "[^ab].c")], "a.c", False, False),
    ([(E, "file[0-9]")], "file7", False, True),
    ([(E, "file[0-9]")], "filex", False, False),
    ([(E, "file[9-0]")], "file5", False, False),  # a reversed range is empty
    ([(E, "[[:upper:]]*")], "Makefile", False, True),
    ([(E, "[[:upper:]]*")], "makefile", False, False),
    ([(E, "/x[!a]y")], "x/y", False, False),
    ([(E, "[]a]")], "]", False, True),  # ']' first in a class is literal
    ([(E, "x[ab")], "x[ab", False, False),  # unterminated class: the rule matches nothing
    ([(E, "[[:nope:]]"), (E, "n")], "n", False, True),  # unknown class: only that rule fails
    # backslash escapes only in wildcard patterns
    ([(E, "\\*.txt")], "*.txt", False, True),
    ([(E, "\\*.txt")], "a.txt", False, False),
    ([(E, "a\\b")], "a\\b", False, True),  # no wildcard: compared literally, backslash included
    # anchoring: a leading '/' ties the pattern to the SRC root
    ([(E, "/foo")], "foo", False, True),
    ([(E, "/foo")], "a/foo", False, False),
    ([(E, "/a/b")], "a/b", False, True),
    ([(E, "/a/b")], "x/a/b", False, False),
    # unanchored patterns with '/' match at any directory boundary
    ([(E, "a/b")], "x/a/b", False, True),
    ([(E, "a/b")], "xa/b", False, False),
    ([(E, "foo/*/bar")], "x/foo/y/bar", True, True),
    ([(E, "foo/*/bar")], "foo/y/z/bar", True, False),
    # trailing '/': directories only (a symlink to a directory is not one: is_dir comes from lstat)
    ([(E, "build/")], "build", True, True),
    ([(E, "build/")], "build", False, False),
    ([(E, "build/")], "src/build", True, True),
    ([(E, "/build/")], "src/build", True, False),
    ([(E, "a/b/")], "x/a/b", True, True),
    # '**' at the start, in the middle, at the end
    ([(E, "**/foo")], "foo", False, True),  # rsync lets a leading "**/" match zero directories
    ([(E, "**/foo")], "a/b/foo", False, True),
    ([(E, "/**/foo")], "foo", False, False),  # ... but not once anchored
    ([(E, "/**/foo")], "a/foo", False, True),
    ([(E, "**.bak")], "a/b/x.bak", False, True),
    ([(E, "a/**/z")], "a/b/c/z", False, True),
    ([(E, "a/**/z")], "a/z", False, False),  # "/**/" needs at least one '/' in between
    ([(E, "a/**/z")], "q/a/b/z", False, True),
    ([(E, "/a/**/z")], "q/a/b/z", False, False),
    ([(E, "cache/**")], "cache/x/y", False, True),
    ([(E, "cache/**")], "cache", True, False),  # the directory itself is not matched
    ([(E, "x**")], "x/y/z", False, True),
    # "dir/***": the directory and everything below it
    ([(E, "cache/***")], "cache", True, True),
    ([(E, "cache/***")], "cache", False, False),  # the bare-name match is for a directory only
    ([(E, "cache/***")], "cache/a/b", False, True),
    ([(E, "cache/***")], "x/cache", True, True),
    # first match wins, in command-line order
    ([(I, "keep.o"), (E, "*.o")], "keep.o", False, False),
    ([(I, "keep.o"), (E, "*.o")], "other.o", False, True),
    ([(E, "*.o"), (I, "keep.o")], "keep.o", False, True),
    ([(I, "*/"), (I, "*.c"), (E, "*")], "src", True, False),
    ([(I, "*/"), (I, "*.c"), (E, "*")], "src/main.c", False, False),
    ([(I, "*/"), (I, "*.c"), (E, "*")], "src/main.h", False, True),
    ([(I, "a/b/c"), (E, "*")], "a", True, True),  # the documented rsync trap: 'a' is never walked
    ([(I, "/a/"), (I, "/a/b/"), (I, "/a/b/c"), (E, "*")], "a/b/c", False, False),
    # names with spaces and dots
    ([(E, "my file.txt")], "docs/my file.txt", False, True),
    ([(E, "* *")], "a b", False, True),
    ([(E, "* *")], "ab", False, False),
    ([(E, ".*")], "x/.git", True, True),
    ([(E, ".*")], "x/git", True, False),
    ([(E, "a.b.c")], "a.b.c", False, True),
    ([(E, "a.b.c")], "axbxc", False, False),  # '.' is not a regex wildcard
    ([(E, "name (1)+[x].txt"), (E, "z")], "name (1)+x.txt", False, True),
    # a file name with a newline
    ([(E, "*")], "a\nb", False, True),
    ([(E, "**b")], "x/a\nb", False, True),
]


@pytest.mark.parametrize(("rules", "rel", "is_dir", "expected"), CASES)
def test_rule_table(rules: list[tuple[str, str]], rel: str, is_dir: bool, expected: bool) -> None:
    fs = FilterSet.from_options(rules)
    assert fs.excluded(rel, is_dir) is expected


def test_table_is_large() -> None:
    assert len(CASES) >= 40


def test_empty_filterset_is_falsy() -> None:
    assert not FilterSet([])
    assert not FilterSet.from_options([])
    assert FilterSet([Rule(include=False, pattern="x")])


def test_root_is_never_excluded() -> None:
    assert not FilterSet.from_options([(E, "*")]).excluded("", True)


def test_os_sep_and_leading_slash_input() -> None:
    fs = FilterSet.from_options([(E, "/a/b")])
    assert fs.excluded(os.path.join("a", "b"), False)
    assert fs.excluded("/a/b", False)


def test_rule_is_frozen_and_compares_by_pattern() -> None:
    rule = Rule(include=True, pattern="*.c")
    assert rule == Rule(include=True, pattern="*.c")
    assert hash(rule) == hash(Rule(include=True, pattern="*.c"))
    with pytest.raises(AttributeError):
        rule.pattern = "x"  # type: ignore[misc]


def test_filterset_pickles() -> None:
    """A spawn/forkserver worker may receive the rules; compiled regexes must survive the trip."""
    fs = FilterSet.from_options([(I, "keep/***"), (E, "*.o")])
    copy = pickle.loads(pickle.dumps(fs))
    assert copy.rules == fs.rules
    assert copy.excluded("a/b.o", False) and not copy.excluded("keep/b.o", False)


def test_empty_patterns_are_ignored() -> None:
    fs = FilterSet.from_options([(E, ""), (E, "/")])
    assert not fs


def test_unknown_kind_raises() -> None:
    with pytest.raises(ValueError, match="unknown filter option"):
        FilterSet.from_options([("filter", "- x")])


def test_exclude_from_file(tmp_path: Path) -> None:
    pattern_file = tmp_path / "rules.txt"
    pattern_file.write_bytes(
        b"# a comment\n"
        b"; another comment\n"
        b"\n"
        b"*.o\r\n"  # CRLF line end: the \r is not part of the pattern
        b"+ keep.log\n"
        b"- *.log\n"
        b"trailing \n"  # whitespace is part of the pattern, as in rsync
        b"#notacomment-in-the-middle# is still a comment\n"
        b"name;with;semicolons\n"
    )
    fs = FilterSet.from_options([("exclude-from", str(pattern_file))])
    assert [(r.include, r.pattern) for r in fs.rules] == [
        (False, "*.o"), (True, "keep.log"), (False, "*.log"), (False, "trailing "),
        (False, "name;with;semicolons"),
    ]
    assert fs.excluded("x.o", False)
    assert not fs.excluded("a/keep.log", False)
    assert fs.excluded("a/other.log", False)
    assert fs.excluded("trailing ", False)
    assert not fs.excluded("trailing", False)
    assert not fs.excluded("# a comment", False)


def test_exclude_from_keeps_command_line_order(tmp_path: Path) -> None:
    pattern_file = tmp_path / "rules"
    pattern_file.write_text("*.tmp\n")
    fs = FilterSet.from_options([(I, "a.tmp"), ("exclude-from", str(pattern_file)), (I, "b.tmp")])
    assert [r.pattern for r in fs.rules] == ["a.tmp", "*.tmp", "b.tmp"]
    assert not fs.excluded("a.tmp", False)
    assert fs.excluded("b.tmp", False)  # the file's rule came first


def test_exclude_from_bang_clears_earlier_rules(tmp_path: Path) -> None:
    pattern_file = tmp_path / "rules"
    pattern_file.write_text("d\n!\nfoo\n")
    fs = FilterSet.from_options([(E, "x"), ("exclude-from", str(pattern_file)), (E, "y")])
    assert [r.pattern for r in fs.rules] == ["foo", "y"]


def test_exclude_from_non_utf8_pattern(tmp_path: Path) -> None:
    pattern_file = tmp_path / "rules"
    pattern_file.write_bytes(b"caf\xe9.txt\n")
    fs = FilterSet.from_options([("exclude-from", str(pattern_file))])
    assert fs.excluded(os.fsdecode(b"dir/caf\xe9.txt"), False)


def test_exclude_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeStdin:
        buffer = io.BytesIO(b"*.o\n")

    monkeypatch.setattr(sys, "stdin", FakeStdin())
    assert FilterSet.from_options([("exclude-from", "-")]).excluded("a.o", False)


def test_exclude_from_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(OSError, match="cannot read --exclude-from file") as info:
        FilterSet.from_options([("exclude-from", str(missing))])
    assert info.value.errno == 2
    assert info.value.filename == str(missing)


def test_exclude_from_directory(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="cannot read --exclude-from file"):
        FilterSet.from_options([("exclude-from", str(tmp_path))])


def test_exclude_from_binary_file(tmp_path: Path) -> None:
    binary = tmp_path / "blob"
    binary.write_bytes(b"a\0b\n")
    with pytest.raises(ValueError, match="NUL"):
        FilterSet.from_options([("exclude-from", str(binary))])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], []),
        (["src", "dst", "-j", "4"], []),
        (["--exclude", "*.o", "src", "--include=keep.o", "dst", "--exclude=*"],
         [(E, "*.o"), (I, "keep.o"), (E, "*")]),
        (["--include", "a", "--exclude-from", "f.txt", "--exclude-from=g.txt"],
         [(I, "a"), ("exclude-from", "f.txt"), ("exclude-from", "g.txt")]),
        (["--exclude", "--weird", "x"], [(E, "--weird")]),  # the next token is the value, as in click
        (["--exclude=", "x"], [(E, "")]),
        (["--exclude=a=b"], [(E, "a=b")]),
        (["--exclude", "a", "--", "--exclude", "b"], [(E, "a")]),  # after "--" all is positional
        (["--excluded", "a", "--exclude-fro", "b"], []),  # not our options
        (["--exclude", "--", "x"], [(E, "--")]),
    ],
)
def test_ordered_filter_args(argv: list[str], expected: list[tuple[str, str]]) -> None:
    assert ordered_filter_args(argv) == expected


def test_ordered_filter_args_missing_value() -> None:
    with pytest.raises(ValueError, match="--exclude requires a value"):
        ordered_filter_args(["src", "dst", "--exclude"])


# ---------------------------------------------------------------- differential test against rsync

RSYNC = shutil.which("rsync")

# A small tree with the shapes the rules care about: names at several depths, dot names, spaces,
# a name that is a file in one place and a directory in another, symlinks to a directory.
TREE_DIRS = [
    "a", "a/ab", "a/b", "a/b/deep", "b", "b/a", ".hidden", "d1", "d1/d2", "d1/d2/d3", "x y",
    "cache", "cache/sub", "src", "src/build", "build",
]
TREE_FILES = [
    "a/a.txt", "a/b.o", "a/ab/a.txt", "a/ab/c.o", "a/b/deep/f.txt", "a/b/deep/keep.o", "b/a/a.txt",
    "b/x y.txt", ".hidden/f", "d1/d2/d3/f.txt", "d1/d2/z", "x y/name with spaces.txt", "x y/.dot",
    "x y/a.b.c", "top.txt", "a.txt", "c.o", "keep.o", "cache/sub/blob", "cache/x", "src/main.c",
    "src/main.h", "src/build/out.o", "build/log", "file7", "Makefile", "ab",
]
TREE_LINKS = {"link": "a", "dangling": "missing", "a/up": ".."}

FIXED_RULE_SETS: list[list[tuple[str, str]]] = [
    [(E, "*.o")],
    [(I, "keep.o"), (E, "*.o")],
    [(E, "a")],
    [(E, "/a")],
    [(E, "a/")],
    [(E, "b/a")],
    [(E, "**/a")],
    [(E, "/**/a")],
    [(E, "a/**/f.txt")],
    [(E, "d1/**")],
    [(E, "cache/***")],
    [(E, "ab/***")],  # "ab" is a file at the top and a directory in a/
    [(E, "/ab/***")],
    [(E, "*/")],
    [(I, "*/"), (I, "*.c"), (E, "*")],
    [(I, "a/b/deep/f.txt"), (E, "*")],
    [(I, "/a/"), (I, "/a/b/"), (I, "/a/b/deep/"), (I, "/a/b/deep/f.txt"), (E, "*")],
    [(E, ".*")],
    [(E, "* *")],
    [(E, "[ab]")],
    [(E, "[!a]*")],
    [(E, "?")],
    [(E, "*[[:digit:]]")],
    [(E, "x y/")],
    [(E, "build/")],
    [(E, "/build/")],
    [(E, "link")],
    [(E, "link/")],
    [(E, "**.txt"), (I, "*")],
    [(E, "d1/*/d3")],
    [(E, "d2/d3/")],
    [(E, "**")],
]

RANDOM_PIECES = ["a", "b", "ab", "*", "?", "**", "[ab]", "[!a]*", "*.txt", "*.o", "d?", "x y", ".*",
                 "deep", "cache", "src", "*/", "build"]


# Each set costs one rsync run (~10-100 ms on a busy 2-core machine); 30 keep the file fast.
RANDOM_RULE_SETS = 30


def random_rule_sets(count: int) -> list[list[tuple[str, str]]]:
    rng = random.Random(20240611)  # fixed seed: the same cases every run
    sets = []
    for _ in range(count):
        rules = []
        for _ in range(rng.randint(1, 3)):
            # Mostly short patterns: long random paths rarely name anything in the tree.
            parts = [rng.choice(RANDOM_PIECES) for _ in range(rng.choice((1, 1, 1, 2, 2, 3)))]
            pattern = "/".join(p.rstrip("/") for p in parts)
            if rng.random() < 0.25:
                pattern = "/" + pattern
            if rng.random() < 0.25:
                pattern += "/"
            rules.append((rng.choice((I, E, E)), pattern))
        sets.append(rules)
    return sets


def build_tree(root: Path) -> None:
    for d in TREE_DIRS:
        (root / d).mkdir(parents=True)
    for f in TREE_FILES:
        (root / f).write_text(f)
    for name, target in TREE_LINKS.items():
        os.symlink(target, root / name)


def kept_by_filterset(root: Path, fs: FilterSet) -> set[str]:
    """Walk top-down, pruning excluded directories, the way the pcopy walker will."""
    kept: set[str] = set()
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(root / rel_dir if rel_dir else root) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                if fs.excluded(rel, is_dir):
                    continue
                kept.add(rel)
                if is_dir:
                    stack.append(rel)
    return kept


def copied_by_rsync(src: Path, dst: Path, rules: list[tuple[str, str]]) -> set[str]:
    assert RSYNC is not None
    args = [f"--{kind}={pattern}" for kind, pattern in rules]
    subprocess.run([RSYNC, "-a", *args, f"{src}/", f"{dst}/"], check=True, capture_output=True)
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(dst):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), dst).replace(os.sep, "/"))
    return out


@pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")
def test_same_files_as_rsync(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src)
    rule_sets = FIXED_RULE_SETS + random_rule_sets(RANDOM_RULE_SETS)
    mismatches = []
    for number, rules in enumerate(rule_sets):
        dst = tmp_path / f"dst{number}"
        expected = copied_by_rsync(src, dst, rules)
        got = kept_by_filterset(src, FilterSet.from_options(rules))
        if got != expected:
            mismatches.append((rules, sorted(got - expected), sorted(expected - got)))
    assert not mismatches, "\n".join(
        f"{rules}: pcopy keeps extra {extra}, misses {missing}" for rules, extra, missing in mismatches
    )


@pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")
def test_differential_test_can_fail(tmp_path: Path) -> None:
    """Guard against a vacuous comparison: a deliberately different rule set must differ."""
    src = tmp_path / "src"
    build_tree(src)
    expected = copied_by_rsync(src, tmp_path / "dst", [(E, "*.o")])
    assert "c.o" not in expected and "top.txt" in expected
    assert kept_by_filterset(src, FilterSet.from_options([(E, "*.txt")])) != expected
