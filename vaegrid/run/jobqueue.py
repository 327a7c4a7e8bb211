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
from vaegrid.run.cluster import CONNECT_TIMEOUT_S, DaskExecutor
from vaegrid.run.pool import ANY_KIND, ClusterGone, Pool
from vaegrid.safeio import check_study_dir, missing

RESOURCE = "vaegrid"
INTERVAL_S = 2.0  # the adaptive policy's period
IDLE_CHECKS = 3  # checks in a row a job must be idle (or not needed) before it is closed
WORKER_MB = 1400  # a Dask worker with torch imported, before any trial
MAX_JOBS = 10_000
DEFAULT_JOBS = 4  # --jobs

# --cluster NAME -> (dask_jobqueue class, the command that submits a job)
SCHEDULERS = {
    "slurm": ("SLURMCluster", "sbatch"),
    "pbs": ("PBSCluster", "qsub"),
    "sge": ("SGECluster", "qsub"),
    "lsf": ("LSFCluster", "bsub"),
    "htcondor": ("HTCondorCluster", "condor_submit"),
    "oar": ("OARCluster", "oarsub"),
}

# A GPU asked for in a job directive: Slurm's --gres=gpu[:type]:N, --gpus[-per-*]=[type:]N,
# -G N; PBS's ngpus=N. One GPU per job: a job is vaegrid's unit of a GPU.
_GPUS = re.compile(
    r"(?:--gres[= ](?:\S*,)?gpu(?::(?!\d+(?:\D|$))[A-Za-z0-9_.-]+)?(?::(?P<a>\d+))?"
    r"|--gpus(?:-per-[a-z]+)?[= ](?:[A-Za-z0-9_.-]+:)?(?P<b>\d+)"
    r"|-G\s*(?P<c>\d+)|ngpus=(?P<d>\d+))"
)


def is_scheduler(name: str) -> bool:
    """Whether ``--cluster NAME`` names a batch scheduler (else it is a Dask address)."""
    return name in SCHEDULERS


def walltime_seconds(value: Any) -> int | None:
    """A job walltime in seconds: Slurm's ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``,
    ``D-HH:MM``, ``D-HH:MM:SS`` (PBS, SGE, LSF and OAR write ``HH:MM:SS`` or ``HH:MM``
    likewise); ``None`` for none or a form this does not know (then no lifetime is set)."""
    if value is None:
        return None
    text = str(value).strip()
    found = re.fullmatch(r"(?:(\d{1,4})-)?(\d{1,6})(?::(\d{1,2}))?(?::(\d{1,2}))?", text)
    if found is None:
        return None
    days, a, b, c = found.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hms = parts + [0] * (3 - len(parts))
        seconds = int(days) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
    elif len(parts) == 1:  # MM
        seconds = parts[0] * 60
    elif len(parts) == 2:  # MM:SS
        seconds = parts[0] * 60 + parts[1]
    else:  # HH:MM:SS
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    return seconds if seconds > 0 else None


def lifetime_args(walltime_s: int) -> list[str]:
    """Dask's worker lifetime for a job of ``walltime_s``: it retires between 1.5 and 0.5
    margins before the walltime, margin = 10% of it, 10 s to 5 min."""
    margin = min(max(walltime_s * 0.1, 10.0), 300.0)
    lifetime = max(walltime_s - margin, 1.0)
    return ["--lifetime", f"{lifetime:.0f}s", "--lifetime-stagger", f"{margin / 2:.0f}s"]


def _first_line(error: BaseException) -> str:
    """What a refusal quotes of an error: its most telling line, at most 300 characters.

    dask-jobqueue's failed command reads ``Command exited ...`` then the command's
    stdout and stderr: the first line of stderr says why."""
    text = str(error)
    if "stderr:" in text:
        tail = [line.strip() for line in text.split("stderr:", 1)[1].splitlines()]
        text = next((line for line in tail if line), text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]


async def _submit(cluster: Any, n: int) -> str | None:
    """Grow ``cluster`` to ``n`` jobs now; returns why a submission failed (None: none did).

    dask-jobqueue's own ``scale`` submits in a callback that only logs a refused
    ``sbatch``, and keeps the failed job in its plan, so that a sweep would wait forever
    for it: here the submission is awaited, and a failed job leaves the plan (the next
    adaptive step tries again)."""
    while len(cluster.worker_spec) < n:
        cluster.worker_spec.update(cluster.new_worker_spec())
    try:
        await cluster._correct_state()
    except Exception as e:
        for name, job in list(cluster.workers.items()):
            if getattr(job, "job_id", "") is None:  # started, never submitted
                cluster.workers.pop(name, None)
                cluster.worker_spec.pop(name, None)
        return _first_line(e)
    return None


def _adaptive_class() -> Any:
    from distributed.deploy import Adaptive

    class TrialAdaptive(Adaptive):
        """Dask's adaptive loop with vaegrid's target: the trials submitted and not
        finished, K to a job; it closes only jobs whose worker runs no trial."""

        pending: Any = staticmethod(lambda: 0)  # set by the executor
        per_job = 1
        failure: str | None = None  # why the last submission failed, if it did

        async def scale_up(self, n: int) -> None:  # type: ignore[override]
            self.failure = await _submit(self.cluster, n)

        async def target(self) -> int:
            return min(int(self.maximum), math.ceil(self.pending() / self.per_job))

        async def workers_to_close(self, target: int) -> list[str]:
            workers = self.cluster.scheduler.workers.values()  # type: ignore[attr-defined]
            idle = [w.name for w in workers if not w.processing]
            return idle[: max(0, len(self.plan) - target)]

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
        if not 1 <= jobs <= MAX_JOBS:
            raise InputError(f"--jobs: {jobs} is not allowed; expected an integer 1 to {MAX_JOBS}")
        cls_name, submit = SCHEDULERS[scheduler]
        where = f"--cluster {scheduler}"
        if shutil.which(submit) is None:
            raise InputError(
                f"{where}: no `{submit}` on PATH; run vaegrid where {scheduler}'s commands "
                "are (a login node, or a job of its own)"
            )
        try:
            import dask
            import dask_jobqueue
        except ImportError as e:
            raise InputError(f"{where}: needs dask-jobqueue ({e}); install vaegrid[cluster]") from e
        layout = StudyLayout.of(results, study_name)
        check_study_dir(results, layout.root)
        self.made = missing(layout.jobs)  # a refusal removes them again
        self.scheduler = scheduler
        self.cluster: Any = None
        self.client: Any = None
        self.adaptive: Any = None
        key = f"jobqueue.{scheduler}"
        # each setting through dask.config.get, which takes "worker_extra_args" (as an
        # environment variable writes it) and "worker-extra-args" (as YAML does) alike
        names = ("cores", "memory", "processes", "walltime", "worker-extra-args",
                 "job-extra-directives", "scheduler-options")  # fmt: skip
        conf = {n: dask.config.get(f"{key}.{n}", default=None) for n in names}
        self.per_job, self.gpus = self._slots(key, conf, trial_mb)
        extra = list(conf.get("worker-extra-args") or [])
        extra += ["--resources", f"{RESOURCE}={self.per_job}"]
        self.walltime = conf.get("walltime")
        self.walltime_s = walltime_seconds(self.walltime)
        if self.walltime_s is not None and not any(a.startswith("--lifetime") for a in extra):
            extra += lifetime_args(self.walltime_s)
        options = dict(conf.get("scheduler-options") or {})
        options.setdefault("dashboard_address", ":0")  # any free port: never a clash
        self.job_name = "vaegrid-" + re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)[:64]
        self.address = f"{scheduler} jobs named {self.job_name}"
        self.resource = RESOURCE
        self.jobs = jobs
        self.pending: set[Any] = set()
        try:
            self.cluster = getattr(dask_jobqueue, cls_name)(
                processes=1,
                job_name=self.job_name,
                log_directory=str(layout.jobs),
                worker_extra_args=extra,
                scheduler_options=options,
            )
        except Exception as e:  # dask-jobqueue refuses a setting: ValueError, TypeError...
            self._undo()
            raise InputError(
                f"{where}: dask-jobqueue refuses the job settings ({key}.*): {_first_line(e)}"
            ) from e
        try:
            self._first_job(where)
            from distributed import Client

            self.client = Client(self.cluster, set_as_default=False)
            adaptive = self.cluster.adapt(
                Adaptive=_adaptive_class(), minimum=0, maximum=jobs,
                interval=f"{INTERVAL_S}s", wait_count=IDLE_CHECKS,
            )  # fmt: skip
            adaptive.pending = lambda: len(self.pending)
            adaptive.per_job = self.per_job
            self.adaptive = adaptive
        except BaseException:
            self.close()
            self._undo()
            raise

    def _slots(self, key: str, conf: dict[str, Any], trial_mb: float) -> tuple[int, int]:
        """(K trials a job, GPUs a job) from the job's cores, memory and directives."""
        from dask.utils import parse_bytes

        cores, memory = conf.get("cores"), conf.get("memory")
        if cores is None or memory is None:
            raise InputError(
                f"--cluster {self.scheduler}: {key}.cores and {key}.memory are not set; set "
                f"both in ~/.config/dask/jobqueue.yaml or as DASK_{key.upper().replace('.', '__')}"
                "__CORES=4 and ...__MEMORY=16GB (a job's cores and memory)"
            )
        if conf.get("processes") not in (None, 1):
            raise InputError(
                f"--cluster {self.scheduler}: {key}.processes = {conf['processes']!r} is not "
                "allowed; vaegrid runs one worker process a job, with a trial slot per core"
            )
        try:
            n_cores, n_bytes = int(cores), parse_bytes(memory)
        except (TypeError, ValueError) as e:
            raise InputError(
                f"--cluster {self.scheduler}: {key}.cores = {cores!r}, {key}.memory = "
                f"{memory!r} are not allowed ({_first_line(e)}); expected e.g. 4 and '16GB'"
            ) from e
        if not 1 <= n_cores <= 4096:
            raise InputError(
                f"--cluster {self.scheduler}: {key}.cores = {cores!r} is not allowed; "
                "expected an integer 1 to 4096"
            )
        directives = " ".join(str(d) for d in conf.get("job-extra-directives") or [])
        gpus = 0
        for found in _GPUS.finditer(directives):
            gpus += int(next((g for g in found.groups() if g is not None), "1"))
        if gpus > 1:
            raise InputError(
                f"--cluster {self.scheduler}: {key}.job-extra-directives ask for {gpus} GPUs "
                "a job; vaegrid runs one trial a GPU, a job a GPU: ask for one "
                "(--gres=gpu:1) and more jobs with --jobs"
            )
        room = int((n_bytes / 2**20 - WORKER_MB) // max(trial_mb, 1.0))
        per_job = 1 if gpus else min(n_cores, room)
        if per_job < 1:
            raise InputError(
                f"--cluster {self.scheduler}: {key}.memory = {memory!r} holds no trial of "
                f"this study (a trial needs about {trial_mb:.0f} MB beside the worker's "
                f"{WORKER_MB} MB); ask for more memory a job"
            )
        return per_job, gpus

    def _first_job(self, where: str) -> None:
        """Submit one job now and wait for its submission: a refused one (a wrong
        partition, account or limit) is one line before anything is written."""
        failure = self.cluster.sync(_submit, self.cluster, 1)
        if failure is not None:
            _, submit = SCHEDULERS[self.scheduler]
            raise InputError(f"{where}: `{submit}` refused the first job: {failure}")

    def _undo(self) -> None:
        """Remove the folders this executor made, if they are still empty."""
        for folder in self.made:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty

    def pool(self) -> Pool:
        cores = int(self.cluster._dummy_job.worker_cores)
        kind = "1 GPU" if self.gpus else f"{cores} core{'s' if cores > 1 else ''}"
        walltime = f", walltime {self.walltime}" if self.walltime else ""
        found = (
            f"{self.scheduler}: up to {self.jobs} jobs named {self.job_name} ({kind}{walltime}), "
            f"{self.per_job} trial{'s' if self.per_job > 1 else ''} each; "
            f"logs in {Path(self.cluster._dummy_job.log_directory)}"
        )
        return Pool(("cluster",), self.jobs * self.per_job, 1, (ANY_KIND,), found, remedy="")

    def submit(self, slot: Any, fn: Any, arg: Any) -> Any:
        future = super().submit(slot, fn, arg)
        self.pending.add(future)
        return future

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        """As the Dask executor's; a scheduler that refuses every job ends the sweep
        (exit 3) rather than leave it waiting for workers that never come."""
        if self.adaptive.failure is not None and not self.cluster.workers:
            _, submit = SCHEDULERS[self.scheduler]
            raise ClusterGone(f"`{submit}` refused a job ({self.adaptive.failure})")
        return super().wait(futures, timeout)

    def result(self, future: Any) -> Any:
        self.pending.discard(future)
        return super().result(future)

    def close(self) -> None:
        """Cancel every job of this cluster (``scancel``) and stop its scheduler."""
        self.pending.clear()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=CONNECT_TIMEOUT_S)
            self.client = None
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=60)
            self.cluster = None
