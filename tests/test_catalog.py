"""The everyday verbs: ``vaegrid --version``, ``ls`` (the studies of a results folder or a
database) and ``rm`` (a study's folder and, on a server, its rows; refused while it runs)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_inline
from servers import have_postgres, postgres

import vaegrid
from vaegrid.cli import main
from vaegrid.layout import StudyLayout
from vaegrid.run.locks import DriverLock


def test_version_and_a_missing_command_say_it_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"vaegrid {vaegrid.__version__}\n"
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.count("vaegrid") == 2 and err.startswith("vaegrid: error: the following")  # once
    assert err.strip().endswith("see vaegrid --help") and err.count("\n") == 1
    assert main(["run"]) == 2
    assert "vaegrid: error: run: the following arguments are required: study" in (
        capsys.readouterr().err
    )


@pytest.fixture
def two(write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path) -> Path:
    """A results folder with two finished tiny studies, a and b."""
    for name in ("a", "b"):
        assert run_inline(write_study(name=name, epochs=1), tmp_path / "r", mnist_root) == 0
    return tmp_path / "r"


def test_ls_lists_each_study_with_its_progress_driver_and_last_activity(
    two: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (two / "not-a-study").mkdir()  # a folder without a study database is no study
    assert main(["ls", str(two)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["b", "a"]  # the latest activity first
    for line in lines:
        assert "4/4 done (4 completed, 0 diverged, 0 failed)" in line and "no driver" in line
        assert ("last activity " in line and " ago" in line) or "just now" in line
    with DriverLock.of(StudyLayout(two / "a")):  # a live driver shows
        assert main(["ls", str(two)]) == 0
        assert "a: 4/4 done" in capsys.readouterr().out
    assert main(["ls", str(tmp_path / "empty-nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["ls", str(tmp_path / "empty")]) == 0
    assert "no studies yet" in capsys.readouterr().out


def test_rm_asks_is_refused_while_a_driver_runs_and_removes_only_the_study(
    two: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = two / "a"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal: never asked, refused
    assert main(["rm", str(a)]) == 2
    err = capsys.readouterr().err
    assert "not removed; say --yes" in err and err.count("\n") == 1 and a.is_dir()
    with DriverLock.of(StudyLayout(a)):
        assert main(["rm", str(a), "--yes"]) == 2
        assert "another driver" in capsys.readouterr().err and a.is_dir()

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))  # asked, and said no
    assert main(["rm", str(a)]) == 2 and a.is_dir()
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    assert main(["rm", str(a)]) == 0
    assert "removed study a: 4 trials" in capsys.readouterr().out
    assert not a.exists() and (two / "b" / "study.db").is_file()  # only that study
    assert main(["rm", str(a), "--yes"]) == 2  # gone: one line
    assert "not a vaegrid study folder" in capsys.readouterr().err


def test_rm_never_removes_a_folder_that_is_not_the_studys_own(
    two: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = two / "b"
    url = f"sqlite:///{b / 'study.db'}"
    for folder in (two, two / "a"):  # the results folder, another study's: never
        assert main(["rm", str(folder), "--storage", url, "--yes"]) == 2
        err = capsys.readouterr().err
        assert "not the folder of study 'b'" in err and err.count("\n") == 1
    assert (two / "a" / "study.db").is_file() and (b / "study.db").is_file()
    (b / "notes.txt").write_text("mine")  # what vaegrid never writes: refused, kept
    assert main(["rm", str(b), "--yes"]) == 2
    assert "holds 'notes.txt', which vaegrid never writes" in capsys.readouterr().err
    assert (b / "notes.txt").read_text() == "mine"


@pytest.mark.slow
@pytest.mark.skipif(not have_postgres(), reason="needs PostgreSQL 15 (initdb, pg_ctl)")
def test_rm_on_postgresql_deletes_the_rows_and_the_same_study_runs_afresh(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import optuna

    study = write_study(epochs=1)
    with postgres() as url:
        argv = ["run", str(study), "--results", str(tmp_path / "r"), "--data-dir",
                str(mnist_root), "--devices", "cpu", "--no-progress", "--storage", url]  # fmt: skip
        assert main(argv) == 0
        capsys.readouterr()
        assert main(["ls", "--storage", url]) == 0
        assert capsys.readouterr().out.startswith("tiny: 4/4 done")
        assert main(["rm", str(tmp_path / "r" / "tiny"), "--storage", url, "--yes"]) == 0
        assert "and its rows in postgresql" in capsys.readouterr().out
        assert (
            optuna.get_all_study_names(storage=url.replace("postgresql", "postgresql+psycopg"))
            == []
        )
        assert not (tmp_path / "r" / "tiny").exists()
        assert main(argv) == 0  # the same study again: a fresh sweep, not "nothing to do"
        assert "tiny: finished in" in capsys.readouterr().out
