"""What a sweep tells its user: the live bar and its event lines, and ``vaegrid status``.

Both count statuses through ``status.summary``, from a view of every trial's status: the
driver's (the database's statuses, with the trials it has queued shown as waiting), or
the database's read by ``status``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from tqdm import tqdm

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


class Progress:
    """The live bar of a sweep (``--no-progress``: one printed line per event instead)."""

    def __init__(self, name: str, view: Mapping[str, Status], halving: bool, live: bool) -> None:
        self.halving = halving
        self.bar = tqdm(
            total=len(view),
            initial=done(view),
            desc=name,
            unit="trial",
            disable=not live,
            dynamic_ncols=True,
        )

    def show(self, view: Mapping[str, Status]) -> None:
        """Bring the bar in line with ``view``."""
        counts = Counter(view.values())
        self.bar.n = done(view)
        halving = f", paused {counts[PAUSED]}, stopped {counts[STOPPED]}" if self.halving else ""
        self.bar.set_postfix_str(
            f"running {counts[RUNNING]}, diverged {counts[DIVERGED]}, "
            f"failed {counts[FAILED]}{halving}",
            refresh=False,
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


def status_line(study_dir: Path, storage: str | None = None) -> str:
    """``vaegrid status``: a study's progress read from its database, then one line per
    running trial with its epoch and device. Opens the database read-only.

    Raises:
        InputError: ``study_dir`` holds no vaegrid study database, or ``storage`` is bad.
    """
    from vaegrid.db.store import Store, existing_db
    from vaegrid.layout import StudyLayout
    from vaegrid.run.driver import DriverLock
    from vaegrid.run.worker import DRIVER_TIMEOUT_S
    from vaegrid.spec.study import searched_axes

    layout = StudyLayout(study_dir)
    db = existing_db(layout, storage)
    store = Store.reader(db)
    try:
        name, slots = store.study_row()
        trials = store.trials()
        runs = store.runs()
        searched = searched_axes(store.fingerprint())
        live = None if db.is_sqlite else store.live_driver(DRIVER_TIMEOUT_S)
    finally:
        store.close()
    counts = Counter(t.status for t in trials)
    pid: int | str | None = DriverLock.live(db, layout) if db.is_sqlite else None
    if live is not None:
        pid = f"{live.pid} on {live.host}"
    if pid is None:  # no live driver: what was running is only interrupted
        counts[INTERRUPTED] += counts.pop(RUNNING, 0)
    line = f"{name}: {summary(counts, len(trials))}"
    # Diverged runs end early: the completed ones say how long a trial takes.
    took = [r["ended"] - r["started"] for r in runs if r["status"] == COMPLETED]
    left = sum(counts[s] for s in (*WAITING, RUNNING))
    if took and left:
        line += f", ETA {_duration(sum(took) / len(took) * left / max(1, slots))}"
    if not pid:
        return line + "; no driver running"
    device = {r["key"]: r["device"] for r in runs if r["status"] == RUNNING}
    lines = [line + f"; driver pid {pid}"]
    for t in trials:
        if t.status == RUNNING:
            c = t.config
            lines.append(
                f"  running {t.key} ({c.describe(searched)}): epoch {t.epochs_done}/{c.epochs} "
                f"done, on {device.get(t.key, '?')}"
            )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
