from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import N_TEST, N_TRAIN

from vaegrid.data import _CACHE, data_dir, load_splits
from vaegrid.errors import InputError
from vaegrid.study import DataSpec


def index_of(images: torch.Tensor) -> list[int]:
    """The synthetic images' own indices, stored in their first two pixels."""
    px = (images[:, :2] * 255).round().long()
    return (px[:, 0] * 256 + px[:, 1]).tolist()


def test_holdout_pools_all_images_and_cuts_80_10_10(mnist_root: Path) -> None:
    s = load_splits(mnist_root, DataSpec(), seed=0, device="cpu")
    n = N_TRAIN + N_TEST
    assert (len(s.train), len(s.val), len(s.test)) == (0.8 * n, 0.1 * n, 0.1 * n)
    ids = index_of(s.train) + index_of(s.val) + index_of(s.test)
    assert sorted(ids) == list(range(n))  # disjoint, and every image of both files is used
    assert max(index_of(s.test)) >= N_TRAIN or max(index_of(s.val)) >= N_TRAIN  # pooled
    assert s.train.dtype == torch.float32 and s.train.shape[1] == 784
    assert float(s.train.min()) >= 0.0 and float(s.train.max()) == 1.0


def test_split_is_the_same_on_every_load_and_changes_with_the_seed(mnist_root: Path) -> None:
    a = load_splits(mnist_root, DataSpec(), seed=0, device="cpu")
    _CACHE.clear()
    b = load_splits(mnist_root, DataSpec(), seed=0, device="cpu")
    assert a is not b and torch.equal(a.val, b.val) and torch.equal(a.train, b.train)
    c = load_splits(mnist_root, DataSpec(), seed=1, device="cpu")
    assert index_of(c.val) != index_of(a.val)


def test_loaded_splits_are_cached_per_process(mnist_root: Path) -> None:
    a = load_splits(mnist_root, DataSpec(), seed=0, device="cpu")
    assert load_splits(mnist_root, DataSpec(), seed=0, device="cpu") is a


def test_limit_takes_a_subset_of_the_permuted_pool(mnist_root: Path) -> None:
    full = load_splits(mnist_root, DataSpec(), seed=0, device="cpu")
    s = load_splits(mnist_root, DataSpec(limit=100), seed=0, device="cpu")
    assert (len(s.train), len(s.val), len(s.test)) == (80, 10, 10)
    assert set(index_of(s.train)) < set(index_of(full.train)) | set(index_of(full.val)) | set(
        index_of(full.test)
    )


def test_official_split_keeps_the_official_test_images(mnist_root: Path) -> None:
    s = load_splits(mnist_root, DataSpec(split="official"), seed=0, device="cpu")
    assert (len(s.train), len(s.val), len(s.test)) == (N_TRAIN * 0.9, N_TRAIN * 0.1, N_TEST)
    assert index_of(s.test) == list(range(N_TRAIN, N_TRAIN + N_TEST))
    assert sorted(index_of(s.train) + index_of(s.val)) == list(range(N_TRAIN))


def test_missing_files_say_where_to_put_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)  # never download in tests
    with pytest.raises(
        InputError, match=r"MNIST not found in .*MNIST/raw .* put train-images-idx3-ubyte"
    ):
        load_splits(tmp_path, DataSpec(), seed=0, device="cpu")
    assert list(tmp_path.iterdir()) == []  # the failed download left no folder behind


def test_data_dir_prefers_argument_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAEGRID_DATA", "/from/env")
    assert data_dir("/from/arg") == Path("/from/arg")
    assert data_dir(None) == Path("/from/env")
    monkeypatch.delenv("VAEGRID_DATA")
    assert data_dir(None) == Path("data")


@pytest.mark.skipif(not os.environ.get("VAEGRID_DATA"), reason="VAEGRID_DATA is not set")
def test_real_mnist_holdout_is_56000_7000_7000() -> None:
    root = data_dir(None)
    s = load_splits(root, DataSpec(), seed=0, device="cpu")
    assert (len(s.train), len(s.val), len(s.test)) == (56_000, 7_000, 7_000)
    pool_mean = (s.train.sum() + s.val.sum() + s.test.sum()) / (70_000 * 784)
    assert abs(float(pool_mean) * 255 - 33.3) < 0.5  # MNIST's mean pixel, both files together
