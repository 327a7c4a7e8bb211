"""The same sweep on a Dask cluster with the study in PostgreSQL: real servers, as
separate processes on 127.0.0.1 (slow; started and torn down here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from conftest import epoch_rows, make_mnist
from servers import DaskCluster, dask_cluster, have_postgres, postgres

from vaegrid.cli import main
from vaegrid.db.engine import Database
from vaegrid.db.store import Store
from vaegrid.layout import StudyLayout

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not have_postgres(), reason="needs PostgreSQL 15 (initdb, pg_ctl)"),
]

STUDY = """
name = "cl"
[data]
fractions = [0.8, 0.1, 0.1]
[train]
epochs = 5
batch_size = 50
[grid]
hidden = [256]
latent = [16]
lr = [1e-3]
clip = [1.0, 0.5, 0.25, 0.125]
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mnist(tmp_path_factory.mktemp("cldata"), n_train=5000, n_test=1000)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with postgres() as url:
        yield url


@pytest.fixture
def pg_url(server: str) -> str:
    """A fresh, empty database on the module's server."""
    import psycopg

    name = "t" + uuid.uuid4().hex[:10]
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def cluster() -> Iterator[DaskCluster]:
    with dask_cluster() as c:
        yield c


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, ...]]:
    """The study's per-epoch rows from the local pool and SQLite."""
    tmp = tmp_path_factory.mktemp("ref")
    (tmp / "study.toml").write_text(STUDY)
    argv = ["run", str(tmp / "study.toml"), "--results", str(tmp / "r"), "--data-dir", str(data)]
    assert main([*argv, "--devices", "cpu", "--no-progress", "--workers-per-device", "2"]) == 0
    return rows(Database.sqlite(tmp / "r" / "cl" / "study.db"))


rows = epoch_rows


def runs(url: str, tmp: Path) -> list[dict[str, Any]]:
    store = Store.reader(Database.for_study(StudyLayout(tmp), url))
    try:
        return store.runs()
    finally:
        store.close()


def driver(study: Path, results: Path, data: Path, url: str, address: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "vaegrid", "run", str(study), "--results", str(results)]
    cmd += ["--data-dir", str(data), "--no-progress", "--storage", url, "--cluster", address]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(what: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not what():
        assert time.time() < deadline, "timed out"
        time.sleep(0.3)


def epochs_done(url: str, tmp: Path) -> int:
    try:
        store = Store.reader(Database.for_study(StudyLayout(tmp), url))
    except Exception:
        return 0
    try:
        epochs = store.frame("vg_epoch")["epoch"]
        return int(epochs.max()) if len(epochs) else 0
    finally:
        store.close()


def test_dask_and_postgres_give_the_local_rows_bit_for_bit_and_optuna_reads_them(
    data: Path, tmp_path: Path, pg_url: str, cluster: DaskCluster, reference: list[Any]
) -> None:
    cluster.add_worker("vaegrid=2", nthreads=3)  # more threads than slots: the resource bounds
    cluster.add_worker("vaegrid=1", nthreads=2)
    cluster.wait_for(2)
    (tmp_path / "study.toml").write_text(STUDY)
    p = driver(tmp_path / "study.toml", tmp_path / "r", data, pg_url, cluster.address)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert out.splitlines()[0].endswith("2 workers, 2 of them offer 3 'vaegrid' slots")
    assert rows(Database.for_study(StudyLayout(tmp_path), pg_url)) == reference
    # 4 trials on 3 slots, one sent ahead (cluster.AHEAD_PER): Dask ran at most 3 at once
    spans = [(r["started"], r["ended"]) for r in runs(pg_url, tmp_path)]
    assert len(spans) == 4 and max(sum(s <= t < e for s, e in spans) for t, _ in spans) == 3
    trials = optuna.load_study(study_name="cl", storage=pg_url).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 4
    assert all(len(t.intermediate_values) == 5 for t in trials)
    assert main(["status", str(tmp_path / "r" / "cl"), "--storage", pg_url]) == 0
    report = ["report", str(tmp_path / "r" / "cl"), "--storage", pg_url, "--data-dir", str(data)]
    assert main([*report, "--nll-samples", "10"]) == 0  # test results go to PostgreSQL too
    assert (tmp_path / "r" / "cl" / "report.md").exists()
    store = Store.reader(Database.for_study(StudyLayout(tmp_path), pg_url))
    try:  # every winner's test result is in PostgreSQL
        tested = set(store.frame("vg_test")["key"])
    finally:
        store.close()
    assert tested == set(pd.read_csv(tmp_path / "r" / "cl" / "test.csv")["key"]) != set()
    # the database holds this study: another one (other fixed settings) is refused
    (tmp_path / "other.toml").write_text(STUDY.replace("epochs = 5", "epochs = 6"))
    other = ["run", str(tmp_path / "other.toml"), "--results", str(tmp_path / "r2")]
    assert main([*other, "--storage", pg_url, "--data-dir", str(data), "--devices", "cpu"]) == 2


def test_only_workers_offering_the_resource_get_trials(
    data: Path, tmp_path: Path, pg_url: str, cluster: DaskCluster
) -> None:
    offering = cluster.add_worker("vaegrid=1")
    cluster.add_worker("other=4", nthreads=4)  # more threads, but not the resource
    cluster.wait_for(2)
    (tmp_path / "study.toml").write_text(STUDY.replace("epochs = 5", "epochs = 1"))
    p = driver(tmp_path / "study.toml", tmp_path / "r", data, pg_url, cluster.address)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, out + err
    assert {r["worker"] for r in runs(pg_url, tmp_path)} == {offering.pid}


def test_a_killed_dask_worker_costs_only_its_trial_which_continues_on_another(
    data: Path, tmp_path: Path, pg_url: str, cluster: DaskCluster, reference: list[Any]
) -> None:
    cluster.add_worker("vaegrid=1")
    cluster.add_worker("vaegrid=1")
    cluster.wait_for(2)
    (tmp_path / "study.toml").write_text(STUDY)
    p = driver(tmp_path / "study.toml", tmp_path / "r", data, pg_url, cluster.address)

    def two_running_one_half_way() -> bool:
        open_runs = [r for r in runs(pg_url, tmp_path) if r["status"] == "running"]
        return len(open_runs) == 2 and epochs_done(pg_url, tmp_path) >= 2

    wait_until(lambda: epochs_done(pg_url, tmp_path) > 0 and two_running_one_half_way())
    victim, innocent = [r for r in runs(pg_url, tmp_path) if r["status"] == "running"]
    os.kill(int(victim["worker"]), signal.SIGKILL)  # a node lost mid-trial
    cluster.add_worker("vaegrid=1")  # and a new one joins
    _out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    all_runs = runs(pg_url, tmp_path)
    assert [r["status"] for r in all_runs if r["key"] == innocent["key"]] == ["completed"]
    again = [r for r in all_runs if r["key"] == victim["key"]]
    assert [r["status"] for r in again] == ["interrupted", "completed"]
    assert again[1]["worker"] != victim["worker"]
    log = (tmp_path / "r" / "cl" / "trials" / victim["key"] / "log.txt").read_text().splitlines()
    assert [line.split()[1] for line in log] == [f"{e}/5" for e in range(1, 6)]  # continued
    assert rows(Database.for_study(StudyLayout(tmp_path), pg_url)) == reference


def test_a_killed_driver_stops_cluster_trials_within_30_s_and_the_rerun_finishes(
    data: Path, tmp_path: Path, pg_url: str, cluster: DaskCluster
) -> None:
    cluster.add_worker("vaegrid=2", nthreads=2)
    cluster.wait_for(1)
    # long trials: still training when the driver dies, however fast this machine is
    (tmp_path / "study.toml").write_text(STUDY.replace("epochs = 5", "epochs = 200"))
    first = driver(tmp_path / "study.toml", tmp_path / "r", data, pg_url, cluster.address)
    wait_until(lambda: epochs_done(pg_url, tmp_path) >= 1)
    second = driver(tmp_path / "study.toml", tmp_path / "r", data, pg_url, cluster.address)
    _, err = second.communicate(timeout=120)
    # refused by the study folder's lock (the same machine), before the server is asked
    assert second.returncode == 2 and f"another driver (pid {first.pid}" in err, err
    first.kill()  # kill -9
    first.wait()
    killed = time.time()
    wait_until(lambda: all(r["status"] != "running" for r in runs(pg_url, tmp_path)), 60)
    assert time.time() - killed < 30, "a trial trained on more than 30 s after its driver died"
    stopped = [r["key"] for r in runs(pg_url, tmp_path) if r["status"] == "interrupted"]
    assert len(stopped) == 2
    before = {r[:3]: r for r in rows(Database.for_study(StudyLayout(tmp_path), pg_url))}
    (tmp_path / "study.toml").write_text(STUDY.replace("epochs = 5", "epochs = 200"))
    rerun = driver(tmp_path / "study.toml", tmp_path / "r", data, pg_url, cluster.address)
    wait_until(lambda: len(runs(pg_url, tmp_path)) >= 3)  # one of them runs again...
    rerun.kill()  # ...and that is enough: the trials continue from where they stopped
    rerun.wait()
    wait_until(lambda: all(r["status"] != "running" for r in runs(pg_url, tmp_path)), 60)
    after = rows(Database.for_study(StudyLayout(tmp_path), pg_url))
    assert all(before[r[:3]] == r for r in after if r[:3] in before)
    for key in stopped:
        log = (tmp_path / "r" / "cl" / "trials" / key / "log.txt").read_text().splitlines()
        numbered = [int(line.split()[1].split("/")[0]) for line in log if "/200" in line]
        assert numbered == list(range(1, len(numbered) + 1))  # no epoch twice, none skipped


def test_the_scheduler_gone_ends_the_driver_in_one_line_and_nothing_is_lost(
    data: Path, tmp_path: Path, pg_url: str, reference: list[Any]
) -> None:
    (tmp_path / "study.toml").write_text(STUDY)
    with dask_cluster() as doomed:
        doomed.add_worker("vaegrid=1")
        doomed.wait_for(1)
        p = driver(tmp_path / "study.toml", tmp_path / "r", data, pg_url, doomed.address)
        wait_until(lambda: epochs_done(pg_url, tmp_path) >= 1)
        doomed.scheduler.kill()
        out, err = p.communicate(timeout=120)
    assert p.returncode == 3, (out, err)
    said = [line for line in err.splitlines() if line.startswith("vaegrid: ")]
    assert said[0].startswith(f"vaegrid: the Dask scheduler at {doomed.address} is gone"), err
    assert "is gone" not in out  # messages go to stderr
    with dask_cluster() as fresh:
        fresh.add_worker("vaegrid=2", nthreads=2)
        fresh.wait_for(1)
        rerun = driver(tmp_path / "study.toml", tmp_path / "r", data, pg_url, fresh.address)
        out, err = rerun.communicate(timeout=600)
    errors = [(r["status"], r["error"]) for r in runs(pg_url, tmp_path)]
    assert rerun.returncode == 0, "\n".join([out, err, str(errors)])
    assert rows(Database.for_study(StudyLayout(tmp_path), pg_url)) == reference


HALVING = STUDY.replace('name = "cl"', 'name = "clh"') + "[halving]\nrungs = [2]\nkeep = 0.5\n"


def ledger(db: Database, name: str) -> dict[str, Any]:
    """Everything a halving sweep decides and computes: statuses, causes, stops, epoch rows,
    and Optuna's trials (by key: their numbers follow the order trials started in)."""
    store = Store.reader(db)
    try:
        trials = sorted((t.key, str(t.status), t.epochs_done) for t in store.trials())
        stops = store.stopped_rungs()
        epochs = store.frame("vg_epoch").sort_values(["key", "epoch", "split"])
    finally:
        store.close()
    url = f"sqlite:///{db.path}" if db.path else db.url.render_as_string(hide_password=False)
    optuna_trials = optuna.load_study(study_name=name, storage=url).trials
    return {
        "trials": trials,
        "stops": stops,
        "epochs": [tuple(r) for r in epochs[["key", "epoch", "split", "elbo", "recon", "kl"]]
                   .to_numpy()],
        "optuna": sorted(
            (t.user_attrs["key"], t.state.name, t.value, sorted(t.intermediate_values.items()))
            for t in optuna_trials
        ),
    }  # fmt: skip


def halving_reference(data: Path, tmp: Path) -> dict[str, Any]:
    """The ledger of the halving study on the local pool with SQLite, uninterrupted
    (its study file is left in ``tmp``)."""
    (tmp / "study.toml").write_text(HALVING)
    local = ["run", str(tmp / "study.toml"), "--results", str(tmp / "local")]
    local += ["--data-dir", str(data), "--devices", "cpu", "--no-progress"]
    assert main([*local, "--workers-per-device", "2"]) == 0
    return ledger(Database.sqlite(tmp / "local" / "clh" / "study.db"), "clh")


def count(db: Database, how: Callable[[Store], int]) -> int:
    """``how`` of a reader of ``db``; 0 while the database is not there yet."""
    try:
        store = Store.reader(db)
    except Exception:
        return 0
    try:
        return how(store)
    finally:
        store.close()


def test_a_halving_sweep_on_a_cluster_resumed_after_kill_9_at_a_rung_equals_a_local_run(
    data: Path, tmp_path: Path, pg_url: str, cluster: DaskCluster
) -> None:
    want = halving_reference(data, tmp_path)
    assert sorted(s for _, s, _ in want["trials"]) == ["completed"] * 2 + ["stopped"] * 2
    cluster.add_worker("vaegrid=1")
    cluster.add_worker("vaegrid=1")
    cluster.wait_for(2)
    db = Database.for_study(StudyLayout(tmp_path), pg_url)

    def paused() -> int:
        return count(db, lambda store: sum(t.status == "paused" for t in store.trials()))

    first = driver(tmp_path / "study.toml", tmp_path / "r", data, pg_url, cluster.address)
    wait_until(lambda: paused() >= 2)  # two trials wait at the rung, two are behind it
    for process in (first, *cluster.workers):  # kill -9 of the driver and its nodes at once
        process.kill()
        process.wait()
    assert paused() == 2  # the rung is not decided: the resumed driver decides it
    cluster.add_worker("vaegrid=1")
    cluster.add_worker("vaegrid=1")
    cluster.wait_for(2)
    again = driver(tmp_path / "study.toml", tmp_path / "r", data, pg_url, cluster.address)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, out + err
    assert "--devices" not in out + err
    assert ledger(db, "clh") == want


MODELS = """
name = "clm"
[data]
fractions = [0.8, 0.1, 0.1]
binarize = "dynamic"
[train]
epochs = 2
batch_size = 50
hidden = 64
latent = 8
lr = 1e-3
clip = 1.0
channels = 4
samples = 3
[grid]
model = ["linear", "mlp", "conv"]
objective = ["elbo", "iwae"]
[rank]
nll_samples = 5
"""


def test_every_model_and_objective_on_dask_and_postgres_gives_the_local_rows_bit_for_bit(
    data: Path, tmp_path: Path, pg_url: str, cluster: DaskCluster
) -> None:
    def nll(db: Database) -> list[tuple[Any, ...]]:
        store = Store.reader(db)
        try:
            frame = store.frame("vg_nll").sort_values(["key", "epoch"])
        finally:
            store.close()
        return [tuple(r) for r in frame[["key", "epoch", "nll", "samples"]].to_numpy()]

    (tmp_path / "study.toml").write_text(MODELS)
    local = ["run", str(tmp_path / "study.toml"), "--results", str(tmp_path / "local")]
    local += ["--data-dir", str(data), "--devices", "cpu", "--no-progress"]
    assert main(local) == 0
    here = Database.sqlite(tmp_path / "local" / "clm" / "study.db")
    cluster.add_worker("vaegrid=2", nthreads=2)
    cluster.wait_for(1)
    p = driver(tmp_path / "study.toml", tmp_path / "r", data, pg_url, cluster.address)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, out + err
    there = Database.for_study(StudyLayout(tmp_path), pg_url)
    assert len(rows(here)) == 6 * 2 * 2 and rows(there) == rows(here)
    assert len(nll(here)) == 6 and nll(there) == nll(here)
