"""The Python API: a study's results as pandas frames, read-only.

import vaegrid
r = vaegrid.load("results", "seed")       # or load("postgresql://host/db", "seed")
r.trials                                  # one row per trial: axes, status, metrics
r.best("val_elbo")                        # the best config, mean over its repeats
r.test                                    # the winners' test results, per repeat
vae = r.model(r.best("val_elbo")["key"])  # its trained VAE (torch), final weights, on CPU
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from vaegrid.analysis import tables
from vaegrid.db import schema
from vaegrid.db.engine import Database
from vaegrid.db.reader import ForeignTrial
from vaegrid.db.store import Store, existing_db
from vaegrid.errors import InputError
from vaegrid.halving import Standing, read_standings
from vaegrid.layout import StudyLayout
from vaegrid.safeio import check_study_dir
from vaegrid.status import COMPLETED
from vaegrid.study.core import TrialConfig
from vaegrid.study.fingerprint import Fingerprint
from vaegrid.study.load import is_study_name

if TYPE_CHECKING:  # torch loads only when a model is asked for
    from vaegrid.models.base import BaseVAE


@dataclass(frozen=True)
class StudyRows:
    """Everything a study's database holds that its tables are made of, read at once."""

    name: str
    fingerprint: Fingerprint
    configs: dict[str, TrialConfig]  # by trial key, each validated against its key
    trials: pd.DataFrame  # vg_trial with a column per axis, the repeat and the config
    epochs: pd.DataFrame  # vg_epoch
    tests: pd.DataFrame  # vg_test: a row per tested trial and k of its NLL
    stops: pd.DataFrame  # vg_stop
    nll: pd.DataFrame  # vg_nll: validation NLLs ([rank] nll_samples)
    runs: list[dict[str, Any]]
    description: str | None  # the study file's words on the study
    # Each trial as the halving rule sees it (halving.read_standings); None without halving.
    standings: dict[str, Standing] | None
    created_schema: int  # the schema version the database was made at (schema.py)
    # Trials of a plug-in not installed here (in that version, with that code): left out.
    foreign: list[ForeignTrial] = dataclasses.field(default_factory=list)

    @property
    def axes(self) -> list[str]:
        """The searched axes: the tables' columns."""
        return self.fingerprint.searched

    def per_trial(self) -> pd.DataFrame:
        """:func:`tables.rank`: one row per trial."""
        halving = self.fingerprint.halving is not None
        nll = self.nll if self.fingerprint.nll_samples else None
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
            spec = fingerprint.halving
            standings = None
            if spec is not None:
                standings, _, _ = read_standings(reader, list(trials["key"]), spec)
            return StudyRows(
                name=name,
                fingerprint=fingerprint,
                configs=configs,
                trials=trials,
                epochs=reader.frame("vg_epoch"),
                tests=reader.frame("vg_test"),
                stops=reader.frame("vg_stop"),
                nll=reader.frame("vg_nll"),
                runs=reader.runs(),
                description=reader.study_description(),
                standings=standings,
                created_schema=reader.created_schema(),
                foreign=reader.foreign_trials(),
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
    test: pd.DataFrame  # a row per tested trial and k: axes, test elbo, recon, kl, nll, nll_samples
    folder: Path | None = None  # RESULTS_DIR/STUDY: the trials' weights (None: not given)
    _configs: dict[str, TrialConfig] = dataclasses.field(default_factory=dict, repr=False)
    _created_schema: int = 0  # the schema version the database was made at

    def model(self, key: str, device: str = "cpu") -> BaseVAE:
        """A completed trial's trained VAE with its final weights, in eval mode, on
        ``device``: ``encode(x) -> (mu, logvar)``, ``decode(z) -> logits`` over images
        flattened as the data's (``x`` in [0, 1], shape ``[N, C*H*W]``).

        The weights are checked as ``report`` checks them: sized before they are read,
        and stamped with this trial's key and model version.

        Args:
            key: A trial's key (a config's key is its repeat 0's).
            device: ``cpu`` (default) or ``cuda:N``.

        Raises:
            ValueError: no such trial, or it did not complete (no final weights).
            InputError: the weights are missing or not this trial's; no folder to read
                them from (``load`` from a URL without ``results``).
        """
        from vaegrid.layout import StudyLayout
        from vaegrid.train.weights import load_model

        if key not in self._configs:
            raise ValueError(f"key = {key!r}: no trial of study {self.study} has that key")
        status = self.trials.loc[self.trials["key"] == key, "status"].iloc[0]
        if status != COMPLETED:
            raise ValueError(f"trial {key} is {status}: only a completed trial has final weights")
        if self.folder is None:
            raise InputError(
                "load(URL, study): the trials' weights are in RESULTS_DIR/STUDY; pass "
                "results=RESULTS_DIR to load() to read them"
            )
        return load_model(
            self._configs[key],
            StudyLayout(self.folder),
            device,
            not schema.weights_stamped(self._created_schema),
        )

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


def load(
    results_dir_or_storage: str | Path, study: str, *, results: str | Path | None = None
) -> Results:
    """A study's results, read-only: from ``RESULTS_DIR/STUDY/study.db`` or a storage URL.

    Args:
        results_dir_or_storage: The results folder ``vaegrid run --results`` wrote into, or
            the ``--storage`` URL (``sqlite:///...``, ``postgresql://...``) of the study.
        study: The study's name.
        results: With a URL, the results folder that holds the trials' weights
            (``Results.model``); a results folder needs none.

    Raises:
        InputError: no such study there, a bad URL, or a database that is not vaegrid's.
    """
    if not is_study_name(study):
        raise InputError(f"study = {study!r} is not allowed; expected a study's name")
    where = str(results_dir_or_storage)
    folder = StudyLayout.of(Path(results), study).root if results is not None else None
    if "://" in where:
        db = existing_db(StudyLayout(Path(study)), where)
    else:
        check_study_dir(Path(where), Path(where) / study, "the results folder")
        folder = StudyLayout.of(Path(where), study).root
        db = existing_db(StudyLayout(folder))
    rows = read_study(db)
    if rows.name != study:
        raise InputError(f"{db}: holds study {rows.name!r}, not {study!r}")
    per_trial = rows.per_trial()
    head = ["key", "config", "repeat", *rows.axes]
    test = rows.trials[head].merge(rows.tests, on="key")
    return Results(
        study=study,
        axes=rows.axes,
        trials=per_trial,
        configs=tables.by_config(per_trial, rows.axes),
        epochs=tables.long_epochs(rows.epochs, rows.trials, rows.axes),
        test=test.drop(columns=["evaluated"]),
        folder=folder,
        _configs=rows.configs,
        _created_schema=rows.created_schema,
    )
