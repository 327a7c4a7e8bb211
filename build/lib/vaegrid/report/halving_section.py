"""report.md's section on a halving study: each rung's decision, and the compute it saved.

The decisions are :func:`vaegrid.halving.plan`'s, from the standings the driver decides
with (:func:`vaegrid.halving.read_standings`): the report re-derives nothing of the rule.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from vaegrid import halving
from vaegrid.halving import Standing
from vaegrid.report.markdown import table
from vaegrid.spec.study import HalvingSpec


def halving_lines(
    spec: HalvingSpec,
    epochs: int,
    standings: Mapping[str, Standing],
    trials: pd.DataFrame,
    stops: pd.DataFrame,
) -> list[str]:
    """The section: what each decided rung compared, kept and stopped; the compute saved.

    The full grid's cost is partly an estimate: a trial that did not end (diverge or fail)
    is counted for all its epochs (it might have diverged later), each epoch it did not run
    at its own mean seconds per epoch so far.

    Args:
        spec: The study's ``[halving]``.
        epochs: The study's ``train.epochs``.
        standings: Every trial of the grid, as the rule sees it.
        trials: ``vg_trial`` (key, epochs_done, seconds), one row per trial of ``standings``.
        stops: ``vg_stop``: the rung each stopped trial was recorded at.
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
    return lines + _compute_lines(epochs, standings, trials)


def _compute_lines(
    epochs: int, standings: Mapping[str, Standing], trials: pd.DataFrame
) -> list[str]:
    """The trial-epochs and training seconds run, against the full grid's."""
    keys = trials["key"].astype(str)
    done = trials["epochs_done"].astype(int)
    ended = keys.map(lambda k: standings[k].ended).to_numpy(dtype=bool)
    completed = keys.map(lambda k: standings[k].completed).to_numpy(dtype=bool)
    full_epochs = int(done[ended].sum()) + epochs * int((~ended).sum())
    ran = int(done.sum())
    per_epoch = trials["seconds"][completed].sum() / max(1, done[completed].sum())
    # A trial's epochs cost what its own did (a wide model's are dearer than the winners'),
    # else, for one that ran none, the completed trials' mean.
    own = (trials["seconds"] / done.where(done > 0)).fillna(per_epoch).to_numpy()
    left = (epochs - done).where(~ended, 0).to_numpy()
    ran_s = float(trials["seconds"].sum())
    full_s = ran_s + float((left * own).sum())
    return [
        f"Compute: {ran:,} trial-epochs run of {full_epochs:,} for the full grid "
        f"({saved(ran, full_epochs):.0%} saved); {ran_s:,.1f} s of training against an "
        f"estimated {full_s:,.1f} s for the full grid ({saved(ran_s, full_s):.0%} "
        "saved). The full grid's figures are estimates: every trial that did not end (diverge "
        "or fail) is counted for all its epochs, each epoch it did not run at its own mean "
        f"seconds per epoch so far (the completed trials' mean, {per_epoch:.2f} s, for one "
        "that ran none). Seconds are training time summed over trials, not wall time.",
        "",
    ]


def saved(ran: float, full: float) -> float:
    """The share of ``full`` that running only ``ran`` saved (0 when the full grid is 0)."""
    return 1 - ran / full if full > 0 else 0.0
