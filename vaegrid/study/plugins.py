"""The user's own models (and data sets: study/datasets.py), registered by installed
packages: no edit of vaegrid, and no module or path in a study file (study files stay
data).

A plug-in package declares, in its ``pyproject.toml``::

    [project.entry-points."vaegrid.models"]
    toy = "toyvae:make"            # factory(shape, settings) -> torch.nn.Module
    [project.entry-points."vaegrid.settings"]
    toy = "toyvae.settings:SETTINGS"   # optional: its own settings (a torch-free module)

``make((channels, height, width), settings)`` returns a module with ``encode(x) -> (mu,
logvar)`` (x: ``[B, C, H, W]`` in [0, 1]; each ``[B, latent]``) and ``decode(z) -> logits``
(``[B, C, H, W]``, Bernoulli). ``SETTINGS`` is a list of ``{"name", "type" ("int", "float"
or "str"), "default", "low", "high" (numbers) or "choices" (strings), "label"}``: each
becomes an axis of ``AXES`` that applies to that model only, and works everywhere a
built-in setting does (study files, the grid, the key, Optuna, tables, figures).

Only the settings are read in every process (their module must not import torch: the
driver stays torch-free); the factory is loaded where a trial or the probe runs. The
distribution's name and version join the trial key, and for a model a digest of its
package's code as it is on disk (``toy@toyvae==0.1#code=3f2a9c1b7e04``, an editable install
included): results of another version, or of edited code, are never mixed in; the trials of
a plug-in not installed here as it was are kept and left out (db/reader.py, ForeignTrial).
A plug-in whose declaration is broken is left out, and a study that names it is refused in
one line saying why.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import Any

from vaegrid.errors import first_line

MODELS_GROUP = "vaegrid.models"
SETTINGS_GROUP = "vaegrid.settings"
DATASETS_GROUP = "vaegrid.datasets"
NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")  # a model's or a setting's name
DIST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a distribution's name (PEP 508)
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]{0,63}")  # a version, as a key holds it
SETTINGS_MAX = 32  # settings one plug-in may declare
CHOICES_MAX = 100
NUMBER_MAX = 1e12  # bounds of a plug-in's numeric setting, in absolute value
CODE_FILES_MAX = 2_000  # the .py files of a model's package that its digest reads, at most
CODE_BYTES_MAX = 64 << 20


@dataclass(frozen=True)
class Plugin:
    """A registered model."""

    name: str  # as a study file names it
    target: str  # "package.module:factory"
    dist: str  # the distribution that registered it
    version: str
    settings: tuple[dict[str, Any], ...] = ()  # checked declarations
    problem: str | None = None  # why it cannot be used (a broken declaration)
    code: str = ""  # a model's: the digest of its package's code (code_digest)

    @property
    def model_version(self) -> str:
        """What a trial key holds for it: name, distribution, version and, for a model,
        the digest of its code."""
        code = f"#code={self.code}" if self.code else ""
        return f"{self.name}@{self.dist}=={self.version}{code}"

    @property
    def who_registers(self) -> str:
        """``toyvae 0.1 registers``, or for a distribution whose name or version is not one
        a key can hold, ``an installed package registers``."""
        if self.dist == "unknown":
            return "an installed package registers"
        return f"{self.dist} {self.version} registers"

    @property
    def who(self) -> str:
        """How messages name it: ``toy (toyvae 0.1)``."""
        return f"{self.name} ({self.dist} {self.version})"


@lru_cache(maxsize=1)
def registered(reserved: frozenset[str] = frozenset()) -> dict[str, Plugin]:
    """Every model registered under ``vaegrid.models``, by name (``reserved``: the built-in
    models and settings, which a plug-in may not take)."""
    found: dict[str, Plugin] = {}
    declared = {ep.name: ep for ep in metadata.entry_points(group=SETTINGS_GROUP)}
    for ep in sorted(metadata.entry_points(group=MODELS_GROUP), key=lambda e: e.name):
        dist, version, problem = _identity(ep, reserved, found)
        code, unreadable = code_digest(ep.value)
        problem = problem or unreadable
        settings: tuple[dict[str, Any], ...] = ()
        if problem is None and ep.name in declared:
            had_torch = "torch" in sys.modules
            try:
                settings = _checked(declared[ep.name].load(), reserved)
            except Exception as e:  # anything a foreign module raises: named, not raised
                problem = f"its settings ({declared[ep.name].value[:100]!r}): {_line(e)}"
            if not had_torch and "torch" in sys.modules:  # every command now pays for it
                print(
                    f"vaegrid: warning: the settings of plug-in {ep.name} "
                    f"({declared[ep.name].value[:100]}) import torch, so every vaegrid "
                    "command loads it (a second or two); keep that module free of imports",
                    file=sys.stderr,
                )
        for s in settings:  # a setting two models declare is one: declared alike
            other = next((o for p in found.values() if p.problem is None
                          for o in p.settings if o["name"] == s["name"]), s)  # fmt: skip
            if other != s:
                problem = f"its setting {s['name']} is declared otherwise by another model"
        found[ep.name] = Plugin(ep.name, ep.value, dist, version, settings, problem, code)
    return found


@lru_cache(maxsize=1)
def registered_datasets(reserved: frozenset[str] = frozenset()) -> dict[str, Plugin]:
    """Every data set registered under ``vaegrid.datasets``, by name (``reserved``: the
    built-in data sets' names). Its factory is read only where images are loaded."""
    found: dict[str, Plugin] = {}
    for ep in sorted(metadata.entry_points(group=DATASETS_GROUP), key=lambda e: e.name):
        dist, version, problem = _identity(ep, reserved, found)
        found[ep.name] = Plugin(ep.name, ep.value, dist, version, (), problem)
    return found


def code_digest(target: str) -> tuple[str, str | None]:
    """12 hex digits of SHA-256 over every ``.py`` file (relative path and bytes) of the
    top-level package that holds ``target`` (``package.module:factory``), read where the
    import system finds it (an editable install's source folder included) without importing
    it; and why it could not be read, if so."""
    import importlib.util

    top = target.partition(":")[0].partition(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError) as e:
        return "", f"its package {top[:60]!r} cannot be found ({_line(e)})"
    if spec is None:
        return "", f"its package {top[:60]!r} is not installed"
    roots = list(spec.submodule_search_locations or [])
    files = [] if roots else [(os.path.basename(spec.origin or ""), spec.origin or "")]
    for root in roots:
        for folder, dirs, names in os.walk(root):  # links to folders are not followed
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            rel = os.path.relpath(folder, root)
            files += [(os.path.join(rel, n), os.path.join(folder, n)) for n in names
                      if n.endswith(".py")]  # fmt: skip
            if len(files) > CODE_FILES_MAX:
                return "", f"its package {top!r} has over {CODE_FILES_MAX:,} .py files to digest"
    digest, size = hashlib.sha256(), 0
    try:
        for rel, path in sorted(files):
            with open(path, "rb") as f:
                body = f.read(CODE_BYTES_MAX + 1 - size)
            size += len(body)
            if size > CODE_BYTES_MAX:
                return "", f"its package {top!r} has over {CODE_BYTES_MAX >> 20} MB of code"
            digest.update(f"{rel}\0{len(body)}\0".encode() + body)
    except OSError as e:
        return "", f"its package {top!r} cannot be read ({e.strerror or e})"
    return digest.hexdigest()[:12], None


def _identity(
    ep: metadata.EntryPoint, reserved: frozenset[str], found: dict[str, Plugin]
) -> tuple[str, str, str | None]:
    """An entry point's distribution and version (as keys hold them), and why it cannot be
    used when it cannot: a name or version a key cannot hold, a taken or doubled name."""
    try:  # a dist-info without Name or Version gives None (or raises, in some versions)
        dist, version = ep.dist.name, ep.dist.version  # type: ignore[union-attr]
    except Exception:
        dist = version = None
    if not isinstance(dist, str) or not isinstance(version, str):
        return "unknown", "0", "its distribution's metadata has no name or no version"
    if not DIST.fullmatch(dist) or not VERSION.fullmatch(version):  # they go in keys
        problem = f"its distribution {dist[:40]!r} {version[:40]!r} is no name and version"
        return "unknown", "0", problem
    if ep.name in reserved:
        return dist, version, f"its name {ep.name[:40]!r} is a built-in one's"
    if not NAME.fullmatch(ep.name):
        return (
            dist,
            version,
            (
                f"its name {ep.name[:40]!r} is not a lowercase letter then up to 39 lowercase "
                "letters, digits or '_'"
            ),
        )
    if ep.name in found:
        return dist, version, f"registered twice ({found[ep.name].dist} and {dist})"
    return dist, version, None


def _checked(raw: object, reserved: frozenset[str]) -> tuple[dict[str, Any], ...]:
    if not isinstance(raw, list | tuple) or len(raw) > SETTINGS_MAX:
        raise ValueError(f"expected a list of at most {SETTINGS_MAX} settings")
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for s in raw:
        if not isinstance(s, dict):
            raise ValueError("a setting is a dict")
        name, kind, default = s.get("name"), s.get("type"), s.get("default")
        taken = reserved | names
        if (
            not isinstance(name, str)
            or not NAME.fullmatch(name)
            or name in taken
            or name.startswith(("train_", "val_", "test_", "rank_"))  # the metrics' columns
            or name.endswith(("_std", "_ci_low", "_ci_high"))
        ):
            raise ValueError(f"setting name {str(name)[:40]!r} is not allowed or is taken")
        names.add(name)
        label = s.get("label", name)
        if not isinstance(label, str) or len(label) > 60 or not label.isprintable():
            raise ValueError(f"{name}: label is not a short line of text")
        if kind == "str":
            choices = s.get("choices")
            if (
                not isinstance(choices, list | tuple)
                or not 1 <= len(choices) <= CHOICES_MAX
                or not all(isinstance(c, str) and NAME.fullmatch(c) for c in choices)
                or default not in choices
            ):
                raise ValueError(f"{name}: choices and default are not allowed")
            out.append({"name": name, "type": str, "default": default,
                        "choices": tuple(choices), "label": label})  # fmt: skip
            continue
        if kind not in ("int", "float"):
            raise ValueError(f"{name}: type {str(kind)[:20]!r} is not int, float or str")
        low, high = s.get("low"), s.get("high")
        numbers = (low, high, default)
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in numbers)
        floats = all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers)
        if not (ints if kind == "int" else floats) or not all(
            abs(v) <= NUMBER_MAX  # type: ignore[arg-type]
            for v in numbers
        ):
            raise ValueError(f"{name}: low, high and default must be {kind}s within ±1e12")
        if not low <= default <= high:  # type: ignore[operator]
            raise ValueError(f"{name}: expected low <= default <= high")
        out.append({"name": name, "type": int if kind == "int" else float, "default": default,
                    "low": low, "high": high, "label": label})  # fmt: skip
    return tuple(out)


def _line(e: BaseException) -> str:
    return first_line(e)


@lru_cache(maxsize=64)
def load_factory(name: str, group: str = MODELS_GROUP) -> Any:
    """The factory of the model (or, with ``DATASETS_GROUP``, the data set) registered as
    ``name`` (imports its module: torch with it)."""
    for ep in metadata.entry_points(group=group, name=name):
        return ep.load()
    raise KeyError(name)
