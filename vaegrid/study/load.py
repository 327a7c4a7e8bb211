"""Study files: read a hostile TOML file once, validate it, and build the Study.

A study file holds only overrides of the documented defaults (an empty file is the seed
study). :func:`load_study` is the only way in: it rejects unknown keys and bad values with
an :class:`InputError` that names the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vaegrid.errors import InputError
from vaegrid.study import datasets
from vaegrid.study.axes import (
    AXES,
    AXIS,
    LIMIT_MAX,
    REPEATS_MAX,
    SAMPLES_MAX,
    applies,
    format_value,
    is_number,
)
from vaegrid.study.core import (
    BINARIZE,
    HALVING_METRICS,
    SPLITS,
    DataSpec,
    HalvingSpec,
    Probed,
    Study,
    split_sizes,
)
from vaegrid.study.files import INT_BITS_MAX, NESTING_MAX, apply_overrides, read_toml
from vaegrid.study.validate import Validator, check_sizes, toml_key

# Bounds on a study file. Everything in it comes from outside: each bound keeps a bad
# value from crashing, exhausting or silently misleading a later stage.

# seed: 0 <= seed < SEED_END (torch and numpy take 64-bit seeds; SQLite stores signed ones).
SEED_END = 2**63
# name: a plain folder name under the results folder (no "/", not ".", "..", ".hidden").
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
# name: at most this many characters.
NAME_MAX_CHARS = 100
# description: a string of at most this many characters.
DESCRIPTION_MAX_CHARS = 10_000
# The grid holds at most this many trials (product of the list lengths, times repeats).
TRIALS_MAX = 10_000
# [sample]: the grid it draws from holds at most this many configs (each one is ranked).
SAMPLED_GRID_MAX = 1_000_000


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> Study:
    """Read and validate a study file.

    Args:
        path: A TOML study file, UTF-8 (with or without a byte order mark), at most 1 MiB.
        overrides: ``--set`` items, ``section.key=value`` or ``key=value`` (a TOML value,
            or a bare word taken as a string), applied to the file's TOML as if it said them.

    Returns:
        The validated study.

    Raises:
        InputError: the file is missing, unreadable, too large, not UTF-8, not TOML, nested
            too deeply, or holds an unknown key or bad value.
    """
    path = Path(path)
    raw = read_toml(path)
    source = str(path)
    if overrides:
        apply_overrides(raw, overrides)
        source += " with --set " + " --set ".join(overrides)
    return parse_study(raw, source=source, default_name=path.stem)


_TOP_KEYS = {
    "name", "description", "seed", "data", "train", "grid", "halving", "rank", "sample"
}  # fmt: skip


def parse_study(raw: Mapping[str, Any], source: str, default_name: str) -> Study:
    """Validate the parsed TOML of a study file (pure: no I/O).

    Args:
        raw: The parsed TOML (tables as dicts, arrays as lists).
        source: The file it came from, to name in messages.
        default_name: The study's name when ``raw`` has no ``name`` (the file's stem).

    Returns:
        The validated study.

    Raises:
        InputError: naming ``source``, the key, the bad value and what is allowed.
    """
    v = Validator(source)
    _check_structure(v, raw)
    v.known(raw, "", _TOP_KEYS)
    name = _name(v, raw, default_name)
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > DESCRIPTION_MAX_CHARS:
        v.fail(
            "description", description, f"a string of at most {DESCRIPTION_MAX_CHARS} characters"
        )
    seed = v.integer(raw, "", "seed", 0, 0, SEED_END - 1, "an integer >= 0 and < 2**63")
    data = _data(v, raw)
    settings, searched, repeats = _settings(v, raw, data)
    rank = v.table(raw, "rank", {"nll_samples"})
    nll = v.integer(rank, "rank.", "nll_samples", 0, 0, SAMPLES_MAX)
    sample = _sample(v, raw, settings, searched, repeats)
    study = Study(name, seed, data, settings, searched, source, None, repeats, description, nll,
                  sample=sample)  # fmt: skip
    if "halving" in raw:
        study = dataclasses.replace(study, halving=_halving(v, raw, study))
    probed = Probed.of(study)
    if probed is not None:  # a plug-in data set's once the driver has probed it (train/probe.py)
        check_sizes(study, probed.images)
    return study


def _check_structure(v: Validator, raw: Mapping[str, Any]) -> None:
    """Refuse nesting deeper than NESTING_MAX and integers of more than INT_BITS_MAX bits.

    Iterative, so that TOML dotted keys thousands deep (which tomllib builds without
    recursing) cannot exhaust the stack here or later in repr() of a message.
    """
    stack: list[tuple[object, str, int]] = [(raw, "", 0)]
    while stack:
        value, key, depth = stack.pop()
        if isinstance(value, dict | list | tuple):
            if depth > NESTING_MAX:
                raise InputError(
                    f"{v.source}: {key} is nested too deeply; "
                    f"expected tables and lists at most {NESTING_MAX} deep"
                )
            if isinstance(value, dict):
                prefix = key + "." if key else ""
                stack.extend((item, prefix + toml_key(k), depth + 1) for k, item in value.items())
            else:  # a list element is named by its list's key, as the validators name it
                stack.extend((item, key, depth + 1) for item in value)
        elif isinstance(value, int) and value.bit_length() > INT_BITS_MAX:
            v.fail(key, value, f"an integer of at most {INT_BITS_MAX} bits")


def is_study_name(name: object) -> bool:
    """Whether ``name`` is a study name: a plain folder name under the results folder."""
    return (
        isinstance(name, str)
        and len(name) <= NAME_MAX_CHARS
        and bool(re.fullmatch(NAME_PATTERN, name))
    )


def _name(v: Validator, raw: Mapping[str, Any], default_name: str) -> str:
    name = raw.get("name", default_name)
    if is_study_name(name):
        return str(name)
    allowed = (
        f"a folder name of at most {NAME_MAX_CHARS} characters: a letter or digit, "
        "then letters, digits, '-', '_' or '.'"
    )
    if "name" not in raw:
        allowed += ' (this name comes from the file name; a name = "..." key sets another)'
    v.fail("name", name, allowed)


def _data(v: Validator, raw: Mapping[str, Any]) -> DataSpec:
    d = v.table(raw, "data", {f.name for f in dataclasses.fields(DataSpec)} - {"images"})
    broken = datasets.PLUGINS.get(d["dataset"]) if isinstance(d.get("dataset"), str) else None
    if (
        d.get("dataset") not in datasets.BUILTIN
        and broken is not None
        and broken.problem is not None
    ):
        v.fail("data.dataset", d["dataset"], f"a usable data set: {broken.who_registers} it, "
               f"but {broken.problem}")  # fmt: skip
    dataset = v.choice(d, "data.", "dataset", DataSpec.dataset, datasets.DATASETS)
    split = v.choice(d, "data.", "split", DataSpec.split, SPLITS)
    fractions = _fractions(v, d)
    most = LIMIT_MAX if dataset in datasets.BUILTIN else 2 * datasets.IMAGES_MAX
    limit = v.integer(
        d, "data.", "limit", DataSpec.limit, 0, most,
        f"0 (all images) or at most {most}, the images of "
        + (datasets.label(dataset) if dataset in datasets.BUILTIN else "a plug-in data set"),
    )  # fmt: skip
    binarize = v.choice(d, "data.", "binarize", DataSpec.binarize, BINARIZE)
    if split == "official" and ("fractions" in d or limit):
        key = "fractions" if "fractions" in d else "limit"
        v.fail(f"data.{key}", d[key], 'nothing: it applies to split = "holdout" only')
    data = DataSpec(dataset, split, fractions, limit, binarize)
    if limit and min(split_sizes(data)) < 2:
        v.fail("data.limit", limit, "enough images that each split holds at least 2")
    return data


def _settings(
    v: Validator, raw: Mapping[str, Any], data: DataSpec
) -> tuple[tuple[tuple[str, tuple[Any, ...]], ...], tuple[str, ...], int]:
    """Each axis's values from [train] (one value) or [grid] (a value or a list), the
    searched axes, and grid.repeats."""
    fixed = v.table(raw, "train", set(AXIS))
    grid = v.table(raw, "grid", {*AXIS, "repeats"})
    both = sorted(set(fixed) & set(grid))
    if both:
        raise InputError(
            f"{v.source}: {both[0]} is set in both [train] and [grid]; expected it in one: "
            "[train] fixes one value, [grid] searches a list"
        )
    settings, searched = [], []
    for axis in AXES:
        if axis.name in fixed:
            values = v.values(fixed, "train.", axis, list_ok=False)
        elif axis.name in grid:
            values = v.values(grid, "grid.", axis, list_ok=True)
        else:
            values = axis.default
        settings.append((axis.name, values))
        if axis.name in grid or (axis.searched and axis.name not in fixed):
            searched.append(axis.name)
    repeats = v.integer(grid, "grid.", "repeats", 1, 1, REPEATS_MAX)
    by_axis = dict(settings)
    # Counted, not len(expand(...)): a huge grid must not be built.
    sizes = [len(by_axis[n]) for n in searched]
    count = _distinct_trials(by_axis, searched) * repeats
    sampled = raw.get("sample", {})
    if isinstance(sampled, dict) and isinstance(sampled.get("configs"), int):
        count = min(count, sampled["configs"] * repeats)  # checked with [sample] below
    if count > TRIALS_MAX:
        combos = math.prod(sizes) * repeats
        merged = f" combinations, {count} distinct" if combos != count else ""
        raise InputError(
            f"{v.source}: grid = {' x '.join(map(str, sizes))} values of {', '.join(searched)}"
            f" x {repeats} repeats = {combos}{merged} trials is not allowed; expected at most "
            f"{TRIALS_MAX} trials"
        )
    for axis in AXES:  # a setting no trial of the study uses (momentum without sgd)
        if axis.applies is None:
            continue
        other, users = axis.applies
        if any(x in users for x in by_axis[other]):
            continue
        # at its default in [train] it says nothing; searched, it would be a column of nothing
        if axis.name in grid or any(x != axis.default[0] for x in by_axis[axis.name]):
            section = "grid." if axis.name in grid else "train."
            table = grid if axis.name in grid else fixed
            v.fail(
                section + axis.name, table.get(axis.name, list(by_axis[axis.name])),
                f"only {format_value(axis.default[0])} without {other} "
                + " or ".join(f'"{w}"' for w in users)
                + f": {axis.name} is {' and '.join(users)}'s (no trial of this study uses it)",
            )  # fmt: skip
    return tuple(settings), tuple(searched), repeats


def _sample(
    v: Validator,
    raw: Mapping[str, Any],
    settings: Sequence[tuple[str, tuple[Any, ...]]],
    searched: Sequence[str],
    repeats: int,
) -> tuple[int, int] | None:
    """[sample] configs = N, seed = S: N configs of the grid, drawn by S (None: all)."""
    if "sample" not in raw:
        return None
    t = v.table(raw, "sample", {"configs", "seed"})
    configs = v.integer(t, "sample.", "configs", 0, 1, TRIALS_MAX // repeats)
    seed = v.integer(t, "sample.", "seed", 0, 0, SEED_END - 1, "an integer >= 0 and < 2**63")
    by_axis = dict(settings)
    grid = math.prod(len(by_axis[n]) for n in searched)  # before merging: what is walked
    if grid > SAMPLED_GRID_MAX:
        raise InputError(
            f"{v.source}: [sample] from a grid of {grid:,} combinations is not allowed; "
            f"expected a grid of at most {SAMPLED_GRID_MAX:,} (every one is ranked to draw "
            "from)"
        )
    return configs, seed


def _distinct_trials(by_axis: Mapping[str, tuple[Any, ...]], searched: list[str]) -> int:
    """The trials of one repeat of a grid, as expand makes them, without expanding it: a
    setting's values count only where it applies (``Axis.applies``: depth for mlp), so for
    every combination of the settings others depend on (model, objective, optimizer: a few
    values each), the product of the sizes of the settings that apply there."""
    parents = sorted({a.applies[0] for a in AXES if a.applies is not None})
    total = 0
    for combo in itertools.product(*(by_axis[p] for p in parents)):
        at = dict(zip(parents, combo, strict=True))
        total += math.prod(
            len(by_axis[n]) for n in searched
            if n not in at and applies(AXIS[n], at)
        )  # fmt: skip
    return total


def _halving(v: Validator, raw: Mapping[str, Any], study: Study) -> HalvingSpec:
    h = v.table(raw, "halving", {f.name for f in dataclasses.fields(HalvingSpec)})
    if len(study.values("epochs")) > 1 or study.repeats > 1:
        what = "several epochs values" if study.repeats == 1 else f"repeats = {study.repeats}"
        raise InputError(
            f"{v.source}: [halving] with {what} is not supported; expected one epochs "
            "value and repeats = 1 (rungs compare single trials that train equally long)"
        )
    epochs = study.epochs
    last = epochs - 1  # a rung at the last epoch would stop nothing
    allowed = (
        f"a non-empty list of strictly increasing integers from 1 to {last} "
        f"(epochs before the last of epochs = {epochs})"
    )
    if last < 1:
        allowed = f"nothing: epochs = {epochs} leaves no epoch to stop at"
    for key in ("rungs", "keep"):  # no default fits every study: both are spelled out
        if key not in h:
            raise InputError(
                f"{v.source}: halving.{key} is missing; [halving] needs rungs and keep"
            )
    rungs = h["rungs"]
    if (
        not isinstance(rungs, list)
        or not rungs
        or not all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= last for r in rungs)
        or any(a >= b for a, b in itertools.pairwise(rungs))
    ):
        v.fail("halving.rungs", rungs, allowed)
    keep = h["keep"]
    if not is_number(keep) or not 0 < keep < 1:  # _is_number refuses bools and nan
        v.fail(
            "halving.keep",
            keep,
            "a number between 0 and 1, exclusive: the share of trials that goes on at a rung",
        )
    metric = v.choice(h, "halving.", "metric", HalvingSpec.metric, HALVING_METRICS)
    if metric == "val_nll" and not study.nll_samples:
        v.fail(
            "halving.metric", metric,
            'val_nll only with [rank] nll_samples = K (K > 0): the samples of the NLL',
        )  # fmt: skip
    return HalvingSpec(tuple(int(r) for r in rungs), float(keep), metric)


def _fractions(v: Validator, d: Mapping[str, Any]) -> tuple[float, float, float]:
    value = d.get("fractions", DataSpec.fractions)
    allowed = "three numbers in (0, 1) for train, validation, test that sum to 1"
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not all(is_number(f) and 0 < f < 1 for f in value)  # before float(): 10**400
    ):
        v.fail("data.fractions", value, allowed)
    fractions = (float(value[0]), float(value[1]), float(value[2]))
    if not math.isclose(sum(fractions), 1.0):
        v.fail("data.fractions", value, allowed)
    data = DataSpec(fractions=fractions)
    if min(split_sizes(data)) < 1:
        v.fail("data.fractions", value, "shares that leave no split empty")
    return fractions
