"""A study's tables, from its database rows: per trial, per config over its repeats, the
winners, the paired comparisons of the winner with the next configs, what mattered.

Pure pandas over frames the caller read (``report`` writes them, ``vaegrid.load`` returns
them): nothing here touches a file or a database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vaegrid.analysis import stats
from vaegrid.status import COMPLETED, DIVERGED, FAILED, STOPPED
from vaegrid.study.axes import AXIS, applies
from vaegrid.study.core import TrialConfig

# Ranking criteria: column of ranking.csv -> what it ranks by (lower is better).
CRITERIA = {"val_elbo": "validation elbo", "val_recon": "validation reconstruction"}
# A study with [rank] nll_samples ranks by the importance-sampled validation NLL too (the
# ELBO ranks models trained on another bound, IWAE's, unfairly).
NLL_CRITERION = {"val_nll": "validation NLL"}


def criteria(frame: pd.DataFrame) -> dict[str, str]:
    """The criteria ``frame`` (a :func:`rank` or :func:`by_config` table) is ranked by."""
    return {**CRITERIA, **(NLL_CRITERION if "val_nll" in frame.columns else {})}


def ranked_by(frame: pd.DataFrame) -> str:
    """The metric that ranks the study: ``val_nll`` in a study with ``[rank] nll_samples``
    (fair to models trained on other bounds), else ``val_elbo``. The importances, the
    heatmap and the parallel plot show it."""
    return "val_nll" if "val_nll" in frame.columns else "val_elbo"


METRICS = ("elbo", "recon", "kl")
SPLIT_METRICS = [f"{s}_{m}" for s in ("train", "val") for m in METRICS]
# Summarised over repeats in the per-config ranking: mean, std and 95% interval of each.
SUMMARISED = [*SPLIT_METRICS, "best_val_elbo"]
# A config that did not complete every repeat takes the first of these its repeats hold.
_STATUS_ORDER = (DIVERGED, FAILED, STOPPED)
# fANOVA on at most this many completed configs (a seeded sample of more): its forest on
# 5,000 configs took 30 s here, and grows with n.
IMPORTANCE_CONFIGS_MAX = 2_000


def with_axes(trials: pd.DataFrame, configs: Mapping[str, TrialConfig]) -> pd.DataFrame:
    """``vg_trial`` rows with a column per axis, the repeat and the config (its repeat-0
    key) read from each trial's validated config, in place of the stored JSON."""
    extra = pd.DataFrame(
        [{"key": k, "config": c.config_id, "repeat": c.repeat, **c.axis_values()}
         for k, c in configs.items()],
        columns=["key", "config", "repeat", *AXIS],
    )  # fmt: skip
    stored = [c for c in ("config", *AXIS) if c in trials.columns]
    return trials.drop(columns=stored).merge(extra, on="key", how="left")


def rank(
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    names: Sequence[str],
    stops: pd.DataFrame | None = None,
    nll: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per trial: config, status, final and best metrics, ranks.

    Ranks follow scikit-learn's rule (``rankdata(method="min")``: ties share the lowest
    rank). Completed trials rank first; then trials a halving rung stopped, by their last
    validation metrics (those of the epoch they stopped at), which they keep; then every
    other trial (diverged, failed, unfinished), last, together, with empty metrics.

    Args:
        trials: :func:`with_axes` of ``vg_trial``.
        epochs: ``vg_epoch``.
        names: The searched axes: the columns shown.
        stops: ``vg_stop`` of a halving study: adds the column ``rung``, where each stopped
            trial was stopped. None (a study without halving): no such column.
        nll: ``vg_nll`` of a study with ``[rank] nll_samples``: adds ``val_nll`` (at the
            trial's last finished epoch) and ``rank_val_nll``. None: no such columns.
    """
    done = (trials["status"] == COMPLETED).to_numpy()
    stopped = (trials["status"] == STOPPED).to_numpy()
    last = last_epochs(epochs)
    finals = last.pivot(index="key", columns="split", values=list(METRICS))
    finals.columns = [f"{col[1]}_{col[0]}" for col in finals.columns]  # ("elbo", "val") -> val_elbo
    finals = finals.reindex(columns=SPLIT_METRICS)
    val = epochs[epochs["split"] == "val"]
    best = val.loc[val.groupby("key")["elbo"].idxmin(), ["key", "elbo", "epoch"]]
    best = best.set_index("key").rename(columns={"elbo": "best_val_elbo", "epoch": "best_epoch"})
    head = ["key", "config", "repeat", *names]
    out = trials[[*head, "status", "epochs_done", "seconds", "cause"]].join(finals, on="key")
    out = out.join(best, on="key")
    metric_cols = [*SPLIT_METRICS, "best_val_elbo", "best_epoch"]
    if nll is not None:  # the NLL at the epoch the trial's metrics are from
        rows = zip(nll["key"], nll["epoch"], nll["nll"], strict=True)
        at = {(k, int(e)): float(v) for k, e, v in rows}
        done_at = zip(out["key"], out["epochs_done"], strict=True)
        out["val_nll"] = [at.get((k, int(e)), math.nan) for k, e in done_at]
        metric_cols.append("val_nll")
    out.loc[~(done | stopped), metric_cols] = math.nan
    _rank_columns(out)
    out["best_epoch"] = out["best_epoch"].astype("Int64")
    nll_cols = ["val_nll"] if nll is not None else []
    order = [*head, "status", *SPLIT_METRICS, *nll_cols, "best_val_elbo", "best_epoch"]
    order += ["seconds", *(f"rank_{c}" for c in criteria(out)), "epochs_done", "cause"]
    if stops is not None:
        out["rung"] = out["key"].map(stops.set_index("key")["rung"]).astype("Int64")
        order.append("rung")
    return out[order].sort_values(["rank_val_elbo", "rank_val_recon", "key"]).reset_index(drop=True)


def last_epochs(epochs: pd.DataFrame) -> pd.DataFrame:
    """The row of each trial and split at its last epoch: sorted by numbers, not by a
    groupby on the keys' text (2 million rows: 0.4 s, not 3.4). ``epochs`` as the reader
    checked them: no NaN key, epoch or split, no (key, split, epoch) twice."""
    keys = pd.factorize(epochs["key"])[0]
    splits = pd.factorize(epochs["split"])[0]
    order = np.lexsort((epochs["epoch"].to_numpy(), splits, keys))
    keys, splits = keys[order], splits[order]
    ends = np.ones(len(order), dtype=bool)  # the last row of each (key, split) in that order
    ends[:-1] = (keys[1:] != keys[:-1]) | (splits[1:] != splits[:-1])
    return epochs.iloc[order[ends]]


ONE_NUMBER_MAX = 2**62  # rows ordered by one int64 made of their codes while they fit


def long_epochs(epochs: pd.DataFrame, trials: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Every epoch row with its trial's config, repeat and searched settings ``names``,
    ordered by key, epoch and split (``epochs.csv``, ``Results.epochs``): ordered by the
    codes of sorted values, not by the keys' text (2 million rows: 0.4 s, not 2.1).
    ``epochs`` as the reader checked them: no NaN key, epoch or split."""
    head = ["key", "config", "repeat", *names]
    codes = [pd.factorize(epochs[c], sort=True) for c in ("key", "epoch", "split")]
    if math.prod(len(uniques) for _, uniques in codes) < ONE_NUMBER_MAX:  # one number a row
        number = np.zeros(len(epochs), dtype=np.int64)
        for code, uniques in codes:
            number = number * len(uniques) + code
        order = np.argsort(number, kind="stable")
    else:
        order = np.lexsort([code for code, _ in reversed(codes)])
    ordered = epochs.iloc[order]  # before the merge: fewer columns to move
    long = ordered.merge(trials[head], on="key")  # an inner merge keeps the left's order
    return long[[*head, "epoch", "split", *METRICS, "seconds"]].reset_index(drop=True)


def _rank_columns(out: pd.DataFrame) -> None:
    """Add ``rank_<criterion>``: completed rows first, then stopped ones, then the rest."""
    done = out["status"] == COMPLETED
    stopped = out["status"] == STOPPED
    n_done, n_stopped = int(done.sum()), int(stopped.sum())
    for column in criteria(out):
        ranks = out.loc[done, column].rank(method="min")
        after = out.loc[stopped, column].rank(method="min") + n_done
        ranks = pd.concat([ranks, after]).reindex(out.index)
        out["rank_" + column] = ranks.fillna(n_done + n_stopped + 1).astype(int)


def by_config(trials: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """One row per config, over its repeats: the mean of each metric (ranks use it), its
    standard deviation and 95% interval, ``n_repeats`` (repeats with metrics) and
    ``repeats`` (trials of the config).

    A config is ``completed`` when all its repeats are; otherwise it takes the first of
    diverged, failed, stopped among its repeats, else the status of its first repeat that
    has not finished (pending, running, ...): it ranks after every completed config. Its
    ``key`` is the config's: the key of its repeat 0.

    Args:
        trials: :func:`rank`'s per-trial table.
        names: The searched axes.
    """
    out = _summaries(trials, names)
    _rank_columns(out)
    out["best_epoch"] = out["best_epoch"].round().astype("Int64")
    if "rung" in out.columns:
        out["rung"] = out["rung"].astype("Int64")
    nll_cols = ["val_nll"] if "val_nll" in out.columns else []
    spread = [f"{c}_{s}" for c in [*SUMMARISED, *nll_cols] for s in ("std", "ci_low", "ci_high")]
    order = ["key", *names, "status", "n_repeats", "repeats", *SPLIT_METRICS, *nll_cols]
    order += ["best_val_elbo", "best_epoch", "seconds", *(f"rank_{c}" for c in criteria(out))]
    order += ["epochs_done", "cause"]
    order += [*(["rung"] if "rung" in out.columns else []), *spread]
    return out[order].sort_values(["rank_val_elbo", "rank_val_recon", "key"]).reset_index(drop=True)


def _summaries(trials: pd.DataFrame, names: Sequence[str], split: bool = True) -> pd.DataFrame:
    """:func:`by_config`'s rows before ranking: the configs of one trial column by column,
    the others record by record (``split`` False: every config record by record, as it was
    before, the reference the tests hold the split to)."""
    summarised = [*SUMMARISED, *(["val_nll"] if "val_nll" in trials.columns else [])]
    if not split:
        return pd.DataFrame(_over_repeats(trials, names, summarised))
    repeats = trials.groupby("config", sort=False)["config"].transform("size").to_numpy()
    parts = [
        part
        for part in (
            _one_repeat(trials[repeats == 1], names, summarised),
            pd.DataFrame(_over_repeats(trials[repeats > 1], names, summarised)),
        )
        if len(part)
    ]
    if len(parts) == 1:
        return parts[0]
    out = pd.concat(parts, ignore_index=True)
    for column in out.columns:  # each part guessed its own dtype: guessed once, over all
        if out[column].dtype == np.dtype(object):
            out[column] = pd.Series(out[column].tolist(), index=out.index)
    return out


def _one_repeat(trials: pd.DataFrame, names: Sequence[str], summarised: list[str]) -> pd.DataFrame:
    """:func:`by_config`'s rows of the configs that have one trial, column by column: its
    own values (the summary of one value is that value, its spread NaN)."""
    out = pd.DataFrame({"key": trials["config"].to_numpy()})
    for n in names:
        out[n] = trials[n].to_numpy()
    out["status"] = trials["status"].to_numpy()
    out["repeats"] = 1
    out["n_repeats"] = trials["val_elbo"].notna().to_numpy().astype(int)
    for column in summarised:
        out[column] = trials[column].to_numpy(dtype=float)
        for spread in ("std", "ci_low", "ci_high"):
            out[f"{column}_{spread}"] = math.nan
    out["best_epoch"] = trials["best_epoch"].to_numpy(dtype=float, na_value=math.nan)
    out["seconds"] = trials["seconds"].to_numpy(dtype=float)
    out["epochs_done"] = trials["epochs_done"].to_numpy().astype(int)
    cause = trials["cause"].to_numpy(dtype=object)
    out["cause"] = [c if pd.notna(c) else None for c in cause]
    if "rung" in trials.columns:
        rung = trials["rung"].to_numpy(dtype=object)
        out["rung"] = [r if pd.notna(r) else None for r in rung]
    return out


def _over_repeats(
    trials: pd.DataFrame, names: Sequence[str], summarised: list[str]
) -> list[dict[str, object]]:
    """:func:`by_config`'s rows of the configs that have several trials."""
    # Grouped as plain records, not pandas groups: a group's Series operations cost ~2 ms,
    # which at 100,000 configs was minutes.
    groups: dict[Any, list[dict[Any, Any]]] = {}
    for r in trials.sort_values("repeat", kind="stable").to_dict("records"):
        groups.setdefault(r["config"], []).append(r)
    rows = []
    for config, group in groups.items():
        statuses = [g["status"] for g in group]
        if all(s == COMPLETED for s in statuses):
            status = COMPLETED
        else:  # the first repeat that ended badly, else the first that has not finished
            unfinished = [s for s in statuses if s != COMPLETED]
            status = next((s for s in _STATUS_ORDER if s in statuses), unfinished[0])
        row: dict[str, object] = {"key": config}
        row.update({n: group[0][n] for n in names})
        row.update(status=status, repeats=len(group))
        row["n_repeats"] = sum(1 for g in group if pd.notna(g["val_elbo"]))
        for column in summarised:
            s = stats.summarize([g[column] for g in group if pd.notna(g[column])])
            row[column] = s.mean
            row[f"{column}_std"], row[f"{column}_ci_low"] = s.std, s.ci_low
            row[f"{column}_ci_high"] = s.ci_high
        best_epochs = [float(g["best_epoch"]) for g in group if pd.notna(g["best_epoch"])]
        row["best_epoch"] = float(np.median(best_epochs)) if best_epochs else math.nan
        row["seconds"] = float(np.sum([g["seconds"] for g in group]))
        row["epochs_done"] = int(min(g["epochs_done"] for g in group))
        causes = [g["cause"] for g in group if pd.notna(g["cause"])]
        row["cause"] = causes[0] if causes else None
        if "rung" in trials.columns:
            rungs = [g["rung"] for g in group if pd.notna(g["rung"])]
            row["rung"] = min(rungs) if rungs else None
        rows.append(row)
    return rows


def pick_winners(ranking: pd.DataFrame, top: int, names: Sequence[str]) -> pd.DataFrame:
    """The top ``top`` completed configs of each criterion (ties broken by key)."""
    rows = []
    for column in criteria(ranking):
        best = (
            ranking[ranking["status"] == COMPLETED].sort_values(["rank_" + column, "key"]).head(top)
        )
        rows.append(best.assign(criterion=column, rank=best["rank_" + column]))
    cols = ["criterion", "rank", "key", *names, "n_repeats", "val_elbo", "val_recon", "val_kl"]
    cols += ["val_nll"] if "val_nll" in ranking.columns else []
    return pd.concat(rows)[cols].reset_index(drop=True)


def test_table(
    winners: pd.DataFrame, trials: pd.DataFrame, tests: pd.DataFrame, k: int
) -> pd.DataFrame:
    """Each winner on the test split: the mean, std and 95% interval over its tested repeats.

    ``test_nll`` is the NLL at ``k`` samples (``nll_samples``); every other k stored for a
    winner's trials adds ``test_nll_k<k>`` (and its std) beside it, NaN where not computed.

    Args:
        winners: :func:`pick_winners`.
        trials: :func:`rank`'s per-trial table (which trial is which config's repeat).
        tests: ``vg_test``: a row per tested trial and k.
        k: The importance samples of the NLL the table stands on.
    """
    at_k = tests[tests["nll_samples"] == k].set_index("key")
    rows = []
    for winner in winners.to_dict("records"):
        keys = trials.loc[trials["config"] == winner["key"], "key"]
        found = at_k.reindex(keys).dropna(subset=["nll"])
        row = dict(winner)
        row["n_tested"] = len(found)
        for metric in ("elbo", "recon", "kl", "nll"):
            s = stats.summarize(found[metric].tolist())
            row[f"test_{metric}"], row[f"test_{metric}_std"] = s.mean, s.std
            row[f"test_{metric}_ci_low"], row[f"test_{metric}_ci_high"] = s.ci_low, s.ci_high
        row["nll_samples"] = k
        rows.append(row)
    out = pd.DataFrame(rows)
    mine = tests[tests["key"].isin(trials.loc[trials["config"].isin(winners["key"]), "key"])]
    for other in sorted(set(mine["nll_samples"].astype(int)) - {k}):
        at = mine[mine["nll_samples"] == other].set_index("key")["nll"]
        means, stds = [], []
        for config in out["key"]:
            s = stats.summarize(at.reindex(trials.loc[trials["config"] == config, "key"])
                                .dropna().tolist())  # fmt: skip
            means.append(s.mean)
            stds.append(s.std)
        out[f"test_nll_k{other}"], out[f"test_nll_k{other}_std"] = means, stds
    return out


@dataclass(frozen=True)
class Comparison:
    """The winner against another config, paired by repeat."""

    criterion: str
    winner: str  # config keys
    other: str
    result: stats.Paired  # of other - winner: positive when the winner is better


def comparisons(
    ranking: pd.DataFrame, trials: pd.DataFrame, criterion: str, n_next: int = 4
) -> list[Comparison]:
    """The best completed config by ``criterion`` against each of the next ``n_next``:
    the paired difference of their repeats (repeat r of both drew the same seeds)."""
    done = ranking[ranking["status"] == COMPLETED].sort_values(["rank_" + criterion, "key"])
    if len(done) < 2:
        return []
    values = trials[trials["status"] == COMPLETED].pivot(
        index="repeat", columns="config", values=criterion
    )
    first = str(done["key"].iloc[0])
    out = []
    for other in done["key"].iloc[1 : 1 + n_next]:
        both = values[[first, other]].dropna()
        result = stats.paired(both[first].tolist(), both[other].tolist())
        out.append(Comparison(criterion, first, str(other), result))
    return out


def applicable(ranking: pd.DataFrame, name: str) -> pd.Series:
    """The rows the setting ``name`` means something for (``Axis.applies``: depth for mlp
    configs only); the others hold its neutral value."""
    axis = AXIS[name]
    parent = axis.applies[0] if axis.applies is not None else None
    if parent is None or parent not in ranking.columns:
        return pd.Series(applies(axis, {}), index=ranking.index, dtype=bool)
    column = ranking[parent]  # asked once per distinct value of the parent setting
    answer = {v: applies(axis, {parent: v}) for v in column.unique()}
    return column.map(answer).astype(bool)


def varying(ranking: pd.DataFrame, names: Sequence[str], everywhere: bool = True) -> list[str]:
    """The searched axes that take more than one value among the configs they apply to;
    with ``everywhere``, only those that apply to every config (fANOVA, the heatmap and the
    parallel coordinates compare configs by all their axes: a neutral value is no value)."""
    out = []
    for n in names:
        mask = applicable(ranking, n)
        if everywhere and not mask.all():
            continue
        if ranking.loc[mask, n].nunique() > 1:
            out.append(n)
    return out


def importances(
    ranking: pd.DataFrame, names: Sequence[str], metric: str = "val_elbo"
) -> dict[str, float] | str:
    """Each varying axis's share of the variance of ``metric`` over the completed configs
    (Optuna's fANOVA evaluator, seeded), or why it cannot be computed.

    The space is the grid's: each axis from its least to its greatest value (log scale
    where it has one), not its whole allowed range. fANOVA integrates over the space it is
    given, and the allowed ranges (hidden 1 to 16,384, lr 1e-12 to 1e6) would make it judge
    mostly where no config ran: a toy grid where only lr mattered gave hidden 0.69. Past
    IMPORTANCE_CONFIGS_MAX completed configs, on a seeded sample of that many (the space
    still the grid's).
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = ranking[ranking["status"] == COMPLETED]
    axes = varying(done, names)
    if len(done) < 3 or not axes:
        return f"{len(done)} completed configs varying {len(axes)} axes: too few to tell"
    if done[metric].nunique() == 1:  # fANOVA divides by the total variance
        return f"every completed config has the same {metric}: nothing mattered"
    space = {n: AXIS[n].distribution([_native(v) for v in done[n].unique()]) for n in axes}
    if len(done) > IMPORTANCE_CONFIGS_MAX:  # a seeded sample: fANOVA's forest grows with n
        done = done.sample(IMPORTANCE_CONFIGS_MAX, random_state=0)
    study = optuna.create_study(direction="minimize")
    for row in done.to_dict("records"):
        study.add_trial(
            optuna.trial.create_trial(
                params={n: _native(row[n]) for n in axes},
                distributions=space,
                value=float(row[metric]),
            )
        )
    found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), params=axes)
    return {n: float(found.get(n, 0.0)) for n in axes}


def _native(value: object) -> object:
    """A pandas/numpy scalar as the Python value Optuna's distributions check."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value
