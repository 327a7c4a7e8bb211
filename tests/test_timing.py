"""Where a sweep's time went (analysis/timing.py) and its picture (figures.timeline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaegrid.analysis.timing import timing, timing_lines


def run(key: str, started: float, ended: float | None, status: str = "completed") -> dict:  # type: ignore[type-arg]
    return {"key": key, "started": started, "ended": ended, "status": status}


def test_lanes_occupancy_tail_overhead_and_rungs() -> None:
    rows = [
        run("a", 100, 110, "paused"),  # slot 1
        run("b", 100, 104, "paused"),  # slot 2
        run("c", 104.5, 108, "diverged"),  # slot 2 again, 0.5 s after b
        run("b", 111, 120),  # slot 1: b goes on after rung 1 (decided at 111)
        run("a", 110.2, 115),  # slot 2
        run("d", 200, 205),  # a resumed session, 80 s later: no hand-over counted
        run("e", 199, None, "running"),  # still open: left out
    ]
    t = timing(rows)
    assert t is not None
    assert [(r.key, r.lane) for r in t.runs] == [
        ("b", 0), ("a", 1), ("c", 0), ("a", 0), ("b", 1), ("d", 0)
    ]  # fmt: skip
    assert t.lanes == 2 and t.span == 105
    assert t.busy == pytest.approx(10 + 4 + 3.5 + 9 + 4.8 + 5)
    assert t.occupancy == pytest.approx(t.busy / (105 * 2))
    # slot 2 (lane 1) ran out of work at 120, the last run ended at 205
    assert t.tail == 85 and t.tail_idle == 85
    assert sorted(round(g, 2) for g in t.gaps) == [0.5, 1.0, 2.2]  # 85 s: not a hand-over
    assert t.rungs == ((1, 110.2),)  # the first run to go on after a pause
    (line,) = [x for x in timing_lines(t) if x.startswith("6 runs")]
    assert "slots busy 17.3%" in line and "idle tail 85 s" in line
    assert "median 1.00 s, max 2.20 s over 3 hand-overs" in line
    assert "Rungs decided at 1: 10 s" in line
    assert timing([run("x", 1, None)]) is None and timing([]) is None


def test_the_timeline_draws_every_run_on_its_slot(tmp_path: Path) -> None:
    from vaegrid.report import figures

    rows = [run("a" * 12, 0, 10, "paused"), run("b" * 12, 0, 4, "diverged"),
            run("a" * 12, 11, 20)]  # fmt: skip
    t = timing(rows)
    assert t is not None
    path = tmp_path / "timeline.png"
    assert figures.timeline(t, {"a" * 12: 6, "b" * 12: 1}, path) == 3
    assert path.stat().st_size > 5_000


def test_a_thousand_slots_get_their_lanes_fast_and_one_band_of_a_picture(tmp_path: Path) -> None:
    # Lanes by a heap: the same lowest-free-lane rule as a scan over every lane, which
    # took a thousand slots' hundred thousand runs minutes.
    import random

    from PIL import Image

    from vaegrid.report import figures

    rng = random.Random(3)
    rows = []
    for slot in range(1000):
        at = rng.random() * 5
        for j in range(5):
            rows.append(run(f"{slot:06d}{j:06d}", at, at + 20 + rng.random() * 5))
            at = rows[-1]["ended"] + rng.choice([0.0, 0.3])
    t = timing(rows)
    assert t is not None and t.lanes == 1000
    assert [r.lane for r in t.runs] == _brute_lanes(rows)  # the rule, by brute force
    path = tmp_path / "timeline.png"
    assert figures.timeline(t, {}, path) == 5000
    _, height = Image.open(path).size
    assert height <= 1500, height  # a band of slots, not 1,000 rows of half an inch


def _brute_lanes(rows: list[dict]) -> list[int]:  # type: ignore[type-arg]
    free_at: list[float] = []
    lanes = []
    for r in sorted(rows, key=lambda r: (r["started"], r["ended"])):
        lane = next((i for i, e in enumerate(free_at) if e <= r["started"]), len(free_at))
        if lane == len(free_at):
            free_at.append(0.0)
        free_at[lane] = r["ended"]
        lanes.append(lane)
    return lanes
