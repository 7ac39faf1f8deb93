"""A Ray node lost mid-copy, by hand: how `pcopy --engine ray` ends when a node running one of
its workers goes away while that worker writes.

A 3-node cluster of this machine (ray.cluster_utils.Cluster, in-process, 1 CPU each); per trial
a fresh third node is added, `pcopy SRC DST --engine ray -j 3 --json --buffer-size 4` started
(a 4-byte read/write loop: each 2 MiB file takes ~1 s, so the worker is mid-file), and once a
worker of the third node has a temporary file open, the node is removed:

    machine  its raylet SIGKILLed, then its worker processes (a machine going down)
    raylet   only its raylet SIGKILLed (the workers notice after a while and exit)

Per trial: pcopy's exit code, its time from the removal to its end, whether DST equals SRC
(sample_tree.compare: kinds, bytes, modes, mtimes), temporary files left, how long the lost
node's workers outlived pcopy, and whether DST changed after pcopy ended.

    python benchmarks/ray_node_loss.py --trials 5            # both modes
    python benchmarks/ray_node_loss.py --trials 3 --mode raylet
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ray_common import (
    MIB,
    actor_pids,
    alive,
    driver_env,
    temp_files,
    test_cluster,
    tree_state,
    wait_until,
    writing,
)
from sample_tree import compare

MARKER = "PCOPY_BENCH_NODE=lost"


def make_src(root: str, files: int = 3, mib: int = 2) -> None:
    for i in range(files):
        os.makedirs(os.path.join(root, f"d{i}"))
        with open(os.path.join(root, f"d{i}", "large.bin"), "wb") as fh:
            fh.write(os.urandom(mib * MIB))
        for j in range(20):
            with open(os.path.join(root, f"d{i}", f"small{j:02d}"), "wb") as fh:
                fh.write(os.urandom(100 * j))


def trial(cluster: Any, mode: str, src: str, dst: str) -> dict[str, object]:
    node = cluster.add_node(num_cpus=1, object_store_memory=80 * MIB,
                            env_vars={"PCOPY_BENCH_NODE": "lost"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "pcopy", src, dst, "--engine", "ray", "--ray-address",
         cluster.address, "-j", "3", "--json", "--no-progress", "--buffer-size", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=driver_env())
    try:
        doomed: list[int] = []

        def lost_node_writes() -> bool:
            doomed[:] = actor_pids(MARKER)
            return proc.poll() is None and bool(doomed) and writing(doomed, dst)

        if not wait_until(lost_node_writes, 60):
            raise RuntimeError("no worker of the third node wrote mid-copy")
        cluster.remove_node(node, allow_graceful=False)
        removed = time.monotonic()
        if mode == "machine":
            for pid in doomed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        ended = time.monotonic()
        at_end = tree_state(dst)
        outlived = [pid for pid in doomed if alive(pid)]
        wait_until(lambda: not [pid for pid in doomed if alive(pid)], 30, 0.02)
        outlived_s = time.monotonic() - ended if outlived else 0.0
        time.sleep(0.5)
        changed_after = tree_state(dst) != at_end
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if node in cluster.worker_nodes:
            cluster.remove_node(node, allow_graceful=False)
    report = json.loads(out) if out.strip() else {}
    return {"mode": mode, "exit": proc.returncode, "after_removal_s": round(ended - removed, 2),
            "files": report.get("files"), "failed": report.get("failed"),
            "equal": compare(src, dst) == [], "temp_left": len(temp_files(dst)),
            "workers_outlived_pcopy_s": round(outlived_s, 2), "dst_changed_after_end": changed_after,
            "stderr": err.decode(errors="replace").strip()[:200]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--mode", choices=["machine", "raylet", "both"], default="both")
    args = parser.parse_args()
    modes = ["machine", "raylet"] if args.mode == "both" else [args.mode]
    work = tempfile.mkdtemp(prefix="pcopy-nodeloss-")
    src = os.path.join(work, "src")
    make_src(src)
    results = []
    try:
        with test_cluster(nodes=2) as cluster:  # one cluster for all trials
            for n in range(args.trials):
                for mode in modes:
                    dst = os.path.join(work, f"dst-{mode}-{n}")
                    result = trial(cluster, mode, src, dst)
                    results.append(result)
                    print(json.dumps(result), flush=True)
                    shutil.rmtree(dst, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok = [r for r in results if r["exit"] == 0 and r["equal"] and not r["temp_left"] and r["failed"] == 0]
    print(f"{len(ok)}/{len(results)} trials: exit 0, DST equal to SRC, no temporary files")
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
