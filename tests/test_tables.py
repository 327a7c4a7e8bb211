"""Per-config tables over repeats, paired comparisons, importances: on hand-made frames."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from vaegrid.analysis import tables

NAMES = ["hidden", "lr"]


def trials_frame(
    values: dict[tuple[int, float], list[float]], status: str = "completed"
) -> pd.DataFrame:
    """A per-trial table as tables.rank makes it: one row per (config, repeat)."""
    rows = []
    for (hidden, lr), per_repeat in values.items():
        config = f"{hidden:04d}{int(lr * 1e4):08d}"[:12]
        for repeat, v in enumerate(per_repeat):
            rows.append(
                {"key": f"{config[:10]}{repeat:02d}", "config": config, "repeat": repeat,
                 "hidden": hidden, "lr": lr, "status": status if not math.isnan(v) else "diverged",
                 "train_elbo": v + 1, "train_recon": v - 9, "train_kl": 10.0,
                 "val_elbo": v, "val_recon": v - 10, "val_kl": 10.0, "best_val_elbo": v,
                 "best_epoch": 3, "seconds": 1.0, "epochs_done": 3, "cause": None}
            )  # fmt: skip
    out = pd.DataFrame(rows)
    out["best_epoch"] = out["best_epoch"].astype("Int64")
    tables._rank_columns(out)
    return out


def test_a_config_is_summarised_over_its_repeats_and_ranked_by_the_mean() -> None:
    trials = trials_frame({(400, 0.03): [100.0, 102.0, 104.0], (600, 0.03): [101.0, 101.5, 102.0]})
    ranking = tables.by_config(trials, NAMES)
    assert list(ranking["hidden"]) == [600, 400]  # 101.5 < 102.0 by the mean
    first = ranking.iloc[1]
    assert first["n_repeats"] == 3 and first["repeats"] == 3
    assert first["val_elbo"] == pytest.approx(102.0)
    assert first["val_elbo_std"] == pytest.approx(2.0)  # sample std (n - 1)
    # mean +- t(0.975, 2) * std / sqrt(3), t = 4.302653 from the table
    half = 4.302653 * 2.0 / math.sqrt(3)
    assert first["val_elbo_ci_low"] == pytest.approx(102.0 - half, abs=1e-5)
    assert first["val_elbo_ci_high"] == pytest.approx(102.0 + half, abs=1e-5)
    assert list(ranking["rank_val_elbo"]) == [1, 2]


def test_a_config_of_one_trial_is_summarised_column_by_column_as_record_by_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """by_config's fast path (configs of one trial, every config of a study without
    repeats: 100,000 in 0.3 s, not 11) gives what the per-record summary gives: the values,
    NaN spread, NaN metrics of a diverged trial, causes and rungs, the dtypes."""
    one = trials_frame({(400, 0.03): [100.0], (600, 0.03): [math.nan], (800, 0.01): [99.0]})
    one["cause"] = [None, "nan loss at epoch 2", None]
    one.loc[1, "best_epoch"] = pd.NA
    one["rung"] = pd.array([None, None, 2], dtype="Int64")
    one["val_nll"] = [90.0, math.nan, 89.0]
    summarised = [*tables.SUMMARISED, "val_nll"]
    fast = tables._one_repeat(one, NAMES, summarised)
    slow = pd.DataFrame(tables._over_repeats(one, NAMES, summarised))
    pd.testing.assert_frame_equal(fast[slow.columns], slow, check_exact=True)
    mixed = trials_frame({(400, 0.03): [100.0, 104.0], (600, 0.03): [101.0], (800, 0.01): [99.0]})
    mixed["cause"] = [None, "nan loss at epoch 2", None, None]
    ranking = tables.by_config(mixed, NAMES)  # configs by each path, ranked together
    reference = pd.DataFrame(tables._summaries(mixed, NAMES, split=False))
    whole = tables.by_config(mixed.iloc[[2]], NAMES)  # one path alone
    assert len(whole) == 1
    monkeypatch.setattr(tables, "_summaries", lambda *a: reference)
    pd.testing.assert_frame_equal(ranking, tables.by_config(mixed, NAMES), check_exact=True)
    ranking = ranking[ranking["hidden"] != 800].reset_index(drop=True)
    assert list(ranking["hidden"]) == [600, 400] and list(ranking["repeats"]) == [1, 2]
    assert list(ranking["rank_val_elbo"]) == [2, 3] and ranking["val_elbo_std"].isna().tolist() == [
        True,
        False,
    ]


def test_a_config_with_a_diverged_repeat_is_diverged_and_ranks_after_the_completed() -> None:
    trials = trials_frame({(400, 0.03): [100.0, math.nan], (600, 0.03): [105.0, 106.0]})
    ranking = tables.by_config(trials, NAMES)
    assert list(ranking["status"]) == ["completed", "diverged"]
    assert list(ranking["rank_val_elbo"]) == [1, 2]
    assert ranking.iloc[1]["n_repeats"] == 1 and math.isnan(ranking.iloc[1]["val_elbo_std"])


def test_a_config_with_repeats_still_to_run_is_not_completed_and_cannot_win() -> None:
    # repeat 0 of every config runs first: a sweep cut short leaves configs half done
    trials = trials_frame({(400, 0.03): [90.0, 95.0, 96.0], (600, 0.03): [94.0, 95.0, 96.0]})
    trials.loc[(trials["hidden"] == 400) & (trials["repeat"] == 1), "status"] = "pending"
    trials.loc[(trials["hidden"] == 400) & (trials["repeat"] == 2), "status"] = "running"
    trials.loc[trials["status"] != "completed", ["val_elbo", "val_recon"]] = math.nan
    ranking = tables.by_config(trials, NAMES)
    assert list(ranking["hidden"]) == [600, 400]  # 90 on one repeat does not win
    assert list(ranking["status"]) == ["completed", "pending"]
    assert list(ranking["rank_val_elbo"]) == [1, 2] and ranking.iloc[1]["n_repeats"] == 1
    assert tables.comparisons(ranking, trials, "val_elbo") == []  # nothing to compare with


def test_one_repeat_keeps_the_trial_key_and_its_values() -> None:
    trials = trials_frame({(400, 0.03): [100.0], (600, 0.03): [99.0]})
    ranking = tables.by_config(trials, NAMES)
    assert set(ranking["key"]) == set(trials["config"])
    assert list(ranking["val_elbo"]) == [99.0, 100.0]
    assert ranking["val_elbo_std"].isna().all()


def test_comparisons_pair_the_repeats() -> None:
    # Seed-to-seed noise (2 nats) dwarfs the difference (0.5), but repeat by repeat the
    # winner is always 0.5 better: a paired test sees it, an unpaired one would not.
    trials = trials_frame(
        {(400, 0.03): [100.0, 102.0, 104.0], (600, 0.03): [100.5, 102.5, 104.5],
         (800, 0.03): [101.0, 105.0, 103.0]}
    )  # fmt: skip
    ranking = tables.by_config(trials, NAMES)
    found = tables.comparisons(ranking, trials, "val_elbo")
    assert [ranking.set_index("key").loc[c.other, "hidden"] for c in found] == [600, 800]
    first, second = found
    assert first.result.n == 3 and first.result.diff == pytest.approx(0.5)
    assert first.result.p == 0.0  # the same difference on every repeat (exactly 0.5 each)
    # 800 vs 400: differences 1, 3, -1: mean 1, std 2, t = 1 / (2 / sqrt 3) = 0.866, df 2:
    # p = 1 - |t| / sqrt(2 + t^2) (Student t with 2 degrees of freedom, in closed form)
    t = 1 / (2 / math.sqrt(3))
    assert second.result.p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)


def test_a_config_with_a_diverged_repeat_is_not_compared() -> None:
    trials = trials_frame(
        {(400, 0.03): [100.0, 102.0], (600, 0.03): [101.0, math.nan], (800, 0.03): [103.0, 104.0]}
    )
    ranking = tables.by_config(trials, NAMES)
    found = tables.comparisons(ranking, trials, "val_elbo")
    assert [ranking.set_index("key").loc[c.other, "hidden"] for c in found] == [800]
    assert found[0].result.diff == pytest.approx(2.5)


def test_importance_finds_the_axis_that_matters() -> None:
    values = {}
    for hidden in (400, 600, 800):
        for lr in (1e-5, 1e-3, 3e-2):
            noise = hidden / 1e4  # a tenth of a nat at most
            values[(hidden, lr)] = [100.0 + 50 * (lr == 1e-5) + 10 * (lr == 1e-3) + noise]
    ranking = tables.by_config(trials_frame(values), NAMES)
    found = tables.importances(ranking, NAMES)
    assert isinstance(found, dict) and set(found) == {"hidden", "lr"}
    assert found["lr"] > 0.95 > found["hidden"]
    assert tables.importances(ranking.head(2), NAMES) == (
        "2 completed configs varying 1 axes: too few to tell"
    )


def test_importance_over_a_flat_grid_is_nothing_mattered_not_a_crash() -> None:
    flat = {(h, lr): [100.0] for h in (400, 600, 800) for lr in (1e-5, 1e-3)}
    ranking = tables.by_config(trials_frame(flat), NAMES)
    assert tables.importances(ranking, NAMES) == (
        "every completed config has the same val_elbo: nothing mattered"
    )


def test_a_setting_applies_to_the_rows_its_parent_allows_and_to_all_without_the_parent() -> None:
    ranking = pd.DataFrame({"model": ["linear", "mlp", "conv", "mlp"], "depth": [2, 1, 2, 3]})
    assert tables.applicable(ranking, "depth").tolist() == [False, True, False, True]
    assert tables.applicable(ranking, "channels").tolist() == [False, False, True, False]
    assert tables.applicable(ranking, "hidden").all()  # no parent: everywhere
    assert tables.applicable(ranking[["depth"]], "depth").all()  # a study that fixes model
    assert tables.varying(ranking, ["model", "depth"]) == ["model"]
    assert tables.varying(ranking, ["model", "depth"], everywhere=False) == ["model", "depth"]


def _random_epochs(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Epoch rows of 40 trials in a shuffled order (some trials stopped early, one with no
    rows, keys of different lengths and cases), and their trials."""
    import numpy as np

    rng = np.random.default_rng(seed)
    keys = [f"{k:0{int(rng.integers(1, 13))}x}" for k in rng.choice(10**6, 40, replace=False)]
    keys[:2] = ["Ab", "aB"]
    rows = []
    for key in keys[:-1]:
        for epoch in range(1, int(rng.integers(2, 12))):
            for split in ("train", "val"):
                rows.append((key, epoch, split, *rng.normal(100, 10, 3), rng.random()))
    order = rng.permutation(len(rows))
    epochs = pd.DataFrame([rows[i] for i in order], columns=["key", "epoch", "split",
                          "elbo", "recon", "kl", "seconds"])  # fmt: skip
    trials = pd.DataFrame({"key": keys, "config": keys, "repeat": 0, "hidden": 8})
    return epochs, trials


@pytest.mark.parametrize("seed", range(5))
def test_the_last_epoch_of_each_trial_and_split_is_the_one_a_sort_and_groupby_finds(
    seed: int,
) -> None:
    epochs, _ = _random_epochs(seed)
    found = tables.last_epochs(epochs).sort_values(["key", "split"]).reset_index(drop=True)
    slow = epochs.sort_values("epoch").groupby(["key", "split"]).tail(1)
    pd.testing.assert_frame_equal(found, slow.sort_values(["key", "split"]).reset_index(drop=True))


@pytest.mark.parametrize("one_number", [True, False])
def test_the_long_epochs_table_is_ordered_as_sort_values_orders_it(
    one_number: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By one int64 made of the rows' codes, or (when it would not fit) by lexsort."""
    if not one_number:
        monkeypatch.setattr(tables, "ONE_NUMBER_MAX", 0)
    for seed in range(5):
        epochs, trials = _random_epochs(seed)
        head = ["key", "config", "repeat", "hidden"]
        slow = epochs.merge(trials[head], on="key")
        slow = slow[[*head, "epoch", "split", *tables.METRICS, "seconds"]]
        slow = slow.sort_values(["key", "epoch", "split"]).reset_index(drop=True)
        found = tables.long_epochs(epochs, trials, ["hidden"])
        pd.testing.assert_frame_equal(found, slow, check_exact=True)
