"""MNIST on the device: the study's splits as three float tensors, cached per process.

Pixels are scaled to [0, 1] once and each split is one ``[n, 784]`` tensor on the trial's
device, so training takes batches as slices of a permutation: no DataLoader, no
per-sample transform (see bench/ for what that costs).

torch is imported inside the functions that need it: the sweep driver checks the data
folder with ``ensure_mnist`` and must stay small (it never holds a tensor).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vaegrid.errors import InputError
from vaegrid.study import DataSpec, split_sizes

if TYPE_CHECKING:
    import torch

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
PIXELS = 28 * 28


@dataclass(frozen=True)
class Splits:
    """The three splits of a study, each ``[n, 784]`` float32 in [0, 1] on one device."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def data_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """The MNIST root: ``arg`` (``--data-dir``), else ``$VAEGRID_DATA``, else ``data/``."""
    return Path(arg or os.environ.get("VAEGRID_DATA") or "data")


def ensure_mnist(root: Path) -> None:
    """Make sure the four MNIST IDX files are under ``root/MNIST/raw``, downloading if possible.

    Raises:
        InputError: they are missing and could not be downloaded.
    """
    raw = root / "MNIST" / "raw"
    if all((raw / f).is_file() for f in RAW_FILES):
        return
    missing = [p for p in (root, root / "MNIST", raw) if not p.exists()]
    try:
        _mnist(root, train=True)
        _mnist(root, train=False)
    except Exception as e:  # no network, a proxy, a checksum: all mean "put the files there"
        for folder in reversed(missing):  # leave nothing behind for a failed download
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise InputError(
            f"MNIST not found in {raw} and could not be downloaded ({type(e).__name__}); "
            f"put {', '.join(RAW_FILES)} there, or point --data-dir / VAEGRID_DATA at a folder "
            "that has MNIST/raw/"
        ) from None


def _mnist(root: Path, train: bool) -> torch.Tensor:
    # Imported here: torchvision costs a second at start-up that only data loading needs.
    from torchvision.datasets import MNIST

    return MNIST(str(root), train=train, download=True).data


_CACHE: dict[tuple[str, DataSpec, int, str], Splits] = {}


def load_splits(root: Path, spec: DataSpec, seed: int, device: str | torch.device) -> Splits:
    """The study's splits on ``device``, loaded once per process and device.

    Holdout: the 60,000 training and 10,000 test images pooled, permuted by ``seed``, cut
    by ``spec.fractions`` (after keeping ``spec.limit`` images when set). Official: the
    training set permuted by ``seed`` gives 54,000 / 6,000, the test set is the official one.
    The same on every run and every worker.

    Raises:
        InputError: the MNIST files are missing and cannot be downloaded.
    """
    import torch

    cache_key = (str(root.resolve()), spec, seed, str(torch.device(device)))
    if cache_key not in _CACHE:
        ensure_mnist(root)
        splits = _split(_mnist(root, True), _mnist(root, False), spec, seed)
        _CACHE[cache_key] = Splits(*(s.to(device) for s in splits))
    return _CACHE[cache_key]


def _split(
    train_images: torch.Tensor, test_images: torch.Tensor, spec: DataSpec, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch

    g = torch.Generator().manual_seed(seed)

    def scaled(images: torch.Tensor) -> torch.Tensor:
        return images.reshape(len(images), PIXELS).to(torch.float32).div_(255.0)

    if spec.split == "official":
        perm = torch.randperm(len(train_images), generator=g)
        n_val = len(train_images) // 10
        train = scaled(train_images[perm[n_val:]])
        return train, scaled(train_images[perm[:n_val]]), scaled(test_images)
    pool = torch.cat([train_images, test_images])
    perm = torch.randperm(len(pool), generator=g)
    if spec.limit:
        perm = perm[: spec.limit]
    n_train, n_val, _ = split_sizes(DataSpec(fractions=spec.fractions, limit=len(perm)))
    images = scaled(pool[perm])
    return images[:n_train], images[n_train : n_train + n_val], images[n_train + n_val :]
