"""The study database, as one object: :class:`Store`, assembled from its parts.

session.py       engines and the one session helper (every read and write)
schema.py        the tables and their schema version (migrations)
sync.py          is it this study's database; the grid's new trials
trials.py        a trial's moves (the only status writer), runs, epochs, test results
ledger.py        Optuna's ledger, following vaegrid's tables
coordination.py  the driver's heartbeat and the workers' leases (servers)
reader.py        every query, each row checked on its way in
engine.py        where the database is: URL, dialects, connections, the server lock
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from vaegrid.db.coordination import CoordinationMixin
from vaegrid.db.engine import Database, reason
from vaegrid.db.reader import ReaderMixin, TrialInfo
from vaegrid.db.sync import SyncMixin, check_compatible
from vaegrid.errors import InputError
from vaegrid.layout import StudyLayout


class Store(SyncMixin, CoordinationMixin, ReaderMixin):
    """Read and write one study database (see the parts above)."""

    check_compatible = staticmethod(check_compatible)

    @staticmethod
    def reader(db: Database | Path) -> Reader:
        """A read-only view of an existing study database (:class:`Reader`).

        Raises:
            InputError: missing, a link, unreachable, newer than this vaegrid, or not a
                vaegrid study database.
        """
        store = Reader(db)
        try:
            store.study_row()
        except (SQLAlchemyError, InputError) as e:
            store.close()
            why = e if isinstance(e, InputError) else reason(e)
            raise InputError(f"{store.path}: not a vaegrid study database ({why})") from None
        return store


class Reader(ReaderMixin):
    """A study database read, never written: it has the queries and no method that writes
    (a type, not a check at run time), opens its engine read-only, and migrates nothing."""

    def __init__(self, db: Database | Path) -> None:
        super().__init__(db, readonly=True)


def existing_db(layout: StudyLayout, storage: str | None = None) -> Database:
    """The database of an existing study: ``--storage``, else the folder's ``study.db``.

    Raises:
        InputError: a bad ``storage`` URL, or the study folder holds no study database.
    """
    db = Database.for_study(layout, storage)
    if db.path is not None and storage is not None and not db.path.is_file():
        raise InputError(f"--storage: {db.path} is not a study database file")
    if db.path is not None and not db.path.is_file():
        raise InputError(
            f"{layout.root}: not a vaegrid study folder (no {db.path.name}); "
            "expected RESULTS_DIR/STUDY"
        )
    return db


__all__ = ["Database", "Reader", "Store", "TrialInfo", "existing_db"]
