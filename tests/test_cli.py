"""The first hour's command line: plan says what a study will run and cost, ``--set``
changes a setting as if the study file said it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from vaegrid.cli import main


def test_plan_says_the_fixed_and_searched_settings_and_the_estimated_time(
    write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    study = write_study()
    assert main(["plan", str(study), "--devices", "cpu", "--workers-per-device", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "study tiny: 4 trials = 4 configs x 1 repeat"
    assert out[1].startswith("fixed: epochs 2, batch_size 50, optimizer adam, weight_decay 0")
    assert "momentum" not in out[1]  # SGD's, and the study trains with Adam
    assert out[2] == "searched: hidden [32], latent [4, 8], lr [0.01], clip [1, 0.5]"
    assert re.fullmatch(r"4 trials; estimated \d+ s if every trial runs all its epochs \(none "
                        r"diverges\) on cpu.* with 2 trials at once \(.*\)", out[-1])  # fmt: skip


def test_set_changes_a_setting_as_the_file_would_and_resuming_without_it_is_refused(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = write_study(epochs=1)
    argv = ["plan", str(study), "--devices", "cpu"]
    assert main([*argv, "--set", "train.epochs=3", "--set", "grid.latent=[2, 4, 8]"]) == 0
    out = capsys.readouterr().out
    assert "epochs 3," in out and "latent [2, 4, 8]" in out and "6 trials;" in out
    assert main([*argv, "--set", "data.binarize=dynamic"]) == 0  # a bare word: a string
    assert "searched:" in capsys.readouterr().out
    fixed = write_study(text="[train]\nlr = 1e-3\n", file="fixed.toml")
    assert main(["plan", str(fixed), "--devices", "cpu", "--set", "grid.lr=[1e-3, 1e-2]"]) == 0
    assert "lr [0.001, 0.01]" in capsys.readouterr().out  # moved from [train] to [grid]
    bad = {
        "train.epochs": "expected section.key=value or key=value",
        "a.b.c=1": "expected section.key=value or key=value",
        "train.epochs=[1,": "the value is not TOML",
        "seed.x=1": "seed is a value, not a section",
        "train.epochs=0": "with --set train.epochs=0: train.epochs = 0 is not allowed",
        "train.colour=1": "train.colour",
    }
    for item, message in bad.items():
        assert main([*argv, "--set", item]) == 2, item
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (item, err)
    run = ["run", str(study), "--results", str(tmp_path / "r"), "--data-dir", str(mnist_root),
           "--devices", "cpu", "--no-progress"]  # fmt: skip
    assert main([*run, "--set", "train.epochs=2"]) == 0
    capsys.readouterr()
    assert main(run) == 2  # the file alone says epochs 1: another study, refused in one line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.epochs: stored 2, study file 1" in err
    assert main([*run, "--set", "train.epochs=2"]) == 0  # the same --set resumes it
    assert "tiny: nothing to do: 4/4 done" in capsys.readouterr().out


def test_the_wheel_declares_every_file_of_the_package_that_is_not_python() -> None:
    import tomllib

    root = Path(__file__).parent.parent
    declared = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    data = {
        p.relative_to(root).as_posix()
        for p in (root / "vaegrid").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    shipped = {f"{pkg.replace('.', '/')}/{name}" for pkg, names in declared.items()
               for name in names}  # fmt: skip
    assert data and data <= shipped, data - shipped  # driver.sbatch: users run it


def test_a_fixed_setting_the_file_now_searches_is_said_in_words_not_null(
    write_study: Callable[..., Path],
    tmp_path: Path,
    mnist_root: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from conftest import TINY_STUDY, synced_study_db

    base = TINY_STUDY.format(name="tiny", epochs=1)
    synced_study_db(
        write_study(base.replace("[grid]", "beta = 2.0\n[grid]")), tmp_path / "r" / "tiny"
    )
    searched = write_study(base + "beta = [1.0, 2.0]\n")
    argv = ["run", str(searched), "--results", str(tmp_path / "r"), "--data-dir", str(mnist_root)]
    assert main([*argv, "--devices", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "train.beta: stored 2.0, study file does not fix it (searched, or the default)" in err
    assert "null" not in err and err.count("\n") == 1


def test_a_signal_that_a_library_wraps_in_another_exception_is_still_one_line_and_143(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM while a lazy import builds a class: Python wraps the handler's exception
    raised in ``__set_name__`` in a RuntimeError (3.11), which must not become a traceback
    and exit 1. Any other exception, with no signal received, still propagates."""
    import signal

    from vaegrid import cli, signals

    class Field:
        def __set_name__(self, owner: type, name: str) -> None:
            signals._handler(signal.SIGTERM, None)  # the signal lands here, as in CI

    def importing(args: object) -> int:
        type("Range", (), {"bounds": Field()})
        return 0

    monkeypatch.setattr(cli, "_dispatch", importing)
    assert main(["status", "nowhere"]) == 143
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("vaegrid: interrupted (SIGTERM)"), err

    def broken(args: object) -> int:
        raise RuntimeError("a bug, not a signal")

    monkeypatch.setattr(cli, "_dispatch", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["status", "nowhere"])

    def swallowed_then_broken(args: object) -> int:
        import contextlib

        with contextlib.suppress(BaseException):  # a library that swallows everything
            signals._handler(signal.SIGINT, None)
        return 1 // 0  # a bug after it: not hidden as "interrupted"

    monkeypatch.setattr(cli, "_dispatch", swallowed_then_broken)
    try:
        with pytest.raises(ZeroDivisionError):
            main(["status", "nowhere"])
    finally:
        signals.reset()  # the signal stays recorded: the next test in this process is not stopped


def test_a_reader_that_closes_the_pipe_ends_plan_quietly_with_exit_0(
    write_study: Callable[..., Path],
) -> None:
    """``vaegrid plan study.toml | head -c 10``: no traceback, exit 0."""
    import subprocess
    import sys

    study = write_study()
    plan = f"{sys.executable} -m vaegrid plan {study} --devices cpu"
    cmd = f"{plan} 2>&1 | head -c 10; exit ${{PIPESTATUS[0]}}"
    said = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert said.returncode == 0 and "Traceback" not in said.stdout + said.stderr, said
