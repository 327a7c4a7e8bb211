"""What does each of a worker's store calls cost the worker? Client CPU, wall time and
statements per call, on PostgreSQL and SQLite.

    python bench/store_ops.py [--trials 200] [--epochs 5] [--baseline DIR]

One writer, alone, runs ``--trials`` trials as a cluster worker runs each: ``claim`` (its
lease; PostgreSQL only), ``begin_run``, an epoch's ``record_epoch`` (the first with the
device kind, as the worker's recorder does), ``finish_run`` with a completed result,
``release``. The driver's ``start_trials`` starts them all first, outside the timing.
Measured per call: the process's CPU time (``time.process_time``: SQLAlchemy, psycopg and
vaegrid's own code, what a simulated slot of ``bench/scale.py`` spends), the wall time
(with the server's work and the round trips), and the statements sent (SQLAlchemy's
``before_cursor_execute`` on vaegrid's engine; an executemany counts once).

With ``--baseline DIR`` (another checkout, ``git worktree add /tmp/base <commit>``) the
same calls are timed with that vaegrid first on PYTHONPATH, in a process of its own, on a
fresh database, and the table gives both and the ratio of the CPU (before / after).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

OPS = ("claim", "begin_run", "record_epoch", "finish_run", "release")


def measure(backend: str, trials: int, epochs: int) -> dict[str, dict[str, float]]:
    """Per operation: calls, CPU ms, wall ms and statements per call."""
    from contextlib import ExitStack

    from load_store import bench_study, fake_epoch
    from servers import postgres
    from sqlalchemy import event

    from vaegrid.db.engine import Database
    from vaegrid.db.store import Store
    from vaegrid.layout import StudyLayout
    from vaegrid.study.core import expand
    from vaegrid.train.records import TrialResult

    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = stack.enter_context(postgres()) if backend == "postgresql" else None
        study = bench_study(trials, epochs)
        cfgs = expand(study)
        store = Store(Database.for_study(StudyLayout(folder), url))
        stack.callback(store.close)
        store.sync_study(study, cfgs, 1)
        ids = store.start_trials(study, cfgs)
        sent = [0]
        event.listen(
            store.engine, "before_cursor_execute", lambda *_: sent.__setitem__(0, sent[0] + 1)
        )
        cost: dict[str, list[float]] = {op: [0, 0.0, 0.0, 0] for op in OPS}

        def op(name: str, fn: Callable[..., Any], *args: Any) -> Any:
            cpu, wall, before = time.process_time(), time.perf_counter(), sent[0]
            out = fn(*args)
            c = cost[name]
            c[0] += 1
            c[1] += time.process_time() - cpu
            c[2] += time.perf_counter() - wall
            c[3] += sent[0] - before
            return out

        rng, server = random.Random(0), backend == "postgresql"
        for cfg in cfgs:
            if server:
                assert op("claim", store.claim, cfg.key, "bench", 30.0)
            run = op("begin_run", store.begin_run, cfg.key, "cpu", os.getpid(), "fake", "h", {})
            history = [fake_epoch(e, 0.0, rng) for e in range(1, epochs + 1)]
            for r in history:
                kind = "fake" if r.epoch == 1 else None
                op("record_epoch", store.record_epoch, cfg.key, ids[cfg.key], r, kind)
            op(
                "finish_run",
                store.finish_run,
                cfg.key,
                run,
                TrialResult("completed", history),
                None,
            )
            if server:
                op("release", store.release, cfg.key, "bench")
    return {
        name: {
            "calls": n,
            "cpu_ms": 1000 * cpu / n,
            "wall_ms": 1000 * wall / n,
            "statements": k / n,
        }
        for name, (n, cpu, wall, k) in cost.items()
        if n
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="another vaegrid's checkout, timed too")  # fmt: skip
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the baseline's
    args = parser.parse_args()
    if not (1 <= args.trials <= 10_000 and 1 <= args.epochs <= 100):
        parser.error("--trials 1..10000, --epochs 1..100")
    if args.baseline is not None and not (args.baseline / "vaegrid" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline}: no vaegrid/__init__.py there")
    found = {b: measure(b, args.trials, args.epochs) for b in ("postgresql", "sqlite")}
    if args.json:
        print(json.dumps(found))
        return
    base: dict[str, Any] = {}
    if args.baseline is not None:
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(args.baseline), os.environ.get("PYTHONPATH", "")]),
        )
        argv = [sys.executable, __file__, "--trials", str(args.trials), "--epochs",
                str(args.epochs), "--json"]  # fmt: skip
        out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True,
                             cwd=tempfile.gettempdir()).stdout  # fmt: skip
        base = json.loads(out.strip().splitlines()[-1])
    for backend, ops in found.items():
        print(f"\n{backend}: {args.trials} trials of {args.epochs} epochs, one writer, per call")
        head = f"  {'call':<13} {'CPU ms':>7} {'wall ms':>8} {'statements':>10}"
        print(head + ("   baseline: CPU ms, statements (CPU before / after)" if base else ""))
        trial = {"cpu": 0.0, "statements": 0.0, "base_cpu": 0.0, "base_statements": 0.0}
        for name, c in ops.items():
            per = c["calls"] / args.trials
            trial["cpu"] += c["cpu_ms"] * per
            trial["statements"] += c["statements"] * per
            line = f"  {name:<13} {c['cpu_ms']:>7.2f} {c['wall_ms']:>8.2f} {c['statements']:>10.1f}"
            b = base.get(backend, {}).get(name)
            if b is not None:
                trial["base_cpu"] += b["cpu_ms"] * per
                trial["base_statements"] += b["statements"] * per
                ratio = b["cpu_ms"] / c["cpu_ms"]
                line += f"   {b['cpu_ms']:>7.2f} {b['statements']:>5.1f} ({ratio:.2f})"
            print(line)
        line = f"  a trial: {trial['cpu']:.1f} ms of CPU, {trial['statements']:.0f} statements"
        if base:
            ratio = trial["base_cpu"] / trial["cpu"]
            line += (f"; baseline {trial['base_cpu']:.1f} ms, {trial['base_statements']:.0f} "
                     f"statements (CPU before / after: {ratio:.2f})")  # fmt: skip
        print(line)


if __name__ == "__main__":
    main()
