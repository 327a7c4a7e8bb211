"""Configs read back from a database: each one a config a study file could make.

A hand-made row that hashes to its own key must still be a config vaegrid could make:
every setting within the bounds of a study file, momentum only with sgd, the repeat in
range, and its seed and data settings (with its batch size and model size) checked as the
study file that would make it. :func:`config_problem` says what is wrong with one config;
:func:`configs_pass` answers for a whole table at once (100,000 configs in 0.8 s,
where one at a time took 3): the reader asks it first and walks the configs one by one
only when it says no.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from vaegrid.errors import InputError
from vaegrid.study.axes import AXES, REPEATS_MAX, applies
from vaegrid.study.core import DataSpec, Probed, Study, TrialConfig, typed
from vaegrid.study.load import parse_study
from vaegrid.study.validate import check_sizes, show


def config_problem(cfg: TrialConfig) -> str | None:
    """What is wrong with a config read back from outside (a database row), or None."""
    problem = _value_problem(cfg)
    if problem is not None:
        return problem
    base = _base(cfg)
    if isinstance(base, str):
        return base
    return _size_problem(base, {name: (value,) for name, value in cfg.settings})


def configs_pass(configs: Sequence[TrialConfig]) -> bool:
    """True only if :func:`config_problem` passes every one of ``configs``.

    Column by column: each distinct value of an axis is checked once, each distinct pair of
    a setting and the setting it depends on once, and the sizes once per seed, data and
    batch size, over every value those configs hold: their largest trials, as a study file
    of those lists is checked (memory and parameters grow with every size). False says only
    that one of them may be refused.
    """
    if not configs:
        return True
    if not all(isinstance(c.data, DataSpec) for c in configs):
        return False
    repeats = [c.repeat for c in configs]
    columns = [[v for _, v in pairs] for pairs in zip(*(c.settings for c in configs), strict=True)]
    at = {a.name: i for i, a in enumerate(AXES)}
    try:  # an unhashable value (a list where a number goes): one by one, refused there
        if any(t is not int or not 0 <= r < REPEATS_MAX for t, r in _kinds(repeats)):
            return False
        for axis, column in zip(AXES, columns, strict=True):
            if not all(axis.check(v) for _, v in _kinds(column)):
                return False
            if axis.applies is not None:  # equality decides both: a set keeps one of equals
                other, where = axis.applies
                pairs = set(zip(columns[at[other]], column, strict=True))
                if any(p not in where and v != axis.default[0] for p, v in pairs):
                    return False
        batches = columns[at["batch_size"]]
        members: dict[tuple[Any, ...], list[int]] = {}
        for i, (c, batch) in enumerate(zip(configs, batches, strict=True)):
            # typed: a config whose data says limit = 0.0 is no member of limit = 0's group
            members.setdefault((typed(c.seed), c.data.typed_key, typed(batch)), []).append(i)
        for group in members.values():
            base = _base(configs[group[0]])
            if isinstance(base, str):
                return False
            if len(group) == len(configs):
                values = {a.name: set(col) for a, col in zip(AXES, columns, strict=True)}
            else:
                values = {
                    a.name: {col[i] for i in group} for a, col in zip(AXES, columns, strict=True)
                }
            if _size_problem(base, values) is not None:
                return False
    except TypeError:
        return False
    return True


def _kinds(values: Sequence[Any]) -> set[tuple[type, Any]]:
    """The distinct values, each with its type (1, 1.0 and True are three)."""
    return set(zip(map(type, values), values, strict=True))


def _value_problem(cfg: TrialConfig) -> str | None:
    """The repeat, each setting within its axis' bounds, a setting only where it applies,
    data settings of the right type."""
    if type(cfg.repeat) is not int or not 0 <= cfg.repeat < REPEATS_MAX:
        return f"repeat = {show(cfg.repeat)}, expected an integer from 0 to {REPEATS_MAX - 1}"
    settings = cfg.axis_values()
    for axis in AXES:
        if not axis.check(settings[axis.name]):
            return f"{axis.name} = {show(settings[axis.name])}, expected {axis.allowed()}"
    for axis in AXES:
        if not applies(axis, settings) and settings[axis.name] != axis.default[0]:
            other, where = axis.applies or ("", ())
            return (
                f"{axis.name} = {show(settings[axis.name])} with {other} "
                f"{settings[other]}: {' or '.join(where)} only"
            )
    if not isinstance(cfg.data, DataSpec):
        return "data is not a table of data settings"
    return None


def _base(cfg: TrialConfig) -> Study | str:
    """The study file of a config's seed, data settings and batch size, or what is wrong."""
    try:
        data = _data_table(cfg.data.typed_key, cfg.data)
    except TypeError:  # unhashable: a value in it that no study file makes
        return "data holds a value no study file makes"
    if not isinstance(data, dict):
        return data
    train = {"batch_size": dict(cfg.settings)["batch_size"]}
    return _study_of(json.dumps({"seed": cfg.seed, "data": data, "train": train}))


def _size_problem(base: Study, values: Mapping[str, Any]) -> str | None:
    """What check_sizes refuses in ``base`` with ``values`` of each axis, or None."""
    probed = Probed.of(base)
    if probed is None:  # a plug-in data set's images: the driver's probe checks its sizes
        return None
    one = dataclasses.replace(base, settings=tuple((a.name, tuple(values[a.name])) for a in AXES))
    try:  # the model's size and a step's memory: arithmetic
        check_sizes(one, probed.images)
    except InputError as e:
        return str(e).removeprefix("config: ")
    return None


@functools.lru_cache(maxsize=64)
def _data_table(kind: object, spec: DataSpec) -> dict[str, Any] | str:
    """A config's data settings as the study file that would make them says them, or what
    is wrong with them (one per DataSpec: a study's trials share one)."""
    data: dict[str, Any] = dataclasses.asdict(spec)
    digest = data.pop("images")  # the probe's, not a study file's
    if digest and (not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest)):
        return f"data.images = {show(digest)}, expected a SHA-256 in hex"
    if isinstance(data["fractions"], tuple):
        data["fractions"] = list(data["fractions"])
    if data.get("split") == "official":  # as a study file writes it: no holdout settings
        defaults = {"fractions": list(DataSpec.fractions), "limit": 0}
        data = {k: v for k, v in data.items() if k not in defaults or v != defaults[k]}
    return data


@functools.lru_cache(maxsize=256)
def _study_of(text: str) -> Study | str:
    """The study a study file of these seed, data and batch settings makes, or what it
    would be refused for (one per distinct text: a study's trials share a few, where a
    parse per config took 0.3 ms, 30 s at 100,000 trials)."""
    try:
        return parse_study(json.loads(text), source="config", default_name="stored")
    except InputError as e:
        return str(e).removeprefix("config: ")
