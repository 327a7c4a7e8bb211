"""The batch schedulers vaegrid submits jobs to, and what it reads of their job settings:
the command that submits a job, the GPUs a job asks for, its walltime (in seconds, and the
worker's lifetime before it), and the line of a failed command that says why. Pure: no
Dask, no subprocess."""

from __future__ import annotations

import re
from typing import Any

from vaegrid.errors import first_line

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


def gpus_per_job(directives: Any) -> int:
    """The GPUs a job asks for in its extra directives, read as the schedulers read them.

    Slurm's ``--gres=gpu[:type][:N]`` (one item of a comma list; a last field of digits
    is the count, as Slurm reads it), ``--gpus[-per-node|-per-task]=[type:]N`` and
    ``-G N``; PBS's ``ngpus=N``; SGE's ``-l gpu=N``; LSF's ``-gpu "num=N"`` (1 without
    ``num``); HTCondor's ``request_gpus``.
    """
    if isinstance(directives, dict):  # HTCondor: submit-file keys
        value = {str(k).lower(): v for k, v in directives.items()}.get("request_gpus")
        return int(str(value)) if str(value).isdigit() else 0
    tokens: list[str] = []
    for directive in directives or []:
        tokens += str(directive).replace('"', " ").replace("'", " ").split()
    gpus = 0
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        option, _, value = token.partition("=")
        if option in ("--gres", "--gpus", "--gpus-per-node", "--gpus-per-task", "-G"):
            value = value or following
        elif token.startswith("-G") and token[2:].isdigit():
            option, value = "-G", token[2:]
        if option == "--gres":
            for item in value.split(","):
                fields = item.split(":")
                if fields[0] == "gpu":
                    gpus += int(fields[-1]) if len(fields) > 1 and fields[-1].isdigit() else 1
        elif option in ("--gpus", "--gpus-per-node", "--gpus-per-task", "-G"):
            count = value.split(":")[-1]
            gpus += int(count) if count.isdigit() else 1
        elif token == "-gpu":  # LSF
            found = re.search(r"(?:^|:)num=(\d+)", following)
            gpus += int(found[1]) if found else 1
        else:
            for found in re.finditer(r"(?:^|[:,])n?gpus?=(\d+)", token):  # PBS, SGE
                gpus += int(found[1])
    return gpus


def is_scheduler(name: str) -> bool:
    """Whether ``--cluster NAME`` names a batch scheduler (else it is a Dask address)."""
    return name in SCHEDULERS


def walltime_seconds(value: Any, scheduler: str = "slurm") -> int | None:
    """A job walltime in seconds as ``scheduler`` reads it; ``None`` for none, or a form
    this does not know for sure (then vaegrid sets no lifetime: the workers run until
    the scheduler ends their jobs, and their trials continue in others).

    Slurm: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``. PBS, SGE
    and OAR: ``HH:MM:SS``. LSF: ``[HH:]MM``. HTCondor has none."""
    if value is None or isinstance(value, bool) or scheduler == "htcondor":
        return None
    text = str(value).strip()
    if scheduler == "lsf":
        found = re.fullmatch(r"(?:(\d{1,6}):)?(\d{1,6})", text)
        if found is None:
            return None
        seconds = int(found[1] or 0) * 3600 + int(found[2]) * 60
        return seconds or None
    if scheduler != "slurm":
        found = re.fullmatch(r"(\d{1,6}):(\d{1,2}):(\d{1,2})", text)
        if found is None:
            return None
        seconds = int(found[1]) * 3600 + int(found[2]) * 60 + int(found[3])
        return seconds or None
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


def command_error(error: BaseException) -> str:
    """What a refusal quotes of an error: its most telling line, at most 300 characters.

    dask-jobqueue's failed command reads ``Command exited ...`` then the command's
    stdout and stderr: the first line of stderr says why."""
    text = str(error)
    if "stderr:" in text:
        tail = [line.strip() for line in text.split("stderr:", 1)[1].splitlines()]
        text = next((line for line in tail if line), text)
    return first_line(text, 300) or type(error).__name__
