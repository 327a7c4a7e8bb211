"""The study database: one SQLite file that is an Optuna storage and holds vaegrid's tables.

Optuna's tables make ``optuna.load_study`` and optuna-dashboard read a sweep as-is
(params: the searched axes and the repeat, value = final validation elbo, intermediate values =
per-epoch validation elbo, the trial key as user attribute ``key``). vaegrid's own
tables (``vg_*``) hold what Optuna has no place for: per-epoch train and validation
metrics, every run of a trial with its device and timing, test results.

Concurrency: WAL journal (readers never block the writer), a 60 s busy timeout, and
every write transaction opened with ``BEGIN IMMEDIATE`` so a read-then-write never fails
with "database is locked" when another worker committed in between (SQLite's
SQLITE_BUSY_SNAPSHOT). Reads take no write lock: ``Store.reader`` opens the file in
SQLite's read-only mode and writes nothing, so ``status``, ``report`` and
optuna-dashboard never block a sweep. Transactions are one epoch's rows at most.

Consistency: vaegrid's tables are the truth and Optuna's ledger follows them. Every
write of a trial's life goes to ``vg_*`` first, then to Optuna, and ``sync_study``
repairs whatever a kill between the two left behind (an Optuna trial created but not
recorded is adopted, one not finished is finished), so a resumed sweep never holds two
Optuna trials for one key.
"""

from __future__ import annotations

import json
import re
import resource
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import (
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    delete,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from vaegrid.errors import InputError
from vaegrid.paths import refuse_link
from vaegrid.storage import DB_NAME, Database, insert_if_absent
from vaegrid.study import AXES, REPEATS_MAX, Axis, Study, TrialConfig, config_problem

if TYPE_CHECKING:  # the driver imports this module and never loads torch
    import pandas as pd

    from vaegrid.train import EpochRecord, TrialResult

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Trial statuses. "running" and "interrupted" resume from their checkpoint.
PENDING, RUNNING, COMPLETED, DIVERGED, FAILED, INTERRUPTED = (
    "pending",
    "running",
    "completed",
    "diverged",
    "failed",
    "interrupted",
)
# Halving studies only (halving.py): "paused" = reached the epoch it was sent to (a rung),
# checkpoint kept, until the rung is decided; "stopped" = a decided rung dropped it (its
# rung is in vg_stop, its checkpoint kept in case a grown grid brings it back).
PAUSED, STOPPED = "paused", "stopped"
FINAL = frozenset({COMPLETED, DIVERGED, FAILED, STOPPED})  # never runs again (for this grid)
# Who moves a trial where (every move is a method of Store):
#   pending/interrupted/paused/failed(retried)/stopped(reopened) -> running: start_trial
#   running -> completed/diverged/failed/paused: finish_run (the worker), fail (the driver)
#   running -> interrupted/failed: mark (the driver: Ctrl-C, worker deaths), sync_study
#   paused/interrupted/pending -> stopped: stop; stopped -> paused: reopen (halving.update)
KEY_PATTERN = re.compile(r"[0-9a-f]{12}")  # TrialConfig.key: anything else is not ours
METRIC_NAME = "val_elbo"  # what Optuna's value is, as optuna-dashboard shows it


def _distribution(axis: Axis) -> BaseDistribution:
    """An axis's Optuna distribution: its whole allowed range (or every choice), not the
    grid's values: Optuna refuses a distribution that changes, and a grid may grow."""
    if axis.kind is str:
        return CategoricalDistribution(axis.choices)
    if axis.kind is int:
        return IntDistribution(int(axis.low), int(axis.high), log=axis.log)
    return FloatDistribution(axis.low, axis.high, log=axis.log)


PARAM_DISTRIBUTIONS: dict[str, BaseDistribution] = {a.name: _distribution(a) for a in AXES}
PARAM_DISTRIBUTIONS["repeat"] = IntDistribution(0, REPEATS_MAX - 1)


class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    __tablename__ = "vg_study"
    name: Mapped[str] = mapped_column(String, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(Text)  # JSON of the fixed settings
    source: Mapped[str] = mapped_column(Text)  # the study file it was last run from
    slots: Mapped[int] = mapped_column(Integer, default=1)  # trials at once in the last run


class TrialRow(Base):
    __tablename__ = "vg_trial"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    config: Mapped[str] = mapped_column(Text)  # TrialConfig JSON
    hidden: Mapped[int] = mapped_column(Integer)
    latent: Mapped[int] = mapped_column(Integer)
    lr: Mapped[float] = mapped_column(Float)
    clip: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String, default=PENDING)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    optuna_trial_id: Mapped[int | None] = mapped_column(Integer)
    cause: Mapped[str | None] = mapped_column(Text)  # diverged: what and where; failed: the error
    diverged_epoch: Mapped[int | None] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)  # training time, all runs


class RunRow(Base):
    __tablename__ = "vg_run"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(ForeignKey("vg_trial.key"), index=True)
    device: Mapped[str] = mapped_column(String)
    worker: Mapped[int] = mapped_column(Integer)  # pid
    started: Mapped[float] = mapped_column(Float)  # unix time
    ended: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String, default=RUNNING)
    error: Mapped[str | None] = mapped_column(Text)  # traceback of a failed run
    max_rss_mb: Mapped[float | None] = mapped_column(Float)  # worker's peak resident memory so far


class ProvenanceRow(Base):
    """What a run computed with. A table of its own, so older study databases gain it."""

    __tablename__ = "vg_provenance"
    run_id: Mapped[int] = mapped_column(ForeignKey("vg_run.id"), primary_key=True)
    device_kind: Mapped[str] = mapped_column(String)  # provenance.device_kind
    host: Mapped[str] = mapped_column(String)
    versions: Mapped[str] = mapped_column(Text)  # JSON: python, vaegrid, git, torch, cuda, ...
    peak_device_mb: Mapped[float | None] = mapped_column(Float)  # CUDA: max allocated


class DriverRow(Base):
    """The live driver of the study (servers and clusters: workers watch its heartbeat)."""

    __tablename__ = "vg_driver"
    study: Mapped[str] = mapped_column(String, primary_key=True)
    token: Mapped[str] = mapped_column(String)  # this driver run's id, sent with every task
    pid: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String)
    beat: Mapped[float] = mapped_column(Float)  # unix time of its last heartbeat


class ClaimRow(Base):
    """Who runs a trial (servers): a lease its worker renews; a dead worker's expires."""

    __tablename__ = "vg_claim"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    owner: Mapped[str] = mapped_column(String)  # host:pid:thread of the worker
    expires: Mapped[float] = mapped_column(Float)  # unix time


class TrialDeviceRow(Base):
    """The kind of device a trial's first epoch ran on: it only ever continues on that kind."""

    __tablename__ = "vg_trial_device"
    key: Mapped[str] = mapped_column(ForeignKey("vg_trial.key"), primary_key=True)
    device_kind: Mapped[str] = mapped_column(String)


class EpochRow(Base):
    __tablename__ = "vg_epoch"
    key: Mapped[str] = mapped_column(ForeignKey("vg_trial.key"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    split: Mapped[str] = mapped_column(String, primary_key=True)  # "train" or "val"
    elbo: Mapped[float] = mapped_column(Float)
    recon: Mapped[float] = mapped_column(Float)
    kl: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)


class StopRow(Base):
    """The rung that stopped a ``stopped`` trial (halving). A table of its own, so older
    study databases gain it."""

    __tablename__ = "vg_stop"
    key: Mapped[str] = mapped_column(ForeignKey("vg_trial.key"), primary_key=True)
    rung: Mapped[int] = mapped_column(Integer)  # the epoch it was compared at, and stopped


class TestRow(Base):
    __tablename__ = "vg_test"
    key: Mapped[str] = mapped_column(ForeignKey("vg_trial.key"), primary_key=True)
    elbo: Mapped[float] = mapped_column(Float)  # test metrics, as validation's: one z per image
    recon: Mapped[float] = mapped_column(Float)
    kl: Mapped[float] = mapped_column(Float)
    nll: Mapped[float] = mapped_column(Float)  # importance-sampled -log p(x), nats per image
    nll_samples: Mapped[int] = mapped_column(Integer)  # k, importance samples per image
    seconds: Mapped[float] = mapped_column(Float)  # time the evaluation took
    evaluated: Mapped[float] = mapped_column(Float)  # unix time


@dataclass(frozen=True)
class TrialInfo:
    """A trial's row, as the driver and the report read it."""

    key: str
    config: TrialConfig
    status: str
    epochs_done: int


def db_path(study_dir: Path) -> Path:
    return study_dir / DB_NAME


def trial_dir(study_dir: Path, key: str) -> Path:
    """A trial's folder: config, log, checkpoint, weights."""
    return study_dir / "trials" / key


def existing_db(study_dir: Path, storage: str | None = None) -> Database:
    """The database of an existing study: ``--storage``, else the folder's ``study.db``.

    Raises:
        InputError: a bad ``storage`` URL, or ``study_dir`` holds no study database.
    """
    db = Database.for_study(study_dir, storage)
    if db.path is not None and not db.path.is_file():
        raise InputError(
            f"{study_dir}: not a vaegrid study folder (no {db.path.name}); "
            "expected RESULTS_DIR/STUDY"
        )
    return db


class Store:
    """Read and write one study database (one process may hold one Store per file).

    ``Store(path)`` is a writer: it creates missing tables. ``Store.reader(path)`` writes
    nothing, takes no lock, and refuses a file that is not a vaegrid study.
    """

    def __init__(self, db: Database | Path, *, readonly: bool = False) -> None:
        self.db = db if isinstance(db, Database) else Database.sqlite(db)
        self.path = str(self.db)  # where, for messages (never the password)
        self.readonly = readonly
        self._optuna: RDBStorage | None = None
        self._lock = threading.Lock()
        if self.db.path is not None:
            refuse_link(self.db.path)
        self.engine = self.db.engine(readonly)
        if readonly:
            return
        try:
            Base.metadata.create_all(self.engine)
        except SQLAlchemyError as e:
            self.engine.dispose()
            raise InputError(
                f"{self.path}: cannot write the study database ({_reason(e)})"
            ) from None

    @classmethod
    def reader(cls, db: Database | Path) -> Store:
        """A read-only view of an existing study database.

        Raises:
            InputError: missing, a link, unreachable, or not a vaegrid study database.
        """
        store = cls(db, readonly=True)
        try:
            store.study_row()
        except (SQLAlchemyError, InputError) as e:
            store.close()
            reason = e if isinstance(e, InputError) else _reason(e)
            raise InputError(f"{store.path}: not a vaegrid study database ({reason})") from None
        return store

    @property
    def optuna(self) -> RDBStorage:
        """Optuna's storage on the same database, opened on first use (readers never do)."""
        assert not self.readonly, "a reader never writes Optuna's ledger"
        with self._lock:  # K trials of one Dask worker share this store
            if self._optuna is None:
                url = self.db.url.render_as_string(hide_password=False)
                self._optuna = RDBStorage(url, engine_kwargs=self.db.optuna_engine_kwargs())
                self.db.harden_optuna(self._optuna.engine)
        return self._optuna

    def close(self) -> None:
        self.engine.dispose()
        if self._optuna is not None:
            self._optuna.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed at the end of the block, rolled back on any error."""
        with Session(self.engine) as s, s.begin():
            yield s

    # -- the driver's side ---------------------------------------------------------------

    @staticmethod
    def check_compatible(db: Database | Path, study: Study) -> None:
        """Refuse, without writing, a database made by a study with other fixed settings.

        An empty database (a new server database, or a first run killed before its
        tables were made) is compatible.

        Raises:
            InputError: unreachable, not a vaegrid study database, or its fixed settings
                differ.
        """
        db = db if isinstance(db, Database) else Database.sqlite(db)
        if db.path is not None:
            refuse_link(db.path)
            if not db.path.exists():
                return
            if not db.path.is_file():
                raise InputError(f"{db.path}: is not a file; expected a vaegrid study database")
        engine = db.engine(readonly=True)
        try:
            with engine.connect() as con:
                tables = inspect(con).get_table_names()
                if not tables:
                    return
                if StudyRow.__tablename__ not in tables:
                    raise InputError(f"{db}: not a vaegrid study database (no vg_study table)")
                row = con.execute(select(StudyRow.name, StudyRow.fingerprint)).first()
        except SQLAlchemyError as e:
            raise InputError(f"{db}: cannot read the study database ({_reason(e)})") from None
        finally:
            engine.dispose()
        if row is not None:
            _refuse_mismatch(str(db), row[0], row[1], study)

    def sync_study(self, study: Study, trials: Sequence[TrialConfig], slots: int) -> None:
        """Record the study, add the grid's new trials as pending (existing keys are kept),
        close what a dead driver left running, and bring Optuna's ledger in line.

        Raises:
            InputError: the stored study has other fixed settings, or the file is not
                writable (read-only file or folder, full disk).
        """
        try:
            self._sync(study, trials, slots)
        except SQLAlchemyError as e:
            raise InputError(
                f"{self.path}: cannot write the study database ({_reason(e)})"
            ) from None

    def _sync(self, study: Study, trials: Sequence[TrialConfig], slots: int) -> None:
        with self.session() as s:
            stored = s.scalars(select(StudyRow)).first()
            if stored is not None:  # checked before the lock too; now under it
                _refuse_mismatch(self.path, stored.name, stored.fingerprint, study)
            row = s.get(StudyRow, study.name)
            if row is None:
                s.add(
                    StudyRow(
                        name=study.name,
                        fingerprint=json.dumps(study.fingerprint()),
                        source=study.source,
                        slots=slots,
                    )
                )
            else:
                row.source, row.slots = study.source, slots
            new = [
                {"key": c.key, "config": c.to_json(), "status": PENDING, "epochs_done": 0,
                 "seconds": 0.0, **c.axis_values(["hidden", "latent", "lr", "clip"])}
                for c in trials
            ]  # fmt: skip
            insert_if_absent(s, TrialRow, new)  # existing keys keep their rows
            # Runs left open by a driver that died are over.
            for run in s.scalars(select(RunRow).where(RunRow.status == RUNNING)):
                run.status = INTERRUPTED
            for t in s.scalars(select(TrialRow).where(TrialRow.status == RUNNING)):
                t.status = INTERRUPTED
        created = optuna.create_study(
            storage=self.optuna, study_name=study.name, direction="minimize", load_if_exists=True
        )
        if created.metric_names != [METRIC_NAME]:
            with warnings.catch_warnings():  # "experimental": the API, not our use of it
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                created.set_metric_names([METRIC_NAME])
        self._reconcile_optuna(study.name)

    def _reconcile_optuna(self, study_name: str) -> None:
        """Repair what a kill between a ``vg_*`` write and its Optuna write left behind."""
        study_id = self.optuna.get_study_id_from_name(study_name)
        by_key: dict[str, list[FrozenTrial]] = defaultdict(list)
        for t in self.optuna.get_all_trials(study_id, deepcopy=False):
            by_key[str(t.user_attrs.get("key"))].append(t)
        with self.session() as s:
            rows = list(s.scalars(select(TrialRow)))
            finals = {}
            for row in rows:
                ledger = {t._trial_id: t for t in by_key.get(row.key, [])}
                current = ledger.get(row.optuna_trial_id) if row.optuna_trial_id else None
                unfinished = [t for t in ledger.values() if not t.state.is_finished()]
                if (
                    row.status not in FINAL
                    and unfinished
                    and (current is None or current.state.is_finished())
                ):
                    row.optuna_trial_id = unfinished[-1]._trial_id  # created, never recorded
                elif (
                    row.status in FINAL and current is not None and not current.state.is_finished()
                ):
                    finals[row.key] = (row.status, row.cause)  # recorded, never finished
        for key, (status, cause) in finals.items():
            self._finish_optuna(key, status, cause)

    def trials(self) -> list[TrialInfo]:
        """Every trial in the database, each checked: a key of ours, a config that hashes to it.

        Raises:
            InputError: a row was edited by hand (or by anything but vaegrid).
        """
        with self.session() as s:
            rows = s.scalars(select(TrialRow)).all()
            return [
                TrialInfo(r.key, _config(self.path, r.key, r.config), r.status, r.epochs_done)
                for r in rows
            ]

    def trial_devices(self) -> dict[str, str]:
        """The device kind each started trial is bound to (see :class:`TrialDeviceRow`)."""
        with self.session() as s:
            return {r.key: r.device_kind for r in s.scalars(select(TrialDeviceRow))}

    def start_trial(self, study: Study, cfg: TrialConfig) -> int:
        """Mark a trial running and return its Optuna trial id (a new one if it has none
        or its old one failed, as for a retried failure)."""
        with self.session() as s:
            row = s.get(TrialRow, cfg.key)
            assert row is not None
            trial_id = row.optuna_trial_id
        # Optuna never reopens a finished trial: a retried failure, or a stopped trial that a
        # grown grid brings back (halving), goes on in a new one.
        if trial_id is None or self.optuna.get_trial(trial_id).state in (
            TrialState.FAIL,
            TrialState.PRUNED,
        ):
            trial_id = self._new_optuna_trial(study, cfg)
        with self.session() as s:
            row = s.get(TrialRow, cfg.key)
            assert row is not None
            row.status, row.optuna_trial_id, row.cause = RUNNING, trial_id, None
        return trial_id

    def _new_optuna_trial(self, study: Study, cfg: TrialConfig) -> int:
        template = FrozenTrial(
            number=-1,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=datetime.now(),
            datetime_complete=None,
            params={**cfg.axis_values(study.searched), "repeat": cfg.repeat},
            distributions={n: PARAM_DISTRIBUTIONS[n] for n in (*study.searched, "repeat")},
            user_attrs={"key": cfg.key},
            system_attrs={},
            intermediate_values={},
            trial_id=-1,
        )
        study_id = self.optuna.get_study_id_from_name(study.name)
        return self.optuna.create_new_trial(study_id, template_trial=template)

    def mark(self, keys: Sequence[str], status: str, cause: str | None = None) -> None:
        """Set the status of running trials (and close their open runs) from the driver."""
        changed = []
        with self.session() as s:
            for key in keys:
                row = s.get(TrialRow, key)
                if row is not None and row.status == RUNNING:
                    row.status, row.cause = status, cause
                    changed.append(key)
                for run in s.scalars(
                    select(RunRow).where(RunRow.key == key, RunRow.status == RUNNING)
                ):
                    run.status, run.ended, run.error = status, time.time(), cause
        if status in FINAL:
            for key in changed:
                self._finish_optuna(key, status, cause)

    def stop(self, rungs: Mapping[str, int], causes: Mapping[str, str]) -> None:
        """Stop waiting trials at the rung that dropped them (halving), then prune their
        Optuna trials. A trial that is running or has ended otherwise is left as it is."""
        changed = []
        with self.session() as s:
            for key, rung in rungs.items():
                row = s.get(TrialRow, key)
                if row is None or row.status not in (PAUSED, INTERRUPTED, PENDING, STOPPED):
                    continue
                row.status, row.cause = STOPPED, causes.get(key)
                s.merge(StopRow(key=key, rung=rung))
                changed.append(key)
        for key in changed:
            self._finish_optuna(key, STOPPED, causes.get(key))

    def reopen(self, keys: Sequence[str]) -> None:
        """Stopped trials go on (a grown grid re-decided their rung): paused at their last
        epoch, checkpoint kept. Their pruned Optuna trial stays; start_trial opens a new one."""
        with self.session() as s:
            for key in keys:
                row = s.get(TrialRow, key)
                if row is not None and row.status == STOPPED:
                    row.status, row.cause = PAUSED, None
                    stop = s.get(StopRow, key)
                    if stop is not None:
                        s.delete(stop)

    def stopped_rungs(self) -> dict[str, int]:
        """The rung each stopped trial was stopped at."""
        with self.session() as s:
            return {r.key: r.rung for r in s.scalars(select(StopRow))}

    def rung_values(
        self, metric: str, epochs: Sequence[int]
    ) -> tuple[dict[str, tuple[str, int, str | None]], dict[str, dict[int, float]]]:
        """What the halving rule reads: every trial's (status, epochs_done, cause), and its
        validation ``metric`` ("val_elbo" or "val_recon") at each of ``epochs``."""
        column = {"val_elbo": EpochRow.elbo, "val_recon": EpochRow.recon}[metric]
        with self.session() as s:
            rows = {
                key: (status, done, cause)
                for key, status, done, cause in s.execute(
                    select(TrialRow.key, TrialRow.status, TrialRow.epochs_done, TrialRow.cause)
                )
            }
            values: dict[str, dict[int, float]] = defaultdict(dict)
            query = select(EpochRow.key, EpochRow.epoch, column).where(
                EpochRow.split == "val", EpochRow.epoch.in_(list(epochs))
            )
            for key, epoch, value in s.execute(query):
                values[key][epoch] = value
        return rows, dict(values)

    def status_of(self, key: str) -> str:
        with self.session() as s:
            row = s.get(TrialRow, key)
            assert row is not None
            return row.status

    def driver_beat(self, study: str, token: str, pid: int, host: str) -> None:
        """The driver is alive (written every few seconds while a sweep runs)."""
        with self.session() as s:
            row = s.get(DriverRow, study)
            if row is None:
                s.add(DriverRow(study=study, token=token, pid=pid, host=host, beat=time.time()))
            else:
                row.token, row.pid, row.host, row.beat = token, pid, host, time.time()

    def driver_gone(self, study: str, token: str) -> None:
        """The driver ended: its heartbeat row says so at once (no timeout to wait out)."""
        with self.session() as s:
            s.execute(
                update(DriverRow)
                .where(DriverRow.study == study, DriverRow.token == token)
                .values(beat=0.0)
            )

    def live_driver(self, timeout: float) -> DriverRow | None:
        """The driver whose heartbeat is younger than ``timeout`` seconds, if any."""
        with self.session() as s:
            row = s.scalars(select(DriverRow)).first()
            if row is None or time.time() - row.beat > timeout:
                return None
            s.expunge(row)
            return row

    # -- the worker's side ---------------------------------------------------------------

    def claim(self, key: str, owner: str, ttl: float) -> bool:
        """Take (or renew) the lease on ``key`` for ``ttl`` seconds; False if another
        worker holds a lease that has not expired."""
        now = time.time()
        with self.session() as s:
            insert_if_absent(s, ClaimRow, [{"key": key, "owner": owner, "expires": now + ttl}])
            taken: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                update(ClaimRow)
                .where(ClaimRow.key == key, or_(ClaimRow.owner == owner, ClaimRow.expires < now))
                .values(owner=owner, expires=now + ttl)
            )
            return bool(taken.rowcount == 1)

    def release(self, key: str, owner: str) -> None:
        with self.session() as s:
            s.execute(delete(ClaimRow).where(ClaimRow.key == key, ClaimRow.owner == owner))

    def begin_run(
        self, key: str, device: str, worker: int, kind: str, host: str, versions: dict[str, str]
    ) -> int | None:
        """Open a run of ``key`` with its provenance; None if the trial already ended (its
        end was committed but the driver did not learn it: nothing to run)."""
        with self.session() as s:
            trial = s.get(TrialRow, key)
            assert trial is not None
            if trial.status in FINAL:
                return None
            # Runs of this trial still open belong to a worker that died: this one holds the
            # trial's lock (or lease) now, so they are over.
            for old in s.scalars(select(RunRow).where(RunRow.key == key, RunRow.status == RUNNING)):
                old.status, old.ended = INTERRUPTED, time.time()
            run = RunRow(key=key, device=device, worker=worker, started=time.time(), status=RUNNING)
            s.add(run)
            s.flush()
            s.add(
                ProvenanceRow(
                    run_id=run.id, device_kind=kind, host=host, versions=json.dumps(versions)
                )
            )
            return run.id

    def record_epoch(
        self, key: str, optuna_trial_id: int, record: EpochRecord, kind: str | None = None
    ) -> None:
        """Commit one epoch's train and validation rows (idempotent), then its Optuna value.

        The first epoch also binds the trial to ``kind``, the kind of device it runs on.
        """
        with self.session() as s:
            rows = [
                {"key": key, "epoch": record.epoch, "split": split, "elbo": m.elbo,
                 "recon": m.recon, "kl": m.kl, "seconds": record.seconds}
                for split, m in (("train", record.train), ("val", record.val))
            ]  # fmt: skip
            insert_if_absent(s, EpochRow, rows)  # a replayed epoch keeps what was committed
            row = s.get(TrialRow, key)
            assert row is not None
            if record.epoch > row.epochs_done:
                row.epochs_done = record.epoch
                row.seconds += record.seconds
            if kind is not None:
                insert_if_absent(s, TrialDeviceRow, [{"key": key, "device_kind": kind}])
        # A replayed epoch of a trial whose end Optuna already has is refused by Optuna itself:
        # no second read of the whole trial each epoch to check first.
        with suppress(UpdateFinishedTrialError):
            self.optuna.set_trial_intermediate_value(optuna_trial_id, record.epoch, record.val.elbo)

    def finish_run(
        self,
        key: str,
        run_id: int,
        result: TrialResult | None,
        error: str | None,
        peak_device_mb: float | None = None,
    ) -> str:
        """Record how a run ended: the trial's result, or the traceback of a crash."""
        status: str = FAILED
        cause_text: str | None = None
        epoch: int | None = None
        if result is None:
            cause_text = _cause(error)
        else:
            status, cause_text, epoch = result.status, result.cause, result.diverged_epoch
        # vaegrid's tables first: they are the truth. A kill before the Optuna write below
        # is repaired by the next driver's sync_study.
        with self.session() as s:
            row = s.get(TrialRow, key)
            assert row is not None
            if row.status not in FINAL:  # a trial's end is written once
                row.status, row.cause, row.diverged_epoch = status, cause_text, epoch
            run = s.get(RunRow, run_id)
            assert run is not None
            run.status, run.ended, run.error = status, time.time(), error
            run.max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            prov = s.get(ProvenanceRow, run_id)
            if prov is not None:
                prov.peak_device_mb = peak_device_mb
        if status in FINAL:
            self._finish_optuna(key, status, cause_text)
        return status

    def fail(self, key: str, error: str) -> None:
        """The driver's record of a trial whose worker could not record its own end."""
        with self.session() as s:
            row = s.get(TrialRow, key)
            assert row is not None
            row.status, row.cause = FAILED, _cause(error)
            for run in s.scalars(select(RunRow).where(RunRow.key == key, RunRow.status == RUNNING)):
                run.status, run.ended, run.error = FAILED, time.time(), error
        self._finish_optuna(key, FAILED, _cause(error))

    def _finish_optuna(self, key: str, status: str, cause: str | None) -> None:
        """Finish the trial's Optuna trial as vaegrid's tables say it ended."""
        with self.session() as s:
            row = s.get(TrialRow, key)
            trial_id = row.optuna_trial_id if row is not None else None
            val = {
                e.epoch: e.elbo
                for e in s.scalars(
                    select(EpochRow).where(EpochRow.key == key, EpochRow.split == "val")
                )
            }
        if status not in FINAL or trial_id is None:  # paused at a rung: its trial runs on
            return
        trial = self.optuna.get_trial(trial_id)
        if trial.state.is_finished():
            return
        if status in (COMPLETED, STOPPED):
            for epoch in sorted(set(val) - set(trial.intermediate_values)):  # a kill's gap
                self.optuna.set_trial_intermediate_value(trial_id, epoch, val[epoch])
        if status == COMPLETED:
            self.optuna.set_trial_state_values(trial_id, TrialState.COMPLETE, [val[max(val)]])
            return
        self.optuna.set_trial_user_attr(trial_id, "status", status)
        self.optuna.set_trial_user_attr(trial_id, "cause", cause)
        if status == STOPPED:
            # As Optuna's own pruning does (study/_tell.py): the last intermediate value
            # becomes the value of the pruned trial.
            last = [val[max(val)]] if val else None
            self.optuna.set_trial_state_values(trial_id, TrialState.PRUNED, last)
            return
        self.optuna.set_trial_state_values(trial_id, TrialState.FAIL, None)

    # -- readers -------------------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        """Every run, oldest first, with its provenance (device_kind, host, versions)."""
        with self.session() as s:
            prov = {p.run_id: p for p in s.scalars(select(ProvenanceRow))}
            out = []
            for r in s.scalars(select(RunRow).order_by(RunRow.id)):
                row = {c.name: getattr(r, c.name) for c in RunRow.__table__.columns}
                p = prov.get(r.id)
                row["device_kind"] = p.device_kind if p else None
                row["host"] = p.host if p else None
                row["versions"] = _json_or_none(p.versions) if p else None
                row["peak_device_mb"] = p.peak_device_mb if p else None
                out.append(row)
            return out

    def frame(self, table: str) -> pd.DataFrame:
        """A whole vaegrid table (``vg_trial``, ``vg_epoch``, ``vg_run``, ``vg_test``)."""
        import pandas as pd

        if table not in Base.metadata.tables:
            raise KeyError(table)
        with self.engine.connect() as con:
            if not self.engine.dialect.has_table(con, table):  # an older database
                return pd.DataFrame(columns=[c.name for c in Base.metadata.tables[table].columns])
            return pd.read_sql_table(table, con)

    def save_test(self, row: dict[str, Any]) -> None:
        """Store (or replace) a winner's test result."""
        with self.session() as s:
            s.merge(TestRow(**row))

    def fingerprint(self) -> dict[str, Any]:
        """The stored study's fixed settings (its ``[halving]`` among them, if any)."""
        with self.session() as s:
            row = s.scalars(select(StudyRow)).first()
            if row is None:
                raise InputError(f"{self.path}: holds no vaegrid study")
            found = _json_or_none(row.fingerprint)
            if not isinstance(found, dict) or not isinstance(found.get("train", {}), dict):
                raise InputError(
                    f"{self.path}: the stored study's fingerprint is not vaegrid's (edited?)"
                )
            return found

    def study_row(self) -> tuple[str, int]:
        with self.session() as s:
            row = s.scalars(select(StudyRow)).first()
            if row is None:
                raise InputError(f"{self.path}: holds no vaegrid study")
            return row.name, row.slots


def _config(path: str, key: str, text: str) -> TrialConfig:
    """A stored trial's config, refused unless it is well-formed and hashes to its key."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise InputError(f"{path}: vg_trial holds a key {key!r} that vaegrid never makes")
    try:
        cfg = TrialConfig.from_json(text)
        ok = cfg.key == key
    except Exception as e:  # anything a hand-edited JSON can raise
        raise InputError(f"{path}: trial {key}: stored config is not valid ({e})") from None
    if not ok:
        raise InputError(f"{path}: trial {key}: stored config does not hash to its key (edited?)")
    problem = config_problem(cfg)
    if problem is not None:
        raise InputError(f"{path}: trial {key}: stored config is not valid ({problem})")
    return cfg


def _cause(error: str | None) -> str:
    """The cause of a failure: the traceback's last line ("ValueError: ...")."""
    lines = (error or "error").strip().splitlines()
    return lines[-1] if lines else "error"


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _reason(e: SQLAlchemyError) -> str:
    """The database's own words ("attempt to write a readonly database"), not SQLAlchemy's."""
    orig = getattr(e, "orig", None)
    return str(orig or e).splitlines()[0]


def _refuse_mismatch(path: str, name: str, fingerprint: str, study: Study) -> None:
    """Raise InputError if the stored study (name, fingerprint JSON) is not ``study``'s."""
    stored = json.loads(fingerprint)
    new = json.loads(json.dumps(study.fingerprint()))  # tuples as stored: lists
    if name == study.name and stored == new:
        return
    diffs = [f"name: stored {name!r}, study file {study.name!r}"] if name != study.name else []
    diffs += _diff(stored, new)
    raise InputError(
        f"{path} was made by a study with other fixed settings ({'; '.join(diffs)}); "
        "only the grid may change between runs: use another --results folder or "
        "study name for the new settings"
    )


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: stored {json.dumps(a)}, study file {json.dumps(b)}")
    return out
