"""A study and its trials: the validated study, the grid's expansion, the trial config and
its key. Loading a study file (the hostile part) is study/load.py's.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vaegrid.models import CARDS
from vaegrid.study import datasets
from vaegrid.study.axes import (
    AXES,
    AXIS,
    PLUGINS,
    applies,
    describe,
    neutralize,
)
from vaegrid.study.datasets import Images
from vaegrid.study.sizes import largest_trials, training_mb

# Each model's version (its card's: bumped when what a config computes changes) is part of
# every trial key, so old results never pass for new; a linear trial's key is what it was
# before other models existed. MODEL: the seed's, named in the study's fingerprint.
MODEL = CARDS["linear"].version
MODEL_VERSIONS = {name: card.version for name, card in CARDS.items()}
# A plug-in's (study/plugins.py): its name, distribution and version.
MODEL_VERSIONS |= {n: p.model_version for n, p in PLUGINS.items() if n in AXIS["model"].choices}
_MODEL_OF = {v: k for k, v in MODEL_VERSIONS.items()}
SPLITS = ("holdout", "official")
# "none": grey levels in [0, 1] (the seed's; a Bernoulli likelihood of grey levels is not
# comparable with published results). "dynamic": every training image drawn afresh as
# Bernoulli(pixel) each epoch; "static": drawn once. Validation and test: drawn once.
BINARIZE = ("none", "dynamic", "static")
# [halving] metric: the validation metric trials are compared by at a rung (lower is better).
HALVING_METRICS = ("val_elbo", "val_recon", "val_nll")
MNIST_IMAGES = Images()  # MNIST's (and Fashion-MNIST's): 1 x 28 x 28, 60,000 + 10,000


@dataclass(frozen=True)
class DataSpec:
    """Which images a study trains, selects and tests on."""

    # "mnist" (the seed's), "fashion-mnist" (torchvision's FashionMNIST files) or a
    # registered plug-in's (study/datasets.py).
    dataset: str = "mnist"
    # "holdout": pool all 70,000 images, seeded permutation, cut by `fractions` (the seed's
    # protocol). "official": 54,000 / 6,000 of the training set and the 10,000 test images.
    split: str = "holdout"
    # Train / validation / test shares of the pool (holdout only); each split non-empty.
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # Use only this many images of the permuted pool (0 = all): small smoke studies.
    limit: int = 0
    # Grey levels ("none") or binarized pixels ("dynamic", "static"): see BINARIZE.
    binarize: str = "none"
    # A plug-in data set's images: the SHA-256 of their shapes and bytes, as the driver's
    # probe loaded them (train/probe.py): in the key, so changed images are never mixed
    # with old results, and checked by every worker that loads them. Not a study file's
    # key; "" for the built-in data sets (their keys are what they were).
    images: str = ""

    @functools.cached_property
    def typed_key(self) -> object:
        """:func:`typed` of these settings, made once: the cache key of what is computed
        from them (a study's configs share one DataSpec, read back as one: ``from_json``)."""
        return typed(self)


@dataclass(frozen=True)
class HalvingSpec:
    """Synchronous successive halving: which trials go on at each rung (halving.py).

    Opt-in: a study without a ``[halving]`` table runs its full grid. Trial keys never
    depend on it: a trial that goes on to the end computes exactly what it computes in
    the full grid.
    """

    # The epochs at which trials are compared: strictly increasing, each in 1 .. epochs - 1.
    rungs: tuple[int, ...]
    # The share that goes on at each rung: the best max(1, ceil(keep x n)) of the n trials
    # compared, keep taken as the decimal the file writes (0.1 x 30 = 3, not 3.0000000000000004).
    keep: float
    # What trials are compared by at a rung: their validation metric at that epoch.
    metric: str = "val_elbo"


@dataclass(frozen=True)
class Study:
    """A validated study: its data, each axis's values, which axes it searches."""

    name: str  # results go to <results>/<name>/; defaults to the file's stem
    seed: int  # seeds the split and every random draw of every trial
    data: DataSpec
    # Every axis of AXES, in that order, with its values: one for a fixed setting.
    settings: tuple[tuple[str, tuple[Any, ...]], ...]
    searched: tuple[str, ...]  # the axes in the grid (in AXES order): tables' columns
    source: str  # the file it was loaded from, for messages
    halving: HalvingSpec | None = None  # None: every trial runs all its epochs
    repeats: int = 1  # runs of every config, with seeds from (study seed, repeat)
    description: str = ""  # the study file's words on it, for report.md (not a setting)
    # [rank] nll_samples: k of the importance-sampled validation NLL (val_nll) computed at
    # the end of every trial (and at the rungs when halving compares by it); 0: none.
    nll_samples: int = 0
    # [sample] (configs, seed): that many configs of the grid, the first of its configs in
    # an order drawn by the seed (more configs keep the ones drawn before); None: all.
    # Not in the fingerprint: like the grid, it may change between runs.
    sample: tuple[int, int] | None = None

    def values(self, axis: str) -> tuple[Any, ...]:
        return dict(self.settings)[axis]

    @property
    def epochs(self) -> int:
        """The most epochs any trial trains."""
        return int(max(self.values("epochs")))

    def fingerprint(self) -> dict[str, Any]:
        """The fixed settings: a stored study is only resumed by a study with the same ones
        (study/fingerprint.py)."""
        from vaegrid.study.fingerprint import Fingerprint

        return dict(Fingerprint.of(self))


@dataclass(frozen=True)
class Probed:
    """What a study's data set and plug-in models are, as known before any trial runs:
    kept apart from the study, which holds what its file says (and a plug-in data set's
    digest, in its keys). A built-in data set's images are known from the start
    (:meth:`of`); a plug-in's, and plug-in models' work, once the driver's probe has run
    them (train/probe.py)."""

    images: Images
    # Plug-in models' work as the probe measured it: (model, encoder and decoder factors
    # over the cost model's guess); () for built-in models.
    plugin_work: tuple[tuple[str, float, float], ...] = ()

    @classmethod
    def of(cls, study: Study) -> Probed | None:
        """A study's, when it needs no probe for its images (a built-in data set); None for
        a plug-in data set not probed."""
        images = datasets.BUILTIN.get(study.data.dataset)
        return None if images is None else cls(images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The images' (channels, height, width)."""
        return self.images.shape

    def training_mb(self, study: Study) -> int:
        """The memory the study's largest trial's training step needs (:func:`training_mb`)."""
        return max(training_mb(t, self.shape) for t in largest_trials(dict(study.settings)))

    @property
    def data_mb(self) -> int:
        """What a worker holds of a plug-in data set's images beyond MNIST's (which the
        worker's own measured memory counts): its float32 splits and, while they are made,
        as much again (MB); 0 for the built-in data sets."""
        floats = (self.images.train + self.images.test) * self.images.pixels
        mnist = (MNIST_IMAGES.train + MNIST_IMAGES.test) * MNIST_IMAGES.pixels
        return max(0, 2 * 4 * (floats - mnist)) // (1 << 20)


@dataclass(frozen=True, eq=True)
class TrialConfig:
    """Everything one trial computes from; its hash is the trial key.

    The study's seed and data, the repeat (which seeds it draws from) and one value of
    every axis of ``AXES``: ``cfg.lr`` reads a setting like a field, ``cfg.model`` names the
    model, ``cfg.version`` is that model's version (in the key). Make one with
    :meth:`make`, which fills unnamed settings with their axis's default.
    """

    seed: int
    data: DataSpec
    settings: tuple[tuple[str, Any], ...]  # (axis name, value) for every axis, AXES order
    repeat: int = 0

    def __post_init__(self) -> None:
        names = tuple(n for n, _ in self.settings)
        if names != _AXIS_NAMES:
            raise TypeError(f"a trial config holds every setting of AXES, in order; got {names}")

    def __getattr__(self, name: str) -> Any:
        """A setting's value (``cfg.hidden``): called only when no field has the name."""
        at = _AXIS_AT.get(name)
        if at is None:
            raise AttributeError(name)
        return object.__getattribute__(self, "settings")[at][1]

    @property
    def version(self) -> str:
        """The model's version: what its trial key and weights say it was computed by."""
        return MODEL_VERSIONS[self.model]

    @classmethod
    def make(cls, seed: int, data: DataSpec, repeat: int = 0, **settings: Any) -> TrialConfig:
        """A config from settings by name; every axis not named takes its default.

        Raises:
            TypeError: a name that is no axis of ``AXES``.
        """
        if not settings.keys() <= AXIS.keys():
            unknown = sorted(set(settings) - set(AXIS))
            raise TypeError(f"{', '.join(unknown)}: not a setting (see study/axes.py's AXES)")
        values = tuple((a.name, settings.get(a.name, a.default[0])) for a in AXES)
        return cls(seed, data, values, repeat)

    def replace(self, **changes: Any) -> TrialConfig:
        """This config with some fields or settings changed."""
        fields = {k: changes.pop(k) for k in ("seed", "data", "repeat") if k in changes}
        merged = {**dict(self.settings), **changes}
        return TrialConfig.make(
            fields.get("seed", self.seed),
            fields.get("data", self.data),
            fields.get("repeat", self.repeat),
            **merged,
        )

    @functools.cached_property
    def key(self) -> str:
        """A short stable hash of the full config: 12 hex digits of SHA-256 (made once: the
        driver asks a trial's key at every turn, and its JSON is most of its cost)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    @functools.cached_property
    def config_id(self) -> str:
        """The key of this config at repeat 0: what the repeats of one config share."""
        at_0 = type(self.repeat) is int and self.repeat == 0  # (0.0 would be another JSON)
        return self.key if at_0 else self.replace(repeat=0).key

    def axis_values(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """The values of ``names`` (default: every axis), as tables and Optuna name them."""
        values = dict(self.settings)
        return {n: values[n] for n in (names if names is not None else AXIS)}

    def describe(self, names: Sequence[str]) -> str:
        """``hidden 400, latent 100, lr 0.03, clip 1`` (and the repeat when not 0): the
        settings ``names`` that apply to this trial (no depth for a linear model)."""
        values = dict(self.settings)
        names = [n for n in names if applies(AXIS[n], values)]
        parts = [describe(values, names)] if names else []
        return ", ".join(parts + ([f"repeat {self.repeat}"] if self.repeat else []))

    def as_dict(self) -> dict[str, Any]:
        """The config as one flat mapping: what its JSON and key are made of. ``model``
        holds the model's version; an optional axis at its default is left out (a linear
        VAE's key is the one it had before other models existed)."""
        settings = {
            a.name: v
            for a, (_, v) in zip(AXES, self.settings, strict=True)
            if not (a.optional and v == a.default[0])
        }
        return {
            "seed": self.seed,
            "data": data_dict(self.data),
            "repeat": self.repeat,
            **settings,
            "model": self.version,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrialConfig:
        """A config from its JSON.

        Raises:
            ValueError: not JSON, or not a config's (a refused name raises TypeError).
        """
        raw = json.loads(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
            raise ValueError("not a trial config (a JSON object with its data settings)")
        data = raw.pop("data")
        dataset = datasets.from_tag(data.get("dataset"))
        if dataset is None:
            if PLUGIN_TAG.fullmatch(str(data.get("dataset"))):
                raise NotInstalled(f"data set {data['dataset']}")
            raise ValueError(f"data set {str(data.get('dataset'))[:60]!r} is not installed here")
        data = _data_spec(data, dataset)
        version = raw.pop("model", None)
        if version not in _MODEL_OF:
            if PLUGIN_TAG.fullmatch(str(version)):
                raise NotInstalled(f"model {version}")
            raise ValueError(f"model {str(version)[:40]!r} is no model this vaegrid computes")
        return cls.make(raw.pop("seed"), data, model=_MODEL_OF[version], **raw)


_AXIS_NAMES = tuple(a.name for a in AXES)
_AXIS_AT = {name: i for i, name in enumerate(_AXIS_NAMES)}  # a setting's place in settings
_SPECS: dict[str, DataSpec] = {}  # DataSpecs read, by their JSON values' repr
_SPECS_KEPT = 64


def _data_spec(data: dict[str, Any], dataset: str) -> DataSpec:
    """The DataSpec of a config's parsed ``data``: one object for equal settings, so what
    is cached on it (its typed key) is made once for a table of 100,000 configs. The repr
    of JSON values tells apart 0, 0.0, -0.0 and False, as the key must."""
    text = repr(sorted(data.items()))
    spec = _SPECS.get(text)
    if spec is None:
        spec = DataSpec(**{**data, "dataset": dataset, "fractions": tuple(data["fractions"])})
        if len(_SPECS) >= _SPECS_KEPT:
            _SPECS.clear()
        _SPECS[text] = spec
    return spec


# A plug-in's tag in a key (study/plugins.py, Plugin.model_version): name@dist==version, and
# for a model #code=<digest>.
PLUGIN_TAG = re.compile(r"[a-z][a-z0-9_]{0,39}@[A-Za-z0-9][A-Za-z0-9._-]{0,99}=="
                        r"[A-Za-z0-9][A-Za-z0-9.+!_-]{0,63}(#code=[0-9a-f]{12})?")  # fmt: skip


class NotInstalled(ValueError):
    """A stored config of a plug-in (model or data set) that is not installed here, or not
    in this version or with this code: its trial is another computation's, kept and never
    mixed with this one's (its text: ``model toy@toyvae==0.1#code=...``)."""


def typed(value: object) -> object:
    """``value`` with the type of each part beside it: a cache key that tells apart 0,
    0.0, -0.0 and False, which compare and hash equal (a list stays unhashable)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value),
            tuple(typed(getattr(value, f.name)) for f in dataclasses.fields(value)),
        )
    if isinstance(value, tuple):
        return (tuple, tuple(typed(v) for v in value))
    if isinstance(value, float):
        return (float, math.copysign(1.0, value), value)
    return (type(value), value)


def data_dict(data: DataSpec) -> dict[str, Any]:
    """The data settings as keys and fingerprints hold them: a plug-in data set by its name,
    distribution and version (images of another version are never mixed in)."""
    return dict(_data_dict(data.typed_key, data))  # a copy: the cached one is shared


@functools.lru_cache(maxsize=64)
def _data_dict(kind: object, data: DataSpec) -> dict[str, Any]:  # a study's trials share one
    out = {**dataclasses.asdict(data), "dataset": datasets.tag(data.dataset)}
    if not data.images:
        del out["images"]
    return out


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and platforms."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def split_sizes(data: DataSpec, images: Images = MNIST_IMAGES) -> tuple[int, int, int]:
    """Images in the train, validation and test splits of ``data`` drawn from ``images``'
    training and test sets (default: MNIST's)."""
    if data.split == "official":
        n_val = images.train // 10
        return images.train - n_val, n_val, images.test
    pool = data.limit or images.train + images.test
    n_train = round(data.fractions[0] * pool)
    n_val = round(data.fractions[1] * pool)
    return n_train, n_val, pool - n_train - n_val


def expand(study: Study) -> list[TrialConfig]:
    """The grid's trials: repeat by repeat, each the cross product of the axes' values in
    the order of the study file. A setting that does not apply to a trial (momentum without
    sgd, depth without mlp: ``Axis.applies``) is recorded at its neutral value, and the
    trials that then coincide are one trial."""
    chosen = None if study.sample is None else set(sampled(study))
    configs: dict[str, dict[str, Any]] = {}  # one pass over the product, whatever the repeats
    for setting in _settings(study):
        identity = _identity(setting, study.searched)
        if chosen is None or identity in chosen:
            configs.setdefault(identity, setting)
    out: dict[str, TrialConfig] = {}
    for repeat in range(study.repeats):
        for setting in configs.values():
            cfg = TrialConfig.make(study.seed, study.data, repeat=repeat, **setting)
            out.setdefault(cfg.key, cfg)
    return list(out.values())


def _settings(study: Study) -> Iterator[dict[str, Any]]:
    """Every combination of the study's values, neutralized (``Axis.applies``)."""
    names = [name for name, _ in study.settings]
    for values in itertools.product(*(v for _, v in study.settings)):
        yield neutralize(dict(zip(names, values, strict=True)))


def sampled(study: Study) -> list[str]:
    """``[sample]``'s configs, as identities of their settings: every distinct config of the
    grid ranked by a hash of (sample seed, its settings), the first ``configs`` of them.
    The rank of a config never depends on the others, so raising ``configs`` keeps the
    configs drawn before, and a grown grid keeps those that still rank first."""
    assert study.sample is not None
    configs, seed = study.sample
    ranked = sorted(_distinct(study), key=lambda i: (derive_seed("sample", seed, i), i))
    return ranked[:configs]


def grid_configs(study: Study) -> int:
    """The distinct configs of the study's whole grid (before ``[sample]``)."""
    return len(_distinct(study))


def _distinct(study: Study) -> set[str]:
    return {_identity(setting, study.searched) for setting in _settings(study)}


def _identity(setting: Mapping[str, Any], searched: Sequence[str]) -> str:
    """A config's searched settings as one string (the sample's hash input): the same
    whatever else is installed or fixed."""
    return json.dumps({n: setting[n] for n in searched}, sort_keys=True)
