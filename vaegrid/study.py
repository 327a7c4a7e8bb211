"""Study files: load a TOML study, validate it once, expand its grid into keyed trials.

A study file holds only overrides of the defaults documented on the dataclasses
below (an empty file is the seed study). ``load_study`` is the only way in: it
rejects unknown keys and bad values with an :class:`InputError` that names the
file, the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaegrid.errors import InputError

# Bump when the model or the training loop changes what a config computes: it is part
# of every trial key and of the study's fingerprint, so old results never pass for new.
MODEL = "linear-vae-1"

MNIST_TRAIN_IMAGES = 60_000
MNIST_TEST_IMAGES = 10_000
SPLITS = ("holdout", "official")
DATASETS = ("mnist",)
OPTIMIZERS = ("adam",)


@dataclass(frozen=True)
class DataSpec:
    """Which images a study trains, selects and tests on."""

    # The data set. Only MNIST, the seed study's, is supported.
    dataset: str = "mnist"
    # "holdout": pool all 70,000 images, seeded permutation, cut by `fractions` (the seed's
    # protocol). "official": 54,000 / 6,000 of the training set and the 10,000 test images.
    split: str = "holdout"
    # Train / validation / test shares of the pool (holdout only); each split non-empty.
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # Use only this many images of the permuted pool (0 = all): small smoke studies.
    limit: int = 0


@dataclass(frozen=True)
class TrainSpec:
    """How every trial of the study trains."""

    # Passes over the training split.
    epochs: int = 15
    # Images per optimisation step; at most the size of the training split.
    batch_size: int = 1000
    # The optimizer. The seed used Adam; it is the only one supported.
    optimizer: str = "adam"


@dataclass(frozen=True)
class GridSpec:
    """The searched values; the grid is their full cross product."""

    # Width of the encoder's and the decoder's hidden layer.
    hidden: tuple[int, ...] = (400, 600, 800)
    # Dimension of the latent code z.
    latent: tuple[int, ...] = (100, 200, 400)
    # Adam learning rate.
    lr: tuple[float, ...] = (1.0, 1e-5, 3e-2)
    # Maximum global gradient norm (torch.nn.utils.clip_grad_norm_).
    clip: tuple[float, ...] = (1.0, 2e-4)


@dataclass(frozen=True)
class Study:
    """A validated study: fixed settings plus the grid."""

    name: str  # results go to <results>/<name>/; defaults to the file's stem
    seed: int  # seeds the split and every random draw of every trial
    data: DataSpec
    train: TrainSpec
    grid: GridSpec
    source: str  # the file it was loaded from, for messages

    def fingerprint(self) -> dict[str, Any]:
        """The fixed settings: a stored study is only resumed by a study with the same ones."""
        return {
            "model": MODEL,
            "seed": self.seed,
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
        }


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial computes from; its hash is the trial key."""

    seed: int
    data: DataSpec
    train: TrainSpec
    hidden: int
    latent: int
    lr: float
    clip: float
    model: str = MODEL

    @property
    def key(self) -> str:
        """A short stable hash of the full config: 12 hex digits of SHA-256."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    @property
    def params(self) -> dict[str, int | float]:
        """The searched values, as Optuna and the tables name them."""
        return {"hidden": self.hidden, "latent": self.latent, "lr": self.lr, "clip": self.clip}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrialConfig:
        raw = json.loads(text)
        raw["data"] = DataSpec(**{**raw["data"], "fractions": tuple(raw["data"]["fractions"])})
        raw["train"] = TrainSpec(**raw["train"])
        return cls(**raw)


def split_sizes(data: DataSpec) -> tuple[int, int, int]:
    """Images in the train, validation and test splits of ``data``."""
    if data.split == "official":
        n_val = MNIST_TRAIN_IMAGES // 10
        return MNIST_TRAIN_IMAGES - n_val, n_val, MNIST_TEST_IMAGES
    pool = data.limit or MNIST_TRAIN_IMAGES + MNIST_TEST_IMAGES
    n_train = round(data.fractions[0] * pool)
    n_val = round(data.fractions[1] * pool)
    return n_train, n_val, pool - n_train - n_val


def expand(study: Study) -> list[TrialConfig]:
    """The grid's trials, in the order of the values in the study file."""
    g = study.grid
    return [
        TrialConfig(study.seed, study.data, study.train, hidden, latent, lr, clip)
        for hidden, latent, lr, clip in itertools.product(g.hidden, g.latent, g.lr, g.clip)
    ]


def load_study(path: str | Path) -> Study:
    """Read and validate a study file.

    Args:
        path: A TOML study file.

    Returns:
        The validated study.

    Raises:
        InputError: the file is missing, is not TOML, or holds an unknown key or bad value.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: study file not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read study file: {e.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML: {e}") from None
    return parse_study(raw, source=str(path), default_name=path.stem)


_TOP_KEYS = {"name", "description", "seed", "data", "train", "grid"}


def parse_study(raw: Mapping[str, Any], source: str, default_name: str) -> Study:
    """Validate the parsed TOML of a study file (pure: no I/O).

    Raises:
        InputError: naming ``source``, the key, the bad value and what is allowed.
    """
    v = _Validator(source)
    v.known(raw, "", _TOP_KEYS)
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        v.fail("name", name, "a non-empty name of letters, digits, '-', '_' and '.'")
    if "description" in raw and not isinstance(raw["description"], str):
        v.fail("description", raw["description"], "a string")
    seed = v.integer(raw, "", "seed", 0, minimum=0)

    d = v.table(raw, "data", DataSpec)
    dataset = v.choice(d, "data.", "dataset", DataSpec.dataset, DATASETS)
    split = v.choice(d, "data.", "split", DataSpec.split, SPLITS)
    fractions = _fractions(v, d)
    limit = v.integer(d, "data.", "limit", DataSpec.limit, minimum=0)
    if split == "official" and ("fractions" in d or limit):
        key = "fractions" if "fractions" in d else "limit"
        v.fail(f"data.{key}", d[key], 'nothing: it applies to split = "holdout" only')
    data = DataSpec(dataset, split, fractions, limit)
    if limit and min(split_sizes(data)) < 2:
        v.fail("data.limit", limit, "enough images that each split holds at least 2")

    t = v.table(raw, "train", TrainSpec)
    epochs = v.integer(t, "train.", "epochs", TrainSpec.epochs, minimum=1)
    batch = v.integer(t, "train.", "batch_size", TrainSpec.batch_size, minimum=2)
    optimizer = v.choice(t, "train.", "optimizer", TrainSpec.optimizer, OPTIMIZERS)
    n_train = split_sizes(data)[0]
    if batch > n_train:
        v.fail("train.batch_size", batch, f"at most the {n_train} images of the training split")
    train = TrainSpec(epochs, batch, optimizer)

    gr = v.table(raw, "grid", GridSpec)
    grid = GridSpec(
        hidden=v.values(gr, "hidden", GridSpec.hidden, int),
        latent=v.values(gr, "latent", GridSpec.latent, int),
        lr=v.values(gr, "lr", GridSpec.lr, float),
        clip=v.values(gr, "clip", GridSpec.clip, float),
    )
    return Study(name, seed, data, train, grid, source)


def _fractions(v: _Validator, d: Mapping[str, Any]) -> tuple[float, float, float]:
    value = d.get("fractions", DataSpec.fractions)
    allowed = "three numbers in (0, 1) for train, validation, test that sum to 1"
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not all(_is_number(f) for f in value)
    ):
        v.fail("data.fractions", value, allowed)
    fractions = (float(value[0]), float(value[1]), float(value[2]))
    if not all(0 < f < 1 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        v.fail("data.fractions", value, allowed)
    data = DataSpec(fractions=fractions)
    if min(split_sizes(data)) < 1:
        v.fail("data.fractions", value, "shares that leave no split empty")
    return fractions


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


class _Validator:
    """Reads typed values out of the raw TOML, failing with one complete line."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, value: object, allowed: str) -> None:
        raise InputError(
            f"{self.source}: {key} = {_show(value)} is not allowed; expected {allowed}"
        )

    def known(self, table: Mapping[str, Any], prefix: str, keys: set[str]) -> None:
        for key in table:
            if key not in keys:
                where = f" in [{prefix.rstrip('.')}]" if prefix else ""
                raise InputError(
                    f"{self.source}: unknown key '{prefix}{key}'; "
                    f"allowed keys{where}: {', '.join(sorted(keys))}"
                )

    def table(self, raw: Mapping[str, Any], name: str, spec: type) -> Mapping[str, Any]:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            self.fail(name, table, f"a table [{name}]")
        self.known(table, name + ".", {f.name for f in dataclasses.fields(spec)})
        return table

    def integer(
        self, t: Mapping[str, Any], prefix: str, key: str, default: int, minimum: int
    ) -> int:
        value = t.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            self.fail(prefix + key, value, kind)
        return int(value)

    def choice(
        self, t: Mapping[str, Any], prefix: str, key: str, default: str, allowed: tuple[str, ...]
    ) -> str:
        value = t.get(key, default)
        if value not in allowed:
            self.fail(prefix + key, value, "one of " + ", ".join(f'"{a}"' for a in allowed))
        return str(value)

    def values(
        self, grid: Mapping[str, Any], key: str, default: tuple[Any, ...], kind: type
    ) -> tuple[Any, ...]:
        value = grid.get(key, list(default))
        what = "positive integers" if kind is int else "positive numbers"
        allowed = f"a non-empty list of distinct {what}"
        if not isinstance(value, list) or not value:
            self.fail("grid." + key, value, allowed)
        for item in value:
            ok = isinstance(item, int) if kind is int else _is_number(item)
            if isinstance(item, bool) or not ok or item <= 0:
                self.fail("grid." + key, item, f"{what} in a non-empty list of distinct values")
        out = tuple(kind(item) for item in value)
        if len(set(out)) != len(out):
            dup = next(x for x in out if out.count(x) > 1)
            self.fail("grid." + key, value, f"{allowed} ({_show(dup)} is listed twice)")
        return out


def _show(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)
