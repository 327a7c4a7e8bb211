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
from typing import TYPE_CHECKING, Any, NoReturn

from vaegrid.errors import InputError
from vaegrid.spec.study import TrialConfig
from vaegrid.status import COMPLETED, Status

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
    rows = frame.to_dict("records")
    if table == "vg_trial":
        keys = [r["key"] for r in rows]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            _bad(where, table, dup, "key", dup, "one row per trial")
        for r in rows:
            epochs = configs[r["key"]].epochs
            got = _integer(where, table, r["key"], "epochs_done", r["epochs_done"], 0, epochs)
            if r["status"] == COMPLETED and got != epochs:
                _bad(where, table, r["key"], "epochs_done", got, f"{epochs} for a completed trial")
            _number(where, table, r["key"], "seconds", r["seconds"], 0.0)
        return
    if table == "vg_run":
        for r in rows:
            key = r["key"]
            if key not in configs:
                _bad(where, table, key, "key", key, "the key of a trial in vg_trial")
            if r["status"] not in {s.value for s in Status}:
                _bad(where, table, key, "status", r["status"], "one of vaegrid's statuses")
            started = _number(where, table, key, "started", r["started"], TIME_MIN, TIME_MAX)
            if r["ended"] is not None and not (
                isinstance(r["ended"], float) and math.isnan(r["ended"])
            ):
                # a worker's host wrote started, the driver's may write ended: their
                # clocks may differ, so an end a little before the start is no forgery
                _number(where, table, key, "ended", r["ended"], started - CLOCK_SKEW_S, TIME_MAX)
        return
    if table == "vg_epoch":
        seen: dict[str, set[tuple[int, str]]] = {k: set() for k in configs}
        for r in rows:
            key = r["key"]
            if key not in configs:
                _bad(where, table, key, "key", key, "the key of a trial in vg_trial")
            epoch = _integer(where, table, key, "epoch", r["epoch"], 1, done[key])
            if r["split"] not in SPLITS:
                _bad(where, table, key, "split", r["split"], '"train" or "val"')
            if (epoch, r["split"]) in seen[key]:
                _bad(where, table, key, "epoch", epoch, "one row per epoch and split")
            seen[key].add((epoch, r["split"]))
            _metrics(where, table, key, r)
            _number(where, table, key, "seconds", r["seconds"], 0.0)
        for key in statuses:
            want = {(e, s) for e in range(1, done[key] + 1) for s in SPLITS}
            if seen[key] != want:
                missing = sorted(want - seen[key])
                what = f"epoch {missing[0][0]} {missing[0][1]}" if missing else "its rows"
                _bad(where, table, key, "epoch", what, f"every epoch 1 to {done[key]} it finished")
        return
    for r in rows:  # vg_test, vg_nll, vg_stop: rows of known trials
        if r["key"] not in configs:
            _bad(where, table, r["key"], "key", r["key"], "the key of a trial in vg_trial")
    if table == "vg_test":  # only completed trials are tested
        for r in rows:
            key = r["key"]
            if statuses[key] != COMPLETED:
                _bad(where, table, key, "key", key, "a completed trial's")
            _metrics(where, table, key, r)
            _number(where, table, key, "nll", r["nll"], 0.0)  # -log p(x) of a Bernoulli
            _number(where, table, key, "seconds", r["seconds"], 0.0)
            _number(where, table, key, "evaluated", r["evaluated"], 0.0, TIME_MAX)
            _integer(where, table, key, "nll_samples", r["nll_samples"], 1, 10**9)
        return
    if table == "vg_nll":  # at an epoch the trial finished, once
        pairs = set()
        for r in rows:
            key = r["key"]
            epoch = _integer(where, table, key, "epoch", r["epoch"], 1, done[key])
            if (key, epoch) in pairs:
                _bad(where, table, key, "epoch", epoch, "one row per epoch")
            pairs.add((key, epoch))
            _number(where, table, key, "nll", r["nll"], 0.0)  # -log p(x) of a Bernoulli
            samples = _integer(where, table, key, "samples", r["samples"], 1, 10**9)
            if nll_samples and samples != nll_samples:
                _bad(where, table, key, "samples", samples, f"{nll_samples}, the study's k")
            _number(where, table, key, "seconds", r["seconds"], 0.0)
        for key, status in statuses.items():  # every completed trial's NLL, at its end
            last = configs[key].epochs
            if nll_samples and status == COMPLETED and (key, last) not in pairs:
                needed = f"a row at the last epoch of every completed trial (k = {nll_samples})"
                _bad(where, table, key, "epoch", f"no row at epoch {last}", needed)
        return
    if table == "vg_stop":
        for r in rows:
            _integer(where, table, r["key"], "rung", r["rung"], 1, configs[r["key"]].epochs)
