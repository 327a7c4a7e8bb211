"""Grid order against longest first, replayed from a finished sweep's measured trials.

Reads a study file and its database (``RESULTS_DIR/STUDY/study.db``, without ``[halving]``):
each trial's measured seconds (the sum of its runs) and the cost model's predicted work
(cost.py). Replays the dispatch the driver does, each trial in turn to the slot that
frees first, in the grid's order (before) and longest first by predicted work (vaegrid
now), on 2 to 16 slots, and prints the makespan, the idle tail (from the first slot out
of work to the end) and the slots' occupancy, with after/before ratios. A replay: the
trials' seconds are those measured, on the study's own slots; the driver's own overhead
(0.1-0.3 s a trial) is left out of both.

    python bench/sweep_order.py studies/seed.toml results/seed
"""

from __future__ import annotations

import argparse
import heapq
import sys
from collections import defaultdict
from pathlib import Path

from vaegrid.cost import CostModel
from vaegrid.db.store import Store
from vaegrid.study.core import expand
from vaegrid.study.load import load_study


def replay(order: list[str], seconds: dict[str, float], slots: int) -> tuple[float, float, float]:
    """Makespan, idle tail and occupancy of running ``order`` on ``slots`` slots."""
    free = [(0.0, i) for i in range(slots)]
    ends = [0.0] * slots
    for key in order:
        at, slot = heapq.heappop(free)
        ends[slot] = at + seconds[key]
        heapq.heappush(free, (ends[slot], slot))
    span = max(ends)
    return span, span - min(ends), sum(seconds.values()) / (span * slots)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("study", type=Path)
    p.add_argument("study_dir", type=Path)
    args = p.parse_args()
    store = Store.reader(args.study_dir / "study.db")
    try:
        trials = {t.key: t for t in store.trials()}
        runs = store.runs()
        halving = "halving" in store.fingerprint()
    finally:
        store.close()
    if halving:
        sys.exit("sweep_order: a halving study's rungs are not replayed; take a full grid")
    took: dict[str, float] = defaultdict(float)
    for r in runs:
        if r["ended"] is not None:
            took[r["key"]] += r["ended"] - r["started"]
    study = load_study(args.study)
    # The grid's order: the study's expansion (repeat, then the cross product in the study
    # file's order), of the trials that ran.
    configs = [c for c in expand(study) if c.key in took and c.key in trials]
    model = CostModel.of(study)
    grid = [c.key for c in configs]
    longest = [c.key for c in sorted(configs, key=lambda c: (-model.work(c, 0, c.epochs), c.key))]
    print(f"{args.study_dir}: {len(grid)} trials, {sum(took.values()):,.0f} trial-seconds measured")
    print(f"{'slots':>5} {'order':<13} {'makespan s':>10} {'idle tail s':>11} {'occupancy':>9}")
    for slots in (2, 4, 8, 16):
        before = replay(grid, took, slots)
        after = replay(longest, took, slots)
        for name, (span, tail, busy) in (("grid order", before), ("longest first", after)):
            print(f"{slots:>5} {name:<13} {span:>10,.0f} {tail:>11,.0f} {busy:>9.1%}")
        print(f"{'':>5} after/before: makespan {after[0] / before[0]:.3f}, "
              f"tail {after[1] / before[1] if before[1] else float('nan'):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
