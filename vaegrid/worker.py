"""What runs inside a pool worker: one trial on one device, recorded as it goes.

Workers are loky processes started by the driver. Each one caps its threads, ignores
Ctrl-C (the driver decides what stops), and exits at once if its driver dies, so a
killed sweep leaves no orphan that could write a trial a new driver is running.
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

from vaegrid.store import Store
from vaegrid.study import TrialConfig


@dataclass(frozen=True)
class Task:
    """One trial to run, as the driver sends it to a worker."""

    config: str  # TrialConfig JSON
    optuna_trial_id: int
    device: str  # "cpu" or "cuda:N"
    threads: int  # torch intra-op threads for this trial
    db: str  # the study database
    trial_dir: str  # results/<study>/trials/<key>
    data_root: str  # MNIST root (holds MNIST/raw)
    driver_pid: int  # the worker exits when this process is gone


_STORES: dict[str, Store] = {}
_WATCHED: set[int] = set()


def init_worker() -> None:
    """Pool initializer: Ctrl-C reaches the whole process group; only the driver acts on it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def execute(task: Task) -> str:
    """Run one trial to its end (or its next failure) and return its final status.

    Exceptions inside the trial are recorded with their traceback, never raised: the
    sweep goes on. Only the death of this process (or of the driver) interrupts a trial,
    and then the checkpoint of its last finished epoch is where it resumes.
    """
    # Here, not at the top: the driver imports this module and must not load torch.
    import torch

    from vaegrid.data import load_splits
    from vaegrid.train import LOG, finalize, run_trial

    _watch(task.driver_pid)
    torch.set_num_threads(task.threads)
    cfg = TrialConfig.from_json(task.config)
    if task.db not in _STORES:
        _STORES[task.db] = Store(Path(task.db))
    store = _STORES[task.db]
    trial_dir = Path(task.trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(trial_dir / ".lock"):
        run_id = store.begin_run(cfg.key, task.device, os.getpid())
        try:
            splits = load_splits(Path(task.data_root), cfg.data, cfg.seed, task.device)
            result = run_trial(
                cfg,
                splits.train,
                splits.val,
                trial_dir,
                on_epoch=lambda r: store.record_epoch(cfg.key, task.optuna_trial_id, r),
            )
        except Exception:
            error = traceback.format_exc()
            with (trial_dir / LOG).open("a", encoding="utf-8") as log:
                log.write(f"failed on {task.device} (pid {os.getpid()}):\n{error}")
            return store.finish_run(cfg.key, run_id, None, error)
        status = store.finish_run(cfg.key, run_id, result, None)
        finalize(trial_dir)  # its end is committed: the resume checkpoint can go
        return status


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An flock on ``path``: a trial never runs in two processes at once. The kernel drops
    it when its holder dies, so this waits only for an orphan to notice its driver died."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _watch(driver_pid: int) -> None:
    if driver_pid in _WATCHED:
        return
    _WATCHED.add(driver_pid)

    def watch() -> None:
        while True:
            time.sleep(0.2)
            # Workers are the driver's children: once it dies they are re-parented.
            if os.getppid() != driver_pid:
                os._exit(3)  # no cleanup: whatever was committed is all that counts

    threading.Thread(target=watch, name="vaegrid-driver-watch", daemon=True).start()
