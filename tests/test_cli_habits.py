"""CLI habits (issue 10): -V, rsync's -a/-r, --no-owner/--no-group, shell completion, sizes with
fractions and errors that name their option, singular counts, the -j ceiling, DST errors, and
--itemize listing attribute-only updates on every copy path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import RunPcopy, pc
from treeutil import assert_same_tree, stamp_times, write

import pcopy
from pcopy.command import MAX_JOBS_PER_CPU
from pcopy.config import default_jobs, parse_size


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write(root / "a", b"alpha")
    write(root / "d" / "b", b"bravo" * 1000)
    os.symlink("a", root / "link")
    stamp_times(root)
    return root


def test_short_version_flag() -> None:
    assert pc("-V") == (0, f"pcopy {pcopy.__version__}\n", "")
    assert pc("--version")[1] == pc("-V")[1]


def test_rsync_archive_and_recursive_flags_change_nothing(src: Path, tmp_path: Path) -> None:
    code, out, _ = pc(src, tmp_path / "with", "-a", "-r", "-j", "1")
    assert code == 0 and out.startswith("pcopy: 3 files, 2 dirs")
    pc(src, tmp_path / "without", "-j", "1")
    assert_same_tree(tmp_path / "without", tmp_path / "with")
    assert_same_tree(src, tmp_path / "with")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
@pytest.mark.parametrize(("flags", "expect"), [
    ([], (1234, 5678)), (["--no-owner"], (0, 5678)), (["--no-group"], (1234, 0)),
    (["--no-owner", "--no-group"], (0, 0))])
def test_no_owner_no_group_as_root(src: Path, tmp_path: Path, flags: list[str], expect: tuple[int, int]) -> None:
    os.chown(src / "a", 1234, 5678)
    dst = tmp_path / "dst"
    assert pc(src, dst, "-j", "1", *flags)[0] == 0
    st = os.lstat(dst / "a")
    assert (st.st_uid, st.st_gid) == expect


@pytest.mark.parametrize(("text", "expect"), [
    ("1.5G", 3 << 29), ("0.5K", 512), ("1.25M", 1310720), (".5M", 1 << 19), ("64K", 65536),
    ("1048576", 1048576), ("2KiB", 2048), ("1.5 g", 3 << 29)])
def test_sizes_with_fractions(text: str, expect: int) -> None:
    assert parse_size(text) == expect


def test_fractional_chunk_size_is_accepted(src: Path, tmp_path: Path) -> None:
    code, out, _ = pc(src, tmp_path / "dst", "--chunk-size", "1.5K", "-j", "2")
    assert code == 0, out
    assert_same_tree(src, tmp_path / "dst")


@pytest.mark.parametrize("option", ["--chunk-size", "--buffer-size"])
@pytest.mark.parametrize("value", ["1.5", "lots", "0"])
def test_bad_size_names_its_option(src: Path, tmp_path: Path, option: str, value: str) -> None:
    code, _, err = pc(src, tmp_path / "dst", option, value)
    assert code == 2 and f"'{option}'" in err, err
    assert not (tmp_path / "dst").exists()


def test_counts_are_singular_for_one(tmp_path: Path) -> None:
    write(tmp_path / "one" / "f", b"x")
    code, out, _ = pc(tmp_path / "one", tmp_path / "dst", "-j", "1")
    assert code == 0 and out.startswith("pcopy: 1 file, 1 dir, 1 B in "), out


def test_jobs_are_capped_per_cpu(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    import pcopy.runner

    real = pcopy.runner.run_copy

    def spy(target: Any, config: Any, progress: Any = None) -> Any:
        seen.append(config.jobs)
        return real(target, config, progress)

    monkeypatch.setattr(pcopy.runner, "run_copy", spy)
    assert pc(src, tmp_path / "dst", "-j", "1000")[0] == 0
    assert pc(src, tmp_path / "dst2", "-j", "2")[0] == 0
    assert seen == [MAX_JOBS_PER_CPU * default_jobs(), min(2, MAX_JOBS_PER_CPU * default_jobs())]
    assert "4 per CPU" in " ".join(pc("--help")[1].split())


def test_bash_completion_answers_options() -> None:
    env = {**os.environ, "_PCOPY_COMPLETE": "complete_bash", "COMP_WORDS": "pcopy --no-ow", "COMP_CWORD": "1"}
    proc = subprocess.run([sys.executable, "-m", "pcopy"], env=env, capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout.split()) == (0, ["--no-owner"]), proc.stderr


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o default -F _pcopy_completion pcopy"),
                                               ("zsh", "#compdef pcopy"), ("fish", "complete --command pcopy")])
def test_completion_scripts_for_each_shell(shell: str, marker: str) -> None:
    env = {**os.environ, "_PCOPY_COMPLETE": f"source_{shell}"}
    proc = subprocess.run([sys.executable, "-m", "pcopy"], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and marker in proc.stdout, proc


def test_install_completion_for_bash(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is missing")
    pcopy_cmd = f"{sys.executable} -m pcopy --install-completion; true"  # `; true`: bash stays the parent
    proc = subprocess.run(["bash", "-c", pcopy_cmd], env={**os.environ, "HOME": str(tmp_path)},
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc
    script = tmp_path / ".bash_completions" / "pcopy.sh"
    assert "_pcopy_completion" in script.read_text()
    assert str(script) in (tmp_path / ".bashrc").read_text()


def test_dst_under_a_file_is_refused_naming_dst(run_pcopy: RunPcopy, src: Path, tmp_path: Path) -> None:
    write(tmp_path / "plain", b"x")
    run = run_pcopy(src, tmp_path / "plain" / "dst")
    assert run.returncode == 2, run
    assert run.stderr == f"pcopy: cannot create destination {tmp_path / 'plain' / 'dst'}: Not a directory\n"


# ---------------------------------------------------------------- --itemize: attribute-only updates


@pytest.mark.parametrize("args", [["-j", "1"], ["-j", "2"], ["-j", "2", "--chunk-size", "1K"]],
                         ids=["inline", "pool", "split"])
def test_itemize_lists_a_chmod_as_attributes(src: Path, tmp_path: Path, args: list[str]) -> None:
    dst = tmp_path / "dst"
    pc(src, dst, *args)
    os.chmod(src / "d" / "b", 0o600)  # 5000 bytes: a split file with --chunk-size 1K
    code, out, _ = pc(src, dst, *args, "-i")
    assert code == 0
    lines = out.splitlines()
    assert lines[:-1] == ["attributes d/b"] and "skipped 3" in lines[-1] and "attributes set 1" in lines[-1]
    assert os.stat(dst / "d" / "b").st_mode & 0o777 == 0o600
    assert pc(src, dst, *args, "-i")[1].splitlines()[:-1] == []  # done: nothing left to list


def test_default_path_counts_attribute_updates(src: Path, tmp_path: Path) -> None:
    """Without --itemize the lean per-file path runs; it counts the chmod without recording it."""
    dst = tmp_path / "dst"
    pc(src, dst, "-j", "1")
    os.chmod(src / "a", 0o640)
    report = pcopy.copy(src, dst, jobs=1)
    assert (report.files, report.skipped, report.attributes, report.changes) == (0, 3, 1, [])
    assert os.stat(dst / "a").st_mode & 0o777 == 0o640


def test_checksum_lists_touched_times_as_attributes(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    pc(src, dst, "-j", "1")
    st = os.stat(src / "a")
    os.utime(src / "a", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    dry = pc(src, dst, "-j", "1", "-i", "-c", "-n")[1].splitlines()
    assert dry[:-1] == ["attributes a"]
    assert os.stat(dst / "a").st_mtime_ns == st.st_mtime_ns  # the dry run changed nothing
    assert pc(src, dst, "-j", "1", "-i", "-c")[1].splitlines()[:-1] == ["attributes a"]
    assert os.stat(dst / "a").st_mtime_ns == st.st_mtime_ns + 10**9
