"""The report's pictures of the sweep and of the winners: where the time went (timeline) with
matplotlib, and the winners' test digits beside their reconstructions and samples from the
prior (torchvision). The learning curves are curves.py's; what mattered, mattered.py's."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torchvision.utils import make_grid, save_image

from vaegrid.analysis.timing import Timing
from vaegrid.models.base import BaseVAE
from vaegrid.report.style import save, wrap
from vaegrid.safeio import save_with

PIXELS_MIN = 56  # digit grids: each image scaled up to at least this many pixels a side
PAIRS = 32  # test digits shown beside their reconstructions
ROW = 16  # digits per row of the reconstruction grid

# timeline.png: slots named one by one (and runs labelled) up to this many.
LANES_NAMED_MAX = 40
# timeline.png: a run's colour by how it ended.
RUN_COLOURS = {
    "completed": "#2a9d8f",
    "diverged": "#e76f51",
    "paused": "#8ab6d6",
    "stopped": "#b0b0b0",
    "interrupted": "#f4a261",
    "failed": "#264653",
}


def timeline(t: Timing, epochs_done: Mapping[str, int], path: Path) -> int:
    """Every run of the study on its slot over the sweep's time: a bar from its start to its
    end, coloured by how it ended, labelled with its trial's key and finished epochs where
    it is wide enough; halving's rung decisions as dashed vertical lines. Past
    LANES_NAMED_MAX slots, the slots are a band numbered on its axis, bars unlabelled.

    Returns:
        The number of bars drawn.
    """
    from matplotlib.collections import PolyCollection

    start = t.runs[0].started
    few = t.lanes <= LANES_NAMED_MAX  # a lane each, named; else the slots as a band
    height = 1.4 + 0.5 * t.lanes if few else 7.0
    fig, ax = plt.subplots(figsize=(11, height), layout="constrained")
    bar = 0.7 if few else 1.0  # a band: lanes touch (gaps would alias into stripes)
    bars: dict[str, list[list[tuple[float, float]]]] = {}
    for run in t.runs:  # one collection per colour: a hundred thousand runs draw in seconds
        x, width = run.started - start, max(run.ended - run.started, t.span * 1e-4)
        y = run.lane - bar / 2
        bars.setdefault(run.status, []).append(
            [(x, y), (x + width, y), (x + width, y + bar), (x, y + bar)]
        )
        if few and width > t.span / 12:  # room for its label at 8 points
            ax.text(x + width / 2, run.lane, f"{run.key[:6]} {epochs_done.get(run.key, 0)}e",
                    ha="center", va="center", fontsize=8, color="black", clip_on=True)  # fmt: skip
    for status, rects in bars.items():
        edge = ("white", 0.5) if few else ("none", 0.0)
        ax.add_collection(PolyCollection(rects, facecolors=RUN_COLOURS.get(status, "black"),
                                         edgecolors=edge[0], linewidths=edge[1]))  # fmt: skip
    for rung, when in t.rungs:
        ax.axvline(when - start, color="black", linestyle="--", linewidth=0.9)
        ax.text(when - start, -0.75, f" rung {rung}", fontsize=8, va="center")
    seen = sorted({run.status for run in t.runs})
    handles = [plt.Rectangle((0, 0), 1, 1, color=RUN_COLOURS.get(s, "black")) for s in seen]
    fig.legend(handles, seen, loc="outside lower center", fontsize=8, ncols=len(seen))
    if few:
        ax.set_yticks(range(t.lanes), [f"slot {i + 1}" for i in range(t.lanes)])
    else:
        ax.set_ylabel("slot")
        ax.yaxis.set_major_formatter(lambda y, _: f"{y + 1:.0f}")
    ax.set_ylim(t.lanes - 0.4, -0.9)  # slot 1 on top, room above it for the rungs' names
    ax.set_xlim(0, t.span * 1.01 if t.span else 1)
    ax.set_xlabel("seconds since the first run started")
    title = (
        f"Where the time went: {len(t.runs):,} runs on {t.lanes:,} slots, busy "
        f"{t.occupancy:.0%}, idle tail {t.tail:,.0f} s"
        + (" (label: trial key, epochs done)" if few else "")
    )
    ax.set_title(wrap(title, fig))
    save(fig, path)
    return len(t.runs)


@torch.inference_mode()
def reconstructions(
    model: BaseVAE, test_x: torch.Tensor, shape: tuple[int, int, int], path: Path
) -> None:
    """The first test images (odd rows) above their reconstructions from z = mu (even
    rows); ``shape`` is the images' (C, H, W): grey or colour."""
    x = test_x[:PAIRS]
    mu, _ = model.encode(x)
    recon = torch.sigmoid(model.decode(mu))
    rows = []
    for start in range(0, PAIRS, ROW):
        rows += [x[start : start + ROW], recon[start : start + ROW]]
    images = _large(torch.cat(rows).reshape(-1, *shape).cpu())
    save_with(path, save_image, make_grid(images, nrow=ROW, pad_value=0.5), format="png")


@torch.inference_mode()
def samples(
    model: BaseVAE,
    generator: torch.Generator,
    shape: tuple[int, int, int],
    path: Path,
    n: int = 64,
) -> None:
    """``n`` images decoded from z ~ N(0, I): the Bernoulli means, 8 to a row; ``shape``
    is the images' (C, H, W)."""
    device = next(model.parameters()).device
    z = torch.randn(n, model.latent, generator=generator, device=device)
    images = _large(torch.sigmoid(model.decode(z)).reshape(-1, *shape).cpu())
    save_with(path, save_image, make_grid(images, nrow=8, pad_value=0.5), format="png")


def _large(images: torch.Tensor) -> torch.Tensor:
    """Images ``[N, C, H, W]`` scaled up by a whole factor (each pixel a block: nothing
    smoothed away) until their shorter side is at least ``PIXELS_MIN``."""
    factor = math.ceil(PIXELS_MIN / min(images.shape[-2:]))
    if factor <= 1:
        return images
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
