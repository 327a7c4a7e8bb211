"""The Python API: a study's results as pandas frames, read-only.

import vaegrid
r = vaegrid.load("results", "seed")       # or load("postgresql://host/db", "seed")
r.trials                                  # one row per trial: axes, status, metrics
r.best("val_elbo")                        # the best config, mean over its repeats
r.test                                    # the winners' test results, per repeat
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vaegrid.analysis import tables
from vaegrid.db.engine import Database
from vaegrid.db.store import Store, existing_db
from vaegrid.errors import InputError
from vaegrid.halving import Standing, read_standings, spec_from_fingerprint
from vaegrid.layout import StudyLayout
from vaegrid.safeio import check_study_dir
from vaegrid.spec.load import is_study_name
from vaegrid.spec.study import TrialConfig, nll_samples, searched_axes
from vaegrid.status import COMPLETED


@dataclass(frozen=True)
class StudyRows:
    """Everything a study's database holds that its tables are made of, read at once."""

    name: str
    fingerprint: dict[str, Any]
    configs: dict[str, TrialConfig]  # by trial key, each validated against its key
    trials: pd.DataFrame  # vg_trial with a column per axis, the repeat and the config
    epochs: pd.DataFrame  # vg_epoch
    tests: pd.DataFrame  # vg_test, indexed by trial key
    stops: pd.DataFrame  # vg_stop
    nll: pd.DataFrame  # vg_nll: validation NLLs ([rank] nll_samples)
    runs: list[dict[str, Any]]
    description: str | None  # the study file's words on the study
    # Each trial as the halving rule sees it (halving.read_standings); None without halving.
    standings: dict[str, Standing] | None
    created_schema: int  # the schema version the database was made at (schema.py)

    @property
    def axes(self) -> list[str]:
        """The searched axes: the tables' columns."""
        return searched_axes(self.fingerprint)

    def per_trial(self) -> pd.DataFrame:
        """:func:`tables.rank`: one row per trial."""
        halving = spec_from_fingerprint(self.fingerprint) is not None
        nll = self.nll if nll_samples(self.fingerprint) else None
        stops = self.stops if halving else None
        return tables.rank(self.trials, self.epochs, self.axes, stops, nll)


def read_study(db: Database) -> StudyRows:
    """Read a study's rows through a read-only connection (nothing is written or locked),
    all in one transaction.

    Raises:
        InputError: the database holds no vaegrid study, or a hand-edited row.
    """
    reader = Store.reader(db)
    try:
        with reader.snapshot():  # every table of one moment, even while a sweep writes
            name, _ = reader.study_row()
            fingerprint = reader.fingerprint()
            configs = {t.key: t.config for t in reader.trials()}
            trials = tables.with_axes(reader.frame("vg_trial"), configs)
            spec = spec_from_fingerprint(fingerprint)
            standings = None
            if spec is not None:
                standings, _, _ = read_standings(reader, list(trials["key"]), spec)
            return StudyRows(
                name=name,
                fingerprint=fingerprint,
                configs=configs,
                trials=trials,
                epochs=reader.frame("vg_epoch"),
                tests=reader.frame("vg_test").set_index("key"),
                stops=reader.frame("vg_stop"),
                nll=reader.frame("vg_nll"),
                runs=reader.runs(),
                description=reader.study_description(),
                standings=standings,
                created_schema=reader.created_schema(),
            )
    finally:
        reader.close()


@dataclass(frozen=True)
class Results:
    """A study's results (:func:`load`)."""

    study: str
    axes: list[str]  # the searched axes, as the frames' columns name them
    trials: pd.DataFrame  # one row per trial: key, config, repeat, axes, status, metrics, ranks
    configs: pd.DataFrame  # one row per config: metrics' mean, std, 95% interval over repeats
    epochs: pd.DataFrame  # one row per trial, epoch and split (train, val): elbo, recon, kl
    test: pd.DataFrame  # one row per tested trial: axes, test elbo, recon, kl, nll, nll_samples

    def best(self, metric: str = "val_elbo") -> pd.Series:
        """The completed config with the lowest mean ``metric`` over its repeats (ties by key);
        ``val_nll`` too in a study with ``[rank] nll_samples``.

        Raises:
            ValueError: ``metric`` is not a metric column, or no config has completed.
        """
        allowed = [*tables.SUMMARISED, *(["val_nll"] if "val_nll" in self.configs else [])]
        if metric not in allowed:
            raise ValueError(f"metric = {metric!r} is not allowed; expected one of {allowed}")
        done = self.configs[self.configs["status"] == COMPLETED]
        if done.empty:
            raise ValueError(f"study {self.study}: no completed config yet")
        return done.sort_values([metric, "key"]).iloc[0]


def load(results_dir_or_storage: str | Path, study: str) -> Results:
    """A study's results, read-only: from ``RESULTS_DIR/STUDY/study.db`` or a storage URL.

    Args:
        results_dir_or_storage: The results folder ``vaegrid run --results`` wrote into, or
            the ``--storage`` URL (``sqlite:///...``, ``postgresql://...``) of the study.
        study: The study's name.

    Raises:
        InputError: no such study there, a bad URL, or a database that is not vaegrid's.
    """
    if not is_study_name(study):
        raise InputError(f"study = {study!r} is not allowed; expected a study's name")
    where = str(results_dir_or_storage)
    if "://" in where:
        db = existing_db(StudyLayout(Path(study)), where)
    else:
        results = Path(where)
        check_study_dir(results, results / study, "the results folder")
        db = existing_db(StudyLayout.of(results, study))
    rows = read_study(db)
    if rows.name != study:
        raise InputError(f"{db}: holds study {rows.name!r}, not {study!r}")
    per_trial = rows.per_trial()
    head = ["key", "config", "repeat", *rows.axes]
    epochs = rows.epochs.merge(rows.trials[head], on="key")
    epochs = epochs[[*head, "epoch", "split", *tables.METRICS, "seconds"]]
    test = rows.trials[head].merge(rows.tests.reset_index(), on="key")
    return Results(
        study=study,
        axes=rows.axes,
        trials=per_trial,
        configs=tables.by_config(per_trial, rows.axes),
        epochs=epochs.sort_values(["key", "epoch", "split"]).reset_index(drop=True),
        test=test.drop(columns=["evaluated"]),
    )
