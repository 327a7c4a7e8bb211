"""The built-in models (linear, mlp, conv) and the IWAE objective: their terms, training,
resume, and a study that mixes them (fast, on synthetic images)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import run_inline

from vaegrid.cli import main
from vaegrid.layout import TrialFiles
from vaegrid.models.conv import ConvVAE
from vaegrid.models.mlp import MLPVAE
from vaegrid.study.core import DataSpec, TrialConfig, expand
from vaegrid.study.load import load_study
from vaegrid.train.data import load_splits
from vaegrid.train.model import iwae_terms, log_weights, make_model
from vaegrid.train.trial import run_trial

DATA = DataSpec(fractions=(0.6, 0.2, 0.2))
MODELS = {
    "linear": {"model": "linear"},
    "mlp": {"model": "mlp", "depth": 2, "activation": "tanh"},
    "conv": {"model": "conv", "channels": 4},
}


def config(model: str, epochs: int = 3, **more: object) -> TrialConfig:
    return TrialConfig.make(
        0, DATA, hidden=32, latent=4, lr=3e-3, clip=1.0, epochs=epochs, batch_size=50,
        **MODELS[model], **more,
    )  # fmt: skip


@pytest.fixture(scope="module")
def splits(mnist_root: Path):  # type: ignore[no-untyped-def]
    return load_splits(mnist_root, DATA, seed=0, device="cpu")


@pytest.mark.parametrize("model", MODELS)
def test_each_model_gives_the_elbo_of_its_own_encoder_and_decoder(model: str) -> None:
    torch.manual_seed(0)
    net = make_model(config(model).axis_values()).double().eval()
    x = torch.rand(6, 784, dtype=torch.float64)
    eps = torch.randn(6, 4, dtype=torch.float64)
    mu, logvar = net.encode(x)
    assert mu.shape == logvar.shape == (6, 4)
    logits = net.decode(mu + torch.exp(0.5 * logvar) * eps)
    assert logits.shape == (6, 784)
    terms = net(x, eps)
    recon = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    torch.testing.assert_close(terms.recon, recon)
    torch.testing.assert_close(terms.kl, kl)
    for i in range(6):  # each image's terms are its own
        alone = net(x[i : i + 1], eps[i : i + 1])
        torch.testing.assert_close(alone.recon, terms.recon[i : i + 1])


def test_mlp_and_conv_are_the_architectures_their_settings_say() -> None:
    mlp = make_model({"model": "mlp", "hidden": 200, "latent": 50, "depth": 2,
                      "activation": "tanh"})  # fmt: skip
    assert isinstance(mlp, MLPVAE)
    linears = [m for m in mlp.encoder if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [200, 200]  # Burda et al.'s 2 x 200 tanh
    assert sum(isinstance(m, torch.nn.Tanh) for m in mlp.encoder) == 2
    conv = make_model({"model": "conv", "hidden": 64, "latent": 8, "channels": 16})
    assert isinstance(conv, ConvVAE)
    strides = [m.stride for m in conv.encoder if isinstance(m, torch.nn.Conv2d)]
    assert strides == [(2, 2), (2, 2)]
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in conv.deconv) == 2


def test_iwae_with_one_sample_is_the_single_sample_elbo_exactly() -> None:
    torch.manual_seed(0)
    net = make_model(config("mlp").axis_values()).double().eval()
    x = torch.rand(5, 784, dtype=torch.float64).round()
    eps = torch.randn(1, 5, 4, dtype=torch.float64)
    bound, terms = iwae_terms(net, x, eps)
    mu, logvar = net.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps[0]
    recon = F.binary_cross_entropy_with_logits(net.decode(z), x, reduction="none").sum(1)
    normal = torch.distributions.Normal
    log_q = normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(1)
    log_p = normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(1)
    torch.testing.assert_close(bound, recon + log_q - log_p)  # -ELBO with this one z
    torch.testing.assert_close(terms.recon, recon)
    analytic = net(x, eps[0])  # the ELBO with its KL in closed form: the same in expectation
    torch.testing.assert_close(terms.kl, analytic.kl)


def test_the_iwae_bound_tightens_as_k_grows() -> None:
    torch.manual_seed(0)
    net = make_model(config("linear").axis_values()).eval()
    x = torch.rand(20, 784).round()
    g = torch.Generator().manual_seed(1)
    means = []
    for k in (1, 5, 50):
        draws = [iwae_terms(net, x, torch.randn(k, 20, 4, generator=g))[0] for _ in range(40)]
        means.append(torch.stack(draws).mean().item())
    assert means[0] > means[1] > means[2], means  # a lower -log p(x) bound: tighter
    w = log_weights(net, x, torch.randn(3, 20, 4, generator=g))[0]
    assert w.shape == (3, 20) and torch.isfinite(w).all()


@pytest.mark.parametrize(
    ("model", "more"),
    [("linear", {}), ("mlp", {}), ("conv", {}), ("mlp", {"objective": "iwae", "samples": 3})],
)
def test_each_model_trains_and_resumes_bit_identically(  # type: ignore[no-untyped-def]
    model: str, more: dict, splits, tmp_path: Path
) -> None:
    cfg = config(model, **more)
    whole = run_trial(cfg, splits.train, splits.val, TrialFiles(tmp_path / "whole"))
    assert whole.status == "completed"
    assert whole.history[-1].val.elbo < whole.history[0].val.elbo
    for r in whole.history:  # the metrics are the ELBO's terms whatever is minimised
        assert math.isclose(r.val.elbo, r.val.recon + r.val.kl, rel_tol=1e-6)
    cut = TrialFiles(tmp_path / "cut")
    assert run_trial(cfg, splits.train, splits.val, cut, stop_at=1).status == "paused"
    resumed = run_trial(cfg, splits.train, splits.val, cut)
    assert [(r.train, r.val) for r in resumed.history] == [(r.train, r.val) for r in whole.history]
    assert cut.weights.read_bytes() == (tmp_path / "whole" / "weights.pt").read_bytes()


def test_iwae_training_computes_something_else_than_elbo_training(splits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    elbo = run_trial(config("mlp"), splits.train, splits.val, TrialFiles(tmp_path / "e"))
    iwae = run_trial(
        config("mlp", objective="iwae", samples=3), splits.train, splits.val,
        TrialFiles(tmp_path / "i"),
    )  # fmt: skip
    assert elbo.history[-1].val != iwae.history[-1].val


MIXED = """
name = "mixed"
[data]
fractions = [0.6, 0.2, 0.2]
[train]
epochs = 2
batch_size = 50
hidden = 32
latent = 4
lr = 3e-3
clip = 1.0
[grid]
model = ["linear", "mlp", "conv"]
depth = [1, 2]
channels = [4]
"""


def test_a_study_that_mixes_models_runs_them_once_each_and_ranks_them_in_one_table(
    mnist_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mixed.toml"
    path.write_text(MIXED)
    trials = expand(load_study(path))
    # depth applies to mlp only: linear and conv record it as 2, and coincide with depth 1's
    assert sorted((t.model, t.depth) for t in trials) == [
        ("conv", 2), ("linear", 2), ("mlp", 1), ("mlp", 2)
    ]  # fmt: skip
    assert run_inline(path, tmp_path / "r", mnist_root) == 0
    import optuna

    storage = f"sqlite:///{tmp_path / 'r' / 'mixed' / 'study.db'}"
    ledger = optuna.load_study(study_name="mixed", storage=storage).trials
    # the model is a categorical over the study's own models (never the installed plug-ins,
    # which come and go); the repeat is no parameter
    assert {t.params["model"] for t in ledger} == {"linear", "mlp", "conv"}
    assert all(set(t.params) == {"model", "depth", "channels"} for t in ledger)
    assert {t.distributions["model"].choices for t in ledger} == {("conv", "linear", "mlp")}
    said = capsys.readouterr().out  # each trial described by the settings that apply to it
    assert "(model linear):" in said and "(model mlp, depth 1):" in said
    assert "(model conv, channels 4):" in said
    assert main(["report", str(tmp_path / "r" / "mixed"), "--data-dir", str(mnist_root)]) == 0
    ranked = pd.read_csv(tmp_path / "r" / "mixed" / "ranking.csv")
    assert sorted(ranked["model"]) == ["conv", "linear", "mlp", "mlp"]
    assert {"model", "depth", "channels"} <= set(ranked.columns)
    report = (tmp_path / "r" / "mixed" / "report.md").read_text()
    # one table; a setting that does not apply is "-", as plan shows it
    assert "| conv | - | 4 |" in report and "| linear | - | - |" in report
    assert "| mlp | 1 | - |" in report
    # how each value fared counts the configs a setting applies to: depth 2 is one mlp
    assert "- depth 2: 1 of 1 completed" in report and "channels 32" not in report


def test_a_grown_grid_rewrites_every_trials_model_choices_so_optuna_sees_one_space(
    mnist_root: Path, tmp_path: Path
) -> None:
    import optuna

    two = MIXED.replace('model = ["linear", "mlp", "conv"]', 'model = ["mlp", "linear"]')
    two = two.replace("depth = [1, 2]\nchannels = [4]\n", "").replace("epochs = 2", "epochs = 1")
    path = tmp_path / "mixed.toml"
    path.write_text(two)
    assert run_inline(path, tmp_path / "r", mnist_root) == 0
    storage = f"sqlite:///{tmp_path / 'r' / 'mixed' / 'study.db'}"
    before = optuna.load_study(study_name="mixed", storage=storage).trials
    assert {t.distributions["model"].choices for t in before} == {("linear", "mlp")}
    path.write_text(two.replace('model = ["mlp", "linear"]', 'model = ["mlp", "conv", "linear"]'))
    assert run_inline(path, tmp_path / "r", mnist_root) == 0  # conv sorts first: indices move
    study = optuna.load_study(study_name="mixed", storage=storage)
    after = {t.user_attrs["key"]: t for t in study.trials}
    assert len(after) == 3
    assert {t.distributions["model"].choices for t in after.values()} == {("conv", "linear", "mlp")}
    for t in before:  # the old trials keep their models under the new choices
        assert after[t.user_attrs["key"]].params["model"] == t.params["model"]
    assert set(optuna.importance.get_param_importances(study)) == {"model"}
    assert "model" in optuna.search_space.intersection_search_space(study.trials)


RANKED_BY_NLL = """
name = "nll"
[data]
fractions = [0.6, 0.2, 0.2]
binarize = "dynamic"
[train]
epochs = {epochs}
batch_size = 50
hidden = 32
latent = 4
lr = 3e-3
clip = 1.0
[grid]
model = ["linear", "mlp"]
objective = ["elbo", "iwae"]
samples = [3]
[rank]
nll_samples = 20
{halving}
"""


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_the_validation_nll_is_stored_at_each_trials_end_and_ranks_the_study(
    mnist_root: Path, tmp_path: Path
) -> None:
    from vaegrid.train.trial import val_nll

    path = tmp_path / "nll.toml"
    path.write_text(RANKED_BY_NLL.format(epochs=2, halving=""))
    assert run_inline(path, tmp_path / "r", mnist_root) == 0
    db = tmp_path / "r" / "nll" / "study.db"
    stored = {
        k: (e, v, s) for k, e, v, s in _rows(db, "SELECT key, epoch, nll, samples FROM vg_nll")
    }
    trials = {t.key: t for t in expand(load_study(path))}
    assert set(stored) == set(trials) and len(trials) == 4
    assert {(e, s) for e, _, s in stored.values()} == {(2, 20)}
    # the stored value is the final weights' NLL with the trial's own draws
    key = sorted(trials)[0]
    cfg = trials[key]
    net = make_model(cfg.axis_values())
    net.load_state_dict(torch.load(tmp_path / "r" / "nll" / "trials" / key / "weights.pt")["model"])
    splits = load_splits(mnist_root, cfg.data, cfg.seed, "cpu")
    assert val_nll(net, splits.val, cfg, 2, 20).nll == stored[key][1]
    assert main(["report", str(tmp_path / "r" / "nll"), "--data-dir", str(mnist_root),
                 "--nll-samples", "10"]) == 0  # fmt: skip
    ranking = pd.read_csv(tmp_path / "r" / "nll" / "ranking.csv").set_index("key")
    assert ranking.loc[key, "val_nll"] == pytest.approx(stored[key][1], rel=1e-12)
    by_nll = ranking.sort_values("val_nll").index.tolist()
    assert ranking.loc[by_nll, "rank_val_nll"].tolist() == [1, 2, 3, 4]
    report = (tmp_path / "r" / "nll" / "report.md").read_text()
    assert "## Ranking: the top 4 by validation NLL" in report  # the study ranks by it
    assert "k = 20 samples per image" in report
    test = pd.read_csv(tmp_path / "r" / "nll" / "test.csv")
    assert "val_nll" in set(test["criterion"])
    import vaegrid

    results = vaegrid.load(tmp_path / "r", "nll")  # the Python API ranks by it too
    assert results.best("val_nll")["key"] == by_nll[0]


def test_halving_by_the_validation_nll_compares_the_nll_at_the_rung(
    mnist_root: Path, tmp_path: Path
) -> None:
    path = tmp_path / "nll.toml"
    halving = '[halving]\nrungs = [1]\nkeep = 0.5\nmetric = "val_nll"'
    path.write_text(RANKED_BY_NLL.format(epochs=2, halving=halving))
    assert run_inline(path, tmp_path / "r", mnist_root) == 0
    db = tmp_path / "r" / "nll" / "study.db"
    at_rung = dict(_rows(db, "SELECT key, nll FROM vg_nll WHERE epoch = 1"))
    assert len(at_rung) == 4  # every trial's NLL at the rung
    status = dict(_rows(db, "SELECT key, status FROM vg_trial"))
    best = sorted(at_rung, key=lambda k: (at_rung[k], k))[:2]
    assert {k for k, s in status.items() if s == "completed"} == set(best)
    assert {k for k, s in status.items() if s == "stopped"} == set(at_rung) - set(best)
    # the survivors' NLL at their end too
    assert dict(_rows(db, "SELECT key, epoch FROM vg_nll WHERE epoch = 2")).keys() == set(best)


def test_halving_by_val_nll_needs_its_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nll.toml"
    text = RANKED_BY_NLL.format(
        epochs=2, halving='[halving]\nrungs = [1]\nkeep = 0.5\nmetric = "val_nll"'
    )
    path.write_text(text.replace("nll_samples = 20", "nll_samples = 0"))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "halving.metric" in err and "nll_samples" in err


_STEP = """
import json, sys, torch
from vaegrid.study.core import DataSpec, TrialConfig
from vaegrid.study.sizes import training_mb
from vaegrid.train.model import iwae_terms, make_model
torch.set_num_threads(1)
settings = json.loads(sys.argv[1])
shape = tuple(settings.pop("shape", (1, 28, 28)))
cfg = TrialConfig.make(0, DataSpec(), lr=1e-3, clip=1.0, **settings)
net = make_model(cfg.axis_values(), shape)
opt = torch.optim.Adam(net.parameters())
pixels = shape[0] * shape[1] * shape[2]
x = torch.rand(cfg.batch_size, pixels).round()
val = torch.rand(10_000, pixels).round()


def status(field):  # MB, from /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024


open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
before = status("VmRSS")
for _ in range(2):
    if cfg.objective == "iwae":
        loss = iwae_terms(net, x, torch.randn(cfg.samples, len(x), cfg.latent))[0].mean()
    else:
        loss = net(x, torch.randn(len(x), cfg.latent)).elbo.mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
from vaegrid.train.trial import evaluate
from vaegrid.train.model import importance_nll
evaluate(net, val, 0)
importance_nll(net, x[:20], 100, torch.Generator().manual_seed(0))
grew = status("VmHWM") - before
print(json.dumps([training_mb(cfg.axis_values(), shape), grew]))
"""


@pytest.mark.slow  # 5 subprocesses that each allocate what a real step needs: 105 s
@pytest.mark.parametrize(
    "settings",
    [
        {"model": "linear", "hidden": 800, "latent": 400, "batch_size": 1000},
        {"model": "conv", "hidden": 200, "latent": 50, "batch_size": 500, "channels": 32},
        {"model": "mlp", "hidden": 200, "latent": 50, "batch_size": 100, "objective": "iwae",
         "samples": 500},
        {"model": "conv", "hidden": 200, "latent": 50, "batch_size": 100, "channels": 128},
        {"model": "conv", "hidden": 200, "latent": 50, "batch_size": 100, "channels": 32,
         "shape": [3, 64, 64]},  # a plug-in data set's colour images
    ],
)  # fmt: skip
def test_the_memory_estimate_is_within_a_factor_of_2_of_a_step_an_evaluation_and_an_nll(
    settings: dict,  # type: ignore[type-arg]
) -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _STEP, json.dumps(settings)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    estimate, grew = json.loads(out.stdout)
    assert grew > 20 and grew / 2 <= estimate <= 2 * grew, (estimate, grew)


def test_a_study_whose_training_step_would_not_fit_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.toml"
    path.write_text(
        '[train]\nobjective = "iwae"\nsamples = 5000\nbatch_size = 1000\n'
        "[grid]\nhidden = [400]\nlatent = [100]\nlr = [1e-3]\nclip = [1.0]\n"
    )
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MB per training step" in err and "samples = 5000" in err


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("VAEGRID_DATA"), reason="VAEGRID_DATA is not set")
def test_the_conv_model_reconstructs_real_mnist_better_than_the_linear_one(tmp_path: Path) -> None:
    # The seed's convolutional VAE gave degraded images; this one must beat the linear VAE
    # at equal settings: 2 epochs on 9,600 dynamically binarized images (3 s and 1 s here).
    data = DataSpec(fractions=(0.8, 0.1, 0.1), limit=12_000, binarize="dynamic")
    splits = load_splits(Path(os.environ["VAEGRID_DATA"]), data, seed=0, device="cpu")
    recon = {}
    for model, more in (("linear", {}), ("conv", {"channels": 16})):
        cfg = TrialConfig.make(
            0, data, model=model, hidden=256, latent=16, lr=3e-3, clip=1.0, epochs=2,
            batch_size=100, **more,
        )  # fmt: skip
        result = run_trial(cfg, splits.train, splits.val, TrialFiles(tmp_path / model))
        recon[model] = [r.val.recon for r in result.history]
    # measured: linear 113.5, 103.9; conv 101.4, 89.3 (nats per image)
    assert all(c < lin - 5 for c, lin in zip(recon["conv"], recon["linear"], strict=True)), recon


def test_a_validation_nll_that_is_not_finite_ends_the_trial_as_diverged(
    splits,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    from vaegrid.train import trial

    # a model whose importance weights overflow: its NLL is inf, which no table may hold
    monkeypatch.setattr(trial, "importance_nll", lambda *a, **k: torch.tensor([math.inf]))
    result = run_trial(config("linear", epochs=2), splits.train, splits.val,
                       TrialFiles(tmp_path / "t"), nll_samples=5)  # fmt: skip
    assert result.status == "diverged" and result.nll is None
    assert result.cause == "non-finite validation NLL at epoch 2"
    paused = run_trial(config("linear", epochs=2), splits.train, splits.val,
                       TrialFiles(tmp_path / "p"), stop_at=1, nll_samples=5,
                       nll_when_paused=True)  # fmt: skip
    assert paused.status == "diverged" and paused.diverged_epoch == 1
