"""The bounds a VAE is trained and ranked by (train/model.py): the ELBO's terms, the IWAE
bound and the importance-sampled NLL, and one computation of the weights for both."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vaegrid.models.base import loss_terms
from vaegrid.models.linear import LinearVAE as VAE
from vaegrid.train.model import importance_nll


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


def prior_encoder_and_constant_decoder(hidden: int = 16, latent: int = 4) -> VAE:
    """A VAE with q(z|x) = N(0, I) for every x and logits that do not depend on z."""
    torch.manual_seed(0)
    model = VAE(hidden, latent)
    with torch.no_grad():
        for head in (model.mu, model.logvar):
            head.weight.zero_()
            head.bias.zero_()
        model.decoder[0].weight.zero_()  # its bias, BatchNorm and last layer still shape x
    return model.eval()  # BatchNorm on its running statistics: no image depends on another


def test_forward_terms_of_a_batch_are_each_images_own() -> None:
    torch.manual_seed(0)
    model = VAE(hidden=16, latent=4).double().eval()
    x = torch.rand(5, 784, dtype=torch.float64)
    eps = torch.randn(5, 4, dtype=torch.float64)
    terms = model(x, eps)
    assert terms.recon.shape == terms.kl.shape == (5,)
    for i in range(5):
        alone = model(x[i : i + 1], eps[i : i + 1])
        assert torch.allclose(alone.recon, terms.recon[i], rtol=1e-12, atol=0)
        assert torch.allclose(alone.kl, terms.kl[i], rtol=1e-12, atol=0)


def test_forward_samples_z_from_q_and_decodes_it() -> None:
    # recon is the Bernoulli NLL of x under the decoder at z = mu + sigma * eps, by hand.
    torch.manual_seed(0)
    model = VAE(hidden=16, latent=4).double().eval()
    x = torch.rand(5, 784, dtype=torch.float64)
    eps = torch.randn(5, 4, dtype=torch.float64)
    terms = model(x, eps)
    mu, logvar = model.encode(x)
    p = torch.sigmoid(model.decode(mu + torch.exp(0.5 * logvar) * eps))
    recon = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(dim=1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)
    assert torch.allclose(terms.recon, recon, rtol=1e-10, atol=0)
    assert torch.allclose(terms.kl, kl, rtol=1e-10, atol=0)
    assert not torch.allclose(model(x, torch.zeros_like(eps)).recon, terms.recon)  # eps is used


def test_kl_is_exactly_zero_when_q_is_the_prior() -> None:
    model = prior_encoder_and_constant_decoder()
    terms = model(torch.rand(3, 784), torch.randn(3, 4))
    assert torch.equal(terms.kl, torch.zeros(3))


@pytest.mark.parametrize("k", [1, 7, 100])
def test_importance_nll_is_exact_when_q_is_the_prior_and_the_decoder_ignores_z(k: int) -> None:
    # Every importance weight p(x|z) p(z) / q(z|x) is then p(x), so for every k the estimate
    # logsumexp(k weights) - log k is exactly log p(x) = -BCE(x, logits): it tests the - log k.
    model = prior_encoder_and_constant_decoder()
    x = torch.rand(6, 784)
    logits = model.decode(torch.zeros(1, 4)).expand_as(x)
    exact = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)
    assert exact.min() > 100  # a real likelihood, far from the log k of a dropped term
    nll = importance_nll(model, x, k, torch.Generator().manual_seed(k))
    assert torch.allclose(nll, exact, rtol=0, atol=1e-3)
    elbo = model(x, torch.randn(6, 4)).elbo  # and the ELBO is exact too: KL = 0
    assert torch.allclose(elbo, exact, rtol=0, atol=1e-3)


def test_importance_nll_streams_samples_in_blocks_with_the_same_value() -> None:
    # k above the rows a pass may hold: the samples come in blocks, their log-sum-exp is
    # accumulated; the value is the one-pass formula over the same draws.
    from vaegrid.train.model import log_weights

    torch.manual_seed(0)
    model = VAE(hidden=16, latent=4).double().eval()
    x = torch.rand(3, 784, dtype=torch.float64).round()
    got = importance_nll(model, x, 50, torch.Generator().manual_seed(7), max_rows=20)
    g = torch.Generator().manual_seed(7)
    for i in range(3):  # one image per pass (k > max_rows), blocks of 20, 20, 10
        eps = torch.cat([torch.randn(n, 1, 4, generator=g) for n in (20, 20, 10)])
        log_w = log_weights(model, x[i : i + 1], eps)[0]
        want = math.log(50) - torch.logsumexp(log_w, dim=0)
        torch.testing.assert_close(got[i : i + 1], want)


@pytest.mark.parametrize("pixels", [7, 100, 250, 784])
def test_the_likelihoods_fast_bernoulli_term_equals_the_cross_entropy(pixels: int) -> None:
    # The NLL's reconstruction term (one log per 100 pixels) against torch's binary
    # cross-entropy with logits: logits from -100 to 100, grey and binary images, a pixel
    # count that is not a multiple of the group (7, 250) and one that is (100, 784).
    import torch.nn.functional as F

    from vaegrid.train.model import bernoulli_nll_fast

    g = torch.Generator().manual_seed(pixels)
    logits = torch.randn(5, 3, pixels, generator=g) * 30
    logits[0, 0, : min(pixels, 4)] = torch.tensor([-100.0, 100.0, 0.0, 1e-4])[: min(pixels, 4)]
    x = torch.rand(3, pixels, generator=g)
    x[1] = x[1].round()
    want = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    got = bernoulli_nll_fast(logits, x)
    assert got.shape == (5, 3)
    torch.testing.assert_close(got, want.sum(-1), rtol=1e-6, atol=1e-3)
