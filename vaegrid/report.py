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
from vaegrid.data import load_splits
from vaegrid.errors import InputError
from vaegrid.model import VAE, importance_nll
from vaegrid.paths import check_study_dir, ensure_dir, read_bytes, save_with, write_atomic
from vaegrid.store import (
    COMPLETED,
    DIVERGED,
    FAILED,
    STOPPED,
    Store,
    existing_db,
    trial_dir,
)
from vaegrid.study import HalvingSpec, TrialConfig
from vaegrid.train import WEIGHTS, derive_seed, evaluate

# Ranking criteria: column of ranking.csv -> what it ranks by (lower is better).
CRITERIA = {"val_elbo": "validation elbo", "val_recon": "validation reconstruction"}
METRICS = ("elbo", "recon", "kl")
PARAMS = ["hidden", "latent", "lr", "clip"]
FIGURES = "figures"


@dataclass(frozen=True)
class Report:
    """What ``make_report`` wrote."""

    folder: Path  # results/<study>
    ranking: pd.DataFrame
    test: pd.DataFrame
    evaluated: list[str]  # keys evaluated on the test split in this call (not reused)
    seconds: float


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
    db = existing_db(study_dir, storage)
    reader = Store.reader(db)  # nothing is written before every check
    try:
        completed = _check(reader, study_dir, top, nll_samples)
        configs_all = {t.key: t.config for t in reader.trials()}  # validated against keys
        trials, epochs = reader.frame("vg_trial"), reader.frame("vg_epoch")
        stored = reader.frame("vg_test").set_index("key")
        runs = reader.runs()
        fingerprint = reader.fingerprint()
        stops = reader.frame("vg_stop")
    finally:
        reader.close()
    spec = halving.spec_from_fingerprint(fingerprint)
    ranking = rank(trials, epochs, stops if spec is not None else None)
    winners = pick_winners(ranking, top)
    keys = list(dict.fromkeys(winners["key"]))
    configs = {k: configs_all[k] for k in keys}
    # The test split, for the winners only.
    test_x = load_splits(data_root, configs[keys[0]].data, configs[keys[0]].seed, device).test
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
            tests = store.frame("vg_test").set_index("key").drop(columns="evaluated")
        finally:
            store.close()
    else:
        tests = stored.drop(columns="evaluated")
    test = winners.join(tests.add_prefix("test_"), on="key")
    test = test.rename(columns={"test_nll_samples": "nll_samples"})
    _write_tables(study_dir, ranking, epochs, trials, test)
    _draw(study_dir, epochs, ranking, test, models, configs, test_x)
    seconds = time.perf_counter() - started
    early = None
    if spec is not None:
        early = halving_lines(spec, int(fingerprint["train"]["epochs"]), trials, epochs, stops)
    text = markdown(ranking, test, completed, seconds, _versions_used(runs), early)
    write_atomic(study_dir / "report.md", text)
    return Report(study_dir, ranking, test, todo, seconds)


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


def _check(reader: Store, study_dir: Path, top: int, nll_samples: int) -> int:
    trials = reader.trials()
    completed = sum(t.status == COMPLETED for t in trials)
    if completed == 0:
        raise InputError(f"{study_dir}: no completed trial to rank yet; run `vaegrid run` first")
    if not 1 <= top <= completed:
        raise InputError(
            f"--top: {top} is not allowed; expected 1 to {completed} (completed trials)"
        )
    if nll_samples < 1:
        raise InputError(f"--nll-samples: {nll_samples} is not allowed; expected an integer >= 1")
    return int(completed)


def rank(
    trials: pd.DataFrame, epochs: pd.DataFrame, stops: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per trial: config, status, final and best metrics, ranks.

    Ranks follow scikit-learn's rule (``rankdata(method="min")``: ties share the lowest
    rank). Completed trials rank first; then trials a halving rung stopped, by their last
    validation metrics (those of the epoch they stopped at), which they keep; then every
    other trial (diverged, failed, unfinished), last, together, with empty metrics.

    Args:
        stops: ``vg_stop`` of a halving study: adds the column ``rung``, where each stopped
            trial was stopped. None (a study without halving): no such column.
    """
    done = trials["status"] == COMPLETED
    stopped = (trials["status"] == STOPPED).to_numpy()
    last = epochs.sort_values("epoch").groupby(["key", "split"]).tail(1)
    finals = last.pivot(index="key", columns="split", values=list(METRICS))
    finals.columns = [f"{col[1]}_{col[0]}" for col in finals.columns]  # ("elbo", "val") -> val_elbo
    val = epochs[epochs["split"] == "val"]
    best = val.loc[val.groupby("key")["elbo"].idxmin(), ["key", "elbo", "epoch"]]
    best = best.set_index("key").rename(columns={"elbo": "best_val_elbo", "epoch": "best_epoch"})
    out = trials[["key", *PARAMS, "status", "epochs_done", "seconds", "cause"]].join(
        finals, on="key"
    )
    out = out.join(best, on="key")
    metric_cols = [*finals.columns, "best_val_elbo", "best_epoch"]
    out.loc[~(done.to_numpy() | stopped), metric_cols] = math.nan
    n_done = int(done.sum())
    for column in CRITERIA:
        ranks = out.loc[done.to_numpy(), column].rank(method="min")
        after = out.loc[stopped, column].rank(method="min") + n_done  # behind every completed
        ranks = pd.concat([ranks, after]).reindex(out.index)
        out["rank_" + column] = ranks.fillna(n_done + int(stopped.sum()) + 1).astype(int)
    out["best_epoch"] = out["best_epoch"].astype("Int64")
    order = ["key", *PARAMS, "status", *[f"{s}_{m}" for s in ("train", "val") for m in METRICS]]
    order += ["best_val_elbo", "best_epoch", "seconds", "rank_val_elbo", "rank_val_recon"]
    order += ["epochs_done", "cause"]
    if stops is not None:
        out["rung"] = out["key"].map(stops.set_index("key")["rung"]).astype("Int64")
        order.append("rung")
    return out[order].sort_values(["rank_val_elbo", "rank_val_recon", "key"]).reset_index(drop=True)


def pick_winners(ranking: pd.DataFrame, top: int) -> pd.DataFrame:
    """The top ``top`` completed trials of each criterion (ties broken by key)."""
    rows = []
    for column in CRITERIA:
        best = (
            ranking[ranking["status"] == COMPLETED].sort_values(["rank_" + column, "key"]).head(top)
        )
        rows.append(best.assign(criterion=column, rank=best["rank_" + column]))
    cols = ["criterion", "rank", "key", *PARAMS, "val_elbo", "val_recon", "val_kl"]
    return pd.concat(rows)[cols].reset_index(drop=True)


def _load_model(cfg: TrialConfig, study_dir: Path, device: torch.device) -> VAE:
    """A winner's final weights, refused in one line if they are not this config's model."""
    model = VAE(cfg.hidden, cfg.latent)
    path = trial_dir(study_dir, cfg.key) / WEIGHTS
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
    metrics = evaluate(model, test_x, derive_seed(cfg.seed, "test"))
    g = torch.Generator(test_x.device).manual_seed(derive_seed(cfg.seed, "test-nll"))
    nll = float(importance_nll(model, test_x, k, g).mean())
    return {
        "key": cfg.key, "elbo": metrics.elbo, "recon": metrics.recon, "kl": metrics.kl, "nll": nll,
        "nll_samples": k, "seconds": time.perf_counter() - started, "evaluated": time.time(),
    }  # fmt: skip


def _write_tables(
    study_dir: Path,
    ranking: pd.DataFrame,
    epochs: pd.DataFrame,
    trials: pd.DataFrame,
    test: pd.DataFrame,
) -> None:
    save_with(study_dir / "ranking.csv", ranking.to_csv, index=False)
    long = epochs.merge(trials[["key", *PARAMS]], on="key")
    cols = ["key", *PARAMS, "epoch", "split", *METRICS, "seconds"]
    long = long[cols].sort_values(["key", "epoch", "split"])
    save_with(study_dir / "epochs.csv", long.to_csv, index=False)
    save_with(study_dir / "test.csv", test.to_csv, index=False)


def _draw(
    study_dir: Path,
    epochs: pd.DataFrame,
    ranking: pd.DataFrame,
    test: pd.DataFrame,
    models: dict[str, VAE],
    configs: dict[str, TrialConfig],
    test_x: torch.Tensor,
) -> None:
    from vaegrid import figures  # matplotlib loads only when pictures are drawn

    folder = ensure_dir(study_dir / FIGURES)
    figures.curves(epochs, ranking, test, folder / "curves.png")
    for key, model in models.items():
        figures.reconstructions(model, test_x, folder / f"{key}_reconstructions.png")
        g = torch.Generator(test_x.device).manual_seed(derive_seed(configs[key].seed, "samples"))
        figures.samples(model, g, folder / f"{key}_samples.png")


def markdown(
    ranking: pd.DataFrame,
    test: pd.DataFrame,
    completed: int,
    seconds: float,
    versions: list[str] | None = None,
    early: list[str] | None = None,
) -> str:
    """report.md: rankings, test table, figures, counts, and the seed study's conclusions.

    Args:
        early: A halving study's section (:func:`halving_lines`); None without halving.
    """
    counts = ranking["status"].value_counts()
    diverged, failed = counts.get(DIVERGED, 0), counts.get(FAILED, 0)
    stopped = counts.get(STOPPED, 0) if early is not None else 0
    lines = [
        "# vaegrid report",
        "",
        f"{len(ranking)} trials: {completed} completed, "
        + (f"{stopped} stopped early, " if early is not None else "")
        + f"{diverged} diverged, {failed} failed, "
        f"{len(ranking) - completed - stopped - diverged - failed} not finished. Metrics are "
        "per image, in nats (lower is better); elbo is the negative ELBO. "
        f"Report made in {seconds:.1f} s.",
        "",
    ]
    if early is not None:
        lines += early
    show = ["key", *PARAMS, "val_elbo", "val_recon", "val_kl", "best_val_elbo", "best_epoch"]
    for column, title in CRITERIA.items():
        top10 = ranking.sort_values(["rank_" + column, "key"]).head(10)
        lines += [f"## Top 10 by {title}", "", _table(top10[["rank_" + column, *show]]), ""]
    test_cols = ["criterion", "rank", "key", *PARAMS, "val_elbo", "val_recon"]
    test_cols += ["test_elbo", "test_recon", "test_kl", "test_nll", "nll_samples"]
    lines += [
        "## Winners on the test split",
        "",
        "Each winner is evaluated once with its final weights; `test_nll` is the importance-"
        "sampled estimate of -log p(x) with `nll_samples` samples per image (Burda et al. 2015), "
        "comparable with published MNIST VAE results.",
        "",
        _table(test[test_cols]),
        "",
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
            "CPUs, GPUs or torch releases; the runs of this study used:",
            "",
            *versions,
            "",
        ]
    return "\n".join(lines)


def _seed_comparison(ranking: pd.DataFrame, test: pd.DataFrame) -> list[str]:
    out = []
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
