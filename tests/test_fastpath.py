"""The plain command line run without typer (pcopy.fastpath): what it takes, what it leaves to
typer, and that what it runs is exactly what the typer command runs for the same arguments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import pcopy.cli
import pcopy.command
from pcopy import fastpath
from pcopy.fastpath import Plain

ACCEPTED = [
    (["s", "d"], Plain("s", "d", None, False)),
    (["-j", "3", "s", "d"], Plain("s", "d", 3, False)),
    (["s", "d", "-j3"], Plain("s", "d", 3, False)),
    (["s", "--jobs", "2", "d"], Plain("s", "d", 2, False)),
    (["--jobs=1", "s", "d"], Plain("s", "d", 1, False)),
    (["s", "d", "-j", "999"], Plain("s", "d", 999, False)),  # capped per CPU, as typer's path does
    (["-q", "s", "d"], Plain("s", "d", None, True)),
    (["s", "d", "--quiet", "-j", "2"], Plain("s", "d", 2, True)),
    (["s", "d", "--no-progress", "-q"], Plain("s", "d", None, True, False)),
    (["--progress", "s", "d"], Plain("s", "d", None, False, True)),
    (["s", "d", "--progress", "-q", "--jobs", "4"], Plain("s", "d", 4, True, True)),
    (["dir with spaces", "d\udcff"], Plain("dir with spaces", "d\udcff", None, False)),
]

DECLINED = [
    [], ["s"], ["s", "d", "e"],                                # operands typer counts and reports
    ["-j", "0", "s", "d"], ["-j", "+3", "s", "d"], ["-j", "٣", "s", "d"], ["-j", "3_0", "s", "d"],
    ["s", "d", "-j"], ["-j", "s", "d"], ["s", "d", "-j="], ["-j=2", "s", "d"],
    ["-j", "2", "-j", "3", "s", "d"], ["-q", "-q", "s", "d"], ["--progress", "--no-progress", "s", "d"],
    ["-qj2", "s", "d"], ["--jobs", "s", "d"], ["--job=2", "s", "d"],
    ["--", "s", "d"], ["-", "d"], ["s", "-d"], ["", "d"],
    ["--help"], ["-h"], ["-V"], ["s", "d", "--json"], ["s", "d", "-n"], ["s", "d", "--delete"],
    ["s", "d", "--verify"], ["s", "d", "-a"], ["s", "d", "--threads", "4"],
]


@pytest.mark.parametrize(("args", "plain"), ACCEPTED)
def test_plain_command_lines_are_recognised(args: list[str], plain: Plain) -> None:
    assert fastpath.parse(args) == plain


@pytest.mark.parametrize("args", DECLINED)
def test_everything_else_goes_to_typer(args: list[str]) -> None:
    assert fastpath.parse(args) is None


def test_windows_always_goes_to_typer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath.os, "name", "nt")  # click expands wildcards there
    assert fastpath.parse(["s", "d"]) is None


def _captured(monkeypatch: pytest.MonkeyPatch, target: Any) -> list[dict[str, Any]]:
    """Replace command.run where `target` looks it up; each call's arguments are recorded."""
    calls: list[dict[str, Any]] = []

    def run(src: str, dst: str, config: Any, show_bar: bool, output: Any, jobs_given: bool = True) -> int:
        calls.append({"src": src, "dst": dst, "config": config, "show_bar": show_bar,
                      "output": vars(output), "jobs_given": jobs_given})
        return 0

    monkeypatch.setattr(target, "run", run)
    return calls


@pytest.mark.parametrize(("args", "plain"), ACCEPTED)
def test_runs_what_the_typer_command_runs(args: list[str], plain: Plain, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same Config (every field), display and output choices: an option whose default
    differs from Config's, added to the typer command later, fails here."""
    typer_calls = _captured(monkeypatch, pcopy.cli)
    result = CliRunner().invoke(pcopy.cli.app, args)
    assert result.exit_code == 0, result.output
    plain_calls = _captured(monkeypatch, pcopy.command)
    assert fastpath.run(plain) == 0
    assert len(typer_calls) == len(plain_calls) == 1
    assert plain_calls[0] == typer_calls[0]


class _Terminal:
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("args", "bar"), [(["s", "d"], True), (["s", "d", "-q"], False),
                                           (["s", "d", "--no-progress"], False),
                                           (["s", "d", "-q", "--progress"], True)])
def test_bar_on_a_terminal(args: list[str], bar: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _captured(monkeypatch, pcopy.command)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    plain = fastpath.parse(args)
    assert plain is not None
    fastpath.run(plain)
    assert calls[0]["show_bar"] is bar


def _pcopy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # -X importtime: the modules the run imported, on stderr after pcopy's own lines.
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "pcopy", *args], cwd=cwd,
                          capture_output=True, text=True, check=False, timeout=60)


def _split(stderr: str) -> tuple[list[str], str]:
    lines = stderr.splitlines()
    return [line for line in lines if not line.startswith("import time:")], stderr


def test_the_console_command_skips_typer_and_copies_the_same(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(30):
        (src / "sub" / f"f{i}").write_bytes(os.urandom(i * 100))
    os.symlink("sub/f1", src / "link")
    plain = _pcopy("src", "plain", "-j", "2", cwd=tmp_path)
    typed = _pcopy("src", "typed", "-j", "2", "-a", cwd=tmp_path)  # -a: accepted, changes nothing
    assert plain.returncode == typed.returncode == 0, (plain.stderr, typed.stderr)
    assert " typer" not in plain.stderr  # the fast path really ran
    assert " typer" in typed.stderr
    # The same summary up to the timing.
    assert plain.stdout.split(" in ")[0] == typed.stdout.split(" in ")[0] == "pcopy: 31 files, 2 dirs, 42.5 KiB"
    for name in ("plain", "typed"):
        copy = tmp_path / name
        assert os.readlink(copy / "link") == "sub/f1"
        for i in range(30):
            assert (copy / "sub" / f"f{i}").read_bytes() == (src / "sub" / f"f{i}").read_bytes()


def test_refusals_are_the_same_line_and_code(tmp_path: Path) -> None:
    plain = _pcopy("missing", "dst", cwd=tmp_path)
    typed = _pcopy("missing", "dst", "-a", cwd=tmp_path)
    assert plain.returncode == typed.returncode == 2
    assert _split(plain.stderr)[0] == _split(typed.stderr)[0] == ["pcopy: source missing does not exist"]
    assert not (tmp_path / "dst").exists()
