"""Shared fixtures: run pcopy as a real subprocess, as root or as an unprivileged user.

Root bypasses permission checks, so tests about unreadable files run pcopy as uid 65534 through
setpriv. That user cannot reach the dev virtualenv's Python (it lives under /root, mode 0700), so
the `nobody` fixture copies pcopy and the third-party modules it imports into a world-readable
directory and runs Debian's /usr/bin/python3 with PYTHONPATH pointing there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import pytest

NOBODY_UID = 65534
NOBODY_GID = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
# A copy that hangs (a FIFO opened, a lost pool task) must fail the test, not stall the suite.
RUN_TIMEOUT_S = 60

Arg = Union[str, bytes, "os.PathLike[str]"]


@dataclass
class Run:
    """A finished pcopy process: exit code and its two output streams."""

    args: list[bytes]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        data = json.loads(self.stdout)
        assert isinstance(data, dict)
        return data

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()

    def __str__(self) -> str:
        return f"pcopy {self.args!r} -> {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def _argv(args: Sequence[Arg]) -> list[bytes]:
    return [os.fsencode(a) for a in args]


def _finish(argv: list[bytes], proc: subprocess.CompletedProcess[bytes]) -> Run:
    # Reports escape odd names, so the streams are ASCII/UTF-8; "replace" keeps a bug there from
    # turning into a decoding error in the test instead of a readable assertion.
    run = Run(argv, proc.returncode, proc.stdout.decode("utf-8", "replace"),
              proc.stderr.decode("utf-8", "replace"))
    # No expected outcome (0, 1 or 2) ever prints a Python traceback.
    assert "Traceback (most recent call last)" not in run.stderr, str(run)
    return run


RunPcopy = Callable[..., Run]


@pytest.fixture
def run_pcopy() -> RunPcopy:
    """run_pcopy(*args, cwd=None) -> Run: `python -m pcopy ARGS` with the test's interpreter."""

    def run(*args: Arg, cwd: Arg | None = None, timeout: float = RUN_TIMEOUT_S) -> Run:
        argv = _argv([sys.executable, "-m", "pcopy", *args])
        env = dict(os.environ)
        env.pop("COLUMNS", None)
        proc = subprocess.run(argv, cwd=os.fsdecode(cwd) if cwd is not None else None,
                              capture_output=True, timeout=timeout, env=env, check=False)
        return _finish(argv, proc)

    return run


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temporary directory every user can enter (pytest's tmp_path sits under a 0700 dir)."""
    path = Path(tempfile.mkdtemp(prefix="pcopy-e2e-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _third_party_roots() -> list[Path]:
    """Files and package directories (outside the stdlib) that `pcopy` and its CLI import,
    found by importing them in a fresh interpreter and collecting the top-level modules' files.
    Top-level names rather than sys.path entries: the editable install of pcopy is found by an
    import hook, not through a sys.path entry."""
    # Run the CLI for real (a copy, a refusal, a usage error) so that modules imported lazily
    # on those paths (typer imports some only while parsing) are collected too.
    script = """
import contextlib, io, json, os, sys, tempfile
import pcopy, pcopy.cli, pcopy.api, pcopy.runner, pcopy.progress
with contextlib.suppress(ImportError):
    import tqdm
tmp = tempfile.mkdtemp()  # removed by the caller's temporary-directory parent
os.mkdir(os.path.join(tmp, "src"))
with open(os.path.join(tmp, "src", "f"), "wb") as f:
    f.write(b"x" * 10000)
for args in (["src", "dst", "--json", "-j", "2", "--chunk-size", "4K"], ["src", "src/in"],
             ["src", "dst", "-j", "0"], ["--help"]):
    sys.argv = ["pcopy", *args]
    os.chdir(tmp)
    out, err = (io.TextIOWrapper(io.BytesIO()) for _ in range(2))  # pcopy writes to .buffer
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with contextlib.suppress(SystemExit):
            pcopy.cli.app(prog_name="pcopy")  # main() itself leaves with os._exit
print(json.dumps({n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())}))
"""
    with tempfile.TemporaryDirectory() as scratch:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True, cwd="/", env={**os.environ, "TMPDIR": scratch}).stdout
    modules: dict[str, str | None] = json.loads(out)
    stdlib = tuple(os.path.join(sysconfig.get_paths()[k], "") for k in ("stdlib", "platstdlib"))
    roots: set[Path] = set()
    for name, file in modules.items():
        if "." in name or not file or name.startswith("__editable__"):
            continue
        if file.startswith(stdlib) and "site-packages" not in file:
            continue
        path = Path(file)
        roots.add(path.parent if path.name == "__init__.py" else path)
    return sorted(roots)


@dataclass
class Nobody:
    """Runs pcopy as uid/gid 65534 from a world-readable copy of its packages."""

    pythonpath: Path
    uid: int = NOBODY_UID
    gid: int = NOBODY_GID

    def own(self, path: Arg) -> None:
        """chown path to this user, so the unprivileged pcopy can write there."""
        os.chown(path, self.uid, self.gid)

    def run(self, *args: Arg, cwd: Arg, timeout: float = RUN_TIMEOUT_S) -> Run:
        argv = _argv([
            "setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_GID}", "--clear-groups",
            SYSTEM_PYTHON, "-m", "pcopy", *args,
        ])
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(self.pythonpath), "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/nonexistent"}
        proc = subprocess.run(argv, cwd=os.fsdecode(cwd), capture_output=True, timeout=timeout,
                              env=env, check=False)
        return _finish(argv, proc)


@pytest.fixture(scope="session")
def nobody() -> Iterator[Nobody]:
    """pcopy as an unprivileged user; skipped where that cannot be arranged."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges to uid 65534")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} (an interpreter uid 65534 can run) is missing")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing")
    base = Path(tempfile.mkdtemp(prefix="pcopy-e2e-pkgs-", dir="/tmp"))
    try:
        lib = base / "lib"
        lib.mkdir()
        for root in _third_party_roots():
            if root.is_dir():
                shutil.copytree(root, lib / root.name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(root, lib / root.name)
        # Byte-compile with the interpreter that will run them: uid 65534 cannot write caches.
        subprocess.run([SYSTEM_PYTHON, "-m", "compileall", "-q", str(lib)], check=True,
                       capture_output=True)
        for dirpath, _dirnames, filenames in os.walk(base):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
        probe = subprocess.run(
            ["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_GID}", "--clear-groups",
             SYSTEM_PYTHON, "-c", "import pcopy.cli, pcopy.runner"],
            env={"PYTHONPATH": str(lib), "PATH": "/usr/bin:/bin"}, cwd="/", capture_output=True,
            text=True, check=False)
        if probe.returncode != 0:
            pytest.fail(f"uid {NOBODY_UID} cannot import pcopy from {lib}: {probe.stderr}")
        yield Nobody(lib)
    finally:
        shutil.rmtree(base, ignore_errors=True)



@pytest.fixture(autouse=True)
def _restore_signal_handlers() -> Iterator[None]:
    """The CLI installs pcopy's InterruptGuard for the rest of its process; a test that runs the
    CLI in-process (typer's CliRunner) must not leave it as pytest's handler, where processes
    forked by later tests would inherit it."""
    import signal

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook  # (the guard's, for interrupts raised where they would be dropped)
    yield
    for sig, handler in saved.items():
        if signal.getsignal(sig) is not handler and handler is not None:
            signal.signal(sig, handler)
    sys.unraisablehook = hook


def pc(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
    """pcopy's CLI in-process (typer's CliRunner): (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from pcopy.cli import app

    result = CliRunner().invoke(app, [os.fspath(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def pc_json(*args: str | os.PathLike[str]) -> dict[str, Any]:
    """pc with --json: the report, its stderr under "stderr", and its change records as
    --itemize lines ("ACTION PATH", paths relative to DST)."""
    code, out, err = pc(*args, "--json")
    data: dict[str, Any] = json.loads(out)
    assert data["exit_code"] == code, err
    data["stderr"] = err
    data["changes"] = [f"{c['action']} {c['path']}" for c in data.get("changes", [])]
    return data


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `mount` (made here) for the block: a small disk to fill, or
    another device. Skips the test where mounting is not possible (not root, no permission)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@contextlib.contextmanager
def slowfs(factory: pytest.TempPathFactory, name: str, delay_ms: float, cache_s: float = 0.0) -> Iterator[Any]:
    """benchmarks/slowfs mounted (a FUSE pass-through adding delay_ms to every request) for the
    block, under a fresh temporary directory; skips where FUSE cannot be used (setup.sh installs
    what it needs). Yields its slowmount.SlowMount."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "slowfs"))
    from slowmount import SlowfsUnavailable, SlowMount, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"FUSE not usable here: {reason}")
    base = factory.mktemp(name)
    slow = SlowMount(base / "backing", base / "mnt", delay_ms=delay_ms, cache_s=cache_s)
    try:
        slow.start()
    except SlowfsUnavailable as exc:
        pytest.skip(f"FUSE mount not possible here: {exc}")
    try:
        yield slow
    finally:
        slow.stop()
