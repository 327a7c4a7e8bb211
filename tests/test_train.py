from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vaegrid.data import load_splits
from vaegrid.study import DataSpec, TrainSpec, TrialConfig
from vaegrid.train import CHECKPOINT, CONFIG, LOG, WEIGHTS, EpochRecord, finalize, run_trial

DATA = DataSpec(fractions=(0.6, 0.2, 0.2))


def config(lr: float = 1e-2, epochs: int = 4, hidden: int = 32, latent: int = 8) -> TrialConfig:
    return TrialConfig(0, DATA, TrainSpec(epochs=epochs, batch_size=50), hidden, latent, lr, 1.0)


@pytest.fixture
def splits(mnist_root: Path):  # type: ignore[no-untyped-def]
    return load_splits(mnist_root, DATA, seed=0, device="cpu")


def metrics(history: list[EpochRecord]) -> list[tuple[object, object]]:
    return [(r.train, r.val) for r in history]


def test_short_trial_lowers_validation_elbo_and_writes_its_folder(splits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seen: list[EpochRecord] = []
    result = run_trial(config(), splits.train, splits.val, tmp_path / "t", on_epoch=seen.append)
    assert result.status == "completed" and seen == result.history
    assert [r.epoch for r in result.history] == [1, 2, 3, 4]
    assert result.history[-1].val.elbo < result.history[0].val.elbo - 10
    for r in result.history:
        assert abs(r.val.elbo - (r.val.recon + r.val.kl)) < 1e-3 and r.seconds > 0
    assert {p.name for p in (tmp_path / "t").iterdir()} == {CONFIG, CHECKPOINT, WEIGHTS, LOG}
    state = torch.load(tmp_path / "t" / WEIGHTS, weights_only=True)
    assert state["mu.weight"].shape == (8, 32)
    finalize(tmp_path / "t")
    assert not (tmp_path / "t" / CHECKPOINT).exists()


def test_same_config_twice_gives_identical_metrics_whatever_ran_before(
    splits, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    a = run_trial(config(), splits.train, splits.val, tmp_path / "a")
    torch.manual_seed(123)  # disturb the global RNG: trials must not read it
    run_trial(config(lr=3e-2, latent=4), splits.train, splits.val, tmp_path / "other")
    torch.rand(1000)
    b = run_trial(config(), splits.train, splits.val, tmp_path / "b")
    assert metrics(a.history) == metrics(b.history)


class Stop(Exception):
    pass


def test_stop_and_continue_gives_identical_metrics(splits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    whole = run_trial(config(), splits.train, splits.val, tmp_path / "whole")

    def stop_after_2(record: EpochRecord) -> None:
        if record.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        run_trial(config(), splits.train, splits.val, tmp_path / "cut", on_epoch=stop_after_2)
    replayed: list[EpochRecord] = []
    resumed = run_trial(
        config(), splits.train, splits.val, tmp_path / "cut", on_epoch=replayed.append
    )
    assert metrics(resumed.history) == metrics(whole.history)
    # the restored epochs are reported again first, then only the new ones run
    assert [r.epoch for r in replayed] == [1, 2, 3, 4]
    assert replayed[:2] == resumed.history[:2]
    log = (tmp_path / "cut" / LOG).read_text().splitlines()
    assert [line.split()[1] for line in log] == ["1/4", "2/4", "3/4", "4/4"]


def test_huge_learning_rate_diverges_as_a_result_not_an_exception(splits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run_trial(config(lr=1e3, epochs=6), splits.train, splits.val, tmp_path / "d")
    assert result.status == "diverged"
    assert result.diverged_epoch is not None and result.cause is not None
    assert (
        result.cause.startswith("non-finite")
        and f"in epoch {result.diverged_epoch}" in result.cause
    )
    assert len(result.history) == result.diverged_epoch - 1
    assert not (tmp_path / "d" / WEIGHTS).exists()


def test_folder_of_another_config_is_refused(splits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_trial(config(epochs=1), splits.train, splits.val, tmp_path / "t")
    with pytest.raises(ValueError, match="another trial's files"):
        run_trial(config(epochs=1, hidden=16), splits.train, splits.val, tmp_path / "t")
