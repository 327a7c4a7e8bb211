"""The user's own model and data, registered by installed packages (study/plugins.py,
study/datasets.py): test distributions are installed into a site folder of the test (real
dist-infos with entry points, found by importlib.metadata, not mocked) and vaegrid runs
with them on its path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import plan_table

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


def stuck(shape, settings):  # ignores the latent size it is given: always 16
    return Toy(shape, {**settings, "latent": 16})


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
toy = toyvae.model:make
flat = toyvae.model:flat
picky = toyvae.model:picky
stuck = toyvae.model:stuck
taken = toyvae.model:make

[vaegrid.settings]
toy = toyvae.settings:SETTINGS
flat = toyvae.settings:SETTINGS
picky = toyvae.settings:SETTINGS
stuck = toyvae.settings:SETTINGS
taken = toyvae.settings:BROKEN
"""


SHAPES = """
import numpy as np


def _draw(n, c, side, seed):
    # squares of one colour each on black: images whose channels differ when c = 3
    g = np.random.default_rng(seed)
    x = np.zeros((n, c, side, side), np.uint8)
    for i in range(n):
        a, b = g.integers(0, side - 4, 2)
        s = g.integers(3, side // 2)
        x[i, :, a : a + s, b : b + s] = g.integers(64, 256, c)[:, None, None]
    return x


def load(root):
    return _draw(240, 3, 16, 0), _draw(60, 3, 16, 1)  # colour, with a test set


def grey(root):
    import torch

    return torch.from_numpy(_draw(200, 1, 12, 2))  # one set: no official split


def floaty(root):
    return _draw(10, 1, 8, 0).astype("float32")


def flat(root):
    return _draw(10, 1, 8, 0).reshape(10, 64)


def boom(root):
    raise OSError("no archive " + str(root / "shapes.tar"))


def odd(root):
    return _draw(100, 1, 10, 3)


def flipped(root):  # a negative-stride view (BGR -> RGB), read-only too
    x = _draw(100, 3, 8, 8)[:, ::-1]
    x.flags.writeable = False
    return x


def chatty(root):
    print("loading", end="")  # no newline: must not garble the probe's answers
    return _draw(100, 1, 8, 8)


def lingering(root):
    import subprocess

    subprocess.Popen(["sleep", "600"])  # a leftover process: must not hold the probe up
    return _draw(100, 1, 8, 8)


def exits(root):
    import os

    os._exit(3)


def meta(root):
    import torch

    return torch.empty(100, 1, 8, 8, dtype=torch.uint8, device="meta")


def changing(root):  # other images when the file says so: a loader that is not deterministic
    seed = int((root / "variant").read_text()) if (root / "variant").exists() else 0
    return _draw(60, 1, 8, 8) if seed == 0 else _draw(60, 1, 8, 8)[::-1].copy()
"""
DATA_ENTRY_POINTS = """
[vaegrid.datasets]
shapes = shapesdata:load
blobs = shapesdata:grey
floaty = shapesdata:floaty
flatimages = shapesdata:flat
boom = shapesdata:boom
odd = shapesdata:odd
flipped = shapesdata:flipped
chatty = shapesdata:chatty
lingering = shapesdata:lingering
exits = shapesdata:exits
meta = shapesdata:meta
changing = shapesdata:changing
mnist = shapesdata:load
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site folder holding the installed distribution toyvae 0.1."""
    root = tmp_path_factory.mktemp("site")
    (root / "toyvae").mkdir()
    # as docs/tutorial/plugins.md asks: the package imports nothing, so reading its
    # settings loads no torch (a warning would say so)
    (root / "toyvae" / "__init__.py").write_text("")
    (root / "toyvae" / "model.py").write_text(TOY)
    (root / "toyvae" / "settings.py").write_text(SETTINGS)
    info = root / "toyvae-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyvae\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (info / "RECORD").write_text("")
    (root / "shapesdata.py").write_text(SHAPES)
    data = root / "shapesdata-0.1.dist-info"
    data.mkdir()
    (data / "METADATA").write_text("Metadata-Version: 2.1\nName: shapesdata\nVersion: 0.1\n")
    (data / "entry_points.txt").write_text(DATA_ENTRY_POINTS)
    (data / "RECORD").write_text("")
    nameless = root / "nameless-0.1.dist-info"  # metadata without a version
    nameless.mkdir()
    (nameless / "METADATA").write_text("Metadata-Version: 2.1\nName: nameless\n")
    (nameless / "entry_points.txt").write_text("[vaegrid.datasets]\nnover = shapesdata:load\n")
    odd = root / "oddvae-1.dist-info"  # a version a key could not hold as it is
    odd.mkdir()
    (odd / "METADATA").write_text("Metadata-Version: 2.1\nName: oddvae\nVersion: 1 / 2\n")
    (odd / "entry_points.txt").write_text("[vaegrid.models]\nodd = toyvae.model:make\n")
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
    head, table, count = plan_table(done.stdout)
    assert head == ["key", "model", "width"] and count == 3
    rows = sorted(tuple(row[1:]) for row in table)
    assert rows == [("linear", "-"), ("toy", "1"), ("toy", "2")]  # width is toy's only
    # the distribution and its version are in the key
    code = "from vaegrid.study.core import TrialConfig, DataSpec; " \
        "print(TrialConfig.make(0, DataSpec(), model='toy').to_json())"  # fmt: skip
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(site)}, check=True)  # fmt: skip
    # with the digest of its package's code as it is on disk
    from vaegrid.study.plugins import code_digest

    digest = subprocess.run([sys.executable, "-c", "from vaegrid.study.plugins import "
                             "code_digest as d; print(d('toyvae.model:make')[0])"],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(site)}).stdout.strip()  # fmt: skip
    assert len(digest) == 12 and digest != code_digest("vaegrid.train.model:make")[0]
    assert f'"model": "toy@toyvae==0.1#code={digest}"' in shown.stdout
    for bad, message in (
        ("[train]\nmodel = \"nope\"\n",
         'expected one of "linear", "mlp", "conv", "flat", "picky", "stuck", "toy"'),
        ("[train]\nwidth = 9\nmodel = \"toy\"\n", "train.width = 9 is not allowed; expected an "
         "integer from 1 to 8"),
        ("[train]\nwidth = 2\n", 'only 1 without model "flat" or "picky" or "stuck" or "toy"'),
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
    site = Path(shutil.copytree(site, tmp_path / "site"))  # its code is edited below
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
    # The plug-in's code edited, its version not: other keys, the old results kept aside
    model = site / "toyvae" / "model.py"
    model.write_text(model.read_text() + "\n# edited\n")
    status = vaegrid(site, "status", str(tmp_path / "r" / "p"))
    assert status.returncode == 0, status.stderr
    assert "p: 1/1 done (1 completed" in status.stdout, status.stdout
    assert (
        "2 trials of model toy@toyvae==0.1#code=" in status.stdout and "left out" in status.stdout
    )
    report = vaegrid(site, "report", str(tmp_path / "r" / "p"), "--data-dir", str(mnist_root),
                     "--nll-samples", "5")  # fmt: skip
    assert report.returncode == 0 and "report: 2 trials of model toy" in report.stderr
    again = vaegrid(site, "run", str(study), *args, "--devices", "cpu")  # the new code's trials
    assert again.returncode == 0 and again.stdout.count(": completed") == 2, again.stdout
    # and without the plug-in at all, its trials are named, the built-in one still read
    gone = subprocess.run([sys.executable, "-m", "vaegrid", "status", str(tmp_path / "r" / "p")],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert gone.returncode == 0 and "p: 1/1 done" in gone.stdout, gone.stdout + gone.stderr
    assert "4 trials of model toy@toyvae==0.1#code=" in gone.stdout
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


DATA_STUDY = """
name = "{name}"
[data]
dataset = "{dataset}"
split = "{split}"
[train]
epochs = 2
batch_size = 40
hidden = 16
latent = 4
lr = 3e-3
clip = 1.0
channels = 4
[grid]
model = {models}
"""


def test_a_plugin_data_set_is_named_like_a_built_in_one_and_keyed_by_its_version(
    site: Path, tmp_path: Path
) -> None:
    study = tmp_path / "s.toml"
    study.write_text(DATA_STUDY.format(name="d", dataset="shapes", split="official",
                                       models='["linear", "conv"]'))  # fmt: skip
    done = vaegrid(site, "plan", str(study))
    assert done.returncode == 0 and plan_table(done.stdout)[2] == 2, done.stderr
    code = "from vaegrid.study.core import TrialConfig, DataSpec; " \
        "c = TrialConfig.make(0, DataSpec(dataset='shapes')); " \
        "print(c.to_json()); print(TrialConfig.from_json(c.to_json()) == c)"  # fmt: skip
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(site)}, check=True)  # fmt: skip
    assert '"dataset": "shapes@shapesdata==0.1"' in shown.stdout
    assert shown.stdout.endswith("True\n")  # the key's JSON names the data set back
    for bad, message in (
        ('[data]\ndataset = "nope"\n',
         'expected one of "mnist", "fashion-mnist", "blobs", "boom", "changing", "chatty", '
         '"exits", "flatimages", "flipped", "floaty", "lingering", "meta", "odd", "shapes"'),
        ('[data]\ndataset = "nover"\n', "a usable data set: an installed package registers "
         "it, but its distribution's metadata has no name or no version"),
        ('[data]\ndataset = "mnist"\n', ""),  # the built-in one: the plug-in may not take it
    ):  # fmt: skip
        study.write_text(bad)
        done = vaegrid(site, "plan", str(study))
        if not message:
            assert done.returncode == 0, done.stderr
            continue
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert message in done.stderr, done.stderr


BOTH = '["linear", "conv"]'


@pytest.mark.parametrize(
    ("dataset", "split", "models", "message"),
    [
        ("floaty", "holdout", BOTH, "data set floaty (shapesdata 0.1): its images are "
         "float32, expected uint8"),
        ("flatimages", "holdout", BOTH, "have 2 dimensions, expected 4: [N, C, H, W]"),
        ("boom", "holdout", BOTH, "data set boom (shapesdata 0.1) failed to load from "),
        ("blobs", "official", BOTH, 'has no official test set (its loader gave one set of '
         'images); data.split = "official" needs one: use "holdout"'),
        ("odd", "holdout", BOTH, 'data.dataset = "odd" is not allowed; expected '
         "images whose sides are divisible by 4 for model conv"),
        ("exits", "holdout", BOTH, "data set exits crashed its probe: it exited with code 3 "
         "before answering"),
        ("meta", "holdout", BOTH, "data set meta (shapesdata 0.1): its images are a "
         "torch.strided tensor on meta, expected a dense one in CPU memory"),
    ],
)  # fmt: skip
def test_a_plugin_data_set_is_checked_once_before_anything_is_written(
    site: Path, tmp_path: Path, dataset: str, split: str, models: str, message: str
) -> None:
    study = tmp_path / "s.toml"
    study.write_text(DATA_STUDY.format(name="d", dataset=dataset, split=split, models=models))
    results = tmp_path / "r"
    done = vaegrid(site, "run", str(study), "--results", str(results), "--data-dir",
                   str(tmp_path), "--no-progress", "--devices", "cpu")  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr, done.stderr
    assert not results.exists()


@pytest.mark.slow
def test_a_plugin_data_set_in_colour_runs_every_model_end_to_end(
    site: Path, tmp_path: Path
) -> None:
    from PIL import Image

    study = tmp_path / "c.toml"
    study.write_text(DATA_STUDY.format(name="c", dataset="shapes", split="official",
                                       models='["linear", "mlp", "conv", "toy"]'))  # fmt: skip
    args = ["--results", str(tmp_path / "r"), "--data-dir", str(tmp_path), "--no-progress"]
    done = vaegrid(site, "run", str(study), *args, "--devices", "cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": completed") == 4
    report = vaegrid(site, "report", str(tmp_path / "r" / "c"), "--data-dir", str(tmp_path),
                     "--nll-samples", "5", "--top", "4")  # fmt: skip
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "r" / "c" / "report.md").read_text()
    assert "shapes (shapesdata 0.1)" in text
    pictures = sorted((tmp_path / "r" / "c" / "figures").glob("*_reconstructions.png"))
    assert len(pictures) == 4
    for path in pictures:  # 16 images of 16 x 16 a row, 4 rows, in colour, each pixel
        image = Image.open(path).convert("RGB")  # a 4 x 4 block (64 px: at least 56), 2 apart
        assert image.size == (16 * 66 + 2, 4 * 66 + 2)
        assert image.getchannel("R").tobytes() != image.getchannel("G").tobytes()
    samples = Image.open(next((tmp_path / "r" / "c" / "figures").glob("*_samples.png")))
    assert samples.size == (8 * 66 + 2, 8 * 66 + 2)


@pytest.mark.parametrize("dataset", ["flipped", "chatty", "lingering"])
def test_a_plugin_loader_may_flip_print_and_leave_processes_behind(
    site: Path, tmp_path: Path, dataset: str
) -> None:
    study = tmp_path / "s.toml"
    study.write_text(DATA_STUDY.format(name="d", dataset=dataset, split="holdout", models=BOTH))
    started = time.monotonic()
    done = vaegrid(site, "plan", str(study), "--data-dir", str(tmp_path))  # plan probes it
    assert done.returncode == 0 and plan_table(done.stdout)[2] == 2, done.stderr
    assert time.monotonic() - started < 60  # a leftover process does not hold the probe up
    subprocess.run(["pkill", "-f", "sleep 600"], check=False)


@pytest.mark.slow  # four commands in subprocesses, each probing the plug-in: 22 s
def test_a_plugin_data_set_whose_images_change_is_never_mixed_with_its_results(
    site: Path, tmp_path: Path
) -> None:
    study = tmp_path / "s.toml"
    study.write_text(DATA_STUDY.format(name="d", dataset="changing", split="holdout",
                                       models='["linear"]').replace("channels = 4\n", "")
                     .replace("epochs = 2", "epochs = 1"))  # fmt: skip
    args = ["--results", str(tmp_path / "r"), "--data-dir", str(tmp_path), "--no-progress",
            "--devices", "cpu"]  # fmt: skip
    first = vaegrid(site, "run", str(study), *args)
    assert first.returncode == 0 and ": completed" in first.stdout, first.stderr
    keys = vaegrid(site, "plan", str(study), "--data-dir", str(tmp_path)).stdout
    (tmp_path / "variant").write_text("1")  # the loader now gives other images
    again = vaegrid(site, "run", str(study), *args)
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert "other fixed settings" in again.stderr and "data.images" in again.stderr, again.stderr
    other = vaegrid(site, "plan", str(study), "--data-dir", str(tmp_path)).stdout
    assert plan_table(keys)[1][0][0] != plan_table(other)[1][0][0]  # other keys


def test_a_plugin_models_work_is_measured_by_its_probe(site: Path, tmp_path: Path) -> None:
    # The cost model cannot count a plug-in's layers: its probe measures them (torch's FLOP
    # counter), and the cost of the probed settings is then what toy really does:
    # encoder 784 x 32 + 32 x 8, decoder 4 x 32 + 32 x 784 (hidden 16 x width 2, latent 4).
    study = tmp_path / "p.toml"
    study.write_text(STUDY.format(name="p", models='["linear", "toy"]'))
    code = (
        "import sys; from pathlib import Path; from vaegrid.study.load import load_study; "
        "from vaegrid.train.probe import check_plugins; from vaegrid.cost import CostModel; "
        "from vaegrid.study.core import expand; s, p = check_plugins(load_study(sys.argv[1]), "
        "Path('.')); m = CostModel.of(s, p); "
        "[print(c.model, c.width, *m.forward(c)) for c in expand(s)]"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    shown = subprocess.run([sys.executable, "-c", code, str(study)], capture_output=True,
                           text=True, env=env, check=True)  # fmt: skip
    found = {tuple(line.split()[:2]): line.split()[2:] for line in shown.stdout.splitlines()}
    assert found[("toy", "2")] == [str(784.0 * 32 + 32 * 8), str(4.0 * 32 + 32 * 784)]
    assert found[("linear", "1")] == [str(784.0 * 16 + 2 * 16 * 4), str(4.0 * 16 + 16 * 784)]


@pytest.mark.parametrize("name", ["elbo", "kl", "recon", "nll", "evaluated", "diverged_epoch"])
def test_a_plugin_setting_named_like_a_table_column_is_refused(name: str) -> None:
    from vaegrid.db.schema import Base
    from vaegrid.study.axes import RESERVED
    from vaegrid.study.plugins import _checked

    columns = {c.name for t in Base.metadata.tables.values() for c in t.columns}
    assert columns <= RESERVED, sorted(columns - RESERVED)  # a new column is reserved too
    declared = [{"name": name, "type": "int", "default": 1, "low": 1, "high": 2}]
    with pytest.raises(ValueError, match=f"setting name '{name}' is not allowed or is taken"):
        _checked(declared, RESERVED)
    assert _checked([{**declared[0], "name": "width"}], RESERVED)[0]["name"] == "width"


@pytest.mark.slow
def test_a_plugin_model_that_ignores_a_setting_fails_that_trial_never_computes_it(
    site: Path, tmp_path: Path, mnist_root: Path
) -> None:
    """stuck builds 16 latent units whatever it is asked: the probe (at the grid's largest
    latent, 16) cannot see it; its latent-1 trial would broadcast [B, 1] noise over a
    [B, 16] mu and report a 16-d model's numbers as latent 1's. Every call is checked."""
    study = tmp_path / "s.toml"
    study.write_text(STUDY.format(name="st", models='["stuck"]').replace(
        "latent = 4", "epochs = 1").replace("epochs = 2\n", "") + "latent = [1, 16]\n")  # fmt: skip
    args = ["--results", str(tmp_path / "r"), "--data-dir", str(mnist_root), "--no-progress"]
    done = vaegrid(site, "run", str(study), *args, "--devices", "cpu")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.count(": failed") == 2 and done.stdout.count(": completed") == 2
    status = vaegrid(site, "status", str(tmp_path / "r" / "st"))
    assert "2 failed" in status.stdout, status.stdout
    logs = "".join(p.read_text() for p in (tmp_path / "r" / "st" / "trials").glob("*/log.txt"))
    assert (
        "encode gave mu [50, 16] and logvar [50, 16] for 50 images, expected [50, 1] each" in logs
    )
