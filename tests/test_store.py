"""The study database: crash safety at every write, read-only readers, hostile rows."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from conftest import Crash, run_inline, synced_study_db

from vaegrid.cli import main
from vaegrid.db.store import Store
from vaegrid.errors import InputError
from vaegrid.study.core import expand
from vaegrid.study.load import load_study

ONE_TRIAL = """
name = "one"
[data]
fractions = [0.6, 0.2, 0.2]
[train]
epochs = 2
batch_size = 100
[grid]
hidden = [16]
latent = [2]
lr = [1e-2]
clip = [1.0]
"""


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _ledger(db: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[str]]:
    """(per-epoch rows, Optuna trials as (key, state, value, intermediates), vg statuses)."""
    store = Store.reader(db)
    try:
        epochs = store.frame("vg_epoch").sort_values(["key", "epoch", "split"])
        rows = list(epochs[["key", "epoch", "split", "elbo", "recon", "kl"]].itertuples(False))
        statuses = [t.status for t in store.trials()]
    finally:
        store.close()
    trials = optuna.load_study(study_name="one", storage=f"sqlite:///{db}").trials
    ledger = [(t.user_attrs["key"], t.state.name, t.value, t.intermediate_values) for t in trials]
    return [tuple(r) for r in rows], ledger, statuses


@pytest.mark.slow  # a sweep crashed at each of its writes in turn: 36 s
def test_a_crash_at_any_write_of_a_trial_resumes_to_one_optuna_trial_and_the_same_rows(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    commits: dict[str, int],
    one_thread: None,
) -> None:
    study = write_study(ONE_TRIAL)
    assert run_inline(study, tmp_path / "whole", mnist_root) == 0
    total = commits["seen"]
    want = _ledger(tmp_path / "whole" / "one" / "study.db")
    (key,) = [t.key for t in expand(load_study(study))]
    assert [k for k, *_ in want[1]] == [key] and want[2] == ["completed"]
    assert total > 10  # the study, the trial's start, each epoch, its end: many write points
    for n in range(1, total + 1):
        results = tmp_path / f"crash{n}"
        commits["crash_at"], commits["seen"] = n, 0
        with pytest.raises(Crash):
            run_inline(study, results, mnist_root)
        commits["crash_at"] = 0
        assert run_inline(study, results, mnist_root) == 0, f"resume after a crash at write {n}"
        got = _ledger(results / "one" / "study.db")
        assert got == want, f"after a crash at write {n} of {total}"
        shutil.rmtree(results)


def _foreign_db(path: Path) -> bytes:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    con.execute("INSERT INTO notes (text) VALUES ('mine')")
    con.commit()
    con.close()
    return path.read_bytes()


def test_a_foreign_database_is_refused_byte_for_byte_unchanged(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study_dir = tmp_path / "r" / "tiny"
    study_dir.mkdir(parents=True)
    before = _foreign_db(study_dir / "study.db")
    for argv in (
        ["status", str(study_dir)],
        ["report", str(study_dir), "--data-dir", str(mnist_root)],
        ["run", str(write_study()), "--results", str(tmp_path / "r"), "--devices", "cpu",
         "--data-dir", str(mnist_root)],
    ):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "not a vaegrid study database" in err and err.count("\n") == 1, err
    assert (study_dir / "study.db").read_bytes() == before
    assert sorted(p.name for p in study_dir.iterdir()) == ["study.db"]  # no -wal, -shm, lock


def test_readers_never_wait_for_a_sweep_that_is_writing(
    write_study: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study_dir = tmp_path / "r" / "tiny"
    synced_study_db(write_study(), study_dir)
    writer = sqlite3.connect(study_dir / "study.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a worker in the middle of an epoch's commit
    writer.execute("UPDATE vg_trial SET epochs_done = 1")
    try:
        started = time.perf_counter()
        assert main(["status", str(study_dir)]) == 0
        assert time.perf_counter() - started < 5  # the busy timeout is 60 s
        assert "0/4 done" in capsys.readouterr().out
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_hand_edited_rows_are_refused_in_one_line(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_study()
    study = load_study(path)
    study_dir = tmp_path / "r" / "tiny"
    synced_study_db(path, study_dir)
    key = expand(study)[0].key
    edits = {
        "not json": "{",
        "json of another shape": json.dumps({"seed": 0}),
        "a config of another trial": expand(study)[1].to_json(),
        "a config that escapes": expand(study)[0]
        .to_json()
        .replace('"hidden": 32', '"hidden": "x"'),
    }
    for what, text in edits.items():
        con = sqlite3.connect(study_dir / "study.db")
        con.execute("UPDATE vg_trial SET config = ? WHERE key = ?", (text, key))
        con.commit()
        con.close()
        with pytest.raises(InputError, match=f"trial {key}: stored config"):
            Store.reader(study_dir / "study.db").trials()
        for argv in (
            ["status", str(study_dir)],
            ["run", str(path), "--results", str(tmp_path / "r"), "--devices", "cpu",
             "--data-dir", str(mnist_root)],
        ):  # fmt: skip
            assert main(argv) == 2, (what, argv)
            err = capsys.readouterr().err
            assert f"trial {key}: stored config" in err and err.count("\n") == 1, (what, err)
    con = sqlite3.connect(study_dir / "study.db")
    con.execute("UPDATE vg_trial SET key = '../../etc' WHERE key = ?", (key,))
    con.commit()
    con.close()
    with pytest.raises(InputError, match=re.escape("a key '../../etc' that vaegrid never makes")):
        Store.reader(study_dir / "study.db").trials()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"hidden": -4}, "hidden = -4, expected an integer from 1 to 16384"),
        ({"repeat": 10**9}, "repeat = 1000000000, expected an integer from 0 to 99"),
        ({"momentum": 0.9}, "momentum = 0.9 with optimizer adam: sgd only"),
        ({"batch_size": 10**6}, "batch_size = 1000000, expected an integer from 2 to 70000"),
        ({"seed": -1}, "seed = -1 is not allowed; expected an integer >= 0 and < 2**63"),
        ({"optimizer": "rm -rf"}, 'optimizer = "rm -rf", expected one of "adam", "adamw", "sgd"'),
        ({"beta": float("nan")}, "beta = nan, expected a number from 0 to 10000"),
    ],
)
def test_a_forged_config_that_hashes_to_its_key_is_still_refused(
    write_study: Callable[..., Path], tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    path = write_study()
    study_dir = tmp_path / "r" / "tiny"
    synced_study_db(path, study_dir)
    real = expand(load_study(path))[0]
    forged = real.replace(**change)  # a row whose key is its own config's hash
    con = sqlite3.connect(study_dir / "study.db")
    con.execute(
        "UPDATE vg_trial SET key = ?, config = ? WHERE key = ?",
        (forged.key, forged.to_json(), real.key),
    )
    con.commit()
    con.close()
    with pytest.raises(
        InputError, match=re.escape(f"trial {forged.key}: stored config is not valid ({problem})")
    ):
        Store.reader(study_dir / "study.db").trials()


def test_runs_record_provenance_and_optuna_names_the_objective(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path, one_thread: None
) -> None:
    study = write_study(ONE_TRIAL)
    assert run_inline(study, tmp_path / "r", mnist_root) == 0
    db = tmp_path / "r" / "one" / "study.db"
    assert optuna.load_study(study_name="one", storage=f"sqlite:///{db}").metric_names == [
        "val_elbo"
    ]
    store = Store.reader(db)
    try:
        (run,) = store.runs()
        devices = store.trial_devices()
    finally:
        store.close()
    versions = run["versions"]
    assert versions["torch"] == torch.__version__.split("+")[0]
    assert versions["cuda"] == (torch.version.cuda or "none")
    assert {"python", "vaegrid", "torchvision", "optuna", "numpy"} <= set(versions)
    assert run["host"] == os.uname().nodename
    assert run["device_kind"] == f"cpu / torch {versions['torch']}"
    assert devices == {run["key"]: run["device_kind"]}  # the trial is bound to that kind
    report = (tmp_path / "r" / "one" / "trials" / run["key"] / "log.txt").read_text()
    assert "epoch 2/2" in report


TAMPERED = {
    "text in a metric": ("UPDATE vg_epoch SET elbo = 'abc' WHERE rowid = 1", "vg_epoch", "elbo"),
    "a negative kl": ("UPDATE vg_epoch SET kl = -5, elbo = recon - 5 WHERE rowid = 2", "vg_epoch",
                      "kl"),
    "an infinite metric": ("UPDATE vg_epoch SET kl = 9e999 WHERE rowid = 3", "vg_epoch", "kl"),
    "a metric of -1e308": (
        "UPDATE vg_epoch SET elbo = -1e308, recon = -1e308 WHERE rowid = 1", "vg_epoch", "recon"
    ),
    "an elbo that is not recon + kl": (
        "UPDATE vg_epoch SET elbo = elbo - 50 WHERE rowid = 1", "vg_epoch", "elbo"
    ),
    "a completed trial without its epochs": (
        "DELETE FROM vg_epoch WHERE key = (SELECT min(key) FROM vg_trial)", "vg_epoch", "epoch"
    ),
    "a forged epoch 99 of a 2-epoch study": (
        "INSERT INTO vg_epoch SELECT key, 99, split, elbo - 90, recon - 90, kl, seconds "
        "FROM vg_epoch WHERE rowid = 1", "vg_epoch", "epoch",
    ),
    "text in epochs_done": ("UPDATE vg_trial SET epochs_done = 'x' WHERE rowid = 1", "vg_trial",
                            "epochs_done"),
    "a vg_trial without its primary key, a row doubled": (
        "CREATE TABLE t AS SELECT * FROM vg_trial; DROP TABLE vg_trial; "
        "ALTER TABLE t RENAME TO vg_trial; INSERT INTO vg_trial SELECT * FROM vg_trial LIMIT 1",
        "vg_trial", "primary key",
    ),
    "a forged test result": (
        "INSERT INTO vg_test (key, elbo, recon, kl, nll, nll_samples, seconds, evaluated) "
        "SELECT key, -5, -10, 5, -100, 5, 1, 1 FROM vg_trial LIMIT 1",
        "vg_test", "recon",
    ),
    "a metric of 1e300": (
        "UPDATE vg_epoch SET elbo = elbo + 1e300, recon = recon + 1e300 WHERE rowid = 1",
        "vg_epoch", "recon",
    ),
    "a run of a time past any clock": (
        "UPDATE vg_run SET started = -1e308, ended = 1e308 WHERE rowid = 1", "vg_run", "started"
    ),
    "text as a run's end": ("UPDATE vg_run SET ended = 'abc' WHERE rowid = 1", "vg_run", "ended"),
    "a test row of a trial that is not there": (
        "INSERT INTO vg_test VALUES ('0123456789ab', 1, 1, 0, 1, 5, 1, 1)", "vg_test", "key"
    ),
}  # fmt: skip


@pytest.mark.parametrize("what", list(TAMPERED))
def test_rows_vaegrid_could_not_have_written_are_refused_naming_table_and_column(
    what: str,
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import vaegrid

    path = write_study()
    assert run_inline(path, tmp_path / "r", mnist_root) == 0
    study_dir = tmp_path / "r" / "tiny"
    sql, table, column = TAMPERED[what]
    con = sqlite3.connect(study_dir / "study.db")
    con.executescript(sql)
    con.close()
    for argv in (["report", str(study_dir), "--data-dir", str(mnist_root), "--nll-samples", "5"],):
        assert main(argv) == 2, what
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and table in err and column in err, (what, err)
    with pytest.raises(InputError, match=table):
        vaegrid.load(tmp_path / "r", "tiny")
    assert not (study_dir / "report.md").exists() and not (study_dir / "ranking.csv").exists()


def test_a_reader_sees_one_moment_while_a_sweep_commits_epochs(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path
) -> None:
    assert run_inline(write_study(epochs=3), tmp_path / "r", mnist_root) == 0
    db = tmp_path / "r" / "tiny" / "study.db"
    with sqlite3.connect(db) as con:  # as if the sweep were at epoch 2 of 3
        con.execute("DELETE FROM vg_epoch WHERE epoch = 3")
        con.execute("UPDATE vg_trial SET epochs_done = 2, status = 'running'")
    store = Store.reader(db)
    try:
        with store.snapshot():
            before = len(store.frame("vg_epoch"))
            # A worker commits epoch 3 (its rows and its trial's progress together) between
            # two reads of the same snapshot: the second read is of the same moment.
            with sqlite3.connect(db, timeout=60) as con:
                con.execute("UPDATE vg_trial SET epochs_done = 3")
                con.execute(
                    "INSERT INTO vg_epoch SELECT key, 3, split, elbo, recon, kl, seconds "
                    "FROM vg_epoch WHERE epoch = 2"
                )
            assert len(store.frame("vg_epoch")) == before
            assert {t.epochs_done for t in store.trials()} == {2}
        assert len(store.frame("vg_epoch")) == before + 8  # the next moment, whole
    finally:
        store.close()


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        ("UPDATE vg_nll SET samples = 7 WHERE key = '{key}'", "vg_nll row of trial {key!r}, "
         "column samples: 7 is not a value vaegrid writes (expected 3, the study's k; edited?)"),
        ("DELETE FROM vg_nll WHERE key = '{key}'", "vg_nll row of trial {key!r}, column epoch: "
         "'no row at epoch 1' is not a value vaegrid writes (expected a row at the last epoch "
         "of every completed trial (k = 3)"),
        ("UPDATE vg_run SET started = 0 WHERE key = '{key}'", "vg_run row of trial {key!r}, "
         "column started: 0.0 is not a value"),
        ("UPDATE vg_run SET ended = started - 7200 WHERE key = '{key}'", "vg_run row of "
         "trial {key!r}, column ended: "),
    ],
)  # fmt: skip
def test_tampered_nll_and_run_rows_are_refused_by_run_and_report_alike(
    edit: str,
    says: str,
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A forged k, a completed trial's NLL deleted (the other config would win on val_nll,
    and run used to say "nothing to do"), a run that started in 1970 or ended before it
    started: refused in one line, by run (before it writes) as by report."""
    from conftest import TINY_STUDY

    text = TINY_STUDY.format(name="tiny", epochs=1).replace("clip = [1.0, 0.5]", "clip = [1.0]")
    path = write_study(text + "[rank]\nnll_samples = 3\n")
    assert run_inline(path, tmp_path / "r", mnist_root) == 0
    db = tmp_path / "r" / "tiny" / "study.db"
    key = expand(load_study(path))[0].key
    with sqlite3.connect(db) as con:
        con.execute(edit.format(key=key))
    before = db.read_bytes()
    for argv in (
        ["run", str(path), "--results", str(tmp_path / "r"), "--devices", "cpu",
         "--data-dir", str(mnist_root)],
        ["report", str(tmp_path / "r" / "tiny"), "--data-dir", str(mnist_root)],
    ):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says.format(key=key) in err, (argv, err)
    assert db.read_bytes() == before


def test_status_in_a_sweeps_first_moment_says_the_study_is_being_set_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The driver holds its lock and has made study.db, but not its tables yet."""
    from vaegrid.layout import StudyLayout
    from vaegrid.run.locks import DriverLock

    layout = StudyLayout(tmp_path / "r" / "tiny")
    layout.root.mkdir(parents=True)
    layout.db.touch()
    with DriverLock.of(layout):
        assert main(["status", str(layout.root)]) == 0
        out = capsys.readouterr().out
        assert out == f"tiny: its driver (pid {os.getpid()}) is setting the study up; ask " \
            "again in a moment\n"  # fmt: skip
    assert main(["status", str(layout.root)]) == 2  # no driver: what it is, said as before
    assert "not a vaegrid study database" in capsys.readouterr().err


def test_a_reader_is_a_type_with_no_method_that_writes(tmp_path: Path, write_study: Any) -> None:
    """Read-only is the reader's type, not an assert at run time: none of the writer's
    moves, syncs, leases or Optuna's ledger is there to call."""
    from conftest import synced_study_db

    from vaegrid.db.store import Reader

    writes = {"sync_study", "start_trial", "begin_run", "record_epoch", "finish_run", "mark",
              "fail", "give_up", "stop", "reopen", "save_test", "driver_beat", "claim",
              "release", "interrupt_running", "optuna"}  # fmt: skip
    assert writes <= set(dir(Store))
    assert not writes & set(dir(Reader))
    reader = Store.reader(synced_study_db(write_study(), tmp_path / "s"))
    try:
        assert isinstance(reader, Reader) and len(reader.trials()) == 4
    finally:
        reader.close()
