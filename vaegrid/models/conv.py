"""A convolutional VAE: two stride-2 4 x 4 convolutions (C -> K -> 2K channels, sides
28 -> 14 -> 7 for MNIST: any sides divisible by 4), a dense layer of ``hidden`` units, the
two heads; the decoder mirrors it with transposed convolutions of the same shape.

Kernel 4 with stride 2 and padding 1 gives every output pixel the same number of kernel
taps (no checkerboard of uneven overlap, Odena et al. 2016), the last layer gives logits,
not a sigmoid's output, and every other layer is batch-normalised as the linear model's
are (without: on 9,600 real MNIST images it trailed the linear model for 5 epochs; with:
ahead from the first). The seed's convolutional VAE produced degraded images.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from vaegrid.models.card import Activations, Card, Settings, Shape, lazy_module

if TYPE_CHECKING:
    from vaegrid.models.base import BaseVAE

VERSION = "conv-vae-1"


def parameters(s: Settings, shape: Shape) -> int:
    """Two 4 x 4 convolutions (C -> K -> 2K, stride 2: sides / 4), Linear(2K x H/4 x W/4,
    H), the heads, Linear(Z, H), Linear(H, 2K x H/4 x W/4), two transposed convolutions
    back (2K -> K -> C); a BatchNorm after every layer but the heads and the last."""
    h, z = s["hidden"], s["latent"]
    c, c1, c2 = shape[0], s["channels"], 2 * s["channels"]
    convs = 16 * c * c1 + c1 + 16 * c1 * c2 + c2 + 2 * (c1 + c2)  # encoder, BatchNorms
    flat = c2 * (shape[1] // 4) * (shape[2] // 4)
    dense = flat * h + h + 2 * h
    heads = 2 * (h * z + z)
    decoder = z * h + 3 * h + h * flat + 3 * flat + 16 * c2 * c1 + 3 * c1 + 16 * c1 * c + c
    return convs + dense + heads + decoder


def macs(s: Settings, shape: Shape) -> tuple[int, int]:
    """A convolution's weights count once per output position: 4 x 4 taps each."""
    h, z = s["hidden"], s["latent"]
    c, c1, c2 = shape[0], s["channels"], 2 * s["channels"]
    half, quarter = (shape[1] // 2) * (shape[2] // 2), (shape[1] // 4) * (shape[2] // 4)
    flat = c2 * quarter
    convs = 16 * (half * c1 * c + quarter * c2 * c1)
    return convs + flat * h + 2 * h * z, z * h + h * flat + convs


def activations(s: Settings, shape: Shape) -> Activations:
    """The dense layers' and the feature maps, K x H/2 x W/2 and 2K x H/4 x W/4 per image
    on each side."""
    h, c, pixels, area = s["hidden"], s["channels"], math.prod(shape), shape[1] * shape[2]
    maps = 2 * (c * area // 4 + 2 * c * area // 16)
    per_image = 2 * h + maps
    return Activations(per_image, 3 * pixels + per_image + maps, max(h, c * area // 2))


def refuses(shape: Shape) -> str | None:
    if shape[1] % 4 or shape[2] % 4:
        return "images whose sides are divisible by 4 for model conv (two stride-2 convolutions)"
    return None


def build(s: Settings, shape: Shape) -> BaseVAE:
    return module()(s["hidden"], s["latent"], s["channels"], shape)


def _define() -> type[BaseVAE]:
    """The torch module (card.lazy_module: defined on first use)."""
    from torch import Tensor, nn

    from vaegrid.models.base import BaseVAE

    class ConvVAE(BaseVAE):
        def __init__(
            self, hidden: int, latent: int, channels: int, shape: Shape = (1, 28, 28)
        ) -> None:
            super().__init__()
            self.latent, self.image = latent, shape
            c, c1, c2 = shape[0], channels, 2 * channels
            self.shape = (c2, shape[1] // 4, shape[2] // 4)
            flat = c2 * (shape[1] // 4) * (shape[2] // 4)
            self.encoder = nn.Sequential(
                nn.Conv2d(c, c1, 4, stride=2, padding=1), nn.BatchNorm2d(c1), nn.LeakyReLU(),
                nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.BatchNorm2d(c2), nn.LeakyReLU(),
                nn.Flatten(), nn.Linear(flat, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(),
            )  # fmt: skip
            self.mu = nn.Linear(hidden, latent)
            self.logvar = nn.Linear(hidden, latent)
            self.dense = nn.Sequential(
                nn.Linear(latent, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(),
                nn.Linear(hidden, flat), nn.BatchNorm1d(flat), nn.LeakyReLU(),
            )  # fmt: skip
            self.deconv = nn.Sequential(
                nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.BatchNorm2d(c1),
                nn.LeakyReLU(), nn.ConvTranspose2d(c1, c, 4, stride=2, padding=1),
            )  # fmt: skip

        def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
            h = self.encoder(x.view(-1, *self.image))
            return self.mu(h), self.logvar(h)

        def decode(self, z: Tensor) -> Tensor:
            h = self.dense(z).view(-1, *self.shape)
            return self.deconv(h).flatten(1)

    return ConvVAE


module, __getattr__ = lazy_module("ConvVAE", __name__, _define)


CARD = Card("conv", VERSION, parameters, macs, activations, build, refuses)
