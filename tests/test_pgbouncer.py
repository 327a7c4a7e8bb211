"""PgBouncer in transaction mode in front of PostgreSQL: each transaction may get another
server connection, so vaegrid may keep nothing on a session across transactions (no
prepared statements, the driver's lock a transaction's). A sweep through it gives the
rows of a sweep on SQLite bit for bit, keeps its one-driver lock, and a driver killed
with -9 leaves no lock behind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import epoch_rows, make_mnist
from servers import have_pgbouncer, pgbouncer, postgres

from vaegrid.cli import main
from vaegrid.db.engine import Database
from vaegrid.db.store import Store
from vaegrid.layout import StudyLayout

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not have_pgbouncer(), reason="needs PostgreSQL 15 and pgbouncer"),
]

STUDY = """
name = "pb"
[data]
fractions = [0.8, 0.1, 0.1]
[train]
epochs = 4
batch_size = 50
[grid]
hidden = [64]
latent = [8]
lr = [1e-3]
clip = [1.0, 0.5, 0.25]
"""


rows = epoch_rows


def test_a_sweep_behind_pgbouncer_keeps_its_lock_and_gives_the_sqlite_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_mnist(tmp_path / "data", n_train=3000, n_test=500)
    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    local = ["--data-dir", str(data), "--devices", "cpu", "--workers-per-device", "2"]
    assert main(["run", str(study), "--results", str(tmp_path / "ref"), *local,
                 "--no-progress"]) == 0  # fmt: skip
    reference = rows(Database.sqlite(tmp_path / "ref" / "pb" / "study.db"))
    with postgres() as url, pgbouncer(url, server_connections=3) as bounced:
        argv = [sys.executable, "-m", "vaegrid", "run", str(study), "--results",
                str(tmp_path / "r"), "--storage", bounced, "--no-progress", *local]  # fmt: skip
        first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        db = Database.for_study(StudyLayout(tmp_path / "r" / "pb"), url)  # PostgreSQL itself
        deadline = time.time() + 300
        while not _epochs(db):
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.3)
        # A second driver (another results folder: only the server's lock can refuse it)
        second = ["run", str(study), "--results", str(tmp_path / "r2"), "--storage", bounced]
        capsys.readouterr()
        assert main([*second, *local]) == 2
        err = capsys.readouterr().err
        assert f"another driver (pid {first.pid}" in err and err.count("\n") == 1, err
        first.kill()  # -9: its lock must go with its connection, through PgBouncer too
        first.wait()
        again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        assert "resuming" in again.stdout or "3 completed" in again.stdout, again.stdout
        assert rows(db) == reference
        trials = optuna.load_study(study_name="pb", storage=url).trials
        assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 3
        assert [sorted(t.intermediate_values) for t in trials] == [[1, 2, 3, 4]] * 3


def _epochs(db: Database) -> int:
    try:
        store = Store.reader(db)
    except Exception:
        return 0
    try:
        return len(store.frame("vg_epoch"))
    except Exception:
        return 0
    finally:
        store.close()
