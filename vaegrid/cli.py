"""vaegrid: a grid search over VAE training that resumes, ranks, tests and draws.

Start with ``vaegrid plan studies/seed.toml`` (what a study will run), then
``vaegrid run studies/seed.toml`` and ``vaegrid report results/seed``.
"""

# The command line: parses, calls one stage, maps errors. Bad input of any kind is an
# InputError: one line on stderr, exit code 2.

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vaegrid import signals
from vaegrid.errors import InputError
from vaegrid.faults import FAULT_WAIT_MAX, FAULT_WAIT_S
from vaegrid.run.pool import MAX_WORKER_DEATHS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints usage + message and exits 2; one line is what every other error
        # gets. The command's name once ("vaegrid: error: run: ..."), never "vaegrid" twice.
        command = self.prog.removeprefix("vaegrid").strip()
        hint = "; see vaegrid --help" if not command else f"; see vaegrid {command} --help"
        raise InputError(f"{command + ': ' if command else ''}{message}{hint}")


def _parser() -> argparse.ArgumentParser:
    from vaegrid.version import __version__

    p = _Parser(
        prog="vaegrid",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit codes: 0 done, 1 some trials failed (run), 2 bad input (one line, nothing "
        "written), 3 the world failed and was waited out in vain: the cluster's scheduler, the "
        "database, the disk (run: run it again once fixed), 130 Ctrl-C, 143 SIGTERM.",
    )
    p.add_argument("--version", action="version", version=f"vaegrid {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    plan = sub.add_parser(
        "plan",
        help="what a study will run: its fixed and searched settings, every trial with its "
        "key, and the estimated time on the pool run would use",
    )
    plan.add_argument("study", help="a study file, e.g. studies/seed.toml")
    plan.add_argument(
        "--data-dir",
        help="the data folder, for a plug-in data set (whose images' digest is in the keys)",
    )
    plan.add_argument("--devices", default="auto", help="as run's (default: auto)")
    plan.add_argument("--workers-per-device", type=int, default=None, metavar="K", help="as run's")

    run = sub.add_parser("run", help="sweep a study (resumes whatever is already done)")
    run.add_argument("study", help="a study file, e.g. studies/seed.toml")
    run.add_argument("--results", default="results", help="results folder (default: results/)")
    run.add_argument("--devices", default="auto", help="auto, cpu, or a list such as cuda:0,cuda:1")
    run.add_argument(
        "--workers-per-device",
        type=int,
        default=None,
        metavar="K",
        help="trials at once per device (default: cores on CPU, 2 on CUDA)",
    )
    run.add_argument(
        "--data-dir", default=None, help="MNIST root (default: $VAEGRID_DATA, else data/)"
    )
    run.add_argument("--retry-failed", action="store_true", help="run failed trials again")
    run.add_argument(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="run trials on batch jobs that vaegrid submits (slurm, pbs, sge, lsf, htcondor, "
        "oar; job settings from Dask's jobqueue.<scheduler>.* configuration), or on the "
        "workers of a Dask scheduler you started (tcp://HOST:8786), instead of the local pool",
    )
    run.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="with --cluster slurm (pbs...): at most N worker jobs at once, submitted as trials "
        "can run and cancelled when idle (default 4)",
    )
    run.add_argument(
        "--resource",
        default="vaegrid",
        metavar="NAME",
        help="the Dask worker resource a trial takes one unit of (default: vaegrid)",
    )
    run.add_argument(
        "--max-deaths",
        type=int,
        default=MAX_WORKER_DEATHS,
        metavar="N",
        help=f"fail a trial whose worker process dies N times (default {MAX_WORKER_DEATHS})",
    )
    run.add_argument(
        "--fault-wait",
        type=float,
        default=FAULT_WAIT_S,
        metavar="SECONDS",
        help="how long a database that is down or a full disk is waited out (trials resume "
        f"at their last epoch) before the sweep stops with exit 3 (default {FAULT_WAIT_S:g})",
    )
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="a line per finished trial instead of the live bar (the default when the output "
        "is no terminal)",
    )
    for command in (plan, run):
        command.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            dest="overrides",
            help="change a setting as if the study file said it (repeatable): --set "
            "train.epochs=5, --set 'grid.lr=[1e-3, 1e-2]', --set name=seed-5ep. A changed "
            "fixed setting is another study: resume it with the same --set, or give it its "
            "own name",
        )

    report = sub.add_parser("report", help="rank, test the winners, export CSV, figures, report.md")
    report.add_argument("study_dir", help="RESULTS_DIR/STUDY, e.g. results/seed")
    report.add_argument(
        "--top",
        type=int,
        default=1,
        metavar="K",
        help="winners per ranking criterion tested on the test split (default 1)",
    )
    report.add_argument(
        "--nll-samples",
        type=int,
        default=None,
        metavar="k",
        help="importance samples per test image of the test NLL (default: the study's "
        "[rank] nll_samples, else 1000; published results use 5000). Another k is added "
        "beside the ones stored, never in their place: the test table shows each k",
    )
    report.add_argument(
        "--force", action="store_true", help="evaluate the winners on test again at this k"
    )
    report.add_argument(
        "--data-dir", default=None, help="MNIST root (default: $VAEGRID_DATA, else data/)"
    )
    report.add_argument("--device", default="cpu", help="where to evaluate: cpu or cuda:N (cpu)")

    status = sub.add_parser("status", help="progress of a study, from its database")
    status.add_argument("study_dir", help="RESULTS_DIR/STUDY, e.g. results/seed")

    ls = sub.add_parser(
        "ls", help="the studies of a results folder: trials done, driver, last activity"
    )
    ls.add_argument("results", nargs="?", default="results", help="default: results/")

    rm = sub.add_parser(
        "rm",
        help="delete a study: its folder and, on a server, its rows (refused while it runs)",
    )
    rm.add_argument("study_dir", help="RESULTS_DIR/STUDY, e.g. results/smoke")
    rm.add_argument("--yes", action="store_true", help="do not ask first")

    for kind in ("model", "dataset"):
        new = sub.add_parser(
            f"new-{kind}",
            help=f"write a complete plug-in package for your own {kind} into ./NAME "
            "(pyproject with entry points, the code, a test, a README, a study): "
            "pip install -e ./NAME, then a study names it",
        )
        new.add_argument("name", help="lowercase letters, digits, '_' (a letter first)")
        new.add_argument("--dir", default=".", help="where to write it (default: here)")

    init = sub.add_parser(
        "init", help="write the example studies (smoke, seed, halving, repeats...) to start from"
    )
    init.add_argument("dir", nargs="?", default="studies", help="where (default: studies/)")

    export = sub.add_parser(
        "export", help="per-epoch metrics, settings and figures to TensorBoard or MLflow"
    )
    export.add_argument("study_dir", help="RESULTS_DIR/STUDY, e.g. results/seed")
    export.add_argument(
        "--to",
        nargs="+",
        required=True,
        metavar=("FORMAT", "DEST"),
        help="tensorboard [DIR] (default: STUDY/tensorboard; then tensorboard --logdir DIR) "
        "or mlflow [URI] (default: sqlite:///STUDY/mlflow.db; then mlflow ui "
        "--backend-store-uri URI). Exporting again adds what is new, never a second copy",
    )
    for command in (run, report, status, export, ls, rm):
        command.add_argument(
            "--storage",
            default=None,
            metavar="URL",
            help="the study database URL (default: sqlite:///RESULTS_DIR/STUDY/study.db)",
        )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code: 0 done, 1 some trials failed (run), 2 bad input
    (one line, nothing written), 3 the world failed (run: the cluster's scheduler went
    away, or the database or the disk stayed down past --fault-wait; running trials keep
    their last epoch), 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM), what was
    committed kept."""
    signals.reset()
    with signals.handled():
        try:
            args = _parser().parse_args(argv)
            code = _dispatch(args)
        except InputError as e:
            print(f"vaegrid: error: {_one_line(str(e))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            code = 0  # said below, in one line
        except BrokenPipeError:  # `vaegrid plan ... | head`: the reader has all it wanted
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except Exception as e:
            # A signal that landed inside a library's machinery can come out wrapped in
            # another exception (a class body's __set_name__ during an import gives
            # RuntimeError): the signal's, when its exception is in the chain.
            if not signals.caused(e):
                raise
            code = 0
        stopped = signals.received()  # raised, or swallowed on its way by a library
        if stopped is not None and code in (0, 1):
            print(
                f"vaegrid: interrupted ({stopped.name}); what was committed is kept: run the "
                "same command again",
                file=sys.stderr,
            )
            return stopped.exit_code
        return code


def _one_line(text: str) -> str:
    """A message as one line: control characters (a newline in a path) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _dispatch(args: argparse.Namespace) -> int:
    commands = {"plan": _plan, "run": _run, "report": _report, "status": _status}
    if args.command in commands:
        return commands[args.command](args)
    if args.command in ("export", "new-model", "new-dataset", "init", "ls", "rm"):
        from vaegrid import verbs

        return verbs.run(args)
    raise AssertionError(args.command)


def _plan(args: argparse.Namespace) -> int:
    """``vaegrid plan``: the study, its expanded grid a row per trial, the time it takes."""
    from vaegrid import verbs
    from vaegrid.study.axes import AXIS, applies, format_value
    from vaegrid.study.core import Probed, expand
    from vaegrid.study.load import load_study

    study = load_study(args.study, args.overrides)
    probed = Probed.of(study)
    if probed is None:  # a plug-in data set: its images' digest is in the keys
        from vaegrid.train.data import data_dir
        from vaegrid.train.probe import check_plugins

        study, probed = check_plugins(study, data_dir(args.data_dir))
    trials = expand(study)
    print(verbs.settings_lines(study, len(trials)))
    names = [*study.searched, *(["repeat"] if study.repeats > 1 else [])]
    widths = [max(6, len(n)) for n in names]

    def line(first: str, cells: list[str]) -> str:
        pairs = zip(cells, widths, strict=True)
        return f"{first:<12}" + "".join(f"  {c:>{w}}" for c, w in pairs)

    print(line("key", names))
    for t in trials:  # "-": a setting that does not apply to the trial (no depth for linear)
        values = t.axis_values()
        cells = [
            format_value(getattr(t, n)) if n == "repeat" or applies(AXIS[n], values) else "-"
            for n in names
        ]
        print(line(t.key, cells))
    print(f"{len(trials)} trials; {verbs.estimate(study, probed, trials, args)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    """``vaegrid run``: the sweep, on the executor its options choose."""
    from vaegrid.run.driver import run_study
    from vaegrid.run.executors import Where, choose
    from vaegrid.study.load import load_study
    from vaegrid.train.data import data_dir
    from vaegrid.train.probe import check_plugins

    study = load_study(args.study, args.overrides)
    study, probed = check_plugins(study, data_dir(args.data_dir))  # before anything is written
    if not 1 <= args.max_deaths <= 100:
        raise InputError(
            f"--max-deaths: {args.max_deaths} is not allowed; expected an integer 1 to 100"
        )
    if not 0 <= args.fault_wait <= FAULT_WAIT_MAX:  # nan fails both
        raise InputError(
            f"--fault-wait: {args.fault_wait:g} is not allowed; expected seconds from 0 "
            f"to {FAULT_WAIT_MAX:g}"
        )
    where = Where(args.cluster, args.jobs, args.resource, args.devices,
                  args.workers_per_device)  # fmt: skip
    trial_mb = probed.training_mb(study) + probed.data_mb  # each slot's worker holds the data
    executor, pool = choose(where, Path(args.results), study.name, trial_mb,
                            lambda line: print(line, flush=True))  # fmt: skip
    try:
        return run_study(
            study,
            Path(args.results),
            pool,
            data_dir(args.data_dir),
            retry_failed=args.retry_failed,
            progress=not args.no_progress,
            max_deaths=args.max_deaths,
            executor=executor,
            storage=args.storage,
            fault_wait=args.fault_wait,
            probed=probed,
        )
    finally:
        if executor is not None and not callable(executor):  # run_study closes its own
            executor.close()


def _report(args: argparse.Namespace) -> int:
    """``vaegrid report``: rankings, the winners tested, tables, figures, report.md."""
    from vaegrid.layout import StudyLayout
    from vaegrid.report.build import make_report
    from vaegrid.run.pool import make_pool
    from vaegrid.train.data import data_dir

    if "," in args.device or args.device == "auto":
        raise InputError(f"--device: {args.device!r} is not allowed; expected cpu or cuda:N")
    device = make_pool(args.device, option="--device").devices[0]  # a device here
    done = make_report(
        Path(args.study_dir), data_dir(args.data_dir), top=args.top,
        nll_samples=args.nll_samples, force=args.force, device=device, storage=args.storage,
        say=lambda line: print(line, file=sys.stderr, flush=True),
    )  # fmt: skip
    tested = int(done.test.drop_duplicates("key")["n_tested"].sum())
    print(
        f"{StudyLayout(done.folder).report}: {len(done.ranking)} configs ranked "
        f"({len(done.trials)} trials), {done.test['key'].nunique()} winning configs tested "
        f"({len(done.evaluated)} trials evaluated, {tested - len(done.evaluated)} reused), "
        f"in {done.seconds:.1f} s"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    """``vaegrid status``: a study's progress, read-only."""
    from vaegrid.run.progress import status_line

    print(status_line(Path(args.study_dir), args.storage))
    return 0
