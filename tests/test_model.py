from __future__ import annotations

import math

import torch

from vaegrid.model import VAE, loss_terms


def test_loss_matches_a_hand_computation() -> None:
    x = torch.tensor([[0.0, 1.0, 0.5], [1.0, 1.0, 0.0]])
    logits = torch.tensor([[-1.0, 2.0, 0.0], [3.0, -0.5, 1.5]])
    mu = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, -1.0], [1.0, 0.5]])
    terms = loss_terms(x, logits, mu, logvar)
    for i in range(2):
        recon = 0.0
        for xj, lj in zip(x[i].tolist(), logits[i].tolist(), strict=True):
            p = 1 / (1 + math.exp(-lj))
            recon -= xj * math.log(p) + (1 - xj) * math.log(1 - p)
        kl = sum(
            0.5 * (m * m + math.exp(lv) - 1 - lv)
            for m, lv in zip(mu[i].tolist(), logvar[i].tolist(), strict=True)
        )
        assert math.isclose(terms.recon[i].item(), recon, rel_tol=1e-6)
        assert math.isclose(terms.kl[i].item(), kl, rel_tol=1e-6)
        assert math.isclose(terms.elbo[i].item(), recon + kl, rel_tol=1e-6)


def test_heads_are_plain_linear_so_mu_can_be_negative_and_sigma_small() -> None:
    torch.manual_seed(0)
    model = VAE(hidden=16, latent=4).eval()
    mu, logvar = model.encode(torch.rand(64, 784))
    assert (mu < 0).any() and (logvar < 0).any()  # the seed's ReLU heads forbade both
    assert isinstance(model.mu, torch.nn.Linear) and isinstance(model.logvar, torch.nn.Linear)


def test_forward_gives_per_image_terms() -> None:
    model = VAE(hidden=16, latent=4)
    terms = model(torch.rand(5, 784), torch.zeros(5, 4))
    assert terms.recon.shape == terms.kl.shape == (5,)
    assert (terms.kl >= 0).all() and (terms.recon > 0).all()
