"""One driver's pass over its study: dispatch the trials the policy lets run to the slots
the queue allows, collect what they return, say where the sweep stands.

The trials the study lets run now (policy.py: the full grid, or halving's rungs) go to the
executor's slots (pool.py) through the trial queue (queue.py): a trial is submitted only
to a free slot the placement rule allows, so no device ever runs more than K trials, every
trial runs on exactly one device, and a trial that has started only ever continues on a
device of the kind it started on. On Dask a few more are sent ahead (``Pool.ahead``): Dask
holds them until one of its slots frees, its resource bounds what runs at once. A worker's
death costs only the trial it was running; a fault of the world (faults.py) only time.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import Any

from vaegrid import cost, signals
from vaegrid.cost import CostModel, Forecast, duration
from vaegrid.db.store import Store
from vaegrid.faults import FAULT_WAIT_S, FaultClock, WorldFault, patient
from vaegrid.layout import StudyLayout
from vaegrid.run.policy import Decision, policy_of
from vaegrid.run.pool import ClusterGone, Executor, Pool, Slot, WorkerDied
from vaegrid.run.progress import Progress
from vaegrid.run.queue import TrialQueue
from vaegrid.run.worker import Task, execute
from vaegrid.status import (
    COMPLETED,
    FAILED,
    FINAL,
    INTERRUPTED,
    PAUSED,
    PENDING,
    RUNNING,
    STARTABLE,
    Status,
    summary,
)
from vaegrid.study.core import Probed, Study, TrialConfig
from vaegrid.train import provenance

EXIT_CLUSTER_GONE = 3  # the world failed: the cluster's scheduler, the database, the disk
# A trial interrupted this many times in a row without finishing an epoch stops the sweep:
# its workers never live long enough (a batch job's walltime shorter than an epoch).
STALLED_RUNS = 5


Running = dict[Any, tuple[str, Slot]]  # a trial's future -> (its key, its slot)


class Stalled(Exception):
    """A trial keeps being interrupted before it finishes an epoch (STALLED_RUNS)."""


class Sweep:
    """One driver's pass over the study.

    ``view`` holds every trial's status as the database has it, except that trials this
    driver has queued show as pending (waiting): the counts on the bar derive from it.
    """

    def __init__(
        self,
        study: Study,
        probed: Probed,
        grid: list[TrialConfig],
        layout: StudyLayout,
        store: Store,
        pool: Pool,
        data_root: Path,
        executor: Executor,
        token: str,
        fault_wait: float = FAULT_WAIT_S,
    ) -> None:
        self.study, self.layout, self.pool = study, layout, pool
        # Every call of the sweep waits out a fault of the world (the database restarting);
        # the last words of a sweep that stops do not (the next driver repairs them).
        self.store, self.raw_store = patient(store, fault_wait), store
        self.fault_wait = fault_wait
        self.faults = FaultClock(fault_wait)  # faults of the world since the last progress
        self.stalled: Counter[str] = Counter()  # runs in a row interrupted without an epoch
        self.data_root = data_root.resolve()
        self.executor, self.token = executor, token
        self.grid = {cfg.key: cfg for cfg in grid}
        bound = store.trial_devices()
        self.queue = TrialQueue(pool, bound, cost=self._left)
        self.deaths: Counter[str] = Counter()
        self.versions = tuple(sorted(provenance.versions().items()))
        trials = {t.key: t for t in store.trials()}  # every row checked
        self.view: dict[str, Status] = {k: trials[k].status for k in self.grid}
        # What each trial costs (cost.py), corrected by what earlier runs measured.
        self.cost = CostModel.of(study, probed)
        self.epochs_done = {k: trials[k].epochs_done for k in self.grid}
        self.seconds = {k: trials[k].seconds for k in self.grid}
        for key, kind in bound.items():
            if key in self.grid:
                work = self.epochs_done[key] * self.cost.epoch_work(self.grid[key])
                self.cost.observe(kind, self.seconds[key], work)
        # key -> (when it started, None while sent ahead; its work; its slot's device kind)
        self.submitted: dict[str, tuple[float | None, float, str]] = {}
        self.said_done = 0.0  # the share of the work done said last
        self.retry: set[str] = set()  # failed trials this driver has yet to rerun
        self.turn: tuple[int, Forecast] | None = None  # this turn's count ended, forecast
        # How far the study lets each trial run now: the full grid, or halving's rungs.
        self.policy = policy_of(study, self.store, list(self.grid))

    def run(self, retry_failed: bool, progress: bool, max_deaths: int) -> int:
        self.max_deaths = max_deaths
        started = time.monotonic()
        resumed = [k for k, s in self.view.items() if s in (INTERRUPTED, PAUSED, RUNNING)
                   and self.epochs_done[k] > 0]  # fmt: skip
        if retry_failed:
            self.retry = {k for k, s in self.view.items() if s == FAILED}
        self._decide()
        self._enqueue(set())
        if not self.queue.order:
            print(f"{self.study.name}: nothing to do: {summary(self.view.values())}")
            return self._exit_code()
        if resumed:
            print(
                f"{self.study.name}: resuming: {len(resumed)} trials continue from their last "
                "finished epoch",
                flush=True,
            )
        short = self._space_short()
        if short is not None:
            print(short, file=sys.stderr, flush=True)
        live = progress and sys.stdout.isatty()  # a log or a pipe gets a line per trial
        self.progress = Progress(
            self.study.name, self.view, self.policy.pauses(), live, self._forecast
        )
        running: Running = {}
        free = self.pool.slot_list()
        try:
            while self.queue.order or running:
                self.turn = None
                signals.check()  # a signal a library swallowed still stops the sweep
                self._dispatch(free, running)
                if not running:  # held back by a fault of the world: wait, do not spin
                    time.sleep(min(1.0, self.faults.held()))
                done = [(f, *running.pop(f)) for f in self.executor.wait(list(running), 1.0)]
                ended = self.store.trial_progress([k for _, k, _ in done]) if done else {}
                for _, _, slot in done:  # only to trials still running: not one ended now
                    place, begun = self.queue.hand_over(slot, running)
                    if begun is not None:  # sent ahead, it runs from now (cost, forecast)
                        self.submitted[begun] = (time.monotonic(), *self.submitted[begun][1:])
                    free.append(place)
                for future, key, slot in done:
                    self._collect(key, slot, future, ended[key])
                if done:
                    self._advance({k for k, _ in running.values()})
                self.progress.show(self.view)
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (signals.Interrupted)
            code = e.exit_code if isinstance(e, signals.Interrupted) else 130
            return self._abandon(running, "interrupted", "run the same command again", code)
        except ClusterGone as e:
            return self._abandon(running, e.what, e.then, EXIT_CLUSTER_GONE)
        except WorldFault as e:
            then = f"waited {e.waited:.0f} s; run the same command again once it is fixed"
            return self._abandon(running, str(e), then, EXIT_CLUSTER_GONE)
        except Stalled as e:
            then = "give the jobs a longer walltime, then run the same command again"
            return self._abandon(running, str(e), then, EXIT_CLUSTER_GONE)
        self.executor.shutdown(kill=False)
        self.progress.close()
        folder = self.layout.root
        failed = any(s == FAILED for s in self.view.values())
        print(
            f"{self.study.name}: finished in {duration(time.monotonic() - started)}: "
            f"{summary(self.view.values())}; results in {folder}\n"
            f"next: vaegrid report {folder}"
            + ("; failed trials keep their traceback (vg_run.error); --retry-failed runs "
               "them again" if failed else ""),
            flush=True,
        )  # fmt: skip
        return self._exit_code()

    def _space_short(self) -> str | None:
        """A line saying the study folder's disk lacks room for this sweep (cost.space_short)."""
        at_once = len(self.queue.order) if self.policy.pauses() else self.pool.slots
        left = [self.grid[k] for k in self.queue.order]
        return cost.space_short(self.layout.root, self.cost, left, at_once, self.fault_wait)

    def _may_go(self, key: str) -> bool:
        """Whether the study lets ``key`` run now (the queue then says where): a trial
        a worker may start, failed ones only when retried, and with halving only as far as
        the decided rungs allow."""
        status = self.view[key]
        startable = status in STARTABLE and (status != FAILED or key in self.retry)
        return startable and self.policy.allows(key)

    def _enqueue(self, running: set[str]) -> None:
        """Offer the queue every trial that may run now and is not already offered."""
        offered = self.queue.waiting() | running
        for key in self.grid:
            if key not in offered and self._may_go(key):
                self.queue.offer(key)
                self.view[key] = PENDING

    def _abandon(self, running: Running, why: str, then: str, code: int) -> int:
        """Stop every worker now; running trials keep their last epoch (interrupted)."""
        self.executor.shutdown(kill=True)
        with suppress(Exception):  # a database that is down: the next driver's sync marks them
            self.raw_store.mark([k for k, _ in running.values()], INTERRUPTED)
        self.progress.close()
        print(
            f"vaegrid: {why}: {len(running)} running trials keep their last finished epoch; {then}",
            file=sys.stderr,
        )
        return code

    def _decide(self) -> Decision:
        """Take and record every decision the policy can make now (halving's rungs), and
        bring the view of the trials that wait in line with them."""
        decision = self.policy.update(self.retry)
        for line in decision.said:
            Progress.write(line)
        offered = self.queue.waiting()
        for key, status in decision.statuses.items():
            if key in self.grid and key not in offered and self.view[key] != RUNNING:
                self.view[key] = status
        return decision

    def _advance(self, running: set[str]) -> None:
        """After results came in: decide what can be decided, queue what may run now, and
        say what stopped and what goes on again."""
        decision = self._decide()
        self._enqueue(running)
        done = sum(1 for s in self.view.values() if s in FINAL)
        first = done - len(decision.stopped) + 1  # numbered as _finished numbers trials
        for n, (key, rung) in enumerate(decision.stopped, start=first):
            self.progress.say(
                f"[{n}/{len(self.grid)}] {self._describe(key)}: stopped at rung {rung}"
            )
        for key in decision.reopened:
            self.progress.say(f"{self._describe(key)}: goes on (its rung was decided again)")

    def _paused(self, key: str) -> None:
        self.faults.progress()
        self.view[key] = PAUSED
        # where it stopped: the plan has moved on (a trial at its rung may not run on now)
        self.progress.say(f"{self._describe(key)}: paused at epoch {self.epochs_done[key]}")

    def _describe(self, key: str) -> str:
        return f"{key} ({self.grid[key].describe(self.study.searched)})"

    def _exit_code(self) -> int:
        for line in self.queue.strands():
            print(line)
        failed = any(s == FAILED for s in self.view.values())
        return 1 if failed or self.queue.stranded else 0

    def _dispatch(self, free: list[Slot], running: Running) -> None:
        """Start what queue.place gives the free slots: one start_trials, then each sent."""
        if self.faults.held():  # a fault of the world: not yet
            return
        busy = Counter(slot.device for _, slot in running.values())
        placed = list(self.queue.place(free, busy))
        if not placed:
            return
        ids = self.store.start_trials(self.study, [self.grid[k] for k, _ in placed])
        for key, slot in placed:
            self.retry.discard(key)
            self.view[key] = RUNNING
            try:
                running[self._submit(key, slot, ids[key])] = (key, slot)
            except WorkerDied as e:  # the slot's worker died while idle
                self.submitted.pop(key, None)
                free.append(slot)
                self.executor.reset(slot)
                self._worker_died(key, e)

    def _left(self, key: str) -> float:
        """The work ``key`` has left: to the rung it may run to now, or to its end."""
        cfg = self.grid[key]
        target = self.policy.target(key, cfg.epochs)
        return self.cost.work(cfg, self.epochs_done[key], target)

    def _forecast(self) -> Forecast:
        """The one forecast (cost.forecast) of where the sweep stands: trials running, those
        queued to the rung they may run to now, and the halving plan's rest. The share done
        said never goes back (a trial that ran longer than predicted, or a rate learned
        anew, can lower the estimate a little)."""
        now = time.monotonic()
        queued = set(self.queue.order)
        trials = []
        for key, cfg in self.grid.items():
            done, status = self.epochs_done[key], self.view[key]
            when, work, kind = self.submitted.get(key, (None, 0.0, ""))
            running = (now - when, work, kind) if when is not None else None
            waits = key in queued or (key in self.submitted and when is None)  # or sent ahead
            target = self.policy.target(key, cfg.epochs)
            ended = status in FINAL and running is None
            trials.append(cost.Left(cfg, done, target if waits else done, ended,
                                    status == COMPLETED, running))  # fmt: skip
        policy = self.policy
        now_said = cost.forecast(self.cost, trials, self.pool.slots, policy.halving,
                                 policy.open_rung)  # fmt: skip
        self.said_done = max(self.said_done, now_said.done)
        return now_said._replace(done=self.said_done)

    def _submit(self, key: str, slot: Slot, optuna_trial_id: int) -> Any:
        when = None if self.pool.is_ahead(slot) else time.monotonic()
        self.submitted[key] = (when, self._left(key), self.pool.kind(slot.device))
        task = Task(
            config=self.grid[key].to_json(),
            optuna_trial_id=optuna_trial_id,
            device=self.executor.device(slot),
            threads=self.pool.threads,
            db=self.store.db,
            layout=StudyLayout(self.layout.root.resolve()),
            data_root=str(self.data_root),
            driver_pid=os.getpid(),
            versions=self.versions,
            watch=self.executor.watch,
            driver_token=self.token,
            stop_at=self.policy.stop_at(key),
            nll_samples=self.study.nll_samples,
            nll_when_paused=self.policy.nll_when_paused(),
            fault_wait=self.fault_wait,
        )
        return self.executor.submit(slot, execute, task)

    def _measure(self, key: str, progress: tuple[int, float, str | None]) -> None:
        """A run of ``key`` ended, its ``progress`` as the database has it now
        (Store.trial_progress): what it took (its wall time: loading and checkpoints count)
        for the work it did corrects the cost model, and so does how much of the work
        predicted at its start it did (a diverged trial stops early)."""
        cfg, before = self.grid[key], self.epochs_done[key]
        done, seconds, bound = progress
        self.queue.bind(key, bound)  # its first epoch may have bound it
        ran = self.cost.work(cfg, before, done) if done > before else 0.0
        when, predicted, kind = self.submitted.pop(key, (None, 0.0, ""))
        if when is not None:
            self.cost.observe(kind, time.monotonic() - when, ran)
            self.cost.finished(predicted, ran)
        self.epochs_done[key], self.seconds[key] = done, seconds

    def _collect(
        self, key: str, slot: Slot, future: Any, progress: tuple[int, float, str | None]
    ) -> None:
        """A trial's future ended: its status, its worker's death, or an unrecorded error."""
        before = self.epochs_done[key]
        self._measure(key, progress)
        if self.epochs_done[key] > before:
            self.stalled[key] = 0
        try:
            returned = self.executor.result(future)
        except WorkerDied as e:  # the worker process died (killed, out of memory)
            self.executor.reset(slot)
            self._worker_died(key, e)
            return
        except WorldFault as e:  # the database or the disk failed it: not the trial's fault
            self._world_fault(key, e)
            return
        except Exception as e:  # the worker could not even record its own failure
            self.store.fail(key, "".join(traceback.format_exception(e)))
            returned = self.store.status_of(key)
        if returned == INTERRUPTED:  # its lease was lost, or it saw a stale heartbeat: again
            self.stalled[key] += self.epochs_done[key] == before
            if self.stalled[key] >= STALLED_RUNS:
                raise Stalled(
                    f"trial {key} was interrupted {self.stalled[key]} times in a row without "
                    "finishing an epoch: its workers stop before its start-up and one epoch "
                    "are done (is a batch job's walltime shorter than that? an epoch of it "
                    f"takes {self._epoch_seconds(key)})"
                )
            self.queue.offer(key, front=True)
            self.view[key] = PENDING
            return
        if returned == PAUSED and self.policy.pauses():
            self._paused(key)
            return
        if returned not in FINAL:  # never expected; recorded rather than trusted
            self.store.fail(key, f"worker returned status {returned!r}")
            returned = self.store.status_of(key)
        self._finished(key, Status(returned))

    def _world_fault(self, key: str, fault: WorldFault) -> None:
        """A trial stopped by a fault of the world is interrupted at its last finished epoch
        and offered again; no trial starts for a backoff that doubles while the faults go
        on. Past ``fault_wait`` seconds without progress (the worker's own wait counted),
        the sweep stops (WorldFault, exit 3)."""
        status = self.store.status_of(key)
        if status == PAUSED and self.policy.pauses():  # its end was committed
            self._paused(key)  # before the fault (a lease's release, a checkpoint's removal)
            return
        if status in FINAL:
            self._finished(key, status)
            return
        pause = self.faults.fault(fault, sum(self.epochs_done.values()))
        self.store.mark([key], INTERRUPTED)  # the worker may not have reached the database
        self.queue.offer(key, front=True)
        self.view[key] = PENDING
        self.progress.say(
            f"{self._describe(key)}: interrupted by a fault of the world ({fault.what}); "
            f"no trial starts for {pause:.1f} s, and vaegrid gives up after "
            f"{self.fault_wait:.0f} s without progress"
        )

    def _epoch_seconds(self, key: str) -> str:
        """How long an epoch of ``key`` takes, as the cost model has it, in words."""
        seconds = self.cost.seconds(self.cost.epoch_work(self.grid[key]))
        return f"about {duration(seconds)}" + ("" if self.cost.measured() else
                                               ", by the prior rate")  # fmt: skip

    def _finished(self, key: str, status: Status) -> None:
        self.faults.progress()  # the world works again
        self.view[key] = status
        if self.turn is None:  # the count and the forecast once a turn: each is O(trials)
            self.turn = (sum(1 for s in self.view.values() if s in FINAL) - 1, self._forecast())
        self.turn = (self.turn[0] + 1, self.turn[1])
        said = f"[{self.turn[0]}/{len(self.grid)}] {self._describe(key)}: {status}"
        self.progress.say(f"{said}; {self.turn[1].words()}")

    def _worker_died(self, key: str, error: BaseException) -> None:
        """The worker running ``key`` died: the trial ended (if its end was committed first),
        resumes, or after ``max_deaths`` deaths fails (what its epochs bound: _measure)."""
        status = self.store.status_of(key)
        if status == PAUSED and self.policy.pauses():  # its pause was committed
            self._paused(key)
            return
        if status in FINAL:
            self._finished(key, status)
            return
        self.deaths[key] += 1
        if self.deaths[key] >= self.max_deaths:
            cause = f"worker process died {self.deaths[key]} times: {error}"
            self._finished(key, self.store.give_up(key, cause))
        else:
            self.store.mark([key], INTERRUPTED)
            self.queue.offer(key, front=True)
            self.view[key] = PENDING


__all__ = ["EXIT_CLUSTER_GONE", "STALLED_RUNS", "Stalled", "Sweep"]
