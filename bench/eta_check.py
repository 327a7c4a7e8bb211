"""Does the sweep's time left tell the truth? Runs a study and compares, line by line, the
time left it said with the time it then took.

Runs ``vaegrid run STUDY --no-progress`` into a fresh results folder, stamps every event
line it prints (each finished trial's says the share of the work done and the time left),
and when the sweep has ended prints, at 10%, 50% and 90% of its wall time, the last
forecast said by then against the time that was really left (error in seconds and as a
share of the wall), then where the time went (analysis/timing.py: occupancy, idle tail,
driver overhead) from the study's database. Real MNIST: set VAEGRID_DATA.

    python bench/eta_check.py studies/seed.toml [--results DIR] [--workers-per-device K]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vaegrid.analysis.timing import timing, timing_lines
from vaegrid.db.store import Store
from vaegrid.study.load import load_study

LEFT = re.compile(r"(\d+)% of the work done, about (?:(\d+) h )?(\d+) (min|s) left")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("study", type=Path)
    p.add_argument("--results", type=Path, default=None, help="default: a temporary folder")
    p.add_argument("--workers-per-device", type=int, default=None)
    args = p.parse_args()
    results = args.results or Path(tempfile.mkdtemp(prefix="eta-"))
    name = load_study(args.study).name
    command = [sys.executable, "-m", "vaegrid", "run", str(args.study), "--results",
               str(results), "--no-progress", "--devices", "cpu"]  # fmt: skip
    if args.workers_per_device:
        command += ["--workers-per-device", str(args.workers_per_device)]
    said: list[tuple[float, float, float]] = []  # (when, share done, seconds left)
    start = time.monotonic()
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1) as child:
        assert child.stdout is not None
        for line in child.stdout:
            now = time.monotonic() - start
            print(f"{now:7.1f}  {line}", end="", flush=True)
            m = LEFT.search(line)
            if m:
                left = int(m[3]) * (60 if m[4] == "min" else 1) + int(m[2] or 0) * 3600
                said.append((now, int(m[1]) / 100, float(left)))
    wall = time.monotonic() - start
    if child.returncode not in (0, 1) or not said:
        sys.exit(f"eta_check: the sweep exited {child.returncode} with {len(said)} forecasts")
    print(f"\nwall {wall:,.0f} s; {len(said)} forecasts")
    print(f"{'at':>4} {'time':>7} {'work done':>9} {'said left':>9} {'was left':>8} "
          f"{'error':>7} {'of wall':>7}")  # fmt: skip
    for share in (0.1, 0.5, 0.9):
        when = share * wall
        before = [s for s in said if s[0] <= when]
        if not before:
            print(f"{share:>4.0%}: no forecast yet")
            continue
        at, done, left = before[-1]
        truth = wall - at
        print(f"{share:>4.0%} {at:>6.0f}s {done:>9.0%} {left:>8.0f}s {truth:>7.0f}s "
              f"{left - truth:>+6.0f}s {(left - truth) / wall:>+7.1%}")  # fmt: skip
    store = Store.reader(results / name / "study.db")
    try:
        spent = timing(store.runs())
    finally:
        store.close()
    if spent is not None:
        print("\n".join(timing_lines(spent)[2:3]))


if __name__ == "__main__":
    main()
