"""Faults of the world, not of a trial: the one place that tells them apart and waits them out.

A database that restarts, fails over or drops a connection, a full disk, a quota, a
results folder turned read-only or unwritable, the data folder gone: none of these is a
trial's doing, and none may end one as ``failed`` (that status stays for what a trial's
own code did). Calls to the study database are retried with backoff
(:class:`PatientStore`) for up to ``wait_s`` seconds (``run --fault-wait``, default
:data:`FAULT_WAIT_S`); a trial whose files could not be written, or whose data could not
be read, is interrupted at its last finished epoch and the driver holds back new trials
for a while, then tries again. Past the bound the sweep stops with one line naming the
fault and exit 3 (:class:`WorldFault`); the same command continues exactly.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from vaegrid.errors import DataGone, first_line

FAULT_WAIT_S = 300.0  # how long a fault of the world is waited out before the sweep stops
FAULT_WAIT_MAX = 86_400.0
BACKOFF_S = (0.5, 30.0)  # the first wait after a fault, and the longest
# Filesystem errors that say where the files go is unusable now, not that the code is wrong.
_DISK = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the filesystem is read-only",
    errno.ESTALE: "the network filesystem's handle went stale",
    errno.EIO: "the disk gave an I/O error",
    errno.EACCES: "permission was taken away",  # the folder was writable when the sweep began
}
# SQLite's own words for a database it cannot reach now (every other OperationalError of
# SQLite, "no such table" for one, is the database's content: not waited for).
_SQLITE = ("database is locked", "disk i/o error", "database or disk is full",
           "unable to open database file", "attempt to write a readonly database")  # fmt: skip
# PostgreSQL's SQLSTATEs of a server that is away or overloaded, not of the statement: a
# connection exception (08), insufficient resources (53: a full disk, too many
# connections), a system error (58), an administrator's shutdown or a server starting up
# (57P01-57P03), a serialization failure or a deadlock (40001, 40P01: the transaction may
# simply run again). A cancelled statement (57014), a refused password (28...) or a
# program limit (54...) is the statement's own: not waited for.
_PG_CLASSES = ("08", "53", "58")
_PG_STATES = ("57P01", "57P02", "57P03", "40001", "40P01")

T = TypeVar("T")
S = TypeVar("S")


class WorldFault(Exception):
    """A fault of the world: its description (what, where) and how long it was waited out
    already. Raised by a worker to its driver (the trial is interrupted, not failed), and
    by the driver to stop the sweep (exit 3)."""

    def __init__(self, what: str, waited: float = 0.0) -> None:
        super().__init__(what, waited)  # both travel back from a worker process (pickle)
        self.what, self.waited = what, waited

    def __str__(self) -> str:
        return self.what


def world_fault(exc: BaseException, where: str = "") -> str | None:
    """What ``exc`` says of the world in a short line, or None if it is no fault of the
    world's (a bug, bad data, a diverged model: the trial's own). ``where``: the folder
    named when a filesystem error names no file."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # SQLAlchemy wraps the driver's error
        seen.add(id(e))
        if isinstance(e, WorldFault):
            return str(e)
        if isinstance(e, DataGone):  # checked before the sweep: gone since (an unmount)
            return f"the data folder cannot be read now ({e})"
        if isinstance(e, OSError) and e.errno in _DISK:
            path = e.filename or where
            return f"{_DISK[e.errno]}" + (f" ({path})" if path else "")
        names = {c.__name__ for c in type(e).__mro__}
        module = type(e).__module__
        first = first_line(e)
        if module.startswith("psycopg") and names & {"OperationalError", "InterfaceError"}:
            state = getattr(e, "sqlstate", None)  # None: no answer from a server at all
            if state is None or state[:2] in _PG_CLASSES or state in _PG_STATES:
                return f"the study database is unreachable ({type(e).__name__}: {first})"
            return None
        if module == "sqlite3" and "OperationalError" in names and first.lower() in _SQLITE:
            if first.lower() == "database or disk is full":
                return f"{_DISK[errno.ENOSPC]} (the study database: sqlite3 says {first})"
            return f"the study database is unusable now (sqlite3: {first})"
        if module.startswith("sqlalchemy") and names & {"DisconnectionError", "TimeoutError"}:
            return f"the study database is unreachable ({type(e).__name__}: {first})"
        orig = getattr(e, "orig", None)  # SQLAlchemy's DBAPIError holds the driver's
        e = orig if isinstance(orig, BaseException) else e.__cause__ or e.__context__
    return None


def backoff(attempt: int) -> float:
    """Seconds to wait before try ``attempt`` (1, 2, ...): doubling, capped, with jitter so
    a thousand workers do not all come back at once."""
    low, high = BACKOFF_S
    return min(high, low * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def patiently(call: Callable[[], T], wait_s: float, what: str = "") -> T:
    """``call()``, tried again with backoff while it fails by a fault of the world, for up
    to ``wait_s`` seconds; then :class:`WorldFault` with the fault's description.

    Only for calls that may run twice: vaegrid's writes are (an epoch's rows are inserted
    if absent, a move reads the row it changes under a lock).
    """
    started, attempt = time.monotonic(), 0
    while True:
        try:
            return call()
        except Exception as e:
            fault = world_fault(e)
            if fault is None:
                raise
            attempt += 1
            pause = backoff(attempt)
            waited = time.monotonic() - started
            if waited + pause > wait_s:
                raise WorldFault(f"{fault}{what}", waited) from e
            time.sleep(pause)


class FaultClock:
    """A driver's count of the faults of the world since its last progress: how long no
    trial may start (a backoff that doubles while the faults go on), and when to give up
    (``wait_s`` seconds without progress, a worker's own wait counted)."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.since: float | None = None  # the first fault since the last progress
        self.epochs = 0  # the epochs committed when the faults began
        self.count = 0  # faults since the last progress
        self.hold_until = 0.0  # no trial starts before this (time.monotonic)

    def progress(self) -> None:
        """A trial ended or paused: the world works again."""
        self.since, self.count = None, 0

    def fault(self, fault: WorldFault, epochs: int) -> float:
        """A trial was stopped by ``fault`` with ``epochs`` committed in all: the seconds no
        trial starts now. Epochs committed since the faults began count as progress.

        Raises:
            WorldFault: ``wait_s`` seconds have passed without progress.
        """
        now = time.monotonic()
        if epochs > self.epochs:
            self.since, self.count, self.epochs = None, 0, epochs
        self.since = min(self.since or now, now - fault.waited)
        self.count += 1
        if now - self.since >= self.wait_s:
            raise WorldFault(fault.what, now - self.since)
        pause = backoff(self.count)
        self.hold_until = max(self.hold_until, now + pause)
        return pause

    def held(self) -> float:
        """Seconds before a trial may start again (0: now)."""
        return max(0.0, self.hold_until - time.monotonic())


class PatientStore:
    """A store whose every call waits out faults of the world (:func:`patiently`)."""

    def __init__(self, store: Any, wait_s: float) -> None:
        self._store, self._wait_s = store, wait_s

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)
        if not callable(found) or name in ("session", "snapshot", "close"):
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            return patiently(lambda: found(*args, **kwargs), self._wait_s)

        return call


def patient(store: S, wait_s: float) -> S:
    """``store`` as a :class:`PatientStore`, typed as the store it wraps."""
    return cast(S, PatientStore(store, wait_s))
