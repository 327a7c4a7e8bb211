"""Burda et al.'s VAE (https://arxiv.org/abs/1509.00519, section 5: two deterministic
layers of 200 tanh units, 50 latent units): ``depth`` layers of ``hidden`` units with
``activation`` on each side, Gaussian q(z|x), Bernoulli p(x|z)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from vaegrid.models.card import Activations, Card, Settings, Shape, lazy_module

if TYPE_CHECKING:
    from vaegrid.models.base import BaseVAE

VERSION = "mlp-vae-1"


def parameters(s: Settings, shape: Shape) -> int:
    """``depth`` Linear layers of H each side, the heads, Linear(H, P)."""
    h, z, pixels = s["hidden"], s["latent"], math.prod(shape)
    stack = (s["depth"] - 1) * (h * h + h)
    heads = 2 * (h * z + z)
    return (pixels * h + h + stack) + heads + (z * h + h + stack + h * pixels + pixels)


def macs(s: Settings, shape: Shape) -> tuple[int, int]:
    h, z, pixels = s["hidden"], s["latent"], math.prod(shape)
    stack = (s["depth"] - 1) * h * h
    return pixels * h + stack + 2 * h * z, z * h + stack + h * pixels


def activations(s: Settings, shape: Shape) -> Activations:
    h, pixels = s["hidden"], math.prod(shape)
    per_image = 2 * h * s["depth"]
    return Activations(encoder=per_image, decoded=3 * pixels + per_image, widest=h)


def build(s: Settings, shape: Shape) -> BaseVAE:
    return module()(s["hidden"], s["latent"], s["depth"], s["activation"], math.prod(shape))


def _define() -> type[BaseVAE]:
    """The torch module (card.lazy_module: defined on first use)."""
    from torch import Tensor, nn

    from vaegrid.models.base import BaseVAE

    activation = {"tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU}

    class MLPVAE(BaseVAE):
        def __init__(
            self, hidden: int, latent: int, depth: int, act: str, pixels: int = 784
        ) -> None:
            super().__init__()
            self.latent = latent

            def stack(first: int) -> list[nn.Module]:
                layers: list[nn.Module] = []
                for i in range(depth):
                    layers += [nn.Linear(first if i == 0 else hidden, hidden), activation[act]()]
                return layers

            self.encoder = nn.Sequential(*stack(pixels))
            self.mu = nn.Linear(hidden, latent)
            self.logvar = nn.Linear(hidden, latent)
            self.decoder = nn.Sequential(*stack(latent), nn.Linear(hidden, pixels))

        def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
            h = self.encoder(x)
            return self.mu(h), self.logvar(h)

        def decode(self, z: Tensor) -> Tensor:
            return self.decoder(z)

    return MLPVAE


module, __getattr__ = lazy_module("MLPVAE", __name__, _define)


CARD = Card("mlp", VERSION, parameters, macs, activations, build)
