"""A driver's first words with its database: is it this study's, and what does its grid add.

A database belongs to one study: its name and its fixed settings (the fingerprint). Only
the grid may change between runs; a database made with other fixed settings is refused
before anything is written, and again under the driver's lock.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import optuna
from sqlalchemy import inspect, select
from sqlalchemy.exc import SQLAlchemyError

from vaegrid.db import schema
from vaegrid.db.engine import Database, insert_if_absent, reason
from vaegrid.db.ledger import METRIC_NAME
from vaegrid.db.schema import StudyRow, TrialRow
from vaegrid.db.trials import TrialsMixin
from vaegrid.errors import InputError
from vaegrid.safeio import refuse_link
from vaegrid.status import PENDING
from vaegrid.study.core import Study, TrialConfig
from vaegrid.study.fingerprint import Fingerprint


def check_compatible(db: Database, study: Study) -> None:
    """Refuse, without writing, a database made by a study with other fixed settings, or by
    a newer vaegrid. An empty database (a new server database, or a first run killed
    before its tables were made) is compatible.

    Raises:
        InputError: unreachable, not a vaegrid study database, newer, or its fixed
            settings differ.
    """
    if db.path is not None:
        refuse_link(db.path)
        if not db.path.exists():
            return
        if not db.path.is_file():
            raise InputError(f"{db.path}: is not a file; expected a vaegrid study database")
    engine = db.engine(readonly=True)
    try:
        with engine.connect() as con:
            found = schema.version(con, str(db))
            if found is None:
                seen = inspect(con)
                foreign = bool(seen.get_table_names() or seen.get_view_names())
                if con.dialect.name == "sqlite":  # a file another tool versioned
                    foreign = foreign or bool(con.exec_driver_sql("PRAGMA user_version").scalar())
                if foreign:  # another tool's database
                    raise InputError(f"{db}: not a vaegrid study database (no vg_study table)")
                return
            schema.check_readable(con, str(db))
            row = con.execute(select(StudyRow.name, StudyRow.fingerprint)).first()
    except SQLAlchemyError as e:
        raise InputError(f"{db}: cannot read the study database ({reason(e)})") from None
    finally:
        engine.dispose()
    if row is not None:
        _refuse_mismatch(str(db), row[0], row[1], study)
    if row is not None and found == schema.SCHEMA_VERSION:  # an older one migrates first
        _check_rows(db)


def _check_rows(db: Database) -> None:
    """Every row read and checked once, as ``report`` reads them: a sweep never resumes
    (nor says "nothing to do") on a database that ``report`` would refuse."""
    from vaegrid.db.reader import CHECKED
    from vaegrid.db.store import Store

    reader = Store.reader(db)
    try:
        with reader.snapshot():
            for table in CHECKED:
                reader.frame(table)
    finally:
        reader.close()


class SyncMixin(TrialsMixin):
    def sync_study(self, study: Study, trials: Sequence[TrialConfig], slots: int) -> None:
        """Record the study, add the grid's new trials as pending (existing keys are kept),
        close what a dead driver left running, and bring Optuna's ledger in line.

        Raises:
            InputError: the stored study has other fixed settings, or the database is not
                writable (read-only file or folder, full disk).
        """
        try:
            self._sync(study, trials, slots)
        except SQLAlchemyError as e:
            raise InputError(
                f"{self.path}: cannot write the study database ({reason(e)})"
            ) from None

    def _sync(self, study: Study, trials: Sequence[TrialConfig], slots: int) -> None:
        with self.session() as s:
            stored = s.scalars(select(StudyRow)).first()
            if stored is not None:  # checked before the lock too; now under it
                _refuse_mismatch(self.path, stored.name, stored.fingerprint, study)
            row = s.get(StudyRow, study.name)
            if row is None:
                fingerprint = Fingerprint.of(study).text()
                s.add(StudyRow(name=study.name, fingerprint=fingerprint, source=study.source,
                               slots=slots, description=study.description))  # fmt: skip
            else:
                row.source, row.slots = study.source, slots
                row.description = study.description
            new = [
                {"key": c.key, "config": c.to_json(), "status": PENDING.value,
                 "epochs_done": 0, "seconds": 0.0}
                for c in trials
            ]  # fmt: skip
            insert_if_absent(s, TrialRow, new)  # existing keys keep their rows
        self.interrupt_running()
        created = optuna.create_study(
            storage=self.optuna, study_name=study.name, direction="minimize", load_if_exists=True
        )
        if created.metric_names != [METRIC_NAME]:
            with warnings.catch_warnings():  # "experimental": the API, not our use of it
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                created.set_metric_names([METRIC_NAME])
        self.align_optuna()  # a grown grid's new choices: every trial's categoricals rewritten
        self.reconcile_optuna(study.name)


def _refuse_mismatch(path: str, name: str, fingerprint: str, study: Study) -> None:
    """Raise InputError if the stored study (name, fingerprint JSON) is not ``study``'s."""
    stored = Fingerprint.read(fingerprint, path)
    diffs = [f"name: stored {name!r}, study file {study.name!r}"] if name != study.name else []
    diffs += stored.differences(study)
    if diffs:
        raise InputError(
            f"{path} was made by a study with other fixed settings ({'; '.join(diffs)}); "
            "only the grid may change between runs: use another --results folder or "
            "study name for the new settings"
        )
