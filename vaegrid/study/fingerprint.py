"""A study's fingerprint: its fixed settings as a database stores them, the one owner.

A database belongs to one study: its name and its fingerprint (JSON in ``vg_study``). A
sweep resumes a database only with a study of the same fingerprint; ``status``, the report
and ``vaegrid.load`` read what the study searched, its ``[halving]`` and its ``[rank]``
from it. Made here from a study (:meth:`Fingerprint.of`), read back here, checked once as
anything from outside is (:meth:`Fingerprint.read`), and compared here
(:meth:`Fingerprint.differences`).

What it holds: ``model``, the version of the study's built-in model (a plug-in's name)
when it fixes one (a study that searches models has each trial's version in its key);
``seed``; ``data``; ``train``, every axis the study does not search with its one value (an
optional axis only when not at its default); ``searched``, the optional axes it searches;
``halving`` and ``rank`` only when the study has them, so that a study of the settings
older vaegrids knew keeps the fingerprint it had.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from vaegrid.errors import InputError
from vaegrid.models import CARDS
from vaegrid.study.axes import AXES, AXIS, SAMPLES_MAX

if TYPE_CHECKING:
    from vaegrid.study.core import HalvingSpec, Study

# Written by vaegrid before 2026-12-07 for every study, whatever its model: read as "the
# model the study fixes, or none when it searches models" (the trial keys hold the truth).
LEGACY_MODEL = "linear-vae-2"


class Fingerprint(Mapping[str, Any]):
    """A checked fingerprint, read as the mapping it is stored as."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self._raw = dict(raw)

    @classmethod
    def of(cls, study: Study) -> Fingerprint:
        """The fingerprint of ``study``."""
        fixed = {k: v[0] for k, v in study.settings if k not in study.searched}
        out: dict[str, Any] = {}
        if "model" not in study.searched:  # a plug-in's version is in its trials' keys
            card = CARDS.get(fixed["model"])
            out["model"] = card.version if card is not None else fixed["model"]
        out |= {
            "seed": study.seed,
            "data": _data(study),
            "train": {
                k: v for k, v in fixed.items() if not (AXIS[k].optional and v == AXIS[k].default[0])
            },
        }
        optional = [n for n in study.searched if AXIS[n].optional]
        if optional:
            out["searched"] = optional
        if study.halving is not None:
            out["halving"] = dataclasses.asdict(study.halving)
        if study.nll_samples:
            out["rank"] = {"nll_samples": study.nll_samples}
        return cls(json.loads(json.dumps(out)))  # as it is stored: tuples become lists

    @classmethod
    def read(cls, text: str | None, where: str) -> Fingerprint:
        """A stored fingerprint, checked: what the readers use of it is sound.

        Raises:
            InputError: not JSON of a fingerprint, or a part of it vaegrid never writes
                (named, with what is allowed).
        """
        if text is None:
            raise InputError(f"{where}: holds no vaegrid study")
        try:
            raw = json.loads(text)
        except (TypeError, ValueError):
            raw = None
        if not isinstance(raw, dict) or not isinstance(raw.get("train", {}), dict):
            raise InputError(f"{where}: the stored study's fingerprint is not vaegrid's (edited?)")

        def refuse(part: str, value: Any, allowed: str) -> InputError:
            return InputError(
                f"{where}: the stored study's {part} = {str(value)[:60]!r} is not {allowed} "
                "(edited?)"
            )

        rank = raw.get("rank", {})
        k = rank.get("nll_samples", 0) if isinstance(rank, dict) else None
        if type(k) is not int or not 0 <= k <= SAMPLES_MAX:
            raise refuse("rank.nll_samples", k, f"an integer from 0 to {SAMPLES_MAX}")
        searched = raw.get("searched", [])  # a plug-in's settings among them, installed or not
        names = isinstance(searched, list) and all(
            isinstance(n, str) and n.isidentifier() and len(n) <= 64 for n in searched
        )
        if not names:
            raise refuse("searched", searched, "a list of setting names")
        halving = raw.get("halving")
        if halving is not None and _halving(halving) is None:
            raise refuse("halving", halving, "rungs (increasing epochs), keep in (0, 1), metric")
        return cls(raw)

    def __getitem__(self, key: str) -> Any:
        return self._raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def text(self) -> str:
        """As it is stored."""
        return json.dumps(self._raw)

    @property
    def nll_samples(self) -> int:
        """``[rank] nll_samples`` (0: none)."""
        return int(self._raw.get("rank", {}).get("nll_samples", 0))

    @property
    def searched(self) -> list[str]:
        """The axes the study searches: those it does not fix (an optional axis only when
        named as searched: one not in ``train`` is at its default)."""
        fixed = self._raw.get("train", {})
        optional = self._raw.get("searched", [])
        return [a.name for a in AXES if (a.name in optional if a.optional else a.name not in fixed)]

    @property
    def halving(self) -> HalvingSpec | None:
        """The ``[halving]`` the study was run with (None: the full grid)."""
        return _halving(self._raw.get("halving"))

    def differences(self, study: Study) -> list[str]:
        """How ``study``'s fixed settings differ from these, in words (none: the same
        study). A grid shrunk to one value of an axis (a model or an objective dropped,
        leaving the default, or a searched setting fixed at one of its values) is the same
        study; a model entry an older vaegrid wrote (:data:`LEGACY_MODEL`) matches any."""
        new = dict(Fingerprint.of(study))
        was = set(self.searched)
        new["train"] = {k: v for k, v in new["train"].items() if k not in was}
        optional = self._raw.get("searched", [])
        if optional and set(new.get("searched", [])) <= set(optional):
            new["searched"] = optional
        if "model" in was or self._raw.get("model") == LEGACY_MODEL:
            new.pop("model", None)
        old = {k: v for k, v in self._raw.items() if k != "model" or k in new}
        return _diff(old, new)


def _data(study: Study) -> dict[str, Any]:
    from vaegrid.study.core import data_dict

    return data_dict(study.data)


def _halving(raw: Any) -> HalvingSpec | None:
    """A stored ``[halving]`` as the study had it; None if absent or not sound."""
    from vaegrid.study.core import HALVING_METRICS, HalvingSpec

    if not isinstance(raw, dict):
        return None
    rungs, keep, metric = raw.get("rungs"), raw.get("keep"), raw.get("metric")
    ints = isinstance(rungs, list) and all(type(r) is int and r >= 1 for r in rungs)
    if not ints or not rungs or any(a >= b for a, b in itertools.pairwise(rungs)):
        return None
    if not isinstance(keep, int | float) or not (math.isfinite(keep) and 0 < keep < 1):
        return None
    if metric not in HALVING_METRICS:
        return None
    return HalvingSpec(tuple(rungs), float(keep), str(metric))


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: stored {_said(k, old, a)}, study file {_said(k, new, b)}")
    return out


def _said(key: str, side: Mapping[str, Any], value: Any) -> str:
    """A fingerprint's value in words: a setting it does not hold is not fixed there
    (searched in [grid], or left at the seed's value), never ``null``."""
    return json.dumps(value) if key in side else "does not fix it (searched, or the default)"
