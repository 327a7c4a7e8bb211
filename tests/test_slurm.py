"""``run --cluster slurm`` on a real single-node Slurm (slurmctld, slurmd, munged) with the
study in a real PostgreSQL: jobs submitted, cancelled, timed out and replaced for real
(slow; started and torn down here)."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
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
    HALVING,
    STUDY,
    count,
    data,
    epochs_done,
    halving_reference,
    ledger,
    pg_url,
    reference,
    rows,
    runs,
    server,
    wait_until,
)

from vaegrid.cli import main
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


def gone_within(s: Slurm, seconds: float, name: str = JOB) -> float:
    """Seconds until no job of the study is in the queue; fails past ``seconds``."""
    start = time.time()
    wait_until(lambda: not s.squeue(name), seconds)
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
    print(f"jobs gone {took:.1f} s after the driver's kill -9")
    rerun = driver(tmp_path, data, pg_url, env, jobs=2)
    _out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert rows(Database.for_study(StudyLayout(tmp_path), pg_url)) == reference
    gone_within(cluster, GONE_S)


# 2 trials of 150 epochs, about 90 s each here: longer than a job that retires or is
# killed 45 to 90 s after it starts (a 1 min walltime), even on a CPU 1.5 times as fast,
# so that every such job cuts a trial short
WALLTIME_STUDY = long_study(150).replace("clip = [1.0, 0.5, 0.25, 0.125]", "clip = [1.0, 0.5]")


@pytest.fixture(scope="module")
def long_reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, ...]]:
    """The rows of the walltime study, from the local pool and SQLite."""
    tmp = tmp_path_factory.mktemp("longref")
    (tmp / "study.toml").write_text(WALLTIME_STUDY)
    argv = ["run", str(tmp / "study.toml"), "--results", str(tmp / "r"), "--data-dir", str(data)]
    assert main([*argv, "--devices", "cpu", "--no-progress", "--workers-per-device", "2"]) == 0
    return rows(Database.sqlite(tmp / "r" / "cl" / "study.db"))


def interrupted_then_completed(url: str, tmp: Path) -> list[dict[str, Any]]:
    """The runs of the trials that were cut short (by key, oldest first): each cut one or
    more times, then completed; each trial's log counts its epochs once, in order."""
    by_key: dict[str, list[str]] = {}
    for r in runs(url, tmp):
        by_key.setdefault(r["key"], []).append(r["status"])
    cut = {k: v for k, v in by_key.items() if v != ["completed"]}
    assert cut, by_key
    for key, statuses in cut.items():
        assert set(statuses[:-1]) == {"interrupted"} and statuses[-1] == "completed", by_key
        log = (tmp / "r" / "cl" / "trials" / key / "log.txt").read_text().splitlines()
        epochs = [line.split()[1] for line in log if "/150 " in line]
        assert epochs == [f"{e}/150" for e in range(1, 151)]  # none twice, none skipped
    return sorted((r for r in runs(url, tmp) if r["key"] in cut), key=lambda r: (r["key"], r["id"]))


def test_a_job_killed_at_its_time_limit_is_replaced_and_its_trial_continues(
    data: Path, tmp_path: Path, pg_url: str, cluster: Slurm, long_reference: list[Any]
) -> None:
    # a lifetime longer than the walltime: Slurm itself kills the job at its limit
    env = job_env(cluster, walltime="00:01:00", worker_extra_args='["--lifetime", "1h"]')
    p = driver(tmp_path, data, pg_url, env, jobs=1, study=WALLTIME_STUDY)
    _out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err
    assert "DUE TO TIME LIMIT" in job_logs(tmp_path)
    interrupted_then_completed(pg_url, tmp_path)
    assert rows(Database.for_study(StudyLayout(tmp_path), pg_url)) == long_reference
    gone_within(cluster, GONE_S)


def test_a_worker_retires_before_its_walltime_and_its_trial_continues_at_once(
    data: Path, tmp_path: Path, pg_url: str, cluster: Slurm, long_reference: list[Any]
) -> None:
    # vaegrid sets Dask's --lifetime from the walltime: retired between 45 and 55 s
    env = job_env(cluster, walltime="00:01:00")
    p = driver(tmp_path, data, pg_url, env, jobs=1, study=WALLTIME_STUDY)
    _out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err
    logs = job_logs(tmp_path)
    assert "TIME LIMIT" not in logs and "lifetime" in logs
    cut = interrupted_then_completed(pg_url, tmp_path)  # each job retired once
    # their leases were released, not left to lapse (45 s): the next job took over at once
    for stopped, resumed in itertools.pairwise(cut):
        if stopped["key"] == resumed["key"]:
            assert resumed["started"] - stopped["ended"] < 30, (stopped, resumed)
    assert rows(Database.for_study(StudyLayout(tmp_path), pg_url)) == long_reference
    gone_within(cluster, GONE_S)


def test_a_refused_first_job_is_one_line_and_leaves_nothing_queued_or_written(
    data: Path, tmp_path: Path, pg_url: str, cluster: Slurm
) -> None:
    p = driver(tmp_path, data, pg_url, job_env(cluster, queue="nonesuch"), jobs=2)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and out == "", out + err
    assert err.strip() == (
        "vaegrid: error: --cluster slurm: `sbatch` refused the first job: "
        "sbatch: error: invalid partition specified: nonesuch"
    )
    assert cluster.squeue() == [] and not (tmp_path / "r").exists()


def test_a_halving_study_keeps_no_job_idle_through_a_rung_wait(
    data: Path, tmp_path: Path, pg_url: str, cluster: Slurm
) -> None:
    want = halving_reference(data, tmp_path)
    db = Database.for_study(StudyLayout(tmp_path), pg_url)

    def running_trials() -> int:
        return count(db, lambda store: sum(r["status"] == "running" for r in store.runs()))

    p = driver(tmp_path, data, pg_url, job_env(cluster), jobs=2, study=HALVING)
    samples = []  # (time, running jobs of the study, running trials): one trial a job
    while p.poll() is None:
        jobs = sum(state == "RUNNING" for _, _, state in cluster.squeue("vaegrid-clh"))
        samples.append((time.time(), jobs, running_trials()))
        time.sleep(0.5)
    assert p.returncode == 0, p.communicate()[1]
    assert ledger(db, "clh") == want
    idle, longest, since = 0.0, 0.0, None
    for (t, jobs, trials), (t_next, _, _) in itertools.pairwise(samples):
        if jobs > trials:
            since = t if since is None else since
            idle += t_next - t
            longest = max(longest, t_next - since)
        else:
            since = None
    # a job without a trial: starting up (torch, Dask), or idle until the adaptive loop
    # has seen it idle IDLE_CHECKS times and cancelled it
    bound = INTERVAL_S * (IDLE_CHECKS + 1) + 10
    span = samples[-1][0] - samples[0][0]
    print(f"halving on Slurm: {span:.0f} s, job-seconds without a trial {idle:.1f}, "
          f"longest stretch {longest:.1f} s (bound {bound:.0f} s)")  # fmt: skip
    assert longest <= bound
    gone_within(cluster, GONE_S, name="vaegrid-clh")


def test_the_driver_as_a_batch_job_resubmits_itself_at_its_walltime_and_finishes(
    data: Path, tmp_path: Path, pg_url: str, cluster: Slurm, long_reference: list[Any]
) -> None:
    script = Path(__file__).parents[1] / "vaegrid" / "run" / "driver.sbatch"
    (tmp_path / "study.toml").write_text(WALLTIME_STUDY)
    env = job_env(cluster, death_timeout="20")
    env["VAEGRID"] = str(Path(sys.executable).parent / "vaegrid")
    args = [str(tmp_path / "study.toml"), "--results", str(tmp_path / "r"), "--data-dir"]
    args += [str(data), "--storage", pg_url, "--jobs", "1"]
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--chdir", str(tmp_path), "--time", "10", str(script), *args],
        env=env, check=True, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    first = submitted.stdout.strip().split(";")[0]
    wait_until(lambda: epochs_done(pg_url, tmp_path) >= 3, 300)
    # what Slurm does at --signal=B:USR1@300, 5 minutes before the driver's walltime
    cluster.scancel("--signal=USR1", "--batch", first)
    wait_until(lambda: not cluster.squeue("vaegrid-driver"), 600)
    logs = sorted(tmp_path.glob("vaegrid-driver-*.out"))
    assert len(logs) == 2, [p.read_text() for p in logs]
    said = [p.read_text() for p in logs]
    assert "vaegrid run exited with 143" in said[0] and "resubmitting" in said[0], said[0]
    assert "vaegrid run exited with 0" in said[1], said[1]
    assert "resubmitting" not in said[1]
    assert rows(Database.for_study(StudyLayout(tmp_path), pg_url)) == long_reference
    assert cluster.squeue() == []


def test_jobs_that_die_before_their_worker_starts_end_the_sweep_in_one_line(
    data: Path, tmp_path: Path, pg_url: str, cluster: Slurm
) -> None:
    # a broken job environment: every job exits before its Dask worker starts
    env = job_env(cluster, job_script_prologue='["echo no such environment >&2", "exit 1"]')
    p = driver(tmp_path, data, pg_url, env, jobs=2)
    started = time.time()
    _out, err = p.communicate(timeout=300)
    took = time.time() - started
    assert p.returncode == 3, err
    line = err.strip().splitlines()[-1]
    found = re.search(r"(\d+) jobs in a row ended before their Dask worker started", line)
    assert found and int(found[1]) >= 5, err
    log = Path(line.split("output: ")[1].split(")")[0])
    assert "no such environment" in log.read_text()
    assert "then run the same command again" in line and "once it is back" not in line
    print(f"a sweep whose jobs die at once ended after {took:.0f} s")
    gone_within(cluster, GONE_S)


def _job_workers(name: str) -> list[int]:
    """The Dask worker processes (each its nanny's child) of the jobs named ``name``:
    found by the job name Slurm puts in their environment, so other tests' workers are
    left alone."""
    procs = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
            status = (proc / "status").read_text()
        except OSError:
            continue
        if f"SLURM_JOB_NAME={name}".encode() in environ:
            parent = int(re.search(r"^PPid:\s*(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
            procs[int(proc.name)] = (parent, cmdline)
    nannies = {pid for pid, (_, cmd) in procs.items() if b"dask_worker" in cmd}
    return [pid for pid, (parent, cmd) in procs.items()
            if parent in nannies and b"spawn_main" in cmd]  # fmt: skip


def _terminate_connections(url: str) -> int:
    """pg_terminate_backend on every other connection to ``url``'s database: dropped
    connections, as a failover or an idle-session killer drops them."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        found = c.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(found[0]) if found else 0


def test_chaos_on_slurm_and_postgres_ends_with_a_local_runs_rows_bit_for_bit(
    data: Path, tmp_path: Path, pg_url: str, cluster: Slurm
) -> None:
    """A halving study on Slurm + PostgreSQL under seeded random faults at random moments:
    a worker killed, a job scancel'ed, the driver kill -9'ed (and started again), the
    server restarted, every connection dropped. Its rows, stops and Optuna trials are an
    undisturbed local run's."""
    import random

    from servers import pg_ctl

    (tmp_path / "ref").mkdir()
    want = halving_reference(data, tmp_path / "ref")
    env = job_env(cluster, death_timeout="20")
    db = Database.for_study(StudyLayout(tmp_path), pg_url)
    rng = random.Random(25)
    faults = ["worker", "scancel", "driver", "restart", "connections"]
    done: list[str] = []
    p = driver(tmp_path, data, pg_url, env, jobs=2, study=HALVING)

    def epochs() -> int:
        try:
            return count(db, lambda s: len(s.frame("vg_epoch")))
        except Exception:  # the server is down
            return -1

    for fault in rng.sample(faults, len(faults)):  # each once, in a seeded order
        # trials are committing epochs (about one a second): a fault now lands on them
        seen = epochs()
        wait_until(lambda p=p, seen=seen: epochs() > seen or p.poll() is not None, 180)
        time.sleep(rng.uniform(0.5, 2.0))
        if p.poll() is not None:  # the sweep ended: it must have ended well
            assert p.returncode == 0, f"after {done}: " + "".join(p.communicate())
            break
        if fault == "worker":  # a worker process dies (its nanny starts another)
            for pid in _job_workers("vaegrid-clh"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        elif fault == "scancel":  # a job preempted (or cancelled by an administrator)
            wait_until(lambda: bool(cluster.squeue("vaegrid-clh")), 60)
            cluster.scancel(rng.choice(cluster.squeue("vaegrid-clh"))[0])
        elif fault == "driver":
            p.kill()
            p.wait()
            p = driver(tmp_path, data, pg_url, env, jobs=2, study=HALVING)
        elif fault == "restart":  # down for a few seconds: epochs commit every second
            pg_ctl(pg_url, "stop")
            time.sleep(rng.uniform(2.0, 5.0))
            pg_ctl(pg_url, "start")
        elif fault == "connections":  # for 3 s: connections live only while a transaction
            until = time.time() + 3  # does (NullPool), so keep cutting until some are hit
            while time.time() < until:
                _terminate_connections(pg_url)
                time.sleep(0.02)
        done.append(fault)
    print(f"chaos (seed 25): {', '.join(done)}")
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, out + err  # the last driver ends the sweep on its own
    assert sorted(done) == sorted(faults), done  # every fault came while the sweep ran
    assert ledger(db, "clh") == want
    gone_within(cluster, 20 + GONE_S, name="vaegrid-clh")
