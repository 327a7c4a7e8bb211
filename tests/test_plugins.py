"""The user's own model, registered by an installed package (spec/plugins.py): a test
distribution is installed into a site folder of the test (a real dist-info with entry
points, found by importlib.metadata, not mocked) and vaegrid runs with it on its path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TOY = """
import torch
from torch import nn


class Toy(nn.Module):
    def __init__(self, shape, settings):
        super().__init__()
        n = shape[0] * shape[1] * shape[2]
        hid = settings["hidden"] * settings["width"]
        act = nn.Tanh if settings["squash"] == "tanh" else nn.ReLU
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(n, hid), act(),
                                 nn.Linear(hid, 2 * settings["latent"]))
        self.dec = nn.Sequential(nn.Linear(settings["latent"], hid), act(), nn.Linear(hid, n))
        self.shape = shape

    def encode(self, x):
        assert x.dim() == 4, x.shape  # images, as the contract says
        mu, logvar = self.enc(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z):
        return self.dec(z).view(-1, *self.shape)


def make(shape, settings):
    return Toy(shape, settings)


class Flat(Toy):
    def decode(self, z):
        return self.dec(z)[:, :100]  # not an image


def flat(shape, settings):
    return Flat(shape, settings)


def picky(shape, settings):
    if settings["squash"] == "relu":
        raise ValueError("no relu here")
    return Toy(shape, settings)
"""
SETTINGS = """
SETTINGS = [
    {"name": "width", "type": "int", "low": 1, "high": 8, "default": 1, "label": "toy width"},
    {"name": "squash", "type": "str", "choices": ["tanh", "relu"], "default": "tanh"},
]
BROKEN = [{"name": "repeat", "type": "int", "low": 0, "high": 1, "default": 0}]
"""
ENTRY_POINTS = """
[vaegrid.models]
toy = toyvae:make
flat = toyvae:flat
picky = toyvae:picky
taken = toyvae:make

[vaegrid.settings]
toy = toyvae.settings:SETTINGS
flat = toyvae.settings:SETTINGS
picky = toyvae.settings:SETTINGS
taken = toyvae.settings:BROKEN
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site folder holding the installed distribution toyvae 0.1."""
    root = tmp_path_factory.mktemp("site")
    (root / "toyvae").mkdir()
    (root / "toyvae" / "__init__.py").write_text(TOY)
    (root / "toyvae" / "settings.py").write_text(SETTINGS)
    info = root / "toyvae-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyvae\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (info / "RECORD").write_text("")
    odd = root / "oddvae-1.dist-info"  # a version a key could not hold as it is
    odd.mkdir()
    (odd / "METADATA").write_text("Metadata-Version: 2.1\nName: oddvae\nVersion: 1 / 2\n")
    (odd / "entry_points.txt").write_text("[vaegrid.models]\nodd = toyvae:make\n")
    return root


def vaegrid(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "vaegrid", *args],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip


STUDY = """
name = "{name}"
[data]
fractions = [0.6, 0.2, 0.2]
[train]
epochs = 2
batch_size = 50
hidden = 16
latent = 4
lr = 3e-3
clip = 1.0
[grid]
model = {models}
width = [1, 2]
"""


def test_a_plugin_model_and_its_settings_are_settings_like_any_other(
    site: Path, tmp_path: Path
) -> None:
    study = tmp_path / "s.toml"
    study.write_text(STUDY.format(name="p", models='["linear", "toy"]'))
    done = vaegrid(site, "plan", str(study))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["key", "model", "width"] and lines[-1] == "3 trials"
    rows = sorted(tuple(line.split()[1:]) for line in lines[1:-1])
    assert rows == [("linear", "-"), ("toy", "1"), ("toy", "2")]  # width is toy's only
    # the distribution and its version are in the key
    code = "from vaegrid.spec.study import TrialConfig, DataSpec; " \
        "print(TrialConfig.make(0, DataSpec(), model='toy').to_json())"  # fmt: skip
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(site)}, check=True)  # fmt: skip
    assert '"model": "toy@toyvae==0.1"' in shown.stdout
    for bad, message in (
        ("[train]\nmodel = \"nope\"\n",
         'expected one of "linear", "mlp", "conv", "flat", "picky", "toy"'),
        ("[train]\nwidth = 9\nmodel = \"toy\"\n", "train.width = 9 is not allowed; expected an "
         "integer from 1 to 8"),
        ("[train]\nwidth = 2\n", 'only 1 without model "flat" or "picky" or "toy"'),
        ("[train]\nmodel = \"taken\"\n", "registers it, but its settings"),
        ("[train]\nmodel = \"odd\"\n", "its distribution 'oddvae' '1 / 2' is no name and version"),
    ):  # fmt: skip
        study.write_text(bad)
        done = vaegrid(site, "plan", str(study))
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert message in done.stderr, done.stderr


@pytest.mark.slow
def test_a_plugin_model_runs_end_to_end_and_a_broken_one_is_refused_before_anything(
    site: Path, tmp_path: Path, mnist_root: Path
) -> None:
    study = tmp_path / "p.toml"
    study.write_text(STUDY.format(name="p", models='["linear", "toy"]'))
    args = ["--results", str(tmp_path / "r"), "--data-dir", str(mnist_root), "--no-progress"]
    done = vaegrid(site, "run", str(study), *args, "--devices", "cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": completed") == 3
    again = vaegrid(site, "run", str(study), *args, "--devices", "cpu")  # resumes: nothing to do
    assert again.returncode == 0 and "completed" not in again.stdout.replace("3 completed", "")
    report = vaegrid(site, "report", str(tmp_path / "r" / "p"), "--data-dir", str(mnist_root),
                     "--nll-samples", "5")  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert "| toy | 2 |" in (tmp_path / "r" / "p" / "report.md").read_text()
    study.write_text(STUDY.format(name="q", models='["flat"]'))
    broken = vaegrid(site, "run", str(study), *args)
    assert broken.returncode == 2 and broken.stderr.count("\n") == 1, broken.stderr
    assert "model flat (toyvae 0.1) failed its probe: ValueError: decode gave" in broken.stderr
    assert not (tmp_path / "r" / "q").exists()
    # every combination of a plug-in's choices is built: picky fails on relu only
    study.write_text(STUDY.format(name="q", models='["picky"]') + 'squash = ["tanh", "relu"]\n')
    broken = vaegrid(site, "run", str(study), *args)
    assert broken.returncode == 2 and broken.stderr.count("\n") == 1, broken.stderr
    assert "failed its probe: ValueError: no relu here (with squash relu)" in broken.stderr
