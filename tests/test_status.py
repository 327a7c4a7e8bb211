"""The state machine: one enumeration, one transition table, one writer that enforces it."""

from __future__ import annotations

import ast
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import synced_study_db

from vaegrid.db.schema import TrialRow
from vaegrid.db.store import Store
from vaegrid.db.trials import move
from vaegrid.status import (
    COMPLETED,
    FAILED,
    FINAL,
    RUNNING,
    TRANSITIONS,
    IllegalTransition,
    Status,
    summary,
)
from vaegrid.study.core import Study, TrialConfig, expand
from vaegrid.study.load import load_study

PACKAGE = Path(__file__).resolve().parent.parent / "vaegrid"


@pytest.mark.parametrize(("old", "new"), list(itertools.product(Status, Status)))
def test_every_move_is_allowed_exactly_when_the_table_holds_it(old: Status, new: Status) -> None:
    row = TrialRow(key="0123456789ab", status=old.value)
    if new in TRANSITIONS[old]:
        move(row, new, "why")
        assert row.status == new.value and row.cause == "why"
    else:
        with pytest.raises(IllegalTransition, match=f"{old} -> {new}"):
            move(row, new)
        assert row.status == old.value


def test_final_statuses_lead_nowhere_but_a_retry_or_a_reopened_rung() -> None:
    for status in FINAL:
        assert TRANSITIONS[status] <= {RUNNING, Status.PAUSED, Status.STOPPED}
    assert not TRANSITIONS[COMPLETED] and not TRANSITIONS[Status.DIVERGED]


def _status_writes(tree: ast.AST) -> list[int]:
    """Lines that assign to a ``.status`` attribute (``x.status = ...``, tuple targets too)."""
    lines = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            elements = target.elts if isinstance(target, ast.Tuple) else [target]
            lines += [
                e.lineno for e in elements if isinstance(e, ast.Attribute) and e.attr == "status"
            ]
    return lines


def test_only_the_database_layer_writes_a_status() -> None:
    writers = {}
    for path in PACKAGE.rglob("*.py"):
        lines = _status_writes(ast.parse(path.read_text()))
        if lines:
            writers[str(path.relative_to(PACKAGE))] = lines
    # db/trials.py: move() for trials, and the runs' own end (vg_run.status); and one line
    # about no trial: run/jobqueue.py marks a Dask batch job that never ran as failed
    jobs = writers.pop("run/jobqueue.py", [])
    source = (PACKAGE / "run" / "jobqueue.py").read_text().splitlines()
    assert [source[n - 1].strip().split("  #")[0] for n in jobs] == ["job.status = Status.failed"]
    assert set(writers) == {"db/trials.py"}, writers
    source = (PACKAGE / "db" / "trials.py").read_text().splitlines()
    trial_writes = [n for n in writers["db/trials.py"] if "row.status" in source[n - 1]]
    assert len(trial_writes) == 1  # the one line in move()


@pytest.fixture
def started(
    write_study: Callable[..., Path], tmp_path: Path
) -> Iterator[tuple[Store, Study, TrialConfig]]:
    """A synced tiny study whose first trial the driver has just started."""
    path = write_study()
    db = synced_study_db(path, tmp_path / "r" / "tiny")
    study = load_study(path)
    cfg = expand(study)[0]
    store = Store(db)
    store.start_trial(study, cfg)
    yield store, study, cfg
    store.close()


def test_the_store_refuses_an_illegal_move_and_keeps_a_committed_end(
    started: tuple[Store, Study, TrialConfig],
) -> None:
    from vaegrid.db.trials import move

    store, study, cfg = started
    # the same start again (a retry whose first answer a dropped connection lost) is that
    # start, not a second one: the trial keeps its Optuna trial
    trial_id = store.start_trial(study, cfg)
    assert store.start_trial(study, cfg) == trial_id
    with pytest.raises(IllegalTransition, match="running -> pending"), store.session() as s:
        move(store._row(s, cfg.key), Status.PENDING)
    assert store.status_of(cfg.key) == Status.RUNNING  # the refused move left nothing
    store.mark([cfg.key], FAILED, "worker died")
    store.fail(cfg.key, "Traceback...\nValueError: late")  # not running: keeps its end
    assert store.status_of(cfg.key) == FAILED
    assert store.trials()[0].status in Status


def test_a_status_vaegrid_never_writes_is_refused_in_one_line(
    write_study,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    import sqlite3

    from vaegrid.errors import InputError

    db = synced_study_db(write_study(), tmp_path / "r" / "tiny")
    with sqlite3.connect(db) as con:
        con.execute("UPDATE vg_trial SET status = 'finished' WHERE rowid = 1")
    store = Store.reader(db)
    try:
        with pytest.raises(InputError, match=r"status 'finished' is not one of vaegrid's"):
            store.trials()
    finally:
        store.close()


def test_summary_counts_final_waiting_and_paused_from_the_sets() -> None:
    statuses = [COMPLETED, Status.DIVERGED, FAILED, Status.STOPPED, RUNNING]
    statuses += [Status.PENDING, Status.INTERRUPTED, Status.PAUSED]
    assert summary(statuses) == (
        "4/8 done (1 completed, 1 diverged, 1 failed, 1 stopped), 1 running, 2 waiting, "
        "1 paused at a rung"
    )


def test_a_trial_whose_workers_keep_dying_fails_even_if_one_recorded_its_stop(
    started: tuple[Store, Study, TrialConfig],
) -> None:
    store, _, cfg = started
    store.mark([cfg.key], Status.INTERRUPTED)  # its worker recorded its stop, then died
    assert store.give_up(cfg.key, "worker process died 2 times") == FAILED
    assert store.trials()[0].status == FAILED
    assert store.give_up(cfg.key, "again") == FAILED  # final: nothing moves


def test_a_run_ends_once_under_the_table_of_moves(
    started: tuple[Store, Study, TrialConfig],
) -> None:
    """vg_run.status follows the trials' table: a run opens running, ends as a run may
    (TRANSITIONS[RUNNING]), once; the first end recorded is kept."""
    from sqlalchemy import select

    from vaegrid.db.schema import RunRow
    from vaegrid.db.trials import end_run

    store, _study, cfg = started
    run_id = store.begin_run(cfg.key, "cpu", 1, "cpu", "here", {})
    assert run_id is not None
    store.interrupt_running()  # a new driver's sync ends it first
    with store.session() as s:
        run = s.get(RunRow, run_id)
        assert run is not None and run.status == "interrupted" and run.ended is not None
        ended = run.ended
        end_run(run, Status.COMPLETED)  # a late worker's end: the first end stands
        assert (run.status, run.ended) == ("interrupted", ended)
        fresh = RunRow(key=cfg.key, device="cpu", worker=2, started=ended, status="running")
        s.add(fresh)
        with pytest.raises(IllegalTransition, match=r"\(run None\): running -> pending"):
            end_run(fresh, Status.PENDING)
        s.expunge(fresh)
    with store.session() as s:
        assert [r.status for r in s.scalars(select(RunRow))] == ["interrupted"]


def test_a_run_that_was_ended_never_ends_its_trial_that_another_run_holds(
    started: tuple[Store, Study, TrialConfig],
) -> None:
    """An orphan worker (its driver died, a new one interrupted its run and started the
    trial again) comes back from a long wait and records its end: the trial, run by the
    new worker now, keeps running; the new run's end is the one that counts."""
    from vaegrid.train.records import TrialResult

    store, study, cfg = started
    orphan = store.begin_run(cfg.key, "cpu", 1, "cpu", "old", {})
    store.interrupt_running()  # the new driver's sync
    store.start_trial(study, cfg)
    current = store.begin_run(cfg.key, "cpu", 2, "cpu", "new", {})
    assert orphan is not None and current is not None
    late = store.finish_run(cfg.key, orphan, TrialResult(Status.INTERRUPTED, []), None)
    assert late == Status.RUNNING and store.status_of(cfg.key) == Status.RUNNING
    assert store.finish_run(cfg.key, current, TrialResult(Status.INTERRUPTED, []), None) == (
        Status.INTERRUPTED
    )


_SQL_STATUS = re.compile(r"(?is)\b(insert\s+into|update)\b.*\bstatus\b")


def _status_values(tree: ast.AST) -> list[str]:
    """The enclosing function ("<module>" outside any) of each status put into a statement:
    a dict keyed by ``"status"`` or by a ``status`` column, a ``status=`` keyword, or SQL
    text that inserts or updates a status (docstrings aside); one entry per place."""
    docstrings = {
        id(body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        and (body := node.body)
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
    }

    def keyed(k: ast.expr | None) -> bool:
        return (isinstance(k, ast.Constant) and k.value == "status") or (
            isinstance(k, ast.Attribute) and k.attr == "status"
        )

    lines = [
        node.lineno
        for node in ast.walk(tree)
        if (isinstance(node, ast.Dict) and any(keyed(k) for k in node.keys))
        or (isinstance(node, ast.Call) and any(k.arg == "status" for k in node.keywords))
        or (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings and _SQL_STATUS.search(node.value))
    ]  # fmt: skip
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    out = []
    for line in lines:
        inside = [f for f in functions if f.lineno <= line <= (f.end_lineno or f.lineno)]
        out.append(max(inside, key=lambda f: f.lineno).name if inside else "<module>")
    return out


def test_a_status_goes_into_a_statement_only_through_the_table_of_moves() -> None:
    """Core statements write a trial's or a run's status with the values ``moved`` and
    ``ended`` give, after the same check as ``move`` and ``end_run``. In every module that
    imports SQLAlchemy, no other place puts a status into a statement but a new trial's
    row (pending), a new run's (running) and Optuna's "status" attribute of a failed
    trial; a second place in one of those functions counts too."""
    found: Counter[tuple[str, str]] = Counter()
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        if "sqlalchemy" in source:
            name = str(path.relative_to(PACKAGE))
            found.update((name, fn) for fn in _status_values(ast.parse(source)))
    assert found == {
        ("db/trials.py", "moved"): 1,
        ("db/trials.py", "ended"): 1,
        ("db/trials.py", "begin_run"): 1,  # a new run: running
        ("db/sync.py", "_sync"): 1,  # a new trial: pending
        ("db/ledger.py", "finish_optuna"): 1,  # a user attribute of the Optuna trial
    }, found
