"""Odd names are copied byte-for-byte and reported without crashing the reporter.

All paths here are bytes (os.fsencode) so a name that is not UTF-8 is never decoded on the test's
side; pcopy gets the surrogate-escaped str form, as it would from sys.argv or os.scandir.
"""

from __future__ import annotations

import base64
import os
import random
import unicodedata
from pathlib import Path

import pytest
from conftest import Nobody, RunPcopy
from treeutil import assert_same_tree, count_kinds, snapshot, stamp_times, temp_leftovers, write

import pcopy

NFC = unicodedata.normalize("NFC", "café").encode()
NFD = unicodedata.normalize("NFD", "café").encode()
assert NFC != NFD  # two different names on a byte-preserving file system

LONG_ASCII = b"L" * 255  # NAME_MAX: no room left for a temporary name's prefix and suffix
LONG_UTF8 = ("é" * 127 + "x").encode()  # 255 bytes, a cut in the middle of a character breaks it

NAMES = [
    b"with space", b"  leading and trailing  ", b"-leading-dash", b"--", b"-", b".hidden",
    b"...", b"new\nline", b"\nstarts with newline", b"tab\there", b"carriage\rreturn",
    b"esc\x1b[31mred", b"bad\xff\xfe", b"latin1 caf\xe9", b"*?[glob]{a,b}", b"back\\slash",
    b"back\\xff literal", b"$HOME `id` $(id)", b"quote'\"", NFC, NFD, "日本語 ✓".encode(),
    b"emoji \xf0\x9f\x98\x80", LONG_ASCII, LONG_UTF8,
]


def odd_tree(root: Path) -> bytes:
    """Every odd name as a file, a directory (with odd names inside), a symlink and a hard link;
    a large file with a 255-byte name, so its byte ranges go to a temporary name that must be cut."""
    top = os.fsencode(root)
    rng = random.Random(7)
    os.makedirs(top)
    for i, name in enumerate(NAMES):
        write(os.path.join(top, name), name + rng.randbytes(i * 37))
        sub = os.path.join(top, b"d_" + name[:250])
        write(os.path.join(sub, name), rng.randbytes(100))
        os.symlink(name, os.path.join(sub, b"l_" + name[:250]))
    write(os.path.join(top, b"big", LONG_ASCII), rng.randbytes(40_000))
    write(os.path.join(top, b"big", LONG_UTF8), rng.randbytes(40_000))
    os.link(os.path.join(top, b"new\nline"), os.path.join(top, b"hard \xff\nlink"))
    os.symlink(b"target \xff\n\xc3", os.path.join(top, b"link to odd target"))
    stamp_times(top)
    return top


@pytest.mark.parametrize("options", [{"jobs": 1}, {"jobs": 2, "chunk_size": 4096}],
                         ids=["j1", "j2-chunk4K"])
def test_odd_names_copied_exactly(tmp_path: Path, options: dict[str, int]) -> None:
    src = odd_tree(tmp_path / "src")
    before = snapshot(src)
    report = pcopy.copy(os.fsdecode(src), str(tmp_path / "dst"), **options)  # type: ignore[arg-type]
    assert report.failures == []
    assert_same_tree(before, tmp_path / "dst")
    dst_names = set(os.listdir(os.fsencode(tmp_path / "dst")))
    assert {NFC, NFD, b"bad\xff\xfe", b"new\nline", LONG_ASCII, LONG_UTF8} <= dst_names


def test_odd_names_replaced_on_a_later_run(tmp_path: Path) -> None:
    """A second run that has to replace every file writes temporary names next to each one,
    which for 255-byte names only fit if they are cut."""
    src = odd_tree(tmp_path / "src")
    dst = tmp_path / "dst"
    assert pcopy.copy(os.fsdecode(src), str(dst), jobs=2, chunk_size=4096).exit_code == 0
    stamp_times(src, seed=5)  # new mtimes everywhere: no file passes the quick check
    before = snapshot(src)
    report = pcopy.copy(os.fsdecode(src), str(dst), jobs=2, chunk_size=4096)
    assert report.failures == []
    # Symlinks are up to date when their targets are equal; every other entry is replaced.
    kinds = count_kinds(before)
    assert report.skipped == kinds["symlink"]
    assert report.files == kinds["file"]
    assert_same_tree(before, dst)
    assert temp_leftovers(dst) == []


def test_odd_names_through_the_cli(tmp_path: Path, run_pcopy: RunPcopy) -> None:
    src = odd_tree(tmp_path / "src")
    before = snapshot(src)
    run = run_pcopy(src, tmp_path / "dst", "-j", "2", "--chunk-size", "8K", "--json")
    assert run.returncode == 0, run
    assert run.stderr == ""
    assert run.json()["failed"] == 0
    assert_same_tree(before, tmp_path / "dst")


def test_odd_names_as_command_line_arguments(tmp_path: Path, run_pcopy: RunPcopy) -> None:
    base = os.fsencode(tmp_path)
    src = os.path.join(base, b"src \xff\nname")
    write(os.path.join(src, b"inner \xfe"), b"inner")
    write(os.path.join(base, b"-dash.txt"), b"dash")
    stamp_times(src)
    stamp_times(os.path.join(base, b"-dash.txt"))
    dst = os.path.join(base, b"dst \xfe\n*")
    run = run_pcopy(src, dst)
    assert run.returncode == 0, run
    assert_same_tree(src, dst)
    # A name that looks like an option: after "--", or spelled ./-name.
    run = run_pcopy("--", b"-dash.txt", b"-copy1", cwd=base)
    assert run.returncode == 0, run
    run = run_pcopy(b"./-dash.txt", b"./-copy2", cwd=base)
    assert run.returncode == 0, run
    for copy in (b"-copy1", b"-copy2"):
        assert_same_tree(os.path.join(base, b"-dash.txt"), os.path.join(base, copy))


# -- the reporter with odd names: a failure needs an unreadable file, so run as uid 65534 --------

BAD = b"bad\nname\xff\x1b.txt"
BAD_SHOWN = "bad\\nname\\xff\\x1b.txt"  # one printable line: ls -b style escapes


def test_unreadable_odd_name_is_reported_escaped(nobody: Nobody, world_tmp: Path) -> None:
    base = os.fsencode(world_tmp)
    src = os.path.join(base, b"src")
    write(os.path.join(src, b"ok \xfe.txt"), b"fine")
    write(os.path.join(src, BAD), b"secret", 0o600)  # root's 0600: unreadable for uid 65534
    stamp_times(src)
    out = os.path.join(base, b"out")
    os.mkdir(out)
    nobody.own(out)
    dst = os.path.join(out, b"dst")

    run = nobody.run(src, dst, "-j", "2", cwd=base)
    assert run.returncode == 1, run
    assert_same_tree(src, dst, owner=False, skip=[BAD])
    assert temp_leftovers(out) == []
    assert not os.path.lexists(os.path.join(dst, BAD))
    lines = run.stderr_lines
    assert len(lines) == 1, run  # the newline in the name did not split the report line
    assert "Permission denied" in lines[0]
    assert "\x1b" not in run.stderr and "\ufffd" not in run.stderr  # no raw control or mangled bytes
    assert BAD_SHOWN in lines[0], run

    json_run = nobody.run(src, os.path.join(out, b"dst2"), "--json", cwd=base)
    assert json_run.returncode == 1, json_run
    report = json_run.json()
    assert report["failed"] == 1 and report["exit_code"] == 1
    failure = report["failures"][0]
    assert (failure["errno"], failure["error"]) == (13, "EACCES")
    assert base64.b64decode(failure["path_b64"]) == BAD, failure  # the exact bytes (docs/json.md)
