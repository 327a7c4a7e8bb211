"""An axis added to the grid, with repeats, end to end: the run, every table, picture and
report line, and the Python API (``vaegrid.load``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import sweep

import vaegrid
from vaegrid.cli import main
from vaegrid.errors import InputError
from vaegrid.report import mattered

STUDY = """
name = "beta"
[data]
fractions = [0.6, 0.2, 0.2]
binarize = "dynamic"
[train]
epochs = 2
batch_size = 50
[grid]
hidden = [32]
latent = [4, 8]
lr = [1e-2]
clip = [1.0]
beta = [0.5, 1.0]
repeats = 2
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> tuple[Path, str]:
    """A finished 2 x 2 configs x 2 repeats study searching beta, and its run's output."""
    root = tmp_path_factory.mktemp("api")
    return root / "r", sweep(root, STUDY, mnist_root)


def test_an_added_axis_flows_to_the_run_tables_pictures_and_report(
    swept: tuple[Path, str], mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results, output = swept
    assert "beta 0.5" in output and "repeat 1" in output  # the progress lines name it
    drawn: dict[str, list[str]] = {}
    parallel, heatmap = mattered.parallel, mattered.heatmap

    def spy_parallel(frame, axes, path, *a, **k):  # type: ignore[no-untyped-def]
        drawn["parallel"] = [x.name for x in axes]
        return parallel(frame, axes, path, *a, **k)

    def spy_heatmap(frame, x, y, axes, path, *a, **k):  # type: ignore[no-untyped-def]
        drawn["heatmap"] = [x, y, *(a.name for a in axes)]
        return heatmap(frame, x, y, axes, path, *a, **k)

    monkeypatch.setattr(mattered, "parallel", spy_parallel)
    monkeypatch.setattr(mattered, "heatmap", spy_heatmap)
    folder = results / "beta"
    argv = ["report", str(folder), "--data-dir", str(mnist_root), "--nll-samples", "5"]
    assert main(argv) == 0
    ranking = pd.read_csv(folder / "ranking.csv")
    trials = pd.read_csv(folder / "trials.csv")
    epochs = pd.read_csv(folder / "epochs.csv")
    test = pd.read_csv(folder / "test.csv")
    for frame in (ranking, trials, epochs, test):
        assert "beta" in frame.columns
    assert len(ranking) == 4 and len(trials) == 8 and set(ranking["n_repeats"]) == {2}
    assert set(trials["repeat"]) == {0, 1} and trials.groupby("config").size().eq(2).all()
    mean = trials.groupby("config")["val_elbo"].mean()
    assert (ranking.set_index("key")["val_elbo"] - mean).abs().max() < 1e-9
    assert ranking["val_elbo_std"].notna().all()
    # the winner's test figures: both repeats tested, a mean and a std over them
    assert set(test["n_tested"]) == {2} and test["test_nll_std"].notna().all()
    label = "test NLL of dynamically binarized MNIST, importance-sampled, k = 5"
    assert set(test["likelihood"]) == {label}
    assert drawn["parallel"] == ["latent", "beta"]
    assert set(drawn["heatmap"][:2]) == {"latent", "beta"}
    md = (folder / "report.md").read_text()
    assert "| clip | beta | n_repeats |" in md  # the top-10 tables show it
    assert label in md and "comparable with published results on binarized data" in md
    assert "Every config ran 2 times" in md and "over 2 seeds" in md
    assert "By validation elbo: " in md
    assert "KL weight beta" in md  # the importance table names the axis
    assert {"parallel.png", "heatmap.png", "importance.png"} <= {
        p.name for p in (folder / "figures").iterdir()
    }


def test_load_reads_a_study_from_its_results_folder_or_its_storage(
    swept: tuple[Path, str],
) -> None:
    results, _ = swept
    r = vaegrid.load(results, "beta")
    assert r.axes == ["hidden", "latent", "lr", "clip", "beta"]
    assert len(r.trials) == 8 and {"key", "repeat", "beta", "val_elbo", "status"} <= set(r.trials)
    assert set(r.epochs["split"]) == {"train", "val"} and len(r.epochs) == 8 * 2 * 2
    best = r.best()
    done = r.trials[r.trials["status"] == "completed"]
    means = done.groupby("config")["val_elbo"].mean()
    assert best["key"] == means.idxmin() and best["val_elbo"] == pytest.approx(means.min())
    assert r.best("val_recon")["val_recon"] == pytest.approx(
        done.groupby("config")["val_recon"].mean().min()
    )
    url = f"sqlite:///{results / 'beta' / 'study.db'}"
    same = vaegrid.load(url, "beta")
    pd.testing.assert_frame_equal(same.trials, r.trials)
    with pytest.raises(ValueError, match="metric = 'elbo' is not allowed"):
        r.best("elbo")
    with pytest.raises(InputError, match="holds study 'beta', not 'other'"):
        vaegrid.load(url, "other")
    with pytest.raises(InputError, match="not a vaegrid study folder"):
        vaegrid.load(results, "other")
    with pytest.raises(InputError, match="is not allowed; expected a study's name"):
        vaegrid.load(results, "../beta")


def test_model_gives_a_trials_trained_vae_identity_checked(
    swept: tuple[Path, str], tmp_path: Path
) -> None:
    import shutil

    import torch

    results, _ = swept
    r = vaegrid.load(results, "beta")
    best = r.best()["key"]
    vae = r.model(best)
    assert not vae.training and next(vae.parameters()).device.type == "cpu"
    stored = torch.load(results / "beta" / "trials" / best / "weights.pt", weights_only=True)
    for name, tensor in vae.state_dict().items():  # the trial's final weights, as trained
        assert torch.equal(tensor, stored["model"][name]), name
    x = torch.rand(5, 784)
    with torch.no_grad():  # reconstruct and sample, as README shows
        mu, _ = vae.encode(x)
        assert torch.sigmoid(vae.decode(mu)).shape == (5, 784)
        assert vae.decode(torch.randn(3, vae.latent)).shape == (3, 784)
    with pytest.raises(ValueError, match="no trial of study beta has that key"):
        r.model("000000000000")
    url = f"sqlite:///{results / 'beta' / 'study.db'}"
    with pytest.raises(InputError, match="pass results=RESULTS_DIR"):
        vaegrid.load(url, "beta").model(best)
    assert vaegrid.load(url, "beta", results=results).model(best).latent == vae.latent
    # another trial's weights copied in its place are refused, as report refuses them
    copy = tmp_path / "copy"
    shutil.copytree(results / "beta", copy / "beta")
    other = next(k for k in r.trials["key"] if k != best)
    trials = copy / "beta" / "trials"
    shutil.copy(trials / other / "weights.pt", trials / best / "weights.pt")
    with pytest.raises(InputError, match="not this trial's"):
        vaegrid.load(copy, "beta").model(best)
