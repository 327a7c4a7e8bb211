"""What every VAE of vaegrid is: q(z|x) from ``encode``, Bernoulli logits from ``decode``,
and the per-image loss terms in nats (Kingma & Welling, https://arxiv.org/abs/1312.6114,
appendix B). Imports torch: the model files load it only when a module is asked for."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Terms(NamedTuple):
    """Per-image loss terms, each ``[batch]``, in nats."""

    recon: torch.Tensor  # Bernoulli negative log-likelihood of x given z
    kl: torch.Tensor  # KL(q(z|x) || N(0, I)), analytic

    @property
    def elbo(self) -> torch.Tensor:
        """The negative ELBO (lower is better): recon + kl."""
        return self.recon + self.kl


class BaseVAE(nn.Module):
    """q(z|x) = N(mu, diag(exp(logvar))) from ``encode``, Bernoulli logits from ``decode``.
    Every model takes and gives images flattened to ``[batch, C x H x W]``."""

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


def loss_terms(
    x: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> Terms:
    """Per-image reconstruction NLL and KL (Kingma & Welling 2014, appendix B)."""
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    return Terms(recon, kl)
