from __future__ import annotations

import importlib.metadata
import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import sweep, synced_study_db
from PIL import Image
from test_tables import trials_frame

import vaegrid
from vaegrid.analysis import tables
from vaegrid.analysis.tables import rank
from vaegrid.cli import main
from vaegrid.db.store import Store
from vaegrid.halving import Standing
from vaegrid.layout import StudyLayout, TrialFiles
from vaegrid.models.linear import LinearVAE as VAE
from vaegrid.report.build import make_report
from vaegrid.report.halving_section import halving_lines
from vaegrid.report.markdown import markdown
from vaegrid.study.core import DataSpec, HalvingSpec, TrialConfig
from vaegrid.train.data import load_splits
from vaegrid.train.model import importance_nll
from vaegrid.train.trial import evaluate, run_trial

STUDY = """
name = "rep"
[data]
fractions = [0.6, 0.2, 0.2]
[train]
epochs = 3
batch_size = 50
[grid]
hidden = [32]
latent = [4, 8]
lr = [1e-2, 1e3]
clip = [1.0]
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """A finished 4-trial study: 2 completed, 2 diverged (lr = 1e3)."""
    root = tmp_path_factory.mktemp("swept")
    sweep(root, STUDY, mnist_root)
    return root / "r" / "rep"


@pytest.fixture
def study_dir(swept: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(swept, tmp_path / "rep"))


PARAMS = ["hidden", "latent", "lr", "clip"]
HEAD = ["key", "config", "repeat", *PARAMS]  # trials.csv's and epochs.csv's first columns


def frames(
    statuses: list[str], val_elbo: list[float], val_recon: list[float]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    keys = [f"k{i}" for i in range(len(statuses))]
    trials = pd.DataFrame(
        {"key": keys, "config": keys, "repeat": 0, "hidden": 8, "latent": 2, "lr": 0.1,
         "clip": 1.0, "status": statuses,
         "epochs_done": 2, "seconds": 1.0, "cause": None}
    )  # fmt: skip
    rows = []
    for key, elbo, recon in zip(keys, val_elbo, val_recon, strict=True):
        for split in ("train", "val"):
            rows.append(
                {
                    "key": key,
                    "epoch": 1,
                    "split": split,
                    "elbo": elbo + 50,
                    "recon": recon + 40,
                    "kl": 10.0,
                }
            )
            rows.append(
                {
                    "key": key,
                    "epoch": 2,
                    "split": split,
                    "elbo": elbo,
                    "recon": recon,
                    "kl": elbo - recon,
                }
            )
    return trials, pd.DataFrame(rows)


def test_ties_share_the_lowest_rank_and_unfinished_trials_rank_last() -> None:
    trials, epochs = frames(
        ["completed", "diverged", "completed", "completed", "failed", "completed"],
        [100.0, 90.0, 95.0, 100.0, 80.0, 120.0],
        [70.0, 60.0, 75.0, 70.0, 50.0, 69.0],
    )
    ranked = rank(trials, epochs, PARAMS).set_index("key")
    assert ranked["rank_val_elbo"].to_dict() == {
        "k2": 1,
        "k0": 2,
        "k3": 2,
        "k5": 4,
        "k1": 5,
        "k4": 5,
    }
    assert ranked["rank_val_recon"].to_dict() == {
        "k5": 1,
        "k0": 2,
        "k3": 2,
        "k2": 4,
        "k1": 5,
        "k4": 5,
    }
    assert ranked.loc[["k1", "k4"], ["val_elbo", "train_recon", "best_val_elbo"]].isna().all().all()
    assert list(ranked.index[-2:]) == ["k1", "k4"]  # last rows of ranking.csv
    assert ranked.loc["k0", "best_epoch"] == 2 and ranked.loc["k0", "val_kl"] == 30.0


def test_completed_trials_rank_first_then_stopped_ones_by_their_last_values() -> None:
    trials, epochs = frames(
        ["stopped", "completed", "diverged", "stopped", "completed", "pending"],
        [90.0, 100.0, 80.0, 95.0, 120.0, 70.0],
        [60.0, 70.0, 50.0, 75.0, 69.0, 40.0],
    )
    stops = pd.DataFrame({"key": ["k0", "k3"], "rung": [1, 2]})
    ranked = rank(trials, epochs, PARAMS, stops).set_index("key")
    # a stopped trial beats no completed one, however good its last epoch looked
    assert ranked["rank_val_elbo"].to_dict() == {
        "k1": 1,
        "k4": 2,
        "k0": 3,
        "k3": 4,
        "k2": 5,
        "k5": 5,
    }
    assert ranked["rank_val_recon"].to_dict() == {
        "k4": 1,
        "k1": 2,
        "k0": 3,
        "k3": 4,
        "k2": 5,
        "k5": 5,
    }
    assert list(ranked.index) == ["k1", "k4", "k0", "k3", "k2", "k5"]
    assert ranked.loc["k0", "val_elbo"] == 90.0 and ranked.loc["k3", "best_val_elbo"] == 95.0
    assert ranked.loc[["k2", "k5"], "val_elbo"].isna().all()  # no metrics, as before
    assert list(ranked["rung"].fillna(0)) == [0, 0, 1, 2, 0, 0]  # where each stopped
    assert "rung" not in rank(trials, epochs, PARAMS).columns  # a study without halving: as before


def test_report_writes_tables_figures_and_markdown(study_dir: Path, mnist_root: Path) -> None:
    done = make_report(study_dir, mnist_root, top=1, nll_samples=20)
    ranking = pd.read_csv(study_dir / "ranking.csv")
    metrics = ["train_elbo", "train_recon", "train_kl", "val_elbo", "val_recon", "val_kl"]
    spread = [f"{m}_{s}" for m in [*metrics, "best_val_elbo"] for s in ("std", "ci_low", "ci_high")]
    assert list(ranking.columns) == [
        "key", "hidden", "latent", "lr", "clip", "status", "n_repeats", "repeats", *metrics,
        "best_val_elbo", "best_epoch", "seconds", "rank_val_elbo", "rank_val_recon",
        "epochs_done", "cause", *spread,
    ]  # fmt: skip
    assert ranking[spread].isna().all().all()  # one repeat: no spread
    per_trial = pd.read_csv(study_dir / "trials.csv")
    assert list(per_trial.columns[:7]) == HEAD
    assert list(per_trial["key"]) == list(ranking["key"])  # one repeat: a config is its trial
    assert len(ranking) == 4 and list(ranking["rank_val_elbo"]) == [1, 2, 3, 3]
    assert (
        list(ranking["status"][-2:]) == ["diverged", "diverged"]
        and ranking["val_elbo"][2:].isna().all()
    )
    epochs = pd.read_csv(study_dir / "epochs.csv")
    store = Store(study_dir / "study.db")
    n_rows = len(store.frame("vg_epoch"))
    store.close()
    assert len(epochs) == n_rows >= 2 * 3 * 2  # both completed trials, 3 epochs, train + val
    assert list(epochs.columns) == [
        *HEAD,
        "epoch",
        "split",
        "elbo",
        "recon",
        "kl",
        "seconds",
    ]
    test = pd.read_csv(study_dir / "test.csv")
    assert list(test["criterion"]) == ["val_elbo", "val_recon"] and len(test) == 2
    assert {"test_elbo", "test_recon", "test_kl", "test_nll", "nll_samples"} <= set(test.columns)
    assert (abs(test["test_elbo"] - test["test_recon"] - test["test_kl"]) < 1e-3).all()
    md = (study_dir / "report.md").read_text()
    assert "## Ranking: the top 4 by validation elbo" in md
    assert "2 completed, 2 diverged, 0 failed" in md
    # the answer first, then the rankings, the tests, what mattered; the time last
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[:3] == [
        "## Verdict", "## Ranking: the top 4 by validation elbo", "## Winners on the test split"
    ]  # fmt: skip
    assert sections.index("## Where the time went") > sections.index("## What mattered")
    assert md.count("| val_elbo #1") == 1  # one test row per winning config, its wins named
    assert "## How each value fared" in md and "- lr 1000: 0 of 2 completed, 2 diverged." in md
    assert "## About this study" not in md  # the study has no description
    torch_version = importlib.metadata.version("torch")
    computed = md.split("## Computed with", 1)[1]  # the versions its 4 runs used
    assert f"- 4 runs: cpu / torch {torch_version} on {os.uname().nodename}:" in computed
    assert f"torch {torch_version}" in computed and "optuna " in computed
    assert "Bernoulli NLL of grey levels (not comparable with binarized-MNIST results)" in md
    assert set(test["likelihood"]) == {
        "Bernoulli NLL of grey levels (not comparable with binarized-MNIST results)"
    }
    assert "One repeat per config: nothing tells a difference from seed-to-seed noise" in md
    assert "No importances: 2 completed configs varying 1 axes: too few to tell." in md
    figures = study_dir / "figures"
    sizes = {p.name: Image.open(p).size for p in figures.glob("*.png")}
    charts = {p.stem for p in figures.glob("*.svg")}  # every chart as a vector file too
    assert charts == {"curves", "parallel", "heatmap", "timeline"}
    assert sizes.pop("curves.png")[0] == 1400  # 7 inches at 200 dpi
    assert sizes.pop("parallel.png")[0] > 600 and sizes.pop("heatmap.png")[0] > 600
    assert sizes.pop("timeline.png")[0] == 2200  # its 4 runs on their slots
    spent = md.split("## Where the time went", 1)[1].split("\n\n")[1]
    assert spent.startswith("4 runs on ") and "slots busy " in spent and "idle tail " in spent
    for key in set(test["key"]):
        assert sizes[f"{key}_reconstructions.png"] == (
            16 * 58 + 2,
            4 * 58 + 2,
        )  # 32 pairs, each 28 px scaled to 56 (a judgeable digit), + padding
        assert sizes[f"{key}_samples.png"] == (8 * 58 + 2, 8 * 58 + 2)
    assert done.evaluated == list(dict.fromkeys(test["key"]))


def test_only_winners_touch_test_and_only_once_and_report_is_idempotent(
    study_dir: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_report(study_dir, mnist_root, top=2, nll_samples=10)
    winners = set(first.test["key"])
    assert len(winners) == 2 and sorted(first.evaluated) == sorted(
        winners
    )  # both completed win something
    files = {
        name: (study_dir / name).read_bytes() for name in ("ranking.csv", "epochs.csv", "test.csv")
    }
    with monkeypatch.context() as m:  # nothing new: the database is not even opened to write

        def no_writer(*args: object, **kwargs: object) -> None:
            raise AssertionError("a report with nothing to evaluate opened a writer")

        m.setattr("vaegrid.report.build.Store", no_writer)
        again = make_report(study_dir, mnist_root, top=2, nll_samples=10)
    assert again.evaluated == []  # stored results are reused
    assert {name: (study_dir / name).read_bytes() for name in files} == files
    store = Store(study_dir / "study.db")
    tested = store.frame("vg_test")
    store.close()
    assert set(tested["key"]) == winners  # nothing but winners was ever evaluated on test
    forced = make_report(study_dir, mnist_root, top=2, nll_samples=10, force=True)
    assert sorted(forced.evaluated) == sorted(winners)
    # evaluated again, from the same weights and seeds: the same numbers
    assert forced.test["test_nll"].tolist() == first.test["test_nll"].tolist()


def test_bad_report_input_is_one_line_and_exit_2(
    study_dir: Path, mnist_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    write_study: Callable[..., Path],
) -> None:  # fmt: skip
    assert main(["report", str(tmp_path / "nothing"), "--data-dir", str(mnist_root)]) == 2
    assert "not a vaegrid study folder" in capsys.readouterr().err
    for top in ("0", "3"):
        assert main(["report", str(study_dir), "--top", top, "--data-dir", str(mnist_root)]) == 2
        err = capsys.readouterr().err
        assert (
            f"--top: {top} is not allowed; expected 1 to 2 (completed configs)" in err
            and err.count("\n") == 1
        )
    for k in ("0", "50001"):
        argv = ["report", str(study_dir), "--nll-samples", k, "--data-dir", str(mnist_root)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"--nll-samples: {k} is not allowed; expected an integer from 1 to 50000" in err
        assert err.count("\n") == 1
    assert not (study_dir / "ranking.csv").exists()
    db = synced_study_db(write_study(), tmp_path / "r" / "tiny")
    assert main(["report", str(db.parent), "--data-dir", str(mnist_root)]) == 2
    assert "no completed trial to rank (" in capsys.readouterr().err


DESCRIBED = '''
name = "described"
description = """A study of latent and clip at one fixed learning rate.
Its second line."""
[data]
fractions = [0.6, 0.2, 0.2]
[train]
epochs = 2
batch_size = 50
lr = 1e-2
[grid]
hidden = [32]
latent = [4, 8]
clip = [1.0, 1e-4]
'''


def test_report_shows_the_study_description_and_nothing_of_another_study(
    tmp_path: Path, mnist_root: Path
) -> None:
    sweep(tmp_path, DESCRIBED, mnist_root)
    layout = StudyLayout(tmp_path / "r" / "described")
    make_report(layout.root, mnist_root, top=1, nll_samples=5)
    md = layout.report.read_text()
    about = "## About this study\n\nA study of latent and clip at one fixed learning rate."
    assert md.startswith("# vaegrid report\n\n" + about + "\nIts second line.\n\n4 trials:")
    # What each value of each searched axis did, from this study's rows alone
    fared = md.split("## How each value fared\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split(":")[0] for line in fared] == [
        "- latent 4", "- latent 8", "- clip 0.0001", "- clip 1",
    ]  # fmt: skip
    assert all(" of 2 completed" in line for line in fared)
    # No sentence about another study: not its axes, its values, or its conclusions
    lowered = md.lower()
    for words in ("the seed", "seed study", "lr ", "1e-5", "1e-05", "another cpu"):
        assert words not in lowered, words


def test_the_paired_tests_of_a_report_are_holm_adjusted_as_one_family() -> None:
    # 4 configs x 3 repeats; against the winner (100, 102, 104) the others differ by
    # (1, 1, 1): p = 0; (1.5, 3.5, -0.5): t = 1.5 / (2 / sqrt 3), p = 0.32; (3, 4, 5):
    # t = 4 sqrt 3, p = 1 - t / sqrt(2 + t^2) = 0.0202 (Student t, 2 degrees of freedom).
    trials = trials_frame(
        {(400, 0.03): [100.0, 102.0, 104.0], (500, 0.03): [101.0, 103.0, 105.0],
         (600, 0.03): [101.5, 105.5, 103.5], (700, 0.03): [103.0, 106.0, 109.0]}
    )  # fmt: skip
    names = ["hidden", "lr"]
    ranking = tables.by_config(trials, names)
    compared = [c for k in tables.CRITERIA for c in tables.comparisons(ranking, trials, k)]
    assert len(compared) == 6  # both criteria rank the configs alike: 3 + 3 tests
    test = ranking.head(1).assign(
        criterion="val_elbo", rank=1, n_tested=3, test_elbo=100.0, test_recon=90.0,
        test_kl=10.0, test_nll=99.0, test_nll_std=1.0, nll_samples=5, likelihood="NLL",
    )  # fmt: skip
    md = markdown(
        ranking, test, 4, 0.1, names=names, data=DataSpec(), compared=compared,
        importance="too few", heatmap=None, n_trials=12,
    )  # fmt: skip
    section = md.split("## Is the winner better than the next configs?\n\n", 1)[1]
    section = section.split("\n\n## ", 1)[0]
    assert "The p-values are Holm-adjusted over the 6 comparisons of this report" in section
    lines = [line for line in section.splitlines() if line.startswith("- By ")]
    assert len(lines) == 6
    # Holm over 0, 0, 0.0202, 0.0202, 0.32, 0.32: 0.0202 x 4 = 0.081, and 0.32 x 2 = 0.65.
    # Alone, p = 0.02 would call the gap to hidden 700 larger than the noise; one of 6, not.
    far = [line for line in lines if "hidden 700" in line]
    assert len(far) == 2
    for line in far:
        assert line.endswith(
            "Holm-adjusted p = 0.081 (raw p = 0.02) over 3 seeds: "
            "not distinguishable from seed-to-seed noise"
        )
    near = [line for line in lines if "hidden 500" in line]
    assert all("Holm-adjusted p < 0.001" in line and "larger than the" in line for line in near)
    middle = [line for line in lines if "hidden 600" in line]
    assert all("Holm-adjusted p = 0.65 (raw p = 0.32)" in line for line in middle)


FLAT = """
name = "flat"
[data]
fractions = [0.6, 0.2, 0.2]
[train]
epochs = 1
batch_size = 50
[grid]
hidden = [32]
latent = [4]
lr = [1e-2]
clip = [1e6, 1e7, 1e8]  # clips that never engage: every config computes the same numbers
"""


def test_a_grid_whose_settings_change_nothing_is_reported_not_a_crash(
    tmp_path: Path, mnist_root: Path
) -> None:
    sweep(tmp_path, FLAT, mnist_root)
    layout = StudyLayout(tmp_path / "r" / "flat")
    make_report(layout.root, mnist_root, top=1, nll_samples=5)
    md = layout.report.read_text()
    assert "every completed config has the same val_elbo: nothing mattered" in md
    ranking = pd.read_csv(layout.table("ranking"))
    assert ranking["val_elbo"].nunique() == 1 and set(ranking["rank_val_elbo"]) == {1}


def test_the_halving_section_says_what_was_saved_even_of_a_sub_second_study() -> None:
    spec = HalvingSpec((1,), 0.5, "val_elbo")
    a = TrialConfig.make(0, DataSpec(), latent=8, epochs=3)
    b = a.replace(lr=1e-3)  # the same model: the same work per epoch
    standings = {
        a.key: Standing(a.key, 3, False, {1: 100.0}, completed=True),
        b.key: Standing(b.key, 1, False, {1: 120.0}),
    }
    trials = pd.DataFrame({"key": [a.key, b.key], "epochs_done": [3, 1], "seconds": [0.3, 0.1]})
    stops = pd.DataFrame({"key": [b.key], "rung": [1]})
    text = "\n".join(halving_lines(spec, 3, standings, trials, stops, {a.key: a, b.key: b}))
    assert "| 1 | 2 | 0 | 1 | 1 |" in text  # rung 1: 2 compared, 1 went on, 1 stopped there
    # 4 of 6 trial-epochs; 0.4 s of an estimated 0.6 s (b's 2 epochs at the measured 0.1 s)
    assert "Compute: 4 trial-epochs run of 6 for the full grid (33% saved)" in text
    assert "0.4 s of training against an estimated 0.6 s for the full grid (33% saved)" in text


@pytest.mark.parametrize(
    "damage", [b"", b"PK\x03\x04 not a zip", b"\x80\x02}q\x00.", "another model's"]
)
def test_a_corrupt_winner_weights_file_is_one_line_and_exit_2(
    study_dir: Path, mnist_root: Path, capsys: pytest.CaptureFixture[str], damage: bytes | str
) -> None:
    ranking_key = _winner(study_dir)
    weights = study_dir / "trials" / ranking_key / "weights.pt"
    if isinstance(damage, str):  # this trial's stamp on a real state dict of another shape
        identity = torch.load(weights, weights_only=True)["identity"]
        torch.save(
            {"identity": identity, "file": "weights", "model": VAE(8, 2).state_dict()}, weights
        )
    else:
        weights.write_bytes(damage)
    assert main(["report", str(study_dir), "--data-dir", str(mnist_root)]) == 2
    err = capsys.readouterr().err
    assert f"{weights}: not this trial's weights (" in err and err.count("\n") == 1, err
    assert not (study_dir / "ranking.csv").exists() and not (study_dir / "report.md").exists()


def test_weights_of_another_trial_unstamped_or_huge_are_refused_before_any_test(
    study_dir: Path, mnist_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trials = vaegrid.load(study_dir.parent, study_dir.name).trials
    winner = _winner(study_dir)
    other = next(k for k in trials["key"] if k != winner)
    weights = study_dir / "trials" / winner / "weights.pt"
    original = weights.read_bytes()
    state = torch.load(io.BytesIO(original), weights_only=True)
    # Another trial's file of the same shapes: the winner's tensors under the other's stamp.
    forged = {**state, "identity": {**state["identity"], "key": other}}
    torch.save(forged, weights)
    argv = ["report", str(study_dir), "--data-dir", str(mnist_root)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"weights of key '{other}', not this trial's '{winner}'" in err, err
    torch.save(state["model"], weights)
    assert main(argv) == 2  # a bare state dict: whose?
    assert "weights that do not say which trial they belong to" in capsys.readouterr().err
    with weights.open("wb") as f:  # 3 GB, sparse: refused by its size, never read
        f.truncate(3 << 30)
    assert main(argv) == 2
    assert "refused before reading" in capsys.readouterr().err
    assert not (study_dir / "report.md").exists() and not (study_dir / "test.csv").exists()


def _winner(study_dir: Path) -> str:
    return str(vaegrid.load(study_dir.parent, study_dir.name).trials["key"].iloc[0])


def test_importance_sampled_nll_is_below_the_elbo_and_tightens_with_k(
    mnist_root: Path, tmp_path: Path
) -> None:
    data = DataSpec(fractions=(0.6, 0.2, 0.2))
    splits = load_splits(mnist_root, data, seed=0, device="cpu")
    cfg = TrialConfig.make(0, data, hidden=64, latent=8, lr=1e-2, clip=1.0, epochs=5, batch_size=50)
    run_trial(cfg, splits.train, splits.val, TrialFiles(tmp_path / "t"))
    from vaegrid.models.linear import LinearVAE as VAE

    model = VAE(cfg.hidden, cfg.latent)
    model.load_state_dict(torch.load(tmp_path / "t" / "weights.pt", weights_only=True)["model"])
    model.eval()
    elbo = evaluate(model, splits.test, seed=1).elbo
    nll = {
        k: float(importance_nll(model, splits.test, k, torch.Generator().manual_seed(2)).mean())
        for k in (1, 10, 100)
    }
    assert abs(nll[1] - elbo) < 0.02 * elbo  # k = 1 is a one-sample ELBO
    assert nll[100] < nll[10] < nll[1]
    assert nll[100] <= elbo


def test_weights_that_unpack_to_more_than_a_model_holds_are_refused(
    study_dir: Path, mnist_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import zipfile

    weights = study_dir / "trials" / _winner(study_dir) / "weights.pt"
    with (
        zipfile.ZipFile(weights, "w", zipfile.ZIP_DEFLATED) as z,  # 1 GB of zeros, deflated
        z.open("archive/data/0", "w", force_zip64=True) as member,
    ):
        for _ in range(1024):
            member.write(bytes(1 << 20))
    assert weights.stat().st_size < 2 << 20
    assert main(["report", str(study_dir), "--data-dir", str(mnist_root)]) == 2
    assert "unpacks to 1,073,741,824 bytes" in capsys.readouterr().err


RANKED = STUDY.replace('name = "rep"', 'name = "rk"').replace("lr = [1e-2, 1e3]", "lr = [1e-2]")
RANKED += "[rank]\nnll_samples = 3\n"


def test_the_test_k_is_the_studys_and_another_k_is_added_beside_the_stored_ones(
    tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import optuna

    sweep(tmp_path, RANKED, mnist_root)
    folder = tmp_path / "r" / "rk"
    argv = ["report", str(folder), "--data-dir", str(mnist_root)]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    # where it is, stage by stage: the study, each trial evaluated with its k, the figures
    assert err[0].startswith("report: rk: 2 trials, 2 configs ranked by val_nll;")
    assert "trials to test at k = 3 (" in err[0]
    assert any(line.startswith("report: testing 1/") and "at k = 3, " in line for line in err)
    assert any(line.startswith("report: drawing the figures") for line in err)

    def stored() -> dict[tuple[str, int], float]:
        store = Store.reader(folder / "study.db")
        try:
            rows = store.frame("vg_test")
        finally:
            store.close()
        return {(k, int(n)): v for k, n, v in zip(rows["key"], rows["nll_samples"], rows["nll"],
                                                  strict=True)}  # fmt: skip

    at_3 = stored()
    assert at_3 and {n for _, n in at_3} == {3}  # the study's [rank] nll_samples
    assert set(pd.read_csv(folder / "test.csv")["nll_samples"]) == {3}
    assert main([*argv, "--nll-samples", "7"]) == 0
    capsys.readouterr()
    both = stored()
    assert {n for _, n in both} == {3, 7} and {k: v for k, v in both.items() if k[1] == 3} == at_3
    test = pd.read_csv(folder / "test.csv")
    assert set(test["nll_samples"]) == {7} and test["test_nll_k3"].notna().all()
    md = (folder / "report.md").read_text()
    assert "test_nll (k = 7)" in md and "test_nll (k = 3)" in md  # each number says its k
    assert main(argv) == 0  # back to the study's k: nothing computed again
    assert "(0 to evaluate," in capsys.readouterr().err
    test = pd.read_csv(folder / "test.csv")
    assert set(test["nll_samples"]) == {3} and test["test_nll_k7"].notna().all()
    assert stored() == both
    # the test metrics reach Optuna as user attributes of the (finished) trials
    study = optuna.load_study(study_name="rk", storage=f"sqlite:///{folder / 'study.db'}")
    tested = [t for t in study.get_trials() if "test_nll_k3" in t.user_attrs]
    assert tested and all(
        t.user_attrs["test_nll_k7"] == both[(t.user_attrs["key"], 7)] for t in tested
    )
    assert all("val_nll" in t.user_attrs and "repeat" not in t.params for t in study.trials)


def test_a_signal_swallowed_on_its_way_stops_the_evaluation_within_one_pass(
    tmp_path: Path,
    mnist_root: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C that lands in a __del__ is remembered, not raised (vaegrid/signals.py): the
    report answers it at its next pass over the test images, not after its figures."""
    import signal

    from vaegrid import signals
    from vaegrid.report.evaluate import Winners

    sweep(tmp_path, RANKED, mnist_root)
    folder = tmp_path / "r" / "rk"
    real = Winners.test_metrics

    def swallowed(self: Winners, key: str, k: int, progress: object = None) -> dict[str, object]:
        signals._received.append(signal.SIGINT)  # what the handler records, then raised into
        return real(self, key, k, progress)  # type: ignore[arg-type]  # a __del__: lost

    monkeypatch.setattr(Winners, "test_metrics", swallowed)
    assert main(["report", str(folder), "--data-dir", str(mnist_root)]) == 130
    err = capsys.readouterr().err
    assert err.count("interrupted (SIGINT)") == 1 and "report: tested" not in err, err
    assert not (folder / "report.md").exists()
    store = Store.reader(folder / "study.db")
    try:
        assert store.frame("vg_test").empty  # stopped within the first trial's evaluation
    finally:
        store.close()


def test_report_help_gives_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["report", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 1)" in text and "else 1000" in text and "5000" in text
    assert "[rank] nll_samples" in text
