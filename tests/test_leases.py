"""A worker process's keeper: every trial's lease renewed and the driver watched at once,
each trial told through its own stop flag; and the one-statement epoch write it serves."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vaegrid.db.store import Store
from vaegrid.run import leases, worker
from vaegrid.run.leases import LEASE_S, Hold, Keeper
from vaegrid.status import COMPLETED, RUNNING
from vaegrid.study.core import expand
from vaegrid.study.load import load_study
from vaegrid.train.records import EpochRecord, Metrics, TrialResult


class FakeStore:
    """What a keeper asks of a store, answered as a test says, every call recorded."""

    def __init__(self, lost: Iterable[str] = (), token: str | None = "t1") -> None:
        self.lost, self.token, self.fail = set(lost), token, False
        self.renewals: list[list[tuple[str, str]]] = []
        self.reads = 0

    def renew(self, leased: list[tuple[str, str]], ttl: float) -> set[str]:
        assert ttl == LEASE_S
        self.renewals.append(list(leased))
        if self.fail:
            raise OSError("server closed the connection unexpectedly")
        return {k for k, _ in leased if k not in self.lost}

    def live_driver(self, timeout: float) -> Any:
        self.reads += 1
        if self.fail:
            raise OSError("server closed the connection unexpectedly")
        return None if self.token is None else SimpleNamespace(token=self.token)


def _holds(keeper: Keeper, n: int, token: str | None = "t1") -> list[Hold]:
    return [keeper.hold(Hold(f"k{i}", f"h:1:{i}", True, token)) for i in range(n)]


def test_a_process_renews_all_its_leases_and_reads_the_heartbeat_once_a_check() -> None:
    store = FakeStore(lost={"k3"})
    keeper = Keeper(store, check_s=3600, tick_s=3600)  # its thread never checks by itself
    holds = _holds(keeper, 25)
    keeper.check(holds)
    assert store.renewals == [[(f"k{i}", f"h:1:{i}") for i in range(25)]]  # one statement
    assert store.reads == 1  # one heartbeat read for 25 trials
    assert [h.key for h in holds if h.stop.is_set()] == ["k3"]  # taken over: it alone stops
    keeper.check([h for h in holds if not h.stop.is_set()])
    assert len(store.renewals[-1]) == 24


def test_a_failed_renewal_stops_a_trial_only_once_its_lease_has_lapsed() -> None:
    store = FakeStore()
    keeper = Keeper(store, check_s=3600, tick_s=3600)
    fresh, old = _holds(keeper, 2)
    old.renewed = time.monotonic() - LEASE_S - 1  # renewed last before the lease's length
    store.fail = True
    keeper.check([fresh, old])
    assert not fresh.stop.is_set() and old.stop.is_set()
    store.fail = False
    before = fresh.renewed
    keeper.check([fresh])
    assert fresh.renewed > before  # renewed: counted from this renewal


def test_a_renewal_that_fails_after_a_long_wait_counts_the_wait() -> None:
    store = FakeStore()
    keeper = Keeper(store, check_s=3600, tick_s=3600)
    (hold,) = _holds(keeper, 1)
    hold.renewed = time.monotonic() - LEASE_S + 0.2  # 0.2 s of its lease left

    def slow(leased: list[tuple[str, str]], ttl: float) -> set[str]:
        time.sleep(0.4)  # the server answers late, and with an error
        raise OSError("timeout expired")

    store.renew = slow  # type: ignore[method-assign]
    keeper.check([hold])
    assert hold.stop.is_set()  # its lease lapsed while the renewal waited


def test_a_keeper_whose_watch_raises_goes_on_watching() -> None:
    store = FakeStore()
    keeper = Keeper(store, check_s=0.02, tick_s=0.01)

    class Odd:  # a Dask worker whose status raises once: a surprise outside the guarded calls
        asked = 0

        @property
        def status(self) -> Any:
            Odd.asked += 1
            if Odd.asked == 1:
                raise RuntimeError("a bug, once")
            return SimpleNamespace(name="running")

    hold = keeper.hold(Hold("a", "h:1:1", True, "t1", Odd()))
    deadline = time.monotonic() + 10
    while len(store.renewals) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert Odd.asked > 1 and len(store.renewals) >= 3 and not hold.stop.is_set()
    keeper.let_go(hold)


def test_a_stale_or_replaced_driver_stops_the_trials_that_run_for_it_only() -> None:
    store = FakeStore(token="t2")  # a new driver took over
    keeper = Keeper(store, check_s=3600, tick_s=3600)
    ours, theirs = Hold("a", "h:1:1", True, "t1"), Hold("b", "h:1:2", True, "t2")
    local = Hold("c", "h:1:3", False, None)  # vaegrid's own pool: its parent is watched
    keeper.check([ours, theirs, local])
    assert [h.stop.is_set() for h in (ours, theirs, local)] == [True, False, False]
    assert store.renewals == [[("a", "h:1:1"), ("b", "h:1:2")]]  # an flock is not renewed
    store.token = None  # no live driver at all
    keeper.check([theirs, local])
    assert theirs.stop.is_set() and not local.stop.is_set()


def test_the_keepers_thread_checks_stops_closing_dask_workers_and_ends_with_its_holds() -> None:
    store = FakeStore()
    keeper = Keeper(store, check_s=0.05, tick_s=0.01)
    closing = SimpleNamespace(status=SimpleNamespace(name="running"))
    a = keeper.hold(Hold("a", "h:1:1", True, "t1", closing))
    b = keeper.hold(Hold("b", "h:1:2", True, "t1"))
    deadline = time.monotonic() + 10
    while len(store.renewals) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(store.renewals) >= 2 and not a.stop.is_set()
    closing.status.name = "closing_gracefully"  # retiring before its job's walltime
    while not a.stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a.stop.is_set() and not b.stop.is_set()
    keeper.let_go(a)
    keeper.let_go(b)
    thread = keeper._thread
    assert thread is not None
    thread.join(10)
    assert not thread.is_alive() and keeper._thread is None  # no holds: no thread
    c = keeper.hold(Hold("c", "h:1:3", True, "t1"))  # a new hold starts it again
    assert keeper._thread is not None and keeper._thread.is_alive()
    keeper.let_go(c)


def test_one_keeper_per_store_and_process() -> None:
    one, other = FakeStore(), FakeStore()
    assert leases.keeper(one) is leases.keeper(one)
    assert leases.keeper(one) is not leases.keeper(other)


def _store(write_study: Callable[..., Path], tmp_path: Path) -> tuple[Store, list[str]]:
    study = load_study(write_study())
    store = Store(tmp_path / "study.db")
    store.sync_study(study, expand(study), 1)
    return store, [cfg.key for cfg in expand(study)]


def test_renew_keeps_the_leases_still_held_and_names_them(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    store, keys = _store(write_study, tmp_path)
    a, b = keys[:2]
    try:
        assert store.claim(a, "w1", ttl=0.3) and store.claim(b, "w2", ttl=0.3)
        time.sleep(0.4)  # both lapsed; b is taken over by another worker
        assert store.claim(b, "w3", ttl=30)
        assert store.renew([(a, "w1"), (b, "w2")], ttl=30) == {a}
        assert not store.claim(a, "w3", ttl=30)  # a's lease runs again
        assert store.renew([], ttl=30) == set()
    finally:
        store.close()


def _record(epoch: int, seconds: float, elbo: float) -> EpochRecord:
    return EpochRecord(epoch, Metrics(elbo, elbo - 5, 5.0), Metrics(elbo + 1, elbo - 4, 5.0),
                       seconds)  # fmt: skip


def test_an_epoch_moves_its_trial_on_once_and_a_replay_keeps_what_was_committed(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    study = load_study(write_study())
    store = Store(tmp_path / "study.db")
    store.sync_study(study, expand(study), 1)
    cfg = expand(study)[0]
    try:
        ids = store.start_trials(study, [cfg])
        assert cfg.epochs == 2
        never = expand(study)[1]  # not started: no epoch, no device bound
        assert store.trial_progress([cfg.key, never.key])[never.key] == (0, 0.0, None)
        record = worker._recorder(store, cfg.key, ids[cfg.key], "cpu-a")
        record(_record(1, 2.0, 150.0))
        record(_record(1, 7.0, 999.0))  # replayed after a kill: nothing moves
        assert store.trial_progress([cfg.key])[cfg.key] == (1, 2.0, "cpu-a")
        again = worker._recorder(store, cfg.key, ids[cfg.key], "cuda-b")  # a second run
        again(_record(2, 3.0, 140.0))
        assert store.trial_progress([cfg.key])[cfg.key] == (
            2,
            5.0,
            "cpu-a",
        )  # bound by its first epoch
        val = store.frame("vg_epoch").query("split == 'val'").sort_values("epoch")
        assert list(val["elbo"]) == [151.0, 141.0]
    finally:
        store.close()


def test_a_recorder_binds_the_device_with_its_runs_first_epoch_only() -> None:
    kinds: list[str | None] = []
    fake = SimpleNamespace(record_epoch=lambda key, tid, r, kind=None: kinds.append(kind))
    record = worker._recorder(fake, "k", 7, "cpu-a")  # type: ignore[arg-type]
    for epoch in (1, 2, 3):
        record(_record(epoch, 1.0, 100.0))
    assert kinds == ["cpu-a", None, None]


def test_a_trials_end_writes_only_the_optuna_values_it_lacks(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    """A trial's end fills a gap in its Optuna trial's intermediate values (a kill's, an
    older vaegrid's) from its epochs, once each, and keeps the values already there."""
    from sqlalchemy import text

    study = load_study(write_study(epochs=3))
    store = Store(tmp_path / "study.db")
    store.sync_study(study, expand(study), 1)
    cfg = expand(study)[0]
    try:
        trial_id = store.start_trials(study, [cfg])[cfg.key]
        run = store.begin_run(cfg.key, "cpu", 1, "cpu-a", "here", {})
        history = [_record(e, 1.0, 150.0 - e) for e in (1, 2, 3)]
        record = worker._recorder(store, cfg.key, trial_id, "cpu-a")
        for r in history:
            record(r)
        with store.session() as s:  # step 2 lost; step 3 as Optuna kept it, not as vg_epoch
            s.execute(text(f"DELETE FROM trial_intermediate_values WHERE trial_id = {trial_id} "
                           "AND step = 2"))  # fmt: skip
            s.execute(text(f"UPDATE trial_intermediate_values SET intermediate_value = -1 "
                           f"WHERE trial_id = {trial_id} AND step = 3"))  # fmt: skip
        assert run is not None
        assert store.finish_run(cfg.key, run, TrialResult(COMPLETED, history), None) == COMPLETED
        with store.session() as s:
            steps = s.execute(text("SELECT step, intermediate_value FROM "
                                   f"trial_intermediate_values WHERE trial_id = {trial_id} "
                                   "ORDER BY step")).all()  # fmt: skip
        assert [tuple(r) for r in steps] == [(1, 150.0), (2, 149.0), (3, -1.0)]
    finally:
        store.close()


def test_a_run_whose_stored_status_no_vaegrid_writes_is_ended_already(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    """A run's status is compared as stored: a value vaegrid never writes (an edited row)
    is not running, so the late worker's end leaves the trial and the run as they are."""
    from sqlalchemy import text

    study = load_study(write_study())
    store = Store(tmp_path / "study.db")
    store.sync_study(study, expand(study), 1)
    cfg = expand(study)[0]
    try:
        store.start_trials(study, [cfg])
        run = store.begin_run(cfg.key, "cpu", 1, "cpu-a", "here", {})
        assert run is not None
        with store.session() as s:
            s.execute(text(f"UPDATE vg_run SET status = 'bogus' WHERE id = {run}"))
        result = TrialResult(COMPLETED, [_record(1, 1.0, 150.0)])
        assert store.finish_run(cfg.key, run, result, None) == RUNNING
        with store.session() as s:
            assert s.execute(text("SELECT status FROM vg_run")).scalars().all() == ["bogus"]
            assert s.execute(text("SELECT status FROM vg_trial WHERE key = :k"),
                             {"k": cfg.key}).scalar_one() == RUNNING  # fmt: skip
    finally:
        store.close()
