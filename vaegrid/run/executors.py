"""Where a sweep's trials run, chosen once from ``run``'s options: the one factory of
executors (pool.py's contract), so the CLI and the API start them alike.

- no ``--cluster``: this machine's devices, a single-worker process per slot (pool.py);
- ``--cluster tcp://HOST:PORT``: a Dask scheduler's workers, which are the user's
  (cluster.py);
- ``--cluster slurm|pbs|sge|lsf|htcondor|oar``: batch jobs vaegrid submits (jobqueue.py),
  started only once the study is checked and locked (a job costs an allocation: none is
  submitted for a run that is refused), so what is returned then is a starter.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vaegrid.errors import InputError
from vaegrid.run.pool import Executor, Pool, make_pool

Starter = Callable[[], tuple[Executor, Pool]]


@dataclass(frozen=True)
class Where:
    """``run``'s options on where trials run."""

    cluster: str | None = None  # None: this machine
    jobs: int | None = None  # batch jobs at most (a batch scheduler only)
    resource: str = "vaegrid"  # the Dask resource a trial takes one unit of
    devices: str = "auto"
    workers_per_device: int | None = None


def choose(
    where: Where, results: Path, study: str, trial_mb: int, say: Callable[[str], None]
) -> tuple[Executor | Starter | None, Pool | None]:
    """The executor (or, for batch jobs, its starter) and its pool for ``where``; None for
    the local executor, which ``run_study`` makes over the pool. ``say`` tells the user
    what was found (for batch jobs, once they start).

    Raises:
        InputError: an option that is not allowed, no device, a scheduler that cannot be
            reached or whose workers offer no slot.
    """
    from vaegrid.run.batch import DEFAULT_JOBS, MAX_JOBS, is_scheduler

    batch = where.cluster is not None and is_scheduler(where.cluster)
    if where.jobs is not None and not batch:
        raise InputError(
            "--jobs: only with --cluster slurm, pbs, sge, lsf, htcondor or oar (vaegrid "
            "submits those jobs; a Dask scheduler's workers are yours)"
        )
    if batch:
        assert where.cluster is not None
        scheduler, jobs = where.cluster, DEFAULT_JOBS if where.jobs is None else where.jobs
        if not 1 <= jobs <= MAX_JOBS:
            raise InputError(f"--jobs: {jobs} is not allowed; expected an integer 1 to {MAX_JOBS}")

        def start() -> tuple[Executor, Pool]:  # by run_study, once the study is locked
            from vaegrid.run.jobqueue import JobQueueExecutor

            started = JobQueueExecutor(scheduler, results, study, jobs, trial_mb=trial_mb)
            pool = started.pool()
            say(f"cluster: {pool.found}")
            return started, pool

        return start, None
    if where.cluster is not None:  # '' is no address, never "run locally"
        from vaegrid.run.cluster import DaskExecutor

        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", where.resource):
            raise InputError(
                f"--resource: {where.resource[:100]!r} is not allowed; expected a Dask "
                "resource name (letters, digits, '_', '-', '.')"
            )
        executor = DaskExecutor(where.cluster, where.resource)
        try:
            pool = executor.pool()
        except BaseException:
            executor.close()
            raise
        say(f"cluster: {pool.found}")
        return executor, pool
    pool = make_pool(where.devices, where.workers_per_device, trial_mb=trial_mb)
    say(f"devices: {pool.found}; {pool.per_device} trials at once per device")
    return None, pool
