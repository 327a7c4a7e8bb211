from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import N_TEST, N_TRAIN, make_mnist, write_idx

from vaegrid.cli import main
from vaegrid.errors import DataGone, InputError
from vaegrid.study.core import DataSpec
from vaegrid.train.data import _CACHE, check_limit, check_mnist, data_dir, ensure_mnist, load_splits


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
        ensure_mnist(tmp_path, DataSpec())  # the driver's and the report's door
    assert list(tmp_path.iterdir()) == []  # the failed download left no folder behind
    # a worker never downloads: the files were checked before the sweep, so missing now
    # they are a folder gone under it (DataGone: waited out as a fault of the world)
    with pytest.raises(DataGone, match=r"MNIST/raw/train-images-idx3-ubyte: MNIST file not"):
        load_splits(tmp_path, DataSpec(), seed=0, device="cpu")


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


# -- the IDX files: checked from their headers and sizes, once, before any trial ------------

RAW = Path("MNIST") / "raw"


def small_mnist(tmp_path: Path) -> Path:
    """A throwaway copy to corrupt: 20 training and 5 test synthetic images."""
    return make_mnist(tmp_path / "data", n_train=20, n_test=5)


def rewrite(path: Path, edit: Callable[[bytearray], bytes | bytearray]) -> None:
    path.write_bytes(edit(bytearray(path.read_bytes())))


def set_byte(index: int, value: int) -> Callable[[bytearray], bytearray]:
    def edit(data: bytearray) -> bytearray:
        data[index] = value
        return data

    return edit


def replace_with_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def replace_with_loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)  # a link to itself: stat() fails with ELOOP


CORRUPTIONS = {
    "truncated": (
        "train-images-idx3-ubyte",
        lambda p: rewrite(p, lambda d: d[:-1]),
        r"15695 bytes, expected 15696 \(the 16-byte header, then 20 x 28 x 28 bytes\): "
        r"the file is truncated or padded",
    ),
    "padded": (
        "t10k-labels-idx1-ubyte",
        lambda p: rewrite(p, lambda d: d + b"\0"),
        r"14 bytes, expected 13 \(the 8-byte header, then 5 bytes\): the file is truncated or",
    ),
    "gzip, not extracted": (
        "train-images-idx3-ubyte",
        lambda p: rewrite(p, lambda d: b"\x1f\x8b" + d[2:]),
        r"not an IDX file: magic number 0x1f8b0803, expected 0x00000803",
    ),
    "float pixels": (
        "t10k-images-idx3-ubyte",
        lambda p: rewrite(p, set_byte(2, 0x0D)),
        r"IDX type code 0x0d in magic number 0x00000d03, expected 0x08 \(unsigned byte\)",
    ),
    "labels with 3 dimensions": (
        "train-labels-idx1-ubyte",
        lambda p: rewrite(p, set_byte(3, 3)),
        r"3 dimensions in magic number 0x00000803, expected 1 \(labels\)",
    ),
    "27 x 28 images": (
        "train-images-idx3-ubyte",
        lambda p: write_idx(p, np.zeros((20, 27, 28))),
        r"images of 27x28 pixels, expected 28x28",
    ),
    "no images": (
        "t10k-images-idx3-ubyte",
        lambda p: write_idx(p, np.zeros((0, 28, 28))),
        r"0 images, expected at least 1",
    ),
    "a label short": (
        "train-labels-idx1-ubyte",
        lambda p: write_idx(p, np.zeros(19)),
        r"19 labels, expected 20, one for each image of train-images-idx3-ubyte",
    ),
    "empty": (
        "t10k-labels-idx1-ubyte",
        lambda p: p.write_bytes(b""),
        r"0 bytes, shorter than its 8-byte IDX header",
    ),
    "a directory": (
        "t10k-images-idx3-ubyte",
        replace_with_dir,
        r"a directory, expected an MNIST IDX file",
    ),
    "a link to itself": (
        "train-labels-idx1-ubyte",
        replace_with_loop,
        r"cannot read MNIST file: Too many levels of symbolic links",
    ),
    "missing": ("t10k-labels-idx1-ubyte", lambda p: p.unlink(), r"MNIST file not found"),
}


def test_a_sound_set_passes_and_gives_its_image_counts(tmp_path: Path, mnist_root: Path) -> None:
    assert check_mnist(small_mnist(tmp_path)) == (20, 5)
    assert check_mnist(mnist_root) == (N_TRAIN, N_TEST)
    assert ensure_mnist(mnist_root, DataSpec(limit=N_TRAIN + N_TEST)) == (N_TRAIN, N_TEST)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_corrupt_idx_file_is_refused_naming_it(tmp_path: Path, corruption: str) -> None:
    file, corrupt, message = CORRUPTIONS[corruption]
    root = small_mnist(tmp_path)
    corrupt(root / RAW / file)
    path = str(root / RAW / file).replace(".", r"\.")
    with pytest.raises(InputError, match=f"^{path}: {message}") as caught:
        check_mnist(root)
    assert "\n" not in str(caught.value)


def test_an_unreadable_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = small_mnist(tmp_path)
    path = root / RAW / "train-labels-idx1-ubyte"
    path.chmod(0)
    if os.geteuid() == 0:  # root reads whatever the mode says: make open() refuse as it would

        def refusing(file: Path, *args: object, **kwargs: object) -> object:
            if Path(file) == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return open(file, *args, **kwargs)  # type: ignore[call-overload]

        monkeypatch.setattr("vaegrid.train.data.open", refusing, raising=False)
    with pytest.raises(InputError, match=r"idx1-ubyte: cannot read MNIST file: Permission denied"):
        check_mnist(root)


def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)


@pytest.mark.parametrize("corruption", ["truncated", "a directory"])
def test_ensure_mnist_refuses_corrupt_files_in_place_without_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corruption: str
) -> None:
    no_download(monkeypatch)  # a download attempt would fail with "could not be downloaded"
    file, corrupt, message = CORRUPTIONS[corruption]
    root = small_mnist(tmp_path)
    corrupt(root / RAW / file)
    with pytest.raises(InputError, match=f"{file}: {message}"):
        ensure_mnist(root)
    with pytest.raises(InputError, match=f"{file}: {message}"):
        load_splits(root, DataSpec(), seed=0, device="cpu")


def test_cli_run_refuses_corrupt_data_with_exit_2_before_writing(
    tmp_path: Path,
    write_study: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = small_mnist(tmp_path)
    rewrite(root / RAW / "t10k-images-idx3-ubyte", lambda d: d[:-100])
    results = tmp_path / "results"
    argv = ["run", str(write_study()), "--data-dir", str(root), "--results", str(results)]
    assert main([*argv, "--devices", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "t10k-images-idx3-ubyte: 3836 bytes, expected 3936" in err
    assert not results.exists()


def test_a_limit_beyond_the_images_found_is_refused(tmp_path: Path, mnist_root: Path) -> None:
    pool = N_TRAIN + N_TEST
    raw = str(mnist_root / RAW).replace(".", r"\.")
    message = rf"^data\.limit = {pool + 1} exceeds the {pool} images found in {raw}; expected at"
    with pytest.raises(InputError, match=message):
        check_limit(DataSpec(limit=pool + 1), (N_TRAIN, N_TEST), mnist_root)
    check_limit(DataSpec(limit=pool), (N_TRAIN, N_TEST), mnist_root)
    check_limit(DataSpec(limit=0), (N_TRAIN, N_TEST), mnist_root)
    with pytest.raises(InputError, match=message):
        ensure_mnist(mnist_root, DataSpec(limit=pool + 1))
    with pytest.raises(InputError, match=message):  # it was silently cut to the pool
        load_splits(mnist_root, DataSpec(limit=pool + 1), seed=0, device="cpu")


def test_the_checks_leave_the_data_folder_as_it_was(tmp_path: Path) -> None:
    root = small_mnist(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    ensure_mnist(root, DataSpec(limit=25))
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_binarized_validation_and_test_are_drawn_once_for_the_study(mnist_root: Path) -> None:
    _CACHE.clear()
    grey = load_splits(mnist_root, DataSpec(), seed=0, device="cpu")
    dynamic = load_splits(mnist_root, DataSpec(binarize="dynamic"), seed=0, device="cpu")
    static = load_splits(mnist_root, DataSpec(binarize="static"), seed=0, device="cpu")
    assert torch.equal(dynamic.train, grey.train)  # drawn by the trial, each epoch
    for split in ("val", "test"):
        x = getattr(dynamic, split)
        assert set(x.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(x, getattr(static, split))  # one draw per study seed and split
        # each pixel a Bernoulli draw of its grey level: the means agree
        assert abs(float(x.mean()) - float(getattr(grey, split).mean())) < 0.01
    assert set(static.train.unique().tolist()) == {0.0, 1.0}
    _CACHE.clear()
    again = load_splits(mnist_root, DataSpec(binarize="dynamic"), seed=0, device="cpu")
    assert torch.equal(again.val, dynamic.val) and torch.equal(again.test, dynamic.test)
    other = load_splits(mnist_root, DataSpec(binarize="dynamic"), seed=1, device="cpu")
    assert not torch.equal(other.val, dynamic.val)


def test_fashion_mnist_is_read_from_its_own_folder(tmp_path: Path) -> None:
    make_mnist(tmp_path, folder="MNIST", seed=0)
    make_mnist(tmp_path, folder="FashionMNIST", seed=1)
    _CACHE.clear()
    mnist = load_splits(tmp_path, DataSpec(), seed=0, device="cpu")
    fashion = load_splits(tmp_path, DataSpec(dataset="fashion-mnist"), seed=0, device="cpu")
    assert not torch.equal(mnist.train, fashion.train)
    assert check_mnist(tmp_path, "fashion-mnist") == check_mnist(tmp_path)
    (tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(InputError, match=r"FashionMNIST/raw/t10k-labels-idx1-ubyte: MNIST file"):
        check_mnist(tmp_path, "fashion-mnist")


def test_a_plugin_data_sets_images_are_checked_against_the_digest_in_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What every worker does: the images its loader gives now must be those the driver's
    # probe saw (their SHA-256 is in the trial key); the loader itself is the package's.
    import numpy as np

    from vaegrid.errors import InputError
    from vaegrid.study.core import DataSpec
    from vaegrid.train import data

    images = np.arange(20 * 3 * 4 * 4, dtype=np.uint8).reshape(20, 3, 4, 4)
    monkeypatch.setattr(data, "load_factory", lambda name, group: lambda root: images)
    spec = DataSpec(dataset="mine")
    train, test = data.plugin_images(tmp_path, spec)
    digest = data.images_digest(train, test)
    assert test is None and len(digest) == 64
    same = DataSpec(dataset="mine", images=digest)
    assert data.plugin_images(tmp_path, same)[0].equal(train)
    images[0, 0, 0, 0] += 1  # one pixel of one image
    with pytest.raises(InputError, match="not those the study was run with"):
        data.plugin_images(tmp_path, same)
