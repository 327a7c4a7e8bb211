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
from vaegrid.analysis.tables import Comparison, criteria
from vaegrid.layout import StudyLayout
from vaegrid.spec.axes import AXIS, applies, describe
from vaegrid.spec.datasets import BUILTIN as BUILTIN_DATASETS
from vaegrid.spec.datasets import label as dataset_label
from vaegrid.spec.study import DataSpec
from vaegrid.status import COMPLETED, DIVERGED, FAILED, STOPPED

# The study folder as report.md, which lies in it, names its files: relative paths.
_HERE = StudyLayout(Path())
_HOW = {"dynamic": "dynamically", "static": "statically"}


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
    counts = ranking["status"].value_counts()
    diverged, failed = counts.get(DIVERGED, 0), counts.get(FAILED, 0)
    stopped = counts.get(STOPPED, 0) if early is not None else 0
    repeats = int(ranking["repeats"].max())
    grey = data.binarize == "none"
    lines = ["# vaegrid report", ""]
    if description and description.strip():
        lines += ["## About this study", "", description.strip(), ""]
    lines += [
        (
            f"{len(ranking)} configs x {repeats} repeats = {n_trials} trials, by config"
            if repeats > 1
            else f"{len(ranking)} trials"
        )
        + f": {completed} completed, "
        + (f"{stopped} stopped early, " if early is not None else "")
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
    if early is not None:
        lines += early
    if spent is not None:
        lines += spent
    spread = ["val_elbo_std"] if repeats > 1 else []
    show = ["key", *names, "n_repeats", "val_elbo", *spread, "val_recon", "val_kl"]
    show += ["val_nll"] if "val_nll" in ranking.columns else []
    show += ["best_val_elbo", "best_epoch"]
    if "val_nll" in ranking.columns:
        lines += [
            f"`val_nll`: the importance-sampled -log p(x) of the validation split with k = "
            f"{val_nll_samples} samples per image (`[rank] nll_samples`), at each trial's "
            "last epoch; it ranks models trained on different bounds (ELBO, IWAE) fairly, "
            "where the ELBO favours the ELBO-trained.",
            "",
        ]
    for column, title in criteria(ranking).items():
        top10 = ranking.sort_values(["rank_" + column, "key"]).head(10)
        lines += [f"## Top 10 by {title}", "", table(top10[["rank_" + column, *show]]), ""]
    lines += ["## Is the winner better than the next configs?", ""]
    lines += _comparison_lines(ranking, names, compared, repeats)
    label = str(test["likelihood"].iloc[0])
    test_cols = ["criterion", "rank", "key", *names, "val_elbo", "val_recon"]
    test_cols += ["val_nll"] if "val_nll" in ranking.columns else []
    test_cols += ["n_tested"]
    test_cols += ["test_elbo", "test_recon", "test_kl", "test_nll"]
    test_cols += ["test_nll_std"] if repeats > 1 else []
    test_cols += ["nll_samples"]
    lines += [
        "## Winners on the test split",
        "",
        f"`test_nll`: {label}. Each tested repeat of a winning config is evaluated once with "
        "its final weights; `test_nll` is the importance-sampled estimate of -log p(x) with "
        "`nll_samples` samples per image (Burda et al. 2015), "
        + (
            "an upper bound on the NLL of grey levels: not comparable with published VAE "
            "results, which are on binarized pixels."
            if grey
            else "comparable with published results on binarized data at the same k."
        )
        + (" Test figures are means over the tested repeats, ± std." if repeats > 1 else ""),
        "",
        table(test[test_cols]),
        "",
        "## What mattered",
        "",
        *_importance_lines(importance, heatmap),
        "## Figures",
        "",
        f"![validation elbo per epoch]({_figure('curves')})",
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
    by_value = _value_lines(ranking, names)
    if by_value:
        lines += ["## How each value fared", "", *by_value, ""]
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
    importance: dict[str, float] | str, heatmap: tuple[str, str] | None
) -> list[str]:
    if isinstance(importance, str):
        return [f"No importances: {importance}.", ""]
    rows = sorted(importance.items(), key=lambda kv: -kv[1])
    found = pd.DataFrame(
        [(n, AXIS[n].label, f"{v:.2f}") for n, v in rows], columns=["axis", "what", "importance"]
    )
    lines = [
        "Each axis's share of the variance of the final validation elbo over the completed "
        "configs (mean over repeats), by Optuna's fANOVA evaluator (seed 0). One study: it "
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
            f"Final validation elbo over {heatmap[0]} and {heatmap[1]} (the two axes that "
            "mattered most), one panel per value of the others. The colours show the "
            "differences among the better configs: where some are far worse, the colour "
            "scale stops short of them (its colorbar says where) and they are all the "
            "darkest; each cell's number is its true value.",
            "",
            f"![heatmap]({_figure('heatmap')})",
            "",
        ]
    return [*lines, f"![parallel coordinates]({_figure('parallel')})", ""]


def _value_lines(ranking: pd.DataFrame, names: list[str]) -> list[str]:
    """For each value of each axis the grid varies: how its configs ended, and its best
    final validation elbo against the best of all."""
    best = ranking.loc[ranking["status"] == COMPLETED, "val_elbo"].min()
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
                low = ok["val_elbo"].min()
                line += f"; best validation elbo {low:.2f} ({low - best:+.2f} vs the overall best)"
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
