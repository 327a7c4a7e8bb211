"""The studies a results folder or a database holds: ``vaegrid ls`` and ``vaegrid rm``.

``ls`` reads each study's database read-only (as ``status`` does: nothing written, no
lock taken). ``rm`` takes the study's driver lock first (as ``run`` does), so it is
refused while a driver runs and no driver starts while it deletes; then it removes the
study's folder and, on a server, its rows: vaegrid's tables and Optuna's study.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from vaegrid.db.engine import Database
from vaegrid.errors import InputError
from vaegrid.layout import DB_NAME, TABLES, StudyLayout, database_lock
from vaegrid.safeio import check_results_dir, check_study_dir
from vaegrid.status import summary

# ls lists at most this many studies of a folder (a folder of more is no results folder).
LS_MAX = 10_000


@dataclass(frozen=True)
class Listed:
    """One study as ``ls`` shows it."""

    name: str
    where: str  # its folder, or the database URL
    line: str  # the progress summary, as status says it
    driver: str  # "running (pid N)" or "idle"
    last: float | None  # unix time of its last run's start or end; None: never ran

    def words(self, now: float) -> str:
        when = "never ran" if self.last is None else f"last activity {_ago(now - self.last)}"
        return f"{self.name}: {self.line}; {self.driver}; {when}  [{self.where}]"


def list_studies(results: Path | None, storage: str | None) -> list[Listed]:
    """Every study of ``results`` (each subfolder holding a study.db), or the study of the
    ``storage`` database, oldest activity last.

    Raises:
        InputError: ``results`` is not a folder, or ``storage`` holds no vaegrid study.
    """
    if storage is not None:
        db = Database.for_study(StudyLayout(Path(".")), storage)
        return [_listed(db, None, str(db))]  # (a URL without its password)
    assert results is not None
    check_results_dir(results, "the results folder")
    if not results.is_dir():
        raise InputError(f"{results}: is not a folder; expected a results folder such as results/")
    out = []
    folders = sorted(p for p in results.iterdir() if p.is_dir() and not p.is_symlink())
    for folder in folders[:LS_MAX]:
        if (folder / DB_NAME).is_file() and not (folder / DB_NAME).is_symlink():
            layout = StudyLayout(folder)
            try:
                out.append(_listed(Database.sqlite(layout.db), layout, str(folder)))
            except InputError as e:  # a damaged or foreign one: said, not fatal to the list
                out.append(Listed(folder.name, str(folder), f"unreadable ({e})", "-", None))
    return sorted(out, key=lambda s: -(s.last or 0.0))


def _listed(db: Database, layout: StudyLayout | None, where: str) -> Listed:
    from vaegrid.db.store import Store
    from vaegrid.run.progress import live_counts

    store = Store.reader(db)
    try:
        name, _ = store.study_row()
        trials = store.trials()
        runs = store.runs()
        pid, counts = live_counts(db, layout, store, trials)
    finally:
        store.close()
    times = [t for r in runs for t in (r.get("started"), r.get("ended")) if t is not None]
    driver = f"driver running (pid {pid})" if pid is not None else "no driver"
    return Listed(name, where, summary(counts, len(trials)), driver, max(times, default=None))


def remove_study(layout: StudyLayout, storage: str | None, confirm: Callable[[str], bool]) -> str:
    """Delete a study: its folder, and on a server its rows; what was removed, in words.

    ``confirm`` is asked (with what would go) after every check and under the driver lock;
    nothing is deleted unless it says yes.

    Raises:
        InputError: no such study, a driver is running it, or it was not confirmed.
    """
    from vaegrid.db.store import Store, existing_db
    from vaegrid.run.locks import driver_lock

    check_study_dir(layout.root.parent, layout.root, "the study folder's parent")
    db = existing_db(layout, storage)
    reader = Store.reader(db)
    try:
        name, _ = reader.study_row()
        n_trials = len(reader.trials())
    finally:
        reader.close()
    if layout.root.resolve().name != name:  # never a folder that is not this study's
        raise InputError(
            f"{layout.root}: not the folder of study {name!r} that {db} holds; expected "
            f"RESULTS_DIR/{name}"
        )
    foreign = sorted(_foreign(layout))
    if foreign:
        raise InputError(
            f"{layout.root}: holds {foreign[0]!r}, which vaegrid never writes; not removed "
            "(move what is yours out first)"
        )
    own_file = db.path is not None and db.path.resolve() == layout.db.resolve()
    with driver_lock(db, layout, name):
        size = sum(p.stat().st_size for p in layout.root.rglob("*") if p.is_file())
        what = f"study {name}: {n_trials} trials, the folder {layout.root} ({size / 1e6:,.1f} MB)"
        if not own_file:
            what += f" and its rows in {db}"
        if not confirm(what):
            raise InputError(f"{layout.root}: not removed (not confirmed)")
        if not own_file:  # a server's, or a SQLite file elsewhere: the rows go
            _delete_rows(db, name)
        if layout.root.exists():
            shutil.rmtree(layout.root)
    return f"removed {what}"


def _foreign(layout: StudyLayout) -> set[str]:
    """What the study folder holds that vaegrid does not write there."""
    if not layout.root.is_dir():
        return set()
    own = {
        DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", layout.driver_lock.name,
        database_lock(layout.db).name, layout.driver_token.name, layout.trials.name,
        layout.jobs.name, layout.figures.name, layout.report.name,
        *(layout.table(n).name for n in TABLES), layout.tensorboard.name,
        layout.mlflow_db.name, layout.mlflow_artifacts.name,
    }  # fmt: skip
    return {p.name for p in layout.root.iterdir()} - own


def _delete_rows(db: Database, name: str) -> None:
    """A server database's study: vaegrid's rows (children first) and Optuna's study."""
    import optuna
    from sqlalchemy import delete

    from vaegrid.db.schema import Base, MetaRow
    from vaegrid.db.store import Store

    store = Store(db)
    try:
        with store.session() as s:
            for table in reversed(Base.metadata.sorted_tables):
                if table.name != MetaRow.__tablename__:  # the schema version stays
                    s.execute(delete(table))
        with suppress(KeyError):  # Optuna's study was never made (a run killed at its start)
            optuna.delete_study(study_name=name, storage=store.optuna)
    finally:
        store.close()


def _ago(seconds: float) -> str:
    from vaegrid.cost import duration

    return "just now" if seconds < 5 else f"{duration(seconds)} ago"
