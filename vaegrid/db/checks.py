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

import numpy as np

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
    if _passes(table, frame, configs, statuses, done, nll_samples):
        return  # no row refused: none needs looking at one by one
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


# The fast path. _passes answers, a column at a time with numpy, whether every row of a
# table is one the checks above let through: then no row needs looking at one by one (the
# 2,000,000 epoch rows of a 100,000-trial study). When it says no, check() walks the rows
# and names the first wrong one, so the checks above stay the one authority on what is
# refused and how it is said. It must never pass a table they refuse (tests/test_checks.py
# holds it to that): a column that is not plainly numbers (text, a NULL in an integer) is
# a no.


def _all_numbers(column: pd.Series, low: Any = -METRIC_MAX, high: Any = METRIC_MAX) -> bool:
    """_number of every value: a finite int or float (no text) within [low, high]."""
    if column.dtype.kind not in "if":
        return len(column) == 0
    values = column.to_numpy(dtype=float)
    return bool(np.all(np.isfinite(values) & (values >= low) & (values <= high)))


def _all_integers(column: pd.Series, low: Any, high: Any) -> bool:
    """_integer of every value: an int, or a float that is one, within [low, high]."""
    if column.dtype.kind not in "if":
        return len(column) == 0
    values = column.to_numpy(dtype=float)
    whole = np.isfinite(values) & (np.floor(values) == values)
    return bool(np.all(whole & (values >= low) & (values <= high)))


def _all_metrics(frame: pd.DataFrame) -> bool:
    """_metrics of every row."""
    if not (
        _all_numbers(frame["recon"], 0.0)
        and _all_numbers(frame["kl"], KL_FLOOR)
        and _all_numbers(frame["elbo"])
    ):
        return False
    recon, kl = frame["recon"].to_numpy(dtype=float), frame["kl"].to_numpy(dtype=float)
    elbo = frame["elbo"].to_numpy(dtype=float)
    return bool(np.all(np.abs(elbo - (recon + kl)) <= 1e-6 * np.maximum(1.0, np.abs(elbo))))


class _Keys:
    """A table's key column, factorized once: each row's trial as a code."""

    def __init__(self, keys: pd.Series) -> None:
        import pandas as pd

        codes, uniques = pd.factorize(keys)
        self.codes, self.uniques = codes, list(uniques)
        self.whole = not bool((codes < 0).any())  # a NULL key is no trial's

    def known(self, configs: Mapping[str, Any]) -> bool:
        return self.whole and all(isinstance(k, str) and k in configs for k in self.uniques)

    def per_row(self, by_key: Mapping[str, int]) -> Any:
        """``by_key`` of every row's trial, as floats (the rows' keys are known)."""
        return np.asarray([by_key[k] for k in self.uniques], dtype=float)[self.codes]

    def doubled(self, *columns: Any) -> bool:
        """Two rows of one trial alike in ``columns`` (small non-negative integers)."""
        if not columns:
            return len(self.uniques) != len(self.codes)
        whole = self.codes.astype(np.int64)
        for column in columns:
            column = np.asarray(column, dtype=np.int64)
            whole = whole * (int(column.max(initial=0)) + 1) + column
        whole.sort()  # (np.unique hashes: 2 s for 2,000,000 rows; a sort takes 0.1)
        return bool(np.any(whole[1:] == whole[:-1]))

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.codes, minlength=len(self.uniques)).tolist()
        return dict(zip(self.uniques, found, strict=True))


def _passes(
    table: str,
    f: pd.DataFrame,
    configs: Mapping[str, TrialConfig],
    statuses: Mapping[str, Status],
    done: Mapping[str, int],
    nll_samples: int,
) -> bool:
    """True only if every row of ``f`` (the whole ``table``) passes the checks above."""
    keys = _Keys(f["key"])
    if not keys.known(configs):  # vg_trial's keys are configs' (read from it, checked)
        return False

    def last() -> dict[str, int]:
        return {k: configs[k].epochs for k in keys.uniques}

    if table == "vg_trial":
        epochs = keys.per_row(last())
        completed = (f["status"] == COMPLETED.value).to_numpy()
        return (
            not keys.doubled()
            and _all_integers(f["epochs_done"], 0, epochs)
            and bool(np.all(f["epochs_done"].to_numpy(dtype=float)[completed] == epochs[completed]))
            and _all_numbers(f["seconds"], 0.0)
        )
    if table == "vg_run":
        if not f["status"].isin([s.value for s in Status]).all():
            return False
        if not _all_numbers(f["started"], TIME_MIN, TIME_MAX):
            return False
        if f["ended"].dtype.kind != "f":  # all NULL reads as objects: every run still open
            return all(v is None or (isinstance(v, float) and math.isnan(v)) for v in f["ended"])
        ended, started = f["ended"].to_numpy(), f["started"].to_numpy(dtype=float)
        closed = (ended >= started - CLOCK_SKEW_S) & (ended <= TIME_MAX)
        return bool(np.all(np.isnan(ended) | closed))
    if table == "vg_stop":
        return _all_integers(f["rung"], 1, keys.per_row(last()))
    if table == "vg_test":
        return (
            all(statuses[k] == COMPLETED for k in keys.uniques)
            and _all_metrics(f)
            and _all_numbers(f["nll"], 0.0)
            and _all_numbers(f["seconds"], 0.0)
            and _all_numbers(f["evaluated"], 0.0, TIME_MAX)
            and _all_integers(f["nll_samples"], 1, 10**9)
        )
    # vg_epoch, vg_nll: a row at an epoch its trial finished
    if not _all_integers(f["epoch"], 1, keys.per_row(done)):
        return False
    epoch = f["epoch"].to_numpy(dtype=float)
    if not _all_numbers(f["seconds"], 0.0):
        return False
    if table == "vg_epoch":
        if not f["split"].isin(SPLITS).all() or keys.doubled(epoch, f["split"] == "val"):
            return False
        # every row valid, none doubled: a trial has each epoch it finished in both splits
        # exactly when it has two rows an epoch
        counts = keys.counts()
        return _all_metrics(f) and all(counts.get(k, 0) == 2 * done[k] for k in statuses)
    if keys.doubled(epoch) or not _all_numbers(f["nll"], 0.0):  # vg_nll
        return False
    if not _all_integers(f["samples"], 1, 10**9):
        return False
    if not nll_samples:
        return True
    if not bool((f["samples"].to_numpy(dtype=float) == nll_samples).all()):
        return False
    at = set(zip(f["key"], epoch.astype(int).tolist(), strict=True))
    return all((k, configs[k].epochs) in at for k, s in statuses.items() if s == COMPLETED)
