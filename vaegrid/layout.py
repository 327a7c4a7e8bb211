"""Every path inside a study folder, ``<results>/<study>/``: the one place that names them.

    <results>/<study>/
        study.db            the study database (SQLite; absent with --storage postgresql://)
        study.db-driver.lock  flock of the live driver on that database, holding its pid
        driver.lock         flock of the live driver on this folder, holding its pid
        .vaegrid-driver     the live driver's token: proof a worker sees this very folder
        trials/<key>/       one folder per trial (TrialFiles)
            config.json     the trial's config (its hash is the key)
            checkpoint.pt   model, optimizer and metrics after the last finished epoch
            weights.pt      the final weights, with the identity they belong to
            log.txt         one line per epoch, tracebacks of failed runs
            .lock           flock of the worker running it (SQLite studies)
        jobs/               batch jobs' logs (--cluster slurm...): vaegrid-<study>-<job id>.out/.err
        ranking.csv, trials.csv, epochs.csv, test.csv, report.md
        figures/            curves.png, heatmap.png, ..., <key>_reconstructions.png
                            (and an .svg beside each chart)
        tensorboard/        vaegrid export --to tensorboard, by default: a run per trial
        mlflow.db, mlflow-artifacts/  vaegrid export --to mlflow, by default

Driver, worker, training, report and storage take their paths from here; how files are
opened and written (never through a link, atomically) is ``safeio``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DB_NAME = "study.db"
TABLES = ("ranking", "trials", "epochs", "test")  # the report's CSV files, without ".csv"


@dataclass(frozen=True)
class TrialFiles:
    """The files of one trial."""

    folder: Path  # <study>/trials/<key>

    @property
    def config(self) -> Path:
        return self.folder / "config.json"

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoint.pt"

    @property
    def weights(self) -> Path:
        return self.folder / "weights.pt"

    @property
    def log(self) -> Path:
        return self.folder / "log.txt"

    @property
    def lock(self) -> Path:
        return self.folder / ".lock"


@dataclass(frozen=True)
class StudyLayout:
    """The folder of one study and everything vaegrid keeps in it."""

    root: Path  # <results>/<study>

    @classmethod
    def of(cls, results: Path, name: str) -> StudyLayout:
        return cls(results / name)

    @property
    def db(self) -> Path:
        """The default SQLite study database."""
        return self.root / DB_NAME

    @property
    def driver_lock(self) -> Path:
        return self.root / "driver.lock"

    @property
    def driver_token(self) -> Path:
        return self.root / ".vaegrid-driver"

    @property
    def jobs(self) -> Path:
        """The logs of the batch jobs that ran this study's workers (``--cluster slurm``)."""
        return self.root / "jobs"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    def trial(self, key: str) -> TrialFiles:
        return TrialFiles(self.trials / key)

    def table(self, name: str) -> Path:
        """One of the report's CSV files (:data:`TABLES`)."""
        assert name in TABLES, name
        return self.root / f"{name}.csv"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def figure(self, name: str) -> Path:
        return self.figures / f"{name}.png"

    @property
    def tensorboard(self) -> Path:
        """Where ``vaegrid export --to tensorboard`` writes when told no place."""
        return self.root / "tensorboard"

    @property
    def mlflow_db(self) -> Path:
        """``vaegrid export --to mlflow``'s default tracking database, and the folder its
        artifacts go to."""
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlflow-artifacts"


def database_lock(db: Path) -> Path:
    """The driver lock of a SQLite study database, beside it (as SQLite keeps its -wal and
    -shm there): one driver per database, wherever the database is named from."""
    return db.with_name(db.name + "-driver.lock")
