"""The schema version: a database of an older vaegrid is migrated in place, a newer (or
unknown) one is refused in one line naming both versions, never misread."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import Crash, make_mnist

from vaegrid.cli import main
from vaegrid.db.schema import SCHEMA_VERSION
from vaegrid.db.store import Store

FIXTURES = Path(__file__).parent / "fixtures"
AXIS_COLUMNS = {"hidden", "latent", "lr", "clip"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic images the fixture's study ran on (make_mnist is seeded)."""
    return make_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """A copy of a study database made by vaegrid before schema versions (version 1)."""
    folder = tmp_path / "r" / "schema1"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / "schema1.db", folder / "study.db")
    return folder / "study.db"


def _dump(db: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(db) as con:
        return {
            table: con.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2").fetchall()
            for table, columns in {
                "vg_epoch": "key, epoch, split, elbo, recon, kl, seconds",
                "vg_trial": "key, config, status, epochs_done, cause, diverged_epoch, seconds",
                "vg_stop": "key, rung",
                "vg_test": "key, elbo, nll",
                "trials": "trial_id, state",
            }.items()
        }


def _columns(db: Path, table: str) -> set[str]:
    with sqlite3.connect(db) as con:
        return {row[1] for row in con.execute(f"PRAGMA table_info({table})")}


def test_a_version_1_database_is_read_as_it_is_and_migrated_by_the_next_run(
    old: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _dump(old)
    assert _columns(old, "vg_trial") >= AXIS_COLUMNS
    # Readers read it without writing a byte.
    raw = old.read_bytes()
    assert main(["status", str(old.parent)]) == 0
    assert "schema1: 4/4 done (2 completed, 1 diverged, 0 failed, 1 stopped)" in (
        capsys.readouterr().out
    )
    assert old.read_bytes() == raw
    # A run migrates it in place, and finds nothing to do: every number was kept.
    study = FIXTURES / "schema1.toml"
    argv = ["run", str(study), "--results", str(old.parent.parent), "--data-dir", str(data)]
    assert main([*argv, "--devices", "cpu", "--no-progress"]) == 0
    assert "schema1: nothing to do: 4/4 done" in capsys.readouterr().out
    assert _dump(old) == before
    assert not AXIS_COLUMNS & _columns(old, "vg_trial")
    assert "description" in _columns(old, "vg_study")
    with sqlite3.connect(old) as con:
        meta = dict(con.execute("SELECT name, value FROM vg_meta").fetchall())
    assert meta == {"schema_version": str(SCHEMA_VERSION), "created_schema": "1"}
    store = Store.reader(old)
    try:
        assert sorted(t.status for t in store.trials()) == [
            "completed", "completed", "diverged", "stopped"
        ]  # fmt: skip
    finally:
        store.close()


def test_a_crash_during_the_migration_leaves_version_1_whole(
    old: Path, commits: dict[str, int]
) -> None:
    before = _dump(old)
    commits["crash_at"] = 1  # the migration's one transaction
    with pytest.raises(Crash):
        Store(old)
    commits["crash_at"] = 0
    assert _columns(old, "vg_trial") >= AXIS_COLUMNS and "vg_meta" not in _tables(old)
    Store(old).close()  # the next writer migrates it
    assert _dump(old) == before and not AXIS_COLUMNS & _columns(old, "vg_trial")


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as con:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("99", f"made by a newer vaegrid \\(schema version 99; this vaegrid reads versions 1 "
               f"to {SCHEMA_VERSION}\\)"),
        ("two", "schema version 'two' is not one vaegrid writes"),
    ],
)  # fmt: skip
def test_a_newer_or_unknown_version_is_refused_in_one_line_and_nothing_written(
    old: Path, data: Path, version: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Store(old).close()
    with sqlite3.connect(old) as con:
        con.execute("UPDATE vg_meta SET value = ? WHERE name = 'schema_version'", (version,))
    raw = old.read_bytes()
    study = FIXTURES / "schema1.toml"
    run = ["run", str(study), "--results", str(old.parent.parent), "--data-dir", str(data)]
    for argv in ([*run, "--devices", "cpu"], ["status", str(old.parent)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert re.search(message, err), err
    assert old.read_bytes() == raw
    with pytest.raises(Exception, match=message):
        Store(old)


@pytest.fixture
def v3(tmp_path: Path) -> Path:
    """A copy of a study database of schema version 3 (main at e554445): two models, two
    repeats, Optuna's parameter "repeat", the model as an attribute, one winner tested."""
    folder = tmp_path / "r" / "schema3"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / "schema3.db", folder / "study.db")
    return folder / "study.db"


def test_version_3_is_migrated_in_place_its_tests_kept_and_optuna_sees_no_repeat(
    v3: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import optuna

    with sqlite3.connect(v3) as con:
        tested = con.execute("SELECT key, nll_samples, nll FROM vg_test ORDER BY 1").fetchall()
        params = {r[0] for r in con.execute("SELECT DISTINCT param_name FROM trial_params")}
    assert len(tested) == 2 and params == {"repeat"}  # as version 3 wrote it
    raw = v3.read_bytes()
    assert main(["status", str(v3.parent)]) == 0  # a reader reads it as it is
    assert "schema3: 4/4 done (4 completed" in capsys.readouterr().out
    assert v3.read_bytes() == raw
    Store(v3).close()  # a writer migrates it
    with sqlite3.connect(v3) as con:
        assert con.execute("SELECT key, nll_samples, nll FROM vg_test ORDER BY 1").fetchall() == (
            tested
        )
        version = con.execute("SELECT value FROM vg_meta WHERE name = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    study = optuna.load_study(study_name="schema3", storage=f"sqlite:///{v3}")
    trials = study.get_trials()
    assert len(trials) == 4
    for t in trials:  # the repeat an attribute; the model a categorical of the study's values
        assert set(t.params) == {"model"} and t.user_attrs["repeat"] in (0, 1)
        assert t.distributions["model"] == optuna.distributions.CategoricalDistribution(
            ["linear", "mlp"]
        )
        assert "val_nll" in t.user_attrs  # [rank] nll_samples = 5
    assert sorted(t.user_attrs["repeat"] for t in trials) == [0, 0, 1, 1]
    by_key = {t.user_attrs["key"]: t for t in trials}
    for key, k, nll in tested:  # the test metrics, on trials Optuna has finished
        assert by_key[key].user_attrs[f"test_nll_k{k}"] == pytest.approx(nll)
    found = optuna.importance.get_param_importances(study)
    assert set(found) == {"model"}  # the repeat is no parameter: it can matter nothing
