"""Nothing outside --results, no symbolic link followed, filesystem faults in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import synced_study_db

from vaegrid.cli import main
from vaegrid.db.store import Store
from vaegrid.errors import InputError
from vaegrid.safeio import check_study_dir, mount_type, open_fd, write_atomic
from vaegrid.study.core import expand
from vaegrid.study.load import load_study


def run(study: Path, results: Path, data: Path) -> int:
    argv = ["run", str(study), "--results", str(results), "--data-dir", str(data)]
    return main([*argv, "--devices", "cpu", "--no-progress"])


def one_line(capsys: pytest.CaptureFixture[str], *expected: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for text in expected:
        assert text in err, err


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the results folder that a planted link points at."""
    path = tmp_path / "precious.txt"
    path.write_text("do not touch\n")
    return path


def test_a_planted_driver_lock_link_is_refused_and_its_target_untouched(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    victim: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study_dir = tmp_path / "r" / "tiny"
    study_dir.mkdir(parents=True)
    (study_dir / "driver.lock").symlink_to(victim)
    assert run(write_study(), tmp_path / "r", mnist_root) == 2
    one_line(capsys, "driver.lock: is a symbolic link")
    assert victim.read_text() == "do not touch\n"
    assert sorted(p.name for p in study_dir.iterdir()) == ["driver.lock"]
    # and the lock itself opens without following one, should a link appear after the check
    with pytest.raises(InputError, match="is a symbolic link"):
        open_fd(study_dir / "driver.lock", os.O_RDWR | os.O_CREAT)
    assert victim.read_text() == "do not touch\n"


@pytest.mark.parametrize("name", ["checkpoint.pt", "log.txt", "weights.pt", "config.json"])
def test_a_link_in_a_trial_folder_is_refused_before_anything_runs(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    victim: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    path = write_study()
    key = expand(load_study(path))[0].key
    folder = tmp_path / "r" / "tiny" / "trials" / key
    folder.mkdir(parents=True)
    (folder / name).symlink_to(victim)
    assert run(path, tmp_path / "r", mnist_root) == 2
    one_line(capsys, f"{key}/{name}: is a symbolic link")
    assert victim.read_text() == "do not touch\n"
    assert not (tmp_path / "r" / "tiny" / "study.db").exists()


def test_a_study_folder_that_is_a_link_out_of_results_is_refused(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "tiny").symlink_to(elsewhere)
    assert run(write_study(), tmp_path / "r", mnist_root) == 2
    one_line(capsys, "tiny: is a symbolic link")
    assert list(elsewhere.iterdir()) == []
    with pytest.raises(InputError, match="resolves outside --results"):
        check_study_dir(tmp_path / "r", tmp_path / "r" / ".." / "elsewhere")


def test_filesystem_misfits_are_one_line_and_exit_2(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = write_study()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert run(study, a_file, mnist_root) == 2
    one_line(capsys, f"--results: {a_file} is not a folder")
    assert run(study, Path("/proc/self/vaegrid-results"), mnist_root) == 2
    one_line(capsys, "is on a proc filesystem")
    assert not Path("/proc/self/vaegrid-results").exists()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "tiny").write_text("a file where the study folder goes")
    assert run(study, tmp_path / "r", mnist_root) == 2
    one_line(capsys, "tiny: is a file, not a study folder")
    (tmp_path / "r" / "tiny").unlink()
    (tmp_path / "r" / "tiny" / "driver.lock").mkdir(parents=True)
    assert run(study, tmp_path / "r", mnist_root) == 2
    one_line(capsys, "driver.lock: is a folder, expected a file")
    assert sorted(p.name for p in (tmp_path / "r" / "tiny").iterdir()) == ["driver.lock"]
    assert mount_type(tmp_path) not in ("", "proc")


def test_report_refuses_a_link_among_its_outputs(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    victim: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study_dir = tmp_path / "r" / "tiny"
    synced_study_db(write_study(), study_dir)
    (study_dir / "ranking.csv").symlink_to(victim)
    assert main(["report", str(study_dir), "--data-dir", str(mnist_root)]) == 2
    one_line(capsys, "ranking.csv: is a symbolic link")
    assert victim.read_text() == "do not touch\n"


def test_atomic_writes_replace_a_link_and_never_write_through_it(
    tmp_path: Path, victim: Path
) -> None:
    (tmp_path / "out.csv").symlink_to(victim)
    (tmp_path / "out.csv.tmp").symlink_to(victim)  # a planted temporary file too
    write_atomic(tmp_path / "out.csv", "new\n")
    assert victim.read_text() == "do not touch\n"
    assert not (tmp_path / "out.csv").is_symlink()
    assert (tmp_path / "out.csv").read_text() == "new\n"
    assert (tmp_path / "out.csv.tmp").is_symlink()  # never used: each write has its own name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.csv.tmp", "precious.txt"]


def test_two_writers_of_one_file_never_collide(tmp_path: Path) -> None:
    import threading

    errors: list[BaseException] = []

    def write(text: str) -> None:
        try:
            for _ in range(300):
                write_atomic(tmp_path / "out.csv", text * 1000)
        except BaseException as e:
            errors.append(e)

    writers = [threading.Thread(target=write, args=(t,)) for t in ("a", "b")]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert errors == []
    assert (tmp_path / "out.csv").read_text() in ("a" * 1000, "b" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temporary file left


def _immutable(path: Path, on: bool) -> bool:
    """chattr +i / -i: not even root may write the file or folder (False if unsupported)."""
    if shutil.which("chattr") is None:
        return False
    flag = "+i" if on else "-i"
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_unwritable_results_and_read_only_database_are_one_line_and_exit_2(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = write_study()
    results = tmp_path / "r"
    results.mkdir()
    if not _immutable(results, True):
        pytest.skip("chattr +i is not supported here")
    try:
        assert run(study, results, mnist_root) == 2
        one_line(capsys, "tiny: cannot create folder (Operation not permitted)")
    finally:
        _immutable(results, False)
    assert list(results.iterdir()) == []
    loaded = load_study(study)
    (results / "tiny").mkdir()
    store = Store(results / "tiny" / "study.db")
    store.sync_study(loaded, expand(loaded), 1)
    store.close()
    db = results / "tiny" / "study.db"
    before = db.read_bytes()
    _immutable(db, True)
    try:
        assert run(study, results, mnist_root) == 2
        one_line(capsys, "study.db: cannot write the study database")
    finally:
        _immutable(db, False)
    assert db.read_bytes() == before


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail a test that blocks (a FIFO opened for reading waits for a writer forever)."""
    import signal

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("blocked for 20 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_fifo_anywhere_vaegrid_reads_is_refused_never_waited_on(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    deadline: None,
) -> None:
    fifo = tmp_path / "study.toml.fifo"
    os.mkfifo(fifo)
    assert main(["plan", str(fifo)]) == 2
    one_line(capsys, "not a regular file")
    study = write_study()
    study_dir = tmp_path / "r" / "tiny"
    synced_study_db(study, study_dir)
    os.mkfifo(study_dir / "driver.lock")
    assert main(["status", str(study_dir)]) == 2
    one_line(capsys, "driver.lock: is not a regular file")
    (study_dir / "driver.lock").unlink()
    key = expand(load_study(study))[0].key
    (study_dir / "trials" / key).mkdir(parents=True)
    for name in ("checkpoint.pt", "log.txt", "config.json"):
        os.mkfifo(study_dir / "trials" / key / name)
        before = sorted(p.name for p in study_dir.rglob("*"))
        argv = ["run", str(study), "--results", str(tmp_path / "r"), "--devices", "cpu"]
        assert main([*argv, "--data-dir", str(mnist_root)]) == 2
        one_line(capsys, f"{name}: is not a regular file")
        assert sorted(p.name for p in study_dir.rglob("*")) == before
        (study_dir / "trials" / key / name).unlink()
    with pytest.raises(InputError, match="is not a regular file"):
        os.mkfifo(tmp_path / "pipe")
        open_fd(tmp_path / "pipe", os.O_WRONLY | os.O_CREAT)


def test_report_refuses_a_taken_output_path_before_computing_anything(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from conftest import run_inline

    assert run_inline(write_study(), tmp_path / "r", mnist_root) == 0
    study_dir = tmp_path / "r" / "tiny"
    argv = ["report", str(study_dir), "--data-dir", str(mnist_root), "--nll-samples", "5"]
    (study_dir / "report.md").mkdir()
    assert main(argv) == 2
    one_line(capsys, "report.md: is a folder; the report writes a file there")
    (study_dir / "report.md").rmdir()
    (study_dir / "figures").write_text("a file where the figures go")
    assert main(argv) == 2
    one_line(capsys, "figures: is not a folder; the report draws its figures there")
    assert not (study_dir / "ranking.csv").exists()
    store = Store.reader(study_dir / "study.db")
    try:
        assert store.frame("vg_test").empty  # no winner was tested
    finally:
        store.close()
    assert main([*argv[:4], "--device", "tpu:0"]) == 2
    one_line(capsys, "--device: 'tpu:0' is not a device here")


def test_a_run_refused_under_its_lock_leaves_no_folder_and_no_lock(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object) -> None:
        raise InputError("refused under the lock")

    monkeypatch.setattr(Store, "sync_study", refuse)
    argv = ["run", str(write_study()), "--results", str(tmp_path / "r"), "--devices", "cpu"]
    assert main([*argv, "--data-dir", str(mnist_root)]) == 2
    one_line(capsys, "refused under the lock")
    assert not (tmp_path / "r").exists()  # nor the results folder it had made


def test_second_hostile_pass_refusals(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each a case the second hostile pass found: one line, exit 2, nothing written."""
    import sqlite3

    import numpy as np
    import torch
    from conftest import make_mnist, run_inline, write_idx

    study = write_study()
    run = ["run", str(study), "--devices", "cpu", "--data-dir", str(mnist_root)]
    # Another tool's SQLite file holding only a view, or versioned by it: not a study's.
    for setup in ("CREATE VIEW v AS SELECT 1", "PRAGMA user_version = 7"):
        other = tmp_path / f"other{len(setup)}.db"
        with sqlite3.connect(other) as con:
            con.execute(setup)
        before = other.read_bytes()
        assert (
            main([*run, "--results", str(tmp_path / "r0"), "--storage", f"sqlite:///{other}"]) == 2
        )
        one_line(capsys, "not a vaegrid study database")
        assert other.read_bytes() == before
    # An IDX header claiming more images than the data set has (a sparse file fits it).
    data = make_mnist(tmp_path / "big")
    raw = data / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((10_001, 28, 28), dtype=np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(10_001, dtype=np.uint8))
    assert main([*run[:-1], str(data), "--results", str(tmp_path / "r1")]) == 2
    one_line(capsys, "10001 images, expected at most 10000")
    # A trial's checkpoint copied over its final weights.
    assert run_inline(study, tmp_path / "r", mnist_root) == 0
    study_dir = tmp_path / "r" / "tiny"
    import vaegrid

    key = str(vaegrid.load(tmp_path / "r", "tiny").trials["key"].iloc[0])  # the best: tested
    weights = study_dir / "trials" / key / "weights.pt"
    state = torch.load(weights, weights_only=True)
    state.pop("file")  # what a checkpoint holds: identity, model, optimizer, history
    torch.save({**state, "optimizer": {}, "history": []}, weights)
    argv = ["report", str(study_dir), "--data-dir", str(mnist_root), "--nll-samples", "5"]
    assert main(argv) == 2
    one_line(capsys, "a checkpoint, not a trial's final weights")
    # A schema version that lies (1 on a version-2 database) is migrated again, harmlessly.
    with sqlite3.connect(study_dir / "study.db") as con:
        con.execute("UPDATE vg_meta SET value = '1' WHERE name = 'schema_version'")
    Store(study_dir / "study.db").close()
    # --resource names a Dask resource; report on a file says what it is, not --results.
    assert main([*run, "--results", str(tmp_path / "r2"), "--cluster", "tcp://h:1",
                 "--resource", ""]) == 2  # fmt: skip
    one_line(capsys, "--resource: '' is not allowed")
    (tmp_path / "afile").write_text("x")
    assert main(["report", str(tmp_path / "afile" / "tiny")]) == 2
    err = capsys.readouterr().err
    assert "--results" not in err and err.count("\n") == 1, err
    assert not any((tmp_path / d).exists() for d in ("r0", "r1", "r2"))
