"""report.md's section on a halving study: each rung's decision, and the compute it saved.

The decisions are :func:`vaegrid.halving.plan`'s, from the standings the driver decides
with (:func:`vaegrid.halving.read_standings`): the report re-derives nothing of the rule.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from vaegrid import halving
from vaegrid.cost import CostModel
from vaegrid.halving import Standing
from vaegrid.report.markdown import table
from vaegrid.study.core import HalvingSpec, TrialConfig
from vaegrid.study.datasets import Images
from vaegrid.train.data import image_shape


def halving_lines(
    spec: HalvingSpec,
    epochs: int,
    standings: Mapping[str, Standing],
    trials: pd.DataFrame,
    stops: pd.DataFrame,
    configs: Mapping[str, TrialConfig],
) -> list[str]:
    """The section: what each decided rung compared, kept and stopped; the compute saved.

    The full grid's cost is partly an estimate: a trial that did not end (diverge or fail)
    is counted for all its epochs (it might have diverged later), each epoch it did not run
    at what the cost model (cost.py) says of it: its model's work at the seconds per
    multiply-add the study's trials measured.

    Args:
        spec: The study's ``[halving]``.
        epochs: The study's ``train.epochs``.
        standings: Every trial of the grid, as the rule sees it.
        trials: ``vg_trial`` (key, epochs_done, seconds), one row per trial of ``standings``.
        stops: ``vg_stop``: the rung each stopped trial was recorded at.
        configs: Every trial's config, by key.
    """
    found = halving.plan(standings, spec, epochs)
    at = stops["rung"].value_counts() if len(stops) else pd.Series(dtype=int)
    rows = []
    for r in found.decided:
        gone = sum(standings[k].ended and standings[k].epochs_done < r.epoch for k in r.ranked)
        went_on = sum(not standings[k].ended for k in r.survivors)
        rows.append((r.epoch, len(r.ranked), gone, went_on, int(at.get(r.epoch, 0))))
    decisions = pd.DataFrame(
        rows, columns=["rung (epoch)", "compared", "ended before it", "went on", "stopped here"]
    )
    lines = [
        "## Early stopping (synchronous halving)",
        "",
        f"Trials were compared by {spec.metric} at epochs {', '.join(map(str, spec.rungs))}; "
        f"at each rung the best max(1, ceil({spec.keep:g} * n)) of its n trials went on (ties "
        "by key; diverged trials count as the worst), decided once the whole rung was in.",
        "",
        table(decisions),
        "",
    ]
    if found.open_rung is not None:
        lines += [f"Rung {found.open_rung} is not decided yet.", ""]
    return lines + _compute_lines(epochs, standings, trials, configs)


def _compute_lines(
    epochs: int,
    standings: Mapping[str, Standing],
    trials: pd.DataFrame,
    configs: Mapping[str, TrialConfig],
) -> list[str]:
    """The trial-epochs and training seconds run, against the full grid's."""
    keys = trials["key"].astype(str).tolist()
    done = trials["epochs_done"].astype(int).tolist()
    seconds = trials["seconds"].astype(float).tolist()
    ended = [standings[k].ended for k in keys]
    first = configs[keys[0]]
    try:
        images = Images(shape=image_shape(first.data))
    except RuntimeError:  # a plug-in data set not loaded here: the rate learned absorbs it
        images = None
    cost = CostModel(first.data, 0, images)
    for key, d, s in zip(keys, done, seconds, strict=True):
        cost.observe("any", s, d * cost.epoch_work(configs[key]))  # what the study measured
    left = sum(
        cost.seconds((epochs - d) * cost.epoch_work(configs[k]))
        for k, d, e in zip(keys, done, ended, strict=True)
        if not e
    )
    full_epochs = sum(d for d, e in zip(done, ended, strict=True) if e)
    full_epochs += epochs * sum(not e for e in ended)
    ran, ran_s = sum(done), sum(seconds)
    full_s = ran_s + left
    return [
        f"Compute: {ran:,} trial-epochs run of {full_epochs:,} for the full grid "
        f"({saved(ran, full_epochs):.0%} saved); {ran_s:,.1f} s of training against an "
        f"estimated {full_s:,.1f} s for the full grid ({saved(ran_s, full_s):.0%} "
        "saved). The full grid's figures are estimates: every trial that did not end (diverge "
        "or fail) is counted for all its epochs, each epoch it did not run at what the cost "
        "model says of it (its model's multiply-adds at the seconds per multiply-add this "
        "study's trials measured). Seconds are training time summed over trials, not wall "
        "time.",
        "",
    ]


def saved(ran: float, full: float) -> float:
    """The share of ``full`` that running only ``ran`` saved (0 when the full grid is 0)."""
    return 1 - ran / full if full > 0 else 0.0
