"""How long do ``status``, ``report`` and ``vaegrid.load`` take on a study of 100,000 trials?

    python bench/readers.py [--trials 100000] [--epochs 10]

Two trials of a study are trained for real (synthetic MNIST, the local pool, SQLite); the
grid then grows to ``--trials`` trials (hidden 1..1000 x latent 1..N/1000), recorded by
the store as a driver records a grown grid, and every new trial gets generated rows as a
completed trial has them: its Optuna trial (``start_trials``), its epochs (train and
validation, worse than the trained two, so that those stay the winners ``report`` tests),
its run, its Optuna values. Then, each in a process of its own, timed from the outside:
``vaegrid status``, ``vaegrid report`` (which evaluates only the two trained winners, at
k = 10), and ``vaegrid.load`` with its per-trial and per-epoch tables. The database's size
and each command's peak memory are printed with the times.

    python bench/readers.py --baseline /tmp/base

times each command a second time with another vaegrid first on PYTHONPATH (a checkout of
an earlier commit, ``git worktree add /tmp/base <commit>``), on a copy of the same
database, and prints the ratio: before and after from one run on one machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_mnist  # noqa: E402

STUDY = """
name = "big"
[data]
limit = 1000
[train]
epochs = {epochs}
batch_size = 50
lr = 1e-3
clip = 1.0
[grid]
hidden = [1, 2]
latent = [1]
"""

INTERMEDIATE = (
    "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, "
    "intermediate_value_type) VALUES (:id, :step, :value, 'FINITE')"
)
VALUE = (
    "INSERT INTO trial_values (trial_id, objective, value, value_type) "
    "VALUES (:id, 0, :value, 'FINITE')"
)
COMPLETE = (
    "UPDATE trials SET state = 'COMPLETE', datetime_complete = datetime_start "
    "WHERE trial_id IN ({ids})"
)
SLOTS = 1000  # the generated runs' slots: a thousand busy from the first to the last
LOAD = (
    "import sys, vaegrid; r = vaegrid.load(sys.argv[1], 'big'); print(len(r.trials), len(r.epochs))"
)


def generate(db_path: Path, study_file: Path, n: int, epochs: int) -> float:
    """Grow the stored study to ``n`` trials, every new one with a completed trial's rows;
    returns the seconds it took."""
    from sqlalchemy import insert, select, text, update

    from vaegrid.db.schema import EpochRow, RunRow, TrialRow
    from vaegrid.db.store import Store
    from vaegrid.study.core import expand
    from vaegrid.study.load import load_study

    started = time.monotonic()
    small = load_study(study_file)
    settings = dict(small.settings)
    settings["hidden"] = tuple(range(1, 1001))
    settings["latent"] = tuple(range(1, math.ceil(n / 1000) + 1))
    big = dataclasses.replace(small, settings=tuple(settings.items()))
    grid = expand(big)[:n]
    store = Store(db_path)
    try:
        store.sync_study(big, grid, 2)
        with store.session() as s:
            trained = {
                k for (k,) in s.execute(select(TrialRow.key).where(TrialRow.status == "completed"))
            }
            worst = max(e for (e,) in s.execute(select(EpochRow.elbo)))
        todo = [c for c in grid if c.key not in trained]
        rng, now = random.Random(0), time.time()
        for chunk in range(0, len(todo), 2000):
            cfgs = todo[chunk : chunk + 2000]
            ids = store.start_trials(big, cfgs)
            epoch_rows, runs, values, last = [], [], [], {}
            for cfg in cfgs:
                base = worst + 50 + 50 * rng.random()
                for e in range(1, epochs + 1):
                    elbo = base + 100 * math.exp(-e / 3)
                    for split, off in (("train", 0.0), ("val", 2.0)):
                        epoch_rows.append({"key": cfg.key, "epoch": e, "split": split,
                                           "elbo": elbo + off, "recon": elbo + off - 20,
                                           "kl": 20.0, "seconds": 1.0})  # fmt: skip
                    values.append({"id": ids[cfg.key], "step": e, "value": elbo + 2.0})
                last[cfg.key] = elbo + 2.0
                at = now + epochs * (len(trained) + chunk + len(runs)) // SLOTS  # 1,000 slots busy
                runs.append({"key": cfg.key, "device": "cpu", "worker": 1, "started": at,
                             "ended": at + epochs, "status": "completed"})  # fmt: skip
            done = ",".join(str(ids[c.key]) for c in cfgs)
            with store.session() as s:
                s.execute(insert(EpochRow), epoch_rows)
                s.execute(insert(RunRow), runs)
                keys = [c.key for c in cfgs]
                s.execute(update(TrialRow).where(TrialRow.key.in_(keys)).values(
                    status="completed", epochs_done=epochs, seconds=float(epochs)))  # fmt: skip
                s.execute(text(INTERMEDIATE), values)
                s.execute(text(VALUE), [{"id": ids[k], "value": v} for k, v in last.items()])
                s.execute(text(COMPLETE.format(ids=done)))
    finally:
        store.close()
    return time.monotonic() - started


def timed(argv: list[str], pythonpath: str | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak memory (MB) and the last line of a command in its own process
    (with ``pythonpath`` first on PYTHONPATH: a baseline's vaegrid)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")])
    with tempfile.TemporaryFile("w+") as out:
        start = time.monotonic()
        # run from the temporary folder: ``python -m`` puts the working folder first on
        # sys.path, before PYTHONPATH, and this checkout's vaegrid would be the baseline's
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                                 cwd=tempfile.gettempdir())  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        said = out.read()
    assert child.returncode == 0, said
    return wall, usage.ru_maxrss / 1024, (said.strip().splitlines() or [""])[-1]


def commands(results: Path, data: Path) -> dict[str, list[str]]:
    """What is timed, each in a process of its own."""
    vaegrid = [sys.executable, "-m", "vaegrid"]
    report = [*vaegrid, "report", str(results / "big"), "--data-dir", str(data)]
    return {
        "status": [*vaegrid, "status", str(results / "big")],
        "report": [*report, "--nll-samples", "10"],
        "vaegrid.load": [sys.executable, "-c", LOAD, str(results)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="another vaegrid's checkout, timed too")  # fmt: skip
    args = parser.parse_args()
    if not (3 <= args.trials <= 1_000_000 and 1 <= args.epochs <= 100):
        parser.error("--trials 3..1000000, --epochs 1..100")
    if args.baseline is not None and not (args.baseline / "vaegrid" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline}: no vaegrid/__init__.py there")
    with tempfile.TemporaryDirectory(prefix="vaegrid-readers-") as folder:
        tmp = Path(folder)
        data = make_mnist(tmp / "data", n_train=1000, n_test=200)
        study = tmp / "big.toml"
        study.write_text(STUDY.format(epochs=args.epochs))
        results = tmp / "results"
        subprocess.run([sys.executable, "-m", "vaegrid", "run", str(study), "--results",
                        str(results), "--data-dir", str(data), "--devices", "cpu",
                        "--no-progress"], check=True, capture_output=True)  # fmt: skip
        db = results / "big" / "study.db"
        seconds = generate(db, study, args.trials, args.epochs)
        print(f"generated {args.trials:,} trials of {args.epochs} epochs in {seconds:.0f} s; "
              f"study.db {db.stat().st_size / (1 << 20):,.0f} MB", flush=True)  # fmt: skip
        pristine = tmp / "pristine"
        if args.baseline is not None:  # the report writes its tests and tables: each a copy
            shutil.copytree(results, pristine)
        for name, argv in commands(results, data).items():
            wall, peak, last = timed(argv)
            line = f"{name}: {wall:.1f} s, peak {peak:,.0f} MB"
            if args.baseline is not None:
                base = tmp / "base"
                shutil.rmtree(base, ignore_errors=True)
                shutil.copytree(pristine, base)
                was, was_peak, _ = timed(commands(base, data)[name], str(args.baseline))
                line += f"; baseline {was:.1f} s, peak {was_peak:,.0f} MB"
                line += f" (before / after: {was / wall:.2f})"
            print(f"{line}; said last: {last[:100]}", flush=True)


if __name__ == "__main__":
    main()
