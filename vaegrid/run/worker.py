"""What runs inside a pool worker: one trial on one device, recorded as it goes.

Workers are processes started by an executor with their device pinned: a CUDA worker sees
only its own GPU, as ``cuda:0`` (the local pool sets ``CUDA_VISIBLE_DEVICES``; so does
dask-cuda). A trial runs only while its worker holds the trial: an flock beside the trial
on SQLite, a lease in the database on a server (renewed every few seconds; a dead
worker's lease expires). And only while its driver lives: a local worker exits at once
when its parent driver dies; a cluster worker stops its trial at the next batch when the
driver's heartbeat in the database is older than ``leases.DRIVER_TIMEOUT_S``. Either way
no orphan writes a trial that a new driver may be running.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaegrid.db.engine import Database
from vaegrid.db.store import Store
from vaegrid.errors import InputError
from vaegrid.faults import FAULT_WAIT_S, WorldFault, patient, world_fault
from vaegrid.layout import StudyLayout, TrialFiles
from vaegrid.run import leases
from vaegrid.run.leases import LEASE_S
from vaegrid.run.pool import Watch
from vaegrid.safeio import ensure_dir, open_fd, open_file, read_bytes
from vaegrid.status import FINAL, Status
from vaegrid.study.core import TrialConfig
from vaegrid.train import provenance
from vaegrid.train.records import EpochRecord, TrialResult, finalize


@dataclass(frozen=True)
class Task:
    """One trial to run, as the driver sends it to a worker."""

    config: str  # TrialConfig JSON
    optuna_trial_id: int
    device: str  # "cpu", "cuda:N" as the user named it (the worker sees it as cuda:0), "auto"
    threads: int  # torch intra-op threads for this trial
    db: Database  # the study database
    layout: StudyLayout  # the study folder (absolute)
    data_root: str  # MNIST root (holds MNIST/raw)
    driver_pid: int  # local workers exit when this process is gone
    versions: tuple[tuple[str, str], ...] = ()  # the driver's provenance.versions()
    watch: Watch = Watch.PARENT  # how it learns its driver died
    driver_token: str = ""  # the driver's id: in the study folder and its heartbeat row
    stop_at: int | None = None  # halving: train only to this epoch (a rung), then pause
    nll_samples: int = 0  # [rank] nll_samples: k of the validation NLL at the end; 0: none
    nll_when_paused: bool = False  # halving by val_nll: the NLL at the rung it pauses at too
    fault_wait: float = FAULT_WAIT_S  # how long a fault of the world is waited out (faults.py)


_STORES: dict[str, Store] = {}
_STORES_LOCK = threading.Lock()
_WATCHED: set[int] = set()
_QUIETED: weakref.WeakSet[Any] = weakref.WeakSet()  # Dask workers, their profiler stopped


def init_worker() -> None:
    """Pool initializer: Ctrl-C reaches the whole process group; only the driver acts on it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def execute(task: Task) -> Status:
    """Run one trial to its end (or its next failure, or ``task.stop_at``) and return its
    status: final, or ``paused`` at a halving rung.

    Whatever goes wrong inside, in the trial or in its bookkeeping (the store, the trial's
    lock), is recorded with its traceback against this trial alone, never raised: the sweep
    goes on. If even that record cannot be written, the exception goes back to the driver,
    which records it. A fault of the world (faults.py: the database unreachable, a full
    disk) is no trial's: the database is waited for (``task.fault_wait``), a write to disk
    is not; the trial ends ``interrupted`` at its last finished epoch and
    :class:`WorldFault` goes back to the driver, which tries again later. A trial whose
    driver is gone, or whose lease was lost, stops at the next batch as ``interrupted``;
    its last finished epoch is where it resumes.
    """
    cfg = TrialConfig.from_json(task.config)
    files = task.layout.trial(cfg.key)
    if task.watch == Watch.PARENT:
        _watch(task.driver_pid)
    raw = _store(task.db)  # the lease's watcher asks it and never waits: its own retries
    store = patient(raw, task.fault_wait)
    run_id: int | None = None
    try:
        _check_study_folder(task.layout, task.driver_token)
        ensure_dir(files.folder)
        with _hold(task, raw, cfg.key, files) as stop:
            torch_device, kind = _setup_device(task)
            versions = dict(task.versions) | _cuda_version()
            device = task.device if task.device != "auto" else torch_device
            run_id = store.begin_run(
                cfg.key, device, os.getpid(), kind, provenance.host(), versions
            )
            if run_id is None:  # its end was committed before the driver learned it
                return store.status_of(cfg.key)
            result = _train(task, cfg, store, torch_device, kind, stop)
            status = store.finish_run(cfg.key, run_id, result, None, _peak_device_mb(kind))
        if status in FINAL:  # a trial paused at a rung goes on from its checkpoint later
            finalize(files)  # its end is committed: the resume checkpoint can go
        return status
    except Exception as e:
        fault = world_fault(e, where=str(task.layout.root))
        error = f"failed on {task.device} (pid {os.getpid()}):\n{traceback.format_exc()}"
        with suppress(Exception), open_file(files.log, "a") as log:  # a full disk may refuse it
            log.write(error if fault is None else f"interrupted: {fault}\n")
        if fault is not None:
            if run_id is not None:  # at its last finished epoch; else the driver marks it
                with suppress(Exception):
                    raw.finish_run(cfg.key, run_id, _interrupted(), None)
            raise WorldFault(fault, getattr(e, "waited", 0.0)) from None
        if run_id is None:
            raise  # nothing of this run is in the database: the driver records it
        return store.finish_run(cfg.key, run_id, None, error)


def _interrupted() -> TrialResult:
    return TrialResult(Status.INTERRUPTED, [])


def _store(db: Database) -> Store:
    """One store per database and process, shared by the trials of a threaded worker."""
    with _STORES_LOCK:
        if db.key not in _STORES:
            _STORES[db.key] = Store(db)
        return _STORES[db.key]


def reset() -> None:
    """Forget this process's stores (tests that run trials in-process, one study each)."""
    with _STORES_LOCK:
        for store in _STORES.values():
            store.close()
        _STORES.clear()
    leases.forget()


def _check_study_folder(layout: StudyLayout, token: str) -> None:
    """The worker must see the very folder its driver writes (a shared filesystem)."""
    if not token:
        return
    try:
        seen = read_bytes(layout.driver_token).decode(errors="replace").strip()
    except InputError:
        seen = ""
    if seen != token:
        raise InputError(
            f"{layout.root}: this worker ({provenance.host()}) does not see the driver's study "
            "folder; trial folders must be on a filesystem every worker sees, at the same path"
        )


@contextmanager
def _hold(task: Task, store: Store, key: str, files: TrialFiles) -> Iterator[threading.Event]:
    """Hold the trial for this worker while the block runs; yields the trial's stop flag.

    SQLite: an flock beside the trial (the kernel drops it when its holder dies). A server:
    a lease in the database, waited for while another worker's is live. Either way the
    process's :class:`~vaegrid.run.leases.Keeper` watches the trial with all the others it
    runs: it renews the lease, and sets the stop flag when the lease is lost, when the
    driver's heartbeat is older than ``leases.DRIVER_TIMEOUT_S`` (cluster workers) or
    when the trial's Dask worker is closing.
    """
    dask_worker = _dask_worker()  # here: Dask knows its worker in the task's thread only
    owner = f"{provenance.host()}:{os.getpid()}:{threading.get_ident()}"
    server = not store.db.is_sqlite
    if server:
        while not store.claim(key, owner, LEASE_S):
            time.sleep(2.0)  # another worker's lease is live: it lapses if that one died
    token = task.driver_token if task.watch == Watch.HEARTBEAT else None
    watch = leases.keeper(store)
    hold = None
    try:
        with _exclusive(files.lock) if not server else nullcontext():
            hold = watch.hold(leases.Hold(key, owner, server, token, dask_worker))
            yield hold.stop
    finally:
        if hold is not None:
            watch.let_go(hold)
        if server:
            store.release(key, owner)


def _dask_worker() -> Any:
    """The Dask worker running this task (``None`` in vaegrid's own process pool), its
    statistical profiler turned off (:func:`_quiet`)."""
    if "distributed" not in sys.modules:  # never imported: not a Dask worker
        return None
    from distributed import get_worker

    try:
        found = get_worker()
    except ValueError:  # distributed imported, but this is no worker's task
        return None
    _quiet(found)
    return found


def _quiet(dask_worker: Any) -> None:
    """Stop Dask's statistical profiler on a worker that runs trials, once: it samples the
    stack of every thread every 10 ms (``distributed.worker.profile``), which took 29 % of
    a 25-slot worker's CPU in bench/scale.py, for a profile vaegrid never reads. Stopped on
    the worker's event loop, where its callbacks run. (Dask's own switch, for workers
    started with it: ``distributed.worker.profile.enabled: false``.)"""
    with _STORES_LOCK:
        if dask_worker in _QUIETED:
            return
        _QUIETED.add(dask_worker)

    def stop() -> None:
        for name in ("profile", "profile-cycle"):
            callback = dask_worker.periodic_callbacks.pop(name, None)
            if callback is not None:
                callback.stop()

    with suppress(Exception):  # a Dask without these callbacks: nothing to stop
        dask_worker.loop.add_callback(stop)


def _setup_device(task: Task) -> tuple[str, str]:
    """torch settings for this trial's device; returns (torch device, device kind).

    ``auto`` (cluster workers) is the worker's GPU if it has one, else its CPU.
    """
    import torch  # here, not at the top: the driver imports this module

    from vaegrid.train.trial import device_kind

    torch.set_num_threads(task.threads)
    cuda = task.device.startswith("cuda") or (task.device == "auto" and torch.cuda.is_available())
    if not cuda:
        return "cpu", device_kind(torch.device("cpu"))
    # Deterministic CUDA: the same trial twice on one GPU gives the same numbers. The
    # executor pinned this worker to one GPU, so it is cuda:0 here.
    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    device = torch.device("cuda:0")
    torch.cuda.reset_peak_memory_stats(device)
    return "cuda:0", device_kind(device)


def _train(
    task: Task, cfg: TrialConfig, store: Store, device: str, kind: str, stop: threading.Event
) -> TrialResult:
    from vaegrid.train.data import load_splits
    from vaegrid.train.trial import run_trial

    splits = load_splits(Path(task.data_root), cfg.data, cfg.seed, device)
    return run_trial(
        cfg,
        splits.train,
        splits.val,
        task.layout.trial(cfg.key),
        on_epoch=_recorder(store, cfg.key, task.optuna_trial_id, kind),
        stop=stop,
        stop_at=task.stop_at,
        nll_samples=task.nll_samples,
        nll_when_paused=task.nll_when_paused,
    )


def _recorder(store: Store, key: str, optuna_trial_id: int, kind: str) -> Any:
    """Commits a run's epochs; the run's first also binds the trial to its device kind."""
    bound = False

    def record(r: EpochRecord) -> None:
        nonlocal bound
        store.record_epoch(key, optuna_trial_id, r, None if bound else kind)
        bound = True

    return record


def _cuda_version() -> dict[str, str]:
    import torch

    return {"cuda": torch.version.cuda or "none"}


def _peak_device_mb(kind: str) -> float | None:
    import torch

    if kind.startswith("cpu"):
        return None
    return torch.cuda.max_memory_allocated(torch.device("cuda:0")) / (1 << 20)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An flock on ``path``: a trial never runs in two processes at once. The kernel drops
    it when its holder dies, so this waits only for an orphan to notice its driver died."""
    fd = open_fd(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _watch(driver_pid: int) -> None:
    if driver_pid in _WATCHED or driver_pid == os.getpid():  # in-process: nothing to watch
        return
    _WATCHED.add(driver_pid)

    def watch() -> None:
        while True:
            time.sleep(0.2)
            # Workers are the driver's children: once it dies they are re-parented.
            if os.getppid() != driver_pid:
                os._exit(3)  # no cleanup: whatever was committed is all that counts

    threading.Thread(target=watch, name="vaegrid-driver-watch", daemon=True).start()
