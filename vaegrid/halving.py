"""Synchronous successive halving: which trials go on at each rung, decided from the database.

A study with a ``[halving]`` table (study/core.py's :class:`HalvingSpec`) compares its trials
at a few epochs, the *rungs*. At each rung, a trial goes on only if it is among the best
``keep`` of all the trials of that rung, and that decision is taken only when the whole
rung is in. Unlike asynchronous schemes (Optuna's pruners, ASHA, Hyperband as W&B runs
it), which decide as results arrive, the surviving set is then a function of the study
alone: not of the number of workers, the order trials finished in, or what was killed.

The rule, exactly:

- The trials of the first rung are the whole grid; the trials of a later rung are the
  survivors of the one before that had reached it (a survivor that diverged or failed
  before the earlier rung never went on).
- A trial's value at rung ``r`` is its validation metric at epoch ``r``. A trial that
  diverged or failed before reaching ``r`` (or whose value is not finite) counts as the
  worst. Ties, the worst included, are broken by trial key.
- The best ``max(1, ceil(keep * n))`` of the rung's ``n`` trials survive (``keep`` taken
  as the decimal the study file writes, so 0.1 of 30 trials is 3 exactly). A survivor
  that has ended does not go on: a rung of mostly diverged trials sends on fewer.
- A rung is decided only when every one of its trials has its value: reached the rung,
  or ended before it. Until then, no trial goes past it.

Nothing of this is kept in memory: :func:`plan` re-derives every decision from what the
database holds (each trial's per-epoch validation metrics and whether it ended), so a
driver killed at any moment, restarted, takes the same decisions. Epoch rows are never
rewritten, so for a given grid a rung once decided stays decided. A grid that grows adds
trials to the first rung: it is undecided again until the new trials reach it, every other
trial waits where it is, and the decisions then taken over the grown grid are the ones a
fresh run of it would take. Their consequences for trials that had already moved on:

- a trial *stopped* earlier that now survives is reopened: it continues from its kept
  checkpoint. Optuna cannot revive a finished trial, so its ``PRUNED`` trial stays and a
  new Optuna trial takes over, as for a retried failure;
- a trial paused at a later rung that no longer survives an earlier one is stopped at
  that earlier rung (the epochs it ran are kept);
- a trial that had *completed* stays completed: its numbers are the full grid's for its
  key, and they are kept. A grown grid can therefore end with more completed trials than
  a fresh run of it; never with other numbers.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

from vaegrid.status import Status
from vaegrid.study.core import HalvingSpec

if TYPE_CHECKING:  # the driver imports this module; the store imports no torch either
    from vaegrid.db.reader import ReaderMixin
    from vaegrid.db.store import Store


def n_survivors(n: int, keep: float) -> int:
    """How many of ``n`` trials of a rung go on: ``max(1, ceil(keep * n))`` (0 of none).

    ``keep`` is read as the shortest decimal that gives the float back (``repr``), which is
    what a study file writes: 0.1 of 30 is 3, where float arithmetic would give 4.
    """
    if n <= 0:
        return 0
    return max(1, math.ceil(Fraction(repr(keep)) * n))


def rank_rung(values: Mapping[str, float]) -> list[str]:
    """The keys of one rung's table, best first.

    Lower is better; a value that is not finite (a trial that diverged or failed before the
    rung) counts as the worst; ties, the worst included, are broken by key.
    """
    return sorted(values, key=lambda k: (_worst_last(values[k]), k))


def _worst_last(value: float) -> float:
    return value if math.isfinite(value) else math.inf


@dataclass(frozen=True)
class Standing:
    """One trial as the rule sees it: how far it got and what it scored at each rung."""

    key: str
    epochs_done: int  # finished epochs, each with its validation metrics in the database
    ended: bool  # diverged or failed: it will report no further epoch
    values: Mapping[int, float] = field(default_factory=dict)  # rung epoch -> metric there
    completed: bool = False  # ran all its epochs: nothing left to run


@dataclass(frozen=True)
class Rung:
    """A decided rung: the trials compared there, best first, and those that went on."""

    epoch: int
    ranked: tuple[str, ...]
    survivors: tuple[str, ...]
    values: Mapping[str, float] = field(default_factory=dict)  # key -> value compared


@dataclass(frozen=True)
class Plan:
    """What the rule allows now, given what the database holds."""

    decided: tuple[Rung, ...]  # rungs decided, in order
    open_rung: int | None  # the first undecided rung; None when every rung is decided
    targets: dict[str, int]  # trial -> the epoch it may run to now (a rung, or the last)
    stopped: dict[str, int]  # trial -> the rung that stopped it (ended trials are not here)


def plan(standings: Mapping[str, Standing], spec: HalvingSpec, epochs: int) -> Plan:
    """Every decision the standings allow, and which trials may run how far now.

    Pure: the same standings give the same plan, whatever order they come in.

    Args:
        standings: Every trial of the grid (and only those).
        spec: The study's ``[halving]``.
        epochs: The study's ``train.epochs``.

    Returns:
        The decided rungs; the first undecided one, whose trials still behind it may run to
        it (every other trial waits); the trials stopped by the decided rungs. When every
        rung is decided, the last rung's survivors may run to ``epochs``.
    """
    cohort = sorted(standings)
    decided: list[Rung] = []
    stopped: dict[str, int] = {}
    for rung in spec.rungs:
        behind = [k for k in cohort if standings[k].epochs_done < rung and not standings[k].ended]
        if behind:  # not all in: no trial goes past this rung yet
            return Plan(tuple(decided), rung, dict.fromkeys(behind, rung), stopped)
        values = {k: _value(standings[k], rung) for k in cohort}
        ranked = rank_rung(values)
        going = ranked[: n_survivors(len(ranked), spec.keep)]
        decided.append(Rung(rung, tuple(ranked), tuple(going), values))
        stopped.update((k, rung) for k in ranked[len(going) :] if not standings[k].ended)
        # On to the next rung: the survivors that got here (one that ended on its way there
        # is still one of its trials, as the worst).
        cohort = [k for k in going if standings[k].epochs_done >= rung]
    targets = {k: epochs for k in cohort if not standings[k].ended and not standings[k].completed}
    return Plan(tuple(decided), None, targets, stopped)


def _value(s: Standing, rung: int) -> float:
    """A trial's value at ``rung``: its metric there, the worst if it never got there."""
    if s.epochs_done < rung:
        return math.inf  # ended before the rung
    return s.values.get(rung, math.inf)


# -- the driver's side -------------------------------------------------------------------------


def read_standings(
    store: ReaderMixin, keys: Collection[str], spec: HalvingSpec, retry: Collection[str] = ()
) -> tuple[dict[str, Standing], dict[str, Status], dict[str, str | None]]:
    """The standings of ``keys`` from the database, and each trial's stored status and cause.

    Args:
        retry: Failed trials that this driver runs again (``--retry-failed``): they have
            not ended, so their rung waits for them.
    """
    from vaegrid.status import COMPLETED, DIVERGED, FAILED

    rows, values = store.rung_values(spec.metric, spec.rungs)
    standings, statuses, causes = {}, {}, {}
    for key in keys:
        status, epochs_done, causes[key] = rows[key]
        ended = status == DIVERGED or (status == FAILED and key not in retry)
        completed = status == COMPLETED
        got = values.get(key, {})
        if spec.metric == "val_nll" and not ended:  # its NLL at a rung is written once it
            # paused there: one killed in between is behind that rung until it is
            missing = [r for r in spec.rungs if r <= epochs_done and r not in got]
            epochs_done = missing[0] - 1 if missing else epochs_done
        standings[key] = Standing(key, epochs_done, ended, got, completed)
        statuses[key] = status
    return standings, statuses, causes


@dataclass(frozen=True)
class Applied:
    """What one :func:`update` did, and what it found."""

    plan: Plan
    statuses: dict[str, Status]  # every trial's status after the update
    stopped: list[str] = field(default_factory=list)  # stopped by this update
    reopened: list[str] = field(default_factory=list)  # stopped before, now going on


def update(
    store: Store,
    keys: Sequence[str],
    spec: HalvingSpec,
    epochs: int,
    retry: Collection[str] = (),
) -> Applied:
    """Take every decision the database allows and record it: stop the trials a decided
    rung drops, reopen stopped trials that a re-decided rung (a grown grid) keeps.

    Idempotent, and safe after a kill at any point: what it records is re-derived from the
    epochs in the database, so a second call records nothing new.
    """
    from vaegrid.status import PAUSED, STOPPED, TRANSITIONS

    standings, statuses, stored_causes = read_standings(store, keys, spec, retry)
    found = plan(standings, spec, epochs)
    stored_rungs = store.stopped_rungs()
    causes = {k: _cause(found, k, r, spec) for k, r in found.stopped.items()}
    # Only a trial that waits is stopped: a completed one stays completed (its numbers are
    # the full grid's), a failed one failed, and a running one is never a decided rung's
    # loser (it is behind the open rung). One stopped already is recorded again when its
    # rung was decided again (a grown grid): its rank and the count that went on change.
    to_stop = {
        k: r
        for k, r in found.stopped.items()
        if STOPPED in TRANSITIONS[statuses[k]]
        and (stored_rungs.get(k) != r or stored_causes[k] != causes[k])
    }
    reopen = [k for k in found.targets if statuses[k] == STOPPED]
    if to_stop:
        store.stop(to_stop, {k: causes[k] for k in to_stop})
    if reopen:
        store.reopen(reopen)
    statuses.update(dict.fromkeys(to_stop, STOPPED))
    statuses.update(dict.fromkeys(reopen, PAUSED))
    new = [k for k in to_stop if k not in stored_rungs]
    return Applied(found, statuses, new, reopen)


def _cause(found: Plan, key: str, rung: int, spec: HalvingSpec) -> str:
    """Why a trial stopped, for its row and its Optuna trial: rank, value, how many went on."""
    (decision,) = [r for r in found.decided if r.epoch == rung]
    place = decision.ranked.index(key) + 1
    value = decision.values.get(key, math.inf)
    shown = f"{value:.2f}" if math.isfinite(value) else "none"
    return (
        f"stopped at rung {rung}: {spec.metric} {shown}, rank {place} of "
        f"{len(decision.ranked)}; the best {len(decision.survivors)} were kept"
    )
