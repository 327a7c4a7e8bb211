"""``vaegrid new-model NAME`` and ``vaegrid new-dataset NAME``: a complete plug-in package,
written the way the plug-in contract wants it (docs/tutorial/plugins.md), that installs
with one pip line and runs in a study as it is.

The package keeps its settings in a module that imports nothing (the driver, ``plan`` and
``status`` read them in every process and must stay torch-free), its model or loader in
another, and a test of the contract beside them.
"""

from __future__ import annotations

import re
from pathlib import Path

from vaegrid.errors import InputError
from vaegrid.safeio import refuse_link, write_atomic
from vaegrid.study.axes import RESERVED

NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")  # as the plug-in registry allows it

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "{what} for vaegrid"
requires-python = ">=3.11"
dependencies = [{deps}]

[project.entry-points."vaegrid.{group}"]
{name} = "{name}.{module}:{factory}"
{settings_entry}
[tool.setuptools.packages.find]
include = ["{name}*"]
"""

_MODEL_SETTINGS = '''\
"""{name}'s own settings: plain data, no imports (vaegrid reads this module in every
process, the driver's included, which must stay torch-free)."""

SETTINGS = [
    # a setting a study may fix ([train] {name}_layers = 3) or search ([grid] {name}_layers
    # = [1, 2, 3]); it applies to model "{name}" only
    {{"name": "{name}_layers", "type": "int", "low": 1, "high": 8, "default": 2,
     "label": "{name} hidden layers"}},
]
'''

_MODEL = '''\
"""The model: ``make(shape, settings)`` returns a VAE that vaegrid trains, ranks and tests.

The contract (docs/tutorial/plugins.md): ``encode(x) -> (mu, logvar)`` with ``x`` images
``[B, C, H, W]`` in [0, 1] and each ``[B, latent]``; ``decode(z) -> logits`` of a Bernoulli
over the pixels, ``[B, C, H, W]``. ``settings`` holds every setting of the trial:
``hidden``, ``latent``, and this package's own (settings.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class {cls}(nn.Module):
    """An MLP VAE: ``{name}_layers`` tanh layers of ``hidden`` units each side."""

    def __init__(self, shape: tuple[int, int, int], hidden: int, latent: int, layers: int):
        super().__init__()
        self.shape = shape
        pixels = math.prod(shape)

        def stack(width: int) -> list[nn.Module]:
            out: list[nn.Module] = []
            for i in range(layers):
                out += [nn.Linear(width if i == 0 else hidden, hidden), nn.Tanh()]
            return out

        self.encoder = nn.Sequential(nn.Flatten(), *stack(pixels))
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(*stack(latent), nn.Linear(hidden, pixels))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.shape)


def make(shape: tuple[int, int, int], settings: dict) -> {cls}:
    return {cls}(shape, settings["hidden"], settings["latent"], settings["{name}_layers"])
'''

_DATASET = '''\
"""The data set: ``load(root)`` returns uint8 images ``[N, C, H, W]`` (C = 1 or 3), or a
pair (train, test) when the data has an official test set; ``root`` is the data folder
(``--data-dir`` or ``$VAEGRID_DATA``). It must give the same images every time: their
digest joins the trial keys, and a loader whose images change is refused on resume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Replace with your reader. This one draws squares on black, seeded: 600 training and
    100 test images of 1 x 16 x 16."""
    return _squares(600, 0), _squares(100, 1)


def _squares(n: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    x = np.zeros((n, 1, 16, 16), np.uint8)
    for i in range(n):
        a, b = g.integers(0, 12, 2)
        s = g.integers(3, 8)
        x[i, :, a : a + s, b : b + s] = 255
    return x
'''

_MODEL_TEST = '''\
"""The contract vaegrid checks (shapes) and what it needs of a VAE (gradients flow)."""

import torch

from {name}.model import make
from {name}.settings import SETTINGS


def test_the_model_keeps_the_contract() -> None:
    settings = {{"hidden": 16, "latent": 3, **{{s["name"]: s["default"] for s in SETTINGS}}}}
    vae = make((1, 28, 28), settings)
    x = torch.rand(5, 1, 28, 28)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (5, 3)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterised, as trained
    logits = vae.decode(z)
    assert logits.shape == x.shape
    torch.nn.functional.binary_cross_entropy_with_logits(logits, x).backward()
    assert all(p.grad is not None for p in vae.parameters())
'''

_DATASET_TEST = '''\
"""What vaegrid checks of a loader: uint8 [N, C, H, W], the same images every time."""

from pathlib import Path

import numpy as np

from {name}.data import load


def test_the_loader_keeps_the_contract(tmp_path: Path) -> None:
    train, test = load(tmp_path)
    for x in (train, test):
        assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1] in (1, 3)
    assert (load(tmp_path)[0] == train).all()  # deterministic
'''

_README = """\
# {name}

{what} for [vaegrid](https://github.com/), made by `vaegrid {command} {name}`.

Install it into the environment vaegrid runs in (editable: edit and run again):

```sh
pip install -e ./{name}
```

Then a study names it (`study.toml` here is one):

```sh
vaegrid plan {name}/study.toml
vaegrid run {name}/study.toml
```

{how}

The package's name and version join every trial key (`{name}@{name}==0.1.0`): bump the
version in `pyproject.toml` whenever you change what the code computes, so that results
of the old code are never taken for the new one's. Test it with `pytest {name}/tests`.
"""

_MODEL_STUDY = """\
# A small study of the {name} model: its own setting searched beside vaegrid's.
name = "{name}-try"

[data]
limit = 6000           # a quick look: 6,000 MNIST images

[train]
epochs = 2
batch_size = 200
hidden = 128
latent = 16
lr = 1e-3
clip = 1.0
model = "{name}"

[grid]
{name}_layers = [1, 2]   # the package's own setting (settings.py)
"""

_DATASET_STUDY = """\
# A small study on the {name} data set.
name = "{name}-try"

[data]
dataset = "{name}"

[train]
epochs = 2
batch_size = 50
lr = 1e-3
clip = 1.0

[grid]
hidden = [64]
latent = [4, 8]
"""


def new_plugin(kind: str, name: str, where: Path) -> list[Path]:
    """Write the package ``where/name``; the files written.

    Raises:
        InputError: a name the registry would refuse, or ``where/name`` exists already.
    """
    if not NAME.fullmatch(name) or name in RESERVED:
        raise InputError(
            f"new-{kind}: {name[:60]!r} is not allowed; expected a lowercase letter then up "
            "to 39 lowercase letters, digits or '_', not a built-in name"
        )
    root = where / name
    refuse_link(root)
    if root.exists():
        raise InputError(f"{root}: exists already; new-{kind} writes a new package only")
    model = kind == "model"
    cls = "".join(part.capitalize() for part in name.split("_")) + "VAE"
    files = {
        "pyproject.toml": _PYPROJECT.format(
            name=name,
            what="A VAE model" if model else "A data set",
            deps='"torch"' if model else '"numpy"',
            group="models" if model else "datasets",
            module="model" if model else "data",
            factory="make" if model else "load",
            settings_entry=(
                f'\n[project.entry-points."vaegrid.settings"]\n'
                f'{name} = "{name}.settings:SETTINGS"\n'
                if model
                else ""
            ),
        ),
        f"{name}/__init__.py": f'"""{name}: a vaegrid plug-in (nothing imported here, on '
        'purpose: vaegrid reads settings.py in every process)."""\n',
        "README.md": _README.format(
            name=name,
            what="A VAE model" if model else "A data set",
            command=f"new-{kind}",
            how=(
                f"`{name}/model.py` is the model (edit it); `{name}/settings.py` declares its "
                "settings and must import nothing."
                if model
                else f"`{name}/data.py` is the loader (edit it)."
            ),
        ),
        "study.toml": (_MODEL_STUDY if model else _DATASET_STUDY).format(name=name),
    }
    if model:
        files[f"{name}/settings.py"] = _MODEL_SETTINGS.format(name=name)
        files[f"{name}/model.py"] = _MODEL.format(name=name, cls=cls)
        files[f"tests/test_{name}.py"] = _MODEL_TEST.format(name=name)
    else:
        files[f"{name}/data.py"] = _DATASET
        files[f"tests/test_{name}.py"] = _DATASET_TEST.format(name=name)
    written = []
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
        written.append(path)
    return written


def example_studies(where: Path) -> tuple[list[Path], list[Path]]:
    """Write the example studies the package carries (``vaegrid.studies``: this checkout's
    studies/) into ``where``; the files written and those kept because they exist already
    (a user's edits are never overwritten).

    Raises:
        InputError: ``where`` or a file in it is a symbolic link, or ``where`` is a file.
    """
    from importlib.resources import files

    refuse_link(where)
    if where.exists() and not where.is_dir():
        raise InputError(f"{where}: is a file; init writes the example studies into a folder")
    written, kept = [], []
    for example in sorted(files("vaegrid.studies").iterdir(), key=lambda p: p.name):
        if not example.name.endswith(".toml"):
            continue
        path = where / example.name
        refuse_link(path)
        if path.exists():
            kept.append(path)
            continue
        where.mkdir(parents=True, exist_ok=True)
        write_atomic(path, example.read_text())
        written.append(path)
    return written, kept
