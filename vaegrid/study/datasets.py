"""The data sets a study may name: MNIST and Fashion-MNIST built in, and the user's own,
registered by an installed package like a model (study/plugins.py), with no module or path
in a study file::

    [project.entry-points."vaegrid.datasets"]
    shapes = "shapesdata:load"     # load(root: pathlib.Path) -> images, or (train, test)

``load(root)`` is given the data folder (``--data-dir`` / ``$VAEGRID_DATA``) and returns
uint8 images ``[N, C, H, W]`` (a torch tensor or a numpy array), or a pair ``(train,
test)`` of them when the data set has an official split. They are checked once, where
the driver probes the study, as the IDX files are (:func:`problem`); grey (C = 1) or
colour (C = 3). The distribution's name and version join the trial key
(``shapes@shapesdata==0.1``), so images of another version are never mixed in.

This module is torch-free: the driver reads it; the images are loaded by train/data.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vaegrid.study.axes import MNIST_TEST_IMAGES, MNIST_TRAIN_IMAGES
from vaegrid.study.plugins import Plugin, registered_datasets

# Bounds on a plug-in's images: each set has 1 .. IMAGES_MAX images of CHANNELS channels
# and sides SIDE_MIN .. SIDE_MAX, BYTES_MAX bytes at most in all (4 GB as float32 on every
# worker, which holds the three splits on its device).
CHANNELS = (1, 3)
SIDE_RANGE = (4, 1024)
IMAGES_MAX = 1_000_000
BYTES_MAX = 1 << 30


@dataclass(frozen=True)
class Images:
    """What a data set's images are: their shape (channels, height, width), and how many
    its training and its test set hold (``test`` 0: no official test set)."""

    shape: tuple[int, int, int] = (1, 28, 28)
    train: int = MNIST_TRAIN_IMAGES
    test: int = MNIST_TEST_IMAGES
    digest: str = ""  # a plug-in's: SHA-256 of the images' shapes and bytes (DataSpec.images)

    @property
    def pixels(self) -> int:
        """Values per image: channels x height x width."""
        return math.prod(self.shape)

    def describe(self) -> str:
        """``3 x 32 x 32``."""
        return " x ".join(map(str, self.shape))


# Both have 60,000 + 10,000 images of 28 x 28 grey levels in the same IDX layout.
BUILTIN = {"mnist": Images(), "fashion-mnist": Images()}
_LABELS = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}  # as messages write them
# Every installed plug-in data set, by name, usable or not (``problem``).
PLUGINS: dict[str, Plugin] = registered_datasets(frozenset(BUILTIN))
DATASETS = (*BUILTIN, *(n for n, p in PLUGINS.items() if p.problem is None))


def tag(name: str) -> str:
    """What a trial key holds for the data set: a built-in one's name, a plug-in's name,
    distribution and version."""
    plugin = None if name in BUILTIN else PLUGINS.get(name)
    return plugin.model_version if plugin is not None else name


def from_tag(value: object) -> str | None:
    """The data set a key's ``tag`` names, None when it is none installed here."""
    if value in BUILTIN:
        return str(value)
    return next((n for n, p in PLUGINS.items() if p.model_version == value), None)


def label(name: str) -> str:
    """How messages and reports name it: ``MNIST``, ``shapes (shapesdata 0.1)``."""
    plugin = PLUGINS.get(name)
    return _LABELS.get(name) or (plugin.who if plugin is not None else name)


def problem(shape: tuple[int, ...], dtype: str, what: str) -> str | None:
    """Why images of ``shape`` and ``dtype`` (a torch or numpy dtype's name) cannot be a
    data set's ``what`` ("images", "test images"), None when they can."""
    if dtype not in ("uint8", "torch.uint8"):
        return f"its {what} are {dtype}, expected uint8 (grey levels 0 to 255)"
    if len(shape) != 4:
        return f"its {what} have {len(shape)} dimensions, expected 4: [N, C, H, W]"
    n, c, h, w = shape
    if not 1 <= n <= IMAGES_MAX:
        return f"it has {n} {what}, expected 1 to {IMAGES_MAX:,}"
    if c not in CHANNELS:
        return f"its {what} have {c} channels, expected 1 (grey) or 3 (colour)"
    low, high = SIDE_RANGE
    if not (low <= h <= high and low <= w <= high):
        return f"its {what} are {h} x {w} pixels, expected sides of {low} to {high}"
    if n * c * h * w > BYTES_MAX:
        return f"its {what} take {n * c * h * w:,} bytes, expected at most {BYTES_MAX:,}"
    return None
