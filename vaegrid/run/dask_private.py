"""The private parts of Dask that vaegrid uses, all here, each with its reason. Read from
distributed 2026.8.0 and dask-jobqueue 0.9.0 (the versions in requirements.lock);
tests/test_jobqueue.py checks that they are still there, so an upgrade that moves one
fails a test, not a sweep.

- ``SpecCluster._correct_state()``: the coroutine that submits the jobs of the cluster's
  plan. Its public ``scale`` only schedules it and logs a refused submission; vaegrid
  awaits it, so that a refused ``sbatch`` is seen (a wrong partition: one line, exit 2).
- ``SpecCluster._created``: the jobs it made. A job whose submission failed must leave it,
  or closing the cluster waits for a job that never existed.
- ``JobQueueCluster._dummy_job``: the job template the settings made (cores, log folder):
  how many trial slots a job has, and where its logs are, as the scheduler was told.
"""

from __future__ import annotations

from typing import Any

VERSIONS = {"distributed": "2026.8.0", "dask-jobqueue": "0.9.0"}


async def submit_plan(cluster: Any) -> None:
    """Submit the jobs the cluster's plan lacks, and wait for the submissions."""
    await cluster._correct_state()


def forget_job(cluster: Any, job: Any) -> None:
    """The cluster no longer counts ``job`` among those it made."""
    cluster._created.discard(job)


def job_template(cluster: Any) -> Any:
    """The job the cluster's settings describe (``worker_cores``, ``log_directory``...)."""
    return cluster._dummy_job
