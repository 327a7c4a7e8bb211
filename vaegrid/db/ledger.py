"""Optuna's ledger of the sweep: one Optuna trial per vaegrid trial, following vg_* tables.

``optuna.load_study`` and optuna-dashboard read a sweep as-is: params are the searched
settings (a string setting whose choices follow the installed plug-ins, ``model``, as a
categorical over the study's own values: optuna_align.py), the value is the final
validation elbo, intermediate values the per-epoch validation elbo; the trial key, the
repeat, ``val_nll`` and the test metrics are user attributes.

vaegrid's tables are the truth and this ledger follows them: an epoch's value is written
in the same transaction as the epoch's rows; every other write of a trial's life goes to
``vg_*`` first, then here, and :meth:`LedgerMixin.reconcile_optuna` repairs
whatever a kill between the two left behind (an Optuna trial created but not recorded is
adopted, one not finished is finished), so a resumed sweep never holds two Optuna trials
for one key.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime

from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from vaegrid.db import optuna_align
from vaegrid.db.schema import EpochRow, NllRow, TrialRow
from vaegrid.db.session import StoreBase
from vaegrid.status import COMPLETED, FINAL, STOPPED, Status
from vaegrid.study.axes import AXES, AXIS
from vaegrid.study.core import Study, TrialConfig

METRIC_NAME = "val_elbo"  # what Optuna's value is, as optuna-dashboard shows it


PARAM_DISTRIBUTIONS: dict[str, BaseDistribution] = {
    a.name: a.distribution() for a in AXES if a.ledgered
}


def _stored(value: float) -> tuple[float | None, str]:
    """A value as Optuna stores an intermediate one: (value, type), non-finite ones typed."""
    if math.isnan(value):
        return None, "NAN"
    if math.isinf(value):
        return None, "INF_POS" if value > 0 else "INF_NEG"
    return value, "FINITE"


class LedgerMixin(StoreBase):
    _choices: dict[str, BaseDistribution] | None = None  # categoricals, as align() left them

    @property
    def optuna(self) -> RDBStorage:
        """Optuna's storage on the same database, opened on first use (a writer's only: a
        :class:`~vaegrid.db.store.Reader` has no ledger)."""
        with self._lock:  # K trials of one Dask worker share this store
            if self._optuna is None:
                self._optuna = RDBStorage(
                    self.db.optuna_url(), engine_kwargs=self.db.optuna_engine_kwargs()
                )
                self.db.harden_optuna(self._optuna.engine)
        return self._optuna

    def align_optuna(self) -> None:
        """Optuna's trials in line with vaegrid's tables (optuna_align.align)."""
        with self.session() as s:
            optuna_align.align(s.connection())
        self._choices = None

    def _categoricals(self, study: Study) -> dict[str, BaseDistribution]:
        if self._choices is None:
            configs = {t.key: t.config for t in self.trials()}  # type: ignore[attr-defined]
            self._choices = optuna_align.categoricals(configs, list(study.searched))
        return self._choices

    def new_optuna_trial(self, study: Study, cfg: TrialConfig) -> int:
        params = [n for n in study.searched if AXIS[n].ledgered]
        chosen = self._categoricals(study)
        distributions = {n: PARAM_DISTRIBUTIONS[n] for n in params} | chosen
        others = [n for n in study.searched if not AXIS[n].ledgered and n not in chosen]
        template = FrozenTrial(
            number=-1,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=datetime.now(),
            datetime_complete=None,
            params=cfg.axis_values([*params, *chosen]),
            distributions=distributions,
            user_attrs={"key": cfg.key, "repeat": cfg.repeat, **cfg.axis_values(others)},
            system_attrs={},
            intermediate_values={},
            trial_id=-1,
        )
        study_id = self.optuna.get_study_id_from_name(study.name)
        return self.optuna.create_new_trial(study_id, template_trial=template)

    def optuna_trial_for(self, study: Study, cfg: TrialConfig, trial_id: int | None) -> int:
        """The Optuna trial a (re)started trial records into: its own, or a new one if it
        has none or its old one ended (Optuna never reopens a finished trial: a retried
        failure, or a stopped trial that a grown grid brings back, goes on in a new one)."""
        if trial_id is None or self.optuna.get_trial(trial_id).state in (
            TrialState.FAIL,
            TrialState.PRUNED,
        ):
            return self.new_optuna_trial(study, cfg)
        return trial_id

    @staticmethod
    def optuna_epoch(s: Session, trial_id: int, epoch: int, value: float) -> None:
        """An epoch's validation elbo as Optuna's intermediate value, in the caller's
        transaction (the epoch's own: one commit an epoch, not vaegrid's and then Optuna's).

        Written as Optuna's ``set_trial_intermediate_value`` writes it
        (``trial_intermediate_values``: one row per (trial_id, step), a non-finite value
        as its type with no value), to a trial Optuna still has running (it refuses a
        finished one: a replayed epoch after the trial's end) and only if absent (a
        replayed epoch keeps what was committed, as vaegrid's rows do).
        """
        state = s.execute(
            text("SELECT state FROM trials WHERE trial_id = :id"), {"id": trial_id}
        ).scalar()
        if state != TrialState.RUNNING.name:
            return
        stored, kind = _stored(value)
        insert = (
            "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, "
            f"intermediate_value_type) VALUES (:id, :step, :value, '{kind}') "
            "ON CONFLICT (trial_id, step) DO NOTHING"
        )
        s.execute(text(insert), {"id": trial_id, "step": epoch, "value": stored})

    def finish_optuna(self, key: str, status: Status, cause: str | None) -> None:
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
            at = s.scalars(
                select(NllRow).where(NllRow.key == key).order_by(NllRow.epoch.desc())
            ).first()
            nll = at.nll if at is not None and val and at.epoch == max(val) else None
        if status not in FINAL or trial_id is None:  # paused at a rung: its trial runs on
            return
        trial = self.optuna.get_trial(trial_id)
        if trial.state.is_finished():
            return
        if status in (COMPLETED, STOPPED):
            for epoch in sorted(set(val) - set(trial.intermediate_values)):  # a kill's gap
                self.optuna.set_trial_intermediate_value(trial_id, epoch, val[epoch])
        if status == COMPLETED:
            if nll is not None:  # the validation NLL at the trial's last epoch ([rank])
                self.optuna.set_trial_user_attr(trial_id, "val_nll", nll)
            self.optuna.set_trial_state_values(trial_id, TrialState.COMPLETE, [val[max(val)]])
            return
        self.optuna.set_trial_user_attr(trial_id, "status", str(status))
        self.optuna.set_trial_user_attr(trial_id, "cause", cause)
        if status == STOPPED:
            # As Optuna's own pruning does (study/_tell.py): the last intermediate value
            # becomes the value of the pruned trial.
            last = [val[max(val)]] if val else None
            self.optuna.set_trial_state_values(trial_id, TrialState.PRUNED, last)
            return
        self.optuna.set_trial_state_values(trial_id, TrialState.FAIL, None)

    def reconcile_optuna(self, study_name: str) -> None:
        """Repair what a kill between a ``vg_*`` write and its Optuna write left behind."""
        study_id = self.optuna.get_study_id_from_name(study_name)
        by_key: dict[str, list[FrozenTrial]] = defaultdict(list)
        for t in self.optuna.get_all_trials(study_id, deepcopy=False):
            by_key[str(t.user_attrs.get("key"))].append(t)
        finals: dict[str, tuple[Status, str | None]] = {}
        with self.session() as s:
            for row in s.scalars(select(TrialRow)):
                ledger = {t._trial_id: t for t in by_key.get(row.key, [])}
                current = ledger.get(row.optuna_trial_id) if row.optuna_trial_id else None
                unfinished = [t for t in ledger.values() if not t.state.is_finished()]
                final = row.status in FINAL
                if not final and unfinished and (current is None or current.state.is_finished()):
                    row.optuna_trial_id = unfinished[-1]._trial_id  # created, never recorded
                elif final and current is not None and not current.state.is_finished():
                    finals[row.key] = (Status(row.status), row.cause)  # recorded, never finished
        for key, (status, cause) in finals.items():
            self.finish_optuna(key, status, cause)
