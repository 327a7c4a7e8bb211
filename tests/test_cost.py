"""What a trial costs (cost.py): counted work, the learned rate, longest-first dispatch
and the forecast of the time left."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import run_inline
from vaegrid.cost import (
    RUNNING_SHARE_MAX,
    CostModel,
    Forecast,
    Left,
    duration,
    forecast,
    forward_macs,
    halving_rest,
    makespan,
)
from vaegrid.db.store import Store
from vaegrid.study.core import DataSpec, TrialConfig, expand
from vaegrid.study.load import load_study
from vaegrid.train.model import make_model


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 16, 16), (1, 12, 20)])
@pytest.mark.parametrize(
    "settings",
    [
        {"model": "linear", "hidden": 400, "latent": 100},
        {"model": "mlp", "hidden": 200, "latent": 50, "depth": 3, "activation": "tanh"},
        {"model": "conv", "hidden": 64, "latent": 8, "channels": 8},
    ],
)  # fmt: skip
def test_the_counted_work_is_what_torch_counts(
    settings: dict,  # type: ignore[type-arg]
    shape: tuple[int, int, int],
) -> None:
    # torch's own FLOP counter (matrix multiplies and convolutions, 2 per multiply-add)
    cfg = TrialConfig.make(0, DataSpec(), **settings)
    model = make_model(cfg.axis_values(), shape).eval()
    x = torch.rand(5, shape[0] * shape[1] * shape[2])
    with torch.no_grad():
        with FlopCounterMode(display=False) as counted:
            mu, _ = model.encode(x)
        encoder = counted.get_total_flops()
        with FlopCounterMode(display=False) as counted:
            model.decode(mu)
        decoder = counted.get_total_flops()
    assert forward_macs(cfg.axis_values(), shape) == (encoder // 10, decoder // 10)


def test_work_counts_epochs_samples_and_the_nll_and_seconds_learn_per_device() -> None:
    data = DataSpec(limit=1000, fractions=(0.8, 0.1, 0.1))  # 800 train, 100 validation
    model = CostModel(data, nll_samples=50)
    elbo = TrialConfig.make(0, data, hidden=10, latent=2, epochs=4)
    iwae = elbo.replace(objective="iwae", samples=5)
    enc, dec = forward_macs(elbo.axis_values(), (1, 28, 28))
    assert model.epoch_work(elbo) == 3 * (enc + dec) * 800 + (enc + dec) * 100
    assert model.epoch_work(iwae) == 3 * (enc + 5 * dec) * 800 + (enc + dec) * 100
    assert model.work(elbo, 1, 3) == 2 * model.epoch_work(elbo)  # no NLL before the end
    assert model.work(elbo, 3, 4) == model.epoch_work(elbo) + (enc + 50 * dec) * 100
    assert model.work(elbo, 4, 4) == 0.0
    assert not model.measured() and model.seconds(2.5e10) == pytest.approx(1.0)  # the prior
    model.observe("gpu", 2.0, 1e9)
    model.observe("cpu", 30.0, 1e9)
    model.observe("cpu", 10.0, 1e9)
    model.observe("cpu", float("nan"), 1e9)  # a hostile row teaches nothing
    assert model.measured()
    assert model.seconds(1e9, "cpu") == pytest.approx(20.0)
    assert model.seconds(1e9, "gpu") == pytest.approx(2.0)
    assert model.seconds(3e9, "tpu") == pytest.approx(42.0)  # no such kind yet: all kinds'


def test_the_makespan_puts_the_longest_first_onto_the_slot_that_frees_first() -> None:
    assert makespan([], [5, 4, 3, 3, 2], 2) == 9  # 5+3 = 8 | 4+3+2 = 9
    assert makespan([6], [4, 4], 2) == 8  # the running slot frees at 6
    assert makespan([], [], 3) == 0.0
    assert makespan([1, 2, 3], [1], 2) == 2  # more running than slots: the first ones count


def test_halving_allows_the_survivors_of_each_rung() -> None:
    # 12 trials at rung 2 of (2, 4), keep 0.5, 6 epochs: 6 run to 4, 3 of those to 6
    assert halving_rest(12, 2, (2, 4), 0.5, 6) == [(6, 2), (3, 2)]
    assert halving_rest(6, 4, (2, 4), 0.5, 6) == [(3, 2)]
    assert halving_rest(6, None, (2, 4), 0.5, 6) == []


def test_the_forecast_in_words() -> None:
    assert Forecast(0.384, 660, True).words() == "38% of the work done, about 11 min left"
    assert Forecast(0.0, 660, False).words() == "0% of the work done, time left unknown yet"
    assert [duration(s) for s in (0, 44.4, 89, 3900)] == ["0 s", "44 s", "1 min", "1 h 05 min"]


def test_the_one_forecast_counts_every_part_of_the_work() -> None:
    """The bar's and status's forecast: done epochs and a completed trial's NLL, a running
    trial by its time (never said to be done), the rest to its target, and with halving
    the survivors of the rungs to come."""
    from vaegrid.study.core import HalvingSpec

    data = DataSpec(limit=1000, fractions=(0.8, 0.1, 0.1))
    model = CostModel(data, nll_samples=50)
    model.observe("cpu", 10.0, 1e9)  # 1e-8 s per MAC
    a, b, c = (TrialConfig.make(0, data, hidden=h, latent=2, epochs=4) for h in (10, 20, 30))
    epoch, nll = model.epoch_work(a), model.nll_work(a)
    ended = Left(a, 4, 4, ended=True, nll_done=True)
    assert forecast(model, [ended], 1) == Forecast(1.0, 0.0, True)
    queued = Left(b, 1, 4)  # 3 epochs and the NLL to go
    got = forecast(model, [ended, queued], 2)
    left = model.work(b, 1, 4)
    assert got.done == pytest.approx((4 * epoch + nll + model.epoch_work(b)) /
                                     (4 * epoch + nll + model.epoch_work(b) + left))  # fmt: skip
    assert got.seconds == pytest.approx(model.seconds(left))
    work = model.work(c, 0, 4)
    late = Left(c, 0, 4, running=(10 * model.seconds(work), work, "cpu"))  # 10x its time
    got = forecast(model, [late], 1)
    assert got.done == pytest.approx(RUNNING_SHARE_MAX)  # nearly done, not done
    assert got.seconds == pytest.approx((1 - RUNNING_SHARE_MAX) * model.seconds(work))
    for _ in range(3):  # three runs predicted 4 epochs and diverged in their first
        model.finished(model.work(a, 0, 4), 0.0)
    assert model.realized() == pytest.approx(0.05)  # the floor
    fresh, started = Left(b, 0, 4), Left(b, 1, 4)  # a started trial is past where they died
    assert forecast(model, [fresh], 1).seconds == pytest.approx(0.05 * model.seconds(
        model.work(b, 0, 4)))  # fmt: skip
    assert forecast(model, [started], 1).seconds == pytest.approx(model.seconds(left))
    model = CostModel(data, nll_samples=50)
    model.observe("cpu", 10.0, 1e9)
    halving = HalvingSpec(rungs=(2,), keep=0.5, metric="val_elbo")
    at_rung = [Left(cfg, 2, 2) for cfg in (a, b, c)]  # all paused at rung 2 of 4 epochs
    got = forecast(model, at_rung, 1, halving, open_rung=2)
    mean = sum(model.epoch_work(x) + model.nll_work(x) / 2 for x in (a, b, c)) / 3
    rest = 2 * 2 * mean  # 2 survivors of 3, 2 epochs and their NLL each, at the mean cost
    assert got.seconds == pytest.approx(model.seconds(rest))


SIZES = """
name = "sizes"
[data]
limit = 200
[train]
epochs = 1
batch_size = 50
lr = 1e-3
clip = 1.0
[grid]
hidden = [8, 64, 16]
latent = [2, 6]
"""


def test_one_slot_runs_the_trials_longest_first(tmp_path: Path, mnist_root: Path) -> None:
    (tmp_path / "s.toml").write_text(SIZES)
    assert run_inline(tmp_path / "s.toml", tmp_path / "r", mnist_root) == 0
    study = load_study(tmp_path / "s.toml")
    model = CostModel.of(study)
    planned = sorted(expand(study), key=lambda c: (-model.work(c, 0, 1), c.key))
    store = Store.reader(tmp_path / "r" / "sizes" / "study.db")
    try:
        started = [r["key"] for r in store.runs()]
    finally:
        store.close()
    assert started == [c.key for c in planned]
    assert [c.hidden for c in planned[:2]] == [64, 64]  # not the grid's order
