"""The built-in VAEs and their losses in nats per image: the seed study's fully-linear VAE
(its bugs fixed), Burda et al.'s MLP and a convolutional VAE; the ELBO, the IWAE bound and
the importance-sampled likelihood, one computation of the importance weights for both.

Kingma & Welling, "Auto-Encoding Variational Bayes" (https://arxiv.org/abs/1312.6114):
the encoder gives q(z|x) = N(mu, diag(exp(logvar))), z = mu + sigma * eps, the decoder
gives Bernoulli logits over the pixels (784 of MNIST's, C x H x W of a plug-in data set's).
The seed put a ReLU on the mu and sigma heads, so mu could never be negative; here the
heads are plain linear layers. Every model takes and gives images flattened to ``[batch,
C x H x W]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vaegrid.spec.study import MNIST_SHAPE, NLL_ROWS
from vaegrid.train.data import PIXELS


class Terms(NamedTuple):
    """Per-image loss terms, each ``[batch]``, in nats."""

    recon: torch.Tensor  # Bernoulli negative log-likelihood of x given z
    kl: torch.Tensor  # KL(q(z|x) || N(0, I)), analytic

    @property
    def elbo(self) -> torch.Tensor:
        """The negative ELBO (lower is better): recon + kl."""
        return self.recon + self.kl


class BaseVAE(nn.Module):
    """q(z|x) = N(mu, diag(exp(logvar))) from ``encode``, Bernoulli logits from ``decode``."""

    latent: int

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> Terms:
        """Loss terms of ``x`` with the reparameterised sample z = mu + exp(logvar / 2) * eps."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        return loss_terms(x, self.decode(z), mu, logvar)


class VAE(BaseVAE):
    """The seed's: Linear(784, H) -> BatchNorm -> LeakyReLU -> two Linear(H, Z) heads; a
    mirrored decoder."""

    def __init__(self, hidden: int, latent: int, pixels: int = PIXELS) -> None:
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

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of the 784 pixels."""
        return self.decoder(z)


ACTIVATION = {"tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU}


class MLPVAE(BaseVAE):
    """Burda et al.'s VAE (https://arxiv.org/abs/1509.00519, section 5: two deterministic
    layers of 200 tanh units, 50 latent units): ``depth`` layers of ``hidden`` units with
    ``activation`` on each side, Gaussian q(z|x), Bernoulli p(x|z)."""

    def __init__(
        self, hidden: int, latent: int, depth: int, activation: str, pixels: int = PIXELS
    ) -> None:
        super().__init__()
        self.latent = latent
        act = ACTIVATION[activation]

        def stack(first: int) -> list[nn.Module]:
            layers: list[nn.Module] = []
            for i in range(depth):
                layers += [nn.Linear(first if i == 0 else hidden, hidden), act()]
            return layers

        self.encoder = nn.Sequential(*stack(pixels))
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(*stack(latent), nn.Linear(hidden, pixels))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class ConvVAE(BaseVAE):
    """Two stride-2 4 x 4 convolutions (C -> K -> 2K channels, sides 28 -> 14 -> 7 for
    MNIST: any sides divisible by 4), a dense layer of ``hidden`` units, the two heads; the
    decoder mirrors it with transposed convolutions of the same shape. Kernel 4 with stride
    2 and padding 1 gives every output pixel the same number of kernel taps (no
    checkerboard of uneven overlap, Odena et al. 2016), the last layer gives logits, not a
    sigmoid's output, and every other layer is batch-normalised as the linear model's are
    (without: on 9,600 real MNIST images it trailed the linear model for 5 epochs; with:
    ahead from the first). The seed's convolutional VAE produced degraded images."""

    def __init__(
        self, hidden: int, latent: int, channels: int, shape: tuple[int, int, int] = MNIST_SHAPE
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

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x.view(-1, *self.image))
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dense(z).view(-1, *self.shape)
        return self.deconv(h).flatten(1)


class PluginVAE(BaseVAE):
    """A plug-in's model (spec/plugins.py): its ``encode`` and ``decode`` work on images
    ``[B, C, H, W]``; seen from here as every model is, on flattened images."""

    def __init__(self, inner: Any, latent: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.inner: Any = inner  # a torch.nn.Module with encode and decode
        self.latent, self.shape = latent, shape

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The plug-in's encode, its shapes checked at every call (the probe's too): a
        model that ignores its latent size would be broadcast, silently, over the noise."""
        mu, logvar = self.inner.encode(x.view(-1, *self.shape))
        want = [x.shape[0], self.latent]
        shapes = [list(getattr(v, "shape", [])) for v in (mu, logvar)]
        if shapes != [want, want] or not all(isinstance(v, torch.Tensor) for v in (mu, logvar)):
            raise ValueError(
                f"encode gave mu {shapes[0]} and logvar {shapes[1]} for {x.shape[0]} images, "
                f"expected {want} each (latent {self.latent}): does its factory ignore a setting?"
            )
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.inner.decode(z)
        pixels = math.prod(self.shape)
        if not isinstance(logits, torch.Tensor) or list(logits.flatten(1).shape) != [
            z.shape[0], pixels
        ]:  # fmt: skip
            raise ValueError(
                f"decode gave {list(getattr(logits, 'shape', []))} for {z.shape[0]} codes, "
                f"expected images of {' x '.join(map(str, self.shape))}"
            )
        return logits.flatten(1)


def make_model(settings: Mapping[str, Any], shape: tuple[int, int, int] = MNIST_SHAPE) -> BaseVAE:
    """The model that a trial's settings name (``model``) for images of ``shape`` (C, H,
    W), built on the CPU."""
    hidden, latent, model = settings["hidden"], settings["latent"], settings["model"]
    pixels = math.prod(shape)
    if model == "mlp":
        return MLPVAE(hidden, latent, settings["depth"], settings["activation"], pixels)
    if model == "conv":
        return ConvVAE(hidden, latent, settings["channels"], shape)
    if model != "linear":
        from vaegrid.spec.plugins import load_factory

        inner = load_factory(model)(shape, dict(settings))
        return PluginVAE(inner, latent, shape)
    return VAE(hidden, latent, pixels)


def loss_terms(
    x: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> Terms:
    """Per-image reconstruction NLL and KL (Kingma & Welling 2014, appendix B)."""
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    return Terms(recon, kl)


_LOG_2PI = math.log(2 * math.pi)


def log_weights(
    model: BaseVAE, x: torch.Tensor, eps: torch.Tensor, *, fast: bool = False
) -> tuple[torch.Tensor, ...]:
    """Importance weights of ``k`` samples z_i = mu + sigma * eps_i of q(z|x), per image.

    Returns ``(log_w, recon, mu, logvar)``: log_w = log p(x|z_i) + log p(z_i) - log q(z_i|x)
    and recon = -log p(x|z_i), each ``[k, batch]``; eps is ``[k, batch, Z]``. ``fast``
    computes recon with :func:`bernoulli_nll_fast` (no gradient; the likelihood's), else
    as training's loss does.
    """
    k, b = eps.shape[0], len(x)
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps  # [k, b, Z]
    logits = model.decode(z.reshape(-1, z.shape[-1])).reshape(k, b, -1)
    if fast:
        recon = bernoulli_nll_fast(logits, x)
    else:
        recon = F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
    log_pz = -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)
    log_qz = -0.5 * (eps.pow(2) + _LOG_2PI + logvar).sum(-1)
    return -recon + log_pz - log_qz, recon, mu, logvar


# Pixels whose 1 + exp(-|logit|) (each in (1, 2]) are multiplied before one log is taken:
# 2 ** 100 stays far below float32's largest number (2 ** 128).
_PRODUCT_GROUP = 100


@torch.inference_mode()
def bernoulli_nll_fast(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | logits) summed over the last dimension, as the binary cross-entropy with
    logits, ``logits`` ``[..., b, P]`` and ``x`` ``[b, P]`` in [0, 1]; about 7x faster on
    the CPU, for the likelihood's thousands of samples per image.

    softplus(l) - x l = relu(l) + log(1 + exp(-|l|)) - x l, summed: 0.5 |l| + (0.5 - x) l
    are two reductions, and the logs of the (1 + exp(-|l|)) become one log of their product
    per group of 100 pixels (torch's log1p, log_sigmoid and softplus are not vectorised on
    x86: 9-10 ns a pixel on one core against 1.4 for this). It differs from
    ``F.binary_cross_entropy_with_logits`` by float32 rounding (2.5e-7 of the sum).
    """
    a = logits.abs()
    out = 0.5 * a.sum(-1) + (logits * (0.5 - x)).sum(-1)
    e = a.neg_().exp_().add_(1)
    whole = e.shape[-1] // _PRODUCT_GROUP * _PRODUCT_GROUP
    if whole:
        groups = e[..., :whole].unflatten(-1, (-1, _PRODUCT_GROUP))
        out += groups.prod(-1).log_().sum(-1)
    if whole < e.shape[-1]:
        out += e[..., whole:].prod(-1).log_()
    return out


def iwae_terms(model: BaseVAE, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, Terms]:
    """Burda et al.'s bound with the ``k`` samples of ``eps`` (``[k, batch, Z]``): the
    negative bound per image, -(logsumexp_i log w_i - log k), which is the single-sample
    ELBO at k = 1 and tightens as k grows, and the ELBO's terms for the metrics (the
    reconstruction averaged over the k samples, the analytic KL)."""
    log_w, recon, mu, logvar = log_weights(model, x, eps)
    bound = math.log(eps.shape[0]) - torch.logsumexp(log_w, dim=0)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    return bound, Terms(recon.mean(0), kl)


@torch.inference_mode()
def importance_nll(
    model: BaseVAE,
    x: torch.Tensor,
    k: int,
    generator: torch.Generator,
    max_rows: int = NLL_ROWS,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Importance-sampled estimate of -log p(x) per image, in nats, with ``k`` samples of q(z|x).

    log p(x) ~= logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k, z_i ~ q(z|x)
    (Burda et al., "Importance Weighted Autoencoders", https://arxiv.org/abs/1509.00519):
    a stochastic upper bound on the NLL that tightens as k grows and equals the ELBO's
    value for k = 1. It is what published MNIST VAE results report, with k = 5000 or so.
    ``progress`` is told the images done after each pass (``report``'s time left).
    """
    model.eval()
    out = []
    # Images per pass. Small passes stay in cache: on 2 CPU cores, 1,000 rows per pass took
    # 27 s for 7,000 test images at k = 1000, 20,000 rows 61 s.
    chunk = max(1, max_rows // k)
    # Samples per pass: no pass holds more than max_rows decoded images, whatever k (a
    # conv model's 5,000 samples of one image took 1.7 GB at 128 channels in one pass).
    block = min(k, max_rows)
    for start in range(0, len(x), chunk):
        xb = x[start : start + chunk]
        lse = None
        for done in range(0, k, block):
            n = min(block, k - done)
            eps = torch.randn(n, len(xb), model.latent, generator=generator, device=x.device)
            part = torch.logsumexp(log_weights(model, xb, eps, fast=True)[0], dim=0)  # over [n, b]
            lse = part if lse is None else torch.logaddexp(lse, part)
        assert lse is not None
        out.append(math.log(k) - lse)
        if progress is not None:
            progress(start + len(xb))
    return torch.cat(out)
