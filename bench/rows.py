"""Dump what a study computed, exactly, for comparing two versions of vaegrid.

    python bench/rows.py RESULTS/STUDY/study.db > rows.json

Every per-epoch row (floats as hex: bit for bit), each trial's end, halving's stops and
Optuna's ledger (params, state, value, intermediate values). Timings are left out: they
differ run to run. Reads the SQLite file with the standard library only, so the same
script reads a database of any vaegrid version. ``make identity BASE=...`` runs the smoke,
halving and binarized smoke studies and compares their dumps with another checkout's.
"""

from __future__ import annotations

import json
import sqlite3
import sys

KEY = (
    "(SELECT value_json FROM trial_user_attributes a WHERE a.trial_id = t.trial_id "
    "AND a.key = 'key')"
)


def _hex(x: object) -> object:
    return float(x).hex() if isinstance(x, float) else x


def dump(path: str) -> dict[str, object]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    q = lambda sql: [tuple(_hex(v) for v in r) for r in con.execute(sql)]  # noqa: E731
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    out: dict[str, object] = {
        "epochs": q(
            "SELECT key, epoch, split, elbo, recon, kl FROM vg_epoch ORDER BY key, epoch, split"
        ),
        "trials": q(
            "SELECT key, config, status, epochs_done, cause, diverged_epoch FROM vg_trial "
            "ORDER BY key"
        ),
        "stops": q("SELECT key, rung FROM vg_stop ORDER BY key") if "vg_stop" in tables else [],
        # Optuna's trials by vaegrid key (their numbers follow the order trials started in).
        "optuna": q(
            f"SELECT {KEY}, t.state, v.value FROM trials t LEFT JOIN trial_values v "
            "ON v.trial_id = t.trial_id ORDER BY 1, t.state"
        ),
        "params": q(
            f"SELECT {KEY}, p.param_name, p.param_value, p.distribution_json "
            "FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id ORDER BY 1, 2, 3"
        ),
        "intermediate": q(
            f"SELECT {KEY}, i.step, i.intermediate_value FROM trial_intermediate_values i "
            "JOIN trials t ON t.trial_id = i.trial_id ORDER BY 1, 2, 3"
        ),
    }
    return out


if __name__ == "__main__":
    json.dump(dump(sys.argv[1]), sys.stdout, indent=0, sort_keys=True)
    print()
