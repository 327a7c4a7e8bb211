"""A study's fingerprint (study/fingerprint.py), its one owner: made from a study, its model
entry true for every model, read back checked, and compared with the shrunk-grid and
older-vaegrid rules."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import synced_study_db

from vaegrid.cli import main
from vaegrid.errors import InputError
from vaegrid.study.fingerprint import LEGACY_MODEL, Fingerprint
from vaegrid.study.load import load_study


def study(write_study: Callable[..., Path], extra: str = "", grid: str = "") -> Path:
    text = write_study().read_text().replace("[train]", f"[train]\n{extra}")
    return write_study(text.replace("[grid]", f"[grid]\n{grid}"))


def test_the_model_entry_is_the_fixed_models_version_and_absent_when_searched(
    write_study: Callable[..., Path],
) -> None:
    linear = Fingerprint.of(load_study(study(write_study)))
    conv = Fingerprint.of(load_study(study(write_study, 'model = "conv"\nchannels = 4')))
    both = Fingerprint.of(load_study(study(write_study, grid='model = ["linear", "mlp"]')))
    assert (linear["model"], conv["model"], "model" in both) == (
        "linear-vae-2", "conv-vae-1", False)  # fmt: skip
    assert "model" in both.searched and both["searched"] == ["model"]
    assert Fingerprint.read(conv.text(), "db") == conv


def test_an_older_vaegrids_model_entry_matches_any_model(
    write_study: Callable[..., Path],
) -> None:
    """Before the entry was true every study stored linear-vae-2: a conv study's database
    from then is this study's; a conv database is not an mlp study's."""
    conv = load_study(study(write_study, 'model = "conv"\nchannels = 4'))
    old = Fingerprint(dict(Fingerprint.of(conv)) | {"model": LEGACY_MODEL})
    assert old.differences(conv) == []
    mlp = load_study(study(write_study, 'model = "mlp"'))
    assert "model: stored \"conv-vae-1\", study file \"mlp-vae-1\"" in (
        Fingerprint.of(conv).differences(mlp))  # fmt: skip


@pytest.mark.parametrize(
    ("part", "value", "said"),
    [
        ("halving", {"rungs": [3, 1], "keep": 0.5, "metric": "val_elbo"}, "halving"),
        ("halving", {"rungs": [1], "keep": 2, "metric": "val_elbo"}, "halving"),
        ("halving", {"rungs": [1], "keep": 0.5, "metric": "test_elbo"}, "halving"),
        ("searched", ["model; drop"], "searched"),
        ("rank", {"nll_samples": -1}, "rank.nll_samples"),
    ],
)
def test_a_tampered_fingerprint_is_refused_in_one_line_by_status(
    write_study: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    part: str,
    value: object,
    said: str,
) -> None:
    """A halving rung list out of order used to be a KeyError or a wrong plan; every part
    a reader uses is checked once, where it is read."""
    db = synced_study_db(study(write_study), tmp_path / "r" / "tiny")
    with sqlite3.connect(db) as con:
        (text,) = con.execute("SELECT fingerprint FROM vg_study").fetchone()
        con.execute("UPDATE vg_study SET fingerprint = ?",
                    (json.dumps(json.loads(text) | {part: value}),))  # fmt: skip
    assert main(["status", str(tmp_path / "r" / "tiny")]) == 2
    err = capsys.readouterr().err
    assert f"the stored study's {said} = " in err and err.count("\n") == 1, err
    with pytest.raises(InputError, match="edited"):
        Fingerprint.read(json.dumps({"train": []}), "db")
