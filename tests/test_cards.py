"""A model is one file (vaegrid/models/): its card's counts are its module's, the module
is defined only when asked for (the driver reads cards without torch), and it pickles by
its name like any class."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch

from vaegrid.models import CARDS, NAMES
from vaegrid.study.axes import AXIS
from vaegrid.study.core import DataSpec, TrialConfig

SETTINGS = {"hidden": 24, "latent": 3, "depth": 3, "activation": "relu", "channels": 4}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 8, 12)])
def test_a_cards_counts_are_its_modules(name: str, shape: tuple[int, int, int]) -> None:
    card = CARDS[name]
    settings = TrialConfig.make(0, DataSpec(), model=name, **SETTINGS).axis_values()
    model = card.build(settings, shape)
    assert card.parameters(settings, shape) == sum(p.numel() for p in model.parameters())
    x = torch.rand(2, shape[0] * shape[1] * shape[2])
    model.eval()
    with torch.no_grad():
        mu, logvar = model.encode(x)
        assert list(mu.shape) == list(logvar.shape) == [2, settings["latent"]]
        assert list(model.decode(mu).shape) == list(x.shape)
    assert type(model).__name__ in {"LinearVAE", "MLPVAE", "ConvVAE"}
    assert type(pickle.loads(pickle.dumps(model))) is type(model)  # found by its name
    assert card.version in TrialConfig.make(0, DataSpec(), model=name).to_json()


def test_the_study_offers_the_registered_models_and_their_shape_rules() -> None:
    assert AXIS["model"].choices[: len(NAMES)] == NAMES == ("linear", "mlp", "conv")
    assert CARDS["conv"].refuses((1, 28, 28)) is None
    assert "divisible by 4" in (CARDS["conv"].refuses((1, 30, 28)) or "")
    assert CARDS["linear"].refuses((1, 30, 28)) is None


def test_reading_the_cards_loads_no_torch() -> None:
    probe = (
        "import sys; from vaegrid.models import CARDS; "
        "s = dict(hidden=8, latent=2, depth=1, channels=2, model='conv'); "
        "print(CARDS['conv'].parameters(s, (1, 8, 8)) > 0, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    assert out == ["True", "False"]
