"""`pcopy --engine ray` on a real 2-node Ray cluster of this machine, started with `ray start`
(not ray.cluster_utils), its copy compared entry by entry with the local engine's.

    python benchmarks/ray_local_cluster.py [--files 3000] [--keep]

What it does (every command is printed as it runs):
  1. a temporary directory of its own, BASE (/tmp/pcl-XXXX: Ray's socket paths must stay short);
     every Ray process gets RAY_TMPDIR=BASE, RAY_USAGE_STATS_ENABLED=0, RAY_AUTH_MODE=disabled;
  2. `ray start --head --temp-dir BASE/head --port P ...` and a second node
     `ray start --address 127.0.0.1:P --temp-dir BASE/node2 ...` (Ray 2.60 takes --temp-dir per
     node), each with 1 CPU and every port chosen free here (two raylets on one machine must not
     share the dashboard agent's, metrics' or runtime-env agent's fixed default ports);
  3. a tree: tests/treeutil.build_sample_tree (modes, set-ID bits, times, symlinks, hard links),
     a sparse file, and sample_tree.make_tree's small and large files; times stamped so that
     reading it changes nothing;
  4. `pcopy SRC LOCAL -j 2 --json` and `pcopy SRC RAY --engine ray --ray-address 127.0.0.1:P
     -j 2 --json`, the nodes pcopy's actors ran on sampled during the copy;
  5. treeutil.compare: RAY against SRC, and RAY against LOCAL (type, mode, bytes, symlink
     targets, mtime/atime, hard-link groups), sparse file blocks, temporary files;
  6. the Ray processes stopped by pid: those whose environment holds RAY_TMPDIR=BASE (SIGTERM,
     then SIGKILL after 10 s). Never `ray stop`: it stops every Ray process of the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from ray_common import MIB, RAY_ENV, temp_files, wait_until  # noqa: E402
from sample_tree import make_tree  # noqa: E402
from treeutil import build_sample_tree, compare, snapshot, stamp_times  # noqa: E402

from pcopy import raypool  # noqa: E402

BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    ports = [s.getsockname()[1] for s in socks]
    for sock in socks:
        sock.close()
    return ports


def run(argv: list[str], env: dict[str, str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    print("$ " + " ".join(argv), flush=True)
    started = time.monotonic()
    out = subprocess.run(argv, env=env, capture_output=True, check=False, **kwargs)  # type: ignore[call-overload]
    print(f"  -> exit {out.returncode} in {time.monotonic() - started:.2f} s", flush=True)
    return out  # type: ignore[no-any-return]


def node_ports() -> list[str]:
    names = ["--node-manager-port", "--object-manager-port", "--metrics-export-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port"]
    return [item for name, port in zip(names, free_ports(len(names)), strict=True)
            for item in (name, str(port))]


def processes_of(base: str) -> list[int]:
    """Pids of the processes whose environment holds RAY_TMPDIR=base (this script's Ray)."""
    marker = f"RAY_TMPDIR={base}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as fh:
            if marker in fh.read().split(b"\0"):
                found.append(int(pid))
    return found


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def stop_by_pid(base: str) -> None:
    pids = processes_of(base)
    print(f"stopping {len(pids)} Ray processes of {base} by pid (SIGTERM): "
          f"{sorted(comm(pid) for pid in pids)}", flush=True)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not processes_of(base), 10, 0.1):
        left = processes_of(base)
        print(f"  SIGKILL to {len(left)} left: {[comm(pid) for pid in left]}", flush=True)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not processes_of(base), 5, 0.1)
    print(f"  left: {processes_of(base)}", flush=True)


def raylet_of(pid: int) -> str | None:
    """Which node (head or node2) an actor process runs under: its parent raylet's temp dir."""
    with contextlib.suppress(OSError, ValueError):
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{ppid}/cmdline", "rb") as fh:
            cmd = fh.read()
        for name in ("node2", "head"):
            if f"/{name}/".encode() in cmd:
                return name
    return None


def watch_actors(base: str, stop: threading.Event, seen: dict[int, str | None]) -> None:
    while not stop.is_set():
        for pid in processes_of(base):
            if pid in seen:
                continue
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read().startswith(b"ray::" + raypool.WORKER_CLASS_NAME.encode()):
                    seen[pid] = raylet_of(pid)
        stop.wait(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--keep", action="store_true", help="keep BASE (trees, Ray logs)")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="pcl-", dir="/tmp")
    env = {**os.environ, **RAY_ENV, "RAY_TMPDIR": base}
    env.pop("RAY_ADDRESS", None)
    port = free_ports(1)[0]
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--object-store-memory", str(80 * MIB), "--node-ip-address", "127.0.0.1",
              "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats"]
    result: dict[str, object] = {"base": base, "address": address}
    try:
        head = run([str(BIN / "ray"), "start", "--head", "--temp-dir", f"{base}/head", "--port", str(port),
                    "--include-dashboard=false", *common, *node_ports()], env)
        if head.returncode:
            print(head.stdout.decode(), head.stderr.decode())
            return 1
        node2 = run([str(BIN / "ray"), "start", "--address", address, "--temp-dir", f"{base}/node2",
                     *common, *node_ports()], env)
        if node2.returncode:
            print(node2.stdout.decode(), node2.stderr.decode())
            return 1
        nodes = run([sys.executable, "-c", "import ray, json; ray.init(address='" + address + "', "
                     "log_to_driver=False); print(json.dumps([(n['NodeID'][:8], n['Alive'], "
                     "n['Resources'].get('CPU')) for n in ray.nodes()]))"], env)
        print("  nodes:", nodes.stdout.decode().strip().splitlines()[-1:])

        src = Path(base) / "src"
        build_sample_tree(src, outside=base)
        with open(src / "sparse.img", "wb") as fh:
            fh.truncate(32 * MIB)
            for offset in (0, 16 * MIB):
                fh.seek(offset)
                fh.write(os.urandom(4096))
        make_tree(str(src / "bulk"), files=args.files, dirs=60, large=2, large_mib=32)
        stamp_times(src)
        print(f"tree: {src}: {sum(len(f) + len(d) for _, d, f in os.walk(src))} entries", flush=True)

        local = run([str(BIN / "pcopy"), str(src), f"{base}/local", "-j", "2", "--json", "--no-progress"], env)
        seen: dict[int, str | None] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch_actors, args=(base, stop, seen), daemon=True)
        watcher.start()
        ray_run = run([str(BIN / "pcopy"), str(src), f"{base}/ray", "--engine", "ray", "--ray-address",
                       address, "-j", "2", "--json", "--no-progress"], env)
        stop.set()
        watcher.join()
        for name, out in (("local", local), ("ray", ray_run)):
            if out.returncode:
                print(out.stderr.decode())
            report = json.loads(out.stdout) if out.stdout.strip() else {}
            result[name] = {k: report.get(k) for k in ("exit_code", "files", "dirs", "bytes", "failed", "seconds")}
        result["ray_stderr"] = ray_run.stderr.decode().strip()
        result["actors_per_node"] = {node: sum(1 for v in seen.values() if v == node) for node in ("head", "node2")}
        snap_src, snap_local, snap_ray = snapshot(src), snapshot(f"{base}/local"), snapshot(f"{base}/ray")
        result["entries"] = len(snap_ray)
        result["ray_vs_src"] = compare(snap_src, snap_ray)[:10]
        result["ray_vs_local"] = compare(snap_local, snap_ray)[:10]
        result["sparse_blocks"] = {name: os.stat(f"{base}/{name}/sparse.img").st_blocks for name in ("local", "ray")}
        result["temp_files"] = len(temp_files(f"{base}/ray"))
    finally:
        stop_by_pid(base)
        if not args.keep:
            for root, dirs, _ in os.walk(base):  # (read-only directories of the trees)
                for d in dirs:
                    with contextlib.suppress(OSError):
                        os.chmod(os.path.join(root, d), 0o755)
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=1, default=str))
    ray_report = result.get("ray")
    ok = (not result.get("ray_vs_src") and not result.get("ray_vs_local") and result.get("temp_files") == 0
          and isinstance(ray_report, dict) and ray_report.get("exit_code") == 0)
    print("OK: the Ray copy equals SRC and the local engine's copy" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
