"""Every query a sweep, ``status``, ``report`` and ``vaegrid.load`` make with a WHERE clause
finds its rows by an index: SQLite's plan for it (EXPLAIN QUERY PLAN) scans no table that
grows with the study. A study of 100,000 trials must not read all of vg_run to find the
few that run."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import run_inline
from sqlalchemy import event
from sqlalchemy.engine import Engine

import vaegrid
from vaegrid.cli import main

# Tables whose rows grow with the trials, runs and epochs of a study (vaegrid's and
# Optuna's); the others hold a row or a few per study.
GROWING = {
    "vg_trial", "vg_run", "vg_provenance", "vg_claim", "vg_trial_device", "vg_epoch",
    "vg_stop", "vg_nll", "vg_test", "trials", "trial_params", "trial_values",
    "trial_intermediate_values", "trial_user_attributes", "trial_system_attributes",
    "trial_heartbeats",
}  # fmt: skip
# Reads of a row of every trial, once per driver start (optuna_align: Optuna's trials by
# vaegrid key): a scan is what they are. Optuna's table, whose indexes are Optuna's.
WHOLE_STUDY = {"SELECT trial_id, value_json FROM trial_user_attributes WHERE key = 'key'"}


def test_every_query_with_a_condition_finds_its_rows_by_an_index(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    def record(con: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        words = " ".join(statement.split()).upper()
        if words.startswith(("SELECT", "UPDATE", "DELETE")) and " WHERE " in words:
            seen.setdefault(statement, params)

    study = write_study(epochs=2)
    results = tmp_path / "r"
    event.listen(Engine, "before_cursor_execute", record)
    try:
        assert run_inline(study, results, mnist_root) == 0
        assert main(["status", str(results / "tiny")]) == 0
        report = ["report", str(results / "tiny"), "--data-dir", str(mnist_root)]
        assert main([*report, "--nll-samples", "5"]) == 0
        vaegrid.load(results, "tiny")
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert len(seen) > 10, sorted(seen)  # the capture saw the store's queries
    con = sqlite3.connect(results / "tiny" / "study.db")
    scans = []
    for statement, params in seen.items():
        for *_, detail in con.execute("EXPLAIN QUERY PLAN " + statement, params or ()):
            found = re.match(r"SCAN (\w+)", detail)
            if found and found.group(1) in GROWING and statement not in WHOLE_STUDY:
                scans.append(f"{detail}: {' '.join(statement.split())[:160]}")
    assert not scans, "\n".join(scans)
