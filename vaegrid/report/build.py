"""Rank a sweep's trials, test the winners, export CSV tables, pictures and report.md.

Everything is built from the study database with pandas (analysis/tables.py). Only the
winners (the top K configs by validation elbo and the top K by validation reconstruction)
are ever evaluated on the test split (evaluate.py), once each: their results are stored and
reused. The words are markdown.py's and halving_section.py's, the pictures figures.py's;
this module reads, checks, and writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vaegrid import signals
from vaegrid.analysis import tables
from vaegrid.analysis.timing import Timing, timing, timing_lines
from vaegrid.api import StudyRows, read_study
from vaegrid.db import schema
from vaegrid.db.engine import Database
from vaegrid.db.reader import foreign_words
from vaegrid.db.store import Store, existing_db
from vaegrid.errors import InputError
from vaegrid.layout import TABLES, StudyLayout
from vaegrid.report.evaluate import NLL_SAMPLES_MAX, Winners, load_winners
from vaegrid.report.halving_section import halving_lines
from vaegrid.report.markdown import likelihood_label, markdown, versions_used
from vaegrid.safeio import check_study_dir, ensure_dir, save_with, write_atomic
from vaegrid.status import COMPLETED
from vaegrid.study.axes import AXIS
from vaegrid.study.datasets import Images

# Configs the winner is compared with, paired over repeats, in report.md.
COMPARED = 4
# The test NLL's k when the study has no [rank] nll_samples (the literature's is 5,000:
# Burda et al. 2015; ``--nll-samples 5000`` adds it beside).
DEFAULT_TEST_K = 1000
# While a winner is evaluated, a line on where the report is at most this often (seconds).
PROGRESS_S = 10.0


def _check_outputs(layout: StudyLayout) -> None:
    """Refuse, before anything is computed or written, an output path that is taken by
    something else: a folder where a CSV or report.md goes, a file where figures/ goes.

    Raises:
        InputError: naming the path and what goes there.
    """
    for path in (*(layout.table(n) for n in TABLES), layout.report):
        if path.is_dir():
            raise InputError(f"{path}: is a folder; the report writes a file there")
    if layout.figures.exists() and not layout.figures.is_dir():
        raise InputError(f"{layout.figures}: is not a folder; the report draws its figures there")


@dataclass(frozen=True)
class Report:
    """What ``make_report`` wrote."""

    folder: Path  # results/<study>
    ranking: pd.DataFrame
    test: pd.DataFrame
    evaluated: list[str]  # keys evaluated on the test split in this call (not reused)
    seconds: float
    trials: pd.DataFrame  # one row per trial (ranking has one per config, over its repeats)


def make_report(
    study_dir: Path,
    data_root: Path,
    top: int = 1,
    nll_samples: int | None = None,
    force: bool = False,
    device: str = "cpu",
    storage: str | None = None,
    say: Callable[[str], None] | None = None,
) -> Report:
    """Rank, test the winners, and write the CSVs, figures and ``report.md`` into ``study_dir``.

    Args:
        study_dir: ``RESULTS_DIR/STUDY``, as ``vaegrid run`` made it.
        data_root: MNIST root, for the test split.
        top: Winners per criterion.
        nll_samples: Importance samples per test image of the test NLL this report stands
            on (default: the study's ``[rank] nll_samples``, else ``DEFAULT_TEST_K``). A
            tested trial's NLL at each k is computed once and kept: another k is added
            beside the stored ones, and the test table shows every k stored.
        force: Evaluate the winners on the test split again (at ``nll_samples``) even if
            stored.
        device: Where to evaluate.
        storage: The study database URL (default: the folder's study.db).
        say: Told a line per stage, and where the winners' evaluation is (None: silent).

    Raises:
        InputError: not a study folder, no completed trial, ``top`` or ``nll_samples`` out
            of range, or a winner's weights are missing. Nothing is written then.
    """
    started = time.perf_counter()
    tell = _teller(say)

    check_study_dir(study_dir.parent, study_dir, "the study folder's parent")
    layout = StudyLayout(study_dir)
    db = existing_db(layout, storage)
    rows = read_study(db)  # read-only: nothing is written before every check
    _check_outputs(layout)
    nll_samples = _test_k(nll_samples, rows)
    names, per_trial, ranking, completed, winners, tested = _rank(rows, top, study_dir)
    unstamped_ok = not schema.weights_stamped(rows.created_schema)
    configs = {k: rows.configs[k] for k in tested["key"]}
    loaded = load_winners(layout, configs, data_root, device, unstamped_ok)
    stored = rows.tests
    stored_at = set(zip(stored["key"], stored["nll_samples"], strict=True))
    todo = [k for k in loaded.configs if force or (k, nll_samples) not in stored_at]
    # Every check has passed: from here on, the study's folder and database are written.
    metric = tables.ranked_by(ranking)
    tell(
        f"report: {rows.name}: {len(rows.trials)} trials, {len(ranking)} configs ranked by "
        f"{metric}; {winners['key'].nunique()} winning configs, {len(tested)} trials to test "
        f"at k = {nll_samples} ({len(todo)} to evaluate, {len(tested) - len(todo)} stored)"
    )
    aside = foreign_words(rows.foreign)
    if aside is not None:
        tell(f"report: {aside}")
    if todo:  # the only writes to the database (a report with nothing new writes none)
        stored = _test_winners(db, loaded, todo, nll_samples, tell)
    tell(f"report: writing the tables into {study_dir}")
    data = next(iter(loaded.configs.values())).data
    test = tables.test_table(winners, per_trial, stored, nll_samples)
    test["likelihood"] = likelihood_label(data, nll_samples)
    _write_tables(layout, rows, ranking, per_trial, test)
    found = tables.importances(ranking, names, metric)
    pair = _heatmap_axes(ranking, names, found)
    tell(f"report: drawing the figures into {layout.figures}")
    _draw(layout, rows.epochs, per_trial, ranking, test, loaded, names, found, pair)
    seconds = time.perf_counter() - started
    compared = [c for criterion in tables.criteria(ranking) for c in tables.comparisons(
        ranking, per_trial, criterion, COMPARED)]  # fmt: skip
    spent = _timeline(rows, layout)
    text = markdown(
        ranking, test, completed, seconds, versions_used(rows.runs), _early(rows),
        names=names, data=data, compared=compared, importance=found, heatmap=pair,
        n_trials=len(per_trial), description=rows.description,
        val_nll_samples=rows.fingerprint.nll_samples,
        spent=timing_lines(spent) if spent is not None else None,
    )  # fmt: skip
    write_atomic(layout.report, text)
    return Report(study_dir, ranking, test, todo, seconds, per_trial)


def _rank(
    rows: StudyRows, top: int, study_dir: Path
) -> tuple[list[str], pd.DataFrame, pd.DataFrame, int, pd.DataFrame, pd.DataFrame]:
    """The searched axes, the per-trial table, the ranking by config, the completed
    configs, the ``top`` winners per criterion and the trials to test (every completed
    repeat of every winning config; none of the others).

    Raises:
        InputError: no completed trial, or ``top`` out of range.
    """
    if not (rows.trials["status"] == COMPLETED).any():
        counts = rows.trials["status"].value_counts().to_dict()
        have = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
        raise InputError(f"{study_dir}: no completed trial to rank ({have})")
    names = rows.axes
    per_trial = rows.per_trial()
    ranking = tables.by_config(per_trial, names)
    completed = int((ranking["status"] == COMPLETED).sum())
    if not 1 <= top <= completed:
        raise InputError(
            f"--top: {top} is not allowed; expected 1 to {completed} (completed configs)"
        )
    winners = tables.pick_winners(ranking, top, names)
    tested = per_trial[
        per_trial["config"].isin(winners["key"]) & (per_trial["status"] == COMPLETED)
    ]
    return names, per_trial, ranking, completed, winners, tested


def _timeline(rows: StudyRows, layout: StudyLayout) -> Timing | None:
    """Where the time went (analysis/timing.py), drawn; None when no run has ended."""
    spent = timing(rows.runs)
    if spent is not None:
        from vaegrid.report import figures  # matplotlib loads only when pictures are drawn

        done = dict(zip(rows.trials["key"], rows.trials["epochs_done"].astype(int), strict=True))
        figures.timeline(spent, done, layout.figure("timeline"))
    return spent


def _teller(say: Callable[[str], None] | None) -> Callable[[str], None]:
    """``say``, or nothing; either way a signal a library swallowed on its way (in a
    __del__, say) stops the report at its next line."""

    def tell(line: str) -> None:
        signals.check()
        if say is not None:
            say(line)

    return tell


def _test_k(asked: int | None, rows: StudyRows) -> int:
    """The k of the test NLL: the one asked for, else the study's [rank] nll_samples, else
    DEFAULT_TEST_K.

    Raises:
        InputError: outside 1 to NLL_SAMPLES_MAX.
    """
    k = asked if asked is not None else rows.fingerprint.nll_samples or DEFAULT_TEST_K
    if not 1 <= k <= NLL_SAMPLES_MAX:
        raise InputError(
            f"--nll-samples: {k} is not allowed; expected an integer from 1 to {NLL_SAMPLES_MAX}"
        )
    return k


def _test_winners(
    db: Database, loaded: Winners, todo: list[str], k: int, tell: Callable[[str], None]
) -> pd.DataFrame:
    """Evaluate and store each of ``todo`` on the test split at ``k``, saying where it is:
    a line as each trial starts, and every ``PROGRESS_S`` seconds within one (the share of
    the work is counted by the cost model, the time left from this report's own rate); the
    test metrics join Optuna's trials as user attributes. Returns every stored test row."""
    store = Store(db)
    try:
        _test_each(store, loaded, todo, k, tell)
        store.align_optuna()
        return store.frame("vg_test")
    finally:
        store.close()


def _test_each(
    store: Store, loaded: Winners, todo: list[str], k: int, tell: Callable[[str], None]
) -> None:
    from vaegrid.cost import CostModel, Forecast

    first = next(iter(loaded.configs.values()))
    cost = CostModel(first.data, 0, Images(shape=loaded.shape))
    images = len(loaded.test_x)
    work = {key: cost.test_work(loaded.configs[key], k, images) for key in todo}
    total, done, began = sum(work.values()), 0.0, time.monotonic()
    last = [began]

    def where(i: int, key: str, images_done: int) -> str:
        now = done + work[key] * images_done / images
        spent = time.monotonic() - began
        left = spent / now * (total - now) if now > 0 else 0.0
        forecast = Forecast(now / total, left, measured=now > 0 and spent > 0)
        return f"report: testing {i}/{len(todo)}: trial {key} at k = {k}, {forecast.words()}"

    for i, key in enumerate(todo, 1):
        tell(where(i, key, 0))

        def tick(images_done: int, i: int = i, key: str = key) -> None:
            signals.check()  # every pass: a long evaluation stops within one
            if time.monotonic() - last[0] >= PROGRESS_S and images_done < images:
                last[0] = time.monotonic()
                tell(where(i, key, images_done))

        store.save_test(loaded.test_metrics(key, k, tick))
        done += work[key]
    tell(f"report: tested {len(todo)} trials at k = {k} in {time.monotonic() - began:.1f} s")


def _early(rows: StudyRows) -> list[str] | None:
    """A halving study's section of report.md; None for a study without ``[halving]``."""
    spec = rows.fingerprint.halving
    if spec is None:
        return None
    assert rows.standings is not None  # read_study reads them for every halving study
    epochs = max(c.epochs for c in rows.configs.values())  # one value with [halving]
    return halving_lines(spec, epochs, rows.standings, rows.trials, rows.stops, rows.configs)


def _heatmap_axes(
    ranking: pd.DataFrame, names: list[str], found: dict[str, float] | str
) -> tuple[str, str] | None:
    """The two axes of the heatmap: the two that mattered most, else the first two varying."""
    axes = tables.varying(ranking, names)
    if len(axes) < 2:
        return None
    if isinstance(found, dict):
        axes = sorted(axes, key=lambda n: -found.get(n, 0.0))
    return axes[0], axes[1]


def _write_tables(
    layout: StudyLayout,
    rows: StudyRows,
    ranking: pd.DataFrame,
    per_trial: pd.DataFrame,
    test: pd.DataFrame,
) -> None:
    save_with(layout.table("ranking"), ranking.to_csv, index=False)
    save_with(layout.table("trials"), per_trial.to_csv, index=False)
    long = tables.long_epochs(rows.epochs, rows.trials, rows.axes)
    save_with(layout.table("epochs"), long.to_csv, index=False)
    save_with(layout.table("test"), test.to_csv, index=False)


def _draw(
    layout: StudyLayout,
    epochs: pd.DataFrame,
    per_trial: pd.DataFrame,
    ranking: pd.DataFrame,
    test: pd.DataFrame,
    loaded: Winners,
    names: list[str],
    found: dict[str, float] | str,
    pair: tuple[str, str] | None,
) -> None:
    from vaegrid.report import figures, mattered  # matplotlib loads only to draw
    from vaegrid.report.curves import curves

    ensure_dir(layout.figures)
    metric = tables.ranked_by(ranking)
    order = sorted(found, key=lambda n: -found[n]) if isinstance(found, dict) else []
    curves(epochs, per_trial, test, layout.figure("curves"), names, order)
    axes = [AXIS[n] for n in tables.varying(ranking, names)]
    if axes:
        mattered.parallel(ranking, axes, layout.figure("parallel"), metric)
    if pair is not None:
        mattered.heatmap(ranking, pair[0], pair[1], axes, layout.figure("heatmap"), metric)
    if isinstance(found, dict):
        where = layout.figure("importance")
        mattered.importance(found, [AXIS[n] for n in found], where, metric)
    for key in _pictured(test, loaded):
        signals.check()
        model = loaded.models[key]
        shape, where = loaded.shape, layout.figure(f"{key}_reconstructions")
        figures.reconstructions(model, loaded.test_x, shape, where)
        where = layout.figure(f"{key}_samples")
        figures.samples(model, loaded.generator(key, "samples"), shape, where)


def _pictured(test: pd.DataFrame, loaded: Winners) -> list[str]:
    """The trial whose digits show each winning config: its repeat 0 when tested (its key
    is the config's), else its first tested repeat."""
    out = []
    for config in dict.fromkeys(test["key"]):
        keys = sorted((c.repeat, k) for k, c in loaded.configs.items() if c.config_id == config)
        out.append(keys[0][1])
    return out
