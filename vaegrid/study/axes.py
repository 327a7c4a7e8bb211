"""The settings of a trial: declared once, here, with their bounds, defaults and labels.

``AXES`` is the one place the settings are declared: the study file's keys and their
validation (study/load.py), the trial config and its key (study/core.py), Optuna's
parameters and distributions (db/ledger.py), the tables' and CSVs' columns, the figures'
labels, ``plan``, the progress line and ``status`` all follow from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vaegrid.models import NAMES
from vaegrid.study.plugins import registered

if TYPE_CHECKING:  # optuna loads only where a distribution is made
    from optuna.distributions import BaseDistribution

MNIST_TRAIN_IMAGES = 60_000
MNIST_TEST_IMAGES = 10_000
OPTIMIZERS = ("adam", "adamw", "sgd")
# The built-in models (vaegrid/models/, one file each): the seed's linear VAE, Burda et
# al.'s MLP, a convolutional VAE.
MODELS = NAMES
ACTIVATIONS = ("tanh", "relu", "leaky_relu")
# What training minimises: the negative ELBO, or Burda et al.'s importance-weighted bound.
OBJECTIVES = ("elbo", "iwae")

# Bounds on the settings. Everything in a study file comes from outside: each bound keeps a
# bad value from crashing, exhausting or silently misleading a later stage.
# hidden: widths 1..HIDDEN_MAX.
HIDDEN_MAX = 16_384
# latent: latent dimensions 1..LATENT_MAX.
LATENT_MAX = 4_096
# lr: learning rates in this closed range (Optuna's stored distribution, db/ledger.py).
LR_RANGE = (1e-12, 1e6)
# clip: gradient-norm limits in this closed range (Optuna's stored distribution).
CLIP_RANGE = (1e-12, 1e12)
# beta: the KL weight of a beta-VAE, 0 (an autoencoder with a noisy code) up to this.
BETA_RANGE = (0.0, 1e4)
# weight_decay: L2 penalty (adam, sgd) or decoupled decay (adamw), 0 up to this.
WEIGHT_DECAY_RANGE = (0.0, 1e3)
# momentum: SGD's momentum, 0 (none) up to this (1 would never forget a gradient).
MOMENTUM_RANGE = (0.0, 0.999)
# depth: the MLP's deterministic layers (each side), 1..DEPTH_MAX.
DEPTH_MAX = 16
# channels: the conv model's first convolution's channels (the second has twice), 1..this.
CHANNELS_MAX = 512
# samples: IWAE's importance samples per image in training, 1..SAMPLES_MAX.
SAMPLES_MAX = 5_000
# epochs: 1..EPOCHS_MAX.
EPOCHS_MAX = 10_000
# data.limit: 0 (all) or up to the MNIST pool, 60,000 + 10,000 images.
LIMIT_MAX = MNIST_TRAIN_IMAGES + MNIST_TEST_IMAGES
# grid.repeats: 1..REPEATS_MAX runs of every config with different seeds.
REPEATS_MAX = 100


@dataclass(frozen=True)
class Axis:
    """A setting of a trial that a study may fix (``[train]``) or search (``[grid]``).

    A trial config holds one value of every axis; ``default[0]`` is the value of a
    setting a study never names.
    """

    name: str
    kind: type  # int, float or str
    default: tuple[Any, ...]  # the seed study's value(s)
    searched: bool  # in the seed's grid: a study that sets it nowhere searches ``default``
    low: float = 0.0  # numbers: allowed range, closed
    high: float = 0.0
    choices: tuple[str, ...] = ()  # strings: the allowed values
    log: bool = False  # values span decades: log scale in Optuna and the figures
    label: str = ""  # for figures and tables: what it is, with its unit
    # The setting means something only where the axis ``applies[0]`` takes one of the values
    # ``applies[1]`` (momentum: optimizer sgd); elsewhere a trial records ``default[0]``, a
    # neutral value, and a study file may not set another.
    applies: tuple[str, tuple[str, ...]] | None = None
    # Added after trial keys existed (model version 2): left out of a trial's key and of the
    # study's fingerprint while at ``default[0]``, so every older study keeps its keys.
    optional: bool = False
    # Its allowed values never change: an Optuna parameter. The model's (plug-ins come and
    # go) and a plug-in's own choices are recorded as user attributes instead, since Optuna
    # refuses a categorical parameter whose choices change within a study.
    ledgered: bool = True

    def allowed(self) -> str:
        """What a value of this axis may be, for messages."""
        if self.kind is str:
            return "one of " + ", ".join(f'"{c}"' for c in self.choices)
        what = "an integer" if self.kind is int else "a number"
        return f"{what} from {self.low:g} to {self.high:g}"

    def check(self, value: object) -> bool:
        """Whether ``value`` (from TOML) is an allowed value of this axis."""
        if self.kind is str:
            return value in self.choices
        if isinstance(value, bool):
            return False
        ok = isinstance(value, int) if self.kind is int else is_number(value)
        # Compared before kind(value): float(10**400) would raise OverflowError.
        return ok and self.low <= value <= self.high  # type: ignore[operator]

    def distribution(self, values: Sequence[Any] | None = None) -> BaseDistribution:
        """This axis as an Optuna distribution: over its whole allowed range (Optuna's
        ledger: a stored distribution may never change, and a grid may grow), or over the
        span of ``values`` (fANOVA, which integrates over the space it is given).
        """
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind is str:
            return CategoricalDistribution(sorted(values) if values else self.choices)
        low, high = (min(values), max(values)) if values else (self.low, self.high)
        log = self.log and low > 0
        if self.kind is int:
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(float(low), float(high), log=log)


AXES: tuple[Axis, ...] = (
    Axis("hidden", int, (400, 600, 800), True, 1, HIDDEN_MAX, log=True,
         label="hidden width (units)"),
    Axis("latent", int, (100, 200, 400), True, 1, LATENT_MAX, log=True,
         label="latent dimension"),
    Axis("epochs", int, (15,), False, 1, EPOCHS_MAX, label="epochs"),
    Axis("batch_size", int, (1000,), False, 2, LIMIT_MAX, log=True,
         label="batch size (images)"),
    Axis("optimizer", str, ("adam",), False, choices=OPTIMIZERS, label="optimizer"),
    Axis("lr", float, (1.0, 1e-5, 3e-2), True, *LR_RANGE, log=True, label="learning rate"),
    Axis("momentum", float, (0.0,), False, *MOMENTUM_RANGE, label="SGD momentum",
         applies=("optimizer", ("sgd",))),
    Axis("weight_decay", float, (0.0,), False, *WEIGHT_DECAY_RANGE, label="weight decay"),
    Axis("clip", float, (1.0, 2e-4), True, *CLIP_RANGE, log=True,
         label="max gradient norm"),
    Axis("beta", float, (1.0,), False, *BETA_RANGE, label="KL weight beta",
         applies=("objective", ("elbo",))),
    Axis("model", str, ("linear",), False, choices=MODELS, label="model", optional=True,
         ledgered=False),
    Axis("depth", int, (2,), False, 1, DEPTH_MAX, label="MLP layers",
         applies=("model", ("mlp",)), optional=True),
    Axis("activation", str, ("tanh",), False, choices=ACTIVATIONS, label="MLP activation",
         applies=("model", ("mlp",)), optional=True),
    Axis("channels", int, (32,), False, 1, CHANNELS_MAX, log=True, label="conv channels",
         applies=("model", ("conv",)), optional=True),
    Axis("objective", str, ("elbo",), False, choices=OBJECTIVES, label="objective",
         optional=True),
    Axis("samples", int, (5,), False, 1, SAMPLES_MAX, log=True, label="IWAE samples k",
         applies=("objective", ("iwae",)), optional=True),
)  # fmt: skip


def _with_plugins(builtin: tuple[Axis, ...]) -> tuple[Axis, ...]:
    """AXES with the models and settings of installed plug-ins (study/plugins.py)."""
    plugins = [p for p in PLUGINS.values() if p.problem is None]
    if not plugins:
        return builtin
    names = tuple(p.name for p in plugins)
    out = [
        dataclasses.replace(a, choices=a.choices + names) if a.name == "model" else a
        for a in builtin
    ]  # fmt: skip
    users: dict[str, tuple[str, ...]] = {}  # setting -> the models that declare it
    declared: dict[str, dict[str, Any]] = {}
    for p in plugins:
        for s in p.settings:
            users[s["name"]] = (*users.get(s["name"], ()), p.name)
            declared[s["name"]] = s
    for name, s in declared.items():
        out.append(Axis(
            name, s["type"], (s["default"],), False, s.get("low", 0.0), s.get("high", 0.0),
            s.get("choices", ()), label=s["label"], applies=("model", users[name]),
            optional=True, ledgered=s["type"] is not str,
        ))  # fmt: skip
    return tuple(out)


# Every installed plug-in model, by name, usable or not (``problem``).
# Names a plug-in's setting may not take: the settings', the trial config's fields and the
# tables' columns (a setting called "repeat", "status" or "elbo" would overwrite one).
RESERVED = frozenset(
    {a.name for a in AXES} | set(MODELS) | {
        "seed", "data", "repeat", "repeats", "key", "config", "config_id", "settings",
        "version", "describe", "replace", "make", "status", "seconds", "cause", "rung",
        "epochs_done", "epoch", "split", "criterion", "rank", "model_version", "n_repeats",
        "n_tested", "best_epoch", "nll_samples", "likelihood", "wins",
        # every column of vaegrid's tables (tests/test_plugins.py checks against db/schema.py)
        "beat", "description", "device", "device_kind", "diverged_epoch", "elbo", "ended",
        "error", "evaluated", "expires", "fingerprint", "host", "id", "kl", "max_rss_mb",
        "name", "nll", "optuna_trial_id", "owner", "peak_device_mb", "pid", "recon", "run_id",
        "slots", "source", "started", "study", "token", "value", "versions", "worker",
    }
)  # fmt: skip
PLUGINS = registered(RESERVED)
AXES = _with_plugins(AXES)
AXIS = {a.name: a for a in AXES}


def applies(axis: Axis, settings: Mapping[str, Any]) -> bool:
    """Whether ``axis`` means something in a trial of these settings. A row of a table
    without the parent's column (a study that fixes it) is one it applies to: a study file
    searches a setting only where it applies."""
    parent = axis.applies
    return parent is None or parent[0] not in settings or settings[parent[0]] in parent[1]


def neutralize(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with every setting that does not apply set to its neutral value."""
    for axis in AXES:
        if not applies(axis, settings):
            settings[axis.name] = axis.default[0]
    return settings


def is_number(x: object) -> bool:
    """A finite int or float from TOML (not a bool)."""
    # An int is finite however large; math.isfinite(10**400) would raise OverflowError.
    if isinstance(x, bool) or not isinstance(x, int | float):
        return False
    return isinstance(x, int) or math.isfinite(x)


def describe(values: Mapping[str, Any], names: Sequence[str]) -> str:
    """``hidden 400, latent 100, lr 0.03``: a config by the settings ``names``, as plan,
    the progress lines, the tables, report.md and the figures write it."""
    return ", ".join(f"{n} {format_value(values[n])}" for n in names)


def format_value(value: object) -> str:
    """A setting's value as plan, the progress line, tables and figures show it: floats
    with ``:g``; numpy and pandas scalars as their Python value."""
    item = getattr(value, "item", None)
    if callable(item):
        value = item()
    return f"{value:g}" if isinstance(value, float) else str(value)
