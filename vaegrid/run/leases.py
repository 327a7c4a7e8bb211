"""A worker process's watch over the trials it runs: one thread for all of them.

While a trial runs on a server database its worker holds a lease on it, renewed every few
seconds; a cluster worker also watches its driver's heartbeat, and a Dask worker whether
Dask is closing it. A :class:`Keeper` does this for every trial of its process at once:
every :data:`CHECK_S` seconds one statement renews all their leases and one query reads
the heartbeat, so a node of 25 slots asks the database 2 things every few seconds, not 50
(at 1,000 slots: 16 transactions a second instead of 400). Each trial learns the verdict
through its own stop flag, as before: set when its lease was taken over or has lapsed,
when the driver is stale or replaced, or when its Dask worker is closing.
"""

from __future__ import annotations

import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

# A cluster worker stops a trial whose driver's heartbeat is older than this.
DRIVER_TIMEOUT_S = 20.0
# A server lease on a trial lasts this long; its worker renews it every few seconds. Long
# enough to outlast a slow server (renewals took up to 29 s at 256 writers on 2 cores).
LEASE_S = 45.0
# How often leases are renewed and the heartbeat read: a quarter of the driver's timeout.
CHECK_S = min(5.0, DRIVER_TIMEOUT_S / 4)
# A closing Dask worker is looked at every second: a job at its walltime or cancelled gets
# SIGTERM, then SIGKILL after the scheduler's kill wait (Slurm: 30 s by default).
TICK_S = 1.0
_CLOSING = ("closing_gracefully", "closing", "closed", "failed")


class LeaseStore(Protocol):
    def renew(self, leases: list[tuple[str, str]], ttl: float) -> set[str]: ...

    def live_driver(self, timeout: float) -> Any: ...


@dataclass(eq=False)
class Hold:
    """One trial held by this process: what it must be told, through ``stop``."""

    key: str
    owner: str  # host:pid:thread, the lease's owner
    leased: bool  # a server lease to renew (SQLite: the kernel's flock holds the trial)
    driver_token: str | None  # the driver it runs for; None: not watched by heartbeat
    dask_worker: Any = None  # the Dask worker running it (None: vaegrid's own pool)
    stop: threading.Event = field(default_factory=threading.Event)
    renewed: float = field(default_factory=time.monotonic)


class Keeper:
    """The watch over one store's trials in this process; its thread runs while it holds
    any (started by the first :meth:`hold`, ended when the last is let go)."""

    def __init__(self, store: LeaseStore, check_s: float = CHECK_S, tick_s: float = TICK_S):
        self.store, self.check_s, self.tick_s = store, check_s, tick_s
        self._holds: set[Hold] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, hold: Hold) -> Hold:
        """Watch ``hold`` from now (its thread started if none runs: a failure to start one
        is raised here, and the hold is not kept)."""
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="vaegrid-keeper", daemon=True)
                thread.start()
                self._thread = thread
            self._holds.add(hold)
        return hold

    def let_go(self, hold: Hold) -> None:
        with self._lock:
            self._holds.discard(hold)

    def _run(self) -> None:
        checked = time.monotonic()
        try:
            while True:
                time.sleep(self.tick_s)
                with self._lock:
                    holds = [h for h in self._holds if not h.stop.is_set()]
                    if not self._holds:
                        self._thread = None  # in this lock: the next hold starts a thread
                        return
                with suppress(Exception):  # whatever a check meets, the watch goes on
                    if time.monotonic() - checked >= self.check_s - self.tick_s / 2:
                        checked = time.monotonic()
                        self.check(holds)
                    for h in holds:
                        if h.dask_worker is not None and h.dask_worker.status.name in _CLOSING:
                            h.stop.set()  # retiring (--lifetime) or ended: stop, not be killed
        finally:  # ended by anything else: the next hold starts a new thread
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None

    def check(self, holds: list[Hold]) -> None:
        """Renew the leases of ``holds`` and read the driver's heartbeat, once for all.

        A failed renewal is retried at the next check: only a lease taken by another worker
        or lapsed (its last renewal older than :data:`LEASE_S`), a driver whose heartbeat is
        stale or replaced stop a trial: it ends ``interrupted`` at its next batch, releases
        its lease at once, and its executor runs it again, from its last epoch.
        """
        leased = [h for h in holds if h.leased and not h.stop.is_set()]
        if leased:
            now = time.monotonic()  # a renewal counts from before it was asked
            try:
                kept = self.store.renew([(h.key, h.owner) for h in leased], LEASE_S)
            except Exception:  # a slow or unreachable server: retried at the next check
                failed = time.monotonic()  # after the call: it may have waited long
                for h in leased:
                    if failed - h.renewed > LEASE_S:
                        h.stop.set()  # the lease has lapsed: another worker may take it now
            else:
                for h in leased:
                    if h.key in kept:
                        h.renewed = now
                    else:
                        h.stop.set()  # another worker took it over: never two runs at once
        watched = [h for h in holds if h.driver_token is not None]
        if watched:
            with suppress(Exception):  # an unreachable database: the lease covers it
                live = self.store.live_driver(DRIVER_TIMEOUT_S)
                for h in watched:
                    if live is None or live.token != h.driver_token:
                        h.stop.set()  # the driver died (or a new one took over)


_KEEPERS: dict[int, Keeper] = {}
_KEEPERS_LOCK = threading.Lock()


def keeper(store: LeaseStore) -> Keeper:
    """This process's keeper of ``store``'s trials (one per store object)."""
    with _KEEPERS_LOCK:
        found = _KEEPERS.get(id(store))
        if found is None or found.store is not store:
            found = _KEEPERS[id(store)] = Keeper(store)
        return found


def forget() -> None:
    """Drop this process's keepers (worker.reset: its stores are closed)."""
    with _KEEPERS_LOCK:
        _KEEPERS.clear()
