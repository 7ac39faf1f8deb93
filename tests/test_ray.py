"""--engine ray on a real 2-node Ray cluster, started in-process (ray.cluster_utils.Cluster) and
shared by the module: a copy compared entry by entry with the local engine's, a worker SIGKILLed
mid-copy, SIGINT, a node that cannot see DST. Runs (never skips) wherever Ray is installed
(`pip install -e '.[ray]'`). Never `ray start`/`ray stop` here: they act on every Ray process of
the machine; this module only starts and stops its own cluster, in its own temporary directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from treeutil import (
    assert_same_tree,
    build_sample_tree,
    compare,
    is_temp_name,
    snapshot,
    stamp_times,
    temp_leftovers,
)

import pcopy
from pcopy import raypool
from pcopy.errors import RefusedError

# The by-hand Ray scripts' helpers (benchmarks/ray_common.py; it imports Ray only when called).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from ray_common import writing

# Ray is imported by the cluster fixture, not here: collecting this module must not import it
# into the pytest process that every other module's tests fork from (~0.4 s and hundreds of
# MiB; test_pool's "workers leave within 1 s of their parent's SIGKILL" failed in full runs).
if importlib.util.find_spec("ray") is None:
    pytest.skip("Ray is not installed (pip install -e '.[ray]')", allow_module_level=True)

MIB = 1024 * 1024

# Every Ray process this module starts reads these: no usage reports, no token (a test cluster
# on one machine), and everything Ray writes (sockets, logs, the "current cluster" file that a
# bare ray.init() would find) under the module's own temporary directory.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


@dataclass
class RayCluster:
    address: str
    hidden: Path  # what the second node's probe cannot see (raypool.PROBE_HIDE_ENV)
    hiding_node: str  # that node's id
    base: Path
    nodes: Any  # the ray.cluster_utils.Cluster: tests may add (and remove) nodes of their own

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(RAY_ENV)
        env["RAY_TMPDIR"] = str(self.base)
        env.pop("RAY_ADDRESS", None)
        return env


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    import ray
    from ray.cluster_utils import Cluster

    # Short: Ray's unix socket paths live under it and must stay under ~107 bytes.
    base = Path(tempfile.mkdtemp(prefix="pcr-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as env:  # (restores the environment however it ends)
        for key, value in RAY_ENV.items():
            env.setenv(key, value)
        env.setenv("RAY_TMPDIR", str(base))
        env.delenv("RAY_ADDRESS", raising=False)
        hidden = base / "unseen"
        hidden.mkdir()
        small_store = 80 * MIB  # pcopy's results are a few KiB: the object store stays near empty
        nodes = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "object_store_memory": small_store})
        try:
            second = nodes.add_node(num_cpus=1, object_store_memory=small_store,
                                    env_vars={raypool.PROBE_HIDE_ENV: str(hidden)})
            ray.init(address=nodes.address, log_to_driver=False, logging_level=logging.ERROR)
            yield RayCluster(nodes.address, hidden, second.node_id, base, nodes)
        finally:
            ray.shutdown()
            nodes.shutdown()
            shutil.rmtree(base, ignore_errors=True)


def ray_workers(marker: str | None = None) -> list[int]:
    """Pids of pcopy's Ray actors on this machine (Ray titles them ray::<class name>) that
    belong to this module's cluster: their environment (inherited from its raylets) names its
    RAY_TMPDIR (and holds marker, "NAME=VALUE", when given: a node's env_vars). Other sessions'
    Ray clusters on the same machine are not this test's."""
    found = []
    mine = b"RAY_TMPDIR=" + os.environ.get("RAY_TMPDIR", "").encode()
    wanted = marker.encode() if marker is not None else mine
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if not cmdline.startswith(b"ray::" + raypool.WORKER_CLASS_NAME.encode()):
                continue
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if mine in environ and wanted in environ:
            found.append(int(pid))
    return found


def wait_no_workers(seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := ray_workers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def make_slow_tree(root: Path, large: int = 4, large_mib: int = 48, small: int = 400) -> None:
    """Large files (slow with --buffer-size 1024) and small ones in several directories."""
    block = os.urandom(MIB)
    for i in range(large):
        (root / f"big{i}").mkdir(parents=True)
        with open(root / f"big{i}" / "large.bin", "wb") as fh:
            for j in range(large_mib):
                fh.write(block[j:] + block[:j])
    for i in range(small):
        d = root / f"d{i % 4}"
        d.mkdir(exist_ok=True)
        (d / f"s{i:04d}.txt").write_bytes(block[i:i + 3000])


def final_files(root: Path) -> int:
    return sum(1 for _, _, files in os.walk(root) for name in files if ".pcopy-" not in name)


def wait_in_flight(dst: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if dst.exists() and temp_leftovers(dst) and final_files(dst):
            return
        time.sleep(0.01)
    raise AssertionError("the copy never got half-way")


def assert_complete_files_only(src: Path, dst: Path) -> None:
    for dirpath, _, files in os.walk(dst):
        for name in files:
            copied = Path(dirpath) / name
            assert copied.read_bytes() == (src / copied.relative_to(dst)).read_bytes(), f"partial: {copied}"


@pytest.fixture(scope="module")
def slow_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("rayslow") / "src"
    make_slow_tree(src)
    stamp_times(src)  # (an atime in the future: reading SRC cannot change it)
    return src


def spy_pool(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Count what the RayPool did: calls sent, nodes its actors went to, actors lost."""
    seen: dict[str, Any] = {"calls": 0, "nodes": set(), "lost": 0}
    apply_async = raypool.RayPool.apply_async
    start_actor = raypool.RayPool._start_actor
    lost = raypool.RayPool._lost

    def counting_apply(self: raypool.RayPool, *args: Any, **kwargs: Any) -> Any:
        seen["calls"] += 1
        return apply_async(self, *args, **kwargs)

    def recording_start(self: raypool.RayPool, *args: Any, **kwargs: Any) -> Any:
        actor = start_actor(self, *args, **kwargs)
        seen["nodes"].add(actor.node_id)
        return actor

    def counting_lost(self: raypool.RayPool, *args: Any, **kwargs: Any) -> Any:
        seen["lost"] += 1
        return lost(self, *args, **kwargs)

    monkeypatch.setattr(raypool.RayPool, "apply_async", counting_apply)
    monkeypatch.setattr(raypool.RayPool, "_start_actor", recording_start)
    monkeypatch.setattr(raypool.RayPool, "_lost", counting_lost)
    return seen


def start_cli(cluster: RayCluster, src: Path, dst: Path, *args: str, jobs: int = 2) -> subprocess.Popen[bytes]:
    """pcopy as a driver of its own on the module's cluster, slow enough (a 1 KiB read/write
    loop) that large files are in flight when the test acts."""
    return subprocess.Popen(
        [sys.executable, "-m", "pcopy", str(src), str(dst), "--engine", "ray", "--ray-address",
         cluster.address, "-j", str(jobs), "--no-progress", "--buffer-size", "1024", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.env())


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def make_sparse(path: Path, size: int, data_at: list[int]) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset in data_at:
            fh.seek(offset)
            fh.write(os.urandom(4096))


# -- the copy -------------------------------------------------------------------------------------
def test_tree_copied_on_ray_equals_the_local_engines_copy(cluster: RayCluster, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    build_sample_tree(src, outside=tmp_path)
    make_sparse(src / "sparse.img", 32 * MIB, [0, 16 * MIB])
    for i in range(6):  # several directories of small files: jobs enough for the pool to start
        for j in range(60):
            (src / f"many{i}").mkdir(exist_ok=True)
            (src / f"many{i}" / f"f{j}").write_bytes(os.urandom(j * 37))
    stamp_times(src)
    seen = spy_pool(monkeypatch)
    local_progress: list[tuple[int, int, int]] = []
    local = pcopy.copy(src, tmp_path / "local", jobs=2,
                       progress=lambda done, total, files: local_progress.append((done, total, files)))
    assert seen["calls"] == 0
    progress: list[tuple[int, int, int]] = []
    report = pcopy.copy(src, tmp_path / "ray", jobs=2, engine="ray",
                        progress=lambda done, total, files: progress.append((done, total, files)))
    assert seen["calls"] >= 6, "the jobs did not go through the Ray pool"
    assert len(seen["nodes"]) == 2, "workers were not spread over both nodes"
    assert (report.exit_code, report.failed) == (0, 0)
    assert (report.files, report.dirs, report.bytes) == (local.files, local.dirs, local.bytes)
    assert_same_tree(src, tmp_path / "ray")
    problems = compare(snapshot(tmp_path / "local"), snapshot(tmp_path / "ray"))
    # Hard-link groups and inodes are compared within each tree by compare(); across the two
    # copies only "DST inode is a SRC inode" could fire, and it does not (different files).
    assert problems == []
    blocks_local = os.stat(tmp_path / "local" / "sparse.img").st_blocks
    blocks_ray = os.stat(tmp_path / "ray" / "sparse.img").st_blocks
    assert blocks_ray * 512 <= MIB and blocks_ray == blocks_local, "holes not kept"
    # The bar ends where the local engine's does.
    assert progress and progress[-1] == local_progress[-1], "progress from the Ray workers was lost"
    assert temp_leftovers(tmp_path / "ray") == []
    assert wait_no_workers() == [], "actors still alive after the copy"


def test_rerun_on_ray_skips_everything(cluster: RayCluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(4):
        (src / f"d{i}").mkdir(parents=True)
        for j in range(30):
            (src / f"d{i}" / f"f{j}").write_bytes(b"x" * j)
    first = pcopy.copy(src, tmp_path / "dst", jobs=2, engine="ray")
    again = pcopy.copy(src, tmp_path / "dst", jobs=2, engine="ray")
    assert (first.files, first.skipped) == (120, 0)
    assert (again.files, again.skipped, again.exit_code) == (0, 120, 0)


# -- faults ---------------------------------------------------------------------------------------
def test_worker_sigkilled_mid_copy_gives_a_complete_copy(cluster: RayCluster, slow_src: Path,
                                                         tmp_path: Path) -> None:
    """Through the CLI with --json: Ray's driver would print the raylet's "A worker died"
    notice on stdout; the report must stay the only thing there."""
    dst = tmp_path / "dst"
    proc = start_cli(cluster, slow_src, dst, "--json")
    try:
        wait_in_flight(dst)
        workers = ray_workers()
        assert workers, "no Ray worker running mid-copy"
        os.kill(workers[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert (report["failed"], report["files"]) == (0, final_files(slow_src))
    assert err == b""
    assert workers[0] not in ray_workers()
    assert temp_leftovers(dst) == []
    assert_same_tree(slow_src, dst)


def test_node_lost_mid_copy_gives_a_complete_copy(cluster: RayCluster, tmp_path: Path) -> None:
    """A third node joins, takes one of the three workers, and goes down while that worker
    writes, as a machine does: its raylet SIGKILLed, then its workers. Ray's node table calls
    it alive for ~15 s more; the worker's calls are lost and sent again to the nodes left.
    (Its raylet alone dying, the worker goes on for 1-3 s: benchmarks/ray_node_loss.py.)
    Files are copied 4 bytes per read/write (~1 s each, idle), so the worker dies mid-file."""
    src = tmp_path / "src"
    for i in range(3):
        (src / f"d{i}").mkdir(parents=True)
        (src / f"d{i}" / "large.bin").write_bytes(os.urandom(2 * MIB))
    stamp_times(src)
    marker = "PCOPY_TEST_NODE=lost"
    node = cluster.nodes.add_node(num_cpus=1, object_store_memory=80 * MIB,
                                  env_vars={"PCOPY_TEST_NODE": "lost"})
    dst = tmp_path / "dst"
    proc = start_cli(cluster, src, dst, "--json", "--buffer-size", "4", jobs=3)
    try:
        deadline = time.monotonic() + 30
        while not (doomed := ray_workers(marker)) or not writing(doomed, str(dst)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no worker on the third node writing mid-copy"
            time.sleep(0.01)
        cluster.nodes.remove_node(node, allow_graceful=False)
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
        if node in cluster.nodes.worker_nodes:
            cluster.nodes.remove_node(node, allow_graceful=False)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert (report["failed"], report["files"]) == (0, 3)
    assert err == b""
    assert temp_leftovers(dst) == []
    assert_same_tree(src, dst)


def test_sigint_exits_130_without_temporary_files(cluster: RayCluster, slow_src: Path,
                                                  tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    proc = start_cli(cluster, slow_src, dst)
    try:
        wait_in_flight(dst)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == 130, err
    assert time.monotonic() - sent < 5
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "interrupted by SIGINT" in lines[0], err.decode()
    assert out == b""
    assert wait_no_workers() == [], "a Ray worker outlived the interrupted pcopy"
    assert temp_leftovers(dst) == []
    assert_complete_files_only(slow_src, dst)
    assert 0 < final_files(dst) < final_files(slow_src)


def dst_state(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under root: (kind and mode, size, mtime): what a writer would change."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(FileNotFoundError):  # (renamed or removed meanwhile)
                st = os.lstat(path)
                state[path] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return state


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_driver_sigkilled_mid_copy_leaves_nothing_writing(cluster: RayCluster, tmp_path: Path) -> None:
    """Ray kills the actors of a driver that died. The files in flight are copied one byte per
    read/write: a surviving actor would keep writing its file for ~15 s, past the 10 s bound."""
    src = tmp_path / "src"
    for i in range(2):
        (src / f"d{i}").mkdir(parents=True)
        (src / f"d{i}" / "large.bin").write_bytes(os.urandom(8 * MIB))
    before = set(ray_workers())
    dst = tmp_path / "dst"
    proc = start_cli(cluster, src, dst, "--buffer-size", "1")
    try:
        deadline = time.monotonic() + 30
        while not any(os.path.getsize(p) for p in temp_leftovers(dst) if os.path.exists(p)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no file in flight"
            time.sleep(0.01)
        job_workers = set(ray_workers()) - before
        assert job_workers, "no Ray worker of this copy running mid-copy"
        proc.kill()
        killed = time.monotonic()
        proc.wait()
        # DST must stop changing within 10 s of the kill: a quiet window of 2 s that starts by then.
        last_change = killed
        state = dst_state(dst)
        while time.monotonic() - last_change < 2:
            time.sleep(0.05)
            now = dst_state(dst)
            if now != state:
                last_change, state = time.monotonic(), now
            since = time.monotonic() - killed
            assert since < 12, f"DST still changing {since:.1f} s after the kill"
        assert last_change - killed < 10
        assert [pid for pid in job_workers if alive(pid)] == [], "an actor of the killed driver is alive"
        assert set(ray_workers()) <= before, "an actor of the killed driver was started after it died"
    finally:
        stop(proc)
    # What was in flight stays as a temporary file (the next run removes it); nothing partial
    # under a final name.
    finals = [p for p in dst.rglob("*") if p.is_file() and not is_temp_name(p.name.encode())]
    assert all(p.read_bytes() == (src / p.relative_to(dst)).read_bytes() for p in finals)


# -- preconditions --------------------------------------------------------------------------------
def test_node_that_cannot_see_dst_is_refused(cluster: RayCluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("x")
    dst = cluster.hidden / "dst"
    out = subprocess.run([sys.executable, "-m", "pcopy", str(src), str(dst), "--engine", "ray",
                          "--ray-address", cluster.address], capture_output=True, env=cluster.env(),
                         timeout=60, check=False)
    err = out.stderr.decode()
    assert out.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert f"(id {cluster.hiding_node[:8]}) cannot see DST" in lines[0]
    assert not dst.exists()


def test_src_not_seen_by_a_node_is_refused_in_the_api(cluster: RayCluster, tmp_path: Path) -> None:
    src = cluster.hidden / "src"
    (src / "d").mkdir(parents=True)
    try:
        with pytest.raises(RefusedError, match="cannot see SRC"):
            pcopy.copy(src, tmp_path / "dst", engine="ray")
        assert not (tmp_path / "dst").exists()
    finally:
        shutil.rmtree(src)


def test_missing_ray_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(RefusedError, match=r"pip install 'pcopy\[ray\]'"):
        pcopy.copy(tmp_path / "src", tmp_path / "dst", engine="ray")
    assert not (tmp_path / "dst").exists()


def test_ray_address_needs_the_ray_engine(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    out = subprocess.run([sys.executable, "-m", "pcopy", str(tmp_path / "src"), str(tmp_path / "dst"),
                          "--ray-address", "127.0.0.1:1"], capture_output=True, timeout=60, check=False)
    assert out.returncode == 2
    assert b"--ray-address needs --engine ray" in out.stderr


def test_local_engine_never_imports_ray(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(3):
        (src / f"d{i}").mkdir(parents=True)
        (src / f"d{i}" / "f").write_text("x")
    code = ("import sys, pcopy; r = pcopy.copy(sys.argv[1], sys.argv[2], jobs=2); "
            "assert r.exit_code == 0; assert 'ray' not in sys.modules, 'ray imported'")
    out = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "dst")],
                         capture_output=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr.decode()


# -- the pool's contract, directly ----------------------------------------------------------------
def poll_until(pool: raypool.RayPool, done: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "timed out"
        pool.poll(0.05)


def test_a_dead_actor_names_its_running_call_and_a_new_one_takes_the_rest(cluster: RayCluster) -> None:
    lost: list[tuple[list[Any], Any]] = []
    pool = raypool.RayPool(1, on_lost=lambda calls, culprit: lost.append((calls, culprit)))
    try:
        answers: list[Any] = []
        pool.apply_async(os.getpid, (), callback=answers.append)
        poll_until(pool, lambda: answers)
        pid = answers.pop()
        running = pool.apply_async(time.sleep, (30,), callback=answers.append)
        queued = pool.apply_async(os.getpid, (), callback=answers.append)
        pool.apply_async(os.getpid, (), callback=answers.append)  # (waits in the pool's backlog)
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        poll_until(pool, lambda: lost)
        assert lost == [([running, queued], running)]
        pool.resubmit(queued)  # as the executor does with calls only caught up in a death
        poll_until(pool, lambda: len(answers) == 2)
        assert pid not in answers and len(set(answers)) == 1  # both ran on the new actor
        assert pool.terminate() == []  # (waiting, in the backlog at the death, was answered too)
    finally:
        if not pool.closed:
            pool.terminate()


def test_actors_that_never_start_stop_the_copy_with_an_error(cluster: RayCluster) -> None:
    lost: list[tuple[list[Any], Any]] = []

    def resend(calls: list[Any], culprit: Any) -> None:
        lost.append((calls, culprit))
        for call in calls:
            pool.resubmit(call)

    # Every actor dies in its constructor: no call is to blame, and pcopy gives up after 2 x -j.
    pool = raypool.RayPool(1, initializer=os._exit, initargs=(3,), on_lost=resend)
    try:
        call = pool.apply_async(os.getpid, ())
        with pytest.raises(raypool.EngineError, match="keep dying before they start"):
            poll_until(pool, lambda: False, seconds=60)
        assert lost and all(culprit is None for _, culprit in lost)
        assert all(calls == [call] for calls, _ in lost)
    finally:
        pool.terminate()


GONE_NODE = "ab" * 28  # a node id no node has: Ray refuses to place anything pinned to it


def test_a_node_ray_cannot_place_an_actor_on_takes_no_more(cluster: RayCluster) -> None:
    """Ray refuses an actor pinned to a node that is gone (ActorUnschedulableError): the node
    is dropped for the rest of the copy, the actor's calls go to a live node, and it counts
    as no start failure; with no node left, the copy stops with an error."""
    lost: list[tuple[list[Any], Any]] = []

    def resend(calls: list[Any], culprit: Any) -> None:
        lost.append((calls, culprit))
        for call in calls:
            pool.resubmit(call)

    pool = raypool.RayPool(1, on_lost=resend)
    try:
        pool.slots = [GONE_NODE, pool.slots[0]]
        answers: list[Any] = []
        call = pool.apply_async(os.getpid, (), callback=answers.append)
        poll_until(pool, lambda: answers)
        assert lost == [([call], None)]
        assert (pool.gone_nodes, pool.start_failures) == ({GONE_NODE}, 0)
    finally:
        pool.terminate()
    pool = raypool.RayPool(1, on_lost=resend)
    try:
        pool.slots = [GONE_NODE]
        pool.apply_async(os.getpid, ())
        with pytest.raises(raypool.EngineError, match="no Ray node that passed pcopy's probe is alive"):
            poll_until(pool, lambda: False)
    finally:
        pool.terminate()


def test_nodes_gone_before_the_probe_take_no_workers(cluster: RayCluster, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's node table calls a node alive for ~15 s after its raylet died. Such a node (its
    raylet port refuses, or the probe cannot be placed there) is left out, not a refusal."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    listed = raypool.usable_nodes

    def with_dead_nodes(ray: Any) -> list[raypool.NodeInfo]:
        return [*listed(ray), raypool.NodeInfo(GONE_NODE, "127.0.0.1", 1.0, closed_port),
                raypool.NodeInfo("cd" * 28, "127.0.0.1", 1.0)]  # (no port known: probed)

    monkeypatch.setattr(raypool, "usable_nodes", with_dead_nodes)
    seen = spy_pool(monkeypatch)
    src = tmp_path / "src"
    for i in range(4):
        (src / f"d{i}").mkdir(parents=True)
        (src / f"d{i}" / "f").write_text("x")
    report = pcopy.copy(src, tmp_path / "dst", engine="ray")
    assert (report.exit_code, report.files) == (0, 4)
    assert seen["nodes"] and not seen["nodes"] & {GONE_NODE, "cd" * 28}


def test_raylets_this_machine_cannot_reach_are_not_called_gone(cluster: RayCluster, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver that reaches no raylet at all (e.g. through Ray Client, from outside the
    cluster's network) cannot tell dead nodes that way: it trusts Ray's node table."""
    monkeypatch.setattr(raypool, "_raylet_answers", lambda node: False)
    seen = spy_pool(monkeypatch)
    src = tmp_path / "src"
    for i in range(4):
        (src / f"d{i}").mkdir(parents=True)
        (src / f"d{i}" / "f").write_text("x")
    report = pcopy.copy(src, tmp_path / "dst", jobs=2, engine="ray")
    assert (report.exit_code, report.files) == (0, 4)
    assert len(seen["nodes"]) == 2


def test_bwlimit_is_refused_with_the_ray_engine(tmp_path: Path) -> None:
    """--bwlimit's shared budget lives in this machine's temporary directory."""
    (tmp_path / "src").mkdir()
    out = subprocess.run([sys.executable, "-m", "pcopy", str(tmp_path / "src"), str(tmp_path / "dst"),
                          "--engine", "ray", "--bwlimit", "1M"], capture_output=True, timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    assert b"--bwlimit is not supported with --engine ray" in out.stderr
    assert not (tmp_path / "dst").exists()
