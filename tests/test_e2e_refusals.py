"""Refused input: exit 2, one line on stderr naming the problem, and nothing written anywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Nobody, RunPcopy
from treeutil import assert_same_tree, build_sample_tree, fs, snapshot, stamp_times, write

import pcopy


def state(root: Path) -> dict[bytes, tuple[object, ...]]:
    """Everything a write would change (not atime, which reading alone moves)."""
    return {rel: (n.kind, n.mode, n.size, n.digest, n.target, n.mtime_ns, n.ino)
            for rel, n in snapshot(root).items()}


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """tmp_path with a small tree src/, a file f and a few aliases of both."""
    build_sample_tree(tmp_path / "src")
    (tmp_path / "src" / "sub").mkdir()
    stamp_times(tmp_path / "src")
    write(tmp_path / "f.txt", b"a file\n")
    write(tmp_path / "d" / "g.txt", b"another file\n")
    write(tmp_path / "existing_file", b"do not touch\n")
    os.link(tmp_path / "f.txt", tmp_path / "f_hard")
    os.symlink("f.txt", tmp_path / "f_link")
    os.symlink("src", tmp_path / "src_alias")
    os.symlink("src/sub", tmp_path / "sub_alias")
    os.symlink("nowhere", tmp_path / "dangling")
    return tmp_path


def assert_refused(run_pcopy: RunPcopy, area: Path, src: str | bytes, dst: str | bytes,
                   *words: str, cli: bool = True) -> str:
    """Refused with exit 2, one line on stderr, and nothing under area changed. cli=False goes
    through the in-process API instead (RefusedError; the CLI prints its message as the line),
    which saves the ~0.3 s start-up of a subprocess for the many alias spellings."""
    before = state(area)
    if cli:
        run = run_pcopy(src, dst, cwd=area)
        assert run.returncode == 2, run
        assert run.stdout == "", run
        lines = run.stderr_lines
        assert len(lines) == 1 and lines[0].startswith("pcopy: "), run
        line = lines[0]
    else:
        cwd = os.getcwd()
        os.chdir(area)
        try:
            with pytest.raises(pcopy.RefusedError) as caught:
                pcopy.copy(os.fsdecode(src), os.fsdecode(dst), jobs=2)
        finally:
            os.chdir(cwd)
        line = str(caught.value)
        assert "\n" not in line
    for word in words:
        assert word in line, line
    assert state(area) == before, "a refused copy wrote something"
    return line


def api(*values: str) -> pytest.ParameterSet:
    """A refusal case checked through the API rather than a subprocess."""
    return pytest.param(*values, False, id="-".join(values) + "-api")


def test_missing_source(run_pcopy: RunPcopy, area: Path) -> None:
    line = assert_refused(run_pcopy, area, "nope", "new_dst", "nope")
    assert "exist" in line


def test_missing_source_with_a_newline_in_its_name(run_pcopy: RunPcopy, area: Path) -> None:
    line = assert_refused(run_pcopy, area, b"no\npe\xff", "new_dst")
    assert "no\\npe\\xff" in line


@pytest.mark.parametrize(("dst", "cli"), [("existing_file", True), api("f_link"), api("dangling")])
def test_directory_onto_non_directory(run_pcopy: RunPcopy, area: Path, dst: str, cli: bool) -> None:
    assert_refused(run_pcopy, area, "src", dst, dst, cli=cli)


@pytest.mark.parametrize(("src", "dst", "cli"), [
    ("src", "src", True),
    api("src", "src/"),
    api("./src/.", "src"),
    ("src", "src_alias", True),
    api("src_alias/", "src"),
])
def test_destination_equal_to_source(run_pcopy: RunPcopy, area: Path, src: str, dst: str,
                                     cli: bool) -> None:
    assert_refused(run_pcopy, area, src, dst, cli=cli)


@pytest.mark.parametrize(("src", "dst", "cli"), [
    ("src", "src/new", True),
    api("src", "src/sub/new/deeper"),
    api("src", "src/sub"),  # an existing directory inside
    ("src", "src_alias/new", True),
    api("src_alias", "src/new"),
    api("src", "sub_alias/new"),  # inside through a symlink that leads into SRC
    api("src/", "./src//a/x"),
])
def test_destination_inside_source(run_pcopy: RunPcopy, area: Path, src: str, dst: str,
                                   cli: bool) -> None:
    assert_refused(run_pcopy, area, src, dst, "inside", cli=cli)


@pytest.mark.parametrize(("src", "dst", "cli"), [
    ("f.txt", "f.txt", True),
    api("f.txt", "./f.txt"),
    ("f.txt", "f_hard", True),
    api("f_hard", "f.txt"),
    ("f.txt", "f_link", True),
    api("f_link", "f.txt"),
    api("d/g.txt", "d"),  # DST is a directory: DST/<name of SRC> is SRC itself
    api("d/g.txt", "d/"),
])
def test_same_file(run_pcopy: RunPcopy, area: Path, src: str, dst: str, cli: bool) -> None:
    assert_refused(run_pcopy, area, src, dst, "same", cli=cli)


def test_api_raises_refused_error(area: Path) -> None:
    before = state(area)
    with pytest.raises(pcopy.RefusedError, match="inside"):
        pcopy.copy(str(area / "src"), str(area / "src" / "sub" / "x"), jobs=2)
    with pytest.raises(pcopy.RefusedError):
        pcopy.copy(str(area / "missing"), str(area / "x"))
    assert state(area) == before


def test_sibling_whose_name_starts_like_source_is_not_inside(run_pcopy: RunPcopy, area: Path) -> None:
    run = run_pcopy("src", "src.new", cwd=area)
    assert run.returncode == 0, run
    assert_same_tree(area / "src", area / "src.new")
    for dst in ("src2", "srcsrc"):
        assert pcopy.copy(str(area / "src"), str(area / dst), jobs=1).exit_code == 0
        assert_same_tree(area / "src", area / dst)


def test_copy_to_a_sibling_name_inside_source_is_fine(run_pcopy: RunPcopy, area: Path) -> None:
    """src/a -> src/a.new is inside src, but not inside src/a."""
    run = run_pcopy("src/a", "src/a.new", cwd=area)
    assert run.returncode == 0, run
    assert_same_tree(area / "src" / "a", area / "src" / "a.new")


# The CLI tests cover each bad option; here only that a usage error writes nothing.
@pytest.mark.parametrize("args", [["-j", "0"], ["--chunk-size", "12Q"]], ids=lambda a: " ".join(a))
def test_bad_usage_exit_2_and_writes_nothing(run_pcopy: RunPcopy, area: Path, args: list[str]) -> None:
    before = state(area)
    run = run_pcopy("src", "new_dst", *args, cwd=area)
    assert run.returncode == 2, run
    assert run.stderr.strip() != ""
    assert state(area) == before


def test_missing_destination_argument_is_usage_error(run_pcopy: RunPcopy, area: Path) -> None:
    before = state(area)
    run = run_pcopy("src", cwd=area)
    assert run.returncode == 2, run
    assert state(area) == before


# -- unreadable SRC: root reads everything, so this runs as uid 65534 --------------------------

@pytest.mark.parametrize("kind", ["dir", "file"])
def test_unreadable_source_refused(nobody: Nobody, world_tmp: Path, kind: str) -> None:
    src = world_tmp / "secret"
    if kind == "dir":
        write(src / "inside.txt", b"secret")
        os.chmod(src, 0o700)  # root's, so uid 65534 cannot list it
    else:
        write(src, b"secret", 0o600)
    out = world_tmp / "out"
    out.mkdir()
    nobody.own(out)
    run = nobody.run(fs(src), fs(out / "copy"), cwd=world_tmp)
    assert run.returncode == 2, run
    assert run.stdout == ""
    assert len(run.stderr_lines) == 1 and "secret" in run.stderr, run
    assert os.listdir(out) == [], "a refused copy wrote something"
