"""How a study file's values are read and refused: typed, bounded, and every refusal one
complete line that names the file, the key, the value and what is allowed; and the study
checked against its images (:func:`check_sizes`: the model's size, a step's memory)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from vaegrid.errors import InputError
from vaegrid.models import CARDS
from vaegrid.study import datasets
from vaegrid.study.axes import AXIS, PLUGINS, Axis, applies
from vaegrid.study.core import Study, split_sizes
from vaegrid.study.datasets import Images
from vaegrid.study.plugins import NAME
from vaegrid.study.sizes import largest_trials, parameter_count, training_mb

# Longest value quoted in a message: a 1 MiB value would not be one readable line.
SHOWN_MAX_CHARS = 200


# Each grid list holds at most this many values.
GRID_VALUES_MAX = 1_000


# Every (hidden, latent) pair gives a VAE of at most this many parameters (200 MB float32).
MODEL_PARAMETERS_MAX = 50_000_000


# A training step of any trial needs at most this much memory (Probed.training_mb's
# estimate): IWAE's k samples of a batch multiply the decoder's activations.
TRAINING_MB_MAX = 16_384


def check_sizes(study: Study, images: Images) -> None:
    """Refuse what the study's images (a built-in data set's when it is loaded, a
    plug-in's once probed, train/probe.py) do not allow: a limit beyond its
    images, official split without a test set, a batch larger than the training split,
    images a model cannot take (conv: sides not divisible by 4), a model over MODEL_PARAMETERS_MAX
    parameters or a training step over TRAINING_MB_MAX at its largest settings.

    Raises:
        InputError: naming the study file, the setting and what is allowed.
    """
    v = Validator(study.source)
    data, by_axis = study.data, dict(study.settings)
    shown = f"{datasets.label(data.dataset)} ({images.describe()}, {images.train:,} training"
    shown += f" and {images.test:,} test images)" if images.test else " images, no test set)"
    if data.limit > images.train + images.test:
        v.fail("data.limit", data.limit, f"at most the {images.train + images.test:,} images "
               f"of {shown}")  # fmt: skip
    if data.split == "official" and not images.test:
        v.fail("data.split", data.split, f'"holdout": {shown} has no official test split')
    if min(split_sizes(data, images)) < 1:
        if data.split == "official":
            v.fail("data.split", data.split, f'"holdout": {shown} has too few training images '
                   "for the official split's validation tenth (at least 10)")  # fmt: skip
        v.fail("data.fractions", list(data.fractions), f"shares that leave no split of {shown} "
               "empty")  # fmt: skip
    where = "grid." if "batch_size" in study.searched else "train."
    n_train, batch = split_sizes(data, images)[0], max(by_axis["batch_size"])
    if batch > n_train:
        v.fail(where + "batch_size", batch, f"at most the {n_train} images of the training split")
    for model in by_axis["model"]:  # a model's own rule on the images it takes
        refused = CARDS[model].refuses(images.shape) if model in CARDS else None
        if refused is not None:
            v.fail("data.dataset", data.dataset, f"{refused}; {shown}")
    # Parameters and memory grow with every size: each model's largest trial is the one.
    largest = largest_trials(by_axis)
    for trial in largest:
        n_params = parameter_count(trial, images.shape)
        if n_params > MODEL_PARAMETERS_MAX:
            dims = ("hidden", "latent", "depth", "channels")
            named = ", ".join(f"{n} = {trial[n]}" for n in dims if applies(AXIS[n], trial))
            raise InputError(
                f"{v.source}: model {trial['model']} with {named} has {n_params:,} parameters; "
                f"expected at most {MODEL_PARAMETERS_MAX:,} for every config (images of "
                f"{images.describe()})"
            )
    worst = max(largest, key=lambda t: training_mb(t, images.shape))
    need = training_mb(worst, images.shape)
    if need > TRAINING_MB_MAX:
        which = ["model", "batch_size", "hidden"]
        which += ["channels"] if worst["model"] == "conv" else []
        which += ["samples"] if worst["objective"] == "iwae" else []
        named = ", ".join(f"{n} = {worst[n]}" for n in which)
        raise InputError(
            f"{v.source}: {named} needs about {need:,} MB per training step (parameters, "
            f"Adam's moments, activations); expected at most {TRAINING_MB_MAX:,} MB: a "
            f"smaller batch_size or fewer samples (images of {images.describe()})"
        )


class Validator:
    """Reads typed values out of the raw TOML, failing with one complete line."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, value: object, allowed: str) -> NoReturn:
        raise InputError(f"{self.source}: {key} = {show(value)} is not allowed; expected {allowed}")

    def known(self, table: Mapping[str, Any], prefix: str, keys: set[str]) -> None:
        for key in table:
            if key not in keys:
                where = f" in [{prefix.rstrip('.')}]" if prefix else ""
                hint = (  # a setting of a plug-in model that is not installed here
                    " (a plug-in model's setting? no installed plug-in declares it: pip "
                    "install the package that does)"
                    if prefix in ("train.", "grid.") and isinstance(key, str)
                    and NAME.fullmatch(key) else ""
                )  # fmt: skip
                raise InputError(
                    f"{self.source}: unknown key '{prefix}{toml_key(key)}'; "
                    f"allowed keys{where}: {', '.join(sorted(keys))}{hint}"
                )

    def table(self, raw: Mapping[str, Any], name: str, keys: set[str]) -> Mapping[str, Any]:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            self.fail(name, table, f"a table [{name}]")
        self.known(table, name + ".", keys)
        return table

    def integer(
        self,
        t: Mapping[str, Any],
        prefix: str,
        key: str,
        default: int,
        minimum: int,
        maximum: int | None,
        allowed: str | None = None,
    ) -> int:
        value = t.get(key, default)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        if not ok or (maximum is not None and value > maximum):
            if allowed is None:
                allowed = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
                allowed += f" up to {maximum}" if maximum is not None else ""
            self.fail(prefix + key, value, allowed)
        return int(value)

    def choice(
        self, t: Mapping[str, Any], prefix: str, key: str, default: str, allowed: tuple[str, ...]
    ) -> str:
        value = t.get(key, default)
        if value not in allowed:
            self.fail(prefix + key, value, "one of " + ", ".join(f'"{a}"' for a in allowed))
        return str(value)

    def values(
        self, table: Mapping[str, Any], prefix: str, axis: Axis, list_ok: bool
    ) -> tuple[Any, ...]:
        """An axis's values: one value, or (``list_ok``) a non-empty list of distinct ones."""
        key = prefix + axis.name
        value = table[axis.name]
        for item in value if isinstance(value, list) else [value]:
            broken = PLUGINS.get(item) if axis.name == "model" and isinstance(item, str) else None
            if broken is not None and broken.problem is not None:
                self.fail(key, item, f"a usable model: {broken.who_registers} it, "
                          f"but {broken.problem}")  # fmt: skip
        if not isinstance(value, list):
            if not axis.check(value):
                self.fail(key, value, axis.allowed() + (" or a list of such" if list_ok else ""))
            return (axis.kind(value),)
        if not list_ok:
            self.fail(key, value, f"{axis.allowed()} (a list of values goes in [grid])")
        allowed = f"a non-empty list of distinct values, each {axis.allowed()}"
        if not value:
            self.fail(key, value, allowed)
        if len(value) > GRID_VALUES_MAX:
            self.fail(key, value, f"{allowed}, at most {GRID_VALUES_MAX} of them")
        for item in value:
            if not axis.check(item):
                self.fail(key, item, allowed)
        out = tuple(axis.kind(item) for item in value)
        if len(set(out)) != len(out):
            dup = next(x for x in out if out.count(x) > 1)
            self.fail(key, value, f"{allowed} ({show(dup)} is listed twice)")
        return out


def toml_key(key: str) -> str:
    """A TOML key as the file spells it: bare, else quoted (so no newline reaches a message)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else show(key)


def show(value: object) -> str:
    """A value as TOML-ish text on one line, cut to SHOWN_MAX_CHARS."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an integer of {value.bit_length()} bits>"  # repr() refuses > 4300 digits
    if isinstance(value, str):
        text = json.dumps(value)
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, tuple):
        text = repr(list(value))
    else:
        try:
            text = repr(value)
        except ValueError:  # an integer of > 4300 digits inside a list or table
            text = f"<a {type(value).__name__} too large to show>"
    if len(text) > SHOWN_MAX_CHARS:
        text = f"{text[:SHOWN_MAX_CHARS]}... ({len(text)} characters)"
    return text
