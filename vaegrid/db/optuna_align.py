"""Optuna's trials as Optuna's own tools should read them, written where its API cannot.

optuna-dashboard and ``optuna.importance`` read a study's parameters as its search space.
Three things vaegrid knows are not parameters or cannot be written through Optuna's API:

- ``repeat`` is which seeds a trial drew, not a setting: as a parameter, fANOVA gave it
  0.96 of the importance of a repeats study. It is the user attribute ``repeat``.
- A searched string setting whose allowed values change as plug-ins come and go (``model``,
  a plug-in's choices) cannot be an ordinary categorical parameter: Optuna refuses a
  categorical whose choices differ from the study's first one (``check_distribution_
  compatibility``), and its importance and dashboard leave out a parameter whose
  distribution is not the same in every trial. vaegrid records it as a categorical whose
  choices are the values the study's own trials hold (never the installed plug-ins), and
  when a grown grid adds a value it rewrites every trial's distribution and index to the
  new choices, here, so that all trials keep one distribution.
- Metrics known after a trial ended (the test split's, from ``report``) are user
  attributes; Optuna refuses any write to a finished trial (``UpdateFinishedTrialError``).

The rows are Optuna 4-5's ``trial_params`` and ``trial_user_attributes``
(``optuna/storages/_rdb/models.py``: one row per (trial_id, param_name) and per (trial_id,
key), values JSON, a categorical's value its index in the choices); ``align`` is the only
writer of them outside Optuna's storage, runs in the caller's transaction, and writes only
rows that differ.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from optuna.distributions import CategoricalDistribution, distribution_to_json
from sqlalchemy import Connection, inspect, text

from vaegrid.db.reader import already_read
from vaegrid.errors import InputError
from vaegrid.status import COMPLETED
from vaegrid.study.axes import AXIS
from vaegrid.study.core import TrialConfig
from vaegrid.study.fingerprint import Fingerprint

_OPTUNA_TABLES = {"trials", "trial_params", "trial_user_attributes"}


def categoricals(configs: Mapping[str, TrialConfig], searched: list[str]) -> dict[str, Any]:
    """The searched string settings that are not fixed Optuna parameters (``Axis.ledgered``
    false), each as a categorical over the values the study's ``configs`` hold."""
    out: dict[str, Any] = {}
    for name in searched:
        axis = AXIS.get(name)
        if axis is None or axis.ledgered or axis.kind is not str:
            continue
        values = sorted({str(c.axis_values([name])[name]) for c in configs.values()})
        if values:
            out[name] = CategoricalDistribution(values)
    return out


def align(con: Connection) -> None:
    """Bring every Optuna trial of the database's study in line with vaegrid's tables: no
    parameter ``repeat`` (the user attribute ``repeat`` instead), the searched string
    settings as categoricals over the study's values, ``val_nll`` and the test metrics
    (``test_elbo``, ``test_recon``, ``test_kl``, ``test_nll_k<k>``) as user attributes.

    A trial whose stored config this vaegrid cannot read (its plug-in is not installed)
    keeps what it has. Runs in the caller's transaction; writes only what differs.
    """
    if not set(inspect(con).get_table_names()) >= _OPTUNA_TABLES:
        return  # no Optuna study yet: a first run killed before it made one
    study = con.execute(text("SELECT fingerprint FROM vg_study")).first()
    if study is None:
        return
    try:
        fingerprint = Fingerprint.read(study[0], "")
    except InputError:
        return  # refused with its own words wherever the study is read
    configs: dict[str, TrialConfig] = {}
    query = "SELECT key, config, status, epochs_done, optuna_trial_id FROM vg_trial"
    done: dict[str, tuple[str, int]] = {}
    current: dict[str, int] = {}  # key -> the Optuna trial its results are recorded in
    for key, config, status, epochs, trial_id in con.execute(text(query)):
        cfg = already_read(key, config)  # report's, read a moment ago: not parsed again
        if cfg is None:
            try:
                cfg = TrialConfig.from_json(config)
            except Exception:  # a plug-in not installed here, or an edited row
                continue
        if cfg.key == key:
            configs[key] = cfg
            done[key] = (status, int(epochs))
            if trial_id is not None:
                current[key] = int(trial_id)
    owner: dict[int, str] = {}  # Optuna trial id -> vaegrid key
    found = con.execute(
        text("SELECT trial_id, value_json FROM trial_user_attributes WHERE key = 'key'")
    )
    for trial_id, value in found:
        key = _json(value)
        if isinstance(key, str) and key in configs:
            owner[int(trial_id)] = key
    if not owner:
        return
    params = _rows(con, "SELECT trial_id, param_name, param_value, distribution_json "
                        "FROM trial_params", owner)  # fmt: skip
    attrs = _rows(con, "SELECT trial_id, key, value_json FROM trial_user_attributes", owner)
    for trial_id in sorted({t for t, name in params if name == "repeat"}):  # this study's
        con.execute(
            text("DELETE FROM trial_params WHERE trial_id = :t AND param_name = 'repeat'"),
            {"t": trial_id},
        )
    wanted = categoricals(configs, fingerprint.searched)
    for name, dist in wanted.items():
        as_json = distribution_to_json(dist)
        for trial_id, key in owner.items():
            index = float(dist.to_internal_repr(str(configs[key].axis_values([name])[name])))
            have = params.get((trial_id, name))
            if have != (index, as_json):
                _put_param(con, trial_id, name, index, as_json, have is not None)
    nll = _last_nll(con, done)
    tests = _tests(con)
    for trial_id, key in owner.items():
        want: dict[str, Any] = {"repeat": configs[key].repeat}
        if current.get(key) == trial_id:  # results on the run that made them, not on an
            if key in nll:  # earlier failed or pruned attempt of the same trial
                want["val_nll"] = nll[key]
            want.update(tests.get(key, {}))
        for name, value in want.items():
            as_json = json.dumps(value)
            if attrs.get((trial_id, name)) != (as_json,):
                set_attr(con, trial_id, name, as_json, (trial_id, name) in attrs)


def set_attr(con: Connection, trial_id: int, name: str, value_json: str, exists: bool) -> None:
    """Write one user attribute of an Optuna trial, finished or not."""
    # An upsert either way: a worker may add the same attribute through Optuna (which
    # upserts too) between this transaction's read and its write, on PostgreSQL.
    query = (
        "UPDATE trial_user_attributes SET value_json = :v WHERE trial_id = :t AND key = :k"
        if exists
        else "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (:t, :k, :v) "
        "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json"
    )
    con.execute(text(query), {"v": value_json, "t": trial_id, "k": name})


def _put_param(
    con: Connection, trial_id: int, name: str, index: float, as_json: str, exists: bool
) -> None:
    values = {"t": trial_id, "n": name, "v": index, "d": as_json}
    if exists:
        con.execute(
            text("UPDATE trial_params SET param_value = :v, distribution_json = :d "
                 "WHERE trial_id = :t AND param_name = :n"),
            values,
        )  # fmt: skip
    else:
        con.execute(
            text("INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
                 "VALUES (:t, :n, :v, :d) ON CONFLICT (trial_id, param_name) DO UPDATE SET "
                 "param_value = excluded.param_value, "
                 "distribution_json = excluded.distribution_json"),
            values,
        )  # fmt: skip


def _rows(con: Connection, query: str, owner: Mapping[int, str]) -> dict[tuple[int, str], Any]:
    """(trial id, name) -> the rest of the row, for the study's Optuna trials."""
    out: dict[tuple[int, str], Any] = {}
    for trial_id, name, *rest in con.execute(text(query)):
        if int(trial_id) in owner:
            out[(int(trial_id), str(name))] = tuple(float(v) if isinstance(v, int) else v
                                                    for v in rest)  # fmt: skip
    return out


def _last_nll(con: Connection, done: Mapping[str, tuple[str, int]]) -> dict[str, float]:
    """Each completed trial's validation NLL at its last epoch, where it has one."""
    if not inspect(con).has_table("vg_nll"):
        return {}
    out = {}
    for key, epoch, nll in con.execute(text("SELECT key, epoch, nll FROM vg_nll")):
        status, epochs = done.get(key, ("", -1))
        if status == COMPLETED.value and int(epoch) == epochs:
            out[key] = float(nll)
    return out


def _tests(con: Connection) -> dict[str, dict[str, float]]:
    """Each tested trial's test metrics, as user attributes: ``test_nll_k<k>`` per k."""
    out: dict[str, dict[str, float]] = {}
    query = "SELECT key, nll_samples, elbo, recon, kl, nll FROM vg_test"
    for key, k, elbo, recon, kl, nll in con.execute(text(query)):
        row = out.setdefault(key, {})
        row.update(test_elbo=float(elbo), test_recon=float(recon), test_kl=float(kl))
        row[f"test_nll_k{int(k)}"] = float(nll)
    return out


def _json(value: Any) -> Any:
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return None
