"""Reading a study database: every row checked on its way in, as vaegrid could have written it.

A study database is outside input like any other (it may be edited, or made by another
tool). What leaves this module is checked once here: a key of vaegrid's form, a config
that hashes to its key and is one a study file could make, a status of vaegrid's.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from sqlalchemy import Connection, select

from vaegrid.db import schema
from vaegrid.db.checks import check
from vaegrid.db.schema import (
    Base,
    DriverRow,
    ProvenanceRow,
    RunRow,
    StopRow,
    StudyRow,
    TrialDeviceRow,
    TrialRow,
)
from vaegrid.db.session import StoreBase
from vaegrid.errors import InputError
from vaegrid.status import RUNNING, Status, parse
from vaegrid.study.core import NotInstalled, TrialConfig
from vaegrid.study.fingerprint import Fingerprint
from vaegrid.study.stored import config_problem, configs_pass

if TYPE_CHECKING:  # the driver reads through this module and never loads pandas
    import pandas as pd

CHECKED = (
    "vg_trial",
    "vg_epoch",
    "vg_test",
    "vg_nll",
    "vg_stop",
    "vg_run",
)  # tables read through db/checks.py
KEY_PATTERN = re.compile(r"[0-9a-f]{12}")  # TrialConfig.key: anything else is not ours


@dataclass(frozen=True)
class TrialInfo:
    """A trial's row, as the driver and the report read it."""

    key: str
    config: TrialConfig
    status: Status
    epochs_done: int
    seconds: float = 0.0  # training time of its epochs, all runs


@dataclass(frozen=True)
class ForeignTrial:
    """A stored trial that this installation cannot compute (see ``foreign_trials``)."""

    key: str
    what: str  # "model toy@toyvae==0.1#code=3f2a9c1b7e04"
    status: Status
    epochs_done: int


def foreign_words(foreign: Sequence[ForeignTrial]) -> str | None:
    """``3 trials of model toy@toyvae==0.1#code=... left out: ...``, or None."""
    if not foreign:
        return None
    whats = sorted({t.what for t in foreign})
    named = "; ".join(whats[:3]) + (f"; and {len(whats) - 3} more" if len(whats) > 3 else "")
    return (
        f"{len(foreign)} trials of {named} left out: not installed here, or not in that "
        "version or with that code (their rows are kept; install it as it was to see them)"
    )


class ReaderMixin(StoreBase):
    """Queries: what the driver, ``status``, the report and the API read."""

    def trials(self) -> list[TrialInfo]:
        """Every trial in the database, each checked: a key of ours, a config that hashes to
        it, a status of ours.

        Raises:
            InputError: a row was edited by hand (or by anything but vaegrid).
        """
        return list(self._trials()[0])

    def foreign_trials(self) -> list[ForeignTrial]:
        """The trials of a plug-in that is not installed here, or not in the version or
        with the code that computed them (study/core.py NotInstalled): kept in the database,
        left out of everything but these counts."""
        return list(self._trials()[1])

    def trials_and_foreign(self) -> tuple[list[TrialInfo], list[ForeignTrial]]:
        """:meth:`trials` and :meth:`foreign_trials` from one read of the table (each row
        checked once)."""
        found, foreign = self._trials()
        return list(found), list(foreign)

    def _trials(self) -> tuple[list[TrialInfo], list[ForeignTrial]]:
        if self._snapshot is not None and "trials" in self._memo:  # one moment, checked once
            return self._memo["trials"]
        found, foreign = [], []
        t = TrialRow.__table__.c
        with self.session() as s:
            rows = s.execute(select(t.key, t.status, t.config, t.epochs_done, t.seconds)).all()
            _read_all(rows)  # every config at once; one by one below only if one is wrong
            for r in rows:
                status = parse(r.status, f"{self.path}: trial {r.key}")
                cfg = _config(self.path, r.key, r.config)
                if isinstance(cfg, str):
                    foreign.append(ForeignTrial(r.key, cfg, status, r.epochs_done))
                else:
                    found.append(TrialInfo(r.key, cfg, status, r.epochs_done, r.seconds))
        if self._snapshot is not None:
            self._memo["trials"] = (found, foreign)
        return found, foreign

    def status_of(self, key: str) -> Status:
        with self.session() as s:
            row = s.get(TrialRow, key)
            assert row is not None
            return parse(row.status, f"{self.path}: trial {key}")

    def trial_progress(self, keys: Sequence[str]) -> dict[str, tuple[int, float, str | None]]:
        """Each trial's finished epochs, their training seconds (all runs) and the device
        kind it is bound to (None: no epoch yet), in one query (a turn's ended trials)."""
        t, d = TrialRow.__table__.c, TrialDeviceRow.__table__.c
        with self.session() as s:
            found = s.execute(
                select(t.key, t.epochs_done, t.seconds, d.device_kind)
                .outerjoin_from(TrialRow.__table__, TrialDeviceRow.__table__, d.key == t.key)
                .where(t.key.in_(list(keys)))
            )
            return {r[0]: (int(r[1]), float(r[2]), r[3]) for r in found}

    def trial_devices(self) -> dict[str, str]:
        """The device kind each started trial is bound to (see :class:`TrialDeviceRow`)."""
        with self.session() as s:
            return {r.key: r.device_kind for r in s.scalars(select(TrialDeviceRow))}

    def stopped_rungs(self) -> dict[str, int]:
        """The rung each stopped trial was stopped at."""
        with self.session() as s:
            return {r.key: r.rung for r in s.scalars(select(StopRow))}

    def rung_values(
        self, metric: str, epochs: Sequence[int]
    ) -> tuple[dict[str, tuple[Status, int, str | None]], dict[str, dict[int, float]]]:
        """What the halving rule reads: every trial's (status, epochs_done, cause), and its
        validation ``metric`` ("val_elbo", "val_recon" or "val_nll") at each of ``epochs``,
        every row checked (a forged value must not decide a rung)."""
        column = {"val_elbo": "elbo", "val_recon": "recon", "val_nll": "nll"}[metric]
        with self.snapshot():  # the epochs and the progress of one moment
            trial_rows = self.frame("vg_trial")
            epoch_rows = self.frame("vg_nll" if metric == "val_nll" else "vg_epoch")
        rows = {
            r["key"]: (Status(r["status"]), int(r["epochs_done"]), r["cause"])
            for r in trial_rows.to_dict("records")
        }
        values: dict[str, dict[int, float]] = defaultdict(dict)
        at = epoch_rows[epoch_rows["epoch"].isin(list(epochs))]
        if metric != "val_nll":
            at = at[at["split"] == "val"]
        for r in at.to_dict("records"):
            values[r["key"]][int(r["epoch"])] = float(r[column])
        return rows, dict(values)

    def live_driver(self, timeout: float) -> DriverRow | None:
        """The driver whose heartbeat is younger than ``timeout`` seconds, if any."""
        import time

        with self.session() as s:
            row = s.scalars(select(DriverRow)).first()
            if row is None or time.time() - row.beat > timeout:
                return None
            s.expunge(row)
            return row

    def runs(self) -> list[dict[str, Any]]:
        """Every run, oldest first, with its provenance (device_kind, host, versions); the
        runs of foreign trials (``foreign_trials``) left out, as every frame leaves them."""
        with self.snapshot(), self.session() as s:
            self.frame("vg_run")  # every row checked
            other = {t.key for t in self.foreign_trials()}
            old = not schema.has_column(s.connection(), ProvenanceRow.__tablename__, "run_id")
            p = ProvenanceRow.__table__.c  # rows, not ORM objects: 100,000 runs in 1 s
            named = select(p.run_id, p.device_kind, p.host, p.versions, p.peak_device_mb)
            prov = {} if old else {r[0]: r[1:] for r in s.execute(named)}
            versions: dict[str, Any] = {}  # a few distinct texts: each parsed once
            out = []
            runs = select(*RunRow.__table__.columns).order_by(RunRow.id)
            for r in s.execute(runs).mappings():
                if r["key"] in other:
                    continue
                row = dict(r)
                kind, host, text, peak = prov.get(r["id"], (None, None, None, None))
                if isinstance(text, str) and text not in versions:
                    versions[text] = json_or_none(text)
                found = versions.get(text) if isinstance(text, str) else None
                # each run its own: a copy when flat, else parsed again
                own = dict(found) if _flat(found) else json_or_none(text) if text else None
                row.update(device_kind=kind, host=host, versions=own, peak_device_mb=peak)
                out.append(row)
            return out

    def running_devices(self) -> dict[str, str]:
        """The device of every run still open (trial key -> device), read without pandas
        (``status``); a device that is not a short printable name shows as ``?``."""
        with self.session() as s:
            open_runs = select(RunRow.key, RunRow.device).where(RunRow.status == RUNNING.value)
            rows = s.execute(open_runs)
            return {
                key: device if isinstance(device, str) and device.isprintable()
                and len(device) <= 64 else "?"
                for key, device in rows
            }  # fmt: skip

    def frame(self, table: str) -> pd.DataFrame:
        """A whole vaegrid table (``vg_trial``, ``vg_epoch``, ``vg_run``, ``vg_test``), with
        the columns of this vaegrid's schema (a reader of an older database migrates nothing).
        """
        import pandas as pd

        if table not in Base.metadata.tables:
            raise KeyError(table)
        columns = Base.metadata.tables[table].columns
        with self.snapshot() as con:  # the table and the trials it is checked against
            if not self.engine.dialect.has_table(con, table):  # a table older versions lack
                return pd.DataFrame(columns=[c.name for c in columns])
            frame = _read_frame(con, columns)
            if table in CHECKED:
                trials, foreign = self._trials()
                configs = {t.key: t.config for t in trials}
                statuses = {t.key: t.status for t in trials}
                done = {t.key: t.epochs_done for t in trials}
                other = {t.key for t in foreign}  # another computation's rows: left out
                if other:
                    frame = frame[~frame["key"].isin(other)].reset_index(drop=True)
                if table != "vg_trial" and "vg_trial" not in self._memo:  # once a snapshot
                    raw = _read_frame(con, TrialRow.__table__.columns)
                    raw = raw[~raw["key"].isin(other)] if other else raw
                    check(self.path, "vg_trial", raw, configs, statuses, done)
                    self._memo["vg_trial"] = True
                k = self.fingerprint().nll_samples if table == "vg_nll" else 0
                check(self.path, table, frame, configs, statuses, done, k)
                self._memo[table] = True  # checked in this snapshot
        return frame

    def fingerprint(self) -> Fingerprint:
        """The stored study's fixed settings (its ``[halving]`` among them, if any), checked
        (study/fingerprint.py)."""
        with self.session() as s:
            return Fingerprint.read(s.scalars(select(StudyRow.fingerprint)).first(), self.path)

    def study_row(self) -> tuple[str, int]:
        """The stored study's name, and the slots of its last run.

        Like every query here, it names its columns: a reader also reads databases of
        older schema versions, which it never migrates.
        """
        with self.session() as s:
            row = s.execute(select(StudyRow.name, StudyRow.slots)).first()
            if row is None:
                raise InputError(f"{self.path}: holds no vaegrid study")
            return row[0], row[1]

    def created_schema(self) -> int:
        """The schema version this database was made at (version 1's final weights carry no
        identity: report.py accepts them only from such a study)."""
        from vaegrid.db.schema import created_schema

        with self.snapshot() as con:
            return created_schema(con)

    def study_description(self) -> str | None:
        """The study file's ``description`` (None: it has none), for report.md."""
        with self.session() as s:
            if not schema.has_column(s.connection(), "vg_study", "description"):
                return None
            found = s.scalars(select(StudyRow.description)).first()
        if found is not None and not isinstance(found, str):
            raise InputError(f"{self.path}: the stored study's description is not text (edited?)")
        return found or None


# The configs read so far, by (key, stored JSON): what _config makes of them depends on
# nothing else (the plug-ins installed are read once, at import), so a second read of the
# same rows (report's, after its test writes) does not parse and check 100,000 configs
# again. Emptied past CONFIGS_KEPT.
_READ: dict[tuple[str, str], TrialConfig | str] = {}
CONFIGS_KEPT = 200_000  # about 2.4 KB each


def _read_frame(con: Connection, columns: Any) -> pd.DataFrame:
    """``SELECT columns`` as a frame, through the driver's own cursor in ``con``'s
    transaction: the frame pandas' read_sql_query makes, in half its time (2,000,000 epoch
    rows: 3.3 s, not 7.2; SQLAlchemy's rows were the rest)."""
    import pandas as pd

    cursor = con.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(str(select(*columns).compile(con)))
        rows = cursor.fetchall()
    finally:
        cursor.close()
    return pd.DataFrame.from_records(rows, columns=[c.name for c in columns], coerce_float=True)


def already_read(key: object, text: object) -> TrialConfig | None:
    """The config of a stored row this process has read and checked, else None."""
    found = _READ.get((key, text)) if isinstance(key, str) and isinstance(text, str) else None
    return found if isinstance(found, TrialConfig) else None


def _read_all(rows: Sequence[Any]) -> None:
    """Parse the configs of ``rows`` (each with a key and a config) not read yet, and keep
    them when every one is well-formed, hashes to its key and :func:`configs_pass` passes
    them all; keep none when one is not (_config then looks at each, and names it)."""
    parsed = []
    pairs = [
        (r.key, r.config) for r in rows if isinstance(r.key, str) and isinstance(r.config, str)
    ]
    for key, text in dict.fromkeys(pairs):  # in the rows' order, each pair once
        if (key, text) not in _READ:
            cfg = _parsed(key, text)
            if isinstance(cfg, TrialConfig):  # else a plug-in not installed, or edited: alone
                parsed.append((key, text, cfg))
    if parsed and configs_pass([cfg for _, _, cfg in parsed]):
        _keep({(key, text): cfg for key, text, cfg in parsed})


def _keep(read: dict[tuple[str, str], TrialConfig | str]) -> None:
    """Remember configs read (emptied first when they would pass CONFIGS_KEPT)."""
    if len(_READ) + len(read) > CONFIGS_KEPT:
        _READ.clear()
    _READ.update(read)


def _config(path: str, key: str, text: str) -> TrialConfig | str:
    """A stored trial's config, refused unless it is well-formed and hashes to its key; or,
    for a plug-in not installed here (in that version, with that code), which one it is."""
    if isinstance(key, str) and isinstance(text, str):
        found = _READ.get((key, text))
        if found is None:
            found = _checked_config(path, key, text)
            _keep({(key, text): found})
        return found
    return _checked_config(path, key, text)


def _checked_config(path: str, key: str, text: str) -> TrialConfig | str:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise InputError(f"{path}: vg_trial holds a key {key!r} that vaegrid never makes")
    cfg = _parsed(key, text)
    if isinstance(cfg, NotInstalled):  # kept aside if its key is its JSON's hash
        raw = json.dumps(json.loads(text), sort_keys=True)
        if hashlib.sha256(raw.encode()).hexdigest()[:12] == key:
            return str(cfg)
    if isinstance(cfg, NotInstalled | _NotItsKey):
        raise InputError(f"{path}: trial {key}: stored config does not hash to its key (edited?)")
    if isinstance(cfg, Exception):  # anything a hand-edited JSON can raise
        raise InputError(f"{path}: trial {key}: stored config is not valid ({cfg})")
    problem = config_problem(cfg)
    if problem is not None:
        raise InputError(f"{path}: trial {key}: stored config is not valid ({problem})")
    return cfg


class _NotItsKey(ValueError):
    """A stored config that is a config, but not the one its key is the hash of."""


def _parsed(key: str, text: str) -> TrialConfig | Exception:
    """A stored config that hashes to its key, or what was wrong with it."""
    try:
        cfg = TrialConfig.from_json(text)
        return cfg if cfg.key == key else _NotItsKey()
    except Exception as e:  # anything a hand-edited JSON can raise
        return e


def _flat(value: Any) -> TypeGuard[dict[str, Any]]:
    """A dict of strings and numbers (a run's versions): a copy of it is all its own."""
    return isinstance(value, dict) and all(isinstance(v, str | int | float) for v in value.values())


def json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
