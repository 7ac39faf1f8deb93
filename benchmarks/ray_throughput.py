"""Files per second through Ray against the local engine, on one machine, and what the driver
(the pcopy process) spends per million files.

    python benchmarks/ray_throughput.py [--files 20000] [--runs 3] [--jobs 2]

The tree: --files small files (1,000-1,199 bytes) in 100 directories. The Ray cluster: 2 nodes
of 1 CPU each, started in-process (ray.cluster_utils.Cluster, a temporary directory of its own;
never `ray start`/`ray stop`). Engines alternate, --runs runs each, every copy compared with SRC
(sample_tree.compare: kinds, bytes, modes, mtimes) and its DST removed afterwards.

Two ways per engine:
  api  pcopy.copy(SRC, DST, jobs=J[, engine="ray"]) in this process, already connected to the
       cluster (as a program using pcopy's API is): the copy's wall time, files/s, and the
       driver's CPU (time.process_time of this process: every thread, Ray's included), and the
       workers' CPU apart (the local engine's: its reaped children's rusage; Ray's actors, the
       raylets' children: sampled from /proc every 20 ms by a process of its own, so slightly
       low; they include each actor's start-up, ~1 s of CPU)
  cli  `pcopy SRC DST -j J --json [--engine ray --ray-address ADDR]` as a process of its own:
       wall time from exec to exit (start-up, import ray, connect, probe included), the report's
       "seconds", and the process' CPU (os.wait4; for the local engine it includes its workers,
       which are its children)
Medians over the runs; "per million files" scales the driver's CPU by files copied.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ray_common import actor_pids, driver_env, test_cluster  # noqa: E402
from sample_tree import compare  # noqa: E402

import pcopy  # noqa: E402


def make_src(root: str, files: int, dirs: int = 100) -> None:
    rng = random.Random(1)
    block = rng.randbytes(4096)
    for d in range(dirs):
        os.makedirs(os.path.join(root, f"d{d:03d}"))
    for i in range(files):
        size = 1000 + rng.randrange(200)
        start = rng.randrange(len(block) - size)
        with open(os.path.join(root, f"d{i % dirs:03d}", f"f{i:06d}"), "wb") as fh:
            fh.write(block[start:start + size])


def verified(src: str, dst: str) -> None:
    problems = compare(src, dst)
    if problems:
        raise SystemExit(f"copy differs from SRC: {problems[:3]}")
    shutil.rmtree(dst)


def process_cpu(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None: gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample_actors(seconds_step: float = 0.02) -> None:
    """(Run as a process of its own, so its CPU is not the driver's.) Until stdin closes, the
    last CPU seen of each of pcopy's Ray actors (they are the raylets' children, not the
    driver's: sampled every 20 ms; what one spends in its last 20 ms is missed); then their
    sum on stdout."""
    cpu: dict[int, float] = {}
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        for pid in actor_pids():
            seen = process_cpu(pid)
            if seen is not None:
                cpu[pid] = seen
        stop.wait(seconds_step)
    print(sum(cpu.values()))


def run_api(engine: str, src: str, dst: str, jobs: int) -> dict[str, float]:
    sampler = None
    if engine == "ray":
        sampler = subprocess.Popen([sys.executable, __file__, "--sample-actors"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, env=os.environ)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time()
    started = time.perf_counter()
    report = pcopy.copy(src, dst, jobs=jobs, engine=engine)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    if sampler is not None:
        out, _ = sampler.communicate(b"")
        workers = float(out)
    assert report.exit_code == 0 and report.failed == 0, report
    verified(src, dst)
    return {"files": report.files, "wall": wall, "driver_cpu": cpu, "workers_cpu": workers}


def communicate_unreaped(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Read a process' output to the end without reaping it (os.wait4 then gets its rusage)."""
    assert proc.stdout is not None and proc.stderr is not None
    import selectors

    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    sel = selectors.DefaultSelector()
    for stream in (proc.stdout, proc.stderr):
        sel.register(stream, selectors.EVENT_READ)
    while sel.get_map():
        for key, _ in sel.select():
            data = os.read(key.fd, 65536)
            if data:
                chunks[key.fd].append(data)
            else:
                sel.unregister(key.fileobj)
    return b"".join(chunks[proc.stdout.fileno()]), b"".join(chunks[proc.stderr.fileno()])


def run_cli(engine: str, src: str, dst: str, jobs: int, address: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "pcopy", src, dst, "-j", str(jobs), "--json", "--no-progress"]
    if engine == "ray":
        argv += ["--engine", "ray", "--ray-address", address]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=driver_env())
    out, err = communicate_unreaped(proc)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"pcopy failed ({proc.returncode}): {err.decode()}")
    report = json.loads(out)
    verified(src, dst)
    return {"files": report["files"], "wall": wall, "seconds": report["seconds"],
            "process_cpu": usage.ru_utime + usage.ru_stime}


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sample-actors", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sample_actors:
        sample_actors()
        return 0
    work = tempfile.mkdtemp(prefix="pcopy-raythr-")
    src = os.path.join(work, "src")
    make_src(src, args.files)
    print(f"load before: {os.getloadavg()}", flush=True)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        with test_cluster(nodes=2, cpus=1, connect=True) as cluster:
            for n in range(args.runs):
                for engine in ("local", "ray"):
                    dst = os.path.join(work, f"dst-{engine}-{n}")
                    api = run_api(engine, src, dst, args.jobs)
                    results.setdefault((engine, "api"), []).append(api)
                    print(f"run {n} {engine} api: {json.dumps({k: round(v, 3) for k, v in api.items()})}", flush=True)
                    cli = run_cli(engine, src, dst, args.jobs, cluster.address)
                    results.setdefault((engine, "cli"), []).append(cli)
                    print(f"run {n} {engine} cli: {json.dumps({k: round(v, 3) for k, v in cli.items()})}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load after: {os.getloadavg()}", flush=True)
    print()
    print(f"{args.files} files, -j {args.jobs}, medians of {args.runs} runs")
    print("| engine | API: copy wall | files/s | driver CPU | per million files | workers' CPU |"
          " CLI: wall incl. start-up | report seconds | pcopy process CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for engine in ("local", "ray"):
        api, cli = results[(engine, "api")], results[(engine, "cli")]
        files = median([r["files"] for r in api])
        wall = median([r["wall"] for r in api])
        driver = median([r["driver_cpu"] for r in api])
        workers = median([r["workers_cpu"] for r in api])
        print(f"| {engine} | {wall:.2f} s | {files / wall:,.0f} | {driver:.2f} s | {driver / files * 1e6:,.0f} s |"
              f" {workers:.2f} s | {median([r['wall'] for r in cli]):.2f} s |"
              f" {median([r['seconds'] for r in cli]):.2f} s | {median([r['process_cpu'] for r in cli]):.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
