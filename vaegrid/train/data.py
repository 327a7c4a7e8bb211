"""The study's images on the device: its splits as three float tensors, cached per
process.

MNIST and Fashion-MNIST come from their IDX files (checked here), a plug-in data set from
its package's loader (study/datasets.py; checked here too). Pixels are scaled to [0, 1]
once and each split is one ``[n, C x H x W]`` tensor on the trial's device, so training
takes batches as slices of a permutation: no DataLoader, no per-sample transform (see
bench/ for what that costs).

torch is imported inside the functions that need it: the sweep driver checks the data
folder with ``ensure_mnist`` and must stay small (it never holds a tensor).
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vaegrid.errors import DataGone, InputError, first_line
from vaegrid.study import datasets
from vaegrid.study.axes import MNIST_TEST_IMAGES, MNIST_TRAIN_IMAGES
from vaegrid.study.core import DataSpec, derive_seed, split_sizes
from vaegrid.study.plugins import DATASETS_GROUP, load_factory
from vaegrid.study.sizes import MNIST_SHAPE

if TYPE_CHECKING:
    import torch

# The folder of each data set under the root, as torchvision names it (<root>/<folder>/raw).
FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
PIXELS = 28 * 28
IMAGE_SHAPE = (28, 28)
# IDX type code of unsigned bytes, the only one MNIST uses (http://yann.lecun.com/exdb/mnist/).
IDX_UBYTE = 0x08


@dataclass(frozen=True)
class Splits:
    """The three splits of a study, each ``[n, C x H x W]`` float32 in [0, 1] on one
    device, and the images' shape (C, H, W)."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    shape: tuple[int, int, int] = MNIST_SHAPE


def data_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """The MNIST root: ``arg`` (``--data-dir``), else ``$VAEGRID_DATA``, else ``data/``."""
    return Path(arg or os.environ.get("VAEGRID_DATA") or "data")


def ensure_mnist(root: Path, spec: DataSpec | None = None) -> tuple[int, int]:
    """Make sure the four IDX files of ``spec.dataset`` (default MNIST) are under
    ``root/MNIST/raw`` (``root/FashionMNIST/raw``) and sound.

    Downloads them when any is missing, then checks every file's header and size
    (:func:`check_mnist`) and, given ``spec``, that its ``limit`` fits the images found
    (:func:`check_limit`). Reads no pixels: the sweep driver calls it once, before any
    trial starts, so bad data is refused once rather than by every trial.

    Args:
        root: The MNIST root (``--data-dir``).
        spec: The study's data settings, to check against the files; None checks the files.

    Returns:
        The number of training and of test images.

    Raises:
        InputError: files are missing and could not be downloaded, a file is not an MNIST
            IDX file of the right size, or ``spec.limit`` exceeds the images found.
    """
    dataset = spec.dataset if spec is not None else "mnist"
    raw = raw_dir(root, dataset)
    # Any path there, even a directory or a truncated file, is checked rather than downloaded
    # again: check_mnist says what is wrong with it.
    if not all((raw / f).exists() for f in RAW_FILES):
        _download(root, dataset)
    counts = check_mnist(root, dataset)
    if spec is not None:
        check_limit(spec, counts, root)
    return counts


def raw_dir(root: Path, dataset: str = "mnist") -> Path:
    """Where the IDX files of ``dataset`` ("mnist" or "fashion-mnist") are under ``root``."""
    return root / FOLDERS[dataset] / "raw"


def _download(root: Path, dataset: str) -> None:
    raw = raw_dir(root, dataset)
    missing = [p for p in (root, raw.parent, raw) if not p.exists()]
    try:
        _images(root, dataset, train=True)
        _images(root, dataset, train=False)
    except Exception as e:  # no network, a proxy, a checksum: all mean "put the files there"
        for folder in reversed(missing):  # leave nothing behind for a failed download
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise InputError(
            f"{datasets.label(dataset)} not found in {raw} and could not be downloaded "
            f"({type(e).__name__}); "
            f"put {', '.join(RAW_FILES)} there, or point --data-dir / VAEGRID_DATA at a folder "
            f"that has {FOLDERS[dataset]}/raw/"
        ) from None


def check_mnist(root: Path, dataset: str = "mnist") -> tuple[int, int]:
    """Check the four MNIST IDX files under ``root/MNIST/raw`` from their headers and sizes.

    Each must be an IDX file of unsigned bytes (magic 0x00000803 for images, 0x00000801
    for labels), images N x 28 x 28 with N >= 1, exactly as long as its header says (so
    a truncated or padded file is refused), with one label per image. Any number of
    images is accepted: tests use small synthetic files.

    Args:
        root: The data root (``--data-dir``).
        dataset: "mnist" or "fashion-mnist" (the same layout, another folder).

    Returns:
        The number of training and of test images.

    Raises:
        InputError: naming the file, what was found and what was expected.
    """
    raw = raw_dir(root, dataset)
    counts = []
    for prefix, most in (("train", MNIST_TRAIN_IMAGES), ("t10k", MNIST_TEST_IMAGES)):
        images_file = raw / f"{prefix}-images-idx3-ubyte"
        labels_file = raw / f"{prefix}-labels-idx1-ubyte"
        n_images = _idx_count(images_file, IMAGE_SHAPE, "images")
        if n_images > most:  # a sparse file can claim any count and pass its size check
            raise InputError(
                f"{images_file}: {n_images} images, expected at most {most} (the data set's "
                "own count); every worker would load them all"
            )
        n_labels = _idx_count(labels_file, (), "labels")
        if n_labels != n_images:
            raise InputError(
                f"{labels_file}: {n_labels} labels, expected {n_images}, one for each image "
                f"of {images_file.name}"
            )
        counts.append(n_images)
    return counts[0], counts[1]


def check_limit(spec: DataSpec, counts: tuple[int, int], root: Path) -> None:
    """Refuse a ``data.limit`` larger than the pool of images actually found.

    Without it the pool is silently cut short while the trial key records the nominal limit.

    Args:
        spec: The study's data settings.
        counts: Training and test images found, as :func:`check_mnist` returns them.
        root: The MNIST root, to name in the message.

    Raises:
        InputError: ``spec.limit`` exceeds the images of both files together.
    """
    pool = counts[0] + counts[1]
    if spec.limit > pool:
        raise InputError(
            f"data.limit = {spec.limit} exceeds the {pool} images found in "
            f"{raw_dir(root, spec.dataset)}; expected at most {pool}, or 0 for all"
        )


def _idx_count(path: Path, item_shape: tuple[int, ...], what: str) -> int:
    """The item count of an IDX file of unsigned bytes with items of ``item_shape``."""
    ndim = 1 + len(item_shape)
    header_size = 4 + 4 * ndim  # magic, then one big-endian uint32 per dimension
    header, size = _read_header(path, header_size)
    if len(header) < header_size:
        raise InputError(f"{path}: {size} bytes, shorter than its {header_size}-byte IDX header")
    magic = f"0x{header[:4].hex()}"
    expected_magic = f"0x0000{IDX_UBYTE:02x}{ndim:02x}"
    if header[:2] != b"\0\0":
        raise InputError(
            f"{path}: not an IDX file: magic number {magic}, expected {expected_magic}"
        )
    if header[2] != IDX_UBYTE:
        raise InputError(
            f"{path}: IDX type code 0x{header[2]:02x} in magic number {magic}, "
            f"expected 0x{IDX_UBYTE:02x} (unsigned byte)"
        )
    if header[3] != ndim:
        raise InputError(
            f"{path}: {header[3]} dimensions in magic number {magic}, expected {ndim} ({what})"
        )
    dims = struct.unpack(f">{ndim}I", header[4:])
    if dims[1:] != item_shape:
        found, wanted = "x".join(map(str, dims[1:])), "x".join(map(str, item_shape))
        raise InputError(f"{path}: {what} of {found} pixels, expected {wanted}")
    if dims[0] < 1:
        raise InputError(f"{path}: 0 {what}, expected at least 1")
    expected = header_size + math.prod(dims)
    if size != expected:
        shape = " x ".join(map(str, dims))
        raise InputError(
            f"{path}: {size} bytes, expected {expected} (the {header_size}-byte header, then "
            f"{shape} bytes): the file is truncated or padded"
        )
    return int(dims[0])


def _read_header(path: Path, header_size: int) -> tuple[bytes, int]:
    """The first ``header_size`` bytes of a regular file, and its size."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise InputError(f"{path}: {kind}, expected an MNIST IDX file")
        with open(path, "rb") as f:
            return f.read(header_size), info.st_size
    except FileNotFoundError:
        raise DataGone(f"{path}: MNIST file not found") from None
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise DataGone(f"{path}: cannot read MNIST file: {reason}") from None


def _images(root: Path, dataset: str, train: bool) -> torch.Tensor:
    # Imported here: torchvision costs a second at start-up that only data loading needs.
    from torchvision.datasets import MNIST, FashionMNIST

    cls = FashionMNIST if dataset == "fashion-mnist" else MNIST
    return cls(str(root), train=train, download=True).data


_CACHE: dict[tuple[str, DataSpec, int, str], Splits] = {}


def load_splits(root: Path, spec: DataSpec, seed: int, device: str | torch.device) -> Splits:
    """The study's splits on ``device``, loaded once per process and device.

    Holdout: the 60,000 training and 10,000 test images pooled, permuted by ``seed``, cut
    by ``spec.fractions`` (after keeping ``spec.limit`` images when set). Official: the
    training set permuted by ``seed`` gives 54,000 / 6,000, the test set is the official one.
    Binarized (``spec.binarize`` not "none"): validation and test pixels are drawn once as
    Bernoulli(grey level) from generators seeded by (``seed``, split), and so is the
    training split when "static"; "dynamic" leaves it grey for the trial to draw each
    epoch (:func:`binarize`). The same on every run and every worker.

    Raises:
        InputError: the MNIST files are missing and cannot be downloaded, are not sound
            (:func:`check_mnist`), or hold fewer images than ``spec.limit``.
    """
    import torch

    cache_key = (str(root.resolve()), spec, seed, str(torch.device(device)))
    if cache_key not in _CACHE:
        if spec.dataset in datasets.BUILTIN:
            # Checked, never downloaded: the driver made sure of the files before any trial
            # started, so a file missing now is a folder gone under the sweep (DataGone).
            check_limit(spec, check_mnist(root, spec.dataset), root)
            sets: tuple[torch.Tensor, torch.Tensor | None] = (
                _images(root, spec.dataset, True),
                _images(root, spec.dataset, False),
            )
            shape = MNIST_SHAPE
        else:
            sets = plugin_images(root, spec)
            shape = tuple(sets[0].shape[1:])  # type: ignore[assignment]
        train, val, test = _split(*sets, spec, seed)
        if spec.binarize != "none":
            val, test = binarize(val, seed, "val"), binarize(test, seed, "test")
        if spec.binarize == "static":
            train = binarize(train, seed, "train")
        on = [s.to(device) for s in (train, val, test)]
        _CACHE[cache_key] = Splits(on[0], on[1], on[2], shape)
    return _CACHE[cache_key]


def plugin_images(root: Path, spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A plug-in data set's training and test images (None: it has no official split), each
    uint8 ``[N, C, H, W]``, from its package's loader, checked.

    Raises:
        InputError: the loader raised, or gave something else than uint8 images within the
            bounds of study/datasets.py, two sets of unlike images, or one set where the
            study asks for the official split. Named with the distribution.
    """
    import numpy as np
    import torch

    who = f"data set {datasets.label(spec.dataset)}"
    try:
        raw = load_factory(spec.dataset, DATASETS_GROUP)(root)
    except Exception as e:  # anything a foreign module raises: named, not raised
        said = f"{who} failed to load from {root}: {type(e).__name__}: {first_line(str(e))}"
        if isinstance(e, OSError):  # a file it cannot read: its folder, probed, went away
            raise DataGone(said[:400]) from None
        raise InputError(said[:400]) from None
    parts = list(raw) if isinstance(raw, tuple | list) else [raw]
    if not 1 <= len(parts) <= 2:
        raise InputError(f"{who} gave {len(parts)} sets of images, expected 1 or 2 (train, test)")
    out: list[torch.Tensor] = []
    for what, part in zip(("images", "test images"), parts, strict=False):
        kind = type(part).__name__
        if not isinstance(part, torch.Tensor | np.ndarray) or isinstance(part, np.ma.MaskedArray):
            raise InputError(f"{who}: its {what} are a {kind}, expected a uint8 torch tensor or "
                             "numpy array [N, C, H, W]")  # fmt: skip
        why = datasets.problem(tuple(part.shape), str(part.dtype), what)
        if why is not None:
            raise InputError(f"{who}: {why}")
        if isinstance(part, torch.Tensor):
            if part.layout != torch.strided or part.device.type != "cpu":
                raise InputError(f"{who}: its {what} are a {part.layout} tensor on "
                                 f"{part.device}, expected a dense one in CPU memory")  # fmt: skip
            out.append(part.contiguous())
        else:  # flipped views (negative strides) and read-only arrays are copied
            out.append(torch.from_numpy(np.require(part, requirements=["C", "W"])))
    if sum(t.numel() for t in out) > datasets.BYTES_MAX:
        raise InputError(f"{who}: its images take more than {datasets.BYTES_MAX:,} bytes in all")
    if len(out) == 2 and out[0].shape[1:] != out[1].shape[1:]:
        shapes = " and ".join(" x ".join(map(str, t.shape[1:])) for t in out)
        raise InputError(f"{who}: its training and test images differ in shape: {shapes}")
    if spec.split == "official" and len(out) == 1:
        raise InputError(
            f"{who} has no official test set (its loader gave one set of images); data.split "
            f'= "official" needs one: use "holdout"'
        )
    test = out[1] if len(out) == 2 else None
    if spec.images and images_digest(out[0], test) != spec.images:
        raise InputError(
            f"{who}: its images are not those the study was run with (their SHA-256 differs "
            "from the one in the trial key): the loader gave other images than at the probe"
        )
    return out[0], test


def images_digest(train: torch.Tensor, test: torch.Tensor | None) -> str:
    """SHA-256 of a plug-in data set's images: each set's shape, then its bytes."""
    h = hashlib.sha256()
    for part in (train, test):
        if part is not None:
            h.update(repr(tuple(part.shape)).encode())
            h.update(part.numpy().tobytes())  # contiguous uint8
    return h.hexdigest()


def image_shape(spec: DataSpec) -> tuple[int, int, int]:
    """The (C, H, W) of the images of ``spec``: MNIST's, or a plug-in's as loaded in this
    process (by :func:`load_splits`, which a worker and the report call before they build
    a model).

    Raises:
        RuntimeError: a plug-in data set not loaded in this process.
    """
    if spec.dataset in datasets.BUILTIN:
        return MNIST_SHAPE
    for (_, loaded, _, _), splits in _CACHE.items():
        if loaded.dataset == spec.dataset:
            return splits.shape
    raise RuntimeError(f"data set {spec.dataset} is not loaded in this process")


def binarize(x: torch.Tensor, *seed_parts: object) -> torch.Tensor:
    """Each pixel drawn as Bernoulli(its grey level), from a generator seeded by the parts.

    On the device of ``x``: the same parts give the same pixels on the same device.
    """
    import torch

    g = torch.Generator(x.device).manual_seed(derive_seed(*seed_parts, "binarize"))
    return torch.bernoulli(x, generator=g)


def _split(
    train_images: torch.Tensor, test_images: torch.Tensor | None, spec: DataSpec, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch

    g = torch.Generator().manual_seed(seed)

    def scaled(images: torch.Tensor) -> torch.Tensor:
        return images.reshape(len(images), -1).to(torch.float32).div_(255.0)

    if spec.split == "official":
        assert test_images is not None  # plugin_images refuses "official" without one
        perm = torch.randperm(len(train_images), generator=g)
        n_val = len(train_images) // 10
        train = scaled(train_images[perm[n_val:]])
        return train, scaled(train_images[perm[:n_val]]), scaled(test_images)
    pool = train_images if test_images is None else torch.cat([train_images, test_images])
    perm = torch.randperm(len(pool), generator=g)
    if spec.limit:
        perm = perm[: spec.limit]
    n_train, n_val, _ = split_sizes(DataSpec(fractions=spec.fractions, limit=len(perm)))
    images = scaled(pool[perm])
    return images[:n_train], images[n_train : n_train + n_val], images[n_train + n_val :]
