"""A trial's life in the database: its moves, its runs, its epochs, its test result.

:func:`moved` is the only code in vaegrid that decides a trial's new status (:func:`move`
sets it on a row the ORM read, ``finish_run`` writes it with an UPDATE; a new trial's row
is inserted pending by sync.py), and it refuses any move that ``status.TRANSITIONS`` does
not hold, checked on the row read under a lock (``_row``: two sessions ending one trial
at once take turns, and the second sees the first's status). Each method writes
vaegrid's tables in one transaction; those that end a trial then finish its Optuna trial
(ledger.py), after the vg_* write that is the truth (``start_trial`` reads the row, may
create an Optuna trial, then moves the row).
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, bindparam, case, insert, select, text, update
from sqlalchemy.orm import Session

from vaegrid.db.engine import insert_if_absent
from vaegrid.db.ledger import LedgerMixin
from vaegrid.db.schema import (
    NllRow,
    ProvenanceRow,
    RunRow,
    StopRow,
    TestRow,
    TrialDeviceRow,
    TrialRow,
)
from vaegrid.status import (
    FAILED,
    FINAL,
    INTERRUPTED,
    PAUSED,
    RUNNING,
    STOPPED,
    TRANSITIONS,
    Status,
    check_transition,
)
from vaegrid.study.core import Study, TrialConfig

if TYPE_CHECKING:  # the driver imports this module and never loads torch
    from vaegrid.train.records import EpochRecord, TrialResult

_TRIAL = cast(Table, TrialRow.__table__)
_RUN = cast(Table, RunRow.__table__)
_PROVENANCE = cast(Table, ProvenanceRow.__table__)
# An epoch's two rows in one statement, and the trial moved on to it in another: each made
# once (a statement built per call costs more CPU than the database spends running it).
_EPOCH_INSERT = text(
    "INSERT INTO vg_epoch (key, epoch, split, elbo, recon, kl, seconds) VALUES "
    "(:key, :epoch, 'train', :te, :tr, :tk, :seconds), (:key, :epoch, 'val', :ve, :vr, :vk, "
    ":seconds) ON CONFLICT DO NOTHING"
)
_NEWER = _TRIAL.c.epochs_done < bindparam("e")
_EPOCH_DONE = (  # the row locked, moved on (never back: a replayed epoch), its status read
    update(_TRIAL)
    .where(_TRIAL.c.key == bindparam("k"))
    .values(
        epochs_done=case((_NEWER, bindparam("e")), else_=_TRIAL.c.epochs_done),
        seconds=case((_NEWER, _TRIAL.c.seconds + bindparam("s")), else_=_TRIAL.c.seconds),
    )
    .returning(_TRIAL.c.status)
)


def move(
    row: TrialRow,
    new: Status,
    cause: str | None = None,
    diverged_epoch: int | None = None,
) -> None:
    """Set a trial's status, its cause and diverged epoch with it: the only writer (of a
    row read by the ORM; :func:`moved` gives the same values to an UPDATE).

    Raises:
        IllegalTransition: ``row``'s status cannot become ``new``.
    """
    to = moved(row.key, Status(row.status), new, cause, diverged_epoch)
    row.status, row.cause, row.diverged_epoch = to["status"], to["cause"], to["diverged_epoch"]


def moved(
    key: str, old: Status, new: Status, cause: str | None = None, diverged_epoch: int | None = None
) -> dict[str, Any]:
    """What a trial's row becomes when its status ``old`` becomes ``new``.

    Raises:
        IllegalTransition: ``old`` cannot become ``new``.
    """
    check_transition(key, old, new)
    return {"status": new.value, "cause": cause, "diverged_epoch": diverged_epoch}


def end_run(run: RunRow, status: Status, error: str | None = None) -> None:
    """End a run: the only writer of a run's status after it opens (of a row read by the
    ORM; :func:`ended` gives the same values to an UPDATE)."""
    to = ended(f"{run.key} (run {run.id})", run.status, status, error)
    if to:
        run.status, run.ended, run.error = to["status"], to["ended"], to["error"]


def ended(run: str, old: str, status: Status, error: str | None = None) -> dict[str, Any]:
    """What a run's row becomes when it ends ``status``. A run opens running and ends once,
    as its trial may end a run (``TRANSITIONS[RUNNING]``); a run that ended already (a new
    driver's sync interrupted it) keeps that end: nothing changes (``old``, its stored
    status, is compared as stored: a value no vaegrid writes is an end too)."""
    if old != RUNNING:
        return {}
    check_transition(run, RUNNING, status)
    return {"status": status.value, "ended": time.time(), "error": error}


def close_runs(s: Session, key: str, status: Status, error: str | None = None) -> None:
    """End the runs of ``key`` still open (their worker died, or the driver ended them): one
    statement, each as :func:`ended` ends a run."""
    s.execute(update(_RUN).where(_RUN.c.key == key, _RUN.c.status == RUNNING.value)
              .values(ended(f"{key} (its open runs)", RUNNING, status, error)))  # fmt: skip


class TrialsMixin(LedgerMixin):
    # -- the driver's side ---------------------------------------------------------------

    def start_trials(self, study: Study, cfgs: Sequence[TrialConfig]) -> dict[str, int]:
        """Mark trials running, each with its Optuna trial, in one transaction (a few
        statements however many trials: the driver starts a batch at a time); returns
        their Optuna trial ids by key.

        Only the driver, which holds the study, starts trials, and its sync interrupts
        every running one first: a trial found running here is this very start, committed
        once already by a call whose answer a dropped connection lost (faults.py retries
        it).
        """
        by_key = {cfg.key: cfg for cfg in cfgs}
        self._categoricals(study)  # read once, before the rows are locked
        with self.session() as s:
            rows = s.scalars(
                select(TrialRow)
                .where(TrialRow.key.in_(sorted(by_key)))
                .order_by(TrialRow.key)  # locked in one order: two sessions never deadlock
                .with_for_update()
            ).all()
            assert len(rows) == len(by_key), sorted(set(by_key) - {r.key for r in rows})
            started = {r.key: r.optuna_trial_id for r in rows
                       if r.status == RUNNING and r.optuna_trial_id is not None}  # fmt: skip
            todo = [r for r in rows if r.key not in started]
            ids = self.optuna_trials_for(s, study, [(by_key[r.key], r.optuna_trial_id)
                                                    for r in todo])  # fmt: skip
            for row in todo:
                move(row, RUNNING)
                row.optuna_trial_id = ids[row.key]
        return {**started, **ids}

    def start_trial(self, study: Study, cfg: TrialConfig) -> int:
        """:meth:`start_trials` of one trial: its Optuna trial id."""
        return self.start_trials(study, [cfg])[cfg.key]

    def fail(self, key: str, error: str) -> None:
        """The driver's record of a running trial whose worker could not record its own end
        (a trial whose end was committed keeps it)."""
        cause = _cause(error)
        with self.session() as s:
            row = self._row(s, key)
            if row.status != RUNNING:
                return
            move(row, FAILED, cause)
            close_runs(s, key, FAILED, error)
            self.finish_optuna(s, key, FAILED, cause, row.optuna_trial_id)

    def mark(self, keys: Sequence[str], status: Status, cause: str | None = None) -> None:
        """Running trials become ``status`` (interrupted, or failed after too many worker
        deaths), and their open runs close; trials that are not running are left alone."""
        with self.session() as s:
            for key in sorted(keys):  # rows locked in one order: two sessions never deadlock
                row = s.get(TrialRow, key, with_for_update=True)
                if row is not None and row.status == RUNNING:
                    move(row, status, cause)
                    self.finish_optuna(s, key, status, cause, row.optuna_trial_id)
                close_runs(s, key, status, cause)

    def give_up(self, key: str, cause: str) -> Status:
        """A trial whose worker died too often fails (running, or interrupted by a worker
        that recorded its stop and then died); returns its status now."""
        with self.session() as s:
            row = self._row(s, key)
            if FAILED in _moves(row):
                move(row, FAILED, cause)
                close_runs(s, key, FAILED, cause)
                self.finish_optuna(s, key, FAILED, cause, row.optuna_trial_id)
            return Status(row.status)

    def interrupt_running(self) -> None:
        """What a dead driver left running is interrupted (the next driver, at its start)."""
        with self.session() as s:
            locked = select(TrialRow).where(TrialRow.status == RUNNING).with_for_update()
            for row in s.scalars(locked):
                move(row, INTERRUPTED)
            for run in s.scalars(select(RunRow).where(RunRow.status == RUNNING)):
                end_run(run, INTERRUPTED)

    def stop(self, rungs: Mapping[str, int], causes: Mapping[str, str]) -> None:
        """Stop waiting trials at the rung that dropped them (halving), their Optuna
        trials pruned with them. A trial that is running or has ended otherwise is left as
        it is."""
        with self.session() as s:
            for key, rung in sorted(rungs.items()):
                row = s.get(TrialRow, key, with_for_update=True)
                if row is None or STOPPED not in _moves(row):
                    continue
                move(row, STOPPED, causes.get(key))
                s.merge(StopRow(key=key, rung=rung))
                self.finish_optuna(s, key, STOPPED, causes.get(key), row.optuna_trial_id)

    def reopen(self, keys: Sequence[str]) -> None:
        """Stopped trials go on (a grown grid re-decided their rung): paused at their last
        epoch, checkpoint kept. Their pruned Optuna trial stays; start_trial opens a new one."""
        with self.session() as s:
            for key in sorted(keys):
                row = s.get(TrialRow, key, with_for_update=True)
                if row is not None and row.status == STOPPED:
                    move(row, PAUSED)
                    stop = s.get(StopRow, key)
                    if stop is not None:
                        s.delete(stop)

    def save_test(self, row: dict[str, Any]) -> None:
        """Store (or replace) a winner's test result."""
        with self.session() as s:
            s.merge(TestRow(**row))

    # -- the worker's side ---------------------------------------------------------------

    def begin_run(
        self, key: str, device: str, worker: int, kind: str, host: str, versions: dict[str, str]
    ) -> int | None:
        """Open a run of ``key`` with its provenance; None if the trial is not running (its
        end was committed but the driver did not learn it: nothing to run)."""
        with self.session() as s:  # Core statements, as finish_run's
            now = s.execute(select(_TRIAL.c.status).where(_TRIAL.c.key == key).with_for_update())
            if now.scalar_one() != RUNNING:
                return None
            # Runs of this trial still open belong to a worker that died: this one holds the
            # trial's lock (or lease) now, so they are over.
            close_runs(s, key, INTERRUPTED)
            opened = insert(_RUN).values(
                key=key, device=device, worker=worker, started=time.time(), status=RUNNING.value
            )
            run_id: int = s.execute(opened.returning(_RUN.c.id)).scalar_one()
            versions_json = json.dumps(versions)
            s.execute(
                insert(_PROVENANCE).values(
                    run_id=run_id, device_kind=kind, host=host, versions=versions_json
                )
            )
            return run_id

    def record_epoch(
        self, key: str, optuna_trial_id: int, record: EpochRecord, kind: str | None = None
    ) -> None:
        """Commit one epoch's train and validation rows and its Optuna value, in one
        transaction (idempotent: a replayed epoch keeps what was committed).

        The first epoch also binds the trial to ``kind``, the kind of device it runs on.
        """
        with self.session() as s:
            train, val = record.train, record.val  # a replayed epoch keeps what was committed
            s.execute(_EPOCH_INSERT, {"key": key, "epoch": record.epoch, "seconds": record.seconds,
                                      "te": train.elbo, "tr": train.recon, "tk": train.kl,
                                      "ve": val.elbo, "vr": val.recon, "vk": val.kl})  # fmt: skip
            done = {"k": key, "e": record.epoch, "s": record.seconds}
            status = s.execute(_EPOCH_DONE, done).scalar_one()
            if kind is not None:
                insert_if_absent(s, TrialDeviceRow, [{"key": key, "device_kind": kind}])
            if Status(status) not in FINAL:  # its Optuna trial runs (ledger.optuna_epochs)
                self.optuna_epochs(s, optuna_trial_id, {record.epoch: record.val.elbo})

    def finish_run(
        self,
        key: str,
        run_id: int,
        result: TrialResult | None,
        error: str | None,
        peak_device_mb: float | None = None,
    ) -> Status:
        """Record how a run ended: the trial's result, or the traceback of a crash; returns
        the trial's status (the one already committed, if its end was written before)."""
        status, cause, epoch = FAILED, None, None
        if result is None:
            cause = _cause(error)
        else:
            status, cause, epoch = Status(result.status), result.cause, result.diverged_epoch
        # One transaction: vaegrid's tables and Optuna's trial end together. Core
        # statements, not the ORM's objects: this is every trial's end (half the CPU).
        t, r = _TRIAL.c, _RUN.c
        with self.session() as s:
            now = s.execute(select(t.status, t.optuna_trial_id).where(t.key == key)
                            .with_for_update()).one()  # fmt: skip
            ran = s.execute(select(r.status).where(r.id == run_id)).scalar_one()
            # A trial's end is written once, and only by its open run: a run that was ended
            # already (a new driver's sync) belongs to a worker that no longer holds the
            # trial, which another run may be running now.
            if now.status == RUNNING and ran == RUNNING:
                s.execute(update(_TRIAL).where(t.key == key)
                          .values(moved(key, RUNNING, status, cause, epoch)))  # fmt: skip
            else:
                status = Status(now.status)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            end = ended(f"{key} (run {run_id})", ran, status, error) | {"max_rss_mb": rss}
            s.execute(update(_RUN).where(r.id == run_id).values(end))
            if peak_device_mb is not None:  # a CUDA run's (its provenance row: begin_run's)
                s.execute(update(_PROVENANCE).where(_PROVENANCE.c.run_id == run_id)
                          .values(peak_device_mb=peak_device_mb))  # fmt: skip
            if result is not None and result.nll is not None:  # with the status that needs it
                n = result.nll
                row_ = {"key": key, "epoch": n.epoch, "nll": n.nll, "samples": n.samples,
                        "seconds": n.seconds}  # fmt: skip
                insert_if_absent(s, NllRow, [row_])
            # a final status's: its Optuna trial too
            self.finish_optuna(s, key, status, cause, now.optuna_trial_id)
        return status

    @staticmethod
    def _row(s: Session, key: str) -> TrialRow:
        """A trial's row, locked until the transaction ends (``SELECT ... FOR UPDATE`` on
        PostgreSQL; SQLite has one writer at a time): a move is checked against the status
        it replaces, never a stale read that another session changes before this commits."""
        row = s.get(TrialRow, key, with_for_update=True)
        assert row is not None, key
        return row


def _moves(row: TrialRow) -> frozenset[Status]:
    return TRANSITIONS[Status(row.status)]


def _cause(error: str | None) -> str:
    """The cause of a failure: the traceback's last line ("ValueError: ...")."""
    lines = (error or "error").strip().splitlines()
    return lines[-1] if lines else "error"


__all__ = ["TrialsMixin", "close_runs", "end_run", "move"]
