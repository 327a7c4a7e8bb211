"""The sweep driver: reconcile a study with its database, dispatch trials to a worker pool.

One driver per study (an flock that dies with its holder). Pending, interrupted and
(with ``retry_failed``) failed trials go to a loky process pool of devices x K
workers; a trial is submitted only when its device has a free slot, so no device
ever runs more than K trials and every trial runs on exactly one device.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joblib.externals.loky import get_reusable_executor
from joblib.externals.loky.process_executor import BrokenProcessPool
from tqdm import tqdm

from vaegrid.data import ensure_mnist
from vaegrid.errors import InputError
from vaegrid.store import (
    COMPLETED,
    DIVERGED,
    FAILED,
    INTERRUPTED,
    PENDING,
    RUNNING,
    Store,
    db_path,
    existing_db,
    trial_dir,
)
from vaegrid.study import Study, TrialConfig, expand
from vaegrid.worker import Task, execute, init_worker

LOCK_NAME = "driver.lock"
# A trial whose worker process dies this often (segfault, out of memory) is marked failed.
MAX_WORKER_DEATHS = 2


@dataclass(frozen=True)
class Pool:
    """Where trials run: each device takes at most ``per_device`` trials at once."""

    devices: tuple[str, ...]  # "cpu" or "cuda:N", each once
    per_device: int  # K
    threads: int  # torch threads of each trial

    @property
    def slots(self) -> int:
        return len(self.devices) * self.per_device


def make_pool(devices: str = "auto", per_device: int | None = None) -> Pool:
    """Resolve ``--devices`` and ``--workers-per-device`` into a pool.

    ``auto`` is every visible CUDA device, else the CPU. On the CPU a trial runs on one
    thread and K defaults to the number of cores: a trial's numbers depend on its thread
    count (reductions split differently), so fixing it keeps results identical whatever
    K is, and 2 one-thread trials beat 1 two-thread trial by 16% on a 2-core machine
    (README, Performance). On CUDA, K defaults to 2 and threads are shared out.

    Raises:
        InputError: an unknown or unavailable device, a repeated one, or K < 1.
    """
    n_cuda = cuda_device_count() if devices == "auto" or "cuda" in devices else 0
    cores = os.cpu_count() or 1
    if devices == "auto":
        names = tuple(f"cuda:{i}" for i in range(n_cuda)) or ("cpu",)
    else:
        names = tuple(d.strip() for d in devices.split(","))
        for name in names:
            ok = name == "cpu" or (
                name.startswith("cuda:") and name[5:].isdigit() and int(name[5:]) < n_cuda
            )
            if not ok:
                visible = ", ".join(["cpu", *(f"cuda:{i}" for i in range(n_cuda))])
                raise InputError(
                    f"--devices: {name!r} is not a device here; visible: {visible} (or auto)"
                )
        if len(set(names)) != len(names):
            raise InputError(f"--devices: {devices!r} names a device twice")
    if per_device is not None and per_device < 1:
        raise InputError(
            f"--workers-per-device: {per_device} is not allowed; expected an integer >= 1"
        )
    gpu = any(n.startswith("cuda") for n in names)
    k = per_device or (2 if gpu else cores)
    threads = max(1, cores // (len(names) * k)) if gpu else 1
    return Pool(names, k, threads)


def cuda_device_count() -> int:
    """Visible CUDA devices, counted in a child process.

    The driver never imports torch: it would cost it 500 MB of memory, and CUDA state in
    a parent process is a hazard for its workers.
    """
    probe = "import torch; print(torch.cuda.device_count())"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else 0


class DriverLock:
    """An exclusive flock on ``<study>/driver.lock`` holding the driver's pid.

    The kernel releases it when the driver dies, however it dies, so a crashed driver's
    lock is taken over by the next one without any stale-lock guessing.
    """

    def __init__(self, study_dir: Path) -> None:
        self.path = study_dir / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> DriverLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode().strip() or "?"
            os.close(fd)
            raise InputError(
                f"{self.path.parent}: another driver (pid {pid}) is running this study; "
                "wait for it, or stop it and run again"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)

    @staticmethod
    def holder(study_dir: Path) -> int | None:
        """The pid of the live driver of ``study_dir``, or None."""
        path = study_dir / LOCK_NAME
        if not path.exists():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode().strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)
        return None


def summary(counts: Counter[str], total: int) -> str:
    """One line of progress, the same for the live bar and ``vaegrid status``."""
    done = counts[COMPLETED] + counts[DIVERGED] + counts[FAILED]
    waiting = counts[PENDING] + counts[INTERRUPTED]
    return (
        f"{done}/{total} done ({counts[COMPLETED]} completed, {counts[DIVERGED]} diverged, "
        f"{counts[FAILED]} failed), {counts[RUNNING]} running, {waiting} waiting"
    )


def run_study(
    study: Study,
    results: Path,
    pool: Pool,
    data_root: Path,
    retry_failed: bool = False,
    progress: bool = True,
) -> int:
    """Sweep ``study`` to its end, resuming whatever ``results/<study>`` already holds.

    Returns:
        0 when every trial completed or diverged, 1 when any failed (tracebacks in the
        database), 130 when stopped by Ctrl-C (running trials keep their last epoch).

    Raises:
        InputError: missing data, a live driver on the study, or a database made by a
            study with other fixed settings. Nothing is written then.
    """
    study_dir = results / study.name
    ensure_mnist(data_root)
    Store.check_compatible(db_path(study_dir), study)
    grid = expand(study)
    with DriverLock(study_dir):
        store = Store(db_path(study_dir))
        previous = signal.signal(signal.SIGTERM, _stop)
        try:
            store.sync_study(study, grid, pool.slots)
            sweep = _Sweep(study, grid, study_dir, store, pool, data_root, retry_failed, progress)
            return sweep.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
            store.close()


def _stop(signum: int, frame: object) -> None:
    """SIGTERM stops a sweep as cleanly as Ctrl-C does."""
    raise KeyboardInterrupt


class _Sweep:
    def __init__(
        self,
        study: Study,
        grid: list[TrialConfig],
        study_dir: Path,
        store: Store,
        pool: Pool,
        data_root: Path,
        retry_failed: bool,
        progress: bool,
    ) -> None:
        self.study, self.study_dir, self.store, self.pool = study, study_dir, store, pool
        self.data_root = data_root.resolve()
        self.grid = {cfg.key: cfg for cfg in grid}
        status = {t.key: t.status for t in store.trials() if t.key in self.grid}
        redo = {PENDING, INTERRUPTED} | ({FAILED} if retry_failed else set())
        self.queue = deque(k for k in self.grid if status[k] in redo)
        self.counts = Counter(status[k] for k in self.grid if status[k] not in redo)
        self.counts[PENDING] = len(self.queue)
        self.deaths: Counter[str] = Counter()
        self.bar = tqdm(
            total=len(self.grid),
            initial=len(self.grid) - len(self.queue),
            desc=study.name,
            unit="trial",
            disable=not progress,
            dynamic_ncols=True,
        )

    def _executor(self) -> Any:
        return get_reusable_executor(
            max_workers=self.pool.slots,
            timeout=60,
            initializer=init_worker,
            env={
                "OMP_NUM_THREADS": str(self.pool.threads),
                "MKL_NUM_THREADS": str(self.pool.threads),
            },
        )

    def run(self) -> int:
        running: dict[Future[str], tuple[str, str]] = {}
        free = dict.fromkeys(self.pool.devices, self.pool.per_device)
        executor = self._executor()
        try:
            while self.queue or running:
                while self.queue and max(free.values()) > 0:
                    device = max(free, key=lambda d: free[d])  # the least busy device
                    key = self.queue.popleft()
                    running[self._submit(executor, key, device)] = (key, device)
                    free[device] -= 1
                    self._move(PENDING, RUNNING)
                done, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    key, device = running.pop(future)
                    free[device] += 1
                    try:
                        self._finished(key, future.result())
                    except BrokenProcessPool as e:
                        self._worker_died(key, e)
                        executor = self._executor()
                self.bar.refresh()
        except KeyboardInterrupt:
            executor.shutdown(wait=False, kill_workers=True)
            self.store.mark([k for k, _ in running.values()], INTERRUPTED)
            self.bar.close()
            print(
                f"interrupted: {len(running)} running trials keep their last finished epoch; "
                "run the same command again to continue"
            )
            return 130
        self.bar.close()
        return 1 if self.counts[FAILED] else 0

    def _submit(self, executor: Any, key: str, device: str) -> Future[str]:
        cfg = self.grid[key]
        task = Task(
            config=cfg.to_json(),
            optuna_trial_id=self.store.start_trial(self.study, cfg),
            device=device,
            threads=self.pool.threads,
            db=str(db_path(self.study_dir).resolve()),
            trial_dir=str(trial_dir(self.study_dir, key).resolve()),
            data_root=str(self.data_root),
            driver_pid=os.getpid(),
        )
        future: Future[str] = executor.submit(execute, task)
        return future

    def _finished(self, key: str, status: str) -> None:
        self._move(RUNNING, status)
        self.bar.update(1)
        if self.bar.disable:  # no live bar (logs, --no-progress): one line per trial instead
            c = self.grid[key]
            done = self.counts[COMPLETED] + self.counts[DIVERGED] + self.counts[FAILED]
            print(
                f"[{done}/{len(self.grid)}] {key} (hidden {c.hidden}, latent {c.latent}, "
                f"lr {c.lr:g}, clip {c.clip:g}): {status}",
                flush=True,
            )

    def _move(self, old: str, new: str) -> None:
        self.counts[old] -= 1
        self.counts[new] += 1
        self.bar.set_postfix_str(
            f"running {self.counts[RUNNING]}, diverged {self.counts[DIVERGED]}, "
            f"failed {self.counts[FAILED]}",
            refresh=False,
        )

    def _worker_died(self, key: str, error: BaseException) -> None:
        """A worker process died (killed, out of memory): resume the trial, or give up."""
        self.deaths[key] += 1
        if self.deaths[key] >= MAX_WORKER_DEATHS:
            self.store.mark([key], FAILED, f"worker process died {self.deaths[key]} times: {error}")
            self._finished(key, FAILED)
        else:
            self.store.mark([key], INTERRUPTED)
            self.queue.appendleft(key)
            self._move(RUNNING, PENDING)


def status_line(study_dir: Path) -> str:
    """``vaegrid status``: a study's progress read from its database, then one line per
    running trial with its epoch and device.

    Raises:
        InputError: ``study_dir`` holds no study database.
    """
    store = Store(existing_db(study_dir))
    try:
        name, slots = store.study_row()
        trials = store.trials()
        runs = store.runs()
    finally:
        store.close()
    counts = Counter(t.status for t in trials)
    pid = DriverLock.holder(study_dir)
    if pid is None:  # no live driver: what was running is only interrupted
        counts[INTERRUPTED] += counts.pop(RUNNING, 0)
    line = f"{name}: {summary(counts, len(trials))}"
    # Diverged runs end early: the completed ones say how long a trial takes.
    took = [r["ended"] - r["started"] for r in runs if r["status"] == COMPLETED]
    left = counts[PENDING] + counts[INTERRUPTED] + counts[RUNNING]
    if took and left:
        line += f", ETA {_duration(sum(took) / len(took) * left / max(1, slots))}"
    if not pid:
        return line + "; no driver running"
    device = {r["key"]: r["device"] for r in runs if r["status"] == RUNNING}
    lines = [line + f"; driver pid {pid}"]
    for t in trials:
        if t.status == RUNNING:
            c = t.config
            lines.append(
                f"  running {t.key} (hidden {c.hidden}, latent {c.latent}, lr {c.lr:g}, "
                f"clip {c.clip:g}): epoch {t.epochs_done}/{c.train.epochs} done, "
                f"on {device.get(t.key, '?')}"
            )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


__all__ = ["DriverLock", "Pool", "make_pool", "run_study", "status_line", "summary"]
