"""The CLI through typer's test runner: options, usage errors, output formats and exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pcopy import __version__
from pcopy.cli import app

runner = CliRunner()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(os.urandom(50_000))
    return src


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_version_and_help() -> None:
    code, out, _ = invoke("--version")
    assert (code, out.strip()) == (0, f"pcopy {__version__}")
    code, out, _ = invoke("--help")
    assert code == 0
    for option in ("--jobs", "--chunk-size", "--buffer-size", "--dereference", "--progress", "--json", "--quiet"):
        assert option in out


def test_copy_prints_summary_and_exits_0(tree: Path, tmp_path: Path) -> None:
    code, out, err = invoke(str(tree), str(tmp_path / "dst"), "-j", "2", "--no-progress")
    assert code == 0, err
    assert out.startswith("pcopy: 2 files, 2 dirs") and "failed 0" in out
    assert (tmp_path / "dst" / "sub" / "b.bin").read_bytes() == (tree / "sub" / "b.bin").read_bytes()


def test_json_report(tree: Path, tmp_path: Path) -> None:
    code, out, _ = invoke(str(tree), str(tmp_path / "dst"), "--json", "-j", "1")
    report = json.loads(out)
    assert code == 0
    assert (report["files"], report["dirs"], report["bytes"], report["failed"]) == (2, 2, 50_005, 0)
    assert report["failures"] == [] and report["exit_code"] == 0
    code, out, _ = invoke(str(tree), str(tmp_path / "dst"), "--json", "-j", "1")
    assert (json.loads(out)["skipped"], json.loads(out)["files"]) == (2, 0)


def test_quiet_prints_nothing_on_success(tree: Path, tmp_path: Path) -> None:
    code, out, err = invoke(str(tree), str(tmp_path / "dst"), "-q")
    assert (code, out, err) == (0, "", "")


def test_teaching_loop_option(tree: Path, tmp_path: Path) -> None:
    code, _, err = invoke(str(tree), str(tmp_path / "dst"), "--buffer-size", "1024", "-j", "3", "--chunk-size", "8K")
    assert code == 0, err
    assert (tmp_path / "dst" / "sub" / "b.bin").read_bytes() == (tree / "sub" / "b.bin").read_bytes()


@pytest.mark.parametrize("args", [
    ["-j", "0"], ["--chunk-size", "lots"], ["--chunk-size", "0"], ["--buffer-size", "1.5"], ["--method", "magic"],
    ["--bogus-option"], ["--start-method", "teleport"],
])
def test_usage_errors_exit_2(tree: Path, tmp_path: Path, args: list[str]) -> None:
    code, _, _ = invoke(str(tree), str(tmp_path / "dst"), *args)
    assert code == 2
    assert not (tmp_path / "dst").exists()


def test_missing_arguments_exit_2() -> None:
    assert invoke()[0] == 2
    assert invoke("only-src")[0] == 2


def test_refusal_is_one_line_and_exit_2(tree: Path, tmp_path: Path) -> None:
    code, out, err = invoke(str(tmp_path / "missing"), str(tmp_path / "dst"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "does not exist" in err and "Traceback" not in err
    code, _, err = invoke(str(tree), str(tree / "sub" / "inside"))
    assert code == 2 and "inside" in err
    assert not (tree / "sub" / "inside").exists()


def test_progress_forced_on_draws_a_bar(tree: Path, tmp_path: Path) -> None:
    code, _, err = invoke(str(tree), str(tmp_path / "dst"), "--progress", "-j", "2")
    assert code == 0
    assert "pcopy:" in err and "100%" in err and "2 files" in err
