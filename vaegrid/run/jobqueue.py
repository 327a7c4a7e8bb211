"""The batch-scheduler executor: the sweep on Slurm (PBS, SGE, LSF, HTCondor, OAR) jobs.

``vaegrid run STUDY --cluster slurm --jobs N`` starts a dask-jobqueue cluster itself: the
Dask scheduler runs in the driver's process, and every Dask worker is a batch job that
dask-jobqueue submits with the scheduler's own command (``sbatch``). Everything else is
the Dask executor's (:mod:`vaegrid.run.cluster`): a trial asks for one unit of the
``vaegrid`` resource, and the study database holds every bit of state.

What vaegrid owns here, and nothing else (the job settings are Dask's configuration,
``jobqueue.<scheduler>.*``, exactly as dask-jobqueue users keep them):

- **slots**: each job's worker offers ``vaegrid=K``: K = the job's cores (one torch
  thread a trial), fewer if the job's memory holds fewer trials; 1 on a GPU job;
- **names and logs**: jobs are named ``vaegrid-<study>``; their logs go to the study
  folder's ``jobs/``;
- **pay only for what runs**: an adaptive policy whose target is the trials submitted
  and not finished (``ceil(pending / K)``, at most N jobs); a job whose worker runs no
  trial is closed after :data:`IDLE_CHECKS` checks :data:`INTERVAL_S` apart, never one
  that runs a trial;
- **walltime**: a worker retires before its job's walltime (Dask's ``--lifetime`` and
  ``--lifetime-stagger``, set from the walltime unless the configuration sets them), and
  the adaptive policy asks for a replacement; a trial cut short continues from its last
  finished epoch in another job (the Dask executor's contract);
- **nothing left behind**: closing the executor cancels every job (``scancel``); if the
  driver is killed, each worker ends itself after Dask's ``death-timeout`` without its
  scheduler (``jobqueue.<scheduler>.death-timeout``, 60 s by default).
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
from pathlib import Path
from typing import Any

from vaegrid.errors import InputError
from vaegrid.layout import StudyLayout
from vaegrid.run import dask_private
from vaegrid.run.batch import (
    SCHEDULERS,
    command_error,
    gpus_per_job,
    lifetime_args,
    walltime_seconds,
)
from vaegrid.run.cluster import DASK_CONNECT_TIMEOUT_S, DaskExecutor
from vaegrid.run.pool import ANY_KIND, WORKER_MEMORY_MB, ClusterGone, Pool
from vaegrid.safeio import check_study_dir, missing

RESOURCE = "vaegrid"
INTERVAL_S = 2.0  # the adaptive policy's period
IDLE_CHECKS = 3  # checks in a row a job must be idle (or not needed) before it is closed
SUBMIT_S = 120.0  # the first job's submission answers within this, or the run is refused
REFUSALS = 5  # submissions refused in a row, with no job left, that end a sweep (exit 3)


async def _submit(cluster: Any, n: int | None = None) -> str | None:
    """Grow ``cluster`` to ``n`` jobs (``None``: submit what its plan lacks, as a job
    that ended is replaced) and await the submissions; returns why one failed (None: none
    did).

    dask-jobqueue's own ``scale`` submits in a callback that only logs a refused
    ``sbatch``, and keeps the failed job in its plan, so that a sweep would wait forever
    for it: here the submission is awaited, and a failed job leaves the plan (the next
    adaptive check tries again)."""
    while n is not None and len(cluster.worker_spec) < n:
        cluster.worker_spec.update(cluster.new_worker_spec())
    try:
        await dask_private.submit_plan(cluster)
    except Exception as e:
        for name, job in list(cluster.workers.items()):
            if getattr(job, "job_id", "") is None:  # started, never submitted
                _forget(cluster, name)
        return command_error(e)
    return None


def _forget(cluster: Any, name: str) -> None:
    """Take the job ``name`` out of the cluster's plan, as failed: the next adaptive check
    submits a new one if the target still wants it, and closing the cluster does not wait
    for it (dask's SpecCluster asserts its jobs have closed or failed)."""
    from distributed.core import Status

    job = cluster.workers.pop(name, None)
    if job is not None:
        job.status = Status.failed  # a Dask job's lifecycle, not a trial's status
        dask_private.forget_job(cluster, job)
    cluster.worker_spec.pop(name, None)


# The jobs of one name still in the queue (pending or running), one id a line: a job whose
# worker never connected and that is not listed ended before its worker started (a broken
# job-script-prologue, a node without the environment). Other schedulers: not checked.
QUEUE_COMMANDS = {"slurm": ["squeue", "--me", "--noheader", "--format=%i", "--name"]}
CHECK_QUEUE_EVERY = 3  # adaptive checks (6 s)


async def _vanished(cluster: Any, scheduler: str, job_name: str) -> list[tuple[str, str]]:
    """(name, job id) of the jobs whose worker never connected and that left the queue."""
    import asyncio

    command = QUEUE_COMMANDS.get(scheduler)
    observed = set(cluster.observed)
    waiting = {
        name: str(job.job_id)
        for name, job in cluster.workers.items()
        if name not in observed and getattr(job, "job_id", None)
    }
    if command is None or not waiting:
        return []
    try:
        process = await asyncio.create_subprocess_exec(
            *command, job_name, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await asyncio.wait_for(process.communicate(), 30)
    except (OSError, TimeoutError):
        return []  # asked again at the next check
    if process.returncode != 0:
        return []
    queued = set(out.decode(errors="replace").split())
    observed = set(cluster.observed)  # a worker that connected meanwhile did start
    return [(n, i) for n, i in waiting.items() if i not in queued and n not in observed]


def import_dask_jobqueue() -> Any:
    """``dask_jobqueue``, imported without its side effect: its ``runner`` module sets
    SIGINT to ``sys.exit()`` for the whole process on import (dask-jobqueue 0.9.0), so
    that a Ctrl-C would end the driver with exit 0, its running trials unmarked. vaegrid's
    own handler is put back."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        import dask_jobqueue
    finally:
        if main and signal.getsignal(signal.SIGINT) is not previous:
            signal.signal(signal.SIGINT, previous)
    return dask_jobqueue


def _adaptive_class() -> Any:
    from distributed.deploy import Adaptive

    class TrialAdaptive(Adaptive):
        """Dask's adaptive loop with vaegrid's target: the trials submitted and not
        finished, K to a job; it closes only jobs whose worker runs no trial."""

        pending: Any = staticmethod(lambda: 0)  # set by the executor
        per_job = 1
        failure: str | None = None  # why the last submission failed, if it did
        refusals = 0  # submissions refused in a row
        scheduler_kind, job_name = "", ""  # set by the executor
        checks = 0
        stillborn = 0  # jobs in a row that ended before their worker connected
        last_stillborn = ""  # the last one's job id

        async def _submitted(self, n: int | None) -> None:
            self.failure = await _submit(self.cluster, n)
            self.refusals = 0 if self.failure is None else self.refusals + 1

        async def scale_up(self, n: int) -> None:  # type: ignore[override]
            await self._submitted(n)

        async def recommendations(self, target: int) -> dict[str, Any]:
            self.checks += 1
            if self.observed:
                self.stillborn = 0
            if self.checks % CHECK_QUEUE_EVERY == 0:
                cluster: Any = self.cluster
                gone = await _vanished(cluster, self.scheduler_kind, self.job_name)
                for name, job_id in gone:  # out of the plan: the next check replaces it
                    _forget(cluster, name)
                    self.stillborn += 1
                    self.last_stillborn = job_id
            if len(self.plan) != len(self.requested):  # a job ended: its replacement
                await self._submitted(None)
            return await super().recommendations(target)

        async def target(self) -> int:
            return min(int(self.maximum), math.ceil(self.pending() / self.per_job))

        async def workers_to_close(self, target: int) -> list[str]:
            # Dask closes jobs still in the queue first; of those that run, only idle
            # ones, and no more than the target leaves over
            spare = len(self.plan) - target
            spare -= min(spare, len(self.requested - self.observed))
            workers = self.cluster.scheduler.workers.values()  # type: ignore[attr-defined]
            idle = [w.name for w in workers if not w.processing and w.status.name == "running"]
            return idle[: max(0, spare)]

    return TrialAdaptive


class JobQueueExecutor(DaskExecutor):
    """A dask-jobqueue cluster of up to ``jobs`` batch jobs, started and ended here."""

    def __init__(
        self,
        scheduler: str,
        results: Path,
        study_name: str,
        jobs: int,
        trial_mb: float,
    ) -> None:
        """Start the Dask scheduler and submit the first job (it proves the settings).

        Raises:
            InputError: an unknown scheduler, no submit command on PATH, settings that
                dask-jobqueue refuses or that hold no trial, or a failed submission;
                nothing is left queued and the study folder is as it was.
        """
        cls_name, submit = SCHEDULERS[scheduler]
        where = f"--cluster {scheduler}"
        if shutil.which(submit) is None:
            raise InputError(
                f"{where}: no `{submit}` on PATH; run vaegrid where {scheduler}'s commands "
                "are (a login node, or a job of its own)"
            )
        try:
            import dask

            dask_jobqueue = import_dask_jobqueue()
        except ImportError as e:
            raise InputError(f"{where}: needs dask-jobqueue ({e}); install vaegrid[cluster]") from e
        layout = StudyLayout.of(results, study_name)
        check_study_dir(results, layout.root)
        self.made = missing(layout.jobs)  # a refusal removes them again
        self.system = scheduler
        self.cluster: Any = None
        self.client: Any = None
        self.adaptive: Any = None
        key = f"jobqueue.{scheduler}"
        # each setting through dask.config.get, which takes "worker_extra_args" (as an
        # environment variable writes it) and "worker-extra-args" (as YAML does) alike
        names = ("cores", "memory", "processes", "walltime", "worker-extra-args",
                 "job-extra-directives", "scheduler-options")  # fmt: skip
        conf = {n: dask.config.get(f"{key}.{n}", default=None) for n in names}
        self._check_types(key, conf)
        self.per_job, self.gpus = self._slots(key, conf, trial_mb)
        self.walltime = conf.get("walltime")
        self.walltime_s = walltime_seconds(self.walltime, scheduler)
        extra = self._worker_args(conf)
        options = dict(conf.get("scheduler-options") or {})
        options.setdefault("dashboard_address", ":0")  # any free port: never a clash
        self.job_name = "vaegrid-" + re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)[:64]
        self.address = f"{scheduler} jobs named {self.job_name}"
        self.resource = RESOURCE
        self.jobs = jobs
        self.pending: set[Any] = set()
        self._results: dict[Any, Any] = {}  # as DaskExecutor's: results gathered a turn at once
        try:
            self.cluster = getattr(dask_jobqueue, cls_name)(
                processes=1,
                job_name=self.job_name,
                log_directory=str(layout.jobs),
                worker_extra_args=extra,
                scheduler_options=options,
            )
        except BaseException as e:  # dask-jobqueue refuses a setting: ValueError, TypeError...
            self._undo()
            if not isinstance(e, Exception):  # Ctrl-C
                raise
            raise InputError(
                f"{where}: dask-jobqueue refuses the job settings ({key}.*): {command_error(e)}"
            ) from e
        self.logs = layout.jobs
        try:
            self._first_job(where)
            self._adapt()
        except BaseException:
            self.close()
            self._undo()
            raise

    def _worker_args(self, conf: dict[str, Any]) -> list[str]:
        """A job's worker's arguments: the configuration's, its slots as the resource, and a
        lifetime before the walltime (unless the configuration sets one)."""
        extra = list(conf.get("worker-extra-args") or [])
        extra += ["--resources", f"{RESOURCE}={self.per_job}"]
        if self.walltime_s is not None and not any(a.startswith("--lifetime") for a in extra):
            extra += lifetime_args(self.walltime_s)
        return extra

    def _adapt(self) -> None:
        """Connect, and let the adaptive policy keep the jobs the submitted trials need."""
        from distributed import Client

        self.client = Client(self.cluster, set_as_default=False)
        adaptive = self.cluster.adapt(
            Adaptive=_adaptive_class(), minimum=0, maximum=self.jobs,
            interval=f"{INTERVAL_S}s", wait_count=IDLE_CHECKS,
        )  # fmt: skip
        adaptive.pending = lambda: len(self.pending)
        adaptive.per_job = self.per_job
        adaptive.scheduler_kind, adaptive.job_name = self.system, self.job_name
        self.adaptive = adaptive

    def _check_types(self, key: str, conf: dict[str, Any]) -> None:
        """Each setting vaegrid reads has the type dask-jobqueue expects, or one line."""
        strings = (
            lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
            "a list of strings",
        )
        allowed: dict[str, tuple[Any, str]] = {
            "cores": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
            "memory": (
                lambda v: isinstance(v, str | int) and not isinstance(v, bool),
                "a size such as '16GB'",
            ),
            "processes": (lambda v: v == 1 and not isinstance(v, bool), "1"),
            "walltime": (lambda v: isinstance(v, str | int) and not isinstance(v, bool), "text"),
            "worker-extra-args": strings,
            "job-extra-directives": (
                (lambda v: isinstance(v, dict), "a mapping of submit-file keys")
                if self.system == "htcondor"
                else strings
            ),
            "scheduler-options": (lambda v: isinstance(v, dict), "a mapping"),
        }
        for name, (ok, expected) in allowed.items():
            value = conf.get(name)
            if value is not None and not ok(value):
                shown = repr(value)[:100]
                if name == "processes":
                    expected = "1 (one worker process a job, a trial slot per core)"
                raise InputError(
                    f"--cluster {self.system}: {key}.{name} = {shown} is not allowed; "
                    f"expected {expected}"
                )

    def _slots(self, key: str, conf: dict[str, Any], trial_mb: float) -> tuple[int, int]:
        """(K trials a job, GPUs a job) from the job's cores, memory and directives."""
        from dask.utils import parse_bytes

        cores, memory = conf.get("cores"), conf.get("memory")
        if cores is None or memory is None:
            raise InputError(
                f"--cluster {self.system}: {key}.cores and {key}.memory are not set; set "
                f"both in ~/.config/dask/jobqueue.yaml or as DASK_{key.upper().replace('.', '__')}"
                "__CORES=4 and ...__MEMORY=16GB (a job's cores and memory)"
            )
        try:
            n_cores, n_bytes = int(cores), parse_bytes(memory)
        except (TypeError, ValueError) as e:
            raise InputError(
                f"--cluster {self.system}: {key}.cores = {cores!r}, {key}.memory = "
                f"{memory!r} are not allowed ({command_error(e)}); expected e.g. 4 and '16GB'"
            ) from e
        if not 1 <= n_cores <= 4096:
            raise InputError(
                f"--cluster {self.system}: {key}.cores = {cores!r} is not allowed; "
                "expected an integer 1 to 4096"
            )
        gpus = gpus_per_job(conf.get("job-extra-directives"))
        if gpus > 1:
            raise InputError(
                f"--cluster {self.system}: {key}.job-extra-directives ask for {gpus} GPUs "
                "a job; vaegrid runs one trial a GPU, a job a GPU: ask for one "
                "(--gres=gpu:1) and more jobs with --jobs"
            )
        room = int((n_bytes / 2**20 - WORKER_MEMORY_MB) // max(trial_mb, 1.0))
        per_job = min(1 if gpus else n_cores, room)
        if per_job < 1:
            raise InputError(
                f"--cluster {self.system}: {key}.memory = {memory!r} holds no trial of "
                f"this study (a trial needs about {trial_mb:.0f} MB beside the worker's "
                f"{WORKER_MEMORY_MB} MB); ask for more memory a job"
            )
        return per_job, gpus

    def _first_job(self, where: str) -> None:
        """Submit one job now and wait for its submission: a refused one (a wrong
        partition, account or limit) is one line before anything is written."""
        _, submit = SCHEDULERS[self.system]
        try:
            failure = self.cluster.sync(_submit, self.cluster, 1, callback_timeout=SUBMIT_S)
        except TimeoutError as e:
            raise InputError(
                f"{where}: `{submit}` did not answer within {SUBMIT_S:.0f} s; is the "
                f"{self.system} controller up?"
            ) from e
        if failure is not None:
            raise InputError(f"{where}: `{submit}` refused the first job: {failure}")

    def _undo(self) -> None:
        """Remove the folders this executor made, if they are still empty."""
        for folder in self.made:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty

    def pool(self) -> Pool:
        template = dask_private.job_template(self.cluster)
        cores = int(template.worker_cores)
        kind = "1 GPU" if self.gpus else f"{cores} core{'s' if cores > 1 else ''}"
        walltime = f", walltime {self.walltime}" if self.walltime else ""
        found = (
            f"{self.system}: up to {self.jobs} jobs named {self.job_name} ({kind}{walltime}), "
            f"{self.per_job} trial{'s' if self.per_job > 1 else ''} each; "
            f"logs in {Path(template.log_directory)}"
        )
        return Pool(("cluster",), self.jobs * self.per_job, 1, (ANY_KIND,), found, remedy="")

    def submit(self, slot: Any, fn: Any, arg: Any) -> Any:
        future = super().submit(slot, fn, arg)
        self.pending.add(future)
        return future

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        """As the Dask executor's; a scheduler that refuses every job ends the sweep
        (exit 3) rather than leave it waiting for workers that never come."""
        adaptive = self.adaptive
        refused = adaptive.refusals >= REFUSALS and adaptive.failure is not None
        if refused and not self.cluster.workers:
            _, submit = SCHEDULERS[self.system]
            raise ClusterGone(f"`{submit}` refused a job ({adaptive.failure})")
        if adaptive.stillborn >= REFUSALS and not adaptive.observed:
            log = self.logs / f"{self.job_name}-{adaptive.last_stillborn}.err"
            raise ClusterGone(
                f"{adaptive.stillborn} jobs in a row ended before their Dask worker started "
                f"(the last one's output: {log})",
                f"fix what it says (the job settings, jobqueue.{self.system}.*: "
                "worker-extra-args, death-timeout...), then run the same command again",
            )
        return super().wait(futures, timeout)

    def result(self, future: Any) -> Any:
        self.pending.discard(future)
        return super().result(future)

    def close(self) -> None:
        """Cancel every job of this cluster (``scancel``) and stop its scheduler."""
        self.pending.clear()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=DASK_CONNECT_TIMEOUT_S)
            self.client = None
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=60)
            self.cluster = None
