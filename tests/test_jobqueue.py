"""``run --cluster slurm``'s settings and refusals, without a Slurm: walltimes, GPUs, slots
a job, and every refusal in one line with nothing written or queued (a fake ``sbatch``
on PATH stands in where a submission must fail; test_slurm.py runs the real one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vaegrid.cli import main
from vaegrid.run.jobqueue import _GPUS, lifetime_args, walltime_seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 1800),
        ("30:15", 1815),
        ("01:00:00", 3600),
        ("2-00", 172800),
        ("1-02:03", 93780),
        ("1-02:03:04", 93784),
        ("00:00:00", None),
        ("1 hour", None),
        (None, None),
    ],
)
def test_walltimes_read_as_slurm_writes_them(text: str | None, seconds: int | None) -> None:
    assert walltime_seconds(text) == seconds


def test_a_worker_retires_inside_its_walltime_whatever_the_stagger() -> None:
    for walltime in (60, 600, 3600, 86400):
        _, lifetime, _, stagger = lifetime_args(walltime)
        life, spread = float(lifetime.rstrip("s")), float(stagger.rstrip("s"))
        assert life + spread < walltime  # the latest retirement is before the limit
        assert life - spread >= walltime * 0.5  # and not much earlier than it needs


@pytest.mark.parametrize(
    ("directive", "gpus"),
    [
        ("--gres=gpu:1", 1),
        ("--gres=gpu:2", 2),
        ("--gres=gpu:a100:2", 2),
        ("--gres=gpu", 1),
        ("--gpus=4", 4),
        ("--gpus-per-node=a100:1", 1),
        ("-G 2", 2),
        ("-l select=1:ngpus=1", 1),
        ("--mem=4G", 0),
        ("--qos=gpu_low", 0),
    ],
)
def test_gpus_are_counted_from_the_job_directives(directive: str, gpus: int) -> None:
    found = [next((g for g in m.groups() if g), "1") for m in _GPUS.finditer(directive)]
    assert sum(int(g) for g in found) == gpus


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
    ("settings", "says"),
    [
        ({}, "jobqueue.slurm.cores and jobqueue.slurm.memory are not set"),
        ({"CORES": "2"}, "jobqueue.slurm.cores and jobqueue.slurm.memory are not set"),
        ({"CORES": "2", "MEMORY": "lots"}, "jobqueue.slurm.memory = 'lots' are not allowed"),
        ({"CORES": "0", "MEMORY": "4GB"}, "jobqueue.slurm.cores = 0 is not allowed"),
        ({"CORES": "2", "MEMORY": "4GB", "PROCESSES": "2"}, "processes = 2 is not allowed"),
        ({"CORES": "2", "MEMORY": "1GB"}, "holds no trial of this study"),
        (
            {"CORES": "2", "MEMORY": "4GB", "JOB_EXTRA_DIRECTIVES": '["--gres=gpu:2"]'},
            "ask for 2 GPUs a job",
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
    settings: dict[str, str],
    says: str,
) -> None:
    from conftest import make_mnist

    make_mnist(tmp_path / "data", n_train=1200, n_test=100)
    for name, value in settings.items():
        monkeypatch.setenv(f"DASK_JOBQUEUE__SLURM__{name}", value)
    import dask

    dask.config.refresh()
    try:
        err = refused(tmp_path, capsys)
    finally:
        for name in settings:
            monkeypatch.delenv(f"DASK_JOBQUEUE__SLURM__{name}")
        dask.config.refresh()
    assert says in err and err.startswith("vaegrid: error: --cluster slurm: "), err
    assert not sbatch.exists()  # nothing was submitted


def test_a_refused_submission_is_one_line_and_leaves_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sbatch: Path,
) -> None:
    from conftest import make_mnist

    make_mnist(tmp_path / "data", n_train=1200, n_test=100)
    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__CORES", "2")
    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__MEMORY", "4GB")
    import dask

    dask.config.refresh()
    try:
        err = refused(tmp_path, capsys)
    finally:
        monkeypatch.delenv("DASK_JOBQUEUE__SLURM__CORES")
        monkeypatch.delenv("DASK_JOBQUEUE__SLURM__MEMORY")
        dask.config.refresh()
    assert err == (
        "vaegrid: error: --cluster slurm: `sbatch` refused the first job: "
        "sbatch: error: invalid partition specified: nope"
    )
    assert len(sbatch.read_text().splitlines()) == 1  # one try, nothing queued


def test_no_sbatch_on_path_and_jobs_without_a_scheduler_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import make_mnist

    make_mnist(tmp_path / "data", n_train=1200, n_test=100)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    err = refused(tmp_path, capsys)
    assert "no `sbatch` on PATH" in err, err
    argv = ["run", str(tmp_path / "study.toml"), "--results", str(tmp_path / "r")]
    assert main([*argv, "--jobs", "3"]) == 2
    assert "--jobs: only with --cluster slurm" in capsys.readouterr().err
    assert run_slurm(tmp_path, "--jobs", "0") == 2  # checked before anything else
    assert "--jobs: 0 is not allowed" in capsys.readouterr().err
