"""How far the study lets each trial run now: the driver's one question of a search policy.

Two policies behind one interface, as a trial scheduler decides apart from the execution
(Ray Tune's ``TrialScheduler``, Dask's adaptive core): the driver dispatches, collects and
forecasts; the policy says which trials may run, to which epoch, what a trial that
returns ``paused`` means, and what its decisions changed. A :class:`FullGrid` runs every
trial to its last epoch. :class:`SyncHalving` runs rung by rung: a trial is sent only as
far as the rungs decided so far allow (halving.py, re-derived from the database after
every result), waits ``paused`` at an undecided rung, and is ``stopped`` when a decided
rung drops it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from vaegrid import halving
from vaegrid.status import Status
from vaegrid.study.core import HalvingSpec, Study

if TYPE_CHECKING:
    from vaegrid.db.store import Store


@dataclass(frozen=True)
class Decision:
    """What a policy's update decided: the statuses of the trials it moved or found, the
    lines that say so, the trials it stopped and those it let go on again."""

    statuses: Mapping[str, Status] = field(default_factory=dict)
    said: list[str] = field(default_factory=list)  # one line per rung decided
    stopped: list[tuple[str, int]] = field(default_factory=list)  # (trial, its rung)
    reopened: list[str] = field(default_factory=list)


class Policy(Protocol):
    """The search policy a driver runs: which trials may run now, and how far."""

    halving: HalvingSpec | None  # the forecast's plan of the rungs to come (None: none)
    open_rung: int | None  # the first rung not decided yet (None: none left, or no rungs)

    def update(self, retry: Collection[str]) -> Decision:
        """Take every decision the database allows now (after a result came in)."""

    def allows(self, key: str) -> bool:
        """Whether ``key`` may run now (if its status lets it)."""

    def target(self, key: str, epochs: int) -> int:
        """The epoch ``key`` (of ``epochs``) may run to now."""

    def stop_at(self, key: str) -> int | None:
        """The epoch a worker stops ``key`` at, ``paused``; None: at its end."""

    def pauses(self) -> bool:
        """Whether a trial may end a run ``paused`` (at a rung), not only final."""

    def nll_when_paused(self) -> bool:
        """Whether a trial paused at a rung computes its validation NLL (rungs compare it)."""


class FullGrid:
    """Every trial of the grid to its last epoch."""

    halving: HalvingSpec | None = None
    open_rung: int | None = None

    def update(self, retry: Collection[str]) -> Decision:
        return Decision()

    def allows(self, key: str) -> bool:
        return True

    def target(self, key: str, epochs: int) -> int:
        return epochs

    def stop_at(self, key: str) -> int | None:
        return None

    def pauses(self) -> bool:
        return False

    def nll_when_paused(self) -> bool:
        return False


class SyncHalving:
    """Synchronous successive halving: trials run to the first undecided rung and wait
    there; a rung is decided once every trial has reached it (halving.py's plan)."""

    def __init__(self, store: Store, keys: Sequence[str], spec: HalvingSpec, epochs: int):
        self.store, self.keys, self.spec, self.epochs = store, list(keys), spec, epochs
        self.halving: HalvingSpec | None = spec
        self.targets: dict[str, int] = {}  # trial -> the epoch it may run to now
        self.open_rung: int | None = None
        self.decided = 0  # rungs decided so far (and said)

    def update(self, retry: Collection[str]) -> Decision:
        """Record every rung decision the database allows (halving.update): idempotent."""
        applied = halving.update(self.store, self.keys, self.spec, self.epochs, retry)
        self.targets, self.open_rung = applied.plan.targets, applied.plan.open_rung
        said = [
            f"rung {rung.epoch}: the best {len(rung.survivors)} of {len(rung.ranked)} trials "
            f"by {self.spec.metric} at epoch {rung.epoch} are kept"
            for rung in applied.plan.decided[self.decided :]
        ]
        self.decided = len(applied.plan.decided)
        stopped = [(k, applied.plan.stopped[k]) for k in applied.stopped]
        return Decision(applied.statuses, said, stopped, applied.reopened)

    def allows(self, key: str) -> bool:
        return key in self.targets

    def target(self, key: str, epochs: int) -> int:
        return self.targets.get(key, epochs)

    def stop_at(self, key: str) -> int | None:
        target = self.targets.get(key)
        return target if target is not None and target < self.epochs else None

    def pauses(self) -> bool:
        return True

    def nll_when_paused(self) -> bool:
        return self.spec.metric == "val_nll"


def policy_of(study: Study, store: Store, keys: Sequence[str]) -> Policy:
    """The policy ``study`` asks for: its ``[halving]``, or the full grid."""
    if study.halving is None:
        return FullGrid()
    return SyncHalving(store, keys, study.halving, study.epochs)
