"""What a sweep tells its user: the live bar and its event lines, and ``vaegrid status``.

Both count statuses through ``status.summary``, from a view of every trial's status: the
driver's (the database's statuses, with the trials it has queued shown as waiting), or
the database's read by ``status``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from vaegrid.cost import CostModel, Forecast, Left, duration, forecast
from vaegrid.errors import InputError
from vaegrid.status import (
    COMPLETED,
    DIVERGED,
    FAILED,
    FINAL,
    INTERRUPTED,
    PAUSED,
    RUNNING,
    STOPPED,
    WAITING,
    Status,
    summary,
)

if TYPE_CHECKING:
    from vaegrid.db.engine import Database
    from vaegrid.db.reader import ReaderMixin, TrialInfo
    from vaegrid.layout import StudyLayout
    from vaegrid.study.fingerprint import Fingerprint


class _Bar(tqdm):
    """tqdm whose text after the bar is ours: its ``{postfix}`` always starts with ", "."""

    info = ""

    @property
    def format_dict(self) -> dict[str, Any]:
        return {**super().format_dict, "info": self.info}


class Progress:
    """The live bar of a sweep (``--no-progress``: one printed line per event instead). It
    counts work, not trials (trials differ in cost 10x and more): the share done and the
    time left come from ``forecast`` (cost.py)."""

    def __init__(
        self,
        name: str,
        view: Mapping[str, Status],
        halving: bool,
        live: bool,
        forecast: Callable[[], Forecast],
    ) -> None:
        self.halving, self.forecast, self.trials = halving, forecast, len(view)
        self.bar = _Bar(
            total=100,
            desc=name,
            disable=not live,
            dynamic_ncols=True,
            bar_format="{desc}: {percentage:3.0f}% of the work |{bar}| {info}",
        )

    def show(self, view: Mapping[str, Status]) -> None:
        """Bring the bar in line with ``view`` and the forecast."""
        if self.bar.disable:
            return
        counts = Counter(view.values())
        now = self.forecast()
        self.bar.n = round(100 * now.done, 1)
        halving = f", paused {counts[PAUSED]}, stopped {counts[STOPPED]}" if self.halving else ""
        left = f"about {duration(now.seconds)} left" if now.measured else "time left: measuring"
        self.bar.info = (
            f"{left}; trials {done(view)}/{self.trials} done, running {counts[RUNNING]}, "
            f"diverged {counts[DIVERGED]}, failed {counts[FAILED]}{halving}"
        )
        self.bar.refresh()

    def say(self, line: str) -> None:
        """One line per event when there is no live bar (logs, --no-progress)."""
        if self.bar.disable:
            print(line, flush=True)

    @staticmethod
    def write(line: str) -> None:
        """A line that shows either way (above the bar)."""
        tqdm.write(line)

    def close(self) -> None:
        self.bar.close()


def done(view: Mapping[str, Status]) -> int:
    return sum(1 for s in view.values() if s in FINAL)


def live_counts(
    db: Database, layout: StudyLayout | None, store: ReaderMixin, trials: Sequence[TrialInfo]
) -> tuple[int | str | None, Counter[Status]]:
    """The study's live driver (its pid; "pid on host" on a server; None: none) and its
    trials' counts by status, what was running counted interrupted when no driver lives.
    ``layout`` None (a SQLite database named by --storage): its own lock alone."""
    from vaegrid.layout import database_lock
    from vaegrid.run.leases import DRIVER_TIMEOUT_S
    from vaegrid.run.locks import DriverLock

    pid: int | str | None = None
    if db.path is not None:
        pid = DriverLock.live(db, layout) if layout else DriverLock.holder(database_lock(db.path))
    else:
        live = store.live_driver(DRIVER_TIMEOUT_S)
        pid = f"{live.pid} on {live.host}" if live is not None else None
    counts = Counter(t.status for t in trials)
    if pid is None:  # no live driver: what was running is only interrupted
        counts[INTERRUPTED] += counts.pop(RUNNING, 0)
    return pid, counts


def status_line(study_dir: Path, storage: str | None = None) -> str:
    """``vaegrid status``: a study's progress read from its database, then one line per
    running trial with its epoch and device. Opens the database read-only.

    Raises:
        InputError: ``study_dir`` holds no vaegrid study database, or ``storage`` is bad.
    """
    from vaegrid.db.reader import foreign_words
    from vaegrid.db.store import Store, existing_db
    from vaegrid.layout import StudyLayout

    layout = StudyLayout(study_dir)
    db = existing_db(layout, storage)
    try:
        store = Store.reader(db)
    except InputError:  # in a sweep's first second its driver is still making the tables
        from vaegrid.run.locks import DriverLock

        setting_up = DriverLock.live(db, layout) if db.path is not None else None
        if setting_up is None:
            raise
        return (
            f"{layout.root.name}: its driver (pid {setting_up}) is setting the study up; ask "
            "again in a moment"
        )
    try:
        name, slots = store.study_row()
        trials, others = store.trials_and_foreign()
        foreign = foreign_words(others)
        device = store.running_devices()
        devices = store.trial_devices()
        fingerprint = store.fingerprint()
        searched = fingerprint.searched
        pid, counts = live_counts(db, layout, store, trials)
    finally:
        store.close()
    line = f"{name}: {summary(counts, len(trials))}"
    ahead = stored_forecast(trials, devices, fingerprint, slots)
    if ahead is not None and any(counts[s] for s in (*WAITING, RUNNING)):
        line += f"; {ahead.words()}" if pid else f"; {ahead.done:.0%} of the work done"
    aside = [f"  {foreign}"] if foreign is not None else []
    if not pid:
        return "\n".join([line + "; no driver running", *aside])
    lines = [line + f"; driver pid {pid}", *aside]
    for t in trials:
        if t.status == RUNNING:
            c = t.config
            lines.append(
                f"  running {t.key} ({c.describe(searched)}): epoch {t.epochs_done}/{c.epochs} "
                f"done, on {device.get(t.key, '?')}"
            )
    return "\n".join(lines)


def stored_forecast(
    trials: Sequence[TrialInfo],
    devices: Mapping[str, str],
    fingerprint: Fingerprint,
    slots: int,
) -> Forecast | None:
    """The share of a stored study's work done and its time left on ``slots`` slots, from
    the cost model (cost.py) corrected by the epochs its database holds: each trial
    left runs to its end, or with halving to its next rung, and the plan's survivors after.
    A plug-in data set's images are taken as MNIST's here (``status`` loads no data)."""
    if not trials:
        return None
    model = CostModel(trials[0].config.data, fingerprint.nll_samples)
    halving = fingerprint.halving
    for t in trials:
        if t.key in devices:
            model.observe(devices[t.key], t.seconds, t.epochs_done * model.epoch_work(t.config))

    def target(t: TrialInfo) -> int:
        if halving is None:
            return t.config.epochs
        if t.status == PAUSED:  # at its rung: what comes after is the plan's
            return t.epochs_done
        return min([r for r in halving.rungs if r > t.epochs_done] + [t.config.epochs])

    left = [Left(t.config, t.epochs_done, target(t), t.status in FINAL, t.status == COMPLETED)
            for t in trials]  # fmt: skip
    open_rung = None
    if halving is not None:
        epochs = max(t.config.epochs for t in trials)
        at = min((x.target for x in left if not x.ended), default=epochs)
        open_rung = at if at < epochs else None
    return forecast(model, left, slots, halving, open_rung)
