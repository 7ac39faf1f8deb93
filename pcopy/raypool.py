"""RayPool: the pool interface of pool.WorkerPool, on Ray actors, for `--engine ray`.

The executor talks to a pool through five calls (pool.EnginePool): apply_async, poll, resubmit,
close, terminate; plus a progress channel it drains with get_nowait. WorkerPool does that with
local processes; RayPool with one Ray actor per worker, spread over the nodes the probe checked.

Why actors and not ray.util.multiprocessing.Pool: that Pool runs results through a thread of its
own (callbacks would run there, and the executor is single-threaded), does not replace a worker
that died, and when one dies every call queued behind it fails with the same ActorDiedError, so
the call that was running cannot be told from the ones only caught up in the death. With one
actor per worker and its calls kept in the order they were sent, the driver knows exactly which
calls an actor had, and that the first of them was the one running (an actor runs its calls one
at a time, in order): the same on_lost(calls, culprit) that WorkerPool gives.

What each process owns, and what its death can leave held:
- The driver (pcopy) owns the actor handles and all bookkeeping. Ray owns the actors' lives:
  they are not detached, so when the driver dies (even by SIGKILL) Ray kills them.
- An actor owns the temporary file it is writing. Killed (SIGKILL, OOM, its node gone) it leaves
  it behind: the executor then calls on_abandoned for its jobs, which removes leftovers from the
  driver (the file system is shared: that is a precondition, checked by check_nodes).
- The progress queue is an actor of its own; losing it costs the bar, never the copy.

Signals: actors ignore SIGINT and turn SIGTERM into a clean exit that removes their temporary
file (worker.init_worker runs in the actor's constructor, on its main thread). terminate() sends
SIGTERM to actors whose processes this machine can signal (same kernel, checked by boot id and
pid namespace), then SIGKILL; actors elsewhere get ray.kill, a hard kill, and the executor's
on_abandoned removes what they leave. Nothing here uses os.getppid(): a Ray worker's parent is
the raylet, not pcopy.

Callbacks run in the thread that calls poll(), never in a thread of Ray's.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import functools
import hashlib
import importlib
import logging
import os
import queue
import signal
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pcopy.errors import RefusedError
from pcopy.pool import CALLS_PER_WORKER, Call, CallQueue

if TYPE_CHECKING:
    from pcopy.config import Config
    from pcopy.target import Target

# Stopping (terminate): how long actors on this machine get to leave after SIGTERM (removing
# their temporary file), then after SIGKILL; and how long to wait for Ray to confirm the death
# of actors elsewhere. Bounded so that an interrupted pcopy ends within ~2 s, as with WorkerPool.
TERM_GRACE_S = 1.0
KILL_GRACE_S = 0.5

# The driver asks the progress queue for what workers said at most this often (seconds): each
# look is two round trips (~1 ms each), and the executor drains after every job it submits.
PROGRESS_FETCH_S = 0.1

# At the end of a copy, how long the driver waits for the progress queue's last items (seconds):
# the bar then ends on the true file count; a slow queue costs only that.
PROGRESS_FINAL_S = 2.0

# Actors that die before they ever answered (a node that cannot start them, pcopy missing there)
# are replaced; after this many such deaths per worker the copy stops with an error instead of
# replacing them for ever.
MAX_START_FAILURES_PER_WORKER = 2

# How long to wait for the TCP connection to a Ray address (seconds) before calling ray.init,
# which would retry a dead address for minutes.
CONNECT_CHECK_S = 5.0

# When an actor died on a node, how long the driver waits for that node's raylet to accept a
# TCP connection (seconds) before it counts the node as gone for the rest of the copy.
RAYLET_CHECK_S = 1.0

# How long the probe (check_nodes) waits for every node to answer (seconds): a node has to
# start a worker process for it (~1 s idle, more when busy).
PROBE_TIMEOUT_S = 60.0

# The probe compares a directory's sorted names when it has at most this many entries (reading
# them costs each node one listing); beyond that, only the count.
PROBE_MAX_NAMES = 10_000

# Test hook: a node whose environment (the raylet's, which its workers inherit) sets this
# variable to a path treats that path and everything under it as missing in the probe. It lets
# a one-machine test cluster have a node that "cannot see" DST; nothing else reads it.
PROBE_HIDE_ENV = "PCOPY_RAY_TEST_HIDE"

# The title Ray gives an actor's process is "ray::<class name>": tests find workers by it.
WORKER_CLASS_NAME = "PcopyWorker"


class EngineError(OSError):
    """The Ray engine cannot go on (workers keep dying before they start). An OSError so that
    the CLI reports it in one line (exit 1) like other environment failures."""


def interruption(exc: BaseException) -> BaseException | None:
    """The interrupt (CopyInterruptedError, KeyboardInterrupt: not an Exception) behind exc.
    Ray's blocking calls run Python's signal handlers from Cython code, and what a handler
    raises there comes out wrapped in a SystemError ("returned a result with an exception
    set") with the interrupt as its cause."""
    seen: BaseException | None = exc
    for _ in range(8):  # a short chain; never loop on a cycle
        if seen is None:
            return None
        if not isinstance(seen, Exception):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


F = TypeVar("F", bound=Callable[..., Any])


def passes_interrupts(func: F) -> F:
    """For driver code that calls Ray: an interrupt raised inside a Ray call leaves as itself,
    so the copy is interrupted (130/143), not failed with a SystemError."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            interrupt = interruption(exc)
            if interrupt is None:
                raise
            raise interrupt from None

    return cast(F, wrapper)


def ray_module() -> Any:
    """Ray, imported only for --engine ray (importing it costs 0.2-0.4 s); refused when missing."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise RefusedError("--engine ray needs Ray: pip install 'pcopy[ray]'") from None


# -- progress -------------------------------------------------------------------------------------
class ProgressChannel:
    """Workers put progress tuples (worker._Progress); the driver takes them with get_nowait.

    A ray.util.queue.Queue underneath (a Manager proxy is refused inside Ray workers). The
    driver fetches everything queued at most every PROGRESS_FETCH_S and hands it out one by
    one. Pickled (to the actors), only the queue travels."""

    def __init__(self, ray_queue: Any) -> None:
        self.ray_queue = ray_queue
        self.items: deque[Any] = deque()
        self.fetched = 0.0
        self.size_ref: Any = None  # a qsize() asked and not yet answered

    def __getstate__(self) -> dict[str, Any]:
        return {"ray_queue": self.ray_queue}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["ray_queue"])  # type: ignore[misc]

    def put(self, item: Any) -> None:
        # Waits for the queue's answer (~1 ms; a worker puts at most every 0.1 s and once per
        # job): what a job said is queued before its result reaches the driver, so the last
        # drain (take_all) finds it.
        ray_module().get(self.ray_queue.actor.put_nowait.remote(item))

    @passes_interrupts
    def get_nowait(self) -> Any:
        if not self.items:
            self._fetch()
        if not self.items:
            raise queue.Empty
        return self.items.popleft()

    def _fetch(self) -> None:
        """Ask how much is queued, and take it once the answer is in: never waits for the
        queue's actor (it may still be starting), only for the taking (~1 ms)."""
        ray = ray_module()
        if self.size_ref is None:
            now = time.monotonic()
            if now - self.fetched >= PROGRESS_FETCH_S:
                self.fetched = now
                self.size_ref = self.ray_queue.actor.qsize.remote()
            return
        ready, _ = ray.wait([self.size_ref], timeout=0)
        if not ready:
            return
        waiting = ray.get(self.size_ref)
        self.size_ref = None
        if waiting:
            self.items.extend(ray.get(self.ray_queue.actor.get_nowait_batch.remote(waiting)))

    def take_all(self) -> list[Any]:
        """Everything still queued (the workers are done): what the last drain missed."""
        ray = ray_module()
        items = list(self.items)
        self.items.clear()
        with contextlib.suppress(Exception):
            waiting = ray.get(self.ray_queue.actor.qsize.remote(), timeout=PROGRESS_FINAL_S)
            if waiting:
                items += ray.get(self.ray_queue.actor.get_nowait_batch.remote(waiting),
                                 timeout=PROGRESS_FINAL_S)
        return items

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            ray_module().kill(self.ray_queue.actor)


def progress_channel() -> ProgressChannel:
    """A progress channel whose queue actor lives on the driver's node (the driver drains it)."""
    ray = ray_module()
    queue_class = importlib.import_module("ray.util.queue").Queue
    here = ray.get_runtime_context().get_node_id()
    return ProgressChannel(queue_class(actor_options={"num_cpus": 0, "scheduling_strategy": on_node(here, soft=True)}))


def on_node(node_id: str, soft: bool = False) -> Any:
    """Ray's scheduling strategy that pins a task or actor to one node."""
    strategies = importlib.import_module("ray.util.scheduling_strategies")
    return strategies.NodeAffinitySchedulingStrategy(node_id, soft=soft)


# -- the actor --------------------------------------------------------------------------------------
class PcopyWorker:
    """One worker: the initializer once, then calls in the order they come (max_concurrency 1)."""

    def __init__(self, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
        if initializer is not None:
            initializer(*initargs)

    def where(self) -> tuple[int, int | None, str | None]:
        """(pid, process start time, kernel identity): what terminate needs to signal it."""
        return os.getpid(), _start_time(os.getpid()), _kernel()

    def run(self, func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        return func(*args)


def _kernel() -> str | None:
    """Which kernel and pid namespace this process lives in: two processes with the same answer
    can signal each other by pid. None where the OS does not say (then pcopy uses ray.kill)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            boot = fh.read().strip()
        return f"{boot} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """The process' start time in clock ticks (field 22 of /proc/PID/stat), or None if it is gone
    or a zombie: with the pid, it names one process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2:].split()  # after "(comm)", which may hold spaces
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


class _Actor:
    __slots__ = ("calls", "handle", "info", "info_ref", "node_id")

    def __init__(self, handle: Any, node_id: str | None) -> None:
        self.handle = handle
        self.node_id = node_id
        self.info_ref = handle.where.remote()  # its first call: answered once it is ready
        self.info: tuple[int, int | None, str | None] | None = None
        self.calls: deque[tuple[Call, Any]] = deque()  # (call, ObjectRef), in the order sent


class RayPool(CallQueue):
    """apply_async(func, args, callback, error_callback) on up to `processes` Ray actors,
    started as the work needs them (as pool.WorkerPool does): a new one only when every running
    actor is busy, so a small copy on a large cluster does not start an actor per CPU.

    on_lost(calls, culprit) is called (from poll) when an actor dies: calls are the ones it had
    not answered; culprit the one it was running (None if it died before it ever started, e.g.
    its node could not start it). The lost calls are the caller's to send again (resubmit) or
    give up; a new actor takes them. The same contract as pool.WorkerPool."""

    def __init__(self, processes: int, initializer: Callable[..., None] | None = None,
                 initargs: tuple[Any, ...] = (),
                 on_lost: Callable[[list[Call], Call | None], None] = lambda calls, culprit: None,
                 progress: bool = False,
                 on_progress: Callable[..., None] | None = None) -> None:
        """progress: carry workers' progress on a Ray queue (self.progress_queue, passed to the
        initializer as its last argument); on_progress gets, at close(), what is still on it
        (the sums of each field of the messages)."""
        self.ray = ray_module()
        self.on_progress = on_progress
        self.progress_queue: ProgressChannel | None = progress_channel() if progress else None
        if self.progress_queue is not None:
            initargs = (*initargs, self.progress_queue)
        super().__init__(processes, on_lost)
        self.initializer = initializer
        self.initargs = initargs
        self.workers: list[_Actor] = []
        self.start_failures = 0
        self.max_start_failures = MAX_START_FAILURES_PER_WORKER * processes
        self.kernel = _kernel()
        # No restarts and no retries by Ray: a lost call is the executor's to retry, with its
        # budget. No CPU reserved in Ray's accounting: copying waits on storage, -j decides how
        # many workers run, and a replacement never waits for CPUs its dead peer still holds.
        self.actor_class = self.ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0,
                                           max_concurrency=1)(PcopyWorker)
        # ask_raylets: whether this machine can reach the nodes' raylets (_gone_raylets).
        self.slots, self.ask_raylets = _node_slots(self.ray)
        self.started = 0
        self.suspect_nodes: set[str] = set()  # nodes an actor died on: alive still?
        # Nodes found gone (Ray could not place an actor there, or their raylet stopped
        # answering after an actor died there): they take no more actors in this copy.
        self.gone_nodes: set[str] = set()

    # -- starting -------------------------------------------------------------------------------
    def _start_actor(self) -> _Actor:
        """The next actor goes to the next slot's node (nodes take actors in proportion to their
        CPUs, round-robin), skipping nodes that are gone."""
        node_id = None
        live: dict[str, NodeInfo] | None = None
        for k in range(len(self.slots)):
            candidate = self.slots[(self.started + k) % len(self.slots)]
            if candidate in self.gone_nodes:
                continue
            if candidate in self.suspect_nodes:
                live = {n.node_id: n for n in usable_nodes(self.ray)} if live is None else live
                self.suspect_nodes.discard(candidate)
                if candidate not in live or (self.ask_raylets and not _raylet_answers(live[candidate])):
                    self.gone_nodes.add(candidate)
                    continue
                # (alive: only its actor died)
            node_id = candidate
            break
        else:
            if self.slots:  # never fall back to a node the probe did not approve
                raise EngineError("no Ray node that passed pcopy's probe is alive any more")
        self.started += 1
        options: dict[str, Any] = {}
        if node_id is not None:
            options["scheduling_strategy"] = on_node(node_id)
        handle = self.actor_class.options(**options).remote(self.initializer, self.initargs)
        return _Actor(handle, node_id)

    # -- calls ----------------------------------------------------------------------------------
    # Ray's calls may wrap an interrupt raised inside them: every entry point unwraps it.
    apply_async = passes_interrupts(CallQueue.apply_async)
    resubmit = passes_interrupts(CallQueue.resubmit)

    def _dispatch(self) -> None:
        while self.backlog:
            worker = min(self.workers, key=lambda w: len(w.calls)) if self.workers else None
            if worker is None or (worker.calls and len(self.workers) < self.max_workers):
                worker = self._start_actor()  # asynchronous: Ray starts it while calls queue
                self.workers.append(worker)
            elif len(worker.calls) >= CALLS_PER_WORKER:
                return
            call = self.backlog.popleft()
            try:
                ref = worker.handle.run.remote(call.func, call.args)
            except Exception as exc:  # arguments Ray cannot serialise: that call's own failure
                if call.error_callback is not None:
                    call.error_callback(exc)
                continue
            worker.calls.append((call, ref))

    # -- results --------------------------------------------------------------------------------
    @passes_interrupts
    def poll(self, timeout: float) -> None:
        """Wait up to timeout for results (or deaths) and deliver them."""
        refs = [ref for w in self.workers for _, ref in w.calls]
        refs += [w.info_ref for w in self.workers if w.info is None]
        if not refs:
            if timeout > 0:
                time.sleep(timeout)
            return
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
        if not ready:
            return
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        done = set(ready)
        for worker in list(self.workers):
            if worker in self.workers:
                self._read(worker, done)
        self._dispatch()

    def _read(self, worker: _Actor, done: set[Any]) -> None:
        errors = self.ray.exceptions
        if worker.info is None and worker.info_ref in done:
            try:
                worker.info = self.ray.get(worker.info_ref)
            except errors.RayError as exc:
                self._lost(worker, unplaceable=_unplaceable(exc))
                return
        while worker.calls and worker.calls[0][1] in done:
            call, ref = worker.calls[0]
            try:
                value = self.ray.get(ref)
            except errors.RayTaskError as exc:  # the call raised (run_job never does): its failure
                worker.calls.popleft()
                if call.error_callback is not None:
                    call.error_callback(exc)
                continue
            except errors.RayError:  # the actor (or its node) died: ActorDiedError and kin
                self._lost(worker)
                return
            worker.calls.popleft()
            if call.callback is not None:
                call.callback(value)

    def _lost(self, worker: _Actor, unplaceable: bool = False) -> None:
        """An actor died: hand its calls back (a new actor is started when there is work for
        it). The first call was running, unless the actor never started (then none was: it is
        no call's fault). unplaceable: Ray could not place it on its node because the node is
        gone; that node takes no more actors, and it is not a start failure (_start_actor stops
        the copy when no approved node is left)."""
        self.workers.remove(worker)
        calls = [call for call, _ in worker.calls]
        worker.calls.clear()
        with contextlib.suppress(Exception):
            self.ray.kill(worker.handle, no_restart=True)  # half-dead (unreachable): make sure
        if worker.info is None and not unplaceable and worker.node_id is not None:
            # Never started: Ray does not always say that its node was gone (an actor pinned to
            # a dead node can also come back as a plain death). Ask: a node that is gone is
            # not a start failure of pcopy's workers.
            live = {n.node_id: n for n in usable_nodes(self.ray)}
            node = live.get(worker.node_id)
            unplaceable = node is None or (self.ask_raylets and not _raylet_answers(node))
        if worker.node_id is not None:
            (self.gone_nodes if unplaceable else self.suspect_nodes).add(worker.node_id)
        culprit = calls[0] if calls and worker.info is not None else None
        if worker.info is None and not unplaceable:
            self.start_failures += 1
            if self.start_failures > self.max_start_failures:
                raise EngineError(f"Ray workers keep dying before they start ({self.start_failures} "
                                  "so far): see the Ray logs of the nodes")
        self.on_lost(calls, culprit)

    # -- stopping -------------------------------------------------------------------------------
    def close(self) -> None:
        """All calls answered: the actors are idle and hold nothing; ray.kill them. What they
        said last on the progress queue goes to on_progress."""
        self.closed = True
        for worker in self.workers:
            with contextlib.suppress(Exception):
                self.ray.kill(worker.handle, no_restart=True)
        self.workers = []
        if self.progress_queue is not None:
            items = self.progress_queue.take_all()
            if items and self.on_progress is not None:
                self.on_progress(*(sum(column) for column in zip(*items, strict=True)))
            self.progress_queue.shutdown()

    def terminate(self) -> list[Call]:
        """Stop now: SIGTERM to the actors this machine can signal (they remove the temporary
        file they were writing), SIGKILL after TERM_GRACE_S; ray.kill for the others, waiting
        up to KILL_GRACE_S for Ray to report them dead. Returns the calls never answered."""
        self.closed = True
        unanswered = [call for w in self.workers for call, _ in w.calls] + list(self.backlog)
        self.backlog.clear()
        local: list[tuple[int, int]] = []
        remote: list[_Actor] = []
        for worker in self.workers:
            if worker.info is None:
                with contextlib.suppress(Exception):  # started by now? a quick look only
                    ready, _ = self.ray.wait([worker.info_ref], timeout=0)
                    if ready:
                        worker.info = self.ray.get(worker.info_ref)
            process = self._local_process(worker)
            if process is not None:
                local.append(process)
            else:
                remote.append(worker)
        for worker in remote:
            with contextlib.suppress(Exception):
                self.ray.kill(worker.handle, no_restart=True)
        _signal_all(local, signal.SIGTERM)
        alive = _wait_gone(local, time.monotonic() + TERM_GRACE_S)
        _signal_all(alive, signal.SIGKILL)
        _wait_gone(alive, time.monotonic() + KILL_GRACE_S)
        pending = [ref for w in remote for _, ref in w.calls] + [w.info_ref for w in remote if w.info is None]
        if pending:
            with contextlib.suppress(Exception):  # answered (with ActorDiedError) once Ray knows
                self.ray.wait(pending, num_returns=len(pending), timeout=KILL_GRACE_S)
        for worker in self.workers:  # Ray's own bookkeeping: the local ones are gone already
            with contextlib.suppress(Exception):
                self.ray.kill(worker.handle, no_restart=True)
        self.workers = []
        if self.progress_queue is not None:
            self.progress_queue.shutdown()
        return unanswered

    def _local_process(self, worker: _Actor) -> tuple[int, int] | None:
        """(pid, start time) of the actor's process if this machine can signal it: it answered
        where() from this kernel and pid namespace."""
        pid, start, kernel = worker.info if worker.info is not None else (0, None, None)
        if kernel is not None and kernel == self.kernel and start is not None:
            return (pid, start)
        return None


def _unplaceable(exc: BaseException) -> bool:
    """Whether Ray refused to place an actor because the node it is pinned to is gone (or will
    never fit it), as opposed to the actor dying."""
    unschedulable = ray_module().exceptions.ActorUnschedulableError
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, unschedulable):
            return True
        seen = getattr(seen, "cause", None) or seen.__cause__
    return False


def _signal_all(processes: list[tuple[int, int]], signum: int) -> None:
    for pid, start in processes:
        if _start_time(pid) == start:  # still that process, not a reused pid
            with contextlib.suppress(OSError):
                os.kill(pid, signum)


def _wait_gone(processes: list[tuple[int, int]], deadline: float) -> list[tuple[int, int]]:
    """Wait (polling: they are not our children) until the processes are gone; the rest."""
    while True:
        processes = [(pid, start) for pid, start in processes if _start_time(pid) == start]
        if not processes or time.monotonic() >= deadline:
            return processes
        time.sleep(0.01)


# -- nodes ------------------------------------------------------------------------------------------
# Node ids check_nodes approved in this session (None: not checked; every usable node is used).
_checked_nodes: set[str] | None = None


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    cpus: float
    port: int = 0  # its raylet's (NodeManagerPort); 0: not known

    @property
    def name(self) -> str:
        return f"{self.address} (id {self.node_id[:8]})"


def usable_nodes(ray: Any) -> list[NodeInfo]:
    """Live nodes with CPUs: where workers go (a head node started with --num-cpus 0, as KubeRay
    often does, takes none, so it need not see SRC and DST)."""
    found = []
    for node in ray.nodes():
        cpus = float(node.get("Resources", {}).get("CPU", 0))
        if node.get("Alive") and cpus > 0:
            found.append(NodeInfo(node["NodeID"], str(node.get("NodeManagerAddress", "?")), cpus,
                                  int(node.get("NodeManagerPort") or 0)))
    return sorted(found, key=lambda n: n.node_id)


def _raylet_answers(node: NodeInfo) -> bool:
    """Whether the node's raylet accepts a TCP connection. Ray's node table still calls a node
    whose raylet died alive until the GCS's health checks give up (12-16 s measured here), and
    an actor pinned to it meanwhile waits that long before it fails. A raylet that is gone
    refuses at once (its machine up) or does not answer (its machine down)."""
    if not node.port:
        return True  # (no port known: trust the node table)
    try:
        socket.create_connection((node.address, node.port), timeout=RAYLET_CHECK_S).close()
    except OSError:
        return False
    return True


def _gone_raylets(nodes: list[NodeInfo]) -> tuple[set[str], bool]:
    """The nodes whose raylet does not answer (_raylet_answers, asked of all at once), and
    whether this machine can tell at all: when none answers (a driver that cannot reach the
    nodes' raylets, e.g. through Ray Client), none is called gone and Ray's node table is
    trusted instead."""
    if not nodes:
        return set(), False
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(nodes))) as threads:
        answers = list(threads.map(_raylet_answers, nodes))
    if not any(answers):
        return set(), False
    return {n.node_id for n, answered in zip(nodes, answers, strict=True) if not answered}, True


def _node_slots(ray: Any) -> tuple[list[str], bool]:
    """Node ids, each as many times as it has CPUs (at least once), interleaved round-robin;
    not those whose raylet is gone by now (_gone_raylets). And whether raylets can be asked
    from here."""
    nodes = [n for n in usable_nodes(ray) if _checked_nodes is None or n.node_id in _checked_nodes]
    gone, can_tell = _gone_raylets(nodes)
    nodes = [n for n in nodes if n.node_id not in gone]
    counts = {n.node_id: max(1, int(n.cpus)) for n in nodes}
    slots: list[str] = []
    while any(counts.values()):
        for node_id, left in counts.items():
            if left:
                slots.append(node_id)
                counts[node_id] = left - 1
    return slots, can_tell


# -- the probe: does every node see SRC and DST? ---------------------------------------------------
def _hidden(path: str) -> bool:
    hide = os.environ.get(PROBE_HIDE_ENV)
    if not hide:
        return False
    return path == hide or path.startswith(hide.rstrip(os.sep) + os.sep)


def path_identity(path: str) -> str:
    """What is at path, in a form equal on every machine that sees the same file system there:
    the kind, and for a file its size and mtime, for a directory its names (inode numbers and
    devices differ between the clients of one network file system, so they are not used)."""
    if _hidden(path):
        return "missing: " + os.strerror(errno.ENOENT)
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            names: list[str] = []
            with os.scandir(path) as listing:
                for item in listing:
                    names.append(item.name)
                    if len(names) > PROBE_MAX_NAMES:
                        return f"directory with more than {PROBE_MAX_NAMES} entries"
            digest = hashlib.blake2b("\0".join(sorted(names)).encode("utf-8", "surrogateescape"),
                                     digest_size=8).hexdigest()
            return f"directory of {len(names)} entries ({digest})"
        if stat.S_ISREG(st.st_mode):
            return f"file of {st.st_size} bytes, mtime {st.st_mtime_ns}"
        return f"special file (mode {st.st_mode:o})"
    except OSError as exc:
        return "missing: " + (exc.strerror or str(exc))


def existing_ancestor(path: str) -> str:
    """path itself if it exists, else its nearest existing parent directory."""
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def probe_paths(src: str, dst: str, write: bool) -> dict[str, Any]:
    """What one node sees at SRC and at DST (or DST's nearest existing parent)."""
    from pcopy import __version__

    writable = True
    if write:
        writable = not _hidden(dst) and os.access(dst, os.W_OK | os.X_OK)
    return {"version": __version__, "uid": os.geteuid() if hasattr(os, "geteuid") else -1,
            "host": socket.gethostname(), "src": path_identity(src), "dst": path_identity(dst),
            "writable": writable}


@passes_interrupts
def check_nodes(target: Target, config: Config) -> list[NodeInfo]:
    """Refuse (RefusedError: exit 2, nothing written) unless every node that may run workers
    sees SRC and DST as this machine does, can write DST, runs pcopy (the same version) and as
    the same user. One probe task per node, pinned to it."""
    global _checked_nodes
    ray = ray_module()
    nodes = usable_nodes(ray)
    if not nodes:
        raise RefusedError("the Ray cluster has no live node with CPUs to run workers on")
    dst = existing_ancestor(target.dst)
    write = not config.dry_run
    expected = probe_paths(target.src, dst, write)
    task = ray.remote(num_cpus=0, max_retries=0)(probe_paths)
    # A node that died moments ago is still alive in Ray's node table (until the GCS's health
    # checks give up: 12-16 s measured), and a probe pinned to it waits that long: a node whose
    # raylet refuses connections is gone, and takes no workers (not a refusal).
    gone, _ = _gone_raylets(nodes)
    refs = {task.options(scheduling_strategy=on_node(n.node_id)).remote(target.src, dst, write): n
            for n in nodes if n.node_id not in gone}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    problems: list[str] = []
    for ref in late:
        ray.cancel(ref, force=True)
        problems.append(f"node {refs[ref].name} did not answer pcopy's probe within {PROBE_TIMEOUT_S:.0f} s")
    for ref in ready:
        node = refs[ref]
        try:
            seen = ray.get(ref)
        except ray.exceptions.TaskUnschedulableError:
            # The node died meanwhile (Ray's scheduler knows before its node table does).
            gone.add(node.node_id)
            continue
        except ray.exceptions.RayError as exc:
            problems.append(f"pcopy cannot run on node {node.name} (is it installed there?): "
                            f"{_first_line(exc)}")
            continue
        problem = _compare(node, expected, seen, target.src, dst)
        if problem is not None:
            problems.append(problem)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise RefusedError(problems[0] + more)
    nodes = [n for n in nodes if n.node_id not in gone]
    if not nodes:
        raise RefusedError("the Ray cluster has no live node with CPUs to run workers on")
    _checked_nodes = {n.node_id for n in nodes}
    return nodes


def _compare(node: NodeInfo, expected: dict[str, Any], seen: dict[str, Any], src: str,
             dst: str) -> str | None:
    from pcopy.report import escape

    where = f"node {node.name}"
    if seen["version"] != expected["version"]:
        return f"{where} runs pcopy {seen['version']}, this is pcopy {expected['version']}"
    if seen["uid"] != expected["uid"]:
        return f"{where} runs Ray workers as uid {seen['uid']}, pcopy runs as uid {expected['uid']}"
    for key, path in (("src", src), ("dst", dst)):
        if seen[key] != expected[key]:
            name = "SRC" if key == "src" else "DST"
            if seen[key].startswith("missing"):
                return f"{where} cannot see {name} {escape(path)}: {seen[key][len('missing: '):]}"
            return (f"{where} sees something else at {name} {escape(path)} than this machine "
                    f"({seen[key]}, here: {expected[key]}): not the same shared file system?")
    if not seen["writable"]:
        return f"{where} cannot write DST {escape(dst)}: {os.strerror(errno.EACCES)}"
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # A task error's message ends with the cause ("ModuleNotFoundError: No module named ...").
    return lines[-1] if lines else type(exc).__name__


# -- the session ------------------------------------------------------------------------------------
@contextlib.contextmanager
def ray_session(target: Target, config: Config, jobs_given: bool) -> Iterator[Config]:
    """Connect to Ray (config.ray_address, or Ray's convention), check every node, and yield the
    config to copy with (-j not given: as many workers as the usable nodes have CPUs). Leaves
    Ray as it found it: a connection pcopy made is closed (a local Ray it started stops)."""
    global _checked_nodes
    if config.bwlimit_bytes:
        # Its shared budget is a file in this machine's temporary directory, paced by this
        # machine's clock: workers on other nodes could not share it.
        raise RefusedError("--bwlimit is not supported with --engine ray")
    ray = ray_module()
    connected = False
    if not ray.is_initialized():
        _connect(ray, config.ray_address)
        connected = True
    notices = _silence_driver_notices(ray) if connected else None
    try:
        nodes = check_nodes(target, config)
        if not jobs_given:
            config = replace(config, jobs=max(1, int(sum(n.cpus for n in nodes))))
        yield config
    finally:
        _checked_nodes = None
        if connected:
            with contextlib.suppress(Exception):
                ray.shutdown()
        if notices is not None:
            notices()


def _silence_driver_notices(ray: Any) -> Callable[[], None] | None:
    """A connection pcopy made is pcopy's: Ray's driver prints notices from the raylet ("A worker
    died or was killed ...") on stdout from a thread of its own, which would break --json and
    the one-line reports. pcopy reports lost work itself, so they are dropped while the copy
    runs. Returns what undoes it (None where this Ray has no such printer)."""
    module = getattr(getattr(ray, "_private", None), "worker", None)
    printer = getattr(module, "print_to_stdstream", None)
    if module is None or printer is None:
        return None

    def drop(data: Any, ignore_prefix: bool) -> None:
        return None

    module.print_to_stdstream = drop

    def restore() -> None:
        module.print_to_stdstream = printer

    return restore


def _connect(ray: Any, address: str | None) -> None:
    """ray.init, quietly (no dashboard, no worker logs on pcopy's stderr), keeping pcopy's own
    SIGINT/SIGTERM handlers (ray.init installs a SIGTERM handler that calls sys.exit)."""
    where = address or os.environ.get("RAY_ADDRESS") or ""
    _check_reachable(where)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=True)
    except Exception as exc:
        interrupt = interruption(exc)
        if interrupt is not None:
            raise interrupt from None
        raise RefusedError(f"cannot connect to Ray at {where or 'the local Ray'}: "
                           f"{_first_line(exc)}") from None
    finally:
        if threading.current_thread() is threading.main_thread():  # (only it may, and only it did)
            for sig, handler in saved.items():
                if handler is not None:
                    signal.signal(sig, handler)


def _check_reachable(address: str) -> None:
    """Refuse at once when a HOST:PORT address does not accept connections: ray.init would
    retry for minutes, in C++ code where no signal handler runs (Ctrl-C would wait too)."""
    if not address or "://" in address or address in ("auto", "local"):
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not host or not port.isdigit():
        return  # Ray's own parser says what is wrong
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_CHECK_S).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise RefusedError(f"cannot connect to Ray at {address}: {reason}") from None
