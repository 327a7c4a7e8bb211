"""``run --cluster slurm`` on a real single-node Slurm (slurmctld, slurmd, munged) with the
study in a real PostgreSQL: jobs submitted, cancelled, timed out and replaced for real
(slow; started and torn down here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from servers import Slurm, have_postgres, slurm, slurm_missing
from test_cluster import (  # noqa: F401  (the module's fixtures: data, PostgreSQL, reference)
    STUDY,
    data,
    epochs_done,
    pg_url,
    reference,
    rows,
    runs,
    server,
    wait_until,
)

from vaegrid.db.engine import Database
from vaegrid.layout import StudyLayout
from vaegrid.run.jobqueue import IDLE_CHECKS, INTERVAL_S

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not have_postgres(), reason="needs PostgreSQL 15 (initdb, pg_ctl)"),
    pytest.mark.skipif(slurm_missing() is not None, reason=f"no Slurm: {slurm_missing()}"),
]

JOB = "vaegrid-cl"  # the study "cl"'s jobs
# What a worker job may take to leave the queue once the driver cancelled it: scancel is
# asynchronous (SIGTERM, then SIGKILL after KillWait = 5 s) plus a squeue poll.
GONE_S = 15.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Slurm]:
    try:
        with slurm() as s:
            yield s
    except RuntimeError as e:  # the packages are there, the daemons would not start
        pytest.skip(f"Slurm would not start: {e}")


def job_env(s: Slurm, **settings: str) -> dict[str, str]:
    """The driver's environment: Slurm's config and Dask's jobqueue.slurm.* settings."""
    env = {**s.env, "DASK_JOBQUEUE__SLURM__CORES": "1", "DASK_JOBQUEUE__SLURM__MEMORY": "3GB"}
    env.update({f"DASK_JOBQUEUE__SLURM__{k.upper()}": v for k, v in settings.items()})
    return env


def driver(
    tmp: Path, data: Path, url: str, env: dict[str, str], jobs: int, study: str = STUDY
) -> subprocess.Popen[str]:
    (tmp / "study.toml").write_text(study)
    cmd = [sys.executable, "-m", "vaegrid", "run", str(tmp / "study.toml"), "--results"]
    cmd += [str(tmp / "r"), "--data-dir", str(data), "--no-progress", "--storage", url]
    cmd += ["--cluster", "slurm", "--jobs", str(jobs)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def gone_within(s: Slurm, seconds: float) -> float:
    """Seconds until no job of the study is in the queue; fails past ``seconds``."""
    start = time.time()
    wait_until(lambda: not s.squeue(JOB), seconds)
    return time.time() - start


def job_logs(tmp: Path) -> str:
    folder = StudyLayout(tmp / "r" / "cl").jobs
    return "".join(p.read_text(errors="replace") for p in sorted(folder.glob("*.err")))


def test_slurm_jobs_and_postgres_give_the_local_rows_bit_for_bit_and_leave_no_job(
    data: Path, tmp_path: Path, pg_url: str, cluster: Slurm, reference: list[Any]
) -> None:
    p = driver(tmp_path, data, pg_url, job_env(cluster), jobs=2)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert out.splitlines()[0] == (
        f"cluster: slurm: up to 2 jobs named {JOB} (1 core, walltime 00:30:00), 1 trial each; "
        f"logs in {tmp_path / 'r' / 'cl' / 'jobs'}"
    )
    assert rows(Database.for_study(StudyLayout(tmp_path), pg_url)) == reference
    trials = optuna.load_study(study_name="cl", storage=pg_url).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 4
    gone_within(cluster, GONE_S)
    logs = sorted(p.name for p in StudyLayout(tmp_path / "r" / "cl").jobs.iterdir())
    assert logs and all(name.startswith(f"{JOB}-") for name in logs)
    assert {r["worker"] for r in runs(pg_url, tmp_path)} != set()


def test_a_job_cancelled_mid_trial_costs_only_its_epoch_and_a_new_job_takes_over(
    data: Path, tmp_path: Path, pg_url: str, cluster: Slurm, reference: list[Any]
) -> None:
    p = driver(tmp_path, data, pg_url, job_env(cluster), jobs=1)

    def half_way() -> bool:
        return epochs_done(pg_url, tmp_path) >= 2 and any(
            r["status"] == "running" for r in runs(pg_url, tmp_path)
        )

    wait_until(half_way)
    (victim,) = [r for r in runs(pg_url, tmp_path) if r["status"] == "running"]
    (job,) = cluster.squeue(JOB)
    cluster.scancel(job[0])  # preempted, or cancelled by an administrator
    _out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    again = [r for r in runs(pg_url, tmp_path) if r["key"] == victim["key"]]
    assert [r["status"] for r in again] == ["interrupted", "completed"]
    log = (tmp_path / "r" / "cl" / "trials" / victim["key"] / "log.txt").read_text().splitlines()
    assert [line.split()[1] for line in log] == [f"{e}/5" for e in range(1, 6)]  # continued
    assert rows(Database.for_study(StudyLayout(tmp_path), pg_url)) == reference
    gone_within(cluster, GONE_S)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_a_driver_interrupted_cancels_every_job_at_once(
    data: Path, tmp_path: Path, pg_url: str, cluster: Slurm, how: str
) -> None:
    p = driver(tmp_path, data, pg_url, job_env(cluster), jobs=2, study=long_study())
    wait_until(lambda: epochs_done(pg_url, tmp_path) >= 1 and len(cluster.squeue(JOB)) == 2)
    p.send_signal(getattr(signal, how))
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + getattr(signal, how), err
    gone_within(cluster, GONE_S)
    assert {r["status"] for r in runs(pg_url, tmp_path)} == {"interrupted"}


def long_study(epochs: int = 200) -> str:
    """The study with trials long enough to be running whenever the test acts."""
    return STUDY.replace("epochs = 5", f"epochs = {epochs}")


def test_a_killed_driver_leaves_no_job_beyond_the_death_timeout_and_the_rerun_finishes(
    data: Path, tmp_path: Path, pg_url: str, cluster: Slurm, reference: list[Any]
) -> None:
    env = job_env(cluster, death_timeout="20")
    p = driver(tmp_path, data, pg_url, env, jobs=2)
    wait_until(lambda: epochs_done(pg_url, tmp_path) >= 1 and len(cluster.squeue(JOB)) == 2)
    p.kill()  # kill -9: no chance to cancel anything
    p.wait()
    took = gone_within(cluster, 20 + GONE_S)
    print(f"jobs gone {took:.1f} s after the driver's kill -9 (death-timeout 20 s)")
    assert took > 5  # they were not cancelled: they ended themselves
    rerun = driver(tmp_path, data, pg_url, env, jobs=2)
    _out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert rows(Database.for_study(StudyLayout(tmp_path), pg_url)) == reference
    gone_within(cluster, GONE_S)
