"""pcopy.copytree behaves as shutil.copytree: return value, exceptions, messages, ignore and
copy_function calls, threads, interrupts, and the documented choices where shutil has bugs."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import pcopy.dropin as pct
from pcopy.dropin import copytree

REPO = Path(__file__).resolve().parent.parent


def make_src(root: Path) -> Path:
    src = root / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha")
    (src / "sub" / "b.bin").write_bytes(os.urandom(5000))
    (src / "sub" / "deep" / "c").write_bytes(b"")
    os.symlink("a.txt", src / "link")
    return src


def listing(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", p.stat().st_mode, p.stat().st_mtime_ns)
            else:
                out[rel] = ("file", p.stat().st_mode, p.stat().st_mtime_ns, p.read_bytes())
    return out


def test_returns_dst_as_given(tmp_path: Path) -> None:
    src = make_src(tmp_path)
    dst = tmp_path / "dst"
    assert copytree(src, dst, jobs=2) is dst
    assert copytree(str(src), str(tmp_path / "d2"), jobs=2) == str(tmp_path / "d2")
    shutil.copytree(src, tmp_path / "ref")
    assert listing(dst) == listing(tmp_path / "ref")


def test_package_attribute_stays_callable(tmp_path: Path) -> None:
    """pcopy.copytree stays the function after every submodule was imported."""
    import pcopy.dropin  # every module loaded: the name must still be the function

    src = make_src(tmp_path)
    for i in range(2):
        assert pcopy.copytree(src, tmp_path / f"d{i}", jobs=1) == tmp_path / f"d{i}"
    assert "dirs_exist_ok" in inspect.signature(pcopy.copytree).parameters


@pytest.mark.parametrize("case", ["exists", "missing", "file"])
def test_top_level_exceptions_match_shutil(tmp_path: Path, case: str) -> None:
    src = make_src(tmp_path)
    dst = tmp_path / "dst"
    if case == "exists":
        dst.mkdir()
    elif case == "missing":
        src = tmp_path / "nope"
    else:
        src = src / "a.txt"
    with pytest.raises(OSError) as ref:
        shutil.copytree(str(src), str(dst))
    existed = dst.exists()
    with pytest.raises(OSError) as got:
        copytree(str(src), str(dst), jobs=2)
    assert type(got.value) is type(ref.value)
    assert type(got.value) is {"exists": FileExistsError, "missing": FileNotFoundError,
                               "file": NotADirectoryError}[case]
    assert str(got.value) == str(ref.value)
    assert dst.exists() == existed


def test_bad_jobs_rejected_before_anything_is_written(tmp_path: Path) -> None:
    src = make_src(tmp_path)
    with pytest.raises(ValueError):
        copytree(src, tmp_path / "dst", jobs=0)
    assert not (tmp_path / "dst").exists()


def test_failures_collected_after_everything_else(tmp_path: Path) -> None:
    """A FIFO and a dangling link fail; every other entry is copied; one shutil.Error with
    shutil's tuples and messages, spelled as the caller spelled src."""
    src = make_src(tmp_path)
    os.mkfifo(src / "sub" / "pipe")
    os.symlink("nowhere", src / "dangling")
    os.chdir(tmp_path)
    spelled = "./src//"
    with pytest.raises(shutil.Error) as ref:
        shutil.copytree(spelled, "ref")
    with pytest.raises(shutil.Error) as got:
        copytree(spelled, "dst", jobs=2)
    assert [(s, d.replace("dst/", "ref/"), m) for s, d, m in got.value.args[0]] == ref.value.args[0]
    messages = [m for _, _, m in got.value.args[0]]
    assert "`./src//sub/pipe` is a named pipe" in messages
    assert any("nowhere" not in m and "dangling" in m for m in messages)
    assert (tmp_path / "dst" / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert listing(tmp_path / "dst") == listing(tmp_path / "ref")


def test_ignore_called_like_shutil(tmp_path: Path) -> None:
    src = make_src(tmp_path)
    calls: dict[str, list[tuple[str, list[str]]]] = {"ref": [], "got": []}

    def recorder(key: str) -> Any:
        def ignore(path: str, names: list[str]) -> set[str]:
            assert type(path) is str
            calls[key].append((path, names))
            return {"b.bin"}
        return ignore

    shutil.copytree(src, tmp_path / "ref", ignore=recorder("ref"))
    copytree(src, tmp_path / "got", ignore=recorder("got"), jobs=2)
    assert calls["got"] == calls["ref"]
    assert len(calls["got"]) == 3  # src, src/sub, src/sub/deep: once each
    assert not (tmp_path / "got" / "sub" / "b.bin").exists()
    assert listing(tmp_path / "got") == listing(tmp_path / "ref")


@pytest.mark.parametrize("jobs", [1, 3])
def test_custom_copy_function_runs_in_caller_process(tmp_path: Path, jobs: int) -> None:
    src = make_src(tmp_path)
    for i in range(20):
        (src / f"n{i}").write_bytes(b"%d" % i)
    seen: list[tuple[Any, Any, int, int]] = []
    lock = threading.Lock()

    def copy(s: Any, d: Any) -> None:  # a closure with side effects: cannot run in a pool worker
        with lock:
            seen.append((s, d, os.getpid(), threading.get_ident()))
        shutil.copy2(s, d)

    ref_calls: list[tuple[Any, Any]] = []
    shutil.copytree(src, tmp_path / "ref", copy_function=lambda s, d: ref_calls.append((s, d)) or
                    shutil.copy2(s, d))
    copytree(src, tmp_path / "got", copy_function=copy, jobs=jobs)
    got = [(s.replace("got", "ref"), d.replace("got", "ref")) for s, d, _, _ in seen]
    assert sorted(got) == sorted(ref_calls)
    assert len(seen) == len(ref_calls)  # once per file
    assert all(type(s) is str and type(d) is str for s, d, _, _ in seen)
    assert {pid for _, _, pid, _ in seen} == {os.getpid()}
    threads = {tid for _, _, _, tid in seen}
    if jobs == 1:
        assert threads == {threading.get_ident()}
    assert listing(tmp_path / "got") == listing(tmp_path / "ref")


def test_copy_function_other_exception_propagates(tmp_path: Path) -> None:
    src = make_src(tmp_path)

    def bad(s: str, d: str) -> None:
        raise ValueError("boom")

    before = threading.active_count()
    with pytest.raises(ValueError, match="boom"):
        copytree(src, tmp_path / "dst", copy_function=bad, jobs=2)
    assert threading.active_count() == before  # the thread pool is gone


def test_copy_function_oserror_collected(tmp_path: Path) -> None:
    src = make_src(tmp_path)

    def picky(s: str, d: str) -> None:
        if s.endswith("b.bin"):
            raise PermissionError(13, "Permission denied", s)
        shutil.copy2(s, d)

    with pytest.raises(shutil.Error) as ref:
        shutil.copytree(src, tmp_path / "ref", copy_function=picky)
    with pytest.raises(shutil.Error) as got:
        copytree(src, tmp_path / "got", copy_function=picky, jobs=2)
    assert [(s, d.replace("got", "ref"), m) for s, d, m in got.value.args[0]] == ref.value.args[0]


def test_copy_into_subdirectory_of_src(tmp_path: Path) -> None:
    src = make_src(tmp_path)
    expected = listing(src)
    expected["link"] = expected["a.txt"]  # symlinks=False: the link's target is copied
    copytree(src, src / "copy", jobs=2)
    assert listing(src / "copy") == expected
    assert not (src / "copy" / "copy").exists()


def test_symlink_loop_matches_shutil(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    os.symlink("..", src / "d" / "up")
    with pytest.raises(shutil.Error) as ref:
        shutil.copytree(src, tmp_path / "ref")
    with pytest.raises(shutil.Error) as got:
        copytree(src, tmp_path / "got", jobs=2)
    assert [(s, d.replace("got", "ref"), m.replace("got", "ref")) for s, d, m in got.value.args[0]] \
        == ref.value.args[0]


def test_dirs_exist_ok_always_copies(tmp_path: Path) -> None:
    """shutil never skips: a destination file with the same size and mtime but other bytes is
    overwritten (the CLI's quick check would skip it)."""
    src = make_src(tmp_path)
    dst = tmp_path / "dst"
    copytree(src, dst, jobs=2)
    (dst / "a.txt").write_bytes(b"ALPHA")
    st = (src / "a.txt").stat()
    os.utime(dst / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    copytree(src, dst, dirs_exist_ok=True, jobs=2)
    assert (dst / "a.txt").read_bytes() == b"alpha"


def test_large_files_in_ranges_and_hard_links_as_separate_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(300_000)
    (src / "big").write_bytes(data)
    os.link(src / "big", src / "big2")
    copytree(src, tmp_path / "dst", jobs=2, chunk_size=64 * 1024)
    assert (tmp_path / "dst" / "big").read_bytes() == data
    assert (tmp_path / "dst" / "big2").read_bytes() == data
    assert (tmp_path / "dst" / "big").stat().st_ino != (tmp_path / "dst" / "big2").stat().st_ino


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_not_copied_like_copy2(tmp_path: Path) -> None:
    src = make_src(tmp_path)
    os.chown(src / "a.txt", 65534, 65534)
    copytree(src, tmp_path / "dst", jobs=1)
    assert (tmp_path / "dst" / "a.txt").stat().st_uid == os.geteuid()


# -- documented choices where shutil has known bugs ------------------------------------------------

def test_dst_symlink_is_replaced_not_written_through(tmp_path: Path) -> None:
    src = make_src(tmp_path)
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep me")
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink(outside, dst / "a.txt")
    copytree(src, dst, dirs_exist_ok=True, jobs=2)
    assert outside.read_bytes() == b"keep me"  # shutil would have overwritten it (gh-102931)
    assert not (dst / "a.txt").is_symlink()
    assert (dst / "a.txt").read_bytes() == b"alpha"


def test_existing_symlinks_replaced_with_symlinks_true(tmp_path: Path) -> None:
    src = make_src(tmp_path)
    dst = tmp_path / "dst"
    copytree(src, dst, symlinks=True, jobs=2)
    copytree(src, dst, symlinks=True, dirs_exist_ok=True, jobs=2)  # shutil: EEXIST (gh-105919)
    assert os.readlink(dst / "link") == "a.txt"


def test_relative_links_judged_from_their_directory(tmp_path: Path) -> None:
    src = make_src(tmp_path)
    os.symlink("../a.txt", src / "sub" / "rel")
    os.symlink("../nothing", src / "sub" / "gone")
    os.chdir(tmp_path)  # where neither "a.txt" nor "../a.txt" exists as seen from here
    copytree(src, tmp_path / "dst", ignore_dangling_symlinks=True, jobs=2)
    assert (tmp_path / "dst" / "sub" / "rel").read_bytes() == b"alpha"  # shutil skips it (gh-91205)
    assert not (tmp_path / "dst" / "sub" / "gone").exists()


# -- threads and interrupts --------------------------------------------------------------------------

def test_concurrent_calls_from_a_thread_pool(tmp_path: Path) -> None:
    src = make_src(tmp_path)
    for i in range(30):
        (src / "sub" / f"f{i}").write_bytes(os.urandom(3000))
    methods: list[str | None] = []
    original = pct._start_method

    def spy(requested: str | None) -> str | None:
        methods.append(original(requested))
        return methods[-1]

    pct._start_method = spy  # type: ignore[assignment]
    try:
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda i: copytree(src, tmp_path / f"d{i}", jobs=2, chunk_size=1024),
                                    range(4)))
    finally:
        pct._start_method = original  # type: ignore[assignment]
    assert results == [tmp_path / f"d{i}" for i in range(4)]
    assert methods == [pct.THREADED_START_METHOD] * 4
    expected = listing(tmp_path / "d0")
    assert expected == listing(src) | {k: v for k, v in expected.items() if k == "link"}
    for i in range(1, 4):
        assert listing(tmp_path / f"d{i}") == expected


INTERRUPT_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    import pcopy.worker
    from pcopy.dropin import copytree

    mode, src, dst = sys.argv[1:4]
    real = pcopy.worker.copy_range
    def slow(*args, **kwargs):  # inherited by forked workers: each file takes 50 ms
        end = time.perf_counter() + 0.05  # computed, not slept: a sleeping worker looks like
        while time.perf_counter() < end:  # slow storage and would take more threads
            pass
        return real(*args, **kwargs)
    pcopy.worker.copy_range = slow
    def slow_copy(s, d):
        time.sleep(0.05)
        import shutil
        shutil.copy2(s, d)
    # fork, so the workers inherit the slow copy (the Timer thread would make copytree pick
    # forkserver, whose workers import pcopy afresh).
    kwargs = {"copy_function": slow_copy} if mode == "threads" else {"start_method": "fork"}
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    t0 = time.monotonic()
    try:
        copytree(src, dst, jobs=2, **kwargs)
        outcome = "finished"
    except KeyboardInterrupt:
        outcome = "KeyboardInterrupt"
    elapsed = time.monotonic() - t0
    import multiprocessing
    children = multiprocessing.active_children()
    before = sorted(os.listdir(dst))
    time.sleep(0.5)
    after = sorted(os.listdir(dst))
    print(json.dumps({"outcome": outcome, "elapsed": elapsed, "children": len(children),
                      "threads": threading.active_count(), "stable": before == after,
                      "temps": [n for n in after if ".pcopy-" in n], "copied": len(after)}))
""")


@pytest.mark.parametrize("mode", ["engine", "threads"])
def test_keyboard_interrupt_stops_promptly(tmp_path: Path, mode: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):  # 300 files x 50 ms / 2 workers = ~7.5 s uninterrupted
        (src / f"f{i:03}").write_bytes(b"x" * 100)
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_SCRIPT, mode, str(src), str(tmp_path / "dst")],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["outcome"] == "KeyboardInterrupt", result
    assert result["elapsed"] < 5.0, result  # interrupted at ~1 s; the whole copy takes ~7.5 s
    assert result["children"] == 0, result
    assert result["threads"] == 1, result
    assert result["stable"], result  # nothing written after the call returned
    assert result["temps"] == [], result
    assert result["copied"] < 300, result


# -- unprivileged: an unreadable top-level src and unreadable entries ---------------------------------

NOBODY_SCRIPT = textwrap.dedent("""
    import json, shutil, sys
    sys.path.insert(0, sys.argv[1])
    from pcopy.dropin import copytree
    base = sys.argv[2]
    out = {}
    for name, func in (("ref", shutil.copytree), ("got", copytree)):
        res = {}
        for case, src in (("top", base + "/locked"), ("inner", base + "/src")):
            kwargs = {"jobs": 2} if name == "got" else {}
            try:
                func(src, base + "/" + name + "-" + case, **kwargs)
                res[case] = None
            except shutil.Error as err:
                res[case] = ["Error", [[str(x).replace("/" + name + "-", "/X-") for x in item]
                                       for item in err.args[0]]]
            except OSError as err:
                res[case] = [type(err).__name__, str(err)]
        out[name] = res
    print(json.dumps(out))
""")


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists()
                    or shutil.which("setpriv") is None, reason="needs root, setpriv and /usr/bin/python3")
def test_unreadable_entries_as_unprivileged_user(tmp_path_factory: pytest.TempPathFactory) -> None:
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="pcopy-copytree-"))
    try:
        base.chmod(0o777)
        lib = base / "lib"
        shutil.copytree(REPO / "pcopy", lib / "pcopy", ignore=shutil.ignore_patterns("__pycache__"))
        for p in [lib, *lib.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        (base / "locked").mkdir(mode=0o700)
        src = base / "src"
        (src / "closed").mkdir(parents=True)
        (src / "ok").write_bytes(b"fine")
        (src / "secret").write_bytes(b"no")
        for p in (src, src / "closed", src / "ok", src / "secret"):
            os.chown(p, 65534, 65534)
        (src / "secret").chmod(0o000)
        (src / "closed").chmod(0o000)
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "/usr/bin/python3", "-c", NOBODY_SCRIPT, str(lib), str(base)],
                              capture_output=True, text=True, timeout=60, cwd=str(base))
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["got"] == out["ref"]
        assert out["got"]["top"][0] == "PermissionError"
        assert out["got"]["inner"][0] == "Error" and len(out["got"]["inner"][1]) == 2
        assert (base / "got-inner" / "ok").read_bytes() == b"fine"
    finally:
        shutil.rmtree(base, ignore_errors=True)
