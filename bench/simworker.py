"""A simulated trial for bench/scale.py: vaegrid's own worker (``run/worker.execute``: the
study folder checked, the trial's lease claimed and renewed by its watcher thread, the
driver's heartbeat read, ``begin_run``, every epoch's ``record_epoch``, ``finish_run``, the
lease released) with only the training replaced: each epoch sleeps its share of
``VAEGRID_SIM_SECONDS`` and commits numbers like a seed-study epoch's. No torch work, no
data loaded: what is left is exactly what a thousand slots ask of the driver and the store.

Each process appends the wall time of every epoch's commit (``record_epoch``, what a worker
waits for at each epoch) to ``$VAEGRID_SIM_LOG/commits-<pid>``, a trial's at its end.

Imported by the Dask workers (PYTHONPATH holds bench/): the patch below is made in each
worker process when Dask unpickles :func:`execute`.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from vaegrid.run import worker
from vaegrid.status import COMPLETED, INTERRUPTED, Status

try:
    from vaegrid.train.records import EpochRecord, Metrics, TrialResult
except ImportError:  # vaegrid before train/records.py (a baseline's checkout)
    from vaegrid.train.trial import EpochRecord, Metrics, TrialResult  # type: ignore[no-redef]

_LOCK = threading.Lock()


def _metrics(key: str, epoch: int, offset: float) -> Metrics:
    """Numbers like a seed-study epoch's, different per trial: a negative ELBO falling from
    ~200 to ~100 nats."""
    u = int(hashlib.sha256(f"{key}{epoch}".encode()).hexdigest()[:8], 16) / 2**32
    kl = 20 + 5 * u
    elbo = 100 + 100 * math.exp(-epoch / 3) + offset + 10 * u
    return Metrics(elbo, elbo - kl, kl)


def _train(task: Any, cfg: Any, store: Any, device: str, kind: str, stop: Any) -> TrialResult:
    seconds = float(os.environ.get("VAEGRID_SIM_SECONDS", "1")) / cfg.epochs
    history: list[EpochRecord] = []
    waited: list[float] = []
    status = COMPLETED
    recorder = getattr(worker, "_recorder", None)  # as the real _train records (a baseline's:
    # by hand, the device kind every epoch)
    on_epoch = (recorder(store, cfg.key, task.optuna_trial_id, kind) if recorder else
                lambda r: store.record_epoch(cfg.key, task.optuna_trial_id, r, kind))  # fmt: skip
    for epoch in range(1, cfg.epochs + 1):
        if stop.wait(seconds):  # the lease lost or the driver gone: as a real trial stops
            status = INTERRUPTED
            break
        record = EpochRecord(epoch, _metrics(cfg.key, epoch, 0.0), _metrics(cfg.key, epoch, 2.0),
                             seconds)  # fmt: skip
        start = time.perf_counter()
        on_epoch(record)
        waited.append(time.perf_counter() - start)
        history.append(record)
    log = os.environ.get("VAEGRID_SIM_LOG")
    if log:
        with _LOCK, open(Path(log) / f"commits-{os.getpid()}", "a") as out:
            out.write("".join(f"{w:.6f}\n" for w in waited))
    return TrialResult(status, history)


worker._train = _train  # type: ignore[assignment]
worker._setup_device = lambda task: ("cpu", "cpu-sim")  # type: ignore[assignment]
worker._cuda_version = lambda: {}  # type: ignore[assignment]
worker._peak_device_mb = lambda kind: None  # type: ignore[assignment]


def execute(task: Any) -> Status:
    """vaegrid's worker entry point, on a simulated trial."""
    return worker.execute(task)
