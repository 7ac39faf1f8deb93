"""pcopy run as uid 65534: unreadable entries are reported (exit 1) and the rest is copied.

Root reads everything, so these run the real CLI through setpriv (see conftest.nobody). Source
trees are root's: world-readable except for the entries meant to fail.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import Nobody
from treeutil import assert_same_tree, snapshot, stamp_times, temp_leftovers, write


def readable_tree(root: Path) -> None:
    """World-readable files and directories, including read-only ones, links and a big file."""
    write(root / "plain.txt", b"plain\n", 0o644)
    write(root / "exec.sh", b"#!/bin/sh\n", 0o755)
    write(root / "ro.txt", b"read only\n", 0o444)
    write(root / "empty", b"", 0o644)
    write(root / "sub" / "big.bin", os.urandom(70_000), 0o644)
    write(root / "sub" / "deep" / "x", os.urandom(500), 0o604)
    os.link(root / "plain.txt", root / "sub" / "plain_hard")
    os.symlink("../plain.txt", root / "sub" / "link")
    (root / "empty_dir").mkdir()
    write(root / "ro_dir" / "inner.txt", b"inner\n", 0o444)
    os.chmod(root / "ro_dir", 0o555)


@pytest.fixture
def out(nobody: Nobody, world_tmp: Path) -> Path:
    """A directory uid 65534 may write in."""
    path = world_tmp / "out"
    path.mkdir()
    nobody.own(path)
    return path


@pytest.mark.parametrize("args", [["-j", "1"], ["-j", "2", "--chunk-size", "4K"]], ids=["j1", "j2-chunk4K"])
def test_unreadable_entries_reported_rest_copied(nobody: Nobody, world_tmp: Path, out: Path,
                                                 args: list[str]) -> None:
    src = world_tmp / "src"
    readable_tree(src)
    write(src / "secret.txt", b"secret " * 100, 0o600)
    write(src / "sub" / "big_secret.bin", os.urandom(100_000), 0o600)  # split at 4K: ranges fail
    write(src / "locked" / "inside.txt", b"hidden", 0o644)
    os.chmod(src / "locked", 0o700)
    stamp_times(src)
    before = snapshot(src)
    dst = out / "dst"

    run = nobody.run(src, dst, *args, "--json", cwd=world_tmp)
    assert run.returncode == 1, run
    report = run.json()
    failed = {f["path"] for f in report["failures"]}
    assert failed == {"secret.txt", "sub/big_secret.bin", "locked"}, report  # relative to SRC
    assert all(f["errno"] == 13 and f["message"] for f in report["failures"]), report
    assert report["failed"] == 3 and report["exit_code"] == 1
    # One line per failure on stderr, each naming its path.
    lines = run.stderr_lines
    assert len(lines) == 3, run
    for path in failed:
        assert sum(path in line for line in lines) == 1, (path, lines)
    # Everything readable is there and exact; nothing partial or temporary anywhere.
    assert_same_tree(before, dst, owner=False,
                     skip=[b"secret.txt", b"sub/big_secret.bin", b"locked", b"locked/inside.txt"],
                     dst_extra=[b"locked"])
    assert not os.path.lexists(dst / "secret.txt")
    assert not os.path.lexists(dst / "sub" / "big_secret.bin")
    assert not os.path.lexists(dst / "locked" / "inside.txt")
    assert temp_leftovers(out) == []


def test_summary_and_failure_lines_without_json(nobody: Nobody, world_tmp: Path, out: Path) -> None:
    src = world_tmp / "src"
    readable_tree(src)
    write(src / "secret.txt", b"secret", 0o600)
    run = nobody.run(src, out / "dst", cwd=world_tmp)
    assert run.returncode == 1, run
    assert run.stderr_lines == [f"pcopy: {src / 'secret.txt'}: Permission denied"], run
    assert "failed 1" in run.stdout and len(run.stdout.splitlines()) == 1, run


def test_read_only_tree_copied_and_rerun_by_unprivileged_user(nobody: Nobody, world_tmp: Path,
                                                              out: Path) -> None:
    """Without root's bypass, 0555 directories must stay writable until their contents are in;
    a second run finds everything up to date."""
    src = world_tmp / "src"
    for d in ("a", "a/b", "c"):
        write(src / d / "f.txt", os.urandom(9000), 0o444)
    os.symlink("a/b/f.txt", src / "c" / "link")
    for d in ("a/b", "a", "c", ""):
        os.chmod(src / d, 0o555)
    stamp_times(src)
    before = snapshot(src)
    dst = out / "dst"
    run = nobody.run(src, dst, "-j", "2", "--chunk-size", "4K", cwd=world_tmp)
    assert run.returncode == 0, run
    assert_same_tree(before, dst, owner=False)
    assert stat.S_IMODE(os.stat(dst / "a" / "b").st_mode) == 0o555

    again = nobody.run(src, dst, "-j", "2", "--json", cwd=world_tmp)
    assert again.returncode == 0, again
    report = again.json()
    assert (report["files"], report["skipped"]) == (0, 4), report
    assert_same_tree(before, dst, owner=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="root makes the device node in SRC")
def test_device_node_reported_when_not_root(nobody: Nobody, world_tmp: Path, out: Path) -> None:
    src = world_tmp / "src"
    readable_tree(src)
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.stat("/dev/null").st_rdev)
    stamp_times(src)
    before = snapshot(src)
    run = nobody.run(src, out / "dst", "--json", cwd=world_tmp)
    assert run.returncode == 1, run
    assert [f["path"] for f in run.json()["failures"]] == ["null"]
    assert_same_tree(before, out / "dst", owner=False, skip=[b"null"])
    assert temp_leftovers(out) == []


def test_unwritable_destination_refused(nobody: Nobody, world_tmp: Path) -> None:
    """DST's parent belongs to root (0755): DST cannot be made there - a top-level problem,
    refused before anything is written with exit 2 (also for a file SRC)."""
    src = world_tmp / "src"
    readable_tree(src)
    locked = world_tmp / "locked"
    locked.mkdir(mode=0o755)
    for args in ([src, locked / "dst"], [src, locked / "new" / "deeper"], [src / "plain.txt", locked / "f.txt"]):
        run = nobody.run(*args, cwd=world_tmp)
        assert run.returncode == 2, run
        assert len(run.stderr_lines) == 1 and "Permission denied" in run.stderr, run
        assert os.listdir(locked) == []


def test_unwritable_directory_inside_destination_reported(nobody: Nobody, world_tmp: Path, out: Path) -> None:
    """A read-only directory already inside DST: its entries are reported by path, the rest is
    copied, exit 1."""
    src = world_tmp / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x.txt").write_text("x")
    (src / "top.txt").write_text("top")
    for path in (src, src / "sub"):
        os.chmod(path, 0o755)
    dst = out / "dst"
    (dst / "sub").mkdir(parents=True)
    nobody.own(dst)
    os.chmod(dst / "sub", 0o555)  # owned by root: uid 65534 cannot write in it
    run = nobody.run(src, dst, "--json", cwd=world_tmp)
    assert run.returncode == 1, run
    # The file cannot be created there, and the directory's mode and times cannot be set.
    assert sorted(f["path"] for f in run.json()["failures"]) == ["sub", "sub/x.txt"]
    assert (dst / "top.txt").read_text() == "top"
    assert not (dst / "sub" / "x.txt").exists()
