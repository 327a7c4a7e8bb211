"""The sweep driver: reconcile a study with its database, dispatch trials to slots.

One driver per study: an flock that dies with its holder (SQLite), or PostgreSQL's
advisory lock on the driver's own connection, which the server drops when the driver
dies (a server database). Pending, interrupted and
(with ``retry_failed``) failed trials go to the executor's slots (pool.py): a trial is
submitted only to a free slot, so no device ever runs more than K trials, every trial
runs on exactly one device, and a trial that has started only ever continues on a device
of the kind it started on. A worker's death costs only the trial it was running.

A study with ``[halving]`` runs rung by rung: trials are sent only as far as the rungs
decided so far allow (halving.py, re-derived from the database after every result), wait
``paused`` at an undecided rung, and are ``stopped`` when a decided rung drops them.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from joblib.externals.loky.process_executor import BrokenProcessPool
from sqlalchemy.exc import SQLAlchemyError
from tqdm import tqdm

from vaegrid import halving, provenance
from vaegrid.data import ensure_mnist
from vaegrid.errors import InputError
from vaegrid.paths import check_study_dir, ensure_dir, open_fd, write_atomic
from vaegrid.pool import (
    ANY_KIND,
    MAX_WORKER_DEATHS,
    ClusterGone,
    Executor,
    LocalExecutor,
    Pool,
    Slot,
)
from vaegrid.storage import Database, pg_advisory_lock
from vaegrid.store import (
    COMPLETED,
    DIVERGED,
    FAILED,
    FINAL,
    INTERRUPTED,
    PAUSED,
    PENDING,
    RUNNING,
    STOPPED,
    Store,
    existing_db,
    trial_dir,
)
from vaegrid.study import Study, TrialConfig, expand, searched_axes
from vaegrid.worker import DRIVER_TIMEOUT_S, TOKEN_FILE, Task, execute, init_worker

LOCK_NAME = "driver.lock"
HEARTBEAT_S = 4.0  # the driver's heartbeat (servers, clusters); workers allow DRIVER_TIMEOUT_S
EXIT_CLUSTER_GONE = 3


class DriverLock:
    """An exclusive flock on ``<study>/driver.lock`` holding the driver's pid.

    The kernel releases it when the driver dies, however it dies, so a crashed driver's
    lock is taken over by the next one without any stale-lock guessing. The lock file is
    opened without following links.
    """

    def __init__(self, study_dir: Path) -> None:
        self.path = study_dir / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> DriverLock:
        ensure_dir(self.path.parent)
        fd = open_fd(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
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
        """The pid of the live driver of ``study_dir`` (-1 if unreadable), or None."""
        path = study_dir / LOCK_NAME
        if not path.exists() and not path.is_symlink():
            return None
        fd = open_fd(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)
        return None


def summary(counts: Counter[str], total: int) -> str:
    """One line of progress, the same for the live bar and ``vaegrid status``.

    Halving studies add their stopped trials (done) and their trials paused at a rung
    (waiting for its decision) once there are any.
    """
    done = sum(counts[s] for s in FINAL)
    waiting = counts[PENDING] + counts[INTERRUPTED]
    stopped = f", {counts[STOPPED]} stopped" if counts[STOPPED] else ""
    paused = f", {counts[PAUSED]} paused at a rung" if counts[PAUSED] else ""
    return (
        f"{done}/{total} done ({counts[COMPLETED]} completed, {counts[DIVERGED]} diverged, "
        f"{counts[FAILED]} failed{stopped}), {counts[RUNNING]} running, {waiting} waiting{paused}"
    )


def run_study(
    study: Study,
    results: Path,
    pool: Pool,
    data_root: Path,
    retry_failed: bool = False,
    progress: bool = True,
    max_deaths: int = MAX_WORKER_DEATHS,
    executor: Executor | None = None,
    storage: str | None = None,
) -> int:
    """Sweep ``study`` to its end, resuming whatever its database and folder already hold.

    Args:
        executor: Where trials run; default a :class:`LocalExecutor` over ``pool``.
        storage: The database URL; default ``sqlite:///<results>/<study>/study.db``.

    Returns:
        0 when every trial completed or diverged; 1 when any failed (tracebacks in the
        database) or waits for a kind of device the pool lacks; 3 when the cluster's
        scheduler went away; 130 when stopped by Ctrl-C or SIGTERM (running trials keep
        their last finished epoch).

    Raises:
        InputError: missing or corrupt data, a results or study folder that is not a plain
            folder (a file, a link, on /proc...), a bad or unreachable database, a live
            driver on the study, an unwritable database, or one made by a study with other
            fixed settings. Nothing is written then.
    """
    study_dir = results / study.name
    check_study_dir(results, study_dir)
    db = Database.for_study(study_dir, storage)
    db.check_location()
    ensure_mnist(data_root, study.data)
    Store.check_compatible(db, study)
    grid = expand(study)
    token = uuid.uuid4().hex
    with _driver_lock(db, study_dir, study.name):
        store = Store(db)
        previous = signal.signal(signal.SIGTERM, _stop)
        executor = executor or LocalExecutor(pool, initializer=init_worker)
        beating = executor.watch == "heartbeat" or not db.is_sqlite
        try:
            store.sync_study(study, grid, pool.slots)
            write_atomic(study_dir / TOKEN_FILE, token + "\n")  # proof a worker sees it
            with _heartbeat(store, study.name, token, beating):
                sweep = _Sweep(study, grid, study_dir, store, pool, data_root, executor, max_deaths)
                sweep.token = token
                return sweep.run(retry_failed, progress)
        except SQLAlchemyError as e:
            reason = str(getattr(e, "orig", None) or e).splitlines()[0]
            print(
                f"vaegrid: the study database failed ({reason}); what was committed is kept: "
                "run the same command again to continue"
            )
            return 1
        finally:
            signal.signal(signal.SIGTERM, previous)
            store.close()


@contextmanager
def _driver_lock(db: Database, study_dir: Path, name: str) -> Iterator[None]:
    """One driver per study: the flock on SQLite, the server's advisory lock otherwise."""
    if db.is_sqlite:
        with DriverLock(study_dir):
            yield
        return
    ensure_dir(study_dir)  # trial folders live there, whatever the database
    try:
        lock = pg_advisory_lock(db, name)
        held = lock.__enter__()
    except Exception as e:  # unreachable, refused, bad credentials: one line
        raise InputError(f"{db}: cannot connect ({str(e).strip().splitlines()[0]})") from None
    try:
        if not held:
            reader = Store.reader(db)
            try:
                live = reader.live_driver(DRIVER_TIMEOUT_S * 3)
            finally:
                reader.close()
            who = f"pid {live.pid} on {live.host}" if live else "pid ?"
            raise InputError(
                f"{db}: another driver ({who}) is running study {name!r}; "
                "wait for it, or stop it and run again"
            )
        yield
    finally:
        lock.__exit__(None, None, None)


@contextmanager
def _heartbeat(store: Store, study: str, token: str, on: bool) -> Iterator[None]:
    """While the block runs, tell the database every few seconds that this driver lives."""
    if not on:
        yield
        return
    host, pid = provenance.host(), os.getpid()
    store.driver_beat(study, token, pid, host)
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            with suppress(SQLAlchemyError):  # a passing fault: workers allow DRIVER_TIMEOUT_S
                store.driver_beat(study, token, pid, host)

    thread = threading.Thread(target=beat, name="vaegrid-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        with suppress(SQLAlchemyError):
            store.driver_gone(study, token)


def _stop(signum: int, frame: object) -> None:
    """SIGTERM stops a sweep as cleanly as Ctrl-C does."""
    raise KeyboardInterrupt


class _Sweep:
    """One driver's pass over the study: the queue, the slots, the counts."""

    def __init__(
        self,
        study: Study,
        grid: list[TrialConfig],
        study_dir: Path,
        store: Store,
        pool: Pool,
        data_root: Path,
        executor: Executor,
        max_deaths: int,
    ) -> None:
        self.study, self.study_dir, self.store, self.pool = study, study_dir, store, pool
        self.data_root = data_root.resolve()
        self.executor, self.max_deaths = executor, max_deaths
        self.grid = {cfg.key: cfg for cfg in grid}
        self.bound = store.trial_devices()  # key -> the device kind it started on
        self.deaths: Counter[str] = Counter()
        self.versions = tuple(sorted(provenance.versions().items()))
        self.token = ""
        self.targets: dict[str, int] = {}  # halving: trial -> the epoch it may run to now
        self.retry: set[str] = set()  # halving: failed trials this driver has yet to rerun
        self.decided = 0  # halving: rungs decided so far

    def run(self, retry_failed: bool, progress: bool) -> int:
        status = {t.key: t.status for t in self.store.trials() if t.key in self.grid}
        redo = {PENDING, INTERRUPTED} | ({FAILED} if retry_failed else set())
        queue = [k for k in self.grid if status[k] in redo]
        if self.study.halving is not None:  # only as far as the rungs decided so far allow
            self.retry = {k for k in queue if status[k] == FAILED}
            status = self._decide().statuses
            queue = [k for k in self.grid if k in self.targets and status[k] in redo | {PAUSED}]
        kinds = set(self.pool.kinds)
        self.stranded = [  # a cluster's workers ("any" kind) check the kind themselves
            k for k in queue if k in self.bound and not {ANY_KIND, self.bound[k]} & kinds
        ]
        self.queue = deque(k for k in queue if k not in self.stranded)
        queued = set(queue)
        self.counts = Counter(status[k] for k in self.grid if k not in queued)
        self.counts[PENDING] = len(queue)
        if not self.queue:
            print(f"{self.study.name}: nothing to do: {summary(self.counts, len(self.grid))}")
            return self._exit_code()
        self.bar = tqdm(
            total=len(self.grid),
            initial=len(self.grid) - len(queue),
            desc=self.study.name,
            unit="trial",
            disable=not progress,
            dynamic_ncols=True,
        )
        running: dict[Any, tuple[str, Slot]] = {}
        free = self.pool.slot_list()
        try:
            while self.queue or running:
                self._dispatch(free, running)
                done = self.executor.wait(list(running), 1.0)
                for future in done:
                    key, slot = running.pop(future)
                    free.append(slot)
                    self._collect(key, slot, future)
                if done and self.study.halving is not None:
                    self._advance({k for k, _ in running.values()})
                self.bar.refresh()
        except KeyboardInterrupt:
            return self._abandon(running, "interrupted", "run the same command again", 130)
        except ClusterGone as e:
            then = "run the same command again once it is back"
            return self._abandon(running, f"vaegrid: {e}", then, EXIT_CLUSTER_GONE)
        self.executor.shutdown(kill=False)
        self.bar.close()
        return self._exit_code()

    def _abandon(self, running: dict[Any, tuple[str, Slot]], why: str, then: str, code: int) -> int:
        """Stop every worker now; running trials keep their last epoch (interrupted)."""
        self.executor.shutdown(kill=True)
        self.store.mark([k for k, _ in running.values()], INTERRUPTED)
        self.bar.close()
        print(f"{why}: {len(running)} running trials keep their last finished epoch; {then}")
        return code

    def _decide(self) -> halving.Applied:
        """Halving: take and record every rung decision the database allows (halving.py)."""
        assert self.study.halving is not None
        applied = halving.update(
            self.store, list(self.grid), self.study.halving, self.study.epochs, self.retry
        )
        self.targets = applied.plan.targets
        for rung in applied.plan.decided[self.decided :]:
            tqdm.write(
                f"rung {rung.epoch}: the best {len(rung.survivors)} of {len(rung.ranked)} "
                f"trials by {self.study.halving.metric} at epoch {rung.epoch} are kept"
            )
        self.decided = len(applied.plan.decided)
        return applied

    def _advance(self, running: set[str]) -> None:
        """Halving, after results came in: decide what can be decided, queue what may run
        now, and count every trial as the database has it."""
        applied = self._decide()
        status = applied.statuses
        pending = set(self.queue) | set(self.stranded)
        kinds = set(self.pool.kinds)
        may_run = {PENDING, INTERRUPTED, PAUSED}
        for key in self.grid:
            if (
                key in self.targets
                and key not in pending | running
                and (status[key] in may_run or key in self.retry)
            ):
                if key in self.bound and self.bound[key] not in kinds:
                    self.stranded.append(key)
                else:
                    self.queue.append(key)
                pending.add(key)
        self.counts = Counter(status[k] for k in self.grid if k not in pending)
        self.counts[PENDING] = len(pending)
        done = sum(self.counts[s] for s in FINAL)
        first = done - len(applied.stopped) + 1  # numbered as _finished numbers trials
        for n, key in enumerate(applied.stopped, start=first):
            rung = applied.plan.stopped[key]
            self._say(f"[{n}/{len(self.grid)}] {self._describe(key)}: stopped at rung {rung}")
        for key in applied.reopened:
            self._say(f"{self._describe(key)}: goes on (its rung was decided again)")
        self.bar.n = done
        self._postfix()

    def _paused(self, key: str) -> None:
        self._move(RUNNING, PAUSED)
        self._say(f"{self._describe(key)}: paused at epoch {self.targets.get(key)}")

    def _say(self, line: str) -> None:
        """One line per event when there is no live bar (logs, --no-progress)."""
        if self.bar.disable:
            print(line, flush=True)

    def _describe(self, key: str) -> str:
        return f"{key} ({self.grid[key].describe(self.study.searched)})"

    def _exit_code(self) -> int:
        for kind, n in Counter(self.bound[k] for k in self.stranded).items():
            print(
                f"{n} trials started on {kind} and only continue on that kind of device; "
                f"this pool has {', '.join(sorted(set(self.pool.kinds)))}: run again with "
                "--devices naming such a device"
            )
        return 1 if self.counts[FAILED] or self.stranded else 0

    def _dispatch(self, free: list[Slot], running: dict[Any, tuple[str, Slot]]) -> None:
        """Fill free slots, least busy device first, each with the first queued trial that
        may run there (a started trial only on the kind of device it started on)."""
        busy = Counter(slot.device for _, slot in running.values())
        candidates = list(free)
        while candidates and self.queue:
            slot = min(candidates, key=lambda s: (busy[s.device], s.device, s.index))
            candidates.remove(slot)
            kind = self.pool.kind(slot.device)
            key = next(
                (k for k in self.queue if kind == ANY_KIND or self.bound.get(k, kind) == kind),
                None,
            )
            if key is None:
                continue
            self.queue.remove(key)
            self.retry.discard(key)
            free.remove(slot)
            busy[slot.device] += 1
            self._move(PENDING, RUNNING)
            try:
                running[self._submit(key, slot)] = (key, slot)
            except BrokenProcessPool as e:  # the slot's (local) worker died while idle
                free.append(slot)
                self.executor.reset(slot)
                self._worker_died(key, e)

    def _submit(self, key: str, slot: Slot) -> Any:
        cfg = self.grid[key]
        db = self.store.db
        url = str(db.path.resolve()) if db.path else db.url.render_as_string(hide_password=False)
        task = Task(
            config=cfg.to_json(),
            optuna_trial_id=self.store.start_trial(self.study, cfg),
            device="auto" if slot.device == "cluster" else slot.device,
            threads=self.pool.threads,
            db=f"sqlite:///{url}" if db.path else url,
            trial_dir=str(trial_dir(self.study_dir, key).resolve()),
            data_root=str(self.data_root),
            driver_pid=os.getpid(),
            versions=self.versions,
            watch=self.executor.watch,
            driver_token=self.token,
            stop_at=self._stop_at(key),
        )
        return self.executor.submit(slot, execute, task)

    def _stop_at(self, key: str) -> int | None:
        """Halving: the rung a trial may run to now; None: to its last epoch."""
        target = self.targets.get(key)
        return target if target is not None and target < self.study.epochs else None

    def _collect(self, key: str, slot: Slot, future: Any) -> None:
        """A trial's future ended: its status, its worker's death, or an unrecorded error."""
        try:
            status = future.result()
        except Exception as e:
            if self.executor.is_death(e):  # the worker process died (killed, out of memory)
                self.executor.reset(slot)
                self._worker_died(key, e)
                return
            # the worker could not even record its own failure
            self.store.fail(key, "".join(traceback.format_exception(e)))
            status = FAILED
        if status == INTERRUPTED:  # its lease was lost, or it saw a stale heartbeat: again
            self.queue.appendleft(key)
            self._move(RUNNING, PENDING)
            return
        if status == PAUSED and self.study.halving is not None:
            self._paused(key)
            return
        if status not in FINAL:  # never expected; recorded rather than trusted
            self.store.fail(key, f"worker returned status {status!r}")
            status = FAILED
        self._finished(key, status)

    def _finished(self, key: str, status: str) -> None:
        self._move(RUNNING, status)
        self.bar.update(1)
        done = sum(self.counts[s] for s in FINAL)
        self._say(f"[{done}/{len(self.grid)}] {self._describe(key)}: {status}")

    def _move(self, old: str, new: str) -> None:
        self.counts[old] -= 1
        self.counts[new] += 1
        self._postfix()

    def _postfix(self) -> None:
        halving = (
            f", paused {self.counts[PAUSED]}, stopped {self.counts[STOPPED]}"
            if self.study.halving is not None
            else ""
        )
        self.bar.set_postfix_str(
            f"running {self.counts[RUNNING]}, diverged {self.counts[DIVERGED]}, "
            f"failed {self.counts[FAILED]}{halving}",
            refresh=False,
        )

    def _worker_died(self, key: str, error: BaseException) -> None:
        """The worker running ``key`` died: the trial ended (if its end was committed first),
        resumes, or after ``max_deaths`` deaths fails."""
        self.bound = self.store.trial_devices()  # its first epoch may have bound it
        status = self.store.status_of(key)
        if status == PAUSED and self.study.halving is not None:  # its pause was committed
            self._paused(key)
            return
        if status in FINAL:
            self._finished(key, status)
            return
        self.deaths[key] += 1
        if self.deaths[key] >= self.max_deaths:
            cause = f"worker process died {self.deaths[key]} times: {error}"
            self.store.mark([key], FAILED, cause)
            self._finished(key, FAILED)
        else:
            self.store.mark([key], INTERRUPTED)
            self.queue.appendleft(key)
            self._move(RUNNING, PENDING)


def status_line(study_dir: Path, storage: str | None = None) -> str:
    """``vaegrid status``: a study's progress read from its database, then one line per
    running trial with its epoch and device. Opens the database read-only.

    Raises:
        InputError: ``study_dir`` holds no vaegrid study database, or ``storage`` is bad.
    """
    db = existing_db(study_dir, storage)
    store = Store.reader(db)
    try:
        name, slots = store.study_row()
        trials = store.trials()
        runs = store.runs()
        searched = searched_axes(store.fingerprint())
        live = None if db.is_sqlite else store.live_driver(DRIVER_TIMEOUT_S)
    finally:
        store.close()
    counts = Counter(t.status for t in trials)
    pid: int | str | None = DriverLock.holder(study_dir) if db.is_sqlite else None
    if live is not None:
        pid = f"{live.pid} on {live.host}"
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
                f"  running {t.key} ({c.describe(searched)}): epoch {t.epochs_done}/{c.epochs} "
                f"done, on {device.get(t.key, '?')}"
            )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


__all__ = ["DriverLock", "run_study", "status_line", "summary"]
