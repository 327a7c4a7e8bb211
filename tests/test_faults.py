"""Faults of the world, not of a trial: concurrent moves on a server database, and (below)
a database that goes away and a disk that fills up while trials run."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_mnist
from servers import fresh_database, have_postgres, pg_ctl, postgres
from test_cluster import wait_until

from vaegrid.cli import main
from vaegrid.db.engine import Database
from vaegrid.db.store import Store
from vaegrid.layout import StudyLayout
from vaegrid.status import COMPLETED, FAILED, RUNNING, IllegalTransition, Status
from vaegrid.study.core import expand
from vaegrid.study.load import load_study

needs_postgres = pytest.mark.skipif(not have_postgres(), reason="needs PostgreSQL 15")


def test_faults_of_the_world_are_told_from_a_trials_own() -> None:
    import errno
    import sqlite3

    import psycopg
    from sqlalchemy.exc import OperationalError

    from vaegrid.faults import world_fault

    def wrapped(e: BaseException) -> OperationalError:  # as SQLAlchemy raises a driver's
        return OperationalError("UPDATE vg_trial ...", {}, e)  # type: ignore[arg-type]

    shutdown = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    assert "the study database is unreachable (AdminShutdown: terminating" in (
        world_fault(wrapped(shutdown)) or ""
    )
    full = OSError(errno.ENOSPC, "No space left on device")
    assert world_fault(full, where="/r/s") == "no space left on the device (/r/s)"
    try:  # a cause two links down (raise ... from ...) is found too
        try:
            raise full
        except OSError as e:
            raise RuntimeError("saving the checkpoint") from e
    except RuntimeError as e:
        assert world_fault(e) == "no space left on the device"
    assert "read-only" in (world_fault(OSError(errno.EROFS, "x", "/r/s/trials")) or "")
    assert "database is locked" in (world_fault(wrapped(sqlite3.OperationalError(
        "database is locked"))) or "")  # fmt: skip
    ro = sqlite3.OperationalError("attempt to write a readonly database")
    assert "readonly" in (world_fault(wrapped(ro)) or "")  # a results folder made read-only
    denied = OSError(errno.EACCES, "Permission denied", "/r/s/trials/k")
    assert world_fault(denied) == "permission was taken away (/r/s/trials/k)"
    from vaegrid.errors import DataGone, InputError

    gone = DataGone("/d/MNIST/raw/t10k-images-idx3-ubyte: MNIST file not found")
    assert world_fault(gone) == f"the data folder cannot be read now ({gone})"
    serialization = psycopg.errors.SerializationFailure("could not serialize access")
    assert world_fault(wrapped(serialization)) is not None  # the transaction may run again
    for own in (  # a trial's own: its code, its data, the database's content
        wrapped(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")),
        wrapped(psycopg.errors.InvalidPassword("password authentication failed")),
        ValueError("non-finite loss"),
        FileNotFoundError(errno.ENOENT, "no such file", "weights.pt"),
        wrapped(sqlite3.OperationalError("no such table: vg_trial")),
        RuntimeError("CUDA error: an illegal memory access"),
        InputError("data.limit = 900 exceeds the 500 images found"),  # data, but not gone
    ):
        assert world_fault(own) is None, own


def test_a_call_is_tried_again_while_the_world_fails_and_given_up_past_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    from vaegrid import faults

    monkeypatch.setattr(faults, "BACKOFF_S", (0.01, 0.05))
    calls = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return "done"

    assert faults.patiently(flaky, wait_s=5) == "done" and len(calls) == 4
    with pytest.raises(faults.WorldFault, match="no space left on the device") as caught:
        faults.patiently(lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "x")), 0.3)
    # it gives up before a pause would pass the wait; the last call and a sleep's timer
    # slack may still add a little (0.30002 s seen on a loaded machine)
    assert 0.1 < caught.value.waited <= 0.3 + 0.05
    with pytest.raises(ValueError):  # a trial's own error is never retried
        faults.patiently(lambda: (_ for _ in ()).throw(ValueError("bug")), 5)
    # a WorldFault travels back from a worker process whole
    import pickle

    back = pickle.loads(pickle.dumps(faults.WorldFault("no space", 12.5)))
    assert (str(back), back.waited) == ("no space", 12.5)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with postgres() as url:
        yield url


@needs_postgres
def test_two_sessions_ending_one_trial_take_turns_and_the_second_sees_the_first(
    server: str, tmp_path: Path
) -> None:
    """The driver fails a trial while its worker records its end: both read the row
    running. Under the row lock the second waits for the first's commit and sees failed
    (a move it may not make); on a plain read it would pass its check on a stale row and
    overwrite the first (the later commit wins)."""
    (tmp_path / "s.toml").write_text('name = "s"\n[train]\nepochs = 2\n[grid]\nlatent = [4]\n')
    study = load_study(tmp_path / "s.toml")
    url = fresh_database(server, "interleaved")  # the module's other tests share the server
    store = Store(Database.for_study(StudyLayout(tmp_path / "s"), url))
    other = Store(Database.for_study(StudyLayout(tmp_path / "s"), url))
    try:
        grid = expand(study)
        store.sync_study(study, grid, 1)
        cfg = grid[0]
        store.start_trial(study, cfg)
        read, outcome = threading.Event(), {}

        def driver() -> None:  # reads the row, lingers, then fails the trial
            with store.session() as s:
                row = store._row(s, cfg.key)
                assert row.status == RUNNING
                read.set()
                time.sleep(1.0)
                from vaegrid.db.trials import move

                move(row, FAILED, "the driver's")

        def worker() -> None:  # reads once the driver has, then ends it completed
            read.wait(10)
            from vaegrid.db.trials import move

            try:
                with other.session() as s:
                    row = other._row(s, cfg.key)
                    outcome["seen"] = row.status
                    move(row, COMPLETED)
            except IllegalTransition as e:
                outcome["refused"] = str(e)

        threads = [threading.Thread(target=driver), threading.Thread(target=worker)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert outcome.get("seen") == FAILED.value, outcome  # waited for the commit
        assert "refused" in outcome
        assert store.status_of(cfg.key) == Status.FAILED  # the first end stands
    finally:
        store.close()
        other.close()


STUDY = """
name = "w"
[data]
fractions = [0.8, 0.1, 0.1]
[train]
epochs = 4
batch_size = 50
[grid]
hidden = [128]
latent = [8]
lr = [1e-3]
clip = [1.0, 0.5, 0.25, 0.125]
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mnist(tmp_path_factory.mktemp("wdata"), n_train=3000, n_test=500)


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, ...]]:
    """The study's rows from an undisturbed local run on SQLite."""
    tmp = tmp_path_factory.mktemp("wref")
    (tmp / "s.toml").write_text(STUDY)
    argv = ["run", str(tmp / "s.toml"), "--results", str(tmp / "r"), "--data-dir", str(data)]
    assert main([*argv, "--devices", "cpu", "--no-progress", "--workers-per-device", "2"]) == 0
    return rows(Database.sqlite(tmp / "r" / "w" / "study.db"))


def rows(db: Database) -> list[tuple[Any, ...]]:
    store = Store.reader(db)
    try:
        frame = store.frame("vg_epoch").sort_values(["key", "epoch", "split"])
        statuses = sorted(store.frame("vg_trial")["status"])
    finally:
        store.close()
    cols = ["key", "epoch", "split", "elbo", "recon", "kl"]
    return [tuple(statuses), *(tuple(r) for r in frame[cols].to_numpy())]


def epochs_done(db: Database) -> int:
    try:
        store = Store.reader(db)
    except Exception:  # the server is down, or not made yet
        return 0
    try:
        return int(store.frame("vg_epoch")["epoch"].count())
    except Exception:
        return 0
    finally:
        store.close()


@pytest.mark.slow
@needs_postgres
def test_a_postgres_restart_and_an_outage_fail_no_trial_and_give_the_local_rows(
    server: str, data: Path, tmp_path: Path, reference: list[Any]
) -> None:
    """A maintenance restart (connections terminated) while trials are mid-epoch, then
    15 s with no server at all: the sweep waits, every trial completes, exit 0, and the
    rows are an undisturbed local run's bit for bit."""
    (tmp_path / "s.toml").write_text(STUDY)
    cmd = [sys.executable, "-m", "vaegrid", "run", str(tmp_path / "s.toml"), "--results",
           str(tmp_path / "r"), "--data-dir", str(data), "--no-progress", "--storage", server,
           "--devices", "cpu", "--workers-per-device", "2"]  # fmt: skip
    db = Database.for_study(StudyLayout(tmp_path / "r" / "w"), server)
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: epochs_done(db) >= 2)  # trials are under way
        pg_ctl(server, "stop")
        pg_ctl(server, "start")  # a restart: every connection was cut
        wait_until(lambda: epochs_done(db) >= 10)
        assert driver.poll() is None  # the outage comes while trials run
        pg_ctl(server, "stop")
        time.sleep(15)  # an outage: nothing answers
        pg_ctl(server, "start")
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out + err
    assert "(4 completed, 0 diverged, 0 failed)" in out, out
    assert rows(db) == reference


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root)")
def test_a_full_disk_interrupts_stops_in_one_line_with_exit_3_and_the_rerun_continues(
    data: Path, tmp_path: Path, reference: list[Any]
) -> None:
    """Results on a 3 MB filesystem, where the first checkpoint (about 1.3 MB for this
    model and Adam's moments) fits and the others do not: no trial fails, the sweep stops
    after --fault-wait with one line saying the disk is full and exit 3; with room made,
    the same command finishes with the undisturbed run's rows."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                             capture_output=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (tmp_path / "s.toml").write_text(STUDY)
        cmd = [sys.executable, "-m", "vaegrid", "run", str(tmp_path / "s.toml"), "--results",
               str(disk), "--data-dir", str(data), "--no-progress", "--devices", "cpu",
               "--workers-per-device", "2", "--fault-wait", "4"]  # fmt: skip
        full = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        assert full.returncode == 3, full.stdout + full.stderr
        warning, stop = full.stderr.splitlines()  # said before it starts, and at its end
        assert f"vaegrid: warning: {disk / 'w'} has " in warning, warning
        assert "MB free; this sweep writes about" in warning
        assert stop.startswith("vaegrid: no space left on the device"), stop
        assert "run the same command again once it is fixed" in stop
        assert "interrupted by a fault of the world (no space left on the device" in full.stdout
        db = Database.sqlite(disk / "w" / "study.db")
        assert "failed" not in rows(db)[0]  # interrupted or pending, never failed
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "resuming" in again.stdout or "0 failed" in again.stdout
        assert rows(db) == reference
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_trial_whose_workers_never_finish_an_epoch_stops_the_sweep_in_one_line(
    write_study: Any,
    mnist_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Workers that always stop before an epoch is done (a Slurm walltime of 10 s against
    an epoch of 30) used to be replaced forever: 50 jobs, no epoch, no word. After
    STALLED_RUNS runs in a row without an epoch the sweep stops, exit 3, one line."""
    from conftest import run_inline

    from vaegrid.run import sweep
    from vaegrid.status import INTERRUPTED
    from vaegrid.study.core import TrialConfig

    runs = []

    def cut_short(task: Any) -> Status:  # a worker retired at its walltime, mid-epoch
        key = TrialConfig.from_json(task.config).key
        runs.append(key)
        store = Store(task.db)
        try:
            store.mark([key], INTERRUPTED)
        finally:
            store.close()
        return INTERRUPTED

    monkeypatch.setattr(sweep, "execute", cut_short)
    assert run_inline(write_study(), tmp_path / "r", mnist_root) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"trial {runs[0]} was interrupted {sweep.STALLED_RUNS} times in a row without " in err
    assert "give the jobs a longer walltime, then run the same command again" in err
    assert runs == [runs[0]] * sweep.STALLED_RUNS  # the same trial, offered first each time


def test_a_fault_after_a_trials_end_was_committed_keeps_that_end(
    write_study: Any, mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end is committed, then the world fails (the lease's release on a dropped
    connection, the checkpoint's removal on a read-only disk): the trial stays completed,
    never offered again (that used to end the driver in a traceback)."""
    from conftest import run_inline

    from vaegrid.faults import WorldFault
    from vaegrid.run import sweep

    real = sweep.execute

    def then_the_disk(task: Any) -> Status:
        real(task)
        raise WorldFault("the filesystem is read-only (/r/tiny/trials)")

    monkeypatch.setattr(sweep, "execute", then_the_disk)
    assert run_inline(write_study(), tmp_path / "r", mnist_root) == 0
    store = Store.reader(tmp_path / "r" / "tiny" / "study.db")
    try:
        assert [t.status for t in store.trials()] == [Status.COMPLETED] * 4
        assert [r["status"] for r in store.runs()] == ["completed"] * 4  # one run each
    finally:
        store.close()


def test_a_data_folder_gone_under_the_sweep_interrupts_and_the_rerun_continues(
    write_study: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The data folder is unmounted after the first trial: the next trial is interrupted,
    not failed; after --fault-wait the sweep stops with exit 3 and one line naming the
    folder; mounted again, the same command finishes every trial."""
    from conftest import run_inline

    from vaegrid.run import sweep
    from vaegrid.train import data as loader

    data, away = make_mnist(tmp_path / "d"), tmp_path / "away"
    real, calls = sweep.execute, []

    def unmounted(task: Any) -> Status:
        calls.append(task)
        if len(calls) == 2:  # the first trial is done: the folder goes
            data.rename(away)
            loader._CACHE.clear()  # a new worker process: nothing loaded yet
        return real(task)

    monkeypatch.setattr(sweep, "execute", unmounted)
    study = write_study()
    assert run_inline(study, tmp_path / "r", data, fault_wait=1.5) == 3
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    raw = data / "MNIST" / "raw"
    assert err.startswith(f"vaegrid: the data folder cannot be read now ({raw}/"), err
    assert "run the same command again once it is fixed" in err
    store = Store.reader(tmp_path / "r" / "tiny" / "study.db")
    try:
        statuses = sorted(t.status for t in store.trials())
    finally:
        store.close()
    assert statuses.count(Status.COMPLETED) == 1 and Status.FAILED not in statuses, statuses
    away.rename(data)
    assert run_inline(study, tmp_path / "r", data) == 0
    store = Store.reader(tmp_path / "r" / "tiny" / "study.db")
    try:
        assert [t.status for t in store.trials()] == [Status.COMPLETED] * 4
    finally:
        store.close()
