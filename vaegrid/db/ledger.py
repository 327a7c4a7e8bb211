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

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import DateTime, bindparam, column, select, table, text
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


def _stored(value: float, nan: str) -> tuple[float | None, str]:
    """A value as Optuna stores it: (value, type), a non-finite one typed with no value
    (``nan``: an intermediate value's type for NaN; a trial's value is never NaN)."""
    if math.isnan(value):
        return None, nan
    if math.isinf(value):
        return None, "INF_POS" if value > 0 else "INF_NEG"
    return value, "FINITE"


# Optuna's studies table, as much of it as the lock on a study's row needs (models.py)
_STUDIES = table("studies", column("study_id"), column("study_name"))
_TRIALS = table("trials", column("trial_id"), column("state"))
_STEPS = table("trial_intermediate_values", column("trial_id"), column("step"))
# Optuna's rows as its storage writes them (optuna/storages/_rdb/storage.py): an enum as its
# name, a literal from vaegrid's own few (PostgreSQL casts a literal to the column's enum
# type, not a bound string); upserts as its set_* methods upsert.
_INTERMEDIATE_INSERT = (
    "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, "
    "intermediate_value_type) VALUES (:id, :step, :value, '{kind}') "
    "ON CONFLICT (trial_id, step) DO NOTHING"
)
_VALUE_INSERT = (
    "INSERT INTO trial_values (trial_id, objective, value, value_type) "
    "VALUES (:id, 0, :value, '{kind}') ON CONFLICT (trial_id, objective) DO UPDATE SET "
    "value = excluded.value, value_type = excluded.value_type"
)
_ATTRS_UPSERT = (
    "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (:id, :key, :json) "
    "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json"
)
_FINISH = "UPDATE trials SET state = '{state}', datetime_complete = :now WHERE trial_id = :id"
_PARAMS_INSERT = (
    "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
    "VALUES (:id, :name, :value, :json)"
)
_ATTRS_INSERT = (
    "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (:id, :key, :json)"
)


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

    def optuna_trials_for(
        self, s: Session, study: Study, starts: Sequence[tuple[TrialConfig, int | None]]
    ) -> dict[str, int]:
        """The Optuna trial each (re)started trial records into, in the caller's transaction
        (the start's own): its own, or a new one if it has none or its old one ended (Optuna
        never reopens a finished trial: a retried failure, or a stopped trial that a grown
        grid brings back, goes on in a new one). ``starts``: (config, its Optuna trial)."""
        held = [i for _, i in starts if i is not None]
        ended: set[int] = set()
        if held:
            query = text(
                "SELECT trial_id FROM trials WHERE trial_id IN :ids AND state IN ('FAIL', 'PRUNED')"
            ).bindparams(bindparam("ids", expanding=True))
            ended = set(s.execute(query, {"ids": held}).scalars())
        new = [cfg for cfg, i in starts if i is None or i in ended]
        made = self._new_optuna_trials(s, study, new)
        return {cfg.key: made[cfg.key] if cfg.key in made else int(i)  # type: ignore[arg-type]
                for cfg, i in starts}  # fmt: skip

    def _new_optuna_trials(
        self, s: Session, study: Study, cfgs: Sequence[TrialConfig]
    ) -> dict[str, int]:
        """New running Optuna trials for ``cfgs``, written as Optuna's ``create_new_trial``
        writes a trial from a template (``optuna/storages/_rdb/storage.py``): under a lock
        on the study's row, numbered on from the study's count of trials, then their
        parameters (a value in its distribution's internal form, the distribution as JSON)
        and user attributes (JSON). A few statements for any number of trials, where
        Optuna's API takes a transaction of about fifteen for each (29 ms a trial on
        PostgreSQL here: the driver's limit at about 30 trials a second).
        """
        if not cfgs:
            return {}
        chosen = self._categoricals(study)
        params = [n for n in study.searched if AXIS[n].ledgered]
        distributions = {n: PARAM_DISTRIBUTIONS[n] for n in params} | chosen
        others = [n for n in study.searched if not AXIS[n].ledgered and n not in chosen]
        study_id = s.execute(
            select(_STUDIES.c.study_id).where(_STUDIES.c.study_name == study.name).with_for_update()
        ).scalar_one()
        first = s.execute(
            text("SELECT count(*) FROM trials WHERE study_id = :study"), {"study": study_id}
        ).scalar_one()
        before = s.execute(text("SELECT coalesce(max(trial_id), 0) FROM trials")).scalar_one()
        now = datetime.now()
        insert = text(
            "INSERT INTO trials (number, study_id, state, datetime_start) "
            "VALUES (:number, :study, 'RUNNING', :start)"
        ).bindparams(bindparam("start", type_=DateTime()))
        s.execute(insert, [{"number": first + i, "study": study_id, "start": now}
                           for i in range(len(cfgs))])  # fmt: skip
        found = text(
            "SELECT number, trial_id FROM trials WHERE study_id = :study AND trial_id > :before"
        )
        ids: dict[int, int] = {
            n: i for n, i in s.execute(found, {"study": study_id, "before": before}).all()
        }
        made = {cfg.key: ids[first + i] for i, cfg in enumerate(cfgs)}
        param_rows, attr_rows = [], []
        for cfg in cfgs:
            trial_id = made[cfg.key]
            for name, value in cfg.axis_values([*params, *chosen]).items():
                dist = distributions[name]
                param_rows.append({"id": trial_id, "name": name, "json": distribution_to_json(dist),
                                   "value": dist.to_internal_repr(value)})  # fmt: skip
            attrs = {"key": cfg.key, "repeat": cfg.repeat, **cfg.axis_values(others)}
            attr_rows += [{"id": trial_id, "key": k, "json": json.dumps(v)}
                          for k, v in attrs.items()]  # fmt: skip
        if param_rows:
            s.execute(text(_PARAMS_INSERT), param_rows)
        s.execute(text(_ATTRS_INSERT), attr_rows)
        return made

    @staticmethod
    def optuna_epochs(s: Session, trial_id: int, values: Mapping[int, float]) -> None:
        """Epochs' validation elbo as Optuna's intermediate values, in the caller's
        transaction (an epoch's own: one commit an epoch, not vaegrid's and then Optuna's),
        which holds the trial's ``vg_trial`` row and has seen it not ended: its Optuna
        trial is running then (it is finished with the trial's end, in that end's
        transaction), so a replayed epoch after the end never writes here.

        Written as Optuna's ``set_trial_intermediate_value`` writes it
        (``trial_intermediate_values``: one row per (trial_id, step), a non-finite value
        as its type with no value), only if absent (a replayed epoch keeps what was
        committed, as vaegrid's rows do): one statement per type of value.
        """
        by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for epoch, value in values.items():
            stored, kind = _stored(value, "NAN")
            by_kind[kind].append({"id": trial_id, "step": epoch, "value": stored})
        for kind, rows in by_kind.items():
            s.execute(text(_INTERMEDIATE_INSERT.format(kind=kind)), rows)

    @staticmethod
    def finish_optuna(
        s: Session, key: str, status: Status, cause: str | None, trial_id: int | None
    ) -> None:
        """Finish the trial's Optuna trial (``trial_id``, its row's ``optuna_trial_id``:
        None if it never had one) as vaegrid's tables say it ended, in the
        caller's transaction (the end's own), as Optuna's API would: the validation elbo
        of every epoch as an intermediate value (a kill's gap filled), the last as the
        value of a completed trial (``val_nll`` beside it) or of a stopped one (pruned, as
        Optuna's own pruning does: study/_tell.py), the status and cause of any other end
        as user attributes (failed), the state and the time it completed. A trial paused
        at a rung, or whose Optuna trial is finished already, is left as it is.
        """
        if status not in FINAL or trial_id is None:  # paused at a rung: its trial runs on
            return
        state = s.execute(
            select(_TRIALS.c.state).where(_TRIALS.c.trial_id == trial_id).with_for_update()
        ).scalar()
        if state != TrialState.RUNNING.name:
            return
        epochs = select(EpochRow.epoch, EpochRow.elbo).where(
            EpochRow.key == key, EpochRow.split == "val"
        )
        val: dict[int, float] = {epoch: elbo for epoch, elbo in s.execute(epochs)}
        at = s.execute(
            select(NllRow.epoch, NllRow.nll)
            .where(NllRow.key == key)
            .order_by(NllRow.epoch.desc())
            .limit(1)
        ).first()
        nll = at.nll if at is not None and val and at.epoch == max(val) else None
        if status in (COMPLETED, STOPPED):  # a gap (a kill's, an older vaegrid's) filled
            there = set(s.scalars(select(_STEPS.c.step).where(_STEPS.c.trial_id == trial_id)))
            LedgerMixin.optuna_epochs(s, trial_id, {e: v for e, v in val.items() if e not in there})
        attrs: dict[str, Any] = {}
        value = val[max(val)] if val and status in (COMPLETED, STOPPED) else None
        if status == COMPLETED:
            if nll is not None:  # the validation NLL at the trial's last epoch ([rank])
                attrs["val_nll"] = nll
            state = TrialState.COMPLETE.name
        else:
            attrs |= {"status": str(status), "cause": cause}
            state = (TrialState.PRUNED if status == STOPPED else TrialState.FAIL).name
        if attrs:
            s.execute(text(_ATTRS_UPSERT), [{"id": trial_id, "key": k, "json": json.dumps(v)}
                                            for k, v in attrs.items()])  # fmt: skip
        if value is not None and not math.isnan(value):
            stored, kind = _stored(value, "")
            s.execute(text(_VALUE_INSERT.format(kind=kind)), {"id": trial_id, "value": stored})
        done = text(_FINISH.format(state=state)).bindparams(bindparam("now", type_=DateTime()))
        s.execute(done, {"id": trial_id, "now": datetime.now()})

    def reconcile_optuna(self, study_name: str) -> None:
        """Repair what a kill between a ``vg_*`` write and its Optuna write left behind."""
        study_id = self.optuna.get_study_id_from_name(study_name)
        by_key: dict[str, list[FrozenTrial]] = defaultdict(list)
        for t in self.optuna.get_all_trials(study_id, deepcopy=False):
            by_key[str(t.user_attrs.get("key"))].append(t)
        with self.session() as s:
            for row in s.scalars(select(TrialRow)):
                ledger = {t._trial_id: t for t in by_key.get(row.key, [])}
                current = ledger.get(row.optuna_trial_id) if row.optuna_trial_id else None
                unfinished = [t for t in ledger.values() if not t.state.is_finished()]
                final = row.status in FINAL
                if not final and unfinished and (current is None or current.state.is_finished()):
                    row.optuna_trial_id = unfinished[-1]._trial_id  # created, never recorded
                elif final and current is not None and not current.state.is_finished():
                    # recorded, never finished (by a version that wrote the end in two steps)
                    self.finish_optuna(
                        s, row.key, Status(row.status), row.cause, row.optuna_trial_id
                    )
