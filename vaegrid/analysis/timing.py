"""Where a sweep's time went, from its runs (``vg_run``: each run's start and end): the
slots' lanes, how busy they were, the idle tail, the driver's overhead between runs, and
when halving decided its rungs. report.md's "Where the time went" and timeline.png.
"""

from __future__ import annotations

import heapq
import itertools
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# A gap between a slot's run and its next longer than this is not the driver's overhead:
# the driver was not running (a resumed sweep) or the slot waited for a rung.
OVERHEAD_GAP_MAX_S = 60.0


@dataclass(frozen=True)
class Run:
    """One run of a trial on one slot."""

    key: str
    started: float  # unix time
    ended: float
    status: str  # how the run ended
    lane: int  # which slot (lanes are assigned: a slot holds one run at a time)


@dataclass(frozen=True)
class Timing:
    """A sweep's time, over all its runs (every driver session)."""

    runs: tuple[Run, ...]
    lanes: int  # slots that ran trials at once, at most
    span: float  # first start to last end, seconds
    busy: float  # run-seconds, all slots
    tail: float  # from the first slot out of work for good to the last end, seconds
    tail_idle: float  # slot-seconds idle in the tail
    gaps: tuple[float, ...]  # a slot's end to its next start, up to OVERHEAD_GAP_MAX_S
    rungs: tuple[tuple[int, float], ...]  # halving: (rung number, unix time it was decided)

    @property
    def occupancy(self) -> float:
        """The share of the span x lanes that slots were running trials."""
        return self.busy / (self.span * self.lanes) if self.span > 0 else 0.0


def timing(rows: Sequence[Mapping[str, Any]]) -> Timing | None:
    """The timing of the finished runs of ``rows`` (``vg_run`` rows); None without one.

    Lanes: each run, in order of start, goes to the lowest lane free at its start (a run
    still open has no end and is left out). Rung decisions: the run that continues a trial
    after its j-th pause starts after rung j was decided; the first such start is when.
    """
    done = sorted(
        (r for r in rows if r.get("ended") is not None and r["ended"] >= r["started"]),
        key=lambda r: (r["started"], r["ended"]),
    )
    if not done:
        return None
    busy: list[tuple[float, int]] = []  # (when it frees, lane): a heap
    free: list[int] = []  # lanes free now: a heap, the lowest first
    lanes = 0
    runs = []
    pauses: Counter[str] = Counter()
    decided: dict[int, float] = {}
    for r in done:  # O(runs log lanes): a thousand slots' hundred thousand runs in a second
        while busy and busy[0][0] <= r["started"]:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        else:
            lane, lanes = lanes, lanes + 1
        heapq.heappush(busy, (r["ended"], lane))
        runs.append(Run(r["key"], r["started"], r["ended"], r["status"], lane))
        if pauses[r["key"]]:
            rung = pauses[r["key"]]
            decided[rung] = min(decided.get(rung, r["started"]), r["started"])
        if r["status"] == "paused":
            pauses[r["key"]] += 1
    first, last = runs[0].started, max(r.ended for r in runs)
    by_lane: dict[int, list[Run]] = {}
    for run in runs:
        by_lane.setdefault(run.lane, []).append(run)
    ends = [lane[-1].ended for lane in by_lane.values()]
    gaps = tuple(
        b.started - a.ended
        for lane in by_lane.values()
        for a, b in itertools.pairwise(lane)
        if 0 <= b.started - a.ended <= OVERHEAD_GAP_MAX_S
    )
    return Timing(
        runs=tuple(runs),
        lanes=len(by_lane),
        span=last - first,
        busy=sum(r.ended - r.started for r in runs),
        tail=last - min(ends),
        tail_idle=sum(last - e for e in ends),
        gaps=gaps,
        rungs=tuple(sorted(decided.items())),
    )


def timing_lines(t: Timing, slots: int | None = None) -> list[str]:
    """report.md's section on where the time went."""
    overhead = (
        f"median {statistics.median(t.gaps):.2f} s, max {max(t.gaps):.2f} s over "
        f"{len(t.gaps)} hand-overs"
        if t.gaps
        else "no hand-over measured"
    )
    return [
        "## Where the time went",
        "",
        f"{len(t.runs)} runs on {t.lanes} slots"
        + (f" (the last run had {slots})" if slots and slots != t.lanes else "")
        + f", {t.span:,.0f} s from the first start to the last end (every run of the study, "
        f"resumed sessions included): slots busy {t.occupancy:.1%} ({t.busy:,.0f} run-seconds); "
        f"idle tail {t.tail:,.0f} s (from the first slot out of work to the end: "
        f"{t.tail_idle:,.0f} slot-seconds idle); driver overhead from a slot's run to its next "
        f"{overhead} (gaps over {OVERHEAD_GAP_MAX_S:.0f} s are restarts or rung waits, not "
        "counted). "
        + (
            "Rungs decided at "
            + ", ".join(f"{rung}: {when - t.runs[0].started:,.0f} s" for rung, when in t.rungs)
            + ". "
            if t.rungs
            else ""
        )
        + "Every run on its slot: figures/timeline.png.",
        "",
        "![timeline](figures/timeline.png)",
        "",
    ]
