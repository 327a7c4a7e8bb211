"""Where trials run: devices, slots, the placement rule, and the executors.

A pool is N devices x K slots. The driver loop (sweep.py) is written once over the small
:class:`Executor` interface: submit a trial to a slot, learn when it ends and how (a
result, or :class:`WorkerDied`), replace a slot whose worker died. The driver knows no
executor's library: loky's and Dask's exceptions, device names and start-up are theirs.
:class:`LocalExecutor` gives every slot its own single-worker loky
process pool (joblib's), started with ``CUDA_VISIBLE_DEVICES`` set to the slot's one GPU
(or to nothing, for the CPU), so

- a worker never opens a CUDA context, nor caches MNIST, on another device than its own;
- a worker that dies (out of memory, segfault, ``kill -9``) breaks only its own pool, so
  only the trial it was running is affected; the slot gets a fresh worker.

Nothing here imports torch: CUDA devices are counted by a child process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from vaegrid.errors import InputError
from vaegrid.train import provenance

# Peak resident memory of one worker on the seed study, measured: 1,306-1,338 MB (torch's
# CUDA build 527 MB, libraries 200 MB, MNIST 220 MB plus loading). With a margin.
WORKER_MEMORY_MB = 1400
# The kind of a slot whose worker checks a started trial's device kind itself (a cluster's).
ANY_KIND = "any"
# A trial whose worker process dies this often (segfault, out of memory) is marked failed.
MAX_WORKER_DEATHS = 2
# CUDA trials share a GPU two at a time by default (each leaves it idle while it logs).
CUDA_DEFAULT_K = 2
# cuBLAS needs a fixed workspace to be deterministic (PyTorch "Reproducibility" notes).
CUBLAS_WORKSPACE = ":4096:8"


@dataclass(frozen=True)
class Slot:
    """One place a trial can run: a device and the index of one of its K workers."""

    device: str  # "cpu" or "cuda:N"
    index: int


@dataclass(frozen=True)
class Pool:
    """Where trials run: each device takes at most ``per_device`` trials at once."""

    devices: tuple[str, ...]  # "cpu" or "cuda:N", each once
    per_device: int  # K
    threads: int  # torch threads of each trial
    kinds: tuple[str, ...] = ()  # provenance.device_kind of each device, same order
    found: str = ""  # what `--devices auto` found, and why, for the user
    # How a user gives this pool a device of a kind it lacks (messages about strands).
    remedy: str = "run again with --devices naming such a device"
    # Trials sent beyond the slots: they wait in the executor (Dask: on a worker, for one
    # of its slots) and start as a slot frees, with no round trip to the driver.
    ahead: int = 0

    @property
    def slots(self) -> int:
        return len(self.devices) * self.per_device

    def slot_list(self) -> list[Slot]:
        """Its slots, then the places of the trials sent ahead (on the first device)."""
        real = [Slot(d, i) for d in self.devices for i in range(self.per_device)]
        return real + [Slot(self.devices[0], self.per_device + i) for i in range(self.ahead)]

    def is_ahead(self, slot: Slot) -> bool:
        """Whether ``slot`` is a place ahead (its trial waits in the executor), not a slot."""
        return slot.index >= self.per_device

    def kind(self, device: str) -> str:
        return self.kinds[self.devices.index(device)]

    def places(self, bound: str | None) -> bool:
        """Whether any slot of this pool may run a trial bound to ``bound`` (:func:`may_run`)."""
        return any(may_run(bound, kind) for kind in self.kinds)


def may_run(bound: str | None, slot_kind: str) -> bool:
    """The placement rule: may a trial run on a slot of ``slot_kind``?

    A trial that has started (``bound``: the device kind its first epoch ran on) continues
    only on that kind, since another kind computes other numbers; one that has not (None)
    runs anywhere. A slot of :data:`ANY_KIND` (a cluster's worker) takes every trial: its
    worker checks the kind itself and refuses a mismatch (``train.trial.DeviceMismatch``).
    """
    return bound is None or slot_kind in (ANY_KIND, bound)


@dataclass(frozen=True)
class CudaProbe:
    """What a child process saw of CUDA."""

    names: list[str] = field(default_factory=list)  # device names, by index
    reason: str = ""  # why there are none (no CUDA build, no device, the probe failed)


def probe_cuda() -> CudaProbe:
    """Visible CUDA devices and their names, from a child process.

    The driver never imports torch: it would cost it 500 MB of memory, and CUDA state in
    a parent process is a hazard for its workers.
    """
    code = (
        "import json, torch\n"
        "n = torch.cuda.device_count() if torch.cuda.is_available() else 0\n"
        "print(json.dumps({'names': [torch.cuda.get_device_name(i) for i in range(n)],"
        " 'cuda': torch.version.cuda}))"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return CudaProbe(reason=f"the CUDA probe failed: {e}")
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return CudaProbe(reason=f"the CUDA probe failed: {last}")
    try:
        seen = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return CudaProbe(reason="the CUDA probe printed nothing readable")
    names = [str(n) for n in seen["names"]]
    if names:
        return CudaProbe(names)
    if seen.get("cuda") is None:
        return CudaProbe(reason="this torch is a CPU-only build")
    return CudaProbe(reason=f"torch (CUDA {seen['cuda']}) sees no CUDA device")


def memory_limit_mb() -> int:
    """Memory this process may use: the machine's, or its cgroup's limit if lower."""
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    for path in _cgroup_memory_files():
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    return min(limits) // (1 << 20)


def _cgroup_memory_files() -> list[Path]:
    """cgroup v2 ``memory.max`` of this process's group and its ancestors, and v1's limit."""
    files = [Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")]
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        if line.startswith("0::"):
            group = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
            while True:
                files.append(group / "memory.max")
                if group == Path("/sys/fs/cgroup"):
                    break
                group = group.parent
    return files


def make_pool(
    devices: str = "auto",
    per_device: int | None = None,
    *,
    probe: CudaProbe | None = None,
    memory_mb: int | None = None,
    cores: int | None = None,
    option: str = "--devices",
    trial_mb: int = 0,
) -> Pool:
    """Resolve ``--devices`` and ``--workers-per-device`` into a pool.

    ``auto`` is every visible CUDA device, else the CPU, and ``found`` says which and why.
    On the CPU a trial runs on one thread (a trial's numbers depend on its thread count, so
    fixing it keeps results identical whatever K is) and K defaults to the number of cores,
    as far as memory allows :data:`WORKER_MEMORY_MB` per worker. On CUDA, K defaults to
    :data:`CUDA_DEFAULT_K` and the cores are shared out as threads.

    Args:
        devices: ``auto``, ``cpu``, or a comma-separated list such as ``cuda:0,cuda:1``.
        per_device: K, or None for the default.
        probe, memory_mb, cores: what the machine has (measured when None).
        option: the option the devices came from, for messages (``--device`` in report).
        trial_mb: memory one trial's training takes beyond a worker's own (the study's
            largest, study.sizes.training_mb): a CPU worker holds both.

    Raises:
        InputError: an unknown or unavailable device, a repeated one, K < 1, or more
            workers than the memory this process may use can hold.
    """
    if not devices.isprintable() or len(devices) > 1000:
        raise InputError(
            f"{option}: {devices[:100]!r} is not allowed; expected auto, cpu or cuda:N,..."
        )
    wants_cuda = devices == "auto" or "cuda" in devices
    probe = probe if probe is not None else (probe_cuda() if wants_cuda else CudaProbe())
    cores = cores or os.cpu_count() or 1
    memory_mb = memory_mb or memory_limit_mb()
    names, found = _devices(devices, probe, option)
    gpu = any(n.startswith("cuda") for n in names)
    each = WORKER_MEMORY_MB + (0 if gpu else trial_mb)  # a GPU's trials use its own memory
    fit = max(1, memory_mb // each // len(names))  # workers per device memory holds
    if per_device is None:
        k = min(CUDA_DEFAULT_K if gpu else cores, fit)
    elif per_device < 1:
        raise InputError(
            f"--workers-per-device: {per_device} is not allowed; expected an integer >= 1"
        )
    elif per_device > fit:
        raise InputError(
            f"--workers-per-device: {per_device} is not allowed; {per_device * len(names)} "
            f"workers need about {per_device * len(names) * each:,} MB "
            f"({each} MB each: {WORKER_MEMORY_MB} measured, {each - WORKER_MEMORY_MB} for the "
            f"study's largest trial) and this process may use {memory_mb:,} MB: at most {fit}"
        )
    else:
        k = per_device
    threads = max(1, cores // (len(names) * k)) if gpu else 1
    kinds = tuple(
        provenance.device_kind("cpu" if n == "cpu" else probe.names[int(n[5:])]) for n in names
    )
    return Pool(names, k, threads, kinds, found)


def _devices(devices: str, probe: CudaProbe, option: str) -> tuple[tuple[str, ...], str]:
    """The devices ``devices`` names, each once, and what was found, in words.

    Raises:
        InputError: a device that is not here, or one named twice.
    """
    n_cuda = len(probe.names)
    if devices == "auto":
        names = tuple(f"cuda:{i}" for i in range(n_cuda)) or ("cpu",)
        if not n_cuda:
            return names, f"cpu ({probe.reason})"
        return names, ", ".join(f"{n} ({probe.names[int(n[5:])]})" for n in names)
    names = tuple(d.strip() for d in devices.split(","))
    for name in names:
        ok = name == "cpu" or (
            name.startswith("cuda:") and name[5:].isdigit() and int(name[5:]) < n_cuda
        )
        if not ok:
            visible = ", ".join(["cpu", *(f"cuda:{i}" for i in range(n_cuda))])
            why = f" ({probe.reason})" if not n_cuda and probe.reason else ""
            raise InputError(
                f"{option}: {name!r} is not a device here; visible: {visible}{why}"
                + (" (or auto)" if option == "--devices" else "")
            )
    if len(set(names)) != len(names):
        raise InputError(f"{option}: {devices!r} names a device twice")
    return names, ", ".join(names)


class WorkerDied(Exception):
    """The worker process of a slot died (killed, out of memory, segfault): the trial it ran
    is interrupted, and the slot gets a fresh worker."""


class ClusterGone(Exception):
    """The executor's scheduler went away: the driver stops, keeping what was committed;
    ``then`` says what the user does next."""

    def __init__(self, what: str, then: str = "run the same command again once it is back"):
        super().__init__(what, then)
        self.what, self.then = what, then

    def __str__(self) -> str:
        return self.what


class Watch(StrEnum):
    """How a worker learns that its driver died (worker.py)."""

    PARENT = "parent"  # workers are the driver's children and die with it
    HEARTBEAT = "heartbeat"  # workers elsewhere watch the driver's heartbeat in the database


class Executor(Protocol):
    """Runs one trial per slot. The driver loop is the same for every implementation:
    local processes (:class:`LocalExecutor`), a Dask scheduler's workers (cluster.py), a
    batch scheduler's jobs (jobqueue.py). Made by :func:`vaegrid.run.executors.choose`."""

    watch: Watch

    def pool(self) -> Pool:
        """Its slots: devices x trials at once per device, and what was found, in words."""
        ...

    def device(self, slot: Slot) -> str:
        """The device a worker of ``slot`` runs its trial on: "cpu" or "cuda:N", or "auto"
        (the worker's GPU if it has one, else its CPU)."""
        ...

    def submit(self, slot: Slot, fn: Any, arg: Any) -> Any:
        """Start ``fn(arg)`` on ``slot`` (which is free); returns a future of its result.
        Raises :class:`WorkerDied` if the slot's worker died while idle."""
        ...

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        """The futures among ``futures`` that are done, waiting up to ``timeout`` seconds
        for the first. Raises :class:`ClusterGone` if the executor itself is gone."""
        ...

    def result(self, future: Any) -> Any:
        """A done future's result. Raises :class:`WorkerDied` if its worker died, else
        whatever ``fn`` raised."""
        ...

    def reset(self, slot: Slot) -> None:
        """The slot's worker died: give the slot a fresh one."""
        ...

    def shutdown(self, kill: bool) -> None:
        """Stop every worker (``kill``: at once, abandoning what they run)."""
        ...

    def close(self) -> None:
        """Let go of everything it holds (workers, connections, batch jobs): idempotent."""
        ...


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread while the block runs: a worker process (or a thread
    that starts them) made meanwhile inherits the blocked signal, across exec too, so a
    Ctrl-C at the terminal, which reaches the whole process group, never interrupts a
    worker (not even while it imports, before its initializer runs) and only the driver
    acts on it. The driver's own Ctrl-C waits until the block ends: delayed, never lost."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class LocalExecutor:
    """One single-worker loky process pool per slot, pinned to the slot's device."""

    watch = Watch.PARENT

    def __init__(self, pool: Pool, initializer: Any = None) -> None:
        self._pool = pool
        self.initializer = initializer
        self._executors: dict[Slot, Any] = {}
        # The resource trackers (the standard library's and loky's) start with the first
        # worker, and the standard library's unblocks SIGINT in this thread after starting
        # its own (multiprocessing/resource_tracker.py): started here, before any worker is
        # spawned under _sigint_blocked, they cannot undo the block.
        from multiprocessing import resource_tracker

        from joblib.externals.loky.backend import resource_tracker as loky_tracker

        # loky's resource tracker warns about "leaked semlock objects" when a killed
        # driver's tracker cleans up: nothing a user can act on. It inherits this filter
        # from the driver's environment, so the filter is set before the tracker starts.
        os.environ.setdefault(
            "PYTHONWARNINGS", "ignore::UserWarning:joblib.externals.loky.backend.resource_tracker"
        )
        resource_tracker.ensure_running()
        loky_tracker.ensure_running()
        # loky restarts a worker whose memory grew 300 MB past its first task's (its leak
        # check): after a small trial, a large one (a conv or IWAE trial) does. The restart
        # is harmless, between trials; its warning ("A worker stopped while some jobs were
        # given to the executor") said nothing a user could act on, in every mixed sweep.
        warnings.filterwarnings(
            "ignore", "A worker stopped while some jobs", UserWarning, "joblib.externals.loky"
        )

    def _env(self, slot: Slot) -> dict[str, str]:
        threads = str(self._pool.threads)
        return {
            # A CPU worker sees no GPU at all; a CUDA worker sees only its own, as cuda:0.
            "CUDA_VISIBLE_DEVICES": slot.device[5:] if slot.device.startswith("cuda:") else "",
            "CUBLAS_WORKSPACE_CONFIG": CUBLAS_WORKSPACE,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }

    def _executor(self, slot: Slot) -> Any:
        if slot not in self._executors:
            from joblib.externals.loky.backend.context import get_context
            from joblib.externals.loky.process_executor import ProcessPoolExecutor

            # loky's own start method: the only one that passes `env` to the worker
            # (tests/test_driver.py checks that each slot's worker sees its device).
            self._executors[slot] = ProcessPoolExecutor(
                max_workers=1,
                context=get_context("loky"),
                initializer=self.initializer,
                env=self._env(slot),
            )
        return self._executors[slot]

    def pool(self) -> Pool:
        return self._pool

    def device(self, slot: Slot) -> str:
        return slot.device

    def submit(self, slot: Slot, fn: Any, arg: Any) -> Future[Any]:
        from joblib.externals.loky.process_executor import BrokenProcessPool

        try:
            with _sigint_blocked():  # loky starts the slot's worker here
                future: Future[Any] = self._executor(slot).submit(fn, arg)
        except BrokenProcessPool as e:  # its worker died while idle
            raise WorkerDied(str(e)) from e
        return future

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, future: Any) -> Any:
        from joblib.externals.loky.process_executor import BrokenProcessPool

        try:
            return future.result()
        except BrokenProcessPool as e:
            raise WorkerDied(str(e)) from e

    def reset(self, slot: Slot) -> None:
        old = self._executors.pop(slot, None)
        if old is not None:
            old.shutdown(wait=False, kill_workers=True)

    def shutdown(self, kill: bool) -> None:
        for slot in list(self._executors):
            self._executors.pop(slot).shutdown(wait=not kill, kill_workers=kill)

    def close(self) -> None:
        self.shutdown(kill=False)
