"""Helpers for the Ray benchmarks (ray_node_loss.py, ray_throughput.py, ray_local_cluster.py):
a Ray test cluster of this machine's own (in-process, ray.cluster_utils.Cluster, in a temporary
directory of its own), pcopy's actor processes found by title and environment, a tree's state.

Never `ray start`/`ray stop` here: `ray stop` acts on every Ray process of the machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from pcopy import raypool
from pcopy.metadata import is_temp_name

MIB = 1024 * 1024

# Every Ray process started here reads these: no usage reports, no token (a cluster of one
# machine), and everything Ray writes under the temporary directory of its own.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


@contextlib.contextmanager
def test_cluster(nodes: int = 2, cpus: int = 1, connect: bool = False) -> Iterator[Any]:
    """A ray.cluster_utils.Cluster of `nodes` nodes with `cpus` CPUs each (the head is one of
    them); its address is cluster.address. connect: this process is a driver of it too."""
    import ray
    from ray.cluster_utils import Cluster

    base = tempfile.mkdtemp(prefix="pcb-", dir="/tmp")  # short: Ray's socket paths live under it
    saved = {key: os.environ.get(key) for key in [*RAY_ENV, "RAY_TMPDIR", "RAY_ADDRESS"]}
    os.environ.update(RAY_ENV)
    os.environ["RAY_TMPDIR"] = base
    os.environ.pop("RAY_ADDRESS", None)
    store = 80 * MIB
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": cpus, "include_dashboard": False, "object_store_memory": store})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus, object_store_memory=store)
        if connect:
            ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
        yield cluster
    finally:
        if connect:
            ray.shutdown()
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(base, ignore_errors=True)


def driver_env() -> dict[str, str]:
    """The environment for a pcopy CLI driver of the cluster test_cluster started."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


def actor_pids(marker: str | None = None) -> list[int]:
    """pcopy's Ray actors (titled ray::PcopyWorker) of the cluster this process started (their
    environment names its RAY_TMPDIR), and holding marker ("NAME=VALUE") when given."""
    wanted = [("RAY_TMPDIR=" + os.environ.get("RAY_TMPDIR", "")).encode()]
    if marker is not None:
        wanted.append(marker.encode())
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if not fh.read().startswith(b"ray::" + raypool.WORKER_CLASS_NAME.encode()):
                    continue
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:
            continue
        if all(item in environ for item in wanted):
            found.append(int(pid))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def temp_files(root: str) -> list[str]:
    return [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files if is_temp_name(n)]


def writing(pids: list[int], root: str) -> bool:
    """Whether one of the processes has a pcopy temporary file under root open."""
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith(root + os.sep) and is_temp_name(os.path.basename(target)):
                        return True
    return False


def tree_state(root: str) -> dict[str, tuple[int, int, int]]:
    """Every entry under root: (mode, size, mtime_ns): what a writer changes."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(path)
                state[path] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return state


def wait_until(predicate: Any, seconds: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True
