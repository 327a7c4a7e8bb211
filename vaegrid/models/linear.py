"""The seed's fully-linear VAE, its bugs fixed: Linear(P, H) -> BatchNorm -> LeakyReLU ->
two Linear(H, Z) heads; a mirrored decoder (P = C x H x W values: MNIST's 784 pixels).

The seed put a ReLU on the mu and sigma heads, so mu could never be negative; here the
heads are plain linear layers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from vaegrid.models.card import Activations, Card, Settings, Shape, lazy_module

if TYPE_CHECKING:
    from vaegrid.models.base import BaseVAE

# Bumped when the model or the training loop changes what a config computes. 2: common
# random numbers: initial weights from (study seed, repeat, hidden, latent), data order,
# z draws and binarization from (study seed, repeat), not from the trial key.
VERSION = "linear-vae-2"


def parameters(s: Settings, shape: Shape) -> int:
    """Linear(P, H) + BatchNorm(H) (a weight and a bias per feature), heads 2 x Linear(H, Z),
    Linear(Z, H) + BatchNorm(H) + Linear(H, P)."""
    h, z, pixels = s["hidden"], s["latent"], math.prod(shape)
    encoder = pixels * h + h + 2 * h
    heads = 2 * (h * z + z)
    decoder = z * h + h + 2 * h + h * pixels + pixels
    return encoder + heads + decoder


def macs(s: Settings, shape: Shape) -> tuple[int, int]:
    """Every weight of a dense layer is one multiply-add per image."""
    h, z, pixels = s["hidden"], s["latent"], math.prod(shape)
    return pixels * h + 2 * h * z, z * h + h * pixels


def activations(s: Settings, shape: Shape) -> Activations:
    h, pixels = s["hidden"], math.prod(shape)
    return Activations(encoder=2 * h, decoded=3 * pixels + 2 * h, widest=h)


def build(s: Settings, shape: Shape) -> BaseVAE:
    return module()(s["hidden"], s["latent"], math.prod(shape))


def _define() -> type[BaseVAE]:
    """The torch module (card.lazy_module: defined on first use)."""
    from torch import Tensor, nn

    from vaegrid.models.base import BaseVAE

    class LinearVAE(BaseVAE):
        def __init__(self, hidden: int, latent: int, pixels: int = 784) -> None:
            super().__init__()
            self.latent = latent
            self.encoder = nn.Sequential(
                nn.Linear(pixels, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU()
            )
            self.mu = nn.Linear(hidden, latent)
            self.logvar = nn.Linear(hidden, latent)
            self.decoder = nn.Sequential(
                nn.Linear(latent, hidden),
                nn.BatchNorm1d(hidden),
                nn.LeakyReLU(),
                nn.Linear(hidden, pixels),
            )

        def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
            h = self.encoder(x)
            return self.mu(h), self.logvar(h)

        def decode(self, z: Tensor) -> Tensor:
            """Bernoulli logits of the P values."""
            return self.decoder(z)

    return LinearVAE


module, __getattr__ = lazy_module("LinearVAE", __name__, _define)


CARD = Card("linear", VERSION, parameters, macs, activations, build)
