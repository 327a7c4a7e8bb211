"""``vaegrid new-model`` / ``new-dataset``: a package that installs with one pip line and
runs in a study as it is; a settings module that imports torch is named in a warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vaegrid.cli import main


def test_a_bad_or_taken_name_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("Toy", "linear", "9lives", "a-b"):
        assert main(["new-model", name, "--dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is not allowed" in err, name
    assert main(["new-model", "toy", "--dir", str(tmp_path)]) == 0
    assert main(["new-dataset", "toy", "--dir", str(tmp_path)]) == 2
    assert "exists already" in capsys.readouterr().err


def _vaegrid(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "vaegrid", *args], capture_output=True,
                          text=True, env=env, timeout=600, check=False)  # fmt: skip


@pytest.mark.slow
def test_the_packages_install_with_one_pip_line_and_run_in_a_study_as_they_are(
    tmp_path: Path, mnist_root: Path
) -> None:
    assert main(["new-model", "toy", "--dir", str(tmp_path)]) == 0
    assert main(["new-dataset", "squares", "--dir", str(tmp_path)]) == 0
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
           "--no-build-isolation", "--target", str(site),
           str(tmp_path / "toy"), str(tmp_path / "squares")]  # fmt: skip
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    quick = ["--set", "train.epochs=1", "--results", str(tmp_path / "r"), "--devices", "cpu"]
    done = _vaegrid(site, "run", str(tmp_path / "toy" / "study.toml"), *quick,
                    "--set", "data.limit=0", "--data-dir", str(mnist_root))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "toy-try: finished in" in done.stdout and "2 completed" in done.stdout
    assert "warning" not in done.stderr  # its settings import nothing
    done = _vaegrid(site, "run", str(tmp_path / "squares" / "study.toml"), *quick,
                    "--data-dir", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "squares-try: finished in" in done.stdout and "2 completed" in done.stdout
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(tmp_path / "toy" / "tests"), str(tmp_path / "squares" / "tests")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)},
        timeout=300, check=False,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout
    # a settings module that imports torch: every command says so, in one line
    settings = site / "toy" / "settings.py"
    settings.write_text("import torch\n" + settings.read_text())
    said = _vaegrid(site, "plan", str(tmp_path / "toy" / "study.toml"), "--devices", "cpu")
    assert said.returncode == 0
    warning = [line for line in said.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "toy (toy.settings:SETTINGS) import torch" in warning[0]
