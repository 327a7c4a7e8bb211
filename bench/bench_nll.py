"""How fast is the importance-sampled likelihood? ``importance_nll`` against its baseline
(the same passes and draws with torch's binary cross-entropy, as before the fast Bernoulli
term) and against this CPU's fp32 matrix-multiply peak, in one run.

Models: the seed's winner (linear, hidden 400, latent 100), the seed's largest (800, 400)
and Burda et al.'s MLP (2 x 200 tanh, 50 latent), untrained (the speed does not depend on
the weights), on the first ``--images`` test images of real MNIST at ``--k`` samples. FLOPs
counted: the decoder's matrix multiplies, 2 per multiply-add, for every sample (the encoder
and the elementwise work are not counted: the figure is a lower bound). Prints seconds,
GFLOP/s, the share of the peak and after/before, and the 10,000 test images' time
extrapolated. Real MNIST: set VAEGRID_DATA.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from torch import nn

from vaegrid.errors import InputError
from vaegrid.models.base import BaseVAE
from vaegrid.models.linear import LinearVAE as VAE
from vaegrid.models.mlp import MLPVAE
from vaegrid.study.core import DataSpec
from vaegrid.study.sizes import NLL_ROWS
from vaegrid.train.data import data_dir, load_splits
from vaegrid.train.model import importance_nll, log_weights

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from bench_trial import matmul_peak


@torch.inference_mode()
def baseline_nll(model: BaseVAE, x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """importance_nll's passes and draws with the cross-entropy training uses."""
    model.eval()
    out = []
    chunk, block = max(1, NLL_ROWS // k), min(k, NLL_ROWS)
    for start in range(0, len(x), chunk):
        xb = x[start : start + chunk]
        lse = None
        for done in range(0, k, block):
            n = min(block, k - done)
            eps = torch.randn(n, len(xb), model.latent, generator=g)
            part = torch.logsumexp(log_weights(model, xb, eps)[0], dim=0)
            lse = part if lse is None else torch.logaddexp(lse, part)
        assert lse is not None
        out.append(math.log(k) - lse)
    return torch.cat(out)


def decoder_macs(model: BaseVAE) -> int:
    """Multiply-adds of the decoder's linear layers for one sample."""
    decoder: nn.Module = model.decoder  # type: ignore[assignment]
    return sum(
        m.in_features * m.out_features for m in decoder.modules() if isinstance(m, nn.Linear)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--images", type=int, default=200, help="test images (default 200)")
    p.add_argument("--k", type=int, default=5000, help="samples per image (default 5000)")
    p.add_argument("--rounds", type=int, default=2, help="rounds; the best of each counts")
    args = p.parse_args()
    test = load_splits(data_dir(None), DataSpec(), seed=0, device="cpu").test[: args.images]
    torch.manual_seed(0)
    models = {
        "seed winner, linear 400 x 100": VAE(400, 100),
        "seed largest, linear 800 x 400": VAE(800, 400),
        "Burda et al.'s MLP, 2 x 200 tanh": MLPVAE(200, 50, 2, "tanh"),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(test)} test images, "
        f"k = {args.k}, best of {args.rounds} rounds"
    )
    peaks = []
    for name, model in models.items():
        times: dict[str, list[float]] = {"after": [], "before": []}
        values = {}
        for _ in range(args.rounds):  # interleaved: drift in load hits both alike
            for label, fn in (("after", importance_nll), ("before", baseline_nll)):
                start = time.perf_counter()
                values[label] = fn(model, test, args.k, torch.Generator().manual_seed(0))
                times[label].append(time.perf_counter() - start)
            peaks.append(matmul_peak())
        peak = max(peaks)
        flops = 2 * decoder_macs(model) * args.k * len(test)
        best = {label: min(t) for label, t in times.items()}
        diff = float((values["after"] - values["before"]).abs().max())
        print(
            f"{name}: mean NLL {float(values['after'].mean()):.3f} (|after - before| <= {diff:.1e})"
        )
        for label in ("before", "after"):
            rate = flops / best[label]
            full = best[label] * 10_000 / len(test)
            share = f"{rate / 1e9:6.1f} GFLOP/s = {rate / peak:5.1%} of {peak / 1e9:.0f}"
            whole = f"10,000 images: {full / 60:5.1f} min"
            print(f"  {label:<6} {best[label]:8.2f} s  {share}   {whole}")
        print(f"  after/before speed = {best['before'] / best['after']:.2f}x")


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        print(f"bench: error: {e} (make bench needs real MNIST)", file=sys.stderr)
        raise SystemExit(2) from None
