"""How fast is one vaegrid trial? Three ways to train the same config, in one run.

(a) vaegrid's trial function (``run_trial``: seeded generators, per-epoch validation,
    checkpoint and log each epoch);
(b) a bare in-memory loop of the same model doing the same work (train + validation
    each epoch), with nothing else: the speed of PyTorch itself;
(c) the pytorch/examples ``vae/main.py`` style: torchvision MNIST with a ToTensor
    transform through a DataLoader.

Config: hidden 400, latent 100, batch 1000, 2 epochs over the 56,000 holdout training
images, validation on 7,000. Prints samples/s (training images per second of wall
time) for each, a/b and a/c, and a's achieved FLOP/s against the machine's fp32
matrix-multiply peak measured here. Real MNIST: set VAEGRID_DATA.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset

from vaegrid.errors import InputError
from vaegrid.layout import TrialFiles
from vaegrid.models.linear import LinearVAE as VAE
from vaegrid.study.core import DataSpec, TrialConfig
from vaegrid.train.data import data_dir, load_splits
from vaegrid.train.trial import run_trial

HIDDEN, LATENT, BATCH, LR, CLIP = 400, 100, 1000, 1e-3, 1.0


def vaegrid_trial(train: torch.Tensor, val: torch.Tensor, epochs: int) -> float:
    cfg = TrialConfig.make(
        0,
        DataSpec(),
        hidden=HIDDEN,
        latent=LATENT,
        lr=LR,
        clip=CLIP,
        epochs=epochs,
        batch_size=BATCH,
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_trial(cfg, train, val, TrialFiles(Path(tmp)))
        return time.perf_counter() - start


def train_step(model: VAE, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    """The step every variant takes, as pytorch/examples writes it."""
    loss = model(x, torch.randn(len(x), LATENT)).elbo.mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()


def bare_loop(train: torch.Tensor, val: torch.Tensor, epochs: int) -> float:
    start = time.perf_counter()
    model = VAE(HIDDEN, LATENT)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(train))
        for i in range(0, len(train), BATCH):
            train_step(model, opt, train[perm[i : i + BATCH]])
        model.eval()
        with torch.no_grad():
            model(val, torch.randn(len(val), LATENT)).elbo.mean().item()
    return time.perf_counter() - start


def examples_style(root: Path, holdout: list[Subset], epochs: int) -> float:  # type: ignore[type-arg]
    start = time.perf_counter()
    train_loader = DataLoader(holdout[0], batch_size=BATCH, shuffle=True)
    val_loader = DataLoader(holdout[1], batch_size=BATCH)
    model = VAE(HIDDEN, LATENT)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(epochs):
        model.train()
        for x, _y in train_loader:
            train_step(model, opt, x.view(-1, 784))
        model.eval()
        with torch.no_grad():
            for x, _y in val_loader:
                model(x.view(-1, 784), torch.randn(len(x), LATENT))
    return time.perf_counter() - start


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start)


def trial_flops(n_train: int, n_val: int, epochs: int) -> float:
    macs = 784 * HIDDEN + 2 * HIDDEN * LATENT + LATENT * HIDDEN + HIDDEN * 784  # per image
    # training: forward + backward ~ 3 forwards; validation: one forward
    return epochs * 2 * macs * (3 * n_train + n_val)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument(
        "--rounds", type=int, default=3, help="rounds of a, b, c; the best of each counts"
    )
    args = p.parse_args()
    root = data_dir(None)
    splits = load_splits(root, DataSpec(), seed=0, device="cpu")
    from torchvision import datasets, transforms

    tf = transforms.ToTensor()
    pool = ConcatDataset(
        [datasets.MNIST(str(root), train=t, download=True, transform=tf) for t in (True, False)]
    )
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0)).tolist()
    n_train, n_val = len(splits.train), len(splits.val)
    holdout = [Subset(pool, perm[:n_train]), Subset(pool, perm[n_train : n_train + n_val])]

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {n_train} train, "
        f"{n_val} val images, {args.epochs} epochs, best of {args.rounds} rounds"
    )
    times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    for _ in range(args.rounds):  # interleaved, so drift in machine load hits all three alike
        times["a"].append(vaegrid_trial(splits.train, splits.val, args.epochs))
        times["b"].append(bare_loop(splits.train, splits.val, args.epochs))
        times["c"].append(examples_style(root, holdout, args.epochs))
    peak = matmul_peak()
    best = {k: min(v) for k, v in times.items()}
    rate = {k: args.epochs * n_train / t for k, t in best.items()}
    names = {"a": "vaegrid run_trial", "b": "bare in-memory loop", "c": "DataLoader + ToTensor"}
    for k in "abc":
        print(f"({k}) {names[k]:<22} {rate[k]:>9.0f} samples/s   ({best[k]:.2f} s)")
    print(f"a/b = {rate['a'] / rate['b']:.3f}   (target >= 0.95)")
    print(f"a/c = {rate['a'] / rate['c']:.2f}    (target >= 3)")
    achieved = trial_flops(n_train, n_val, args.epochs) / best["a"]
    print(
        f"(a) achieved {achieved / 1e9:.1f} GFLOP/s of a {peak / 1e9:.1f} GFLOP/s fp32 matmul peak "
        f"= {achieved / peak:.1%}"
    )


if __name__ == "__main__":
    try:
        main()
    except InputError as e:  # no MNIST here: say where to put it, as the CLI does
        print(f"bench: error: {e} (make bench needs real MNIST)", file=sys.stderr)
        raise SystemExit(2) from None
