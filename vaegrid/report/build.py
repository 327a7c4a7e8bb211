"""Rank a sweep's trials, test the winners, export CSV tables, pictures and report.md.

Everything is built from the study database with pandas. Only the winners (top K by
validation elbo and top K by validation reconstruction, as the seed study picked them)
are ever evaluated on the test split, once each: their results are stored and reused.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from vaegrid import halving
from vaegrid.analysis import stats, tables
from vaegrid.analysis.tables import CRITERIA, Comparison
from vaegrid.api import read_study
from vaegrid.db.store import Store, existing_db
from vaegrid.errors import InputError
from vaegrid.layout import StudyLayout
from vaegrid.safeio import check_study_dir, ensure_dir, read_bytes, save_with, write_atomic
from vaegrid.spec.axes import AXIS
from vaegrid.spec.study import DATASET_NAMES, DataSpec, HalvingSpec, TrialConfig, derive_seed
from vaegrid.status import COMPLETED, DIVERGED, FAILED, STOPPED
from vaegrid.train.data import load_splits
from vaegrid.train.model import VAE, importance_nll
from vaegrid.train.trial import evaluate

FIGURES = "figures"
# Most importance samples per test image: a pass holds k x 784 logits (50,000: 157 MB
# each for the logits, the targets and the BCE); published results use 5,000.
NLL_SAMPLES_MAX = 50_000
# Configs the winner is compared with, paired over repeats, in report.md.
COMPARED = 4


@dataclass(frozen=True)
class Report:
    """What ``make_report`` wrote."""

    folder: Path  # results/<study>
    ranking: pd.DataFrame
    test: pd.DataFrame
    evaluated: list[str]  # keys evaluated on the test split in this call (not reused)
    seconds: float
    trials: pd.DataFrame  # one row per trial (ranking has one per config, over its repeats)


def make_report(
    study_dir: Path,
    data_root: Path,
    top: int = 1,
    nll_samples: int = 1000,
    force: bool = False,
    device: str = "cpu",
    storage: str | None = None,
) -> Report:
    """Rank, test the winners, and write the CSVs, figures and ``report.md`` into ``study_dir``.

    Args:
        study_dir: ``RESULTS_DIR/STUDY``, as ``vaegrid run`` made it.
        data_root: MNIST root, for the test split.
        top: Winners per criterion.
        nll_samples: Importance samples per test image for the NLL estimate.
        force: Evaluate the winners on the test split again even if stored.
        device: Where to evaluate.
        storage: The study database URL (default: the folder's study.db).

    Raises:
        InputError: not a study folder, no completed trial, ``top`` or ``nll_samples`` out
            of range, or a winner's weights are missing. Nothing is written then.
    """
    started = time.perf_counter()
    check_study_dir(study_dir.parent, study_dir)
    db = existing_db(StudyLayout(study_dir), storage)
    rows = read_study(db)  # read-only: nothing is written before every check
    if not 1 <= nll_samples <= NLL_SAMPLES_MAX:
        raise InputError(
            f"--nll-samples: {nll_samples} is not allowed; expected an integer from 1 to "
            f"{NLL_SAMPLES_MAX}"
        )
    if not (rows.trials["status"] == COMPLETED).any():
        raise InputError(f"{study_dir}: no completed trial to rank yet; run `vaegrid run` first")
    names, configs_all, epochs, stored = rows.axes, rows.configs, rows.epochs, rows.tests
    fingerprint, trials, stops = rows.fingerprint, rows.trials, rows.stops
    spec = halving.spec_from_fingerprint(fingerprint)
    per_trial = rows.per_trial()
    ranking = tables.by_config(per_trial, names)
    completed = int((ranking["status"] == COMPLETED).sum())
    if not 1 <= top <= completed:
        raise InputError(
            f"--top: {top} is not allowed; expected 1 to {completed} (completed configs)"
        )
    winners = tables.pick_winners(ranking, top, names)
    # Every completed repeat of every winning config is tested; none of the others.
    tested = per_trial[
        per_trial["config"].isin(winners["key"]) & (per_trial["status"] == COMPLETED)
    ]
    keys = list(tested["key"])
    configs = {k: configs_all[k] for k in keys}
    first = configs[keys[0]]
    # The test split, for the winners only.
    test_x = load_splits(data_root, first.data, first.seed, device).test
    models = {k: _load_model(configs[k], study_dir, test_x.device) for k in keys}
    todo = [
        k for k in keys
        if force or k not in stored.index or stored.loc[k, "nll_samples"] != nll_samples
    ]  # fmt: skip
    if todo:
        store = Store(db)
        try:
            for key in todo:
                store.save_test(_evaluate(configs[key], models[key], test_x, nll_samples))
            stored = store.frame("vg_test").set_index("key")
        finally:
            store.close()
    test = tables.test_table(winners, per_trial, stored)
    test["likelihood"] = likelihood_label(first.data, nll_samples)
    _write_tables(study_dir, ranking, per_trial, epochs, trials, test, names)
    found = tables.importances(ranking, names)
    pair = _heatmap_axes(ranking, names, found)
    _draw(study_dir, epochs, per_trial, ranking, test, models, configs, test_x, names, found, pair)
    seconds = time.perf_counter() - started
    early = None
    if spec is not None:
        epochs_max = max(c.epochs for c in configs_all.values())  # one value with [halving]
        early = halving_lines(spec, epochs_max, trials, epochs, stops)
    compared = [c for criterion in CRITERIA for c in tables.comparisons(
        ranking, per_trial, criterion, COMPARED)]  # fmt: skip
    text = markdown(
        ranking, test, completed, seconds, _versions_used(rows.runs), early,
        names=names, data=first.data, compared=compared, importance=found, heatmap=pair,
        n_trials=len(per_trial),
    )  # fmt: skip
    write_atomic(study_dir / "report.md", text)
    return Report(study_dir, ranking, test, todo, seconds, per_trial)


def likelihood_label(data: DataSpec, k: int) -> str:
    """What a test NLL of this data is, in words: comparable with the literature or not."""
    name = DATASET_NAMES[data.dataset]
    if data.binarize == "none":
        return f"Bernoulli NLL of grey levels (not comparable with binarized-{name} results)"
    return f"test NLL of {_HOW[data.binarize]} binarized {name}, importance-sampled, k = {k}"


_HOW = {"dynamic": "dynamically", "static": "statically"}


def _heatmap_axes(
    ranking: pd.DataFrame, names: list[str], found: dict[str, float] | str
) -> tuple[str, str] | None:
    """The two axes of the heatmap: the two that mattered most, else the first two varying."""
    axes = tables.varying(ranking, names)
    if len(axes) < 2:
        return None
    if isinstance(found, dict):
        axes = sorted(axes, key=lambda n: -found.get(n, 0.0))
    return axes[0], axes[1]


def _versions_used(runs: list[dict[str, object]]) -> list[str]:
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


def _load_model(cfg: TrialConfig, study_dir: Path, device: torch.device) -> VAE:
    """A winner's final weights, refused in one line if they are not this config's model."""
    model = VAE(cfg.hidden, cfg.latent)
    path = StudyLayout(study_dir).trial(cfg.key).weights
    if not path.is_file():
        raise InputError(f"{path}: a winner's weights are missing")
    try:
        state = torch.load(io.BytesIO(read_bytes(path)), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except InputError:
        raise
    except Exception as e:  # truncated, not a torch file, other shapes: all the same to a user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not this trial's weights ({first[:200]})") from None
    return model.to(device).eval()


def _evaluate(cfg: TrialConfig, model: VAE, test_x: torch.Tensor, k: int) -> dict[str, object]:
    """A winner on the test split: metrics as for validation, plus the IS estimate of the NLL."""
    started = time.perf_counter()
    metrics = evaluate(model, test_x, derive_seed(cfg.seed, cfg.repeat, "test"))
    g = torch.Generator(test_x.device).manual_seed(derive_seed(cfg.seed, cfg.repeat, "test-nll"))
    nll = float(importance_nll(model, test_x, k, g).mean())
    return {
        "key": cfg.key, "elbo": metrics.elbo, "recon": metrics.recon, "kl": metrics.kl, "nll": nll,
        "nll_samples": k, "seconds": time.perf_counter() - started, "evaluated": time.time(),
    }  # fmt: skip


def _write_tables(
    study_dir: Path,
    ranking: pd.DataFrame,
    per_trial: pd.DataFrame,
    epochs: pd.DataFrame,
    trials: pd.DataFrame,
    test: pd.DataFrame,
    names: list[str],
) -> None:
    save_with(study_dir / "ranking.csv", ranking.to_csv, index=False)
    save_with(study_dir / "trials.csv", per_trial.to_csv, index=False)
    head = ["key", "config", "repeat", *names]
    long = epochs.merge(trials[head], on="key")
    long = long[[*head, "epoch", "split", *tables.METRICS, "seconds"]]
    save_with(
        study_dir / "epochs.csv", long.sort_values(["key", "epoch", "split"]).to_csv, index=False
    )
    save_with(study_dir / "test.csv", test.to_csv, index=False)


def _draw(
    study_dir: Path,
    epochs: pd.DataFrame,
    per_trial: pd.DataFrame,
    ranking: pd.DataFrame,
    test: pd.DataFrame,
    models: dict[str, VAE],
    configs: dict[str, TrialConfig],
    test_x: torch.Tensor,
    names: list[str],
    found: dict[str, float] | str,
    pair: tuple[str, str] | None,
) -> None:
    from vaegrid.report import figures  # matplotlib loads only when pictures are drawn

    folder = ensure_dir(study_dir / FIGURES)
    figures.curves(epochs, per_trial, test, folder / "curves.png", names)
    axes = [AXIS[n] for n in tables.varying(ranking, names)]
    if axes:
        figures.parallel(ranking, axes, folder / "parallel.png")
    if pair is not None:
        figures.heatmap(ranking, pair[0], pair[1], axes, folder / "heatmap.png")
    if isinstance(found, dict):
        figures.importance(found, [AXIS[n] for n in found], folder / "importance.png")
    for key in _pictured(test, configs):
        model = models[key]
        figures.reconstructions(model, test_x, folder / f"{key}_reconstructions.png")
        cfg = configs[key]
        g = torch.Generator(test_x.device).manual_seed(derive_seed(cfg.seed, cfg.repeat, "samples"))
        figures.samples(model, g, folder / f"{key}_samples.png")


def _pictured(test: pd.DataFrame, configs: dict[str, TrialConfig]) -> list[str]:
    """The trial whose digits show each winning config: its repeat 0 when tested (its key
    is the config's), else its first tested repeat."""
    out = []
    for config in dict.fromkeys(test["key"]):
        keys = sorted((c.repeat, k) for k, c in configs.items() if c.config_id == config)
        out.append(keys[0][1])
    return out


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
) -> str:
    """report.md: rankings, paired comparisons, test table, what mattered, figures, counts,
    and the seed study's conclusions.

    Args:
        ranking: One row per config (:func:`tables.by_config`).
        early: A halving study's section (:func:`halving_lines`); None without halving.
        names: The searched axes.
        data: The study's data settings (what a likelihood of it means).
        compared: The winners against the next configs, paired over repeats.
        importance: Each axis's fANOVA importance, or why there is none.
        heatmap: The heatmap's two axes, if one was drawn.
        n_trials: Trials of the study (configs x repeats).
    """
    counts = ranking["status"].value_counts()
    diverged, failed = counts.get(DIVERGED, 0), counts.get(FAILED, 0)
    stopped = counts.get(STOPPED, 0) if early is not None else 0
    repeats = int(ranking["repeats"].max())
    grey = data.binarize == "none"
    lines = [
        "# vaegrid report",
        "",
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
        f"Data: {data.dataset}, "
        + (
            "grey levels in [0, 1]: a Bernoulli likelihood of grey levels, which no model can "
            "push below the targets' own entropy; not comparable with published results on "
            f"binarized {DATASET_NAMES[data.dataset]}."
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
            "the mean; ranking.csv adds each metric's 95% t-interval; trials.csv has every "
            "repeat.",
            "",
        ]
    if early is not None:
        lines += early
    spread = ["val_elbo_std"] if repeats > 1 else []
    show = ["key", *names, "n_repeats", "val_elbo", *spread, "val_recon", "val_kl"]
    show += ["best_val_elbo", "best_epoch"]
    for column, title in CRITERIA.items():
        top10 = ranking.sort_values(["rank_" + column, "key"]).head(10)
        lines += [f"## Top 10 by {title}", "", _table(top10[["rank_" + column, *show]]), ""]
    lines += ["## Is the winner better than the next configs?", ""]
    lines += _comparison_lines(ranking, names, compared, repeats)
    label = str(test["likelihood"].iloc[0])
    test_cols = ["criterion", "rank", "key", *names, "val_elbo", "val_recon", "n_tested"]
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
            "an upper bound on the NLL of grey levels: not comparable with published "
            f"{DATASET_NAMES[data.dataset]} VAE results, which are on binarized pixels."
            if grey
            else "comparable with published results on binarized data at the same k."
        )
        + (" Test figures are means over the tested repeats, ± std." if repeats > 1 else ""),
        "",
        _table(test[test_cols]),
        "",
        "## What mattered",
        "",
        *_importance_lines(importance, heatmap),
        "## Figures",
        "",
        f"![validation elbo per epoch]({FIGURES}/curves.png)",
        "",
    ]
    for key in dict.fromkeys(test["key"]):
        lines += [
            f"`{key}`: test digits (odd rows) and their reconstructions (even rows); "
            "64 samples from the prior.",
            "",
            f"![reconstructions]({FIGURES}/{key}_reconstructions.png) "
            f"![samples]({FIGURES}/{key}_samples.png)",
            "",
        ]
    lines += ["## Against the seed study", "", *_seed_comparison(ranking, test), ""]
    if versions:
        lines += [
            "## Computed with",
            "",
            "Numbers are bit-identical on one machine with one set of libraries, not across "
            "CPUs, GPUs or torch releases (another CPU moved lr 3e-2 results of the seed "
            "study by up to 0.72 nats); the runs of this study used:",
            "",
            *versions,
            "",
        ]
    return "\n".join(lines)


def _comparison_lines(
    ranking: pd.DataFrame, names: list[str], compared: list[Comparison], repeats: int
) -> list[str]:
    """The paired tests in plain words, one line per comparison."""
    if repeats < 2:
        return [
            "One repeat per config: nothing tells a difference from seed-to-seed noise. Set "
            "`[grid] repeats = N` to run every config N times and test the differences.",
            "",
        ]
    shown = tables.varying(ranking, names) or names
    rows = {str(r["key"]): r for r in ranking.to_dict("records")}
    out = [
        "Two-sided paired t-tests over the repeats both configs completed (repeat r of both "
        "drew the same seeds); ± is the standard error of the mean difference.",
        "",
    ]
    for c in compared:
        title = CRITERIA[c.criterion]
        winner = tables.describe(rows[c.winner], shown)
        other = tables.describe(rows[c.other], shown)
        out.append(f"- By {title}: " + stats.verdict(winner, other, c.result))
    return [*out, ""]


def _importance_lines(
    importance: dict[str, float] | str, heatmap: tuple[str, str] | None
) -> list[str]:
    if isinstance(importance, str):
        return [f"No importances: {importance}.", ""]
    rows = sorted(importance.items(), key=lambda kv: -kv[1])
    table = pd.DataFrame(
        [(n, AXIS[n].label, f"{v:.2f}") for n, v in rows], columns=["axis", "what", "importance"]
    )
    lines = [
        "Each axis's share of the variance of the final validation elbo over the completed "
        "configs (mean over repeats), by Optuna's fANOVA evaluator (seed 0). One study: it "
        "says what mattered in this grid's range of values, not in general, and it cannot "
        "see configs that diverged.",
        "",
        _table(table),
        "",
        f"![importance]({FIGURES}/importance.png)",
        "",
    ]
    if heatmap is not None:
        lines += [
            f"Final validation elbo over {heatmap[0]} and {heatmap[1]} (the two axes that "
            "mattered most), one panel per value of the others:",
            "",
            f"![heatmap]({FIGURES}/heatmap.png)",
            "",
        ]
    return [*lines, f"![parallel coordinates]({FIGURES}/parallel.png)", ""]


def _seed_comparison(ranking: pd.DataFrame, test: pd.DataFrame) -> list[str]:
    out: list[str] = []
    if "lr" not in ranking.columns:
        return ["- The seed searched lr; this study does not, so there is nothing to compare."]
    done = ranking[ranking["status"] == COMPLETED]
    best = done["val_elbo"].min()
    by_lr = ranking.groupby("lr")
    for lr, group in by_lr:
        ok = group[group["status"] == COMPLETED]
        n_diverged = (group["status"] == DIVERGED).sum()
        line = f"- lr {lr:g}: {len(ok)} of {len(group)} completed, {n_diverged} diverged"
        n_stopped = (group["status"] == STOPPED).sum()
        line += f", {n_stopped} stopped early" if n_stopped else ""
        if len(ok):
            low = ok["val_elbo"].min()
            line += f"; best validation elbo {low:.2f} ({low - best:+.2f} vs the overall best)"
        out.append(line + ".")
    slow = ranking[(ranking["lr"] == 1e-5) & (ranking["status"] == COMPLETED)]
    if len(slow):
        gap = slow["val_elbo"].min() - best
        verdict = "agrees" if gap > 0.05 * best else "does not confirm it"
        out.append(
            f"- The seed found lr 1e-5 too slow in 15 epochs: here its best validation elbo is "
            f"{gap:.1f} nats ({gap / best:.0%}) behind the winner, which {verdict}."
        )
    first = test.groupby("criterion").head(1).set_index("criterion")["key"]
    if {"val_elbo", "val_recon"} <= set(first.index):
        same = first["val_elbo"] == first["val_recon"]
        elbo_key, recon_key = first["val_elbo"], first["val_recon"]
        here = (
            f"one config (`{elbo_key}`) wins both."
            if same
            else f"they differ too (`{elbo_key}` by elbo, `{recon_key}` by reconstruction)."
        )
        out.append(
            "- The seed picked one winner for reconstruction and another for ELBO: here " + here
        )
    return out


def halving_lines(
    spec: HalvingSpec,
    epochs: int,
    trials: pd.DataFrame,
    epoch_rows: pd.DataFrame,
    stops: pd.DataFrame,
) -> list[str]:
    """report.md's section on a halving study: each rung's decision, and the compute saved.

    The full grid's cost is partly an estimate: a stopped trial is counted as if it had run
    all its epochs (it might have diverged later) at the completed trials' mean training
    seconds per epoch.

    Args:
        spec: The study's ``[halving]``.
        epochs: The study's ``train.epochs``.
        trials, epoch_rows, stops: ``vg_trial``, ``vg_epoch``, ``vg_stop``.
    """
    column = {"val_elbo": "elbo", "val_recon": "recon"}[spec.metric]
    val = epoch_rows[(epoch_rows["split"] == "val") & epoch_rows["epoch"].isin(spec.rungs)]
    values: dict[str, dict[int, float]] = {}
    for key, epoch, value in val[["key", "epoch", column]].itertuples(index=False):
        values.setdefault(str(key), {})[int(epoch)] = float(value)
    standings = {
        key: halving.Standing(
            key, int(done), status in (DIVERGED, FAILED), values.get(key, {}), status == COMPLETED
        )
        for key, status, done in zip(
            trials["key"].astype(str),
            trials["status"].astype(str),
            trials["epochs_done"].astype(int),
            strict=True,
        )
    }
    found = halving.plan(standings, spec, epochs)
    at = stops["rung"].value_counts() if len(stops) else pd.Series(dtype=int)
    rows = []
    for r in found.decided:
        gone = sum(standings[k].ended and standings[k].epochs_done < r.epoch for k in r.ranked)
        went_on = sum(not standings[k].ended for k in r.survivors)
        rows.append((r.epoch, len(r.ranked), gone, went_on, int(at.get(r.epoch, 0))))
    table = pd.DataFrame(
        rows, columns=["rung (epoch)", "compared", "ended before it", "went on", "stopped here"]
    )
    lines = [
        "## Early stopping (synchronous halving)",
        "",
        f"Trials were compared by {spec.metric} at epochs {', '.join(map(str, spec.rungs))}; "
        f"at each rung the best max(1, ceil({spec.keep:g} * n)) of its n trials went on (ties "
        "by key; diverged trials count as the worst), decided once the whole rung was in.",
        "",
        _table(table),
        "",
    ]
    if found.open_rung is not None:
        lines += [f"Rung {found.open_rung} is not decided yet.", ""]
    done = trials["epochs_done"].astype(int)
    ended = trials["status"].isin([DIVERGED, FAILED]).to_numpy()
    full_epochs = int(done[ended].sum()) + epochs * int((~ended).sum())
    ran = int(done.sum())
    completed = trials[trials["status"] == COMPLETED]
    per_epoch = completed["seconds"].sum() / max(1, completed["epochs_done"].sum())
    # A trial's epochs cost what its own did (a wide model's are dearer than the winners'),
    # else, for one that ran none, the completed trials' mean.
    own = (trials["seconds"] / done.where(done > 0)).fillna(per_epoch).to_numpy()
    left = (epochs - done).where(~ended, 0).to_numpy()
    ran_s = float(trials["seconds"].sum())
    full_s = ran_s + float((left * own).sum())
    lines += [
        f"Compute: {ran:,} trial-epochs run of {full_epochs:,} for the full grid "
        f"({1 - ran / max(1, full_epochs):.0%} saved); {ran_s:,.1f} s of training against an "
        f"estimated {full_s:,.1f} s for the full grid ({1 - ran_s / max(1.0, full_s):.0%} "
        "saved). The full grid's figures are estimates: every trial that did not end (diverge "
        "or fail) is counted for all its epochs, each epoch it did not run at its own mean "
        f"seconds per epoch so far (the completed trials' mean, {per_epoch:.2f} s, for one "
        "that ran none). Seconds are training time summed over trials, not wall time.",
        "",
    ]
    return lines


def _table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs the tabulate package)."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}" if abs(v) < 0.01 else f"{v:.2f}"
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])
