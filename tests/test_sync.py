"""Backup and sync options (issue 5) end to end on real trees, through the CLI (typer's runner,
in-process) and pcopy.copy: a first run, a change, a second run, and the exact DST and report.

-c/-I/-u/--no-clobber, --delete/--delete-anyway/--max-delete, --include/--exclude/--exclude-from,
-n/--dry-run (its report must equal the real run's), --itemize/--log, the JSON counts, and
--no-perms/--no-times/--no-hard-links/--xattrs/--owner/--group.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Nobody, pc, pc_json
from treeutil import Snapshot, assert_same_tree, snapshot, stamp_times, temp_leftovers, write

import pcopy

# Keys of the JSON report that a dry run must reproduce exactly (all but time and the flag).
COUNT_KEYS = ("files", "dirs", "bytes", "copied", "copied_bytes", "replaced", "replaced_bytes",
              "skipped", "skipped_bytes", "deleted", "failed", "exit_code", "delete_limited",
              "delete_skipped")




def counts(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in COUNT_KEYS}


def make_tree(root: Path) -> Path:
    """a (5 B), d/b (3 B), d/e/c (1 B), d/link -> ../a, h1 and h2 one inode (4 B)."""
    write(root / "a", b"alpha")
    write(root / "d" / "b", b"bee")
    write(root / "d" / "e" / "c", b"c")
    os.symlink("../a", root / "d" / "link")
    write(root / "h1", b"hard")
    os.link(root / "h1", root / "h2")
    stamp_times(root)
    return root


def lines(out: str) -> list[str]:
    """--itemize lines (the summary line, which starts with 'pcopy:', left out), sorted."""
    return sorted(line for line in out.splitlines() if not line.startswith("pcopy:"))


def age(path: Path, seconds: int) -> None:
    """Move path's mtime by seconds (negative: older), keeping its nanoseconds."""
    st = os.lstat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000), follow_symlinks=False)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src")


# -- incremental runs, itemize, JSON counts -------------------------------------------------------

def test_first_run_then_changes_itemized_with_json_counts(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    code, out, _ = pc(src, dst, "-j", "1", "--itemize")
    assert code == 0
    assert lines(out) == ["copied a", "copied d/b", "copied d/e/c", "copied d/link", "copied h1",
                          "copied h2"]
    assert_same_tree(src, dst)

    write(src / "a", b"ALPHA!")  # edit (size and mtime change)
    write(src / "d" / "new", b"new file")  # add
    stamp_times(src / "d" / "new", seed=5)  # a future atime, so reading it cannot change it
    os.chmod(src / "d" / "b", 0o600)  # chmod: mtime unchanged, quick check says up to date
    age(src / "d" / "e" / "c", -100)  # touch
    os.unlink(src / "h2")  # delete (left in DST: no --delete)
    data = pc_json(src, dst, "-j", "2", "--itemize")
    assert sorted(data["changes"]) == ["attributes d/b", "copied d/new", "replaced a", "replaced d/e/c"]
    assert counts(data) == {
        "files": 3, "dirs": 3, "bytes": 6 + 8 + 1, "copied": 1, "copied_bytes": 8,
        "replaced": 2, "replaced_bytes": 7, "skipped": 3, "skipped_bytes": 3 + 4, "deleted": 0,
        "failed": 0, "exit_code": 0, "delete_limited": False, "delete_skipped": False}
    # Skipped: d/b (only chmod'ed), d/link (same target), h1. Everything in SRC is in DST as
    # it is in SRC (the chmod too); h2 stays in DST.
    assert_same_tree(src, dst, dst_extra=[b"h2"])
    assert stat.S_IMODE(os.lstat(dst / "d" / "b").st_mode) == 0o600


def test_checksum_finds_same_size_same_mtime_edits_and_fixes_touched_times(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    pc(src, dst, "-j", "1", "-q")
    before = os.lstat(src / "a")
    write(src / "a", b"ALPHA")  # same size
    os.utime(src / "a", ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime
    age(src / "d" / "b", 50)  # touched: content the same
    quick = pc_json(src, dst, "-j", "1", "-i")
    assert (quick["replaced"], quick["changes"]) == (1, ["replaced d/b"])  # misses the edit of a
    assert (dst / "a").read_bytes() == b"alpha"
    age(src / "d" / "b", 50)
    data = pc_json(src, dst, "-j", "1", "-i", "--checksum")
    # a: same size, different digest -> replaced. d/b: same digest -> skipped, times set.
    assert sorted(data["changes"]) == ["attributes d/b", "replaced a"]
    assert (data["replaced"], data["skipped"]) == (1, 5)
    assert_same_tree(src, dst)


def test_ignore_times_copies_everything(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    pc(src, dst, "-q", "-j", "1")
    data = pc_json(src, dst, "-j", "1", "-I")
    assert (data["files"], data["replaced"], data["skipped"], data["bytes"]) == (6, 6, 0, 5 + 3 + 1 + 4)
    assert_same_tree(src, dst)
    code, _, err = pc(src, dst, "-c", "-I")
    assert code == 2 and "exclude each other" in err


def test_update_keeps_newer_destination_files(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    pc(src, dst, "-q", "-j", "1")
    write(dst / "a", b"edited in the backup")  # newer than SRC's a
    write(src / "d" / "b", b"BEE")  # SRC newer than DST's b
    data = pc_json(src, dst, "-j", "1", "-u", "-i")
    assert data["changes"] == ["replaced d/b"]
    assert (dst / "a").read_bytes() == b"edited in the backup"
    assert (dst / "d" / "b").read_bytes() == b"BEE"
    # Without -u the older SRC file wins again.
    assert pc_json(src, dst, "-j", "1", "-i")["changes"] == ["replaced a"]
    assert (dst / "a").read_bytes() == b"alpha"


def test_no_clobber_never_replaces(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    pc(src, dst, "-q", "-j", "1")
    write(src / "a", b"changed")
    write(src / "new", b"n")
    os.unlink(dst / "d" / "b")
    os.unlink(dst / "h1")
    write(dst / "h1", b"other")  # h2 still exists in DST as the old inode
    data = pc_json(src, dst, "-j", "1", "--no-clobber", "-i")
    assert data["exit_code"] == 0
    assert sorted(data["changes"]) == ["copied d/b", "copied new"]
    assert (dst / "a").read_bytes() == b"alpha"
    assert (dst / "h1").read_bytes() == b"other" and (dst / "h2").read_bytes() == b"hard"
    assert (data["copied"], data["replaced"], data["skipped"]) == (2, 0, 5)


# -- dry run ----------------------------------------------------------------------------------------

def mutate(src: Path, dst: Path) -> None:
    write(src / "a", b"ALPHA!")
    write(src / "d" / "f" / "g", b"in a new dir")
    write(src / "big", os.urandom(40_000))  # split with --chunk-size 8K
    age(src / "h1", -10)  # the hard-link pair: both names replaced
    write(dst / "extra", b"x")
    write(dst / "old" / "deep", b"y")


def without_atimes(snap: Snapshot) -> Snapshot:
    return {rel: dataclasses.replace(n, atime_ns=0) for rel, n in snap.items()}


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_dry_run_reports_exactly_what_the_real_run_does(src: Path, tmp_path: Path, jobs: str) -> None:
    dst = tmp_path / "dst"
    opts = ("-j", jobs, "--chunk-size", "8K", "--delete", "-i")
    # Fresh DST: nothing is created, not even DST itself.
    dry = pc_json(src, dst, *opts, "-n")
    assert not dst.exists() and dry["dry_run"] is True
    real = pc_json(src, dst, *opts)
    assert counts(dry) == counts(real) and sorted(dry["changes"]) == sorted(real["changes"])
    assert_same_tree(src, dst)

    mutate(src, dst)
    stamp_times(src, seed=3)
    before = without_atimes(snapshot(dst))
    dry = pc_json(src, dst, *opts, "-n")
    # Atimes aside (the dry run reads DST's extra directories to count them), nothing changed.
    assert without_atimes(snapshot(dst)) == before and not temp_leftovers(dst)
    real = pc_json(src, dst, *opts)
    assert counts(dry) == counts(real) and sorted(dry["changes"]) == sorted(real["changes"])
    # stamp_times gave every SRC entry new times: all files are replaced (the symlink's target
    # is unchanged: up to date), big is split into ranges, the hard-link pair stays one inode.
    assert sorted(real["changes"]) == [
        "copied big", "copied d/f/g", "deleted extra", "deleted old", "deleted old/deep",
        "replaced a", "replaced d/b", "replaced d/e/c", "replaced h1", "replaced h2"]
    assert_same_tree(src, dst)
    # Up to date now: a dry run and a real run both find nothing to do.
    dry = pc_json(src, dst, *opts, "-n")
    assert (dry["files"], dry["deleted"], dry["changes"]) == (0, 0, [])


def test_dry_run_human_output(src: Path, tmp_path: Path) -> None:
    code, out, _ = pc(src, tmp_path / "dst", "-n", "-j", "1")
    assert code == 0 and "(dry run: nothing changed)" in out and "6 files" in out
    assert not (tmp_path / "dst").exists()


# -- --delete ---------------------------------------------------------------------------------------

def test_delete_mirrors_after_success_and_protects_excluded(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    pc(src, dst, "-q", "-j", "1")
    write(dst / "stale.txt", b"s")
    write(dst / "gone" / "x", b"x")
    write(dst / "keep.tmp", b"excluded: protected")
    data = pc_json(src, dst, "-j", "1", "--delete", "--exclude", "*.tmp", "-i")
    assert sorted(data["changes"]) == ["deleted gone", "deleted gone/x", "deleted stale.txt"]
    assert data["deleted"] == 3 and data["exit_code"] == 0
    assert_same_tree(src, dst, dst_extra=[b"keep.tmp"])


def test_delete_never_follows_a_symlink_out_of_dst(src: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "precious", b"must survive")
    write(outside / "sub" / "more", b"also")
    dst = tmp_path / "dst"
    pc(src, dst, "-q", "-j", "1")
    os.symlink(outside, dst / "escape")  # SRC has no "escape": the link itself is extraneous
    os.symlink(outside, dst / "d" / "e" / "escape2")
    data = pc_json(src, dst, "-j", "1", "--delete", "-i")
    assert sorted(data["changes"]) == ["deleted d/e/escape2", "deleted escape"]
    assert (outside / "precious").read_bytes() == b"must survive"
    assert (outside / "sub" / "more").read_bytes() == b"also"
    assert_same_tree(src, dst)


def test_delete_is_skipped_after_failures_unless_anyway(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    pc(src, dst, "-q", "-j", "1")
    write(dst / "extra", b"x")
    os.mkdir(dst / "conflict")  # SRC's file "conflict" cannot replace this directory: a failure
    write(dst / "conflict" / "inside", b"i")
    write(src / "conflict", b"file")
    code, out, err = pc(src, dst, "-j", "1", "--delete", "--json")
    data = json.loads(out)
    assert code == 1 and data["delete_skipped"] is True and data["deleted"] == 0
    assert "--delete skipped" in err and (dst / "extra").exists()
    data = pc_json(src, dst, "-j", "1", "--delete-anyway", "-i")
    assert data["exit_code"] == 1 and data["changes"] == ["deleted extra"]
    assert not (dst / "extra").exists() and (dst / "conflict" / "inside").exists()


def test_max_delete_deletes_nothing_and_exits_3(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    pc(src, dst, "-q", "-j", "1")
    for i in range(4):
        write(dst / f"extra{i}", b"x")
    code, out, err = pc(src, dst, "-j", "1", "--delete", "--max-delete", "3")
    assert code == 3 and "--max-delete" in err and "nothing deleted" in out
    assert all((dst / f"extra{i}").exists() for i in range(4))
    data = pc_json(src, dst, "-j", "1", "--delete", "--max-delete", "4")
    assert (data["exit_code"], data["deleted"]) == (0, 4)
    assert_same_tree(src, dst)


def test_delete_refused_for_a_file_source(src: Path, tmp_path: Path) -> None:
    code, _, err = pc(src / "a", tmp_path / "out", "--delete")
    assert code == 2 and "--delete needs SRC to be a directory" in err


# -- filters through the CLI --------------------------------------------------------------------------

def filter_tree(root: Path) -> Path:
    for rel in ("keep.txt", "skip.log", "important.log", "build/out.o", "build/keep.txt",
                "src/main.c", "src/main.o", "docs/a.md", "docs/sub/b.md"):
        write(root / rel, rel.encode())
    return root


def copied_names(dst: Path) -> list[str]:
    return sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if not p.is_dir())


@pytest.mark.parametrize(("args", "expected"), [
    (["--exclude", "*.log", "--exclude", "build/"],
     ["docs/a.md", "docs/sub/b.md", "keep.txt", "src/main.c", "src/main.o"]),
    # First match wins: the include before the exclude keeps important.log ...
    (["--include", "important.log", "--exclude", "*.log", "--exclude", "*.o"],
     ["build/keep.txt", "docs/a.md", "docs/sub/b.md", "important.log", "keep.txt", "src/main.c"]),
    # ... and after it, it comes too late.
    (["--exclude", "*.log", "--include", "important.log", "--exclude=*.o"],
     ["build/keep.txt", "docs/a.md", "docs/sub/b.md", "keep.txt", "src/main.c"]),
    # Only *.md, at any depth: directories must be included on the way.
    (["--include", "*/", "--include", "*.md", "--exclude", "*"], ["docs/a.md", "docs/sub/b.md"]),
    # An anchored pattern only at the root.
    (["--exclude", "/keep.txt"],
     ["build/keep.txt", "build/out.o", "docs/a.md", "docs/sub/b.md", "important.log", "skip.log",
      "src/main.c", "src/main.o"]),
])
def test_filters_in_command_line_order(tmp_path: Path, args: list[str], expected: list[str]) -> None:
    src = filter_tree(tmp_path / "src")
    dst = tmp_path / "dst"
    code, _, err = pc(src, dst, "-j", "1", *args)
    assert code == 0, err
    assert copied_names(dst) == expected


def test_exclude_from_file_and_excluded_dir_not_walked(tmp_path: Path) -> None:
    src = filter_tree(tmp_path / "src")
    rules = tmp_path / "rules"
    rules.write_text("# comment\n+ important.log\n*.log\n- build/\n")
    # A directory loop through a symlink would be reported with -L if it were walked.
    os.symlink("..", src / "build" / "loop")
    dst = tmp_path / "dst"
    code, _, err = pc(src, dst, "-j", "1", "-L", "--exclude-from", rules)
    assert (code, err) == (0, "")
    assert copied_names(dst) == ["docs/a.md", "docs/sub/b.md", "important.log", "keep.txt",
                                 "src/main.c", "src/main.o"]
    code, _, err = pc(src, dst, "--exclude-from", tmp_path / "missing")
    assert code == 2 and "missing" in err


def test_exclude_with_delete_keeps_excluded_destination_entries(tmp_path: Path) -> None:
    src = filter_tree(tmp_path / "src")
    dst = tmp_path / "dst"
    pc(src, dst, "-q", "-j", "1")
    data = pc_json(src, dst, "-j", "1", "--delete", "--exclude", "*.o", "-i")
    # *.o files already in DST are excluded: not copied, and not deleted either.
    assert data["deleted"] == 0 and (dst / "build" / "out.o").exists()
    os.unlink(src / "build" / "out.o")
    assert pc_json(src, dst, "-j", "1", "--delete", "-i")["changes"] == ["deleted build/out.o"]


# -- --log, escaping ---------------------------------------------------------------------------

def test_log_appends_changes_and_summary(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    log = tmp_path / "pcopy.log"
    write(src / "odd\nname", b"o")
    code, out, _ = pc(src, dst, "-j", "1", "--log", log, "-q")
    assert code == 0 and out == ""
    write(src / "a", b"ALPHA!")
    pc(src, dst, "-j", "1", "--log", log, "-q")
    text = log.read_text().splitlines()
    assert sorted(text[:7]) == ["copied a", "copied d/b", "copied d/e/c", "copied d/link",
                                "copied h1", "copied h2", "copied odd\\nname"]
    assert text[7].startswith("pcopy: 7 files")
    assert text[8] == "replaced a" and text[9].startswith("pcopy: 1 file,") and len(text) == 10


# -- metadata options ---------------------------------------------------------------------------------

def test_no_perms_no_times_no_hard_links(src: Path, tmp_path: Path) -> None:
    os.chmod(src / "a", 0o4755)
    os.chmod(src / "d", 0o750)
    dst = tmp_path / "dst"
    old_umask = os.umask(0o027)
    try:
        code, _, err = pc(src, dst, "-j", "1", "--no-perms", "--no-times", "--no-hard-links")
    finally:
        os.umask(old_umask)
    assert code == 0, err
    assert stat.S_IMODE(os.lstat(dst / "a").st_mode) == 0o750  # no set-uid, umask applied
    assert stat.S_IMODE(os.lstat(dst / "d").st_mode) == 0o750
    assert stat.S_IMODE(os.lstat(dst / "h1").st_mode) == 0o640
    assert os.lstat(dst / "a").st_mtime_ns != os.lstat(src / "a").st_mtime_ns
    assert os.lstat(dst / "h1").st_ino != os.lstat(dst / "h2").st_ino
    assert (dst / "h2").read_bytes() == b"hard"
    # Default: hard links and times are kept.
    pc(src, tmp_path / "dst2", "-q", "-j", "1")
    assert os.lstat(tmp_path / "dst2" / "h1").st_ino == os.lstat(tmp_path / "dst2" / "h2").st_ino


def test_xattrs_copied_on_request(src: Path, tmp_path: Path) -> None:
    try:
        os.setxattr(src / "a", "user.note", b"file attr")
        os.setxattr(src / "d", "user.note", b"dir attr")
    except OSError as exc:
        pytest.skip(f"no user xattrs here: {exc}")
    pc(src, tmp_path / "plain", "-q", "-j", "1")
    assert os.listxattr(tmp_path / "plain" / "a") == []
    code, _, err = pc(src, tmp_path / "dst", "-j", "1", "--xattrs", "--chunk-size", "4")
    assert code == 0, err
    assert os.getxattr(tmp_path / "dst" / "a", "user.note") == b"file attr"
    assert os.getxattr(tmp_path / "dst" / "d", "user.note") == b"dir attr"


def test_group_as_unprivileged_user(nobody: Nobody, world_tmp: Path) -> None:
    """--group chgrps to groups the user has (its own), --owner to another user fails and is
    reported; without them nothing is chown'ed."""
    src = world_tmp / "src"
    write(src / "mine", b"m")
    write(src / "root", b"r", mode=0o644)
    nobody.own(src)
    nobody.own(src / "mine")
    os.chmod(src, 0o755)
    out = world_tmp / "out"
    out.mkdir()
    nobody.own(out)
    run = nobody.run(src, out / "plain", "--json", cwd=world_tmp)
    assert run.returncode == 0, run
    assert os.lstat(out / "plain" / "root").st_uid == nobody.uid
    for option in ("--group", "--owner"):
        run = nobody.run(src, out / option, option, "--json", cwd=world_tmp)
        assert run.returncode == 1, run
        failures = run.json()["failures"]
        assert [(os.path.basename(f["path"]), f["error"]) for f in failures] == [("root", "EPERM")]
        assert (out / option / "mine").read_bytes() == b"m" and not (out / option / "root").exists()


# -- the Python API ---------------------------------------------------------------------------------

def test_api_keywords(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    report = pcopy.copy(src, dst, jobs=1, filters=[("exclude", "h*")], record_changes=True)
    assert sorted(report.changes) == sorted(("copied", str(dst / p)) for p in ("a", "d/b", "d/e/c", "d/link"))
    write(dst / "x", b"x")
    report = pcopy.copy(src, dst, jobs=1, delete=True, dry_run=True, filters=[("exclude", "h*")])
    assert (report.deleted, report.files, (dst / "x").exists()) == (1, 0, True)
    report = pcopy.copy(src, dst, jobs=1, delete=True, max_delete=0)
    assert (report.exit_code, report.delete_limited, (dst / "x").exists()) == (3, True, True)


def test_up_to_date_rerun_writes_nothing(tmp_path: Path) -> None:
    """A re-run on an up-to-date DST changes no inode at all: ctime (which any chmod, utime,
    chown or write would move) stays the same on every file and directory."""
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f.txt").write_text("x")
    (src / "top.txt").write_text("y")
    os.chmod(src / "a", 0o750)
    dst = tmp_path / "dst"
    assert pcopy.copy(src, dst, jobs=2).failures == []

    def ctimes() -> dict[str, int]:
        return {str(p): p.lstat().st_ctime_ns for p in [dst, *dst.rglob("*")]}

    before = ctimes()
    time.sleep(0.01)  # a later write would get a later ctime
    report = pcopy.copy(src, dst, jobs=2)
    assert (report.files, report.skipped, report.failures) == (0, 2, [])
    assert ctimes() == before
