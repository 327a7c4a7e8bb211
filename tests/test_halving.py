"""Synchronous halving: the decision rule, and sweeps that stop, resume and grow."""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import random
import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from conftest import CHECKPOINT, WEIGHTS, Crash, InlineExecutor, run_inline

from vaegrid.cli import main
from vaegrid.db.store import Store
from vaegrid.halving import Standing, n_survivors, plan, rank_rung
from vaegrid.study.core import HalvingSpec, TrialConfig, expand
from vaegrid.study.load import load_study

INF, NAN = math.inf, math.nan

# -- the rule, on hand-made rung tables ---------------------------------------------------------


def survivors(values: dict[str, float], keep: float) -> list[str]:
    """Who goes on from one complete rung table, as plan() decides it."""
    standings = {k: Standing(k, 1, False, {1: v}) for k, v in values.items()}
    return list(plan(standings, HalvingSpec((1,), keep), 2).decided[0].survivors)


def test_survivors_are_ceil_of_keep_times_n_with_keep_read_as_written() -> None:
    assert n_survivors(54, 0.3333) == 18  # the seed study's first rung: exactly the lr 3e-2 third
    assert n_survivors(18, 0.3333) == 6
    assert n_survivors(30, 0.1) == 3  # float arithmetic says 3.0000000000000004, so ceil 4
    assert n_survivors(7, 0.5) == 4  # rounded up: a rung never keeps less than keep
    assert n_survivors(54, 1 / 3) == 18
    assert n_survivors(0, 0.5) == 0


def test_fewer_trials_than_one_over_keep_still_send_the_best_one_on() -> None:
    assert n_survivors(3, 0.25) == 1 and n_survivors(1, 0.01) == 1
    assert survivors({"b": 2.0, "a": 3.0, "c": 1.0}, 0.25) == ["c"]
    assert survivors({"only": 500.0}, 0.1) == ["only"]


def test_ties_are_broken_by_key_whatever_order_the_table_comes_in() -> None:
    table = {"d": 1.0, "b": 2.0, "c": 1.0, "a": 2.0, "e": 0.5}
    expected = ["e", "c", "d", "a", "b"]
    items = list(table.items())
    for seed in range(20):
        random.Random(seed).shuffle(items)
        assert rank_rung(dict(items)) == expected
    assert survivors(table, 0.5) == ["e", "c", "d"]  # ceil(2.5): the tie at 1.0 is split by key
    assert survivors({"y": 7.0, "x": 7.0}, 0.5) == ["x"]


def test_diverged_and_non_finite_values_count_as_the_worst() -> None:
    table = {"nan": NAN, "neg": -INF, "inf": INF, "ok": 300.0, "good": 100.0}
    assert rank_rung(table) == ["good", "ok", "inf", "nan", "neg"]  # the worst, by key
    assert survivors(table, 0.5) == ["good", "ok", "inf"]  # ceil(2.5) = 3: "inf" cannot go on


SPEC = HalvingSpec((1, 3), 0.5, "val_elbo")


def st(key: str, done: int, values: dict[int, float], ended: bool = False) -> Standing:
    return Standing(key, done, ended, values, completed=done == 5)


def test_no_trial_goes_past_a_rung_until_every_trial_of_it_is_in() -> None:
    standings = {
        "a": st("a", 1, {1: 100.0}),
        "b": st("b", 1, {1: 200.0}),
        "c": st("c", 0, {}),  # not in yet
        "d": st("d", 0, {}, ended=True),  # diverged in epoch 1: in, as the worst
    }
    found = plan(standings, SPEC, epochs=5)
    assert found.decided == () and found.open_rung == 1
    assert found.targets == {"c": 1} and found.stopped == {}  # a and b wait at rung 1
    standings["c"] = st("c", 1, {1: 150.0})
    found = plan(standings, SPEC, epochs=5)
    (rung1,) = found.decided
    assert rung1.ranked == ("a", "c", "b", "d") and rung1.survivors == ("a", "c")
    assert found.open_rung == 3 and found.targets == {"a": 3, "c": 3}
    assert found.stopped == {"b": 1}  # d diverged: it ended, it is not "stopped"


def test_ended_survivors_do_not_go_on_and_the_next_rung_is_the_rest() -> None:
    standings = {
        "a": st("a", 3, {1: 100.0, 3: 90.0}),
        "b": st("b", 0, {}, ended=True),
        "c": st("c", 0, {}, ended=True),
        "d": st("d", 0, {}, ended=True),
    }
    found = plan(standings, SPEC, epochs=5)
    rung1, rung3 = found.decided
    assert rung1.survivors == ("a", "b")  # ceil(0.5 x 4) = 2, b is a survivor that ended
    assert rung3.ranked == ("a",)  # only a went on to rung 3: it is compared alone
    assert found.open_rung is None and found.targets == {"a": 5} and found.stopped == {}
    # a trial that diverged after passing rung 1 is the worst of rung 3
    standings = {
        "a": st("a", 3, {1: 100.0, 3: 90.0}),
        "b": st("b", 2, {1: 110.0}, ended=True),
        "c": st("c", 1, {1: 120.0}),
        "d": st("d", 1, {1: 130.0}),
    }
    found = plan(standings, SPEC, epochs=5)
    assert [r.ranked for r in found.decided] == [("a", "b", "c", "d"), ("a", "b")]
    assert found.stopped == {"c": 1, "d": 1} and found.targets == {"a": 5}


def test_a_grown_grid_reopens_the_first_rung_and_every_later_trial_waits() -> None:
    old = {
        "a": st("a", 5, {1: 100.0, 3: 80.0}),  # completed
        "b": st("b", 3, {1: 110.0, 3: 95.0}),  # stopped at rung 3
        "c": st("c", 1, {1: 120.0}),  # stopped at rung 1
        "d": st("d", 1, {1: 130.0}),  # stopped at rung 1
    }
    assert plan(old, SPEC, 5).stopped == {"b": 3, "c": 1, "d": 1}
    grown = {
        **old,
        "e": st("e", 0, {}),
        "f": st("f", 0, {}),
        "g": st("g", 0, {}),
        "h": st("h", 0, {}),
    }
    found = plan(grown, SPEC, 5)
    assert found.open_rung == 1 and found.targets == {k: 1 for k in "efgh"}
    assert found.decided == () and found.stopped == {}  # nothing is re-decided yet
    # the new trials are in: e and f are better than everyone, g and h diverged
    grown.update(e=st("e", 1, {1: 50.0}), f=st("f", 1, {1: 60.0}))
    grown.update(g=st("g", 0, {}, ended=True), h=st("h", 0, {}, ended=True))
    found = plan(grown, SPEC, 5)
    assert found.decided[0].survivors == ("e", "f", "a", "b")  # ceil(0.5 x 8) = 4
    # c and d stay stopped; e and f catch up to rung 3 while b waits there, a completed
    assert found.stopped == {"c": 1, "d": 1} and found.targets == {"e": 3, "f": 3}
    grown.update(e=st("e", 3, {1: 50.0, 3: 70.0}), f=st("f", 3, {1: 60.0, 3: 99.0}))
    found = plan(grown, SPEC, 5)
    assert found.decided[1].survivors == ("e", "a")
    assert found.stopped == {"c": 1, "d": 1, "b": 3, "f": 3} and found.targets == {"e": 5}
    # a trial that the grown grid keeps after all is sent on: c reopens when 4 worse ones join
    worse = {k: st(k, 0, {}, ended=True) for k in "wxyz"}
    found = plan({**old, **worse}, SPEC, 5)
    assert found.decided[0].survivors == ("a", "b", "c", "d") and found.targets == {"c": 3, "d": 3}


def test_the_plan_is_the_same_whatever_order_the_standings_come_in() -> None:
    values = [5, 3, 3, 9, 1, 7, 3, 2]
    standings = [st(k, 1, {1: float(v)}) for k, v in zip("abcdefgh", values, strict=True)]
    first = plan({s.key: s for s in standings}, SPEC, 5)
    for seed in range(10):
        random.Random(seed).shuffle(standings)
        assert plan({s.key: s for s in standings}, SPEC, 5) == first


# -- sweeps, trials run in this process ----------------------------------------------------------

HALVING = """
name = "{name}"
[data]
fractions = [0.6, 0.2, 0.2]
[train]
epochs = 3
batch_size = 50
[grid]
hidden = [32]
latent = [4, 8]
lr = {lr}
clip = [1.0, 0.5]
{halving}
"""
RUNGS = "[halving]\nrungs = [1, 2]\nkeep = 0.5"
LR = "[1e-2, 1e-4, 1e3]"  # 1e3 diverges in epoch 1, 1e-4 is far behind 1e-2


def study_text(lr: str = LR, halving_table: str = RUNGS, name: str = "h") -> str:
    return HALVING.format(name=name, lr=lr, halving=halving_table)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a CPU worker runs
    yield
    torch.set_num_threads(threads)


sweep = run_inline


def tables(db: Path, name: str = "h") -> dict[str, Any]:
    """Everything a sweep decided and computed, by key (no times, no ids)."""
    store = Store.reader(db)
    try:
        trials = store.frame("vg_trial").sort_values("key")
        epochs = store.frame("vg_epoch").sort_values(["key", "epoch", "split"])
        stops = store.stopped_rungs()
    finally:
        store.close()
    ledger = sorted(
        (t.user_attrs["key"], t.state.name, t.value, tuple(sorted(t.intermediate_values.items())))
        for t in optuna.load_study(study_name=name, storage=f"sqlite:///{db}").trials
    )
    return {
        "trials": list(trials[["key", "status", "epochs_done", "cause"]].itertuples(False, None)),
        "epochs": list(
            epochs[["key", "epoch", "split", "elbo", "recon", "kl"]].itertuples(False, None)
        ),
        "stops": stops,
        "optuna": ledger,
    }


def stop_ats(executor: InlineExecutor) -> list[tuple[str, int | None]]:
    return [(TrialConfig.from_json(t.config).key, t.stop_at) for _, t in executor.submitted]


@dataclass(frozen=True)
class Whole:
    """The halving study of :func:`study_text`, swept once, uninterrupted."""

    folder: Path  # results/h
    tables: dict[str, Any]
    sent: list[tuple[str, int | None]]  # (key, stop_at) of every task, in order
    said: str  # what the sweep printed


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Whole:
    root = tmp_path_factory.mktemp("whole")
    (root / "h.toml").write_text(study_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_thread does: before it, for the whole module
    out = io.StringIO()
    try:
        executor = InlineExecutor()
        with contextlib.redirect_stdout(out):
            assert sweep(root / "h.toml", root / "r", mnist_root, executor) == 0
    finally:
        torch.set_num_threads(threads)
    folder = root / "r" / "h"
    return Whole(folder, tables(folder / "study.db"), stop_ats(executor), out.getvalue())


def test_a_paused_trial_is_said_to_pause_at_its_rung(whole: Whole) -> None:
    """The line used to name the epoch the plan let it run to next (the last, or None)."""
    said = re.findall(r"paused at epoch (\S+)", whole.said)
    assert said and set(said) <= {"1", "2"}, said  # RUNGS


def test_a_halving_sweep_stops_losers_and_its_survivors_compute_the_full_grids_numbers(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path, whole: Whole
) -> None:
    full = write_study(study_text(halving_table="", name="full"), file="full.toml")
    assert sweep(full, tmp_path / "r", mnist_root) == 0
    ref = tables(tmp_path / "r" / "full" / "study.db", "full")
    study = write_study(study_text(), file="h.toml")
    got = whole.tables
    # the decisions, derived by hand from the full grid's own validation elbos
    val = {(k, e): elbo for k, e, split, elbo, *_ in ref["epochs"] if split == "val"}
    keys = [t.key for t in expand(load_study(study))]
    rung1 = {k: val.get((k, 1), INF) for k in keys}
    go1 = survivors(rung1, 0.5)
    rung2 = {k: val.get((k, 2), INF) for k in go1 if (k, 1) in val}
    go2 = survivors(rung2, 0.5)
    status = {k: s for k, s, *_ in got["trials"]}
    assert {k for k, s in status.items() if s == "completed"} == set(go2)
    assert got["stops"] == {**{k: 1 for k in rung1 if k not in go1 and (k, 1) in val},
                            **{k: 2 for k in rung2 if k not in go2}}  # fmt: skip
    assert {k for k, s in status.items() if s == "diverged"} == {
        k for k in keys if (k, 1) not in val
    }
    assert sorted(status.values()).count("stopped") == len(got["stops"]) >= 3
    # every number computed is the full grid's, key by key; survivors computed all of theirs
    assert set(got["epochs"]) < set(ref["epochs"])
    for key in go2:
        assert [r for r in got["epochs"] if r[0] == key] == [
            r for r in ref["epochs"] if r[0] == key
        ]
    for key, rung in got["stops"].items():
        assert {r[1] for r in got["epochs"] if r[0] == key} == set(range(1, rung + 1))
    # no trial was sent past a rung before the whole rung was in
    order = [math.inf if s is None else s for _, s in whole.sent]
    assert order == sorted(order) and order.count(1) == len(keys)
    # Optuna: stopped trials are PRUNED with their intermediate values, their last as value
    ledger = {k: (state, value, dict(inter)) for k, state, value, inter in got["optuna"]}
    assert len(ledger) == len(got["optuna"]) == len(keys)  # one Optuna trial per key
    for key, rung in got["stops"].items():
        state, value, inter = ledger[key]
        assert state == "PRUNED" and inter == {e: val[(key, e)] for e in range(1, rung + 1)}
        assert value == val[(key, rung)]
    assert {ledger[k][0] for k in go2} == {"COMPLETE"}
    # a stopped trial keeps its checkpoint (a grown grid may bring it back), no weights
    folder = whole.folder / "trials"
    for key in got["stops"]:
        assert (folder / key / CHECKPOINT).exists() and not (folder / key / WEIGHTS).exists()
    for key in go2:
        assert (folder / key / WEIGHTS).exists() and not (folder / key / CHECKPOINT).exists()


def test_status_counts_stopped_and_paused_trials(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = write_study(study_text(), file="h.toml")
    assert sweep(study, tmp_path / "r", mnist_root, StopAfter(10)) == 130  # Ctrl-C
    capsys.readouterr()
    assert main(["status", str(tmp_path / "r" / "h")]) == 0
    line = capsys.readouterr().out
    # 10 trials ran to rung 1 (the largest first: 3 diverged), 2 have yet to: rung 1 is
    # undecided
    assert line == (
        "h: 3/12 done (0 completed, 3 diverged, 0 failed), 0 running, 2 waiting, "
        "7 paused at a rung; 41% of the work done; no driver running\n"
    )
    assert sweep(study, tmp_path / "r", mnist_root) == 0
    capsys.readouterr()
    assert main(["status", str(tmp_path / "r" / "h")]) == 0
    assert capsys.readouterr().out.startswith(
        "h: 12/12 done (3 completed, 4 diverged, 0 failed, 5 stopped), 0 running, 0 waiting;"
    )


def test_survivors_do_not_depend_on_the_order_trials_run_in_or_the_number_of_slots(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path, whole: Whole
) -> None:
    study = write_study(study_text(), file="h.toml")
    # the grid's values reversed: the same keys, dispatched in the opposite order, 2 slots
    text = (
        study_text(lr="[1e3, 1e-4, 1e-2]")
        .replace("[4, 8]", "[8, 4]")
        .replace("[1.0, 0.5]", "[0.5, 1.0]")
    )
    reversed_study = write_study(text, file="r.toml")
    executor = InlineExecutor()
    assert sweep(reversed_study, tmp_path / "b", mnist_root, executor, slots=2) == 0
    assert stop_ats(executor)[0][0] != expand(load_study(study))[0].key  # another order indeed
    assert tables(tmp_path / "b" / "h" / "study.db") == whole.tables


class StopAfter(InlineExecutor):
    """Runs ``n`` trials, then is stopped as by Ctrl-C before the next one starts."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def submit(self, slot: Any, fn: Callable[[Any], Any], arg: Any) -> Any:
        if len(self.submitted) >= self.n:
            raise KeyboardInterrupt
        return super().submit(slot, fn, arg)


def test_a_kill_between_a_rungs_last_result_and_its_decision_resumes_to_the_same_survivors(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    whole: Whole,
) -> None:
    study = write_study(study_text(), file="h.toml")
    want = whole.tables
    # killed as the driver records rung 1's decision: every rung-1 result is committed,
    # no decision is; then killed as the stop's Optuna write is made, in the same
    # transaction as its vaegrid write: neither is committed
    for target, where in ((Store, "stop"), (Store, "finish_optuna")):
        real, kept = getattr(target, where), inspect.getattr_static(target, where)

        def crash(self: Store, *args: Any, real: Any = real, where: str = where) -> Any:
            if where == "stop" or args[2] == "stopped":  # finish_optuna(s, key, status, ...)
                raise Crash
            return real(*args)  # finish_optuna is a static method

        monkeypatch.setattr(target, where, crash)
        results = tmp_path / where
        with pytest.raises(Crash):
            sweep(study, results, mnist_root)
        monkeypatch.setattr(target, where, kept)  # as it was (a static method stays one)
        db = results / "h" / "study.db"
        store = Store.reader(db)
        try:
            statuses = {t.key: t.status for t in store.trials()}
        finally:
            store.close()
        assert sorted(set(statuses.values())) == ["diverged", "paused"], where
        executor = InlineExecutor()
        assert sweep(study, results, mnist_root, executor) == 0
        assert tables(db) == want, where
        # the resumed driver took the decision first: no rung-1 trial ran again
        assert all(s != 1 for _, s in stop_ats(executor)), where


def test_a_grown_grid_catches_up_to_rung_1_before_anyone_goes_past_it(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path
) -> None:
    small = write_study(study_text(lr="[1e-3, 1e-4]"), file="small.toml")
    # stopped (as by Ctrl-C) once rung 1 is decided and one survivor is paused at rung 2
    assert sweep(small, tmp_path / "r", mnist_root, StopAfter(9)) == 130
    db = tmp_path / "r" / "h" / "study.db"
    store = Store.reader(db)
    try:
        before = {t.key: (t.status, t.epochs_done) for t in store.trials()}
    finally:
        store.close()
    (ahead,) = [k for k, v in before.items() if v == ("paused", 2)]
    # 8 trials with larger learning rates join, better than every old one at epoch 1
    grown = write_study(study_text(lr="[1e-3, 1e-4, 1e-2, 3e-2]"), file="grown.toml")
    new = {t.key for t in expand(load_study(grown))} - set(before)
    executor = InlineExecutor()
    assert sweep(grown, tmp_path / "r", mnist_root, executor) == 0
    sent = stop_ats(executor)
    # every new trial ran to rung 1 before any trial went past it
    first_past = next(i for i, (_, s) in enumerate(sent) if s != 1)
    assert {k for k, _ in sent[:first_past]} == new and len(new) == 8
    # and the end is what a fresh run of the grown grid gives, decision by decision
    assert sweep(grown, tmp_path / "fresh", mnist_root) == 0
    got, fresh = tables(db), tables(tmp_path / "fresh" / "h" / "study.db")
    # the same statuses, causes and rungs; the paused trial may have run an epoch that a
    # fresh run never does (it waited at rung 2 when the grid grew): the same numbers
    assert [(k, s, c) for k, s, _, c in got["trials"]] == [
        (k, s, c) for k, s, _, c in fresh["trials"]
    ]
    assert got["stops"] == fresh["stops"] and set(fresh["epochs"]) <= set(got["epochs"])
    # the trial that had gone on to rung 2 lost rung 1 once the grid grew: stopped there
    assert got["stops"][ahead] == 1 and dict((k, d) for k, _, d, _ in got["trials"])[ahead] == 2
    reopened = {k for k, (s, _) in before.items() if s == "stopped"} - set(got["stops"])
    ledger = [k for k, *_ in got["optuna"]]
    for key in got["stops"]:
        assert ledger.count(key) == 1 + (key in reopened)


def test_a_trial_completed_before_the_grid_grew_stays_completed_and_stopped_ones_reopen(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path
) -> None:
    small = write_study(study_text(lr="[1e-2]"), file="small.toml")
    assert sweep(small, tmp_path / "r", mnist_root) == 0
    db = tmp_path / "r" / "h" / "study.db"
    first = tables(db)
    assert [s for _, s, *_ in first["trials"]].count("completed") == 1
    assert sorted(first["stops"].values()) == [1, 1, 2]
    # 4 trials that diverge join: rung 1 now keeps ceil(0.5 x 8) = 4, both stopped at rung 1
    grown = write_study(study_text(lr="[1e-2, 1e3]"), file="grown.toml")
    assert sweep(grown, tmp_path / "r", mnist_root) == 0
    assert sweep(grown, tmp_path / "fresh", mnist_root) == 0
    got, fresh = tables(db), tables(tmp_path / "fresh" / "h" / "study.db")
    was_completed = next(k for k, s, *_ in first["trials"] if s == "completed")
    status = {k: s for k, s, *_ in got["trials"]}
    fresh_status = {k: s for k, s, *_ in fresh["trials"]}
    assert status[was_completed] == "completed"  # never un-completed
    assert {k: s for k, s in status.items() if k != was_completed} == {
        k: s for k, s in fresh_status.items() if k != was_completed
    }
    reopened = [k for k, r in first["stops"].items() if r == 1]
    for key in reopened:  # ran on from its kept checkpoint: the same numbers as fresh
        assert [r for r in got["epochs"] if r[0] == key] == [
            r for r in fresh["epochs"] if r[0] == key
        ]
        states = [s for k, s, *_ in got["optuna"] if k == key]
        assert "PRUNED" in states and len(states) == 2  # Optuna never revives a pruned trial


def test_a_failed_trial_is_the_worst_of_its_rung_until_retried_then_all_is_decided_again(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path
) -> None:
    from conftest import CONFIG

    study = write_study(study_text(), file="h.toml")
    a, b = [t for t in expand(load_study(study)) if t.lr == 1e-2][:2]
    broken = tmp_path / "r" / "h" / "trials" / a.key
    broken.mkdir(parents=True)
    (broken / CONFIG).write_text(b.to_json())  # another trial's files: its run fails
    assert sweep(study, tmp_path / "r", mnist_root) == 1  # decided without it, exit 1
    db = tmp_path / "r" / "h" / "study.db"
    failed = tables(db)
    assert dict((k, s) for k, s, *_ in failed["trials"])[a.key] == "failed"
    (broken / CONFIG).unlink()
    executor = InlineExecutor()
    assert sweep(study, tmp_path / "r", mnist_root, executor, retry=True) == 0
    # it ran to rung 1 first, alone, before any trial went on from there
    assert stop_ats(executor)[0] == (a.key, 1)
    assert sweep(study, tmp_path / "fresh", mnist_root) == 0
    got, fresh = tables(db), tables(tmp_path / "fresh" / "h" / "study.db")
    # a fresh run's end, but for what had completed without it: completed it stays
    kept = {k for k, s, *_ in failed["trials"] if s == "completed"}
    assert kept - {k for k, s, *_ in fresh["trials"] if s == "completed"}  # one such trial
    assert [(k, s, c) for k, s, _, c in got["trials"] if k not in kept] == [
        (k, s, c) for k, s, _, c in fresh["trials"] if k not in kept
    ]
    assert {k for k, s, *_ in got["trials"] if s == "completed"} >= kept
    assert set(fresh["epochs"]) <= set(got["epochs"])


def test_the_report_says_what_each_rung_stopped_and_what_it_saved(
    mnist_root: Path, tmp_path: Path, whole: Whole
) -> None:
    import pandas as pd

    from vaegrid.report.build import make_report

    shutil.copytree(whole.folder, tmp_path / "r" / "h")
    make_report(tmp_path / "r" / "h", mnist_root, top=1, nll_samples=5)
    md = (tmp_path / "r" / "h" / "report.md").read_text()
    assert "12 trials: 3 completed, 5 stopped early, 4 diverged, 0 failed, 0 not finished." in md
    assert "| rung (epoch) | compared | ended before it | went on | stopped here |" in md
    assert "| 1 | 12 | 4 | 6 | 2 |" in md and "| 2 | 6 | 0 | 3 | 3 |" in md
    # 4 diverged in epoch 1, 2 stopped after 1 epoch, 3 after 2, 3 completed 3: 17 of 8 x 3
    assert "Compute: 17 trial-epochs run of 24 for the full grid (29% saved)" in md
    assert "- lr 0.0001: 0 of 4 completed, 0 diverged, 4 stopped early." in md
    ranking = pd.read_csv(tmp_path / "r" / "h" / "ranking.csv")
    assert list(ranking["status"]) == ["completed"] * 3 + ["stopped"] * 5 + ["diverged"] * 4
    assert list(ranking["rank_val_elbo"]) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9]
    assert ranking["rung"].isna().sum() == 7 and sorted(ranking["rung"].dropna()) == [1, 1, 2, 2, 2]


def test_a_halving_study_may_put_its_one_epochs_value_in_the_grid(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path, whole: Whole
) -> None:
    from vaegrid.report.build import make_report

    text = study_text().replace("epochs = 3\n", "").replace("[grid]\n", "[grid]\nepochs = [3]\n")
    study = write_study(text, file="h.toml")
    assert sweep(study, tmp_path / "r", mnist_root) == 0
    assert tables(tmp_path / "r" / "h" / "study.db") == whole.tables  # the same trials
    make_report(tmp_path / "r" / "h", mnist_root, top=1, nll_samples=5)
    md = (tmp_path / "r" / "h" / "report.md").read_text()
    assert "Compute: 17 trial-epochs run of 24 for the full grid (29% saved)" in md


# -- slow: every write killed, and real worker processes ----------------------------------------


@pytest.mark.slow
def test_a_kill_at_any_write_of_a_halving_sweep_resumes_to_the_same_survivors_and_numbers(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    commits: dict[str, int],
) -> None:
    # 4 trials: 2 diverge, 1 is stopped at rung 2, 1 completes
    text = study_text(lr="[1e-2, 1e3]").replace("latent = [4, 8]", "latent = [4]")
    study = write_study(text, file="h.toml")
    assert sweep(study, tmp_path / "whole", mnist_root) == 0
    total = commits["seen"]
    want = tables(tmp_path / "whole" / "h" / "study.db")
    assert sorted(s for _, s, *_ in want["trials"]) == [
        "completed",
        "diverged",
        "diverged",
        "stopped",
    ]
    assert total > 40
    for n in range(1, total + 1):
        results = tmp_path / f"crash{n}"
        commits["crash_at"], commits["seen"] = n, 0
        with pytest.raises(Crash):
            sweep(study, results, mnist_root)
        commits["crash_at"] = 0
        assert sweep(study, results, mnist_root) == 0, f"resume after a crash at write {n}"
        assert tables(results / "h" / "study.db") == want, f"after a crash at write {n} of {total}"
        shutil.rmtree(results)


@pytest.mark.slow
def test_one_and_two_worker_processes_give_identical_tables(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path
) -> None:
    study = write_study(study_text(), file="h.toml")
    for k in ("1", "2"):
        args = ["run", str(study), "--results", str(tmp_path / k), "--data-dir", str(mnist_root)]
        assert main([*args, "--devices", "cpu", "--workers-per-device", k, "--no-progress"]) == 0
    one, two = (tables(tmp_path / k / "h" / "study.db") for k in ("1", "2"))
    assert one == two
    statuses = sorted(s for _, s, *_ in one["trials"])
    assert statuses.count("stopped") == 5 and statuses.count("completed") == 3


@pytest.mark.slow
def test_kill_9_of_a_halving_driver_after_a_decision_then_resume_with_other_k(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import make_mnist

    data = make_mnist(tmp_path / "data", n_train=6000, n_test=1000)  # epochs long enough to hit
    text = (
        study_text().replace("hidden = [32]", "hidden = [256]").replace("epochs = 3", "epochs = 4")
    )
    study = write_study(text.replace("fractions = [0.6, 0.2, 0.2]", "fractions = [0.8, 0.1, 0.1]"))

    def driver(results: Path, k: str) -> subprocess.Popen[bytes]:
        args = ["run", str(study), "--results", str(results), "--data-dir", str(data)]
        args += ["--devices", "cpu", "--workers-per-device", k, "--no-progress"]
        cmd = [sys.executable, "-m", "vaegrid", *args]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    whole = driver(tmp_path / "whole", "2")
    assert whole.wait(timeout=300) == 0, whole.stderr.read() if whole.stderr else ""
    cut = driver(tmp_path / "cut", "2")
    db = tmp_path / "cut" / "h" / "study.db"
    deadline = time.time() + 120
    decided = False
    while time.time() < deadline and not decided:  # kill once rung 1 is decided
        time.sleep(0.1)
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                decided = con.execute("SELECT count(*) FROM vg_stop").fetchone()[0] > 0
            finally:
                con.close()
        except sqlite3.Error:
            pass
    assert decided
    os.kill(cut.pid, signal.SIGKILL)
    cut.wait()
    cut.communicate(timeout=30)
    time.sleep(1)  # its workers exit within 0.2 s of their driver's death
    store = Store.reader(db)
    try:
        left = [
            t.key for t in store.trials() if t.status not in ("completed", "diverged", "stopped")
        ]
    finally:
        store.close()
    assert left, "the kill should have caught the sweep between rung 1 and its end"
    resumed = driver(tmp_path / "cut", "1")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read() if resumed.stderr else ""
    assert tables(db) == tables(tmp_path / "whole" / "h" / "study.db")
