"""Which trial runs next, and where: the driver's queue of trials under the one placement
rule (``TrialQueue``; not Dask's scheduler, nor a batch scheduler).

A trial is queued when the study lets it run now (pending or interrupted; failed ones
with ``--retry-failed``; with halving, as far as the decided rungs allow). A free slot
takes, of the queued trials that :func:`vaegrid.run.pool.may_run` lets it run, the one
with the most work left (cost.py; ties by key), so that the sweep does not end on its
largest trials while other slots idle: the order changes no number, only the tail. Trials
put back after an interruption or a worker's death go first. One that no slot of the pool
may run (it started on a kind of device the pool lacks) is *stranded*: it waits for a run
with such a device, and the sweep exits 1 saying so.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from vaegrid.run.pool import Pool, Slot, may_run


class TrialQueue:
    """The queue of trials that may run now: those put back first, then the most work left."""

    def __init__(
        self, pool: Pool, bound: Mapping[str, str], cost: Callable[[str], float] | None = None
    ) -> None:
        self.pool = pool
        self.bound = dict(bound)  # key -> the device kind it started on
        self.cost = cost or (lambda key: 0.0)  # a trial's work left, as cost.py says
        self._queue: list[str] = []  # most work left first (its cost when offered), then key
        self._order: list[tuple[float, str]] = []  # the sort keys of _queue, in its order
        self._front: list[str] = []  # put back (interrupted, its worker died): first, in order
        self.stranded: list[str] = []

    @property
    def order(self) -> list[str]:
        """The queued trials in the order they would be taken (where every slot may run
        them): those put back, then the most work left first."""
        front = set(self._front)
        return [*self._front, *(k for k in self._queue if k not in front)]

    def bind(self, key: str, kind: str | None) -> None:
        """``key`` is bound to ``kind`` now, as the database has it (a trial's first epoch
        binds it, for good; None: not yet)."""
        if kind is not None:
            self.bound[key] = kind

    def waiting(self) -> set[str]:
        """Every trial offered and not yet taken: queued or stranded."""
        return {*self._queue, *self.stranded}

    def offer(self, key: str, front: bool = False) -> None:
        """Queue ``key`` (``front``: before the others), or strand it if no slot may run it."""
        if not self.pool.places(self.bound.get(key)):
            self.stranded.append(key)
            return
        order = (-self.cost(key), key)
        at = bisect.bisect(self._order, order)
        self._order.insert(at, order)
        self._queue.insert(at, key)
        if front:
            self._front.append(key)

    def take(self, slot_kind: str) -> str | None:
        """The queued trial to run next on a slot of ``slot_kind``, off the queue: the first
        put back, else the one with the most work left (ties: the smaller key)."""
        runs = (k for k in (*self._front, *self._queue) if may_run(self.bound.get(k), slot_kind))
        key = next(runs, None)
        if key is None:
            return None
        at = self._queue.index(key)
        del self._queue[at], self._order[at]
        if key in self._front:
            self._front.remove(key)
        return key

    def place(self, free: list[Slot], busy: Counter[str]) -> Iterator[tuple[str, Slot]]:
        """The trials to start now and their slots: free slots filled least busy device
        first (``busy``: trials running per device, counted up as trials are placed), each
        with the first queued trial the placement rule lets run there. ``free`` loses the
        slots given out; a slot handed back (its worker died while idle) is appended to it.
        """
        candidates = list(free)
        while candidates and self.order:
            slot = min(candidates, key=lambda s: (busy[s.device], s.device, s.index))
            candidates.remove(slot)
            key = self.take(self.pool.kind(slot.device))
            if key is None:
                continue
            free.remove(slot)
            busy[slot.device] += 1
            yield key, slot

    def hand_over(
        self, freed: Slot, running: MutableMapping[Any, tuple[str, Slot]]
    ) -> tuple[Slot, str | None]:
        """A slot freed while trials wait ahead: the first sent of them starts there now, as
        the executor starts the next of its queue, and takes the slot in ``running``; its
        place ahead is what is free. Returns the slot free now and the trial that started
        on ``freed`` (None: none waited)."""
        if self.pool.is_ahead(freed):  # nothing to hand over
            return freed, None
        for future, (key, slot) in running.items():  # the order they were sent
            if self.pool.is_ahead(slot) and slot.device == freed.device:
                running[future] = (key, freed)
                return slot, key
        return freed, None

    def strands(self) -> list[str]:
        """One line per kind of device that stranded trials wait for."""
        kinds = ", ".join(sorted(set(self.pool.kinds)))
        remedy = f": {self.pool.remedy}" if self.pool.remedy else ""
        return [
            f"{n} trials started on {kind} and only continue on that kind of device; "
            f"this pool has {kinds}{remedy}"
            for kind, n in Counter(self.bound[k] for k in self.stranded).items()
        ]
