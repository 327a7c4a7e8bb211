"""Rows vaegrid could have written, and nothing else: the checks every table read passes.

A study database is input from outside like any other: it may be edited by hand, by
another tool, or by an attacker. :func:`check` refuses, in one line naming the table, the
trial's key and the column, any row vaegrid never writes: text where a number goes, a
metric that is not finite or not a possible value (a negative reconstruction, an elbo
that is not recon + kl), an epoch past its trial's last, a duplicated row, an unknown
trial, a completed trial without all its epochs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from vaegrid.errors import InputError
from vaegrid.status import COMPLETED, Status
from vaegrid.study.core import TrialConfig

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "val")
# kl is analytic and >= 0; its float sum can land a hair below.
KL_FLOOR = -1e-3
# No metric of a trial that did not diverge comes near this (nats per image); past it,
# squares overflow in the statistics and the figures.
METRIC_MAX = 1e30
# Unix times: after 1970 and before the year 5000.
TIME_MAX = 1e11
TIME_MIN = 1.5e9  # July 2017: no vaegrid ran before it (a run "started" in 1970 is forged)
CLOCK_SKEW_S = 3600.0  # how far two hosts' clocks may disagree (vg_run's start and end)


def _bad(where: str, table: str, key: object, column: str, value: object, allowed: str) -> NoReturn:
    shown = repr(value)[:60]
    raise InputError(
        f"{where}: {table} row of trial {str(key)[:20]!r}, column {column}: {shown} is not a "
        f"value vaegrid writes (expected {allowed}; edited?)"
    )


def _number(
    where: str,
    table: str,
    key: object,
    column: str,
    value: Any,
    low: float = -METRIC_MAX,
    high: float = METRIC_MAX,
) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not low <= value <= high:
        _bad(where, table, key, column, value, f"a number from {low:g} to {high:g}")
    return float(value)


def _metrics(where: str, table: str, key: object, row: Mapping[Any, Any]) -> None:
    """recon >= 0, kl >= 0 (up to rounding), elbo = recon + kl: as every split computes them."""
    recon = _number(where, table, key, "recon", row["recon"], 0.0)
    kl = _number(where, table, key, "kl", row["kl"], KL_FLOOR)
    elbo = _number(where, table, key, "elbo", row["elbo"])
    if abs(elbo - (recon + kl)) > 1e-6 * max(1.0, abs(elbo)):
        _bad(where, table, key, "elbo", elbo, f"recon + kl = {recon + kl:g}")


def _integer(
    where: str, table: str, key: object, column: str, value: Any, low: int, high: int
) -> int:
    if isinstance(value, float) and value.is_integer():  # pandas reads INTEGER with NULLs so
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        _bad(where, table, key, column, value, f"an integer from {low} to {high}")
    return int(value)


@dataclass(frozen=True)
class _Table:
    """A whole table's rows, and what they are checked against."""

    where: str
    name: str
    rows: list[dict[str, Any]]
    configs: Mapping[str, TrialConfig]
    statuses: Mapping[str, Status]
    done: Mapping[str, int]
    nll_samples: int

    def bad(self, key: str, column: str, value: Any, allowed: str) -> NoReturn:
        _bad(self.where, self.name, key, column, value, allowed)

    def known(self) -> None:
        """Every row of a trial in vg_trial."""
        for r in self.rows:
            if r["key"] not in self.configs:
                self.bad(r["key"], "key", r["key"], "the key of a trial in vg_trial")


def check(
    where: str,
    table: str,
    frame: pd.DataFrame,
    configs: Mapping[str, TrialConfig],
    statuses: Mapping[str, Status],
    done: Mapping[str, int],
    nll_samples: int = 0,
) -> None:
    """Refuse ``frame`` (a whole ``table``) unless every row is one vaegrid could write.

    Args:
        configs, statuses, done: Every trial's config, status and finished epochs, from
            ``vg_trial`` (already checked: key, config and status).
        nll_samples: The study's ``[rank] nll_samples`` (vg_nll: every row at that k, and
            one at the last epoch of every completed trial).
    """
    rows = [{str(k): v for k, v in r.items()} for r in frame.to_dict("records")]
    t = _Table(where, table, rows, configs, statuses, done, nll_samples)
    if table != "vg_trial":
        t.known()
    _CHECKS[table](t)


def _trials(t: _Table) -> None:
    keys = [r["key"] for r in t.rows]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        t.bad(dup, "key", dup, "one row per trial")
    for r in t.rows:
        epochs = t.configs[r["key"]].epochs
        got = _integer(t.where, t.name, r["key"], "epochs_done", r["epochs_done"], 0, epochs)
        if r["status"] == COMPLETED and got != epochs:
            t.bad(r["key"], "epochs_done", got, f"{epochs} for a completed trial")
        _number(t.where, t.name, r["key"], "seconds", r["seconds"], 0.0)


def _runs(t: _Table) -> None:
    for r in t.rows:
        key = r["key"]
        if r["status"] not in {s.value for s in Status}:
            t.bad(key, "status", r["status"], "one of vaegrid's statuses")
        started = _number(t.where, t.name, key, "started", r["started"], TIME_MIN, TIME_MAX)
        ended = r["ended"]
        if ended is not None and not (isinstance(ended, float) and math.isnan(ended)):
            # a worker's host wrote started, the driver's may write ended: their clocks may
            # differ, so an end a little before the start is no forgery
            _number(t.where, t.name, key, "ended", ended, started - CLOCK_SKEW_S, TIME_MAX)


def _epochs(t: _Table) -> None:
    seen: dict[str, set[tuple[int, str]]] = {k: set() for k in t.configs}
    for r in t.rows:
        key = r["key"]
        epoch = _integer(t.where, t.name, key, "epoch", r["epoch"], 1, t.done[key])
        if r["split"] not in SPLITS:
            t.bad(key, "split", r["split"], '"train" or "val"')
        if (epoch, r["split"]) in seen[key]:
            t.bad(key, "epoch", epoch, "one row per epoch and split")
        seen[key].add((epoch, r["split"]))
        _metrics(t.where, t.name, key, r)
        _number(t.where, t.name, key, "seconds", r["seconds"], 0.0)
    for key in t.statuses:
        want = {(e, s) for e in range(1, t.done[key] + 1) for s in SPLITS}
        if seen[key] != want:
            missing = sorted(want - seen[key])
            what = f"epoch {missing[0][0]} {missing[0][1]}" if missing else "its rows"
            t.bad(key, "epoch", what, f"every epoch 1 to {t.done[key]} it finished")


def _tests(t: _Table) -> None:
    for r in t.rows:  # only completed trials are tested
        key = r["key"]
        if t.statuses[key] != COMPLETED:
            t.bad(key, "key", key, "a completed trial's")
        _metrics(t.where, t.name, key, r)
        _number(t.where, t.name, key, "nll", r["nll"], 0.0)  # -log p(x) of a Bernoulli
        _number(t.where, t.name, key, "seconds", r["seconds"], 0.0)
        _number(t.where, t.name, key, "evaluated", r["evaluated"], 0.0, TIME_MAX)
        _integer(t.where, t.name, key, "nll_samples", r["nll_samples"], 1, 10**9)


def _nlls(t: _Table) -> None:
    pairs = set()  # at an epoch the trial finished, once
    for r in t.rows:
        key = r["key"]
        epoch = _integer(t.where, t.name, key, "epoch", r["epoch"], 1, t.done[key])
        if (key, epoch) in pairs:
            t.bad(key, "epoch", epoch, "one row per epoch")
        pairs.add((key, epoch))
        _number(t.where, t.name, key, "nll", r["nll"], 0.0)  # -log p(x) of a Bernoulli
        samples = _integer(t.where, t.name, key, "samples", r["samples"], 1, 10**9)
        if t.nll_samples and samples != t.nll_samples:
            t.bad(key, "samples", samples, f"{t.nll_samples}, the study's k")
        _number(t.where, t.name, key, "seconds", r["seconds"], 0.0)
    for key, status in t.statuses.items():  # every completed trial's NLL, at its end
        last = t.configs[key].epochs
        if t.nll_samples and status == COMPLETED and (key, last) not in pairs:
            needed = f"a row at the last epoch of every completed trial (k = {t.nll_samples})"
            t.bad(key, "epoch", f"no row at epoch {last}", needed)


def _stops(t: _Table) -> None:
    for r in t.rows:
        _integer(t.where, t.name, r["key"], "rung", r["rung"], 1, t.configs[r["key"]].epochs)


_CHECKS = {"vg_trial": _trials, "vg_run": _runs, "vg_epoch": _epochs, "vg_test": _tests,
           "vg_nll": _nlls, "vg_stop": _stops}  # fmt: skip
