"""The Dask executor: the same sweep on a Dask distributed cluster.

The driver connects to a scheduler the user started (``dask scheduler``), whose workers
the user started with Dask's own tools (``dask worker``, ``dask cuda worker``,
dask-jobqueue on Slurm or PBS). A worker offers trial slots as a Dask *resource*
(``--resources vaegrid=K``); every trial asks for one unit of it, so Dask's scheduler
never runs more than K trials on a worker, and only workers that offer the resource get
trials. Dask moves the tasks; the study database keeps every bit of state (claims,
heartbeat, results), so nothing here is a scheduler, a queue or an RPC of vaegrid's own.

A worker killed mid-trial: Dask runs the task again on another worker, which takes the
trial over once the dead worker's lease has lapsed and continues from the last
checkpoint. Dask gives up after ``distributed.scheduler.allowed-failures`` deaths of one
task (``KilledWorker``), which the driver counts as a death of the trial.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from typing import Any

from vaegrid.errors import InputError, first_line
from vaegrid.run.pool import ANY_KIND, ClusterGone, Pool, Slot, Watch, WorkerDied

DASK_CONNECT_TIMEOUT_S = 10  # a Dask scheduler (a database: db/engine.CONNECT_TIMEOUT_S)
# One trial is sent ahead per this many slots: Dask gives it to a worker, where it waits
# for a slot and starts as one frees (a hand-over through the driver: 0.6-0.9 s at 100).
AHEAD_PER = 10


# --cluster: a Dask scheduler's TCP address (tls:// needs certificates vaegrid does not
# pass; ucx://, inproc:// and ws:// are not what a sweep's scheduler listens on).
ADDRESS = re.compile(r"tcp://(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")


def check_address(address: str) -> str:
    """``--cluster``'s value, refused in one line unless it is ``tcp://HOST:PORT``.

    Raises:
        InputError: naming what was given (cut to one line) and what is allowed.
    """
    found = ADDRESS.fullmatch(address)
    if found is None or not 1 <= int(found["port"]) <= 65535 or len(found["host"]) > 253:
        shown = repr(address[:200]) + (
            f"... ({len(address)} characters)" if len(address) > 200 else ""
        )
        from vaegrid.run.batch import SCHEDULERS

        raise InputError(
            f"--cluster: {shown} is not allowed; expected a batch scheduler ("
            f"{', '.join(SCHEDULERS)}: lowercase) or a Dask scheduler's address "
            "tcp://HOST:PORT (a host name of at most 253 characters, PORT 1 to 65535; "
            "`dask scheduler` prints it)"
        )
    return address


def _connect(address: str, resource: str) -> Any:
    """A Dask client of the scheduler at ``address``, or one line within
    :data:`DASK_CONNECT_TIMEOUT_S` seconds and a few more: a port that accepts and never
    answers (or answers HTTP, as Dask's dashboard does) keeps Dask's own handshake waiting
    for minutes, so the attempt runs in a thread of its own that the driver waits for at
    most that long, and whatever Dask says of it afterwards is dropped."""
    from distributed import Client

    found: dict[str, Any] = {}

    def attempt() -> None:
        try:
            found["client"] = Client(address, timeout=DASK_CONNECT_TIMEOUT_S, set_as_default=False)
        except BaseException as e:  # reported below, in one line
            found["error"] = e

    thread = threading.Thread(target=attempt, name="vaegrid-dask-connect", daemon=True)
    thread.start()
    thread.join(DASK_CONNECT_TIMEOUT_S + 5)
    if "client" in found:
        return found["client"]
    error = found.get("error")
    why = "no answer within 15 s" if error is None else f"{type(error).__name__}"
    if error is not None and str(error).strip():
        why += f": {first_line(error)}"
    raise InputError(
        f"--cluster: cannot reach a Dask scheduler at {address} ({why}); start one with "
        f"`dask scheduler` and workers with `dask worker {address} --resources {resource}=K`"
    )


class DaskExecutor:
    """Submits trials to a Dask scheduler; each asks for one unit of ``resource``."""

    watch = Watch.HEARTBEAT

    def __init__(self, address: str, resource: str = "vaegrid") -> None:
        """Connect to the scheduler at ``address`` (``tcp://HOST:8786``).

        Raises:
            InputError: the scheduler cannot be reached within 10 s.
        """
        self.address, self.resource = check_address(address), resource
        self.client = _connect(self.address, resource)
        self._results: dict[Any, Any] = {}  # a finished future's key -> its result

    def pool(self) -> Pool:
        """A pool of one device, "cluster", with a slot per unit of the resource offered.

        Raises:
            InputError: no worker offers the resource.
        """
        workers = self.client.scheduler_info()["workers"]
        slots = sum(int(w.get("resources", {}).get(self.resource, 0)) for w in workers.values())
        if slots == 0:
            self.close()
            raise InputError(
                f"--cluster: none of the {len(workers)} workers of {self.address} offers the "
                f"resource {self.resource!r}; start workers with "
                f"`dask worker {self.address} --resources {self.resource}=K` (K trials each)"
            )
        offering = sum(1 for w in workers.values() if w.get("resources", {}).get(self.resource))
        found = (
            f"{self.address}: {len(workers)} workers, {offering} of them offer "
            f"{slots} {self.resource!r} slots"
        )
        ahead = math.ceil(slots / AHEAD_PER)  # at least one
        return Pool(("cluster",), slots, 1, (ANY_KIND,), found, remedy="", ahead=ahead)

    def device(self, slot: Slot) -> str:
        return "auto"  # each worker has its own device: its GPU, if it has one

    def submit(self, slot: Slot, fn: Any, arg: Any) -> Any:
        return self.client.submit(fn, arg, resources={self.resource: 1}, pure=False)

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        # Polled: distributed.wait needs a process-wide default client, which a driver
        # that may hold other clients must not set.
        deadline = time.monotonic() + timeout
        while True:
            if self.client.status not in ("running", "connecting", "newly-created"):
                raise ClusterGone(f"the Dask scheduler at {self.address} is gone")
            done = [f for f in futures if f.done()]
            if any(f.status in ("cancelled", "lost") for f in done):
                # vaegrid never cancels a trial's future: the scheduler lost them
                raise ClusterGone(
                    f"the Dask scheduler at {self.address} is gone (it lost its tasks)"
                )
            if done or time.monotonic() >= deadline:
                self._gather(done)
                return done
            time.sleep(0.05)

    def _gather(self, done: list[Any]) -> None:
        """The results of the finished futures among ``done``, fetched together: one round
        trip for a turn's trials, not one each on the driver's path (28 % of its time at
        100 slots). Any trouble leaves them to :meth:`result`, one at a time, as before."""
        finished = [f for f in done if f.status == "finished" and f.key not in self._results]
        if len(finished) < 2:
            return
        with contextlib.suppress(Exception):
            values = self.client.gather(finished)
            self._results.update((f.key, v) for f, v in zip(finished, values, strict=True))

    def result(self, future: Any) -> Any:
        from distributed import KilledWorker

        if future.key in self._results:
            return self._results.pop(future.key)
        try:
            return future.result()
        except KilledWorker as e:  # Dask gave up after the task's workers died
            raise WorkerDied(str(e)) from e

    def reset(self, slot: Slot) -> None:
        pass  # Dask replaces dead workers' tasks itself

    def shutdown(self, kill: bool) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close(timeout=DASK_CONNECT_TIMEOUT_S)
