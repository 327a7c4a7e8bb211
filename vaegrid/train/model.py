"""How a trial's model is built (a built-in's card, vaegrid/models/, or a plug-in's
factory behind the same interface), and the bounds it is trained and ranked by, in nats
per image: the ELBO, the IWAE bound and the importance-sampled likelihood, one computation
of the importance weights for both.

Kingma & Welling, "Auto-Encoding Variational Bayes" (https://arxiv.org/abs/1312.6114):
the encoder gives q(z|x) = N(mu, diag(exp(logvar))), z = mu + sigma * eps, the decoder
gives Bernoulli logits over the C x H x W values of an image (models/base.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from vaegrid.models import CARDS
from vaegrid.models.base import BaseVAE, Terms
from vaegrid.study.sizes import MNIST_SHAPE, NLL_ROWS


class PluginVAE(BaseVAE):
    """A plug-in's model (study/plugins.py): its ``encode`` and ``decode`` work on images
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
    W), built on the CPU: a built-in's from its card (vaegrid/models/), a plug-in's from its
    factory."""
    card = CARDS.get(settings["model"])
    if card is not None:
        return card.build(settings, shape)
    from vaegrid.study.plugins import load_factory

    inner = load_factory(settings["model"])(shape, dict(settings))
    return PluginVAE(inner, settings["latent"], shape)


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
