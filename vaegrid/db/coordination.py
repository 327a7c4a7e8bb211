"""Who may run what, on a server database: the driver's heartbeat and the workers' leases.

On SQLite the kernel's flocks do this (run/locks.py, run/worker.py); on a server the
database does: the live driver writes a heartbeat every few seconds that cluster workers
watch, and a worker holds a lease on the trial it runs, renewed while it lives, taken over
once it lapses. The driver's own exclusion is PostgreSQL's advisory lock (engine.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, delete, text, tuple_, update
from sqlalchemy.engine import CursorResult

from vaegrid.db.schema import ClaimRow, DriverRow
from vaegrid.db.session import StoreBase

_CLAIMS = cast(Table, ClaimRow.__table__)
# A lease taken (its row made) or renewed by its holder or taken over once it lapsed, in one
# statement: a row counted only then (an upsert whose WHERE fails changes none, both
# dialects). The ORM's update and a second statement cost more CPU than the claim. On
# PostgreSQL a claim that fails still locks the holder's row until it commits (at once):
# the holder's renewal may wait that long.
_CLAIM = text(
    "INSERT INTO vg_claim (key, owner, expires) VALUES (:key, :owner, :expires) "
    "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires = excluded.expires "
    "WHERE vg_claim.owner = excluded.owner OR vg_claim.expires < :now"
)


class CoordinationMixin(StoreBase):
    def driver_beat(self, study: str, token: str, pid: int, host: str) -> None:
        """The driver is alive (written every few seconds while a sweep runs)."""
        with self.session() as s:
            row = s.get(DriverRow, study)
            if row is None:
                s.add(DriverRow(study=study, token=token, pid=pid, host=host, beat=time.time()))
            else:
                row.token, row.pid, row.host, row.beat = token, pid, host, time.time()

    def driver_gone(self, study: str, token: str) -> None:
        """The driver ended: its heartbeat row says so at once (no timeout to wait out)."""
        with self.session() as s:
            s.execute(
                update(DriverRow)
                .where(DriverRow.study == study, DriverRow.token == token)
                .values(beat=0.0)
            )

    def claim(self, key: str, owner: str, ttl: float) -> bool:
        """Take (or renew) the lease on ``key`` for ``ttl`` seconds; False if another
        worker holds a lease that has not expired."""
        now = time.time()
        with self.session() as s:
            taken: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                _CLAIM, {"key": key, "owner": owner, "expires": now + ttl, "now": now}
            )
            return bool(taken.rowcount == 1)

    def renew(self, leases: Sequence[tuple[str, str]], ttl: float) -> set[str]:
        """Renew many leases, each ``(key, owner)``, for ``ttl`` seconds in one statement
        (a worker process's trials together); returns the keys renewed. A lease not
        renewed is lost: another worker took it over once it lapsed. Its trial must stop.
        """
        if not leases:
            return set()
        with self.session() as s:
            lease = ClaimRow.__table__.c
            renewed = s.execute(
                update(cast(Table, ClaimRow.__table__))
                .where(tuple_(lease.key, lease.owner).in_(list(leases)))
                .values(expires=time.time() + ttl)
                .returning(lease.key)
            )
            return set(renewed.scalars())

    def release(self, key: str, owner: str) -> None:
        with self.session() as s:
            s.execute(delete(_CLAIMS).where(_CLAIMS.c.key == key, _CLAIMS.c.owner == owner))
