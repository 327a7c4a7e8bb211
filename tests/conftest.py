"""Shared fixtures: tiny synthetic MNIST in torchvision's layout, and study files.

Nothing here downloads. Every synthetic image carries its own index in its first
two pixels, so tests can tell exactly which images landed in which split.
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

N_TRAIN, N_TEST = 400, 100

# A trial folder's file names, as layout.py names them.
from vaegrid.layout import TrialFiles  # noqa: E402

_NAMES = TrialFiles(Path("."))
CONFIG, CHECKPOINT, WEIGHTS, LOG = (
    _NAMES.config.name, _NAMES.checkpoint.name, _NAMES.weights.name, _NAMES.log.name
)  # fmt: skip


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file (http://yann.lecun.com/exdb/mnist/): magic, dims, bytes."""
    magic = {3: 0x00000803, 1: 0x00000801}[array.ndim]
    with path.open("wb") as f:
        f.write(struct.pack(">I", magic))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def synthetic_images(n: int, offset: int, rng: np.random.Generator) -> np.ndarray:
    """Blurry strokes on black, like digits in spirit; pixels 0-1 encode the image's index."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        r, c = rng.integers(6, 22, size=2)
        images[i, r - 4 : r + 4, c - 1 : c + 2] = 255  # a vertical bar
        images[i, r - 1 : r + 1, c - 5 : c + 5] = rng.integers(128, 256)  # a cross stroke
        index = offset + i
        images[i, 0, 0], images[i, 0, 1] = index // 256, index % 256
    return images


def make_mnist(
    root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, folder: str = "MNIST", seed: int = 0
) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    write_idx(raw / "train-images-idx3-ubyte", synthetic_images(n_train, 0, rng))
    write_idx(raw / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train))
    write_idx(raw / "t10k-images-idx3-ubyte", synthetic_images(n_test, n_train, rng))
    write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test))
    return root


def run_inline(
    study: Path,
    results: Path,
    data: Path,
    executor: Any = None,
    slots: int = 1,
    retry: bool = False,
    fault_wait: float | None = None,
) -> int:
    """``vaegrid run --no-progress`` with every trial run in this process (InlineExecutor):
    for tests of what a sweep records, where the process boundary is not what they test.

    Afterwards the process forgets its stores and closes every SQLite connection, as a
    driver that ended (or was killed) would: a ``Crash`` mid-sweep leaves only what was
    committed. torch's thread count is restored (a trial sets its own).
    """
    import gc
    import sqlite3

    import torch

    from vaegrid.faults import FAULT_WAIT_S
    from vaegrid.run import worker
    from vaegrid.run.driver import run_study
    from vaegrid.run.pool import make_pool
    from vaegrid.study.load import load_study

    threads = torch.get_num_threads()
    try:
        return run_study(
            load_study(study), results, make_pool("cpu", slots), data, retry_failed=retry,
            progress=False, executor=executor or InlineExecutor(),
            fault_wait=FAULT_WAIT_S if fault_wait is None else fault_wait,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
        worker.reset()
        for obj in gc.get_objects():
            if type(obj) is sqlite3.Connection:
                obj.close()  # rolls back what was not committed, as the kernel would


def sweep(root: Path, study: str, data: Path) -> str:
    """Run the study file text ``study`` (written to ``root/s.toml``) into ``root/r``, in
    this process; return what it printed."""
    (root / "s.toml").write_text(study)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_inline(root / "s.toml", root / "r", data) == 0
    return out.getvalue()


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with 400 training and 100 test synthetic images."""
    return make_mnist(tmp_path_factory.mktemp("data"))


TINY_STUDY = """
name = "{name}"
seed = 0
[data]
fractions = [0.6, 0.2, 0.2]
[train]
epochs = {epochs}
batch_size = 50
[grid]
hidden = [32]
latent = [4, 8]
lr = [1e-2]
clip = [1.0, 0.5]
"""


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[..., Path]:
    """Write a study file: the tiny 2 x 2 study by default, or any text."""

    def write(
        text: str | None = None, name: str = "tiny", epochs: int = 2, file: str = "study.toml"
    ) -> Path:
        path = tmp_path / file
        path.write_text(text if text is not None else TINY_STUDY.format(name=name, epochs=epochs))
        return path

    return write


class Crash(BaseException):
    """What kill -9 does to a process, in-process: nothing after it runs, no commit."""


@pytest.fixture
def commits() -> Iterator[dict[str, int]]:
    """Counts every commit of every SQLAlchemy engine (vaegrid's and Optuna's) and raises
    :class:`Crash` instead of the commit numbered ``crash_at``."""
    from sqlalchemy import Engine, event

    state = {"seen": 0, "crash_at": 0}

    def on_commit(conn: Any) -> None:
        state["seen"] += 1
        if state["seen"] == state["crash_at"]:
            raise Crash

    event.listen(Engine, "commit", on_commit)
    yield state
    event.remove(Engine, "commit", on_commit)


def synced_study_db(study_path: Path, study_dir: Path, slots: int = 1) -> Path:
    """A study database as a driver leaves it before any trial runs; returns its path."""
    from vaegrid.db.store import Store
    from vaegrid.study.core import expand
    from vaegrid.study.load import load_study

    study = load_study(study_path)
    study_dir.mkdir(parents=True, exist_ok=True)
    store = Store(study_dir / "study.db")
    try:
        store.sync_study(study, expand(study), slots)
    finally:
        store.close()
    return study_dir / "study.db"


class InlineExecutor:
    """An :class:`vaegrid.run.pool.Executor` that runs each trial in this process, at submit.

    What a trial raises, a BaseException included, leaves through ``submit`` and so
    through the driver: a test can crash any write of a trial's life in-process.
    """

    watch = "parent"

    def __init__(self) -> None:
        self.submitted: list[tuple[Any, Any]] = []  # (slot, task), in order

    def submit(self, slot: Any, fn: Callable[[Any], Any], arg: Any) -> Future[Any]:
        self.submitted.append((slot, arg))
        future: Future[Any] = Future()
        try:
            future.set_result(fn(arg))
        except Exception as e:  # what a worker's future would hold; a Crash goes through
            future.set_exception(e)
        return future

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        return futures  # every future is done when submit returns

    def device(self, slot: Any) -> str:
        return str(slot.device)

    def result(self, future: Future[Any]) -> Any:
        return future.result()

    def reset(self, slot: Any) -> None:
        pass

    def shutdown(self, kill: bool) -> None:
        pass


def plan_table(out: str) -> tuple[list[str], list[list[str]], int]:
    """``vaegrid plan``'s output: its table's header, its rows (split on spaces) and the
    trial count of its last line ("N trials; estimated ...")."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("key "))
    count = int(lines[-1].split(" trials", 1)[0])
    return lines[start].split(), [line.split() for line in lines[start + 1 : -1]], count


def epoch_rows(db: Any) -> list[tuple[Any, ...]]:
    """Every vg_epoch row of the study database ``db`` (a ``Database``), sorted: what two
    sweeps that computed the same give bit for bit."""
    from vaegrid.db.store import Store

    store = Store.reader(db)
    try:
        frame = store.frame("vg_epoch").sort_values(["key", "epoch", "split"])
    finally:
        store.close()
    return [tuple(r) for r in frame[["key", "epoch", "split", "elbo", "recon", "kl"]].to_numpy()]
