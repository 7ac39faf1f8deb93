"""A new DST is written in its stage (.NAME.pcopy-new beside it) and renamed into place at the
end (pcopy.stage): what is visible meanwhile, what a later run adopts, and where no stage is used.
Interruptions and killed workers in a stage: tests/test_faults.py and tests/storm.py."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import pytest

import pcopy.runner
import pcopy.stage
import pcopy.worker
from pcopy.config import Config
from pcopy.runner import run_copy
from pcopy.target import locate


def make_src(root: Path, files: int = 12) -> Path:
    for i in range(files):
        path = root / f"d{i % 3}" / f"f{i:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(50 + i))
    (root / "top.txt").write_text("top")
    return root


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stage_of(dst: Path) -> Path:
    return Path(pcopy.stage.stage_path(str(dst)))


def copy(src: Path, dst: Path, **config: Any) -> pcopy.runner.CopyReport:
    return run_copy(locate(str(src), str(dst)), Config(**{"jobs": 1, **config}))


def count_temps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every temporary name a file copy creates (jobs=1: in this process)."""
    made: list[str] = []
    real = pcopy.worker.create_temp

    def counted(dst: str, mode: int, dir_fd: int | None = None, shown: str | None = None) -> tuple[int, str]:
        made.append(dst)
        return real(dst, mode, dir_fd, shown)

    monkeypatch.setattr(pcopy.worker, "create_temp", counted)
    return made


def test_a_new_dst_appears_whole_at_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = make_src(tmp_path / "src"), tmp_path / "out" / "dst"
    seen: dict[str, Any] = {}
    real_publish = pcopy.runner.publish

    def look_then_publish(stage: pcopy.stage.Stage) -> None:
        seen["dst_exists"] = dst.exists()
        seen["staged"] = tree_bytes(Path(stage.path))
        seen["mode"] = os.stat(stage.path).st_mode & 0o777
        real_publish(stage)

    monkeypatch.setattr(pcopy.runner, "publish", look_then_publish)
    temps = count_temps(monkeypatch)
    report = copy(src, dst)
    assert (report.files, report.failed) == (13, 0)
    # Until the end nothing is at DST; the stage then holds the whole copy, its root's metadata
    # already applied; afterwards DST holds it and the stage is gone.
    assert seen["dst_exists"] is False
    assert seen["staged"] == tree_bytes(src)
    assert seen["mode"] == os.stat(src).st_mode & 0o777
    assert tree_bytes(dst) == tree_bytes(src)
    assert os.stat(dst).st_mtime_ns == os.stat(src).st_mtime_ns
    assert sorted(os.listdir(dst.parent)) == ["dst"]
    assert temps == []  # every file created under its final name, none renamed


def test_into_an_existing_dst_every_file_goes_through_a_temporary_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = make_src(tmp_path / "src"), tmp_path / "dst"
    dst.mkdir()
    temps = count_temps(monkeypatch)
    copy(src, dst)
    assert len(temps) == 13
    assert tree_bytes(dst) == tree_bytes(src) and not stage_of(dst).exists()


def test_a_name_already_in_the_stage_is_replaced_through_a_temporary_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job sent again after its worker died finds the names that worker created (perhaps
    half-written): each is replaced, as in an existing directory."""
    src, dst = make_src(tmp_path / "src"), tmp_path / "dst"
    real_create = pcopy.worker._Lean._create

    def dead_worker_was_here(self: Any, name: str, mode: int, dir_fd: int | None, shown: str) -> Any:
        if name.endswith("f04.txt"):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=dir_fd)
            os.write(fd, b"half")
            os.close(fd)
        return real_create(self, name, mode, dir_fd, shown)

    monkeypatch.setattr(pcopy.worker._Lean, "_create", dead_worker_was_here)
    temps = count_temps(monkeypatch)
    report = copy(src, dst)
    assert (report.files, report.failed) == (13, 0)
    assert [os.path.basename(t) for t in temps] == ["f04.txt"]
    assert tree_bytes(dst) == tree_bytes(src)


def test_a_stage_left_by_an_earlier_run_is_finished_and_published(tmp_path: Path) -> None:
    src, dst = make_src(tmp_path / "src"), tmp_path / "dst"
    stage = stage_of(dst)
    copy(src, stage)  # (what a killed run had done), then damage it as a death would
    (stage / "d1" / "f01.txt").write_bytes(b"cut")  # short
    same_size = stage / "d2" / "f02.txt"
    same_size.write_bytes(b"x" * same_size.stat().st_size)  # all bytes written, times not yet set
    (stage / "d0" / "f00.txt").unlink()  # never started
    report = copy(src, dst)
    assert (report.files, report.skipped, report.failed) == (3, 10, 0)
    assert tree_bytes(dst) == tree_bytes(src)
    assert not stage.exists()


def test_no_stage_where_its_name_is_taken_or_held(tmp_path: Path) -> None:
    src, dst = make_src(tmp_path / "src"), tmp_path / "dst"
    stage_of(dst).write_text("a user's file that happens to have this name")
    copy(src, dst)
    assert tree_bytes(dst) == tree_bytes(src)
    assert stage_of(dst).read_text() == "a user's file that happens to have this name"

    # Another run holds the stage (flock): this one writes into DST itself and leaves it be.
    other = tmp_path / "other"
    stage_of(other).mkdir()
    fd = os.open(stage_of(other), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        copy(src, other)
    finally:
        os.close(fd)
    assert tree_bytes(other) == tree_bytes(src)
    assert os.listdir(stage_of(other)) == []


def test_a_source_that_is_the_stage_is_copied_not_moved(tmp_path: Path) -> None:
    src = make_src(tmp_path / ".dst.pcopy-new")
    before = tree_bytes(src)
    copy(src, tmp_path / "dst")
    assert tree_bytes(src) == before and tree_bytes(tmp_path / "dst") == before


def test_dst_appearing_during_the_copy_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = make_src(tmp_path / "src"), tmp_path / "dst"
    real_run = pcopy.runner.CopyRun.run

    def someone_else_makes_dst(self: pcopy.runner.CopyRun, feed: Any) -> Any:
        report = real_run(self, feed)
        dst.mkdir()
        (dst / "theirs.txt").write_text("not pcopy's")
        return report

    monkeypatch.setattr(pcopy.runner.CopyRun, "run", someone_else_makes_dst)
    report = copy(src, dst)
    assert [(f.path, f.step) for f in report.failures] == [(str(stage_of(dst)), "rename")]
    assert "kept under the hidden name" in report.failures[0].message
    assert report.exit_code == 1
    assert tree_bytes(dst) == {"theirs.txt": b"not pcopy's"}
    assert tree_bytes(stage_of(dst)) == tree_bytes(src)


@pytest.mark.parametrize("option", ["delete", "dry_run", "partial", "backup"])
def test_options_that_work_on_dst_as_it_is_use_no_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        option: str) -> None:
    src, dst = make_src(tmp_path / "src"), tmp_path / "dst"
    monkeypatch.setattr(pcopy.runner, "publish", lambda stage: pytest.fail("staged"))
    copy(src, dst, **{option: True})
    assert not stage_of(dst).exists()
    assert dst.exists() != (option == "dry_run")


def test_reported_paths_name_dst_not_the_stage(tmp_path: Path) -> None:
    src, dst = make_src(tmp_path / "src"), tmp_path / "dst"
    report = copy(src, dst, record_changes=True)
    assert sorted(path for _, path in report.changes) == sorted(
        str(dst / rel) for rel in tree_bytes(src))
