"""What every picture of the report shares: the style (sizes that survive a paper's
column), the metrics' words, the axes' labels, and how a figure is written (a PNG and an
SVG beside it, atomically). matplotlib only: no torch."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from vaegrid.safeio import save_with
from vaegrid.study.axes import AXIS, Axis

# Readable where a paper prints them: a figure of 7 inches shrinks to a column's 3.5, so
# no text is smaller than 8 points (4 when printed) and most is 9 to 11.
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8,
    "svg.fonttype": "none",  # text stays text in the SVG: searchable, editable
}
plt.rcParams.update(STYLE)  # type: ignore[arg-type]


DPI = 200  # every chart's PNG; an SVG beside it is the vector file
SVG_SHAPES_MAX = 5_000  # a collection of more shapes is an image in the SVG (see save)


MINUS = "\N{MINUS SIGN}"  # typographic minus: "-ELBO" would read as a hyphen


# What each metric column is, for titles and colorbars (all per image, in nats).
METRIC_LABELS = {
    "val_elbo": f"final validation {MINUS}ELBO",
    "val_recon": "final validation reconstruction loss",
    "val_kl": "final validation KL",
    "val_nll": "final validation NLL",
    "best_val_elbo": f"best validation {MINUS}ELBO",
    "train_elbo": f"final training {MINUS}ELBO",
    "test_elbo": f"test {MINUS}ELBO",
    "test_nll": "test negative log-likelihood",
}


# Lower is better everywhere: the reversed map makes the best configs the bright ones.
CMAP = "viridis_r"


def value_text(value: float) -> str:
    """A metric value: one decimal, three significant digits when it is huge or tiny."""
    return f"{value:.1f}" if value == 0 or 0.1 <= abs(value) < 1e5 else f"{value:.3g}"


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def axis_label(name: str, axes: Sequence[Axis]) -> str:
    """The axis's label from ``axes``, else from AXIS, else its name."""
    axis = next((a for a in axes if a.name == name), AXIS.get(name))
    if axis is None:
        return name
    return axis.label or axis.name


def distinct(column: pd.Series) -> list[object]:
    """The distinct values of a column, sorted."""
    return sorted(column.dropna().unique().tolist())


def panel_columns(panels: int) -> int:
    """Panels per row: about square, at most 4 (1, 2, 3, 2 x 2, 3 x 2, ..., 4 x 3)."""
    return panels if panels <= 3 else 2 if panels == 4 else 3 if panels <= 9 else 4


def order_key(value: object) -> tuple[int, object]:
    """Numbers before strings, each in their order (a legend's values)."""
    return (0, value) if isinstance(value, int | float | np.number) else (1, str(value))


def wrap(text: str, fig: Figure, points: float = 11.0, share: float = 1.0) -> str:
    """``text`` broken into lines that fit ``share`` of the figure's width at ``points`` (a
    title over axes that leave the rest to a colorbar takes their share)."""
    chars = int(share * fig.get_figwidth() * 72 / (0.6 * points))
    return textwrap.fill(text, max(20, chars))


def save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG at ``DPI`` and, beside it, an SVG (each atomically); free it.

    In the SVG, a collection of more than SVG_SHAPES_MAX shapes (the timeline's runs of a
    large study) is an image at ``DPI`` under vector text and axes: 100,000 bars took 17 MB
    and 10 s as paths."""
    save_with(path, fig.savefig, format="png", dpi=DPI)
    many = [c for ax in fig.axes for c in ax.collections if len(c.get_paths()) > SVG_SHAPES_MAX]
    for collection in many:
        collection.set_rasterized(True)
    dpi = DPI if many else "figure"  # (the resolution of images in an SVG)
    save_with(path.with_suffix(".svg"), fig.savefig, format="svg", dpi=dpi)
    plt.close(fig)


# A colour scale is logarithmic when its finite values span more than this factor.
LOG_SPAN = 10.0


def colour_scale(values: np.ndarray, clip_worse: bool = False) -> Normalize | None:
    """A colour scale over the finite ``values``: logarithmic when they span decades.

    ``clip_worse``: the scale ends at :func:`cap` instead of the greatest value, so that it
    shows the differences among the better values; greater ones map above 1 (the colour
    map's "over" colour). Logarithmic only when what is left still spans decades.
    None when there are none.
    """
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    low, high = float(finite.min()), float(finite.max())
    if clip_worse:
        high = cap(finite, log=low > 0 and high / low > LOG_SPAN)
    if low > 0 and high / low > LOG_SPAN:
        return LogNorm(low, high)
    if low == high:  # one value: centre it
        pad = max(0.01 * abs(low), 0.5)
        return Normalize(low - pad, high + pad)
    return Normalize(low, high)


def cap(finite: np.ndarray, log: bool) -> float:
    """Where a colour scale that shows the better half of ``finite`` ends: the value the
    worst would have if all were as evenly spaced as the better half (best to lower median,
    extrapolated by rank), in log10 when ``log``; the greatest value when that is no lower.

    Evenly spread values keep their whole range. A tail of far worse ones (the seed study's
    lr 1e-5 configs at 210-310 nats) is cut off, so that the good ones (106.5-111.7) spread
    over half the scale instead of sharing one colour; the grid's best half sets the scale.
    """
    t = np.sort(np.log10(finite) if log else finite)
    median = (len(t) - 1) // 2  # rank of the lower median
    if median == 0 or t[median] == t[0]:  # no spread of the better half to extrapolate
        return float(finite.max())
    top = t[0] + (t[median] - t[0]) * (len(t) - 1) / median
    if top >= t[-1] - 1e-9 * (t[-1] - t[0]):  # rounding must not clip even spacing
        return float(finite.max())
    return float(10**top if log else top)
