"""The sweep driver's entry: check, lock, start the executor, reconcile the study with its
database, then sweep (sweep.py).

Every check that can refuse a run comes before anything is written: the study folder, the
database's location and fixed settings, the data. Then one driver per study (locks.py), a
cluster started only once the run is sure to go ahead, the database brought in line with
the study file's grid, and a heartbeat while the sweep runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from vaegrid import signals
from vaegrid.db.engine import Database, reason
from vaegrid.db.store import Store
from vaegrid.errors import InputError
from vaegrid.faults import FAULT_WAIT_S
from vaegrid.layout import StudyLayout
from vaegrid.run.locks import driver_lock, file_lock, heartbeat
from vaegrid.run.pool import (
    MAX_WORKER_DEATHS,
    Executor,
    LocalExecutor,
    Pool,
    Watch,
)
from vaegrid.run.sweep import Sweep
from vaegrid.run.worker import init_worker
from vaegrid.safeio import check_study_dir, write_atomic
from vaegrid.study.core import Probed, Study, expand
from vaegrid.study.datasets import BUILTIN as BUILTIN_DATASETS
from vaegrid.train.data import ensure_mnist


def run_study(
    study: Study,
    results: Path,
    pool: Pool | None,
    data_root: Path,
    retry_failed: bool = False,
    progress: bool = True,
    max_deaths: int = MAX_WORKER_DEATHS,
    executor: Executor | Callable[[], tuple[Executor, Pool]] | None = None,
    storage: str | None = None,
    fault_wait: float = FAULT_WAIT_S,
    probed: Probed | None = None,
) -> int:
    """Sweep ``study`` to its end, resuming whatever its database and folder already hold.

    Args:
        pool: The slots of the local pool or of ``executor`` (``None`` when ``executor``
            is started here: its own pool).
        executor: Where trials run; default a :class:`LocalExecutor` over ``pool``. A
            callable starts one, and gives its pool, once every check has passed and the
            study is locked (batch jobs cost an allocation: none is submitted for a run
            that is refused); it is closed when the run ends, however it ends.
        storage: The database URL; default ``sqlite:///<results>/<study>/study.db``.
        fault_wait: Seconds a fault of the world (faults.py: the database unreachable, a
            full disk) is waited out before the sweep stops with exit 3.
        probed: What the caller's probe found of the study's plug-ins (train/probe.py);
            probed here when not given.

    Returns:
        0 when every trial completed or diverged; 1 when any failed (tracebacks in the
        database) or waits for a kind of device the pool lacks; 3 when the cluster's
        scheduler went away, or a fault of the world outlasted ``fault_wait``; 130 when
        stopped by Ctrl-C or SIGTERM (running trials keep their last finished epoch).

    Raises:
        InputError: missing or corrupt data, a results or study folder that is not a plain
            folder (a file, a link, on /proc...), a bad or unreachable database, a live
            driver on the study, an unwritable database, or one made by a study with other
            fixed settings or a newer vaegrid. Nothing is written then.
    """
    layout, db, study, probed = _checked(study, results, data_root, storage, probed)
    grid = expand(study)
    token = uuid.uuid4().hex
    with signals.handled(), driver_lock(db, layout, study.name), ExitStack() as started:
        if callable(executor):  # a cluster started now, closed whatever happens
            executor, pool = executor()
            started.callback(executor.shutdown, True)
        assert pool is not None
        store = Store(db)
        try:
            lock = file_lock(db)
            lock.__enter__()
        except InputError:
            store.close()
            raise
        executor = executor or LocalExecutor(pool, initializer=init_worker)
        beating = executor.watch == Watch.HEARTBEAT or not db.is_sqlite
        try:
            store.sync_study(study, grid, pool.slots)
            write_atomic(layout.driver_token, token + "\n")  # proof a worker sees it
            with heartbeat(store, study.name, token, beating):
                sweep = Sweep(study, probed, grid, layout, store, pool, data_root, executor,
                              token, fault_wait)  # fmt: skip
                return sweep.run(retry_failed, progress, max_deaths)
        except SQLAlchemyError as e:
            print(
                f"vaegrid: the study database failed ({reason(e)}); what was committed is "
                "kept: run the same command again to continue"
            )
            return 1
        finally:
            lock.__exit__(None, None, None)
            store.close()


def _checked(
    study: Study, results: Path, data_root: Path, storage: str | None, probed: Probed | None
) -> tuple[StudyLayout, Database, Study, Probed]:
    """Every check before the study is locked, none of which writes: the study folder, the
    database's location and compatibility, the data (plug-ins probed when the caller has
    not: the study with its data set's digest, and what the probe found)."""
    layout = StudyLayout.of(results, study.name)
    check_study_dir(results, layout.root)
    db = Database.for_study(layout, storage)
    db.check_location()
    if study.data.dataset in BUILTIN_DATASETS:
        ensure_mnist(data_root, study.data)
    if probed is None:  # plug-ins not probed by the caller yet
        from vaegrid.train.probe import check_plugins

        study, probed = check_plugins(study, data_root)
    Store.check_compatible(db, study)
    return layout, db, study, probed


__all__ = ["run_study"]
