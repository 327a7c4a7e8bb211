"""``run --cluster slurm``'s settings and refusals, without a Slurm: walltimes, GPUs, slots
a job, and every refusal in one line with nothing written or queued (a fake ``sbatch``
on PATH stands in where a submission must fail; test_slurm.py runs the real one)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import make_mnist

from vaegrid.cli import main
from vaegrid.run.batch import gpus_per_job, lifetime_args, walltime_seconds


@pytest.mark.parametrize(
    ("scheduler", "text", "seconds"),
    [
        ("slurm", "30", 1800),
        ("slurm", "30:15", 1815),
        ("slurm", "01:00:00", 3600),
        ("slurm", "2-00", 172800),
        ("slurm", "1-02:03", 93780),
        ("slurm", "1-02:03:04", 93784),
        ("slurm", "00:00:00", None),
        ("slurm", "1 hour", None),
        ("slurm", None, None),
        ("pbs", "01:00:00", 3600),
        ("pbs", "3600", None),  # PBS's bare seconds: not guessed
        ("sge", "00:30:00", 1800),
        ("oar", "2", None),  # OAR's bare hours: not guessed
        ("lsf", "00:30", 1800),  # dask-jobqueue's default for LSF: 30 min, not 30 s
        ("lsf", "04:00", 14400),
        ("lsf", "90", 5400),
        ("htcondor", "01:00:00", None),
    ],
)
def test_walltimes_read_as_each_scheduler_writes_them(
    scheduler: str, text: str | None, seconds: int | None
) -> None:
    assert walltime_seconds(text, scheduler) == seconds


def test_a_worker_retires_inside_its_walltime_whatever_the_stagger() -> None:
    for walltime in (60, 600, 3600, 86400):
        _, lifetime, _, stagger = lifetime_args(walltime)
        life, spread = float(lifetime.rstrip("s")), float(stagger.rstrip("s"))
        assert life + spread < walltime  # the latest retirement is before the limit
        assert life - spread >= walltime * 0.5  # and not much earlier than it needs


@pytest.mark.parametrize(
    ("directives", "gpus"),
    [
        (["--gres=gpu:1"], 1),
        (["--gres=gpu:2"], 2),
        (["--gres=gpu:a100:2"], 2),
        (["--gres=gpu:2080ti:1"], 1),
        (["--gres=gpu:3g.40gb:1"], 1),  # a MIG slice
        (["--gres=gpu:1g.5gb:7"], 7),
        (["--gres=gpu"], 1),
        (["--gres=tmpfs:10G,gpu:1"], 1),
        (["--gres", "gpu:2"], 2),
        (["--gpus=4"], 4),
        (["--gpus-per-node=a100:1"], 1),
        (["-G 2"], 2),
        (["-G2"], 2),
        (["-l select=1:ncpus=4:ngpus=1"], 1),  # PBS
        (["-l gpu=1"], 1),  # SGE
        (['-gpu "num=2:mode=shared"'], 2),  # LSF
        (["-gpu -"], 1),
        ({"request_gpus": "1"}, 1),  # HTCondor
        ({"request_memory": "4GB"}, 0),
        (["--mem=4G"], 0),
        (["--qos=gpu_low"], 0),
        (["--constraint=SKYLAKE-G2"], 0),
        (None, 0),
    ],
)
def test_gpus_are_counted_from_the_job_directives(directives: object, gpus: int) -> None:
    assert gpus_per_job(directives) == gpus


@pytest.fixture
def sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ``sbatch`` on PATH that refuses every job, and a record of its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "sbatch"
    fake.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n'
        "echo 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


@contextmanager
def settings(monkeypatch: pytest.MonkeyPatch, **values: str) -> Iterator[None]:
    """Dask's jobqueue.slurm.* set as environment variables (as a user would), then unset."""
    import dask

    for name, value in values.items():
        monkeypatch.setenv(f"DASK_JOBQUEUE__SLURM__{name}", value)
    dask.config.refresh()
    try:
        yield
    finally:
        for name in values:
            monkeypatch.delenv(f"DASK_JOBQUEUE__SLURM__{name}")
        dask.config.refresh()


def run_slurm(tmp: Path, *extra: str) -> int:
    study = tmp / "study.toml"
    study.write_text(
        'name = "jq"\n[data]\nlimit = 1000\n[train]\nepochs = 1\nbatch_size = 100\n'
        "[grid]\nhidden = [16]\nlatent = [4]\nlr = [1e-3]\nclip = [1.0]\n"
    )
    argv = ["run", str(study), "--results", str(tmp / "r"), "--data-dir", str(tmp / "data")]
    return main([*argv, "--cluster", "slurm", *extra])


def refused(tmp: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """The one line of a refused ``run --cluster slurm``; nothing was written."""
    assert run_slurm(tmp, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not (tmp / "r").exists() or not any((tmp / "r").rglob("*")), list(tmp.rglob("*"))
    return err


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({}, "jobqueue.slurm.cores and jobqueue.slurm.memory are not set"),
        ({"CORES": "2"}, "jobqueue.slurm.cores and jobqueue.slurm.memory are not set"),
        ({"CORES": "2", "MEMORY": "lots"}, "jobqueue.slurm.memory = 'lots' are not allowed"),
        ({"CORES": "2", "MEMORY": "[8]"}, "jobqueue.slurm.memory = [8] is not allowed"),
        ({"CORES": "0", "MEMORY": "4GB"}, "jobqueue.slurm.cores = 0 is not allowed"),
        ({"CORES": "'8'", "MEMORY": "4GB"}, "jobqueue.slurm.cores = '8' is not allowed"),
        ({"CORES": "2", "MEMORY": "4GB", "PROCESSES": "2"}, "processes = 2 is not allowed"),
        (
            {"CORES": "2", "MEMORY": "4GB", "WORKER_EXTRA_ARGS": "'--nthreads 2'"},
            "worker-extra-args = '--nthreads 2' is not allowed; expected a list of strings",
        ),
        (
            {"CORES": "2", "MEMORY": "4GB", "WORKER_EXTRA_ARGS": "['--memory-limit', 0]"},
            "expected a list of strings",
        ),
        (
            {"CORES": "2", "MEMORY": "4GB", "SCHEDULER_OPTIONS": "'x'"},
            "scheduler-options = 'x' is not allowed; expected a mapping",
        ),
        (
            {"CORES": "2", "MEMORY": "4GB", "JOB_EXTRA_DIRECTIVES": "5"},
            "job-extra-directives = 5 is not allowed",
        ),
        ({"CORES": "2", "MEMORY": "1GB"}, "holds no trial of this study"),
        (
            {"CORES": "2", "MEMORY": "4GB", "JOB_EXTRA_DIRECTIVES": '["--gres=gpu:2"]'},
            "ask for 2 GPUs a job",
        ),
        (
            {"CORES": "4", "MEMORY": "1GB", "JOB_EXTRA_DIRECTIVES": '["--gres=gpu:1"]'},
            "holds no trial of this study",
        ),
        (
            {"CORES": "2", "MEMORY": "4GB", "INTERFACE": "nonesuch0"},
            "dask-jobqueue refuses the job settings (jobqueue.slurm.*)",
        ),
    ],
)
def test_job_settings_that_cannot_run_are_refused_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sbatch: Path,
    given: dict[str, str],
    says: str,
) -> None:
    make_mnist(tmp_path / "data", n_train=1200, n_test=100)
    with settings(monkeypatch, **given):
        err = refused(tmp_path, capsys)
    assert says in err and err.startswith("vaegrid: error: --cluster slurm: "), err
    assert not sbatch.exists()  # nothing was submitted


def test_a_refused_submission_is_one_line_and_leaves_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sbatch: Path,
) -> None:
    make_mnist(tmp_path / "data", n_train=1200, n_test=100)
    with settings(monkeypatch, CORES="2", MEMORY="4GB"):
        err = refused(tmp_path, capsys)
    assert err == (
        "vaegrid: error: --cluster slurm: `sbatch` refused the first job: "
        "sbatch: error: invalid partition specified: nope"
    )
    assert len(sbatch.read_text().splitlines()) == 1  # one try, nothing queued


def test_a_run_refused_for_its_storage_submits_no_job(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sbatch: Path,
) -> None:
    make_mnist(tmp_path / "data", n_train=1200, n_test=100)
    with settings(monkeypatch, CORES="2", MEMORY="4GB"):
        err = refused(tmp_path, capsys, "--storage", "mysql://x@y/z")
    assert "--storage" in err, err
    assert not sbatch.exists()  # checked before any job is submitted


def test_no_sbatch_on_path_and_jobs_without_a_scheduler_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_mnist(tmp_path / "data", n_train=1200, n_test=100)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    err = refused(tmp_path, capsys)
    assert "no `sbatch` on PATH" in err, err
    argv = ["run", str(tmp_path / "study.toml"), "--results", str(tmp_path / "r")]
    assert main([*argv, "--jobs", "3"]) == 2
    assert "--jobs: only with --cluster slurm" in capsys.readouterr().err
    assert run_slurm(tmp_path, "--jobs", "0") == 2  # checked before anything else
    assert "--jobs: 0 is not allowed" in capsys.readouterr().err


def test_importing_dask_jobqueue_leaves_ctrl_c_to_vaegrid() -> None:
    # dask-jobqueue 0.9.0 sets SIGINT to sys.exit() when imported: a Ctrl-C ended the
    # driver with exit 0 and no line (found by the Slurm test); in a fresh process, as
    # the driver imports it
    code = (
        "import signal\n"
        "def mine(*_): pass\n"
        "signal.signal(signal.SIGINT, mine)\n"
        "from vaegrid.run.jobqueue import import_dask_jobqueue\n"
        "import_dask_jobqueue()\n"
        "print(signal.getsignal(signal.SIGINT) is mine)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr


def test_the_private_dask_parts_vaegrid_uses_are_still_there() -> None:
    """run/dask_private.py names every private attribute of Dask vaegrid uses, read from
    the locked versions: an upgrade that moves one fails here, not in a sweep."""
    import importlib.metadata

    from dask_jobqueue import SLURMCluster
    from distributed.deploy.spec import SpecCluster

    from vaegrid.run import dask_private

    for dist, version in dask_private.VERSIONS.items():
        assert importlib.metadata.version(dist) == version, f"{dist}: re-read dask_private.py"
    assert callable(SpecCluster._correct_state)
    cluster = SLURMCluster(cores=1, memory="1GB", processes=1, scheduler_options={
        "dashboard_address": None}, job_name="t", log_directory="/tmp")  # fmt: skip
    try:
        assert callable(cluster._created.discard)  # a (weak) set of the jobs it made
        assert dask_private.job_template(cluster).worker_cores == 1
    finally:
        cluster.close()
