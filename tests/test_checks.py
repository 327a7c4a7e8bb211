"""db/checks.py's fast path: a table it passes whole is one the row-by-row checks pass.

The screen (``_passes``) decides, column by column, that no row needs looking at; the
row-by-row checks stay the authority on what is refused. So, over thousands of tables
with one thing wrong (text, NULL, infinity, a bool, out of range, a row doubled, an
epoch missing, an unknown key...), the screen must never pass one the checks refuse, and
it must pass the well-formed ones (else every read is the slow path).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from vaegrid.db import checks
from vaegrid.errors import InputError
from vaegrid.status import Status
from vaegrid.study.core import DataSpec, TrialConfig

EPOCHS = 3
CONFIGS = {c.key: c for c in (TrialConfig.make(0, DataSpec(), hidden=h, epochs=EPOCHS)
                              for h in (8, 16, 32, 64))}  # fmt: skip
KEYS = list(CONFIGS)
STATUSES = dict(zip(KEYS, [Status.COMPLETED, Status.COMPLETED, Status.RUNNING, Status.PENDING],
                    strict=True))  # fmt: skip
DONE = dict(zip(KEYS, [EPOCHS, EPOCHS, 1, 0], strict=True))
K = 5  # the study's [rank] nll_samples


def _tables() -> dict[str, pd.DataFrame]:
    """Every checked table of a well-formed study of four trials."""
    epochs = [{"key": k, "epoch": e, "split": s, "elbo": 100.0 + e, "recon": 90.0 + e,
               "kl": 10.0, "seconds": 0.5}
              for k in KEYS for e in range(1, DONE[k] + 1) for s in ("train", "val")]  # fmt: skip
    return {
        "vg_trial": pd.DataFrame(
            {
                "key": KEYS,
                "status": [s.value for s in STATUSES.values()],
                "epochs_done": [DONE[k] for k in KEYS],
                "seconds": [1.5, 2.0, 0.5, 0.0],
            }
        ),
        "vg_epoch": pd.DataFrame(epochs),
        "vg_run": pd.DataFrame(
            {
                "key": KEYS[:3],
                "status": ["completed", "completed", "running"],
                "started": [1.7e9, 1.7e9 + 5, 1.7e9 + 9],
                "ended": [1.7e9 + 4, 1.7e9 + 8, math.nan],
            }
        ),
        "vg_test": pd.DataFrame(
            {
                "key": KEYS[:2],
                "elbo": [101.0, 102.0],
                "recon": [91.0, 92.0],
                "kl": [10.0, 10.0],
                "nll": [99.0, 98.5],
                "seconds": [3.0, 3.1],
                "evaluated": [1.7e9, 1.7e9],
                "nll_samples": [K, K],
            }
        ),
        "vg_nll": pd.DataFrame(
            {
                "key": [KEYS[0], KEYS[1], KEYS[2]],
                "epoch": [EPOCHS, EPOCHS, 1],
                "nll": [99.0, 98.0, 120.0],
                "samples": [K, K, K],
                "seconds": [1.0, 1.0, 1.0],
            }
        ),
        "vg_stop": pd.DataFrame({"key": [KEYS[2]], "rung": [1]}),
    }


def _refused(table: str, frame: pd.DataFrame) -> bool:
    """Whether the row-by-row checks refuse ``frame`` (the screen not asked)."""
    rows = [{str(k): v for k, v in r.items()} for r in frame.to_dict("records")]
    t = checks._Table("db", table, rows, CONFIGS, STATUSES, DONE, K)
    try:
        if table != "vg_trial":
            t.known()
        checks._CHECKS[table](t)
    except InputError:
        return True
    except KeyError:  # a vg_trial key not among the configs read from vg_trial: never read
        return table == "vg_trial"
    return False


def _screen(table: str, frame: pd.DataFrame) -> bool:
    return checks._passes(table, frame, CONFIGS, STATUSES, DONE, K)


BAD_VALUES: list[Any] = [
    "x",
    None,
    math.nan,
    math.inf,
    -math.inf,
    True,
    -1,
    -1e-3,
    0,
    1e31,
    -1e31,
    2.5,
    10**12,
    "train",
    "val",
    "completed",
    "zzzzzzzzzzzz",
    1.7e9,
    4.0,
    EPOCHS + 1,
    K + 1,
]


def _broken(tables: dict[str, pd.DataFrame], rng: random.Random) -> tuple[str, pd.DataFrame]:
    """One table with one thing wrong (or, by chance, still right)."""
    table = rng.choice(list(tables))
    frame = tables[table].copy()
    if frame.empty:
        return table, frame
    what = rng.randrange(4)
    if what == 0:  # a row doubled
        i = rng.randrange(len(frame))
        frame = pd.concat([frame, frame.iloc[[i]]], ignore_index=True)
    elif what == 1:  # a row gone
        frame = frame.drop(index=rng.randrange(len(frame))).reset_index(drop=True)
    else:  # a value changed (a column of objects, as SQLite hands back a mixed column)
        column = rng.choice(list(frame.columns))
        values = frame[column].astype(object).tolist()
        values[rng.randrange(len(values))] = rng.choice([*BAD_VALUES, *KEYS])
        try:
            frame[column] = pd.Series(values).infer_objects()
        except (TypeError, ValueError):
            frame[column] = pd.Series(values, dtype=object)
    return table, frame


def test_the_screen_passes_a_well_formed_study_whole() -> None:
    for table, frame in _tables().items():
        assert not _refused(table, frame), table
        assert _screen(table, frame), table  # else every read walks its rows


def test_the_screen_never_passes_a_table_the_checks_refuse() -> None:
    rng, tables = random.Random(0), _tables()
    refused = 0
    for _ in range(3000):
        table, frame = _broken(tables, rng)
        if _refused(table, frame):
            refused += 1
            assert not _screen(table, frame), (table, frame.to_dict("records"))
    assert refused > 1500  # the corruptions do reach the checks


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("vg_epoch", "elbo", 1e-7),  # elbo not recon + kl
        ("vg_epoch", "epoch", 2.5),
        ("vg_epoch", "split", "test"),
        ("vg_trial", "epochs_done", 2),  # a completed trial short of its epochs
        ("vg_run", "ended", 1.7e9 - 7200),  # ended two hours before it started
        ("vg_nll", "samples", K + 1),  # not the study's k
        ("vg_stop", "rung", EPOCHS + 1),
        ("vg_test", "nll", -0.5),
    ],
)
def test_one_wrong_value_sends_the_table_to_the_checks_that_name_it(
    table: str, column: str, value: Any
) -> None:
    frame = _tables()[table]
    if isinstance(value, float) and frame[column].dtype.kind == "i":
        frame[column] = frame[column].astype(float)  # as SQLite hands back 2.5 among ints
    frame.loc[0, column] = value
    assert not _screen(table, frame)
    with pytest.raises(InputError, match=f"column {column}"):
        checks.check("db", table, frame, CONFIGS, STATUSES, DONE, K)


def test_a_trial_missing_one_epoch_of_one_split_is_refused() -> None:
    epochs = _tables()["vg_epoch"]
    epochs = epochs[
        ~((epochs["key"] == KEYS[0]) & (epochs["epoch"] == 2) & (epochs["split"] == "val"))
    ]
    assert not _screen("vg_epoch", epochs)
    with pytest.raises(InputError, match="epoch 2 val"):
        checks.check("db", "vg_epoch", epochs, CONFIGS, STATUSES, DONE, K)
    assert np.isfinite(epochs["elbo"]).all()


def test_configs_read_at_once_never_pass_one_that_alone_is_refused() -> None:
    """study/stored.py: configs_pass answers for a table of configs; the reader looks at
    each alone (config_problem, which names what is wrong) only when it says no."""
    from vaegrid.study.stored import config_problem, configs_pass

    good = [TrialConfig.make(0, DataSpec(), hidden=h, latent=z, repeat=r)
            for h in (8, 400) for z in (2, 50) for r in (0, 1)]  # fmt: skip
    assert configs_pass(good) and all(config_problem(c) is None for c in good)
    changes: list[dict[str, Any]] = [
        {"hidden": -4}, {"repeat": 10**9}, {"repeat": 1.0}, {"momentum": 0.9},
        {"batch_size": 10**6}, {"seed": -1}, {"optimizer": "rm -rf"}, {"beta": math.nan},
        {"hidden": [8]}, {"hidden": True}, {"hidden": 16384, "latent": 4096},
        {"batch_size": 60000}, {"model": "conv", "channels": 512, "hidden": 400, "latent": 100},
        {"depth": 3}, {"data": DataSpec(limit=10**9)}, {"data": "mnist"},
        {"hidden": 8.0}, {"repeat": [1]}, {"seed": 0.0}, {"data": DataSpec(limit=0.0)},
    ]  # fmt: skip
    for change in changes:
        forged = good[3].replace(**change)
        assert config_problem(forged) is not None, change  # one the checks refuse
        assert not configs_pass([*good, forged]), change
        assert not configs_pass([forged, *good]), change


def test_a_well_formed_table_of_configs_is_read_without_one_looked_at_alone(
    write_study: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import synced_study_db

    from vaegrid.db import reader
    from vaegrid.db.store import Store

    study_dir = tmp_path / "r" / "tiny"
    synced_study_db(write_study(), study_dir)
    alone: list[str] = []
    real = reader.config_problem
    monkeypatch.setattr(reader, "config_problem", lambda c: alone.append(c.key) or real(c))
    monkeypatch.setattr(reader, "_READ", {})
    store = Store.reader(study_dir / "study.db")
    try:
        assert len(store.trials()) == 4 and alone == []
        reader._READ.clear()
        monkeypatch.setattr(reader, "configs_pass", lambda configs: False)  # as if one were wrong
        assert len(store.trials()) == 4 and len(alone) == 4
    finally:
        store.close()


def test_typed_keys_tell_apart_what_compares_equal() -> None:
    """0, 0.0, -0.0 and False compare and hash equal: a cache keyed on them would give a
    config whose data says limit = 0.0 the data (and key) of limit = 0's."""
    from vaegrid.study.core import data_dict, typed
    from vaegrid.study.stored import config_problem, configs_pass

    kinds = [typed(v) for v in (0, 0.0, -0.0, False)]
    assert len(set(kinds)) == 4 and typed((1, 2.0)) != typed((1, 2))
    assert typed(DataSpec(limit=0)) != typed(DataSpec(limit=0.0))
    assert data_dict(DataSpec(limit=0))["limit"] == 0
    assert type(data_dict(DataSpec(limit=0.0))["limit"]) is float  # not the cached int's
    genuine = TrialConfig.make(0, DataSpec(limit=0), hidden=8)
    forged = TrialConfig.make(0, DataSpec(limit=0.0), hidden=16)
    assert config_problem(genuine) is None and config_problem(forged) is not None
    assert not configs_pass([genuine, forged]) and not configs_pass([forged, genuine])
    with pytest.raises(TypeError):  # a list stays unhashable: refused, not cached
        hash(typed(DataSpec(limit=[1])))  # type: ignore[arg-type]


def _edited_row(
    study_dir: Any, edit: Callable[[dict[str, Any]], None], rekey: bool, last: bool = False
) -> str:
    """A synced tiny study whose first (or last) trial's stored config was edited by
    ``edit``; its key made the hash of the new text when ``rekey``. Returns that key."""
    import hashlib
    import json
    import sqlite3

    from vaegrid.db import reader

    con = sqlite3.connect(study_dir / "study.db")
    order = "DESC" if last else "ASC"
    key, text = con.execute(f"SELECT key, config FROM vg_trial ORDER BY key {order}").fetchone()
    raw = json.loads(text)
    edit(raw)
    edited = json.dumps(raw, sort_keys=True)
    new_key = hashlib.sha256(edited.encode()).hexdigest()[:12] if rekey else key
    con.execute("UPDATE vg_trial SET key = ?, config = ? WHERE key = ?", (new_key, edited, key))
    con.commit()
    con.close()
    reader._READ.clear()
    return new_key


@pytest.mark.parametrize(
    ("data", "problem"),
    [({"limit": 0.0}, "data.limit = 0.0"), ({"limit": [1]}, "stored config is not valid")],
)
def test_a_stored_config_whose_data_only_compares_equal_is_refused_by_its_own_key(
    write_study: Any, tmp_path: Any, data: dict[str, Any], problem: str
) -> None:
    from conftest import synced_study_db

    from vaegrid.db.store import Store

    study_dir = tmp_path / "r" / "tiny"
    synced_study_db(write_study(), study_dir)
    forged_key = _edited_row(study_dir, lambda raw: raw["data"].update(data), True, last=True)
    store = Store.reader(study_dir / "study.db")  # the forged row hashes to its own key
    try:
        with pytest.raises(InputError, match=f"trial {forged_key}: .*{re.escape(problem)}"):
            store.trials()
    finally:
        store.close()


@pytest.mark.parametrize(
    ("model", "rekey", "outcome"),
    [
        (None, False, "stored config does not hash to its key"),  # edited, key left
        ("toy@toyvae==0.1#code=0123456789ab", True, "foreign"),  # a plug-in not installed
        ("toy@toyvae==0.1#code=0123456789ab", False, "stored config does not hash to its key"),
        ("no such model", True, "stored config is not valid"),
    ],
)
def test_a_stored_config_is_its_keys_a_plugins_kept_aside_or_refused_in_one_line(
    write_study: Any, tmp_path: Any, model: str | None, rekey: bool, outcome: str
) -> None:
    from conftest import synced_study_db

    from vaegrid.db.store import Store

    def edit(raw: dict[str, Any]) -> None:
        raw["hidden"] += 1
        if model is not None:
            raw["model"] = model

    study_dir = tmp_path / "r" / "tiny"
    synced_study_db(write_study(), study_dir)
    new_key = _edited_row(study_dir, edit, rekey)
    store = Store.reader(study_dir / "study.db")
    try:
        if outcome == "foreign":
            found, foreign = store.trials_and_foreign()
            assert [f.key for f in foreign] == [new_key] and len(found) == 3
            assert foreign[0].what == "model toy@toyvae==0.1#code=0123456789ab"
        else:
            with pytest.raises(InputError, match=f"trial {new_key}: {outcome}"):
                store.trials()
    finally:
        store.close()
