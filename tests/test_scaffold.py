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


def test_init_writes_every_example_study_keeps_edits_and_refuses_a_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vaegrid.study.load import load_study

    where = tmp_path / "mine"
    assert main(["init", str(where)]) == 0
    shipped = sorted(p.name for p in (Path(__file__).parents[1] / "studies").glob("*.toml"))
    assert sorted(p.name for p in where.iterdir()) == shipped and len(shipped) >= 5
    for path in where.iterdir():  # each one as it is: a study vaegrid accepts
        assert path.read_text() == (Path(__file__).parents[1] / "studies" / path.name).read_text()
        load_study(path)
    assert "next: vaegrid plan" in capsys.readouterr().out
    (where / "smoke.toml").write_text("# mine\n")  # a user's edit survives a second init
    (where / "seed.toml").unlink()
    assert main(["init", str(where)]) == 0
    out = capsys.readouterr().out
    assert (where / "smoke.toml").read_text() == "# mine\n" and (where / "seed.toml").exists()
    assert f"kept {where / 'smoke.toml'}" in out and "wrote 1 example studies" in out
    (tmp_path / "link").symlink_to(where)
    assert main(["init", str(tmp_path / "link")]) == 2
    assert "symbolic link" in capsys.readouterr().err


def test_the_wheel_lists_every_package_of_the_source_tree() -> None:
    """pyproject names the packages one by one (vaegrid.studies is studies/): a new
    subpackage left out of the list would be missing from the wheel."""
    import tomllib

    root = Path(__file__).parents[1]
    listed = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(p.parent.relative_to(root).parts) for p in (root / "vaegrid").rglob("__init__.py")
    }
    assert set(listed["packages"]) == on_disk | {"vaegrid.studies"}
    assert listed["package-dir"] == {"vaegrid.studies": "studies"}
