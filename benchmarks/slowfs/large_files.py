"""Large files on slow storage (issue 11): one big file, and a few 64 MiB files, copied local -> slow,
slow -> local and slow -> slow through the latency mount (benchmarks/slowfs), by cp, pcopy's default
(one stream per file) and pcopy with byte-range jobs (--chunk-size) at several -j; and, for what
one worker could do with threads, N threads doing positional reads/writes over sub-ranges of ONE
file from one process. Every copy is compared with its source (cmp). Prints markdown tables.

    python benchmarks/slowfs/large_files.py                       # 256 MiB, 0.2/1/5 ms, 3 reps
    python benchmarks/slowfs/large_files.py --delays 1 --size 1G --reps 1 --no-multi
    python benchmarks/slowfs/large_files.py --parts threads --threads 1,4,16

Columns: median wall seconds (min-max over reps), MB/s (10^6 bytes/s of file data), the mount's
requests of the run (READ, WRITE, GETATTR, COPY_FILE_RANGE, all), bytes per READ/WRITE request,
and the average number of requests in flight (busy time / wall time). Writes report.md and
results.json to --out (default benchmarks/work/large-results/, untracked).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
REPO = BENCH.parent
sys.path.insert(0, str(HERE))
from slowmount import SlowMount, unavailable_reason  # noqa: E402  (sibling script)

WORK = BENCH / "work" / "large"
DEFAULT_OUT = BENCH / "work" / "large-results"
MIB = 1024 * 1024
BLOCK = MIB  # the threads' pread/pwrite size (= the mount's max_write)


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def human(n: int) -> str:
    for unit, size in (("G", 1024 * MIB), ("M", MIB), ("K", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def make_file(path: Path, size: int, seed: int) -> None:
    """size bytes: one random MiB, each copy stamped with its block number and the seed, so a
    range written at the wrong offset fails cmp."""
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    block = bytearray(random.Random(seed).randbytes(MIB))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        for i in range(0, size, MIB):
            block[:16] = i.to_bytes(8, "little") + seed.to_bytes(8, "little")
            fh.write(block[: min(MIB, size - i)])
    os.replace(tmp, path)


@dataclass
class Workload:
    name: str  # "1x256M", "4x64M"
    files: list[str]  # relative names under the workload's directory
    size: int  # bytes per file


def workload_bytes(name: str) -> int:
    """The bytes of a workload named like "4x64M"."""
    count, size = name.split("x", 1)
    return int(count) * parse_size(size)


def workloads(size: int, multi: int, multi_size: int) -> list[Workload]:
    out = [Workload(f"1x{human(size)}", ["f0.bin"], size)]
    if multi:
        out.append(Workload(f"{multi}x{human(multi_size)}", [f"f{i}.bin" for i in range(multi)], multi_size))
    return out


def prepare(wl: Workload, backing: Path) -> Path:
    """The workload's local source directory, and the same bytes under BACKING/src/<name>."""
    local = WORK / "src" / wl.name
    for i, name in enumerate(wl.files):
        make_file(local / name, wl.size, seed=i + 1)
    remote = backing / "src" / wl.name
    if not remote.exists():
        remote.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(local), str(remote)], check=True)
    return local


@dataclass
class Run:
    delay_ms: float
    case: str
    workload: str
    tool: str
    seconds: float
    ok: bool
    error: str = ""
    ops: dict[str, int] = field(default_factory=dict)
    busy_ns: int = 0
    max_in_flight: int = 0


@dataclass
class Setup:
    mount: SlowMount
    local_src: Path  # local source directory of the workload
    wl: Workload

    def paths(self, case: str) -> tuple[Path, Path, Path, Path]:
        """(source dir as the tool sees it, destination dir as the tool sees it, source dir on
        disk, destination dir on disk) for a case."""
        name = self.wl.name
        slow_src, slow_dst = self.mount.mountpoint / "src" / name, self.mount.mountpoint / "dst" / name
        disk_src, disk_dst = self.mount.backing / "src" / name, self.mount.backing / "dst" / name
        local_dst = WORK / "local-dst" / name
        if case == "local-slow":
            return self.local_src, slow_dst, self.local_src, disk_dst
        if case == "slow-local":
            return slow_src, local_dst, disk_src, local_dst
        return slow_src, slow_dst, disk_src, disk_dst


ArgvOf = Callable[[Path, Path], list[str]]


def command_tools(wl: Workload, pcopy: str, jobs: list[int], chunks: list[int]) -> dict[str, ArgvOf]:
    """name -> argv for copying the workload's directory SRC to DST (a new directory)."""
    tools: dict[str, ArgvOf] = {
        "cp": lambda s, d: ["cp", "-a", str(s), str(d)],
        "pcopy": lambda s, d: [pcopy, str(s), str(d)],
    }
    # The read/write loop with a buffer of the mount's max_write (1 MiB), instead of the kernel
    # copy (sendfile writes through a 64 KiB pipe: 64 KiB WRITE requests).
    tools["pcopy --buffer-size 1M"] = lambda s, d: [pcopy, "--buffer-size", "1M", str(s), str(d)]
    if len(wl.files) > 1:
        for j in jobs:
            if j != 2:
                tools[f"pcopy -j {j}"] = lambda s, d, j=j: [pcopy, "-j", str(j), str(s), str(d)]
                tools[f"pcopy -j {j} --buffer-size 1M"] = (
                    lambda s, d, j=j: [pcopy, "-j", str(j), "--buffer-size", "1M", str(s), str(d)])
    for c in chunks:
        if c >= wl.size:
            continue
        for j in jobs:
            tools[f"pcopy -j {j} --chunk-size {human(c)}"] = (
                lambda s, d, j=j, c=c: [pcopy, "-j", str(j), "--chunk-size", str(c), str(s), str(d)])
    return tools


def run_command(argv: list[str], timeout: float) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return time.perf_counter() - started, f"timeout after {timeout} s"
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        return elapsed, f"exit {proc.returncode}: {err.decode(errors='replace').strip()[:300]}"
    return elapsed, ""


def threaded_copy(src: Path, dst: Path, threads: int, use_cfr: bool = False, sequential: bool = False) -> None:
    """src to dst by `threads` threads of one process, each copying its own contiguous sub-range
    with os.pread/os.pwrite of BLOCK bytes (or os.copy_file_range with offsets, for slow -> slow);
    dst is created and sized first, as pcopy's runner pre-sizes a split file. sequential: advise
    POSIX_FADV_SEQUENTIAL on the source first, as cp does (Linux doubles the readahead window)."""
    size = src.stat().st_size
    sfd = os.open(src, os.O_RDONLY)
    if sequential:
        os.posix_fadvise(sfd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(dfd, size)
        bounds = [size * i // threads // BLOCK * BLOCK for i in range(threads)] + [size]
        errors: list[BaseException] = []

        def part(start: int, end: int) -> None:
            try:
                pos = start
                while pos < end:
                    if use_cfr:
                        n = os.copy_file_range(sfd, dfd, end - pos, pos, pos)
                    else:
                        data = os.pread(sfd, min(BLOCK, end - pos), pos)
                        n = len(data)
                        view = memoryview(data)
                        done = 0
                        while done < n:
                            done += os.pwrite(dfd, view[done:], pos + done)
                    if n == 0:
                        raise OSError(f"source ended early at {pos}")
                    pos += n
            except BaseException as exc:  # reported by the caller
                errors.append(exc)

        workers = [threading.Thread(target=part, args=(bounds[i], bounds[i + 1])) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if errors:
            raise errors[0]
    finally:
        os.close(sfd)
        os.close(dfd)


def cmp_dirs(src: Path, dst: Path, names: list[str]) -> str:
    for name in names:
        done = subprocess.run(["cmp", "-s", str(src / name), str(dst / name)], check=False)
        if done.returncode != 0:
            return f"cmp: {dst / name} differs from {src / name}"
    return ""


def clear(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def measure(setup: Setup, case: str, tool: str, action: Callable[[Path, Path], str]) -> Run:
    src, dst, disk_src, disk_dst = setup.paths(case)
    clear(disk_dst)
    disk_dst.parent.mkdir(parents=True, exist_ok=True)
    os.sync()
    mount = setup.mount
    mount.reset()
    started = time.perf_counter()
    error = action(src, dst)
    seconds = time.perf_counter() - started
    stats = mount.counters()
    if not error:
        error = cmp_dirs(disk_src, disk_dst, setup.wl.files)
    return Run(mount.delay_ms, case, setup.wl.name, tool, seconds, not error, error,
               {k: int(v) for k, v in stats["ops"].items() if v}, int(stats["busy_ns"]),
               int(stats.get("max_in_flight", 0)))


def command_action(argv_of: ArgvOf, timeout: float) -> Callable[[Path, Path], str]:
    def act(src: Path, dst: Path) -> str:
        return run_command(argv_of(src, dst), timeout)[1]
    return act


def threads_action(threads: int, names: list[str], use_cfr: bool,
                   sequential: bool = False) -> Callable[[Path, Path], str]:
    def act(src: Path, dst: Path) -> str:
        try:
            dst.mkdir()
            for name in names:
                threaded_copy(src / name, dst / name, threads, use_cfr, sequential)
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        return ""
    return act


# ------------------------------------------------------------------------------------------------
# Report


CASES = ("local-slow", "slow-local", "slow-slow")


def tool_rank(tool: str) -> tuple[int, int, int]:
    """cp, pcopy, pcopy -j N, pcopy -j N --chunk-size C (by C, then N), N threads (by N)."""
    words = tool.split()
    if tool == "cp":
        return (0, 0, 0)
    if tool == "pcopy":
        return (1, 0, 0)
    if tool == "pcopy --buffer-size 1M":
        return (1, 1, 0)
    if "--chunk-size" in words:
        return (3, parse_size(words[-1]), int(words[2]))
    if words[0] == "pcopy":
        return (2, int(words[2]), int("--buffer-size" in words))
    return (4, int(words[0]), int(words[-1] == "fadvise"))


def summarize(runs: list[Run], size_of: dict[str, int]) -> list[str]:
    groups: dict[tuple[float, str, str, str], list[Run]] = {}
    for r in sorted(runs, key=lambda r: (r.delay_ms, -size_of[r.workload], r.workload,
                                         CASES.index(r.case) if r.case in CASES else 9, tool_rank(r.tool))):
        groups.setdefault((r.delay_ms, r.workload, r.case, r.tool), []).append(r)
    lines = ["| delay ms | workload | case | tool | median s | min-max | MB/s | READ | WRITE | GETATTR | "
             "COPY_FILE_RANGE | all | KiB/READ | KiB/WRITE | in flight |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (delay, wl, case, tool), rs in groups.items():
        good = [r for r in rs if r.ok]
        if not good:
            lines.append(f"| {delay:g} | {wl} | {case} | {tool} | FAILED: {rs[0].error} | | | | | | | | | | |")
            continue
        secs = sorted(r.seconds for r in good)
        med = statistics.median(secs)
        mid = sorted(good, key=lambda r: r.seconds)[len(good) // 2]  # the median run's counters
        ops = mid.ops
        reads, writes = ops.get("READ", 0), ops.get("WRITE", 0)
        total = size_of[wl]
        per_read = f"{total / reads / 1024:.0f}" if reads else "–"
        per_write = f"{total / writes / 1024:.0f}" if writes else "–"
        flight = mid.busy_ns / 1e9 / mid.seconds
        failed = f" ({len(rs) - len(good)} failed)" if len(good) < len(rs) else ""
        lines.append(f"| {delay:g} | {wl} | {case} | {tool}{failed} | {med:.2f} | {secs[0]:.2f}-{secs[-1]:.2f} | "
                     f"{total / med / 1e6:.0f} | {reads} | {writes} | {ops.get('GETATTR', 0)} | "
                     f"{ops.get('COPY_FILE_RANGE', 0)} | {sum(ops.values())} | {per_read} | {per_write} | "
                     f"{flight:.1f} |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--delays", default="0.2,1,5", help="ms per request, comma-separated")
    p.add_argument("--size", default="256M", help="the one large file")
    p.add_argument("--multi", type=int, default=4, help="how many files of --multi-size (0: none)")
    p.add_argument("--multi-size", default="64M")
    p.add_argument("--no-multi", action="store_true")
    p.add_argument("--cases", default="local-slow,slow-local,slow-slow")
    p.add_argument("--parts", default="commands,threads", help="commands (cp, pcopy), threads, or both")
    p.add_argument("--jobs", default="2,4,8", help="-j values with --chunk-size")
    p.add_argument("--chunks", default="8M,32M", help="--chunk-size values")
    p.add_argument("--threads", default="1,2,4,8,16", help="thread counts of the one-process copy")
    p.add_argument("--fadvise", default="1,4",
                   help="thread counts also run with POSIX_FADV_SEQUENTIAL on the source (slow-local)")
    p.add_argument("--tools", default="", help="only tools whose name contains one of these (comma-separated)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--pcopy", default=str(Path(sys.executable).parent / "pcopy"))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--from", dest="from_json", type=Path, nargs="+", default=None,
                   help="measure nothing: print the tables of earlier results.json files, merged")
    p.add_argument("--publish", type=Path, default=None, help="with --from: also write them to this markdown file")
    args = p.parse_args()
    if args.from_json:
        runs_in = [Run(**r) for path in args.from_json for r in json.loads(path.read_text())["runs"]]
        sizes = {r.workload: workload_bytes(r.workload) for r in runs_in}
        table = summarize(runs_in, sizes)
        print("\n".join(table))
        if args.publish:
            head = ["# Large files on the latency mount (benchmarks/slowfs/large_files.py)", "",
                    "Made with `large_files.py --from` from these runs (command, Linux release, load average "
                    "at start and end; 2 shared cores):", ""]
            for path in args.from_json:
                meta = json.loads(path.read_text())["meta"]
                argv = shlex.join(["large_files.py", *meta["argv"][1:]])
                load = f"{meta['loadavg_start'][0]:.1f} -> {meta.get('loadavg_end', ['?'])[0]:.1f}"
                head.append(f"- `{argv}` (Linux {meta['uname']}, load {load})")
            head += ["", "Seconds are medians over the runs (min-max); request counts and in-flight are those of "
                     "the median run; MB/s is file bytes / median seconds. Thread rows run inside the harness "
                     "(no interpreter start-up); see docs/benchmarks-slow.md, section Large files.", ""]
            args.publish.write_text("\n".join(head + table) + "\n")
        return 0

    reason = unavailable_reason()
    if reason:
        print(f"slowfs unavailable: {reason}", file=sys.stderr)
        return 2
    delays = [float(x) for x in args.delays.split(",")]
    cases = args.cases.split(",")
    parts = args.parts.split(",")
    jobs = [int(x) for x in args.jobs.split(",")]
    chunks = [parse_size(x) for x in args.chunks.split(",") if x]
    threads = [int(x) for x in args.threads.split(",")]
    args.fadvise_threads = [int(x) for x in args.fadvise.split(",") if x]
    wls = workloads(parse_size(args.size), 0 if args.no_multi else args.multi, parse_size(args.multi_size))
    size_of = {wl.name: wl.size * len(wl.files) for wl in wls}
    only = [t for t in args.tools.split(",") if t]
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    meta: dict[str, Any] = {"argv": sys.argv, "loadavg_start": os.getloadavg(), "uname": os.uname().release}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for delay in delays:
        backing, mnt = WORK / "backing", WORK / f"mnt-{os.getpid()}"
        with SlowMount(backing, mnt, delay_ms=delay) as mount:
            for wl in wls:
                setup = Setup(mount, prepare(wl, backing), wl)
                actions: dict[tuple[str, str], Callable[[Path, Path], str]] = {}
                for case in cases:
                    if "commands" in parts:
                        for name, argv_of in command_tools(wl, args.pcopy, jobs, chunks).items():
                            actions[(case, name)] = command_action(argv_of, args.timeout)
                    if "threads" in parts and len(wl.files) == 1:
                        for n in threads:
                            cfr = case == "slow-slow"
                            label = f"{n} thread{'s' if n > 1 else ''} {'copy_file_range' if cfr else 'pread/pwrite'}"
                            actions[(case, label)] = threads_action(n, wl.files, cfr)
                            if case == "slow-local" and n in args.fadvise_threads:
                                actions[(case, f"{label} fadvise")] = threads_action(n, wl.files, cfr, True)
                if only:
                    actions = {k: v for k, v in actions.items() if any(t in k[1] for t in only)}
                for rep in range(args.reps):
                    order = list(actions)
                    rng.shuffle(order)
                    for case, tool in order:
                        run = measure(setup, case, tool, actions[(case, tool)])
                        runs.append(run)
                        status = "ok" if run.ok else f"FAILED {run.error}"
                        print(f"{delay:g} ms {wl.name} {case:10s} rep {rep + 1} {tool:32s} {run.seconds:7.2f} s "
                              f"{sum(run.ops.values()):6d} requests {status}", flush=True)
            clear(backing / "dst")
        meta["loadavg_end"] = os.getloadavg()
        table = summarize(runs, size_of)
        (args.out / "results.json").write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]},
                                                          indent=1))
        (args.out / "report.md").write_text("\n".join(table) + "\n")
    print(f"load average at end: {os.getloadavg()}")
    print("\n".join(summarize(runs, size_of)))
    shutil.rmtree(WORK / "local-dst", ignore_errors=True)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
