"""The whole tool on real temporary trees, compared entry by entry with SRC.

Most cases call the in-process API (pcopy.copy), which runs exactly what the CLI runs; several run
`python -m pcopy` as a subprocess to check exit codes, the summary, --json and stderr too.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import RunPcopy
from treeutil import (
    assert_same_tree,
    build_sample_tree,
    count_kinds,
    distinct_file_bytes,
    fs,
    snapshot,
    stamp_times,
    temp_leftovers,
    write,
)

import pcopy

IS_ROOT = os.geteuid() == 0


def copy(src: Path | str, dst: Path | str, **kwargs: Any) -> pcopy.CopyReport:
    return pcopy.copy(str(src), str(dst), **kwargs)


def sample(tmp_path: Path, **kwargs: Any) -> tuple[Path, Path]:
    """A sample tree at tmp_path/src whose absolute symlink points at tmp_path/outside.txt."""
    outside = write(tmp_path / "outside.txt", b"outside the tree\n")
    src = tmp_path / "src"
    build_sample_tree(src, outside=outside, **kwargs)
    return src, tmp_path / "dst"


def expected_counts(snap: dict[bytes, Any]) -> tuple[int, int, int]:
    """(files, dirs, bytes) a fresh copy of snap reports: every non-directory entry is a file
    copied, directories include the root, bytes count each inode's data once."""
    kinds = count_kinds(snap)
    dirs = kinds.get("dir", 0)
    return len(snap) - dirs, dirs, distinct_file_bytes(snap)


MATRIX = [
    pytest.param({"jobs": 1}, id="j1-default-chunk"),
    pytest.param({"jobs": 1, "chunk_size": 4096}, id="j1-chunk4K"),
    pytest.param({"jobs": 2, "chunk_size": 4096}, id="j2-chunk4K"),
    pytest.param({"jobs": 8, "chunk_size": 4096}, id="j8-chunk4K"),
    pytest.param({"jobs": 2, "chunk_size": 64 * 1024}, id="j2-chunk64K"),
    # Not a multiple of the page size: ranges start at odd offsets.
    pytest.param({"jobs": 8, "chunk_size": 1000}, id="j8-chunk1000"),
    pytest.param({"jobs": 2, "chunk_size": 4096, "method": "readwrite", "buffer_size": 1024},
                 id="j2-chunk4K-readwrite1024"),
    pytest.param({"jobs": 1, "method": "readwrite", "buffer_size": 1024}, id="j1-readwrite1024"),
    pytest.param({"jobs": 2, "chunk_size": 4096, "start_method": "forkserver"}, id="j2-forkserver"),
]


@pytest.mark.parametrize("options", MATRIX)
def test_tree_copied_exactly(tmp_path: Path, options: dict[str, Any]) -> None:
    src, dst = sample(tmp_path)
    before = snapshot(src)
    report = copy(src, dst, **options)
    assert report.failures == []
    assert report.exit_code == 0
    files, dirs, nbytes = expected_counts(before)
    assert (report.files, report.dirs, report.bytes, report.skipped) == (files, dirs, nbytes, 0)
    assert_same_tree(before, dst)
    assert snapshot(src) == before, "SRC changed during the copy"
    assert temp_leftovers(dst) == []


def test_many_small_files_in_several_batches(tmp_path: Path) -> None:
    """More small files than one batch holds, so several jobs really go to the pool."""
    src = tmp_path / "src"
    for i in range(700):
        write(src / f"d{i % 7}" / f"f{i:04d}", os.urandom(i % 300), 0o600 + (i % 3) * 0o40)
    stamp_times(src)
    before = snapshot(src)
    report = copy(src, tmp_path / "dst", jobs=2)
    assert (report.exit_code, report.files) == (0, 700)
    assert_same_tree(before, tmp_path / "dst")


# -- the CLI as a subprocess ----------------------------------------------------------------------

def test_cli_json_report(tmp_path: Path, run_pcopy: RunPcopy) -> None:
    src, dst = sample(tmp_path)
    before = snapshot(src)
    run = run_pcopy(src, dst, "-j", "2", "--chunk-size", "4K", "--json")
    assert run.returncode == 0, run
    assert run.stderr == ""
    report = run.json()
    files, dirs, nbytes = expected_counts(before)
    assert report["files"] == files
    assert report["dirs"] == dirs
    assert report["bytes"] == nbytes
    assert (report["skipped"], report["failed"], report["failures"], report["exit_code"]) == (0, 0, [], 0)
    assert report["seconds"] >= 0
    assert_same_tree(before, dst)


def test_cli_summary_line(tmp_path: Path, run_pcopy: RunPcopy) -> None:
    src, dst = sample(tmp_path)
    before = snapshot(src)
    run = run_pcopy(src, dst, "-j", "2")
    assert run.returncode == 0, run
    assert run.stderr == ""  # no terminal: no progress bar
    files, dirs, _ = expected_counts(before)
    lines = run.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pcopy: "), run
    assert f"{files} files" in lines[0] and f"{dirs} dirs" in lines[0]
    assert "skipped 0" in lines[0] and "failed 0" in lines[0]
    assert_same_tree(before, dst)


def test_cli_quiet_prints_nothing_on_success(tmp_path: Path, run_pcopy: RunPcopy) -> None:
    src, dst = sample(tmp_path)
    run = run_pcopy(src, dst, "-q")
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    assert_same_tree(src, dst)


def test_cli_spawn_start_method(tmp_path: Path, run_pcopy: RunPcopy) -> None:
    """spawn re-imports everything in fresh workers (the default on macOS, and on Linux from 3.14)."""
    src, dst = sample(tmp_path, specials=True)
    before = snapshot(src)
    run = run_pcopy(src, dst, "-j", "2", "--chunk-size", "4K", "--start-method", "spawn", "--json")
    assert run.returncode == 0, run
    assert run.json()["failed"] == 0
    assert_same_tree(before, dst)


def test_cli_forkserver_workers_and_bar_last_through_a_long_job(tmp_path: Path, run_pcopy: RunPcopy) -> None:
    """Under forkserver a child's parent process is the fork server, not pcopy: taken for pcopy
    gone, every worker stopped itself 0.2 s into a job (a file that took longer failed twice,
    then was reported failed), and the bar's Manager left at once (no progress: it stood at
    "counting 0/N files")."""
    src, dst = sample(tmp_path)
    long = src / "long.bin"
    long.write_bytes(os.urandom(1 << 20) * 96)  # ~0.5 s through a 1 KiB loop
    os.utime(long, ns=(2_000_000_000 * 10**9, 1_700_000_000 * 10**9))  # atime past mtime: reads leave it
    before = snapshot(src)
    run = run_pcopy(src, dst, "-j", "2", "--buffer-size", "1024", "--start-method", "forkserver", "--progress")
    assert run.returncode == 0, run
    assert "100%" in run.stderr and "failed 0" in run.stdout + run.stderr, run
    assert_same_tree(before, dst)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cli_forkserver_server_starts_with_signals_blocked(tmp_path: Path) -> None:
    """The fork server must start with SIGINT and SIGTERM held back, like every process pcopy
    starts: multiprocessing's resource tracker unblocked them in pcopy as it started, and a
    Ctrl-C to the process group then killed the fork server in its imports (pcopy: "Aborted!",
    exit 1)."""
    src, dst = sample(tmp_path)
    long = src / "long.bin"
    long.write_bytes(os.urandom(1 << 20) * 64)  # the run lasts long enough to look at it
    proc = subprocess.Popen([sys.executable, "-m", "pcopy", str(src), str(dst), "-j", "2", "--buffer-size", "1024",
                             "--start-method", "forkserver", "-q"], stderr=subprocess.PIPE)
    blocked = None
    try:
        deadline = time.monotonic() + 30
        while blocked is None and proc.poll() is None and time.monotonic() < deadline:
            for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                with contextlib.suppress(OSError):
                    if b"from multiprocessing.forkserver import" in Path(f"/proc/{child}/cmdline").read_bytes():
                        status = Path(f"/proc/{child}/status").read_text()
                        blocked = int(re.search(r"SigBlk:\s*([0-9a-f]+)", status).group(1), 16)  # type: ignore[union-attr]
            time.sleep(0.005)
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert blocked is not None, "no fork server seen"
    assert blocked & (1 << (signal.SIGINT - 1)) and blocked & (1 << (signal.SIGTERM - 1)), hex(blocked)


def test_cli_read_write_loop_1024(tmp_path: Path, run_pcopy: RunPcopy) -> None:
    src, dst = sample(tmp_path)
    before = snapshot(src)
    run = run_pcopy(src, dst, "-j", "2", "--chunk-size", "8K", "--buffer-size", "1024")
    assert run.returncode == 0, run
    assert_same_tree(before, dst)


# -- where things go ------------------------------------------------------------------------------

def test_dir_into_missing_dst_creates_parents(tmp_path: Path) -> None:
    src, _ = sample(tmp_path)
    dst = tmp_path / "x" / "y" / "z"
    report = copy(src, dst, jobs=2)
    assert report.exit_code == 0
    assert_same_tree(src, dst)


def test_existing_dst_dir_is_merged_into(tmp_path: Path) -> None:
    src, dst = sample(tmp_path)
    write(dst / "keep.txt", b"mine")
    write(dst / "a" / "keep2.txt", b"mine too")
    os.symlink("nowhere", dst / "keep_link")
    report = copy(src, dst, jobs=2, chunk_size=4096)
    assert report.exit_code == 0
    assert not (dst / "src").exists(), "copied to DST/<name of SRC> instead of merging"
    assert (dst / "keep.txt").read_bytes() == b"mine"
    assert (dst / "a" / "keep2.txt").read_bytes() == b"mine too"
    assert os.readlink(dst / "keep_link") == "nowhere"
    assert_same_tree(src, dst, dst_extra=[b"keep.txt", b"a/keep2.txt", b"keep_link"])


def test_dst_symlink_to_existing_dir_is_merged_into(tmp_path: Path) -> None:
    """DST names an existing directory through a symlink (as command-line paths are followed):
    the copy is merged into that directory, and the link itself stays a link."""
    src, _ = sample(tmp_path)
    real = tmp_path / "real"
    real.mkdir()
    os.symlink("real", tmp_path / "alias")
    report = copy(src, tmp_path / "alias", jobs=1)
    assert report.failures == []
    assert os.path.islink(tmp_path / "alias")
    assert_same_tree(src, real)


@pytest.mark.parametrize(("src_form", "dst_form"), [
    ("src", "dst"),
    ("src/", "dst/"),
    ("./src", "./dst"),
    ("./src/.", "dst/."),
    ("src//", ".//dst//"),
])
def test_forms_change_nothing_and_second_run_copies_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_pcopy: RunPcopy,
        src_form: str, dst_form: str) -> None:
    src, dst = sample(tmp_path)
    before = snapshot(src)
    monkeypatch.chdir(tmp_path)
    first = copy(src_form, dst_form, jobs=2, chunk_size=4096)
    assert first.exit_code == 0
    assert sorted(os.listdir(tmp_path)) == ["dst", "outside.txt", "src"]
    assert_same_tree(before, dst)
    # Again with the other spelling: nothing to do, every file is skipped by the quick check.
    run = run_pcopy("src", "dst", "-j", "2", "--chunk-size", "4K", "--json", cwd=tmp_path)
    assert run.returncode == 0, run
    second = run.json()
    assert (second["files"], second["bytes"], second["failed"]) == (0, 0, 0), second
    assert second["skipped"] == first.files
    assert_same_tree(before, dst)


def test_file_to_new_path(tmp_path: Path) -> None:
    f = write(tmp_path / "one.bin", os.urandom(5000), 0o640)
    stamp_times(f)
    report = copy(tmp_path / "one.bin", tmp_path / "copy.bin")
    assert (report.exit_code, report.files) == (0, 1)
    assert_same_tree(f, tmp_path / "copy.bin")


@pytest.mark.parametrize("slash", ["", "/"])
def test_file_into_existing_dir(tmp_path: Path, run_pcopy: RunPcopy, slash: str) -> None:
    f = write(tmp_path / "one.bin", os.urandom(70_000), 0o600)
    stamp_times(f)
    (tmp_path / "into").mkdir()
    run = run_pcopy(tmp_path / "one.bin", f"{tmp_path / 'into'}{slash}", "--chunk-size", "4K", "-j", "2")
    assert run.returncode == 0, run
    assert os.listdir(tmp_path / "into") == ["one.bin"]
    assert_same_tree(f, tmp_path / "into" / "one.bin")


def test_top_level_symlinks_are_followed(tmp_path: Path) -> None:
    src, _ = sample(tmp_path)
    os.symlink("src", tmp_path / "dir_alias")
    os.symlink("src/small.txt", tmp_path / "file_alias")
    assert copy(tmp_path / "dir_alias", tmp_path / "d1", jobs=2).exit_code == 0
    assert copy(str(tmp_path / "dir_alias") + "/", tmp_path / "d2", jobs=1).exit_code == 0
    assert copy(tmp_path / "file_alias", tmp_path / "f1").exit_code == 0
    for d in ("d1", "d2"):
        assert not os.path.islink(tmp_path / d)
        assert_same_tree(src, tmp_path / d)
    assert not os.path.islink(tmp_path / "f1")
    assert_same_tree(src / "small.txt", tmp_path / "f1")


def test_dereference_copies_targets_and_reports_loops(tmp_path: Path) -> None:
    write(tmp_path / "ext.txt", b"external data\n", 0o600)
    src = tmp_path / "src"
    write(src / "file.txt", b"file\n", 0o640)
    write(src / "sub" / "inner.txt", b"inner\n")
    os.symlink("file.txt", src / "link_file")
    os.symlink(tmp_path / "ext.txt", src / "link_out")
    os.symlink("sub", src / "link_sub")
    os.symlink("..", src / "sub" / "loop")  # leads back to SRC itself: a loop under -L
    stamp_times(tmp_path)
    dst = tmp_path / "dst"
    report = copy(src, dst, jobs=2, dereference=True)
    assert report.exit_code == 1
    failed = sorted(f.path for f in report.failures)
    assert failed == sorted([str(src / "sub" / "loop"), str(src / "link_sub" / "loop")]), failed
    for name, target in (("link_file", src / "file.txt"), ("link_out", tmp_path / "ext.txt"),
                         ("link_sub/inner.txt", src / "sub" / "inner.txt")):
        assert not os.path.islink(dst / name)
        assert_same_tree(target, dst / name)
    assert stat.S_ISDIR(os.lstat(dst / "link_sub").st_mode)
    assert not os.path.lexists(dst / "sub" / "loop")


# -- the quick check and replacing ----------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [64 * 1024 * 1024, 4096], ids=["whole", "split"])
def test_same_size_and_mtime_is_skipped_without_rewriting(tmp_path: Path, chunk_size: int) -> None:
    data = os.urandom(20_000)
    f = write(tmp_path / "src" / "f.bin", data)
    stamp_times(tmp_path / "src")
    st = os.stat(f)
    other = bytes(b ^ 0xFF for b in data)  # same size, different bytes
    g = write(tmp_path / "dst" / "f.bin", other)
    os.utime(g, ns=(st.st_atime_ns, st.st_mtime_ns))
    ino = os.stat(g).st_ino
    report = copy(tmp_path / "src", tmp_path / "dst", jobs=2, chunk_size=chunk_size)
    assert (report.exit_code, report.files, report.skipped) == (0, 0, 1)
    assert (tmp_path / "dst" / "f.bin").read_bytes() == other, "up-to-date file was rewritten"
    assert os.stat(g).st_ino == ino


@pytest.mark.parametrize("chunk_size", [64 * 1024 * 1024, 4096], ids=["whole", "split"])
def test_changed_file_is_replaced_atomically(tmp_path: Path, chunk_size: int) -> None:
    f = write(tmp_path / "src" / "f.bin", os.urandom(30_000), 0o640)
    stamp_times(tmp_path / "src")
    old = os.urandom(30_000)
    g = write(tmp_path / "dst" / "f.bin", old, 0o600)
    # A second name of the old DST file: written through, it would change too; replaced by a
    # rename, it keeps the old bytes.
    os.link(g, tmp_path / "old_alias")
    report = copy(tmp_path / "src", tmp_path / "dst", jobs=2, chunk_size=chunk_size)
    assert (report.exit_code, report.files, report.skipped) == (0, 1, 0)
    assert (tmp_path / "old_alias").read_bytes() == old
    assert os.stat(g).st_ino != os.stat(tmp_path / "old_alias").st_ino
    assert_same_tree(f, g)
    assert temp_leftovers(tmp_path / "dst") == []


@pytest.mark.parametrize("chunk_size", [64 * 1024 * 1024, 4096], ids=["whole", "split"])
def test_dst_symlink_at_a_file_is_replaced_not_written_through(tmp_path: Path, chunk_size: int) -> None:
    f = write(tmp_path / "src" / "f.bin", os.urandom(9000))
    stamp_times(tmp_path / "src")
    st = os.stat(f)
    # The symlink's target has SRC's size and mtime, so following the link would pass the quick
    # check; it must be the link itself that is looked at and replaced.
    victim = write(tmp_path / "victim.bin", os.urandom(9000))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    victim_before = snapshot(victim)
    (tmp_path / "dst").mkdir()
    os.symlink(victim, tmp_path / "dst" / "f.bin")
    report = copy(tmp_path / "src", tmp_path / "dst", jobs=2, chunk_size=chunk_size)
    assert report.exit_code == 0
    assert not os.path.islink(tmp_path / "dst" / "f.bin")
    assert_same_tree(f, tmp_path / "dst" / "f.bin")
    assert snapshot(victim) == victim_before, "wrote through a DST symlink"


def test_changed_hard_linked_file_stays_linked_on_rerun(tmp_path: Path) -> None:
    src, dst = sample(tmp_path)
    assert copy(src, dst, jobs=2, chunk_size=4096).exit_code == 0
    # New bytes of the same size in the three-name group; the names keep sharing one inode.
    h1 = src / "links" / "h1"
    h1.write_bytes(os.urandom(h1.stat().st_size))
    stamp_times(src, seed=3)
    before = snapshot(src)
    report = copy(src, dst, jobs=2, chunk_size=4096)
    assert report.exit_code == 0
    assert_same_tree(before, dst)


def test_hard_links_restored_in_an_existing_copy(tmp_path: Path) -> None:
    """A DST made without hard links (same bytes, same times, separate inodes) gets them back."""
    src, dst = sample(tmp_path)
    before = snapshot(src)
    dst.mkdir()
    for rel in (b"links/h1", b"links/h2", b"a/b/h3", b"links/s1", b"s2"):
        target = os.path.join(fs(dst), rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(os.path.join(fs(src), rel), "rb") as f:
            write(target, f.read())
        os.utime(target, ns=(before[rel].atime_ns, before[rel].mtime_ns))
    report = copy(src, dst, jobs=2)
    assert report.exit_code == 0
    assert_same_tree(before, dst)


def test_type_clashes_in_dst_are_reported_and_the_rest_copied(tmp_path: Path) -> None:
    """DST has a file where SRC has a directory, and a directory where SRC has a file: both are
    reported (exit 1), neither DST entry is touched, everything else is copied."""
    src = tmp_path / "src"
    write(src / "was_dir" / "inner.txt", b"inner")
    write(src / "was_file", b"file")
    write(src / "fine" / "ok.txt", b"ok")
    stamp_times(src)
    dst = tmp_path / "dst"
    write(dst / "was_dir", b"a file in the way")
    write(dst / "was_file" / "keep.txt", b"a directory in the way")
    stamp_times(dst)
    clash_before = {k: v for k, v in snapshot(dst).items() if k != b""}
    report = copy(src, dst, jobs=2)
    assert report.exit_code == 1
    failed = " ".join(f.path for f in report.failures)
    assert len(report.failures) == 2 and "was_dir" in failed and "was_file" in failed, report.failures
    after = snapshot(dst)
    for rel, n in clash_before.items():
        assert after[rel] == n, rel
    assert_same_tree(src / "fine", dst / "fine")


def test_mtime_one_nanosecond_apart_is_replaced(tmp_path: Path) -> None:
    f = write(tmp_path / "src" / "f.bin", b"new bytes")
    stamp_times(tmp_path / "src")
    st = os.stat(f)
    g = write(tmp_path / "dst" / "f.bin", b"old bytes")
    os.utime(g, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    report = copy(tmp_path / "src", tmp_path / "dst", jobs=1)
    assert (report.files, report.skipped) == (1, 0)
    assert_same_tree(f, g)


def test_file_onto_dst_symlink_replaces_the_link(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    write(f, b"source bytes\n")
    stamp_times(f)
    victim = write(tmp_path / "victim.txt", b"victim bytes\n")
    stamp_times(victim)
    victim_before = snapshot(victim)
    os.symlink("victim.txt", tmp_path / "link")
    os.symlink("nowhere", tmp_path / "dangling")
    assert copy(f, tmp_path / "link").exit_code == 0
    assert copy(f, tmp_path / "dangling").exit_code == 0
    for name in ("link", "dangling"):
        assert not os.path.islink(tmp_path / name)
        assert_same_tree(f, tmp_path / name)
    assert snapshot(victim) == victim_before, "wrote through a DST symlink"
    assert not os.path.lexists(tmp_path / "nowhere"), "created a dangling link's target"


def test_dst_symlink_at_a_directory_is_never_followed(tmp_path: Path) -> None:
    """SRC has a directory where DST has a symlink to a directory outside DST: nothing may be
    written into that outside directory (replacing the link or reporting it are both fine)."""
    write(tmp_path / "src" / "sub" / "f.txt", b"data")
    stamp_times(tmp_path / "src")
    write(tmp_path / "elsewhere" / "keep.txt", b"keep")
    stamp_times(tmp_path / "elsewhere")
    elsewhere_before = snapshot(tmp_path / "elsewhere")
    (tmp_path / "dst").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "dst" / "sub")
    report = copy(tmp_path / "src", tmp_path / "dst", jobs=2)
    after = snapshot(tmp_path / "elsewhere")
    assert after == elsewhere_before, "wrote through a DST symlink to a directory"
    if report.failures:
        assert report.exit_code == 1
    else:
        assert_same_tree(tmp_path / "src", tmp_path / "dst")


# -- what is preserved ----------------------------------------------------------------------------

def test_mode_bits_and_nanosecond_times_exact(tmp_path: Path) -> None:
    src = tmp_path / "src"
    modes = {"suid": 0o4755, "sgid": 0o2711, "both": 0o6750, "ro": 0o444, "none": 0o000}
    for name, mode in modes.items():
        write(src / name, b"m", mode)
    (src / "sticky").mkdir()
    os.chmod(src / "sticky", 0o1777)
    (src / "ro_dir").mkdir()
    write(src / "ro_dir" / "in", b"x", 0o400)
    os.chmod(src / "ro_dir", 0o555)
    times = {}
    for i, name in enumerate([*modes, "sticky", "ro_dir/in", "ro_dir"]):
        times[name] = (1_700_000_000_000_000_001 + i * 999_999_937, 1_500_000_000_987_654_321 + i)
        os.utime(src / name, ns=times[name])
    report = copy(src, tmp_path / "dst", jobs=2)
    assert report.exit_code == 0
    dst = tmp_path / "dst"
    for name, mode in [*modes.items(), ("sticky", 0o1777), ("ro_dir", 0o555), ("ro_dir/in", 0o400)]:
        st = os.lstat(dst / name)
        assert stat.S_IMODE(st.st_mode) == mode, name
        assert (st.st_atime_ns, st.st_mtime_ns) == times[name], name


def test_read_only_source_tree(tmp_path: Path) -> None:
    """A tree of 0555 directories and 0444 files copies, and ends with those modes."""
    src = tmp_path / "src"
    for d in ("a", "a/b", "c"):
        write(src / d / "file", os.urandom(3000), 0o444)
    for d in ("a/b", "a", "c", ""):
        os.chmod(src / d, 0o555)
    stamp_times(src)
    before = snapshot(src)
    report = copy(src, tmp_path / "dst", jobs=2, chunk_size=1024)
    assert report.exit_code == 0
    assert_same_tree(before, tmp_path / "dst")


@pytest.mark.skipif(not IS_ROOT, reason="only root can give files to other users")
def test_ownership_preserved_as_root(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "owned", b"x", 0o6755)
    write(src / "sub" / "big", os.urandom(50_000))
    os.symlink("owned", src / "link")
    os.chown(src / "owned", 1234, 5678)
    os.chmod(src / "owned", 0o6755)  # chown clears set-id bits; put them back
    os.chown(src / "sub", 4321, 8765)
    os.chown(src / "sub" / "big", 1111, 2222)
    os.chown(src / "link", 3333, 4444, follow_symlinks=False)
    stamp_times(src)
    report = copy(src, tmp_path / "dst", jobs=2, chunk_size=4096)
    assert report.exit_code == 0
    st = os.lstat(tmp_path / "dst" / "owned")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o6755)
    assert_same_tree(src, tmp_path / "dst", owner=True)
    link = os.lstat(tmp_path / "dst" / "link")
    assert (link.st_uid, link.st_gid) == (3333, 4444)


SPARSE_SIZE = 64 * 1024 * 1024


def make_sparse(path: Path, data_at: list[int]) -> Path:
    with open(path, "wb") as f:
        f.truncate(SPARSE_SIZE)
        for offset in data_at:
            f.seek(offset)
            f.write(os.urandom(4096))
    return path


@pytest.mark.parametrize(("data_at", "options"), [
    ([32 * 1024 * 1024], {"jobs": 1}),
    ([0, 32 * 1024 * 1024, SPARSE_SIZE - 4096], {"jobs": 2, "chunk_size": 1024 * 1024}),
    ([5 * 1024 * 1024], {"jobs": 2, "chunk_size": 4096}),
], ids=["one-block-whole", "three-blocks-1M-ranges", "one-block-4K-ranges"])
def test_sparse_file_keeps_holes(tmp_path: Path, data_at: list[int], options: dict[str, Any]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = make_sparse(src / "sparse.img", data_at)
    if os.stat(f).st_blocks * 512 >= SPARSE_SIZE // 2:
        pytest.skip("this file system does not keep holes")
    stamp_times(src)
    report = copy(src, tmp_path / "dst", **options)
    assert report.exit_code == 0
    st = os.stat(tmp_path / "dst" / "sparse.img")
    assert st.st_size == SPARSE_SIZE
    # Only the written blocks are allocated (plus a little metadata), not 64 MiB.
    assert st.st_blocks * 512 <= 1024 * 1024, f"{st.st_blocks * 512} bytes allocated"
    assert_same_tree(src, tmp_path / "dst")


def test_fifo_is_recreated_and_never_opened(tmp_path: Path, run_pcopy: RunPcopy) -> None:
    """Opening a FIFO for reading blocks until a writer comes: a copy that opens it hangs (the
    subprocess timeout turns that into a failure) or turns it into a regular file."""
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe", 0o620)
    write(src / "after.txt", b"after the fifo\n")
    os.mkfifo(src / "zz_pipe", 0o600)
    stamp_times(src)
    for jobs in ("1", "2"):
        dst = tmp_path / f"dst{jobs}"
        run = run_pcopy(src, dst, "-j", jobs, timeout=30)
        assert run.returncode == 0, run
        assert stat.S_ISFIFO(os.lstat(dst / "pipe").st_mode)
        assert_same_tree(src, dst)


def test_fifo_as_top_level_source(tmp_path: Path, run_pcopy: RunPcopy) -> None:
    os.mkfifo(tmp_path / "pipe", 0o640)
    run = run_pcopy(tmp_path / "pipe", tmp_path / "copy", timeout=30)
    assert run.returncode == 0, run
    assert stat.S_ISFIFO(os.lstat(tmp_path / "copy").st_mode)
    assert stat.S_IMODE(os.lstat(tmp_path / "copy").st_mode) == 0o640


@pytest.mark.skipif(not IS_ROOT, reason="device nodes can only be made by root")
def test_device_node_recreated_as_root(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    null = os.stat("/dev/null")
    os.mknod(src / "null", stat.S_IFCHR | 0o640, null.st_rdev)
    stamp_times(src)
    report = copy(src, tmp_path / "dst", jobs=1)
    assert report.exit_code == 0
    st = os.lstat(tmp_path / "dst" / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev
    assert_same_tree(src, tmp_path / "dst")


def test_socket_is_never_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write(src / "file.txt", b"data")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(os.fspath(src / "sock"))
        server.listen(1)
        report = copy(src, tmp_path / "dst", jobs=1)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected to it
    finally:
        server.close()
    # Recreated as a socket node, or reported as a failure: either way never read.
    if report.failures:
        assert [f.path for f in report.failures] == [str(src / "sock")]
        assert report.exit_code == 1
        assert not os.path.lexists(tmp_path / "dst" / "sock")
    else:
        assert stat.S_ISSOCK(os.lstat(tmp_path / "dst" / "sock").st_mode)
    assert (tmp_path / "dst" / "file.txt").read_bytes() == b"data"


def test_empty_directory_and_empty_file_as_source(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write(tmp_path / "zero", b"", 0o600)
    stamp_times(tmp_path / "empty")
    stamp_times(tmp_path / "zero")
    assert copy(tmp_path / "empty", tmp_path / "d", jobs=2).exit_code == 0
    assert copy(tmp_path / "zero", tmp_path / "z", jobs=2).exit_code == 0
    assert_same_tree(tmp_path / "empty", tmp_path / "d")
    assert_same_tree(tmp_path / "zero", tmp_path / "z")
    assert os.listdir(tmp_path / "d") == []


@pytest.mark.skipif(not IS_ROOT, reason="needs root: chown to other owners")
@pytest.mark.parametrize("slow", [False, True])
@pytest.mark.parametrize("where", ["existing setgid DST", "new DST under a setgid directory", "plain"])
def test_directory_owners_where_chown_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 slow: bool, where: str) -> None:
    """Directories this run makes are not chown'ed when they already have the source's owner
    and group (pcopy.dirs: Directories._known_owners): a set-group-ID directory above them
    gives them its group, so there they must be, and every directory ends with SRC's ids."""
    if slow:  # the threaded, level-by-level finish that slow storage gets
        monkeypatch.setattr("pcopy.runner.storage_options", lambda src, dst, **_: {"slow_dst": True, "read_threads": 0})
    src = tmp_path / "src"
    write(src / "mine" / "deeper" / "f", b"x")  # root's own ids: chown skippable unless setgid
    write(src / "theirs" / "g", b"y")
    os.chown(src / "theirs", 1234, 5678)
    os.chown(src / "mine" / "deeper", 0, 4242)
    os.chmod(src, 0o755)
    holder = tmp_path / "holder"
    holder.mkdir()
    os.chown(holder, 0, 777)
    os.chmod(holder, 0o2775)
    dst = holder / "dst"
    if where == "existing setgid DST":
        dst.mkdir()
        os.chmod(dst, 0o2775)  # (inherits group 777 from holder)
    elif where == "plain":
        os.chmod(holder, 0o755)
    report = copy(src, dst, jobs=2)
    assert report.exit_code == 0, report.failures
    for rel in ("", "mine", "mine/deeper", "theirs"):
        want, got = os.lstat(src / rel), os.lstat(dst / rel)
        assert (got.st_uid, got.st_gid) == (want.st_uid, want.st_gid), rel
        assert stat.S_IMODE(got.st_mode) == stat.S_IMODE(want.st_mode), rel
