"""Which trial runs next, and where: the driver's queue under the one placement rule.

A trial is queued when the study lets it run now (pending or interrupted; failed ones
with ``--retry-failed``; with halving, as far as the decided rungs allow). A queued trial
goes to the first free slot that :func:`vaegrid.run.pool.may_run` lets it run on; one
that no slot of the pool may run (it started on a kind of device the pool lacks) is
*stranded*: it waits for a run with such a device, and the sweep exits 1 saying so.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping

from vaegrid.run.pool import Pool, may_run


class Scheduler:
    """The queue of trials that may run now, in the order they were offered."""

    def __init__(self, pool: Pool, bound: Mapping[str, str]) -> None:
        self.pool = pool
        self.bound = dict(bound)  # key -> the device kind it started on
        self.queue: deque[str] = deque()
        self.stranded: list[str] = []

    def bind(self, bound: Mapping[str, str]) -> None:
        """The device kinds trials are bound to, as the database has them now (a trial's
        first epoch binds it)."""
        self.bound = dict(bound)

    def waiting(self) -> set[str]:
        """Every trial offered and not yet taken: queued or stranded."""
        return {*self.queue, *self.stranded}

    def offer(self, key: str, front: bool = False) -> None:
        """Queue ``key`` (``front``: before the others), or strand it if no slot may run it."""
        if not self.pool.places(self.bound.get(key)):
            self.stranded.append(key)
        elif front:
            self.queue.appendleft(key)
        else:
            self.queue.append(key)

    def take(self, slot_kind: str) -> str | None:
        """The first queued trial that may run on a slot of ``slot_kind``, off the queue."""
        for key in self.queue:
            if may_run(self.bound.get(key), slot_kind):
                self.queue.remove(key)
                return key
        return None

    def strands(self) -> list[str]:
        """One line per kind of device that stranded trials wait for."""
        kinds = ", ".join(sorted(set(self.pool.kinds)))
        remedy = f": {self.pool.remedy}" if self.pool.remedy else ""
        return [
            f"{n} trials started on {kind} and only continue on that kind of device; "
            f"this pool has {kinds}{remedy}"
            for kind, n in Counter(self.bound[k] for k in self.stranded).items()
        ]
