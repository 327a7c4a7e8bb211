from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import CHECKPOINT, CONFIG, LOG, WEIGHTS

from vaegrid.layout import TrialFiles
from vaegrid.models.linear import LinearVAE as VAE
from vaegrid.study.core import MODEL, DataSpec, TrialConfig
from vaegrid.train import trial
from vaegrid.train.data import load_splits
from vaegrid.train.records import EpochRecord
from vaegrid.train.records import finalize as finalize_files
from vaegrid.train.trial import (
    DeviceMismatch,
    build_model,
    device_kind,
    make_optimizer,
)


def run_trial(cfg, train, val, folder: Path, **kwargs):  # type: ignore[no-untyped-def]
    """train.trial.run_trial into the trial folder ``folder``."""
    return trial.run_trial(cfg, train, val, TrialFiles(folder), **kwargs)


def finalize(folder: Path) -> None:
    finalize_files(TrialFiles(folder))


DATA = DataSpec(fractions=(0.6, 0.2, 0.2))


def config(lr: float = 1e-2, epochs: int = 4, hidden: int = 32, latent: int = 8) -> TrialConfig:
    return TrialConfig.make(
        0, DATA, hidden=hidden, latent=latent, lr=lr, clip=1.0, epochs=epochs, batch_size=50
    )


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
    assert state["identity"]["key"] == config().key and state["identity"]["model"] == MODEL
    assert state["model"]["mu.weight"].shape == (8, 32)
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


def test_an_epoch_checkpointed_but_not_logged_is_logged_on_resume(splits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cut = tmp_path / "cut"
    run_trial(config(), splits.train, splits.val, cut, stop_at=2)
    lines = (cut / LOG).read_text().splitlines(keepends=True)
    # killed after epoch 2's checkpoint, before its log line (CI caught it under kill -9);
    # a failed run's traceback stays where it was
    (cut / LOG).write_text(lines[0] + "failed on cpu (pid 1):\nTraceback ...\n")
    run_trial(config(), splits.train, splits.val, cut)
    log = (cut / LOG).read_text().splitlines()
    assert [line.split()[1] for line in log if line.startswith("epoch")] == [
        "1/4",
        "2/4",
        "3/4",
        "4/4",
    ]
    assert log[1] == "failed on cpu (pid 1):" and log[3] == lines[1].rstrip("\n")


def test_paused_at_rungs_then_continued_gives_the_uninterrupted_numbers(
    splits, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    whole = run_trial(config(), splits.train, splits.val, tmp_path / "whole")
    cut = tmp_path / "cut"
    first = run_trial(config(), splits.train, splits.val, cut, stop_at=1)
    assert first.status == "paused" and [r.epoch for r in first.history] == [1]
    # paused: the checkpoint stays for the next rung, no final weights yet
    assert (cut / CHECKPOINT).exists() and not (cut / WEIGHTS).exists()
    again = run_trial(config(), splits.train, splits.val, cut, stop_at=1)  # already there
    assert again.status == "paused" and metrics(again.history) == metrics(first.history)
    second = run_trial(config(), splits.train, splits.val, cut, stop_at=3)
    assert second.status == "paused" and [r.epoch for r in second.history] == [1, 2, 3]
    last = run_trial(config(), splits.train, splits.val, cut, stop_at=None)
    assert last.status == "completed" and metrics(last.history) == metrics(whole.history)
    assert (cut / WEIGHTS).read_bytes() == (tmp_path / "whole" / WEIGHTS).read_bytes()
    log = (cut / LOG).read_text().splitlines()
    assert [line.split()[1] for line in log] == ["1/4", "2/4", "3/4", "4/4"]
    beyond = run_trial(config(), splits.train, splits.val, tmp_path / "b", stop_at=99)
    assert beyond.status == "completed" and metrics(beyond.history) == metrics(whole.history)


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
    for text in ('"a string"', "42", "[1, 2]", '{"data": 1}', "{"):  # not a config at all
        (tmp_path / "t" / CONFIG).write_text(text)
        with pytest.raises(ValueError, match="another trial's files"):
            run_trial(config(epochs=1), splits.train, splits.val, tmp_path / "t")


def test_a_checkpoint_from_another_kind_of_device_is_refused_not_continued(
    splits,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    cfg = config(epochs=3)
    seen: list[EpochRecord] = []

    def stop_after_one(record: EpochRecord) -> None:
        seen.append(record)
        raise KeyboardInterrupt  # as a kill after the first epoch's checkpoint

    with pytest.raises(KeyboardInterrupt):
        run_trial(cfg, splits.train, splits.val, tmp_path / "t", on_epoch=stop_after_one)
    state = torch.load(tmp_path / "t" / CHECKPOINT, weights_only=True)
    assert state["identity"] == {
        "key": cfg.key, "model": MODEL, "device": device_kind(torch.device("cpu"))
    }  # fmt: skip
    state["identity"]["device"] = "NVIDIA H100 80GB HBM3 / torch 2.14.1"
    torch.save(state, tmp_path / "t" / CHECKPOINT)
    with pytest.raises(DeviceMismatch, match=r"was made on NVIDIA H100 80GB HBM3 / torch 2\.14\.1"):
        run_trial(cfg, splits.train, splits.val, tmp_path / "t")
    assert len(torch.load(tmp_path / "t" / CHECKPOINT, weights_only=True)["history"]) == 1
    (tmp_path / "t" / CHECKPOINT).write_bytes(b"not a checkpoint")  # truncated, overwritten
    with pytest.raises(ValueError, match="not a readable checkpoint of this trial"):
        run_trial(cfg, splits.train, splits.val, tmp_path / "t")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_same_trial_twice_on_one_gpu_gives_identical_numbers(tmp_path: Path) -> None:
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    x = torch.rand(400, 784, generator=torch.Generator().manual_seed(0)).cuda()
    runs = [
        run_trial(config(epochs=3, hidden=256, latent=16), x[:300], x[300:], tmp_path / str(i))
        for i in range(2)
    ]
    assert metrics(runs[0].history) == metrics(runs[1].history)
    assert runs[0].history[-1].val.elbo < runs[0].history[0].val.elbo


def test_trials_started_at_once_in_threads_of_one_process_get_their_own_weights() -> None:
    # a Dask worker runs K trials in threads of one process: their inits must not mix
    import threading

    configs = [config(hidden=64 + i, latent=4) for i in range(8)]
    alone = {c.key: build_model(c, "cpu").state_dict() for c in configs}
    start = threading.Barrier(len(configs))
    together: dict[str, dict[str, torch.Tensor]] = {}

    def build(c: TrialConfig) -> None:
        start.wait()
        for _ in range(20):  # many overlapping inits
            together[c.key] = build_model(c, "cpu").state_dict()

    threads = [threading.Thread(target=build, args=(c,)) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for key, state in alone.items():
        assert all(torch.equal(state[name], together[key][name]) for name in state), key


def _epoch1(cfg: TrialConfig, splits, tmp_path: Path) -> EpochRecord:  # type: ignore[no-untyped-def]
    return run_trial(cfg, splits.train, splits.val, tmp_path / cfg.key).history[0]


def test_configs_that_differ_in_training_settings_only_are_paired(splits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = config(epochs=1).replace(clip=1e6)
    # The same initial weights whatever the lr, clip, optimizer or beta...
    weights = build_model(base, "cpu").state_dict()
    for other in (base.replace(lr=3e-2), base.replace(optimizer="sgd"), base.replace(beta=2.0)):
        assert all(
            torch.equal(weights[k], v) for k, v in build_model(other, "cpu").state_dict().items()
        )
    # ...and the same batches and z draws: a clip that never bites gives the same numbers.
    assert _same(_epoch1(base, splits, tmp_path), _epoch1(base.replace(clip=1e7), splits, tmp_path))
    # Another repeat draws other weights, batches and z; another width other weights.
    assert not _same(
        _epoch1(base, splits, tmp_path), _epoch1(base.replace(repeat=1), splits, tmp_path)
    )
    other_repeat = build_model(base.replace(repeat=1), "cpu").state_dict()
    assert not torch.equal(weights["mu.weight"], other_repeat["mu.weight"])
    wider = build_model(base.replace(hidden=base.hidden + 1), "cpu").state_dict()
    assert not torch.equal(weights["mu.weight"][:, :4], wider["mu.weight"][:, :4])


def _same(a: EpochRecord, b: EpochRecord) -> bool:
    return (a.train, a.val) == (b.train, b.val)


def test_beta_weighs_the_kl_in_training_but_the_metrics_stay_the_elbo(
    splits, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    one = run_trial(config(epochs=2), splits.train, splits.val, tmp_path / "b1").history
    low = run_trial(
        config(epochs=2).replace(beta=0.1), splits.train, splits.val, tmp_path / "b0"
    ).history
    assert low[-1].val.kl > one[-1].val.kl  # a lighter KL weight lets the code spread
    for r in low:
        assert abs(r.val.elbo - (r.val.recon + r.val.kl)) < 1e-3
        assert abs(r.train.elbo - (r.train.recon + r.train.kl)) < 1e-3


@pytest.mark.parametrize(
    ("optimizer", "kind", "expected"),
    [
        ("adam", torch.optim.Adam, {"weight_decay": 1e-3}),
        ("adamw", torch.optim.AdamW, {"weight_decay": 1e-3}),
        ("sgd", torch.optim.SGD, {"weight_decay": 1e-3, "momentum": 0.9}),
    ],
)
def test_optimizers_take_their_settings(optimizer: str, kind: type, expected: dict) -> None:  # type: ignore[type-arg]
    cfg = config().replace(
        optimizer=optimizer,
        weight_decay=1e-3,
        momentum=0.9 if optimizer == "sgd" else 0.0,
    )
    made = make_optimizer(cfg, build_model(cfg, "cpu").parameters())
    assert type(made) is kind and made.defaults["lr"] == cfg.lr
    assert {k: made.defaults[k] for k in expected} == expected


def test_each_optimizer_trains(splits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for optimizer, lr in (("adamw", 1e-2), ("sgd", 1e-2)):
        cfg = config(epochs=2, lr=lr).replace(
            optimizer=optimizer,
            momentum=0.9 if optimizer == "sgd" else 0.0,
        )
        history = run_trial(cfg, splits.train, splits.val, tmp_path / optimizer).history
        assert history[-1].val.elbo < history[0].val.elbo, optimizer


def test_dynamic_binarization_is_fresh_each_epoch_and_the_same_on_every_run(
    mnist_root: Path, tmp_path: Path
) -> None:
    data = replace(DATA, binarize="dynamic")
    s = load_splits(mnist_root, data, seed=0, device="cpu")
    seen: list[torch.Tensor] = []
    original = VAE.forward

    def spy(self: VAE, x: torch.Tensor, eps: torch.Tensor):  # type: ignore[no-untyped-def]
        if self.training:
            seen.append(x.clone())
        return original(self, x, eps)

    cfg = TrialConfig.make(
        0, data, hidden=32, latent=8, lr=1e-2, clip=1.0, epochs=2, batch_size=len(s.train) - 1
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VAE, "forward", spy)
        a = run_trial(cfg, s.train, s.val, tmp_path / "a")
        first = list(seen)
        seen.clear()
        b = run_trial(cfg, s.train, s.val, tmp_path / "b")
    assert metrics(a.history) == metrics(b.history)
    assert len(first) == 2 and all(torch.equal(x, y) for x, y in zip(first, seen, strict=True))
    for x in first:
        assert set(x.unique().tolist()) == {0.0, 1.0}  # binary images, drawn from grey ones
    assert not torch.equal(first[0], first[1])  # a fresh draw each epoch (one batch each)
    g = load_splits(mnist_root, DATA, 0, "cpu")
    grey = run_trial(cfg.replace(data=DATA), g.train, g.val, tmp_path / "g")
    assert metrics(grey.history) != metrics(a.history)
