"""What runs inside a pool worker: one trial on one device, recorded as it goes.

Workers are processes started by an executor (pool.py) with their device pinned: a CUDA
worker sees only its own GPU, as ``cuda:0``. Each one caps its threads, ignores Ctrl-C
(the driver decides what stops), and exits at once if its driver dies, so a killed sweep
leaves no orphan that could write a trial a new driver is running.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vaegrid import provenance
from vaegrid.paths import ensure_dir, open_fd, open_file
from vaegrid.store import FINAL, Store
from vaegrid.study import TrialConfig

if TYPE_CHECKING:
    from vaegrid.train import TrialResult


@dataclass(frozen=True)
class Task:
    """One trial to run, as the driver sends it to a worker."""

    config: str  # TrialConfig JSON
    optuna_trial_id: int
    device: str  # "cpu" or "cuda:N", as the user named it (the worker sees it as cuda:0)
    threads: int  # torch intra-op threads for this trial
    db: str  # the study database
    trial_dir: str  # results/<study>/trials/<key>
    data_root: str  # MNIST root (holds MNIST/raw)
    driver_pid: int  # the worker exits when this process is gone
    versions: tuple[tuple[str, str], ...] = ()  # the driver's provenance.versions()
    stop_at: int | None = None  # halving: train only to this epoch (a rung), then pause


_STORES: dict[str, Store] = {}
_WATCHED: set[int] = set()


def init_worker() -> None:
    """Pool initializer: Ctrl-C reaches the whole process group; only the driver acts on it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def execute(task: Task) -> str:
    """Run one trial to its end (or its next failure, or ``task.stop_at``) and return its
    status: final, or ``paused`` at a halving rung.

    Whatever goes wrong inside, in the trial or in its bookkeeping (the store, the trial's
    lock, a full disk), is recorded with its traceback against this trial alone, never
    raised: the sweep goes on. If even that record cannot be written, the exception goes
    back to the driver, which records it. Only the death of this process (or of the
    driver) interrupts a trial, and then its last finished epoch is where it resumes.
    """
    cfg = TrialConfig.from_json(task.config)
    trial_dir = Path(task.trial_dir)
    _watch(task.driver_pid)
    store = _store(task.db)
    run_id: int | None = None
    try:
        ensure_dir(trial_dir)
        with _exclusive(trial_dir / ".lock"):
            torch_device, kind = _setup_device(task)
            versions = dict(task.versions) | _cuda_version()
            run_id = store.begin_run(
                cfg.key, task.device, os.getpid(), kind, provenance.host(), versions
            )
            if run_id is None:  # its end was committed before the driver learned it
                return store.status_of(cfg.key)
            result = _train(task, cfg, store, torch_device, kind)
            status = store.finish_run(cfg.key, run_id, result, None, _peak_device_mb(kind))
        if status in FINAL:  # a trial paused at a rung goes on from its checkpoint later
            from vaegrid.train import finalize

            finalize(trial_dir)  # its end is committed: the resume checkpoint can go
        return status
    except Exception:
        error = f"failed on {task.device} (pid {os.getpid()}):\n{traceback.format_exc()}"
        try:
            from vaegrid.train import LOG

            with open_file(trial_dir / LOG, "a") as log:
                log.write(error)
        except Exception:
            pass
        if run_id is None:
            raise  # nothing of this run is in the database: the driver records it
        return store.finish_run(cfg.key, run_id, None, error)


def _store(db: str) -> Store:
    if db not in _STORES:
        _STORES[db] = Store(Path(db))
    return _STORES[db]


def _setup_device(task: Task) -> tuple[str, str]:
    """torch settings for this trial's device; returns (torch device, device kind)."""
    import torch  # here, not at the top: the driver imports this module

    from vaegrid.train import device_kind

    torch.set_num_threads(task.threads)
    if not task.device.startswith("cuda"):
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


def _train(task: Task, cfg: TrialConfig, store: Store, device: str, kind: str) -> TrialResult:
    from vaegrid.data import load_splits
    from vaegrid.train import run_trial

    splits = load_splits(Path(task.data_root), cfg.data, cfg.seed, device)
    return run_trial(
        cfg,
        splits.train,
        splits.val,
        Path(task.trial_dir),
        on_epoch=lambda r: store.record_epoch(cfg.key, task.optuna_trial_id, r, kind),
        stop_at=task.stop_at,
    )


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
