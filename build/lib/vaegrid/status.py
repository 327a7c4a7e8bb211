"""A trial's status: the one enumeration and the one table of the moves between statuses.

The database layer (``db/trials.py``) is the only writer of a status and refuses any move
that :data:`TRANSITIONS` does not hold; everything else (the driver's counts, the progress
line, ``vaegrid status``, halving, the tables) reads statuses and derives from the sets
below. Statuses are stored as their text (``"completed"``): a :class:`Status` is a ``str``.

    pending ─────▶ running            (the driver sends it to a worker)
    running ─────▶ completed | diverged (final: a result)
    running ─────▶ failed               (final; failed ──▶ running with --retry-failed)
    running ─────▶ interrupted          (Ctrl-C, a worker's death, a lost lease)
    running ─────▶ paused               (halving: reached the rung it was sent to)
    interrupted, paused ──▶ running     (resumed from the last finished epoch)
    interrupted ──▶ failed              (its workers died too often)
    pending, interrupted, paused ──▶ stopped   (halving: dropped at a decided rung)
    stopped ─────▶ stopped | paused     (its rung re-decided by a grown grid: re-recorded,
                                         or kept and going on)

A new trial's row is inserted ``pending`` (db/sync.py); every later change is a move.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from enum import StrEnum

from vaegrid.errors import InputError


class Status(StrEnum):
    PENDING = "pending"  # never started
    RUNNING = "running"  # a worker holds it (or held it, until the next driver's sync)
    COMPLETED = "completed"  # trained every epoch
    DIVERGED = "diverged"  # a non-finite loss or gradient: a result, ranked last
    FAILED = "failed"  # an error (traceback in its run), or its worker died too often
    INTERRUPTED = "interrupted"  # stopped mid-way; resumes from its last finished epoch
    PAUSED = "paused"  # halving: reached the rung it was sent to, waits for the decision
    STOPPED = "stopped"  # halving: a decided rung dropped it (its checkpoint is kept)


PENDING, RUNNING, COMPLETED, DIVERGED, FAILED, INTERRUPTED, PAUSED, STOPPED = Status

# Every legal move: from -> the statuses it may become. Anything else is a bug (or a
# tampered row) and is refused by the writer.
TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    PENDING: frozenset({RUNNING, STOPPED}),
    RUNNING: frozenset({COMPLETED, DIVERGED, FAILED, INTERRUPTED, PAUSED}),
    INTERRUPTED: frozenset({RUNNING, STOPPED, FAILED}),
    PAUSED: frozenset({RUNNING, STOPPED}),
    FAILED: frozenset({RUNNING}),  # --retry-failed
    # Re-recorded at another rung (a grown grid re-decided it), or going on again.
    STOPPED: frozenset({STOPPED, PAUSED}),
    COMPLETED: frozenset(),
    DIVERGED: frozenset(),
}
assert set(TRANSITIONS) == set(Status)

# Never runs again for this grid (failed: unless the driver retries failures).
FINAL = frozenset({COMPLETED, DIVERGED, FAILED, STOPPED})
# Runs when a slot is free (paused trials run when their rung is decided).
WAITING = frozenset({PENDING, INTERRUPTED})
# What the driver may send to a worker (failed ones only with --retry-failed, paused ones
# only when their rung is decided).
STARTABLE = frozenset(s for s, to in TRANSITIONS.items() if RUNNING in to)


_VALUES = frozenset(s.value for s in Status)


class IllegalTransition(RuntimeError):
    """A move the table does not hold: a bug in vaegrid, never a user's mistake."""


def check_transition(key: str, old: Status, new: Status) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is in :data:`TRANSITIONS`."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"trial {key}: {old} -> {new} is not a move a trial makes")


def parse(text: object, where: str) -> Status:
    """A status read from outside (a database row).

    Raises:
        InputError: ``text`` is not one of vaegrid's statuses, naming ``where``.
    """
    if isinstance(text, str) and text in _VALUES:
        return Status(text)
    else:
        allowed = ", ".join(s.value for s in Status)
        raise InputError(f"{where}: status {str(text)[:40]!r} is not one of vaegrid's ({allowed})")


def summary(statuses: Iterable[Status] | Mapping[Status, int], total: int | None = None) -> str:
    """One line of progress, the same for the live bar and ``vaegrid status``.

    Halving studies add their stopped trials (done) and their trials paused at a rung
    (waiting for its decision) once there are any.
    """
    counts = Counter(statuses)  # of statuses, or a copy of counts
    total = sum(counts.values()) if total is None else total
    done = sum(counts[s] for s in FINAL)
    waiting = sum(counts[s] for s in WAITING)
    stopped = f", {counts[STOPPED]} stopped" if counts[STOPPED] else ""
    paused = f", {counts[PAUSED]} paused at a rung" if counts[PAUSED] else ""
    return (
        f"{done}/{total} done ({counts[COMPLETED]} completed, {counts[DIVERGED]} diverged, "
        f"{counts[FAILED]} failed{stopped}), {counts[RUNNING]} running, {waiting} waiting{paused}"
    )
