"""The one way into a study database: engines and the one session helper.

Every other module of ``db/`` is a part of :class:`vaegrid.db.store.Store` built on this
base, and reaches the database through :meth:`StoreBase.session` (one transaction,
committed at the end of the block, rolled back on any error, as Optuna's RDB storage does
with its scoped sessions), and a writer to Optuna's ledger through
:attr:`~vaegrid.db.ledger.LedgerMixin.optuna` on the same database. ``Store.reader``
(store.py: a :class:`~vaegrid.db.store.Reader`, which has no writing method) is the
read-only way in. Two ways in bypass it, each for its reason: the
compatibility check before a run (``sync.check_compatible``: a read-only engine of its
own, before a store may exist, since a refused run writes nothing, not even a ``-wal``
file) and the driver's advisory lock (``engine.pg_advisory_lock``: a connection of its
own, held for the whole sweep, that the server releases when the driver dies).

Concurrency on SQLite: WAL journal (readers never block the writer), a 60 s busy timeout,
and every write transaction opened with ``BEGIN IMMEDIATE`` (engine.py). A writer's
transaction holds one epoch's rows, the moves of one driver's decision (a rung's stops, a
Ctrl-C's interruptions), or one study sync (a whole grid's new rows, at most 10,000).
Reads take no write lock: ``Store.reader`` opens the file read-only and writes nothing,
so ``status`` and optuna-dashboard never block a sweep.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from vaegrid.db import schema
from vaegrid.db.engine import Database, reason
from vaegrid.errors import InputError
from vaegrid.safeio import refuse_link

optuna.logging.set_verbosity(optuna.logging.WARNING)


class StoreBase:
    """A connection to one study database (one process may hold one per database).

    ``Store(db)`` is a writer: it makes the tables of a new database or migrates an older
    one (schema.py). ``Store.reader(db)`` (a ``Reader``) writes nothing, takes no lock,
    and refuses a database that is not a vaegrid study.
    """

    def __init__(self, db: Database | Path, *, readonly: bool = False) -> None:
        db = db if isinstance(db, Database) else Database.sqlite(db)  # a SQLite file
        self.db = db
        self.path = str(db)  # where, for messages (never the password)
        self.readonly = readonly
        self._optuna: RDBStorage | None = None
        self._lock = threading.Lock()
        self._snapshot: Connection | None = None  # while snapshot() runs: every read uses it
        self._memo: dict[str, Any] = {}  # what a snapshot has read and checked once
        if db.path is not None:
            refuse_link(db.path)
        self.engine = db.engine(readonly)
        try:
            with self.engine.begin() as con:
                if readonly:
                    schema.check_readable(con, self.path)
                else:
                    schema.prepare(con, self.path)
        except SQLAlchemyError as e:
            self.engine.dispose()
            what = "read" if readonly else "write"
            raise InputError(
                f"{self.path}: cannot {what} the study database ({reason(e)})"
            ) from None
        except InputError:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()
        if self._optuna is not None:
            self._optuna.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed at the end of the block, rolled back on any error.
        Inside :meth:`snapshot`, a session of the snapshot's transaction (reads only)."""
        if self._snapshot is not None:
            with Session(bind=self._snapshot) as s:
                yield s
            return
        with Session(self.engine) as s, s.begin():
            yield s

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """Reads inside the block see one state of the database: one transaction
        (REPEATABLE READ on PostgreSQL, a read transaction on SQLite), so a sweep that
        commits an epoch meanwhile is seen whole or not at all, never its rows without its
        trial's progress. Nested calls share the outer one."""
        if self._snapshot is not None:
            yield self._snapshot
            return
        with self.engine.connect() as con:
            if con.dialect.name == "postgresql":
                con = con.execution_options(isolation_level="REPEATABLE READ")
            with con.begin():
                self._snapshot = con
                try:
                    yield con
                finally:
                    self._snapshot = None
                    self._memo.clear()
