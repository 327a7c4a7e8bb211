"""The report's pictures: learning curves (matplotlib) and digit grids (torchvision)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.ticker import MaxNLocator
from torchvision.utils import make_grid, save_image

from vaegrid.model import VAE
from vaegrid.paths import save_with

SIDE = 28
PAIRS = 32  # test digits shown beside their reconstructions
ROW = 16  # digits per row of the reconstruction grid


def curves(epochs: pd.DataFrame, ranking: pd.DataFrame, test: pd.DataFrame, path: Path) -> None:
    """Validation elbo per epoch for every trial (grey), the winners highlighted."""
    val = epochs[epochs["split"] == "val"]
    winners = list(dict.fromkeys(test["key"]))
    info = ranking.set_index("key")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for key, trial in val.groupby("key"):
        if key not in winners:
            ax.plot(trial["epoch"], trial["elbo"], color="0.75", linewidth=0.8)
    for key in winners:
        trial = val[val["key"] == key]
        row = info.loc[key]
        roles = ", ".join(test.loc[test["key"] == key, "criterion"])
        config = f"H {row['hidden']}, Z {row['latent']}, lr {row['lr']:g}, clip {row['clip']:g}"
        label = f"{key} ({config}): {roles}"
        ax.plot(trial["epoch"], trial["elbo"], linewidth=2.2, marker="o", markersize=3, label=label)
    finals = ranking.loc[ranking["status"] == "completed", "val_elbo"].dropna()
    if len(finals):  # keep the interesting range: slow and bad starts would flatten the rest
        low, high = val["elbo"].min(), max(finals.quantile(0.9), finals.min() * 1.1)
        ax.set_ylim(low - 0.02 * abs(low), high + 0.05 * abs(high))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation negative ELBO (nats per image)")
    ax.set_title(f"Validation elbo of {val['key'].nunique()} trials (grey), winners highlighted")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_with(path, fig.savefig, format="png")
    plt.close(fig)


@torch.inference_mode()
def reconstructions(model: VAE, test_x: torch.Tensor, path: Path) -> None:
    """The first test digits (odd rows) above their reconstructions from z = mu (even rows)."""
    x = test_x[:PAIRS]
    mu, _ = model.encode(x)
    recon = torch.sigmoid(model.decode(mu))
    rows = []
    for start in range(0, PAIRS, ROW):
        rows += [x[start : start + ROW], recon[start : start + ROW]]
    images = torch.cat(rows).reshape(-1, 1, SIDE, SIDE).cpu()
    save_with(path, save_image, make_grid(images, nrow=ROW, pad_value=0.5), format="png")


@torch.inference_mode()
def samples(model: VAE, generator: torch.Generator, path: Path, n: int = 64) -> None:
    """``n`` digits decoded from z ~ N(0, I): the Bernoulli means, 8 to a row."""
    device = next(model.parameters()).device
    z = torch.randn(n, model.latent, generator=generator, device=device)
    images = torch.sigmoid(model.decode(z)).reshape(-1, 1, SIDE, SIDE).cpu()
    save_with(path, save_image, make_grid(images, nrow=8, pad_value=0.5), format="png")
