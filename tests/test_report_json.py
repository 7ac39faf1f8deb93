"""The JSON report and the event stream, from real runs of the CLI (subprocesses), validated
against the documented schema (pcopy/report.schema.json, docs/json.md): a success, failures, a
refusal, a usage error, a dry run, --json-lines; and output that cannot be written."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Nobody, Run, RunPcopy
from treeutil import assert_same_tree, stamp_times, write

from pcopy.jobs import STEP_OTHER, CopyFailure

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = json.loads((Path(__file__).parents[1] / "pcopy" / "report.schema.json").read_text())
ODD = b"odd\nname\xff.txt"  # a newline and a byte that is not UTF-8


def validate(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())


def validate_event(event: dict[str, Any]) -> None:
    jsonschema.validate(event, {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/event"})


def exact_path(record: dict[str, Any]) -> bytes:
    """The rule docs/json.md gives for the exact bytes of a path."""
    if "path_b64" in record:
        return base64.b64decode(record["path_b64"])
    return str(record["path"]).encode("utf-8")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write(root / "a.txt", b"alpha")
    write(root / "d" / "b.txt", b"bravo" * 100)
    write(os.path.join(os.fsencode(root), b"d", ODD), b"odd")
    os.symlink("a.txt", root / "link")
    stamp_times(root)
    return root


def test_success_report_validates_and_names_every_change(run_pcopy: RunPcopy, src: Path, tmp_path: Path) -> None:
    run = run_pcopy("src", "dst/", "--json", "-j", "2", cwd=tmp_path)
    assert run.returncode == 0, run
    doc = run.json()
    validate(doc)
    assert (doc["src"], doc["dst"]) == ("src", "dst/")  # as given
    assert doc["pcopy_version"] == __import__("pcopy").__version__
    started, finished = (datetime.fromisoformat(doc[k]) for k in ("started", "finished"))
    assert started <= finished and started.utcoffset() is not None
    assert sorted((c["action"], exact_path(c)) for c in doc["changes"]) == [
        ("copied", b"a.txt"), ("copied", b"d/b.txt"), ("copied", b"d/" + ODD), ("copied", b"link")]
    assert doc["files"] == 4 and doc["error"] is None and doc["failures"] == []
    assert_same_tree(src, tmp_path / "dst")


def test_failures_carry_step_errno_and_relative_path(run_pcopy: RunPcopy, src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    (dst / "a.txt").mkdir(parents=True)  # a directory where SRC has a file: compare
    (dst / "a.txt" / "keep").write_text("keep")
    (dst / "d").write_text("a file where SRC has a directory")  # mkdir
    run = run_pcopy(src, dst, "--json", "-j", "1")
    assert run.returncode == 1, run
    doc = run.json()
    validate(doc)
    assert sorted((f["path"], f["step"]) for f in doc["failures"]) == [("a.txt", "compare"), ("d", "mkdir")]
    assert {f["error"] for f in doc["failures"]} == {"EISDIR", None}
    assert doc["failed"] == 2 and doc["exit_code"] == 1


def test_unreadable_file_fails_at_open(nobody: Nobody, world_tmp: Path) -> None:
    src = world_tmp / "src"
    write(src / "ok.txt", b"ok", 0o644)
    write(os.path.join(os.fsencode(src), ODD), b"secret", 0o600)
    out = world_tmp / "out"
    out.mkdir()
    nobody.own(out)
    run = nobody.run(src, out / "dst", "--json", cwd=world_tmp)
    assert run.returncode == 1, run
    doc = run.json()
    validate(doc)
    [failure] = doc["failures"]
    assert (exact_path(failure), failure["step"], failure["error"]) == (ODD, "open", "EACCES")


def test_unwritable_destination_is_refused_with_eacces(nobody: Nobody, world_tmp: Path) -> None:
    write(world_tmp / "src" / "f", b"f", 0o644)
    (world_tmp / "locked").mkdir(mode=0o755)  # root's: uid 65534 cannot create in it
    run = nobody.run(world_tmp / "src", world_tmp / "locked" / "dst", "--json", cwd=world_tmp)
    assert run.returncode == 2, run
    doc = run.json()
    validate(doc)
    assert doc["error"]["error"] == "EACCES" and "locked/dst" in run.stderr
    assert not (world_tmp / "locked" / "dst").exists()


@pytest.mark.parametrize("case", ["missing-src", "into-itself", "proc"])
def test_refused_run_prints_one_json_object(run_pcopy: RunPcopy, src: Path, tmp_path: Path, case: str) -> None:
    args = {"missing-src": ["nope", "dst"], "into-itself": ["src", "src/inner"],
            "proc": ["src", "/proc/pcopy-cannot-create"]}[case]
    run = run_pcopy(*args, "--json", cwd=tmp_path)
    assert run.returncode == 2, run
    doc = run.json()  # exactly one object on stdout
    validate(doc)
    assert (doc["src"], doc["dst"], doc["exit_code"]) == (args[0], args[1], 2)
    assert doc["error"]["message"] and len(run.stderr_lines) == 1
    assert doc["error"]["message"] in run.stderr
    if case == "proc":  # procfs refuses mkdir with ENOENT: DST is named, not SRC
        assert doc["error"]["error"] == "ENOENT" and "/proc/pcopy-cannot-create" in run.stderr


@contextlib.contextmanager
def read_only_mount(path: Path) -> Iterator[None]:
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {proc.stderr!r}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_read_only_destination_says_erofs(run_pcopy: RunPcopy, src: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    with read_only_mount(ro):
        for dst in (ro / "dst", ro / "deeper" / "dst", ro / "file.txt"):
            run = run_pcopy(src if dst.name == "dst" else src / "a.txt", dst, "--json")
            assert run.returncode == 2, run
            doc = run.json()
            validate(doc)
            assert (doc["error"]["errno"], doc["error"]["error"]) == (30, "EROFS"), doc
            assert run.stderr == f"pcopy: cannot create destination {dst}: Read-only file system\n"
        # An existing DST is merged into, not refused: an up-to-date copy there needs no write.
        run = run_pcopy(src, ro, "--json")
        assert run.returncode == 1 and {f["error"] for f in run.json()["failures"]} == {"EROFS"}, run


@pytest.mark.parametrize(("args", "says"), [
    (["SRC", "DST", "--json", "--chunk-size", "lots"], "--chunk-size"),  # found while running
    (["SRC", "DST", "--bogus", "--json"], "--bogus"),  # found while parsing
    (["--json"], "Missing argument"),
    (["SRC", "--json-lines"], "Missing argument")])
def test_usage_error_with_json_is_one_json_object(run_pcopy: RunPcopy, src: Path, tmp_path: Path,
                                                   args: list[str], says: str) -> None:
    argv = [str(src) if a == "SRC" else str(tmp_path / "dst") if a == "DST" else a for a in args]
    run = run_pcopy(*argv)
    assert run.returncode == 2, run
    [line] = [run.stdout] if "--json" in args else run.stdout.splitlines()
    doc = json.loads(line)
    if "--json" in args:
        validate(doc)
    else:
        validate_event(doc)
    assert says in doc["error"]["message"] and says in run.stderr
    assert not (tmp_path / "dst").exists()


def test_dry_run_report_validates_and_lists_what_a_real_run_does(run_pcopy: RunPcopy, src: Path,
                                                                tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    run_pcopy(src, dst, "-q")
    write(src / "a.txt", b"ALPHA!")
    write(src / "new", b"new")
    os.chmod(src / "d" / "b.txt", 0o600)  # only the mode: an attributes change
    dry = run_pcopy(src, dst, "--json", "-n")
    assert dry.returncode == 0, dry
    validate(dry.json())
    assert dry.json()["dry_run"] is True
    assert os.stat(dst / "d" / "b.txt").st_mode & 0o777 == 0o644  # nothing changed
    real = run_pcopy(src, dst, "--json")
    validate(real.json())

    def changes(run: Run) -> list[tuple[str, str]]:
        return sorted((c["action"], c["path"]) for c in run.json()["changes"])

    assert changes(dry) == changes(real) == [("attributes", "d/b.txt"), ("copied", "new"), ("replaced", "a.txt")]
    assert (real.json()["attributes"], real.json()["skipped"]) == (1, 3)


def test_json_lines_events_then_stats(run_pcopy: RunPcopy, src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    (dst / "d").mkdir(parents=True)
    (dst / "d" / "b.txt").mkdir()  # one failure
    write(dst / "extra", b"x")
    run = run_pcopy(src, dst, "--json-lines", "--delete-anyway", "-j", "1")
    assert run.returncode == 1, run
    events = [json.loads(line) for line in run.stdout.splitlines()]
    for event in events:
        validate_event(event)
    assert [e["event"] for e in events].count("stats") == 1 and events[-1]["event"] == "stats"
    kinds = sorted((e["event"], exact_path(e)) for e in events[:-1])
    assert kinds == [("copied", b"a.txt"), ("copied", b"d/" + ODD), ("copied", b"link"),
                     ("deleted", b"extra"), ("failed", b"d/b.txt")]
    assert (events[-1]["files"], events[-1]["failed"], events[-1]["deleted"]) == (3, 1, 1)


def test_json_lines_refusal_is_one_stats_line(run_pcopy: RunPcopy, tmp_path: Path) -> None:
    run = run_pcopy(tmp_path / "nope", tmp_path / "dst", "--json-lines")
    assert run.returncode == 2
    [line] = run.stdout.splitlines()
    event = json.loads(line)
    validate_event(event)
    assert event["event"] == "stats" and event["error"]["message"]


@pytest.mark.parametrize("args", [["--json"], ["--json-lines"], [], ["-i"]],
                         ids=["json", "lines", "summary", "itemize"])
def test_stdout_that_cannot_be_written_is_one_line_not_a_traceback(src: Path, tmp_path: Path,
                                                                   args: list[str]) -> None:
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "pcopy", str(src), str(tmp_path / "dst"), *args],
                              stdout=full, stderr=subprocess.PIPE, text=True, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == "pcopy: cannot write to standard output: No space left on device\n"
    assert_same_tree(src, tmp_path / "dst")  # the copy itself is whole


def test_failed_copy_keeps_its_exit_code_when_stdout_is_full(src: Path, tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "pcopy", str(tmp_path / "nope"), str(tmp_path / "dst"),
                               "--json"], stdout=full, stderr=subprocess.PIPE, text=True, check=False)
    assert proc.returncode == 2, proc.stderr  # refused: 2 whether or not the JSON could be written
    assert proc.stderr.splitlines() == [f"pcopy: source {tmp_path / 'nope'} does not exist",
                                        "pcopy: cannot write to standard output: No space left on device"]


def test_copy_failure_step_is_plain_data_with_a_default() -> None:
    old = CopyFailure("/x", 2, "No such file or directory")
    assert old.step == STEP_OTHER
    new = CopyFailure.of("/x", FileNotFoundError(2, "No such file or directory"), "open")
    assert (new.step, new.errno) == ("open", 2)
    assert pickle.loads(pickle.dumps(new)) == new
    tagged = OSError(13, "Permission denied")
    tagged.pcopy_step = "rename"  # type: ignore[attr-defined]  # set where it was raised
    assert CopyFailure.of("/x", tagged, "copy").step == "rename"


def test_an_interrupted_run_prints_one_object_saying_so(tmp_path: Path) -> None:
    """SIGINT mid-copy with --json: exit 130 and one valid object whose error says interrupted."""
    import signal
    import time

    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(1 << 20) * 96)
    proc = subprocess.Popen([sys.executable, "-m", "pcopy", str(src), str(tmp_path / "dst"), "--json",
                             "--buffer-size", "1024", "-j", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    # (A new DST is written in its stage, .dst.pcopy-new beside it: pcopy.stage.)
    while not any(".pcopy-" in n for _, _, f in os.walk(tmp_path) for n in f):
        assert time.monotonic() < deadline and proc.poll() is None, "the copy never got going"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    validate(doc)
    assert doc["exit_code"] == 130 and "interrupted by SIGINT" in doc["error"]["message"]
