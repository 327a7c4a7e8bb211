"""The command line's everyday verbs beyond the sweep itself: plan's head and estimate,
``export``, ``new-model`` / ``new-dataset``, ``init``, ``ls`` and ``rm``. cli.py parses and maps
errors; each verb here reads its arguments and calls the stage that does the work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vaegrid.errors import InputError


def run(args: argparse.Namespace) -> int:
    """Run the verb ``args.command``; its exit code."""
    verb = {"export": _export, "new-model": _new, "new-dataset": _new, "ls": _ls, "rm": _rm,
            "init": _init}  # fmt: skip
    return verb[args.command](args)


def settings_lines(study: Any, n_trials: int) -> str:
    """plan's head: the study, its fixed settings (those that apply to some trial), the
    searched ones with their values, repeats, halving and ranking."""
    from vaegrid.study.axes import AXIS, applies, format_value

    first = {n: v[0] for n, v in study.settings}
    fixed = [  # those that apply to some trial (no SGD momentum under Adam)
        f"{n} {format_value(v[0])}" for n, v in study.settings
        if n not in study.searched and (applies(AXIS[n], first)
                                        or any(a in study.searched for a in AXIS[n].applies or ()))
    ]  # fmt: skip
    searched = [
        f"{n} [{', '.join(format_value(x) for x in study.values(n))}]" for n in study.searched
    ]
    from vaegrid.study.core import grid_configs

    configs = n_trials // max(1, study.repeats)
    drawn = ""
    if study.sample is not None:
        drawn = f" (drawn by [sample] seed {study.sample[1]} from the grid's {grid_configs(study)})"
    lines = [
        f"study {study.name}: {n_trials} trials = {configs} configs{drawn} x {study.repeats} "
        f"repeat{'s' if study.repeats > 1 else ''}",
        f"fixed: {', '.join(fixed)}",
        f"searched: {', '.join(searched) or 'nothing (one config)'}",
    ]
    if study.halving is not None:
        h = study.halving
        lines.append(f"halving: rungs {list(h.rungs)}, keep {h.keep:g} by {h.metric}")
    if study.nll_samples:
        lines.append(f"rank: also by the validation NLL, k = {study.nll_samples}")
    return "\n".join(lines)


def estimate(study: Any, probed: Any, trials: list[Any], args: argparse.Namespace) -> str:
    """plan's last words: the time the sweep should take on the pool ``run`` would use, by
    the cost model (counted work at its prior rate; the first measured epochs correct it)."""
    from vaegrid.cost import PRIOR_MACS_PER_S, CostModel, duration, makespan
    from vaegrid.run.pool import make_pool

    pool = make_pool(args.devices, args.workers_per_device, trial_mb=probed.training_mb(study))
    cost = CostModel.of(study, probed)
    seconds = [cost.seconds(cost.work(t, 0, t.epochs)) for t in trials]
    span = makespan([], seconds, len(pool.slot_list()))
    bound = "at most " if study.halving is not None else ""
    unless = "halving stops some early" if study.halving is not None else "none diverges"
    gpu = any(d.startswith("cuda") for d in pool.devices)
    rate = (
        "a CPU thread's prior rate; a GPU is faster" if gpu
        else f"{PRIOR_MACS_PER_S:.1e} multiply-adds/s a CPU slot, corrected once epochs run"
    )  # fmt: skip
    return (
        f"estimated {bound}{duration(span)} if every trial runs all its epochs ({unless}) on "
        f"{pool.found} with {len(pool.slot_list())} trials at once ({rate})"
    )


def _export(args: argparse.Namespace) -> int:
    from vaegrid.api import read_study
    from vaegrid.db.store import existing_db
    from vaegrid.layout import StudyLayout
    from vaegrid.report.export import FORMATS, default_destination
    from vaegrid.report.export import export as export_study
    from vaegrid.safeio import check_study_dir

    if len(args.to) > 2 or args.to[0] not in FORMATS:
        raise InputError(
            f"--to: {' '.join(args.to)[:200]!r} is not allowed; expected tensorboard [DIR] "
            "or mlflow [URI]"
        )
    folder = Path(args.study_dir)
    check_study_dir(folder.parent, folder, "the study folder's parent")
    layout = StudyLayout(folder)
    rows = read_study(existing_db(layout, args.storage))
    fmt = args.to[0]
    dest = args.to[1] if len(args.to) == 2 else default_destination(fmt, layout)
    n = export_study(rows, layout, fmt, dest, lambda line: print(line, file=sys.stderr))
    print(f"{rows.name}: {n} trials exported to {fmt} at {dest}")
    return 0


def _new(args: argparse.Namespace) -> int:
    from vaegrid.scaffold import new_plugin

    kind = args.command.removeprefix("new-")
    written = new_plugin(kind, args.name, Path(args.dir))
    root = Path(args.dir) / args.name
    print(f"wrote {len(written)} files into {root}; next: pip install -e {root}, then "
          f"vaegrid plan {root / 'study.toml'}")  # fmt: skip
    return 0


def _init(args: argparse.Namespace) -> int:
    from vaegrid.scaffold import example_studies

    where = Path(args.dir)
    written, kept = example_studies(where)
    for path in kept:
        print(f"kept {path}: it exists (delete it to get the example back)")
    print(f"wrote {len(written)} example studies into {where}; next: vaegrid plan "
          f"{where / 'smoke.toml'}, then vaegrid run {where / 'smoke.toml'}")  # fmt: skip
    return 0


def _ls(args: argparse.Namespace) -> int:
    import time

    from vaegrid.catalog import list_studies

    found = list_studies(None if args.storage else Path(args.results), args.storage)
    now = time.time()
    for listed in found:
        print(listed.words(now))
    if not found:
        print(f"{args.results}: no studies yet (vaegrid run STUDY --results {args.results})")
    return 0


def _rm(args: argparse.Namespace) -> int:
    from vaegrid.catalog import remove_study
    from vaegrid.layout import StudyLayout

    def confirm(what: str) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            raise InputError(f"rm: {what}: not removed; say --yes to remove without asking")
        return input(f"remove {what}? [y/N] ").strip().lower() in ("y", "yes")

    print(remove_study(StudyLayout(Path(args.study_dir)), args.storage, confirm))
    return 0
