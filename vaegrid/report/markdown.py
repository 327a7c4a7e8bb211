"""report.md's text, from the study's tables: pure (frames and values in, text out).

Every sentence says what follows from the study's own data (and its description, its
author's words): none assumes another study's axes, values or conclusions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from vaegrid.analysis import stats, tables
from vaegrid.analysis.tables import IMPORTANCE_CONFIGS_MAX, Comparison, criteria
from vaegrid.layout import StudyLayout
from vaegrid.status import COMPLETED, DIVERGED, FAILED, STOPPED
from vaegrid.study.axes import AXIS, applies, describe
from vaegrid.study.core import DataSpec
from vaegrid.study.datasets import BUILTIN as BUILTIN_DATASETS
from vaegrid.study.datasets import label as dataset_label

# The study folder as report.md, which lies in it, names its files: relative paths.
_HERE = StudyLayout(Path())
_HOW = {"dynamic": "dynamically", "static": "statically"}
_WORDS = {"val_elbo": "validation elbo", "val_nll": "validation NLL"}


def likelihood_label(data: DataSpec, k: int) -> str:
    """What a test NLL of this data is, in words: comparable with the literature or not."""
    name = dataset_label(data.dataset)
    if data.binarize == "none":
        if data.dataset not in BUILTIN_DATASETS:  # a plug-in's: no literature to name
            return "Bernoulli NLL of grey levels (not comparable with results on binarized pixels)"
        return f"Bernoulli NLL of grey levels (not comparable with binarized-{name} results)"
    return f"test NLL of {_HOW[data.binarize]} binarized {name}, importance-sampled, k = {k}"


def markdown(
    ranking: pd.DataFrame,
    test: pd.DataFrame,
    completed: int,
    seconds: float,
    versions: list[str] | None = None,
    early: list[str] | None = None,
    *,
    names: list[str],
    data: DataSpec,
    compared: list[Comparison],
    importance: dict[str, float] | str,
    heatmap: tuple[str, str] | None,
    n_trials: int,
    description: str | None = None,
    val_nll_samples: int = 0,
    spent: list[str] | None = None,
) -> str:
    """report.md: the study's description, counts, rankings, paired comparisons, test table,
    what mattered, figures, how each value of each searched axis fared, and the versions.

    Args:
        ranking: One row per config (:func:`tables.by_config`).
        test: The winners' test table (:func:`tables.test_table`), with ``likelihood``.
        completed: Completed configs.
        seconds: How long the report took.
        versions: The lines of :func:`versions_used`.
        early: A halving study's section (``halving_section.halving_lines``); None without
            halving.
        spent: Where the time went (``analysis.timing.timing_lines``); None: no run ended.
        names: The searched axes.
        data: The study's data settings (what a likelihood of it means).
        compared: The winners against the next configs, paired over repeats.
        importance: Each axis's fANOVA importance, or why there is none.
        heatmap: The heatmap's two axes, if one was drawn.
        n_trials: Trials of the study (configs x repeats).
        description: The study file's description, shown as its author wrote it.
    """
    repeats = int(ranking["repeats"].max())
    grey = data.binarize == "none"
    lines = ["# vaegrid report", ""]
    if description and description.strip():
        lines += ["## About this study", "", description.strip(), ""]
    lines += _summary_lines(ranking, completed, seconds, early is not None, data, n_trials)
    metric = tables.ranked_by(ranking)
    show = _ranking_columns(ranking, names, repeats, metric)
    lines += _verdict(ranking, test, names, metric)
    lines += _ranking_lines(ranking, names, metric, show, val_nll_samples)
    lines += _test_lines(test, names, ranking, repeats, grey)
    lines += [
        "## Is the winner better than the next configs?",
        "",
        *_comparison_lines(ranking, names, compared, repeats),
        "## What mattered",
        "",
        *_importance_lines(importance, heatmap, metric),
        *_figure_lines(test),
    ]
    by_value = _value_lines(ranking, names, metric)
    if by_value:
        lines += ["## How each value fared", "", *by_value, ""]
    if early is not None:
        lines += early
    if spent is not None:
        lines += spent
    if versions:
        lines += [
            "## Computed with",
            "",
            "Numbers are bit-identical on one machine with one set of libraries, not across "
            "CPUs, GPUs or torch releases; the runs of this study used:",
            "",
            *versions,
            "",
        ]
    return "\n".join(lines)


def _ranking_lines(
    ranking: pd.DataFrame, names: list[str], metric: str, show: list[str], k: int
) -> list[str]:
    """What val_nll is (if ranked by), and the top 10 configs with a rank per criterion."""
    lines = []
    if "val_nll" in ranking.columns:
        lines += [
            f"`val_nll`: the importance-sampled -log p(x) of the validation split with k = "
            f"{k} samples per image (`[rank] nll_samples`), at each trial's "
            "last epoch; it ranks models trained on different bounds (ELBO, IWAE) fairly, "
            "where the ELBO favours the ELBO-trained.",
            "",
        ]
    ranks = [f"rank_{c}" for c in criteria(ranking)]
    top10 = ranking.sort_values([f"rank_{metric}", "key"]).head(10)
    return [
        *lines,
        f"## Ranking: the top {len(top10)} by {criteria(ranking)[metric]}",
        "",
        f"One row per config; a rank column per criterion. Every config: {_file('ranking')}.",
        "",
        table(_dashes(top10[[*ranks, *show]], names)),
        "",
    ]


def _figure_lines(test: pd.DataFrame) -> list[str]:
    """The curves, and each tested trial's reconstructions and samples."""
    lines = [
        "## Figures",
        "",
        f"![validation -ELBO per epoch of every config]({_figure('curves')})",
        "",
    ]
    for key in dict.fromkeys(test["key"]):
        lines += [
            f"`{key}`: test digits (odd rows) and their reconstructions (even rows); "
            "64 samples from the prior.",
            "",
            f"![reconstructions]({_figure(f'{key}_reconstructions')}) "
            f"![samples]({_figure(f'{key}_samples')})",
            "",
        ]
    return lines


def _summary_lines(
    ranking: pd.DataFrame,
    completed: int,
    seconds: float,
    halving: bool,
    data: DataSpec,
    n_trials: int,
) -> list[str]:
    """The counts by status, what the metrics are, the data and, with repeats, how they
    pair."""
    counts = ranking["status"].value_counts()
    diverged, failed = counts.get(DIVERGED, 0), counts.get(FAILED, 0)
    stopped = counts.get(STOPPED, 0) if halving else 0
    repeats = int(ranking["repeats"].max())
    grey = data.binarize == "none"
    lines = [
        (
            f"{len(ranking)} configs x {repeats} repeats = {n_trials} trials, by config"
            if repeats > 1
            else f"{len(ranking)} trials"
        )
        + f": {completed} completed, "
        + (f"{stopped} stopped early, " if halving else "")
        + f"{diverged} diverged, {failed} failed, "
        f"{len(ranking) - completed - stopped - diverged - failed} not finished. Metrics are "
        "per image, in nats (lower is better); elbo is the negative ELBO. "
        f"Report made in {seconds:.1f} s.",
        "",
        f"Data: {dataset_label(data.dataset)}, "
        + (
            "grey levels in [0, 1]: a Bernoulli likelihood of grey levels, which no model can "
            "push below the targets' own entropy; not comparable with published results on "
            "binarized pixels."
            if grey
            else f"{_HOW[data.binarize]} binarized pixels (training images "
            + ("drawn afresh every epoch" if data.binarize == "dynamic" else "drawn once")
            + "; validation and test drawn once for the whole study): likelihoods comparable "
            "with published binarized results."
        ),
        "",
    ]
    if repeats > 1:
        lines += [
            f"Every config ran {repeats} times, repeat r with seeds from (study seed, r): "
            "initial weights from (seed, r, hidden, latent), data order and z draws from "
            "(seed, r), so configs are compared paired by repeat. Metrics are means over a "
            "config's completed repeats (`n_repeats`), ± their standard deviation; ranks use "
            f"the mean; {_file('ranking')} adds each metric's 95% t-interval; "
            f"{_file('trials')} has every repeat.",
            "",
        ]
    return lines


def _test_lines(
    test: pd.DataFrame, names: list[str], ranking: pd.DataFrame, repeats: int, grey: bool
) -> list[str]:
    """The winners on the test split: what the likelihood is, and their table."""
    label = str(test["likelihood"].iloc[0])
    return [
        "## Winners on the test split",
        "",
        f"{label}. Each tested repeat of a winning config is evaluated once per k with its "
        "final weights; `test_nll (k = K)` is the importance-sampled estimate of -log p(x) "
        "with K samples per image (Burda et al. 2015), "
        + (
            "an upper bound on the NLL of grey levels: not comparable with published VAE "
            "results, which are on binarized pixels."
            if grey
            else "comparable with published results on binarized data at the same k."
        )
        + (" Test figures are means over the tested repeats, ± std." if repeats > 1 else ""),
        "",
        table(_dashes(_test_rows(test, names, ranking, repeats), names)),
        "",
    ]


def _ranking_columns(
    ranking: pd.DataFrame, names: list[str], repeats: int, metric: str
) -> list[str]:
    """The ranking table's columns after the ranks: the config, then its metrics (the one
    that ranks the study first, ± its std over repeats)."""
    spread = [f"{metric}_std"] if repeats > 1 else []
    metrics = [metric, *spread]
    others = ("val_elbo", "val_recon", "val_kl", "val_nll")
    metrics += [m for m in others if m in ranking and m != metric]
    return ["key", *names, "n_repeats", *metrics, "best_val_elbo", "best_epoch"]


def _verdict(ranking: pd.DataFrame, test: pd.DataFrame, names: list[str], metric: str) -> list[str]:
    """The answer first: the best config by the metric that ranks the study, and its test
    figures."""
    done = ranking[ranking["status"] == COMPLETED].sort_values([f"rank_{metric}", "key"])
    if done.empty:
        return []
    best = {str(k): v for k, v in done.iloc[0].items()}
    shown = [n for n in (tables.varying(ranking, names, everywhere=False) or names)
             if applies(AXIS[n], best)]  # fmt: skip
    words = describe(best, shown) if shown else "the only config"
    line = (f"**Best by {criteria(ranking)[metric]}: `{best['key']}` ({words}), "
            f"{metric} {best[metric]:.2f} nats")  # fmt: skip
    tested = test[test["key"] == best["key"]]
    if len(tested) and not math.isnan(float(tested["test_nll"].iloc[0])):
        row = tested.iloc[0]
        line += (f"; on the test split -ELBO {row['test_elbo']:.2f}, NLL {row['test_nll']:.2f} "
                 f"(k = {int(row['nll_samples'])})")  # fmt: skip
    return ["## Verdict", "", line + ".**", ""]


def _test_rows(
    test: pd.DataFrame, names: list[str], ranking: pd.DataFrame, repeats: int
) -> pd.DataFrame:
    """The test table of report.md: one row per winning config (the criteria it won in
    ``wins``), every NLL headed by its k."""
    wins: dict[str, list[str]] = {}
    for key, criterion, rank in zip(test["key"], test["criterion"], test["rank"], strict=True):
        wins.setdefault(str(key), []).append(f"{criterion} #{int(rank)}")
    out = test.drop_duplicates("key").copy()
    out.insert(0, "wins", [", ".join(wins[str(k)]) for k in out["key"]])
    k = int(out["nll_samples"].iloc[0])
    cols = ["wins", "key", *names, *[c for c in ("val_elbo", "val_nll") if c in ranking]]
    cols += ["n_tested", "test_elbo", "test_recon", "test_kl", "test_nll"]
    cols += ["test_nll_std"] if repeats > 1 else []
    heads = {"test_nll": f"test_nll (k = {k})", "test_nll_std": "std"}
    for c in out.columns:
        if c.startswith("test_nll_k") and not c.endswith("_std"):
            cols.append(c)
            heads[c] = f"test_nll (k = {c.removeprefix('test_nll_k')})"
    return out[cols].rename(columns=heads)


def _dashes(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``frame`` with ``-`` where a setting does not apply to the row's config (no depth for
    a linear model), as ``plan`` shows it."""
    out = frame.astype({n: object for n in names if n in frame.columns})
    for name in names:
        if name in out.columns:
            out.loc[~tables.applicable(frame, name), name] = "-"
    return out


def versions_used(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each distinct (device kind, host, versions) the study's runs computed with."""
    seen: dict[str, int] = {}
    for run in runs:
        versions = run.get("versions")
        if not isinstance(versions, dict):
            continue
        libs = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        line = f"{run.get('device_kind')} on {run.get('host')}: {libs}"
        seen[line] = seen.get(line, 0) + 1
    return [f"- {n} runs: {line}" for line, n in seen.items()]


def _comparison_lines(
    ranking: pd.DataFrame, names: list[str], compared: list[Comparison], repeats: int
) -> list[str]:
    """The paired tests in plain words, one line per comparison.

    Every comparison of the report is one family: its p-values are Holm-adjusted together
    (``stats.holm``) and each line is called larger than the noise by its adjusted p: ten
    independent tests at 5 %, each alone, would call at least one noise-only difference
    larger than the noise 40 % of the time.
    """
    if repeats < 2:
        return [
            "One repeat per config: nothing tells a difference from seed-to-seed noise. Set "
            "`[grid] repeats = N` to run every config N times and test the differences.",
            "",
        ]
    # the settings that tell configs apart, each where it applies (an mlp's depth)
    shown = tables.varying(ranking, names, everywhere=False) or names
    rows = {str(r["key"]): {str(k): v for k, v in r.items()} for r in ranking.to_dict("records")}
    adjusted = stats.holm([c.result.p for c in compared])
    tests = sum(not math.isnan(p) for p in adjusted)
    family = (
        f" The p-values are Holm-adjusted over the {tests} comparison{'' if tests == 1 else 's'} "
        "of this report (Holm 1979; the raw p in brackets), and only an adjusted p below "
        f"{stats.ALPHA:g} calls a difference larger than the noise, so the chance of even one "
        f"false call among them stays below {stats.ALPHA:g}."
        if tests
        else ""
    )
    out = [
        "Two-sided paired t-tests over the repeats both configs completed (repeat r of both "
        "drew the same seeds); ± is the standard error of the mean difference." + family,
        "",
    ]
    for c, p in zip(compared, adjusted, strict=True):
        title = criteria(ranking)[c.criterion]
        winner = describe(rows[c.winner], [n for n in shown if applies(AXIS[n], rows[c.winner])])
        other = describe(rows[c.other], [n for n in shown if applies(AXIS[n], rows[c.other])])
        out.append(f"- By {title}: " + stats.verdict(winner, other, c.result, p_adjusted=p))
    return [*out, ""]


def _importance_lines(
    importance: dict[str, float] | str, heatmap: tuple[str, str] | None, metric: str
) -> list[str]:
    if isinstance(importance, str):
        return [f"No importances: {importance}.", ""]
    rows = sorted(importance.items(), key=lambda kv: -kv[1])
    found = pd.DataFrame(
        [(n, AXIS[n].label, f"{v:.2f}") for n, v in rows], columns=["axis", "what", "importance"]
    )
    lines = [
        f"Each axis's share of the variance of the final {_WORDS[metric]} (`{metric}`) over "
        "the completed configs (mean over repeats; a seeded sample of "
        f"{IMPORTANCE_CONFIGS_MAX:,} of them when there are more), by Optuna's fANOVA "
        "evaluator (seed 0); "
        "the repeat is no axis. One study: it "
        "says what mattered in this grid's range of values, not in general, and it cannot "
        "see configs that diverged.",
        "",
        table(found),
        "",
        f"![importance]({_figure('importance')})",
        "",
    ]
    if heatmap is not None:
        lines += [
            f"Final {_WORDS[metric]} over {heatmap[0]} and {heatmap[1]} (the two axes that "
            "mattered most), one panel per value of the others; a cell that stands for "
            "several configs (settings not on the axes, or that apply to some configs only) "
            "shows the best of them and says how many. The colours show the "
            "differences among the better configs: where some are far worse, the colour "
            "scale stops short of them (its colorbar says where) and they are all the "
            "darkest; each cell's number is its true value.",
            "",
            f"![heatmap]({_figure('heatmap')})",
            "",
        ]
    return [*lines, f"![parallel coordinates]({_figure('parallel')})", ""]


def _value_lines(ranking: pd.DataFrame, names: list[str], metric: str) -> list[str]:
    """For each value of each axis the grid varies: how its configs ended, and its best
    final ``metric`` against the best of all."""
    best = ranking.loc[ranking["status"] == COMPLETED, metric].min()
    out = []
    for name in tables.varying(ranking, names, everywhere=False):
        # the configs it applies to (a linear model has no depth)
        for value, group in ranking[tables.applicable(ranking, name)].groupby(name):
            ok = group[group["status"] == COMPLETED]
            n_diverged = (group["status"] == DIVERGED).sum()
            line = f"- {describe({name: value}, [name])}: {len(ok)} of {len(group)} completed, "
            line += f"{n_diverged} diverged"
            n_stopped = (group["status"] == STOPPED).sum()
            line += f", {n_stopped} stopped early" if n_stopped else ""
            if len(ok):
                low = ok[metric].min()
                line += f"; best {_WORDS[metric]} {low:.2f} ({low - best:+.2f} vs the overall best)"
            out.append(line + ".")
    return out


def table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs the tabulate package)."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}" if abs(v) < 0.01 else f"{v:.2f}"
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _figure(name: str) -> str:
    """A figure's path as report.md links it."""
    return _HERE.figure(name).relative_to(_HERE.report.parent).as_posix()


def _file(name: str) -> str:
    """One of the CSV tables' names, as report.md mentions it."""
    return _HERE.table(name).relative_to(_HERE.report.parent).as_posix()
