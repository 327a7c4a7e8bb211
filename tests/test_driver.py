from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from conftest import CHECKPOINT, CONFIG, WEIGHTS, InlineExecutor, make_mnist, run_inline

from vaegrid.cli import main
from vaegrid.db.schema import TrialDeviceRow
from vaegrid.db.store import Store
from vaegrid.errors import InputError
from vaegrid.layout import StudyLayout, TrialFiles, database_lock
from vaegrid.run.driver import run_study
from vaegrid.run.locks import DriverLock
from vaegrid.run.pool import CudaProbe, LocalExecutor, make_pool, memory_limit_mb
from vaegrid.study.core import TrialConfig, expand
from vaegrid.study.load import load_study
from vaegrid.train.data import load_splits
from vaegrid.train.trial import run_trial


def run_args(study: Path, results: Path, data: Path, *extra: str) -> list[str]:
    """``vaegrid run`` arguments for a study, results folder and data root."""
    return [
        "run",
        str(study),
        "--results",
        str(results),
        "--data-dir",
        str(data),
        "--no-progress",
        *(() if "--devices" in extra else ("--devices", "cpu")),
        *extra,
    ]


def run(study: Path, results: Path, data: Path, *extra: str) -> int:
    return main(run_args(study, results, data, *extra))


def metric_rows(db: Path) -> list[tuple[object, ...]]:
    store = Store.reader(db)
    try:
        frame = store.frame("vg_epoch").sort_values(["key", "epoch", "split"])
    finally:
        store.close()
    return list(
        frame[["key", "epoch", "split", "elbo", "recon", "kl"]].itertuples(index=False, name=None)
    )


def runs(db: Path) -> list[dict[str, object]]:
    store = Store.reader(db)
    try:
        return store.runs()
    finally:
        store.close()


def test_sweep_commits_every_epoch_and_optuna_reads_the_study(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = write_study()
    assert run(study, tmp_path / "r", mnist_root, "--workers-per-device", "2") == 0
    db = tmp_path / "r" / "tiny" / "study.db"
    rows = metric_rows(db)
    grid = expand(load_study(study))
    # every trial's every epoch, and the numbers are the trial's own: the same config run
    # here in-process, outside the pool, gives the same validation elbo per epoch
    assert [r[:3] for r in rows] == sorted(
        (cfg.key, e, split) for cfg in grid for e in (1, 2) for split in ("train", "val")
    )
    cfg = grid[1]
    splits = load_splits(mnist_root, cfg.data, cfg.seed, "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a CPU worker runs: a trial's numbers depend on it
    try:
        alone = run_trial(cfg, splits.train, splits.val, TrialFiles(tmp_path / "alone"))
    finally:
        torch.set_num_threads(threads)
    assert [r[3] for r in rows if r[0] == cfg.key and r[2] == "val"] == [
        h.val.elbo for h in alone.history
    ]
    df = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials_dataframe()
    assert len(df) == 4 and set(df["state"]) == {"COMPLETE"}
    assert {"params_hidden", "params_latent", "params_lr", "params_clip", "user_attrs_key"} <= set(
        df.columns
    )
    keys = {t.key for t in expand(load_study(study))}
    assert set(df["user_attrs_key"]) == keys
    trial = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials[0]
    val = {r[1]: r[3] for r in rows if r[0] == trial.user_attrs["key"] and r[2] == "val"}
    assert trial.intermediate_values == val and trial.value == val[2]
    for key in keys:  # a finished trial keeps its weights, not its resume checkpoint
        files = {p.name for p in (tmp_path / "r" / "tiny" / "trials" / key).iterdir()}
        assert {CONFIG, WEIGHTS} <= files and CHECKPOINT not in files
    devices, *lines, finished, then = capsys.readouterr().out.splitlines()  # a line per trial
    assert devices == "devices: cpu; 2 trials at once per device"
    # it ends with what it did, where the results are, and the next command
    ended = r"tiny: finished in \d+ s: 4/4 done \(4 completed, 0 diverged, 0 failed\), "
    assert re.fullmatch(ended + r"0 running, 0 waiting; results in .*/r/tiny", finished)
    assert then == f"next: vaegrid report {tmp_path / 'r' / 'tiny'}"
    assert sorted(line.split()[0] for line in lines) == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    # each line: the trial, and the share of the work done (counted, not trials) and time left
    line_re = re.compile(r"\[\d/4\] (\w{12}) \(.*\): completed; (\d+)% of the work done, "
                         r"(about .+ left|time left unknown yet)")  # fmt: skip
    said = [line_re.fullmatch(line) for line in lines]
    assert all(said) and {m[1] for m in said if m} == keys, lines
    shares = [int(m[2]) for m in said if m]
    assert shares == sorted(shares) and shares[-1] == 100 and shares[0] < 100
    assert lines[-1].endswith("100% of the work done, about 0 s left")
    assert main(["status", str(tmp_path / "r" / "tiny")]) == 0
    assert capsys.readouterr().out.startswith("tiny: 4/4 done (4 completed, 0 diverged, 0 failed)")
    # the same command again has nothing left to do, and says so
    assert run(study, tmp_path / "r", mnist_root) == 0
    assert len(runs(db)) == 4
    assert capsys.readouterr().out.splitlines()[-1] == (
        "tiny: nothing to do: 4/4 done (4 completed, 0 diverged, 0 failed), 0 running, 0 waiting"
    )


def test_second_driver_is_refused_naming_the_live_one(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with DriverLock.of(StudyLayout(tmp_path / "r" / "tiny")):
        assert run(write_study(), tmp_path / "r", mnist_root) == 2
    err = capsys.readouterr().err
    assert (
        f"another driver (pid {os.getpid()}) is running this study" in err and err.count("\n") == 1
    )
    assert not (tmp_path / "r" / "tiny" / "study.db").exists()


def test_one_driver_per_database_wherever_it_is_named_from(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = write_study()
    assert run_inline(study, tmp_path / "rA", mnist_root) == 0
    db = tmp_path / "rA" / "tiny" / "study.db"
    capsys.readouterr()
    # rA's driver lives (it holds its database's lock): a run into rB on rA's database
    with DriverLock(database_lock(db), "a study on this database"):
        other = ["--storage", f"sqlite:///{db}"]
        assert run(study, tmp_path / "rB", mnist_root, *other) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"another driver (pid {os.getpid()})" in err, err
        assert str(db) in err
        assert main(["status", str(tmp_path / "rA" / "tiny")]) == 0
        assert capsys.readouterr().out.strip().endswith(f"driver pid {os.getpid()}")
    assert not (tmp_path / "rB").exists()


def test_status_shows_running_trials_while_a_driver_lives(
    write_study: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = load_study(write_study(epochs=2))
    study_dir = tmp_path / "r" / "tiny"
    study_dir.mkdir(parents=True)
    store = Store(study_dir / "study.db")
    store.sync_study(study, expand(study), 2)
    cfg = expand(study)[0]
    store.start_trial(study, cfg)
    store.begin_run(cfg.key, "cpu", 4242, "cpu / torch 2", "host", {})
    store.close()
    with DriverLock.of(StudyLayout(study_dir)):
        assert main(["status", str(study_dir)]) == 0
    first, running = capsys.readouterr().out.splitlines()
    summary = "tiny: 0/4 done (0 completed, 0 diverged, 0 failed), 1 running, 3 waiting"
    assert (
        first == f"{summary}; 0% of the work done, time left unknown yet; driver pid {os.getpid()}"
    )
    assert (
        running
        == f"  running {cfg.key} (hidden 32, latent 4, lr 0.01, clip 1): epoch 0/2 done, on cpu"
    )
    assert main(["status", str(study_dir)]) == 0  # the driver is gone: nothing is running
    assert capsys.readouterr().out.endswith(
        "0 running, 4 waiting; 0% of the work done; no driver running\n"
    )
    assert main(["status", str(tmp_path)]) == 2
    assert "not a vaegrid study folder" in capsys.readouterr().err


def test_lock_of_a_killed_driver_is_taken_over(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from vaegrid.run.locks import DriverLock\n"
            "from vaegrid.layout import StudyLayout\n"
            f"with DriverLock.of(StudyLayout(Path({str(tmp_path)!r}))):\n"
            "    print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
    assert (
        DriverLock.holder(StudyLayout(tmp_path).driver_lock) == holder.pid
    )  # alive: it holds the lock
    with pytest.raises(InputError, match=f"another driver \\(pid {holder.pid}\\)"):
        DriverLock.of(StudyLayout(tmp_path)).__enter__()
    holder.kill()  # kill -9: no cleanup runs, the kernel drops its flock
    holder.wait()
    assert DriverLock.holder(StudyLayout(tmp_path).driver_lock) is None
    with DriverLock.of(StudyLayout(tmp_path)):
        assert DriverLock.holder(StudyLayout(tmp_path).driver_lock) == os.getpid()


def test_changed_fixed_setting_is_refused_and_nothing_written(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = load_study(write_study(epochs=2))
    db = tmp_path / "r" / "tiny" / "study.db"
    db.parent.mkdir(parents=True)
    store = Store(db)
    store.sync_study(study, expand(study), 1)
    store.close()
    before = {p.name: p.read_bytes() for p in db.parent.iterdir()}
    assert run(write_study(epochs=3), tmp_path / "r", mnist_root) == 2
    err = capsys.readouterr().err
    assert (
        "other fixed settings (train.epochs: stored 2, study file 3)" in err
        and err.count("\n") == 1
    )
    assert {p.name: p.read_bytes() for p in db.parent.iterdir()} == before


def test_grid_change_keeps_trials_by_key_and_adds_the_new_ones(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path
) -> None:
    assert run_inline(write_study(epochs=1), tmp_path / "r", mnist_root) == 0
    db = tmp_path / "r" / "tiny" / "study.db"
    first = metric_rows(db)
    wider = (
        write_study().read_text().replace("epochs = 2", "epochs = 1").replace("[4, 8]", "[8, 4, 2]")
    )
    assert run_inline(write_study(wider), tmp_path / "r", mnist_root) == 0
    assert len(runs(db)) == 6  # 4 old trials kept, 2 new ones run
    assert set(first) < set(metric_rows(db))


def test_a_grid_shrunk_to_one_value_of_an_axis_is_the_same_study(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A model dropped from a finished grid (the default left: no longer searched), or a
    searched axis fixed at one of its values, used to be refused as "other fixed settings":
    it is the same study, its trials kept; a new fixed value still is refused."""
    both = write_study().read_text().replace("epochs = 2", "epochs = 1")
    both = both.replace("[grid]", '[grid]\nmodel = ["linear", "mlp"]')
    assert run_inline(write_study(both), tmp_path / "r", mnist_root) == 0
    db = tmp_path / "r" / "tiny" / "study.db"
    assert len(runs(db)) == 8
    capsys.readouterr()
    linear = both.replace('model = ["linear", "mlp"]\n', "")  # the default: not searched
    fixed = linear.replace("latent = [4, 8]", "").replace("[train]", "[train]\nlatent = 8")
    for shrunk, left in ((linear, 4), (fixed, 2)):
        assert run(write_study(shrunk), tmp_path / "r", mnist_root) == 0
        assert f"nothing to do: {left}/{left} done" in capsys.readouterr().out
    assert len(runs(db)) == 8  # nothing ran again
    other = linear.replace("[train]", '[train]\nmodel = "mlp"\nbeta = 0.5')
    assert run(write_study(other), tmp_path / "r", mnist_root) == 2
    assert "train.beta: stored " in capsys.readouterr().err


def test_a_trial_that_raises_is_recorded_and_the_sweep_goes_on(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path
) -> None:
    study_path = write_study()
    a, b = expand(load_study(study_path))[:2]
    broken = tmp_path / "r" / "tiny" / "trials" / a.key
    broken.mkdir(parents=True)
    (broken / CONFIG).write_text(b.to_json())  # another trial's files: run_trial raises
    assert run_inline(study_path, tmp_path / "r", mnist_root) == 1
    db = tmp_path / "r" / "tiny" / "study.db"
    by_status = {r["key"]: r for r in runs(db)}
    assert by_status[a.key]["status"] == "failed"
    assert "Traceback" in str(by_status[a.key]["error"]) and "another trial's files" in str(
        by_status[a.key]["error"]
    )
    assert sum(r["status"] == "completed" for r in runs(db)) == 3
    assert "another trial's files" in (broken / "log.txt").read_text()  # the trial's own log too
    (broken / CONFIG).unlink()
    assert run_inline(study_path, tmp_path / "r", mnist_root) == 1  # failed trials stay failed...
    assert run_inline(study_path, tmp_path / "r", mnist_root, retry=True) == 0  # ...until retried
    df = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials_dataframe()
    assert sorted(df["state"]) == ["COMPLETE"] * 4 + ["FAIL"]


def test_a_fault_in_a_trials_bookkeeping_fails_only_that_trial(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path
) -> None:
    study_path = write_study()
    a = expand(load_study(study_path))[0]
    # its worker cannot even take the trial's lock: nothing of the run reaches the database
    (tmp_path / "r" / "tiny" / "trials" / a.key / ".lock").mkdir(parents=True)
    assert run_inline(study_path, tmp_path / "r", mnist_root, slots=2) == 1
    db = tmp_path / "r" / "tiny" / "study.db"
    store = Store.reader(db)
    try:
        status = {t.key: t.status for t in store.trials()}
        cause = store.frame("vg_trial").set_index("key").loc[a.key, "cause"]
    finally:
        store.close()
    assert status.pop(a.key) == "failed" and set(status.values()) == {"completed"}
    assert ".lock: is a folder, expected a file" in cause
    df = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials_dataframe()
    assert sorted(df["state"]) == ["COMPLETE"] * 3 + ["FAIL"]
    (tmp_path / "r" / "tiny" / "trials" / a.key / ".lock").rmdir()
    assert run_inline(study_path, tmp_path / "r", mnist_root, retry=True) == 0


def test_a_started_trial_continues_only_on_the_kind_of_device_it_started_on(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = load_study(write_study())
    a, *others = expand(study)
    study_dir = tmp_path / "r" / "tiny"
    study_dir.mkdir(parents=True)
    store = Store(study_dir / "study.db")
    store.sync_study(study, expand(study), 1)
    gpu = "NVIDIA H100 80GB HBM3 / torch 2.14.1"
    with store.session() as s:  # as if its first epoch had run on a GPU
        s.add(TrialDeviceRow(key=a.key, device_kind=gpu))
    store.close()
    executor = InlineExecutor()
    pool = make_pool("cpu", 1, probe=CudaProbe(reason="none here"))
    threads = torch.get_num_threads()
    try:
        code = run_study(study, tmp_path / "r", pool, mnist_root, False, False, executor=executor)
    finally:
        torch.set_num_threads(threads)
    assert code == 1
    ran = [TrialConfig.from_json(task.config).key for _, task in executor.submitted]
    assert sorted(ran) == sorted(c.key for c in others) and a.key not in ran
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"1 trials started on {gpu} and only continue on that kind of device; this pool has "
        f"{pool.kinds[0]}: run again with --devices naming such a device"
    )


def test_pool_defaults_to_one_thread_per_cpu_trial_and_rejects_bad_devices() -> None:
    none = CudaProbe(reason="torch (CUDA 13.0) sees no CUDA device")
    pool = make_pool("cpu", probe=none, cores=6, memory_mb=64_000)
    assert (pool.devices, pool.per_device, pool.threads, pool.slots) == (("cpu",), 6, 1, 6)
    auto = make_pool("auto", 3, probe=none, cores=6, memory_mb=64_000)
    assert (auto.devices, auto.slots) == (("cpu",), 3)
    assert auto.found == "cpu (torch (CUDA 13.0) sees no CUDA device)"  # says why no GPU
    two = CudaProbe(["NVIDIA H100", "NVIDIA H100"])
    gpus = make_pool("auto", probe=two, cores=16, memory_mb=64_000)
    assert (gpus.devices, gpus.per_device, gpus.threads) == (("cuda:0", "cuda:1"), 2, 4)
    assert gpus.found == "cuda:0 (NVIDIA H100), cuda:1 (NVIDIA H100)"
    assert gpus.kind("cuda:1").startswith("NVIDIA H100 / torch ")
    assert make_pool("cuda:1", probe=two, memory_mb=64_000).devices == ("cuda:1",)
    with pytest.raises(InputError, match=r"--devices: 'cuda:7' is not a device here; visible: cpu"):
        make_pool("cuda:7", probe=none)
    with pytest.raises(InputError, match="names a device twice"):
        make_pool("cpu,cpu")
    with pytest.raises(InputError, match=r"--workers-per-device: 0 is not allowed"):
        make_pool("cpu", 0)


def test_each_slot_has_its_own_worker_pinned_to_its_device() -> None:
    pool = make_pool("cpu,cuda:1", 1, probe=CudaProbe(["GPU A", "GPU B"]), memory_mb=64_000)
    executor = LocalExecutor(pool)
    try:  # os.getenv runs in the worker (os.environ.get would carry the driver's mapping)
        seen = {
            slot.device: executor.submit(slot, os.getenv, "CUDA_VISIBLE_DEVICES").result()
            for slot in pool.slot_list()
        }
        threads = executor.submit(pool.slot_list()[0], os.getenv, "OMP_NUM_THREADS").result()
    finally:
        executor.shutdown(kill=True)
    # a CPU worker sees no GPU; a CUDA worker sees only its own, so it never opens another
    assert seen == {"cpu": "", "cuda:1": "1"}
    assert threads == str(pool.threads)


def test_workers_per_device_respect_the_memory_the_process_may_use() -> None:
    # 1.4 GB a worker: 4 GB holds 2 of them, whatever the number of cores
    assert make_pool("cpu", cores=8, memory_mb=4_000).per_device == 2
    assert make_pool("cpu", cores=8, memory_mb=1_000).per_device == 1  # one always runs
    with pytest.raises(
        InputError, match=r"--workers-per-device: 10000 is not allowed; .*at most 17"
    ):
        make_pool("cpu", 10_000, cores=2, memory_mb=24_000)
    assert memory_limit_mb() > 0
    # a study whose trials need 2.6 GB each beyond the worker's own: 24 GB holds 6 workers
    assert make_pool("cpu", cores=8, memory_mb=24_000, trial_mb=2_600).per_device == 6
    with pytest.raises(InputError, match=r"4000 MB each: 1400 measured, 2600 for the study"):
        make_pool("cpu", 7, cores=8, memory_mb=24_000, trial_mb=2_600)
    two = CudaProbe(["GPU A"])  # on a GPU the trial's memory is the GPU's
    assert make_pool("cuda:0", 3, probe=two, memory_mb=24_000, trial_mb=2_600).per_device == 3


def test_missing_data_is_refused_before_anything_is_written(
    write_study: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torchvision.datasets

    monkeypatch.setattr(
        torchvision.datasets.MNIST, "download", lambda self: (_ for _ in ()).throw(OSError())
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(write_study(), tmp_path / "r", empty) == 2
    assert "MNIST not found in" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# -- slow: real driver processes -------------------------------------------------------------

BIG_STUDY = """
name = "big"
[data]
fractions = [0.8, 0.1, 0.1]
[train]
epochs = 6
batch_size = 50
[grid]
hidden = [256]
latent = [16]
lr = [1e-3]
clip = [1.0, 0.5, 0.25]
"""


@pytest.fixture(scope="module")
def big_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mnist(tmp_path_factory.mktemp("big"), n_train=6000, n_test=1000)


def driver(study: Path, results: Path, data: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "vaegrid", *run_args(study, results, data, *extra)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_kill_9_of_the_driver_then_resume_equals_an_uninterrupted_run(
    write_study: Callable[..., Path], big_root: Path, tmp_path: Path
) -> None:
    study = write_study(BIG_STUDY)
    whole = driver(study, tmp_path / "whole", big_root, "--workers-per-device", "2")
    assert whole.wait(timeout=300) == 0, whole.stderr.read() if whole.stderr else ""

    cut = driver(study, tmp_path / "cut", big_root, "--workers-per-device", "2")
    db = tmp_path / "cut" / "big" / "study.db"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a trial is half-way through
        time.sleep(0.2)
        if db.exists() and _max_epoch(db) >= 3:
            break
    os.kill(cut.pid, signal.SIGKILL)
    cut.wait()
    _, err = cut.communicate(timeout=30)  # whatever the dead driver's helpers printed
    assert b"leaked" not in err and b"Traceback" not in err, err
    workers = [int(str(r["worker"])) for r in runs(db)]
    deadline = time.time() + 10
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "orphan workers outlived their driver"
    interrupted = {r["key"] for r in runs(db) if r["status"] == "running"}
    assert interrupted, "the kill should have caught a trial mid-way"

    resumed = driver(study, tmp_path / "cut", big_root, "--workers-per-device", "2")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read() if resumed.stderr else ""
    assert metric_rows(db) == metric_rows(tmp_path / "whole" / "big" / "study.db")
    all_runs = runs(db)
    completed_first = {
        r["key"] for r in all_runs if r["status"] == "completed" and r["key"] not in interrupted
    }
    for key in completed_first:  # no completed trial ran again
        assert sum(r["key"] == key for r in all_runs) == 1
    for key in interrupted:  # interrupted ones continued from their last finished epoch
        log = (tmp_path / "cut" / "big" / "trials" / key / "log.txt").read_text().splitlines()
        assert [line.split()[1] for line in log] == [f"{e}/6" for e in range(1, 7)]


@pytest.mark.slow
@pytest.mark.parametrize("max_deaths", [2, 1])
def test_a_killed_worker_costs_only_its_own_trial(
    write_study: Callable[..., Path], big_root: Path, tmp_path: Path, max_deaths: int
) -> None:
    study = write_study(BIG_STUDY)
    extra = ("--workers-per-device", "2", "--max-deaths", str(max_deaths))
    p = driver(study, tmp_path / "r", big_root, *extra)
    db = tmp_path / "r" / "big" / "study.db"
    deadline = time.time() + 120
    while time.time() < deadline:  # both slots busy, one trial half-way
        time.sleep(0.2)
        if db.exists() and _max_epoch(db) >= 2 and len(_open_runs(db)) == 2:
            break
    victim, innocent = _open_runs(db)
    os.kill(int(str(victim["worker"])), signal.SIGKILL)  # as the out-of-memory killer would
    code = p.wait(timeout=300)
    rows = runs(db)
    # the trial that shared the pool with the dead worker ran once, untouched
    assert [r["status"] for r in rows if r["key"] == innocent["key"]] == ["completed"]
    victim_runs = [r["status"] for r in rows if r["key"] == victim["key"]]
    if max_deaths == 1:  # its one allowed death: failed, the others complete
        assert code == 1 and victim_runs == ["failed"]
        assert {r["status"] for r in rows if r["key"] != victim["key"]} == {"completed"}
        return
    assert code == 0, p.stderr.read() if p.stderr else ""
    assert victim_runs == ["interrupted", "completed"]
    log = (tmp_path / "r" / "big" / "trials" / str(victim["key"]) / "log.txt").read_text()
    assert [line.split()[1] for line in log.splitlines()] == [f"{e}/6" for e in range(1, 7)]
    assert {r["status"] for r in rows} <= {"interrupted", "completed"}


def _open_runs(db: Path) -> list[dict[str, object]]:
    return [r for r in runs(db) if r["status"] == "running"] if db.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_cleanly_and_the_rerun_finishes(
    write_study: Callable[..., Path], big_root: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    study = write_study(BIG_STUDY)
    cmd = [sys.executable, "-m", "vaegrid"]
    cmd += run_args(study, tmp_path / "r", big_root, "--workers-per-device", "2")
    # Ctrl-C reaches the whole process group, as from a terminal; SIGINT must not be ignored.
    p = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    db = tmp_path / "r" / "big" / "study.db"
    deadline = time.time() + 120
    while time.time() < deadline and not (db.exists() and _max_epoch(db) >= 2):
        time.sleep(0.2)
    if sig == signal.SIGINT:
        os.killpg(p.pid, sig)
    else:
        p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, err  # 130 for Ctrl-C, 143 for SIGTERM
    assert b"running trials keep their last finished epoch" in err and b"Traceback" not in err
    assert not out.strip() or b"keep their" not in out  # messages go to stderr
    rows = runs(db)
    assert "interrupted" in {r["status"] for r in rows} and "running" not in {
        r["status"] for r in rows
    }
    assert "failed" not in {r["status"] for r in rows}
    assert run(study, tmp_path / "r", big_root) == 0
    assert {r["status"] for r in runs(db)} <= {"interrupted", "completed"}


def _max_epoch(db: Path) -> int:
    """The highest committed epoch, read without writing (the driver may be creating tables)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT coalesce(max(epoch), 0) FROM vg_epoch").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead, only not yet reaped
        return f.read().split()[2] != "Z"


def _max_overlap(rows: list[dict[str, object]], device: str) -> int:
    events = sorted(
        [(float(str(r["started"])), 1) for r in rows if r["device"] == device]
        + [(float(str(r["ended"])), -1) for r in rows if r["device"] == device]
    )
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


@pytest.mark.slow
@pytest.mark.parametrize("k", [4, 2])
def test_k_workers_never_exceed_k_per_device_and_never_lock(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path, k: int
) -> None:
    text = write_study().read_text().replace("[1.0, 0.5]", "[1.0, 0.5, 0.25, 0.125]")
    assert run(write_study(text), tmp_path / "r", mnist_root, "--workers-per-device", str(k)) == 0
    rows = runs(tmp_path / "r" / "tiny" / "study.db")
    assert len(rows) == 8 and {r["status"] for r in rows} == {"completed"}
    assert 1 < _max_overlap(rows, "cpu") <= k


@pytest.mark.slow
def test_one_and_two_workers_give_identical_metrics(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path
) -> None:
    study = write_study()
    assert run(study, tmp_path / "one", mnist_root, "--workers-per-device", "1") == 0
    assert run(study, tmp_path / "two", mnist_root, "--workers-per-device", "2") == 0
    one = metric_rows(tmp_path / "one" / "tiny" / "study.db")
    assert one == metric_rows(tmp_path / "two" / "tiny" / "study.db") and len(one) == 16


def test_a_hard_link_or_a_server_database_is_no_way_around_a_live_driver(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import fcntl

    study = write_study()
    assert run_inline(study, tmp_path / "rA", mnist_root) == 0
    db = tmp_path / "rA" / "tiny" / "study.db"
    (tmp_path / "hl").mkdir()
    os.link(db, tmp_path / "hl" / "study.db")
    capsys.readouterr()
    with open(db, "rb") as held:  # rA's driver holds its database file
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other = ["--storage", f"sqlite:///{tmp_path / 'hl' / 'study.db'}"]
        assert run(study, tmp_path / "rB", mnist_root, *other) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "reached through another path" in err, err
    assert not (tmp_path / "rB").exists()
    assert sorted(p.name for p in (tmp_path / "hl").iterdir()) == ["study.db"]
    # A server database does not make the study folder free to share: its lock is taken too
    # (before the server is asked: this one is never reached).
    from vaegrid.db.engine import Database
    from vaegrid.run.locks import driver_lock

    layout = StudyLayout(tmp_path / "rA" / "tiny")
    server = Database.for_study(layout, "postgresql://me@127.0.0.1:1/x")
    refused = pytest.raises(InputError, match="another driver")
    with DriverLock.of(layout), refused, driver_lock(server, layout, "tiny"):
        pass


@pytest.mark.parametrize("rank", ['"x"', '{"nll_samples": "50"}', '{"nll_samples": 9999999}'])
def test_status_refuses_an_edited_rank_in_one_line(
    write_study: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rank: str,
) -> None:
    import sqlite3

    study = load_study(write_study(epochs=2))
    study_dir = tmp_path / "r" / "tiny"
    study_dir.mkdir(parents=True)
    store = Store(study_dir / "study.db")
    store.sync_study(study, expand(study), 1)
    store.close()
    con = sqlite3.connect(study_dir / "study.db")
    text = con.execute("SELECT fingerprint FROM vg_study").fetchone()[0]
    con.execute("UPDATE vg_study SET fingerprint = ?", (text[:-1] + f', "rank": {rank}}}',))
    con.commit()
    con.close()
    assert main(["status", str(study_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rank.nll_samples" in err, err
