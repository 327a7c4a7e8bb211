"""The report's pictures: learning curves, the searched settings against the final metric
(heatmap, parallel coordinates, importances) with matplotlib, and digit grids (torchvision).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import Colormap, ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from torchvision.utils import make_grid, save_image

from vaegrid.analysis.timing import Timing
from vaegrid.models.base import BaseVAE
from vaegrid.safeio import save_with
from vaegrid.spec.axes import AXIS, Axis, describe, format_value
from vaegrid.status import COMPLETED, DIVERGED

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
PIXELS_MIN = 56  # digit grids: each image scaled up to at least this many pixels a side
PAIRS = 32  # test digits shown beside their reconstructions
ROW = 16  # digits per row of the reconstruction grid

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
GREY = "0.82"  # heatmap cells without a completed config
LINE_GREY = "0.55"  # parallel coordinates: configs that did not complete
# heatmap: more panels than this (combinations of the other axes) would not be readable;
# draw one panel of the best over the other axes instead.
PANELS_MAX = 12
# A colour scale is logarithmic when its finite values span more than this factor.
LOG_SPAN = 10.0
# parallel: a numeric vertical axis labels each value up to this many, else TICKS of them.
DISTINCT_TICKS_MAX = 8
TICKS = 5
# parallel: where configs that did not complete end, above the metric axis's worst value.
NOT_DONE_Y = 1.12
NOT_DONE = "diverged / not completed"
FIGURE_INCHES_MAX = 24.0  # heatmaps of long axes stop growing here


def heatmap(
    frame: pd.DataFrame,
    x: str,
    y: str,
    axes: Sequence[Axis],
    path: Path,
    metric: str = "val_elbo",
) -> dict[str, list[list[str]]]:
    """``metric`` over axes ``x`` and ``y``: one panel per combination of the other ``axes``.

    ``frame`` holds one row per config: a column per axis, ``status`` and ``metric``. A
    cell shows the lowest ``metric`` of its completed configs; without one it is grey,
    "div." when all its configs diverged, else "—". Over PANELS_MAX combinations, one
    panel shows the best over the other axes instead. The colours show the better cells:
    the scale ends where :func:`_cap` puts it, worse cells take its darkest colour and the
    colorbar says where it was clipped; every cell's number is its true value.

    Returns:
        Each panel's title ("" for the one panel of a study without other axes) and its
        cell texts: rows in increasing ``y``, each in increasing ``x``.

    Raises:
        ValueError: ``x`` equals ``y``, a column is missing, or ``frame`` has no configs.
    """
    if x == y:
        raise ValueError(f"heatmap needs two different axes; got {x} twice")
    others = [a.name for a in axes if a.name not in (x, y)]
    missing = [c for c in (x, y, *others, "status", metric) if c not in frame.columns]
    if missing:
        raise ValueError(f"heatmap: no column {', '.join(missing)} in the configs' frame")
    xs, ys = _distinct(frame[x]), _distinct(frame[y])
    if not xs or not ys:
        raise ValueError(f"heatmap: no configs with values of {x} and {y}")
    panels: list[tuple[str, pd.DataFrame]] = [("", frame)]
    title = _metric_label(metric)
    title = f"{title[0].upper()}{title[1:]} (nats, lower is better)"
    if others:
        combos = len(frame[others].drop_duplicates())
        if combos > PANELS_MAX:
            panels = [(f"best over {', '.join(others)}", frame)]
            title += (
                f"\neach cell: the best (lowest) over {', '.join(others)} "
                f"({combos} combinations, too many panels)"
            )
        else:
            groups = frame.groupby(others, sort=True, dropna=False)
            panels = [
                (describe(dict(zip(others, key, strict=True)), others), sub) for key, sub in groups
            ]
    cells = [_cells(sub, x, y, xs, ys, metric) for _, sub in panels]
    pooled = max((int(_pooled(sub, x, y).max()) for _, sub in panels), default=1)
    if pooled > 1 and not title.count("\n"):  # (a collapsed panel says it pools already)
        title += (
            f"\na cell pools up to {pooled} configs (settings not on its axes, or that apply "
            "to some configs only): it shows their best, 'of N' their number"
        )
    shown = np.concatenate([values.ravel() for values, _ in cells])
    norm = _norm(shown, clip_worse=True)
    cmap = plt.get_cmap(CMAP).with_extremes(bad=GREY)

    ncols = _columns(len(panels))
    nrows = math.ceil(len(panels) / ncols)
    width = min(ncols * max(3.0, 0.6 * len(xs) + 1.6) + 1.4, FIGURE_INCHES_MAX)
    height = min(nrows * max(3.0, 0.42 * len(ys) + 1.4) + 1.1, FIGURE_INCHES_MAX)
    fig, grid = plt.subplots(
        nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained"
    )
    fontsize = 9 if len(xs) <= 6 else 8
    out: dict[str, list[list[str]]] = {}
    for i, ((name, _), (values, texts)) in enumerate(zip(panels, cells, strict=True)):
        ax = grid.flat[i]
        ax.imshow(
            np.ma.masked_invalid(values),
            cmap=cmap,
            norm=norm or Normalize(0, 1),
            origin="lower",
            aspect="auto",
        )
        for r, row in enumerate(texts):
            for c, text in enumerate(row):
                colour = _text_colour(cmap, norm, values[r, c])
                ax.text(c, r, text, ha="center", va="center", fontsize=fontsize, color=colour)
        ax.set_xticks(range(len(xs)), [format_value(v) for v in xs])
        ax.set_yticks(range(len(ys)), [format_value(v) for v in ys])
        if i + ncols >= len(panels):  # no panel below it
            ax.set_xlabel(_axis_label(x, axes))
        if i % ncols == 0:
            ax.set_ylabel(_axis_label(y, axes))
        if name:
            ax.set_title(name, fontsize=10)
        out[name] = texts
    for ax in grid.flat[len(panels) :]:
        ax.set_axis_off()
    if norm is not None:
        mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        label = f"{_metric_label(metric)} (nats)"
        top = float(norm.vmax if norm.vmax is not None else np.nanmax(shown))
        clipped = bool(np.nanmax(shown) > top)
        if clipped:
            label += f"\nclipped at {_value_text(top)}: worse configs are darkest"
        fig.colorbar(mappable, ax=grid, label=label, extend="max" if clipped else "neither")
    fig.suptitle("\n".join(_wrap(line, fig) for line in title.split("\n")))
    _save(fig, path)
    return out


def parallel(
    frame: pd.DataFrame, axes: Sequence[Axis], path: Path, metric: str = "val_elbo"
) -> list[str]:
    """Parallel coordinates: a vertical axis per entry of ``axes`` and one for ``metric``.

    Each config of ``frame`` (one row per config) is a line through its values, coloured
    by its ``metric``; lower (better) sits lower. Configs that did not complete are thin
    grey dashed lines ending above the metric axis. Numeric axes with ``log`` are placed
    on a log scale, string axes as evenly spaced categories.

    Returns:
        The vertical axes' labels, left to right (the metric's last).
    """
    labels = [a.label or a.name for a in axes] + [f"{_metric_label(metric)} (nats)"]
    scaled = [_place(frame[a.name], a) for a in axes]
    values = frame[metric].to_numpy(dtype=float)
    done = (frame["status"] == COMPLETED).to_numpy() & np.isfinite(values)
    # The scale shows the better configs apart (as the heatmap's): far worse ones end at
    # its top, in its darkest colour, under a tick that says they are beyond it.
    norm = _norm(values[done], clip_worse=True)
    cmap = _line_cmap()
    clipped = False
    if norm is None:
        metric_y = np.full(len(frame), NOT_DONE_Y)
        metric_ticks: list[tuple[float, str]] = []
    else:
        fill = norm.vmin if norm.vmin is not None else 0.0  # stands in for the rest
        placed = np.asarray(norm(np.where(done, values, fill)), dtype=np.float64)
        clipped = bool((placed[done] > 1.0).any())
        metric_y = np.where(done, np.minimum(placed, 1.0), NOT_DONE_Y)
        metric_ticks = [
            (float(t), _value_text(float(norm.inverse(t)))) for t in np.linspace(0, 1, TICKS)
        ]
        if clipped:
            metric_ticks[-1] = (1.0, f"\N{GREATER-THAN OR EQUAL TO} {metric_ticks[-1][1]}")
    if not done.all():
        metric_ticks.append((NOT_DONE_Y, f"{NOT_DONE} ({int((~done).sum())})"))
    heights = np.column_stack([*(h for h, _ in scaled), metric_y])  # rows: configs
    xs = np.arange(len(labels), dtype=float)

    fig, ax = plt.subplots(figsize=(max(6.5, 1.8 * len(labels) + 2.0), 5.5), layout="constrained")
    failed = [np.column_stack([xs, h]) for h in heights[~done]]
    ax.add_collection(
        LineCollection(failed, colors=LINE_GREY, linewidths=0.8, linestyles="--", zorder=1)
    )
    if norm is not None:
        order = np.argsort(-values[done], kind="stable")  # worst first: the best on top
        lines = LineCollection(
            [np.column_stack([xs, h]) for h in heights[done][order]],
            array=values[done][order],
            cmap=cmap,
            norm=norm,
            linewidths=1.6,
            alpha=0.9,
            zorder=2,
        )
        ax.add_collection(lines)
        label = f"{_metric_label(metric)} (nats)"
        if clipped:
            top = _value_text(float(norm.vmax if norm.vmax is not None else 0.0))
            label += f"\nclipped at {top}: worse configs are darkest, at the top"
        fig.colorbar(lines, ax=ax, label=label, extend="max" if clipped else "neither")
    for x, ticks in zip(xs, [*(t for _, t in scaled), metric_ticks], strict=True):
        ax.axvline(x, color="black", linewidth=1.0, zorder=3)
        for y, text in ticks:
            ax.plot([x - 0.03, x], [y, y], color="black", linewidth=1.0, zorder=3)
            ax.text(
                x - 0.05, y, text, ha="right", va="center", fontsize=8, zorder=4,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5},
            )  # fmt: skip
    ax.set_xticks(xs, [textwrap.fill(label, 16) for label in labels])
    ax.set_yticks([])
    ax.set_xlim(-0.6, xs[-1] + 0.15)
    ax.set_ylim(-0.06, NOT_DONE_Y + 0.08)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    title = f"Searched settings of {len(frame)} configs and their {_metric_label(metric)}"
    ax.set_title(_wrap(title, fig) + "\n(one line per config; lower is better)")
    _save(fig, path)
    return labels


def importance(
    importances: Mapping[str, float],
    axes: Sequence[Axis],
    path: Path,
    metric: str = "val_elbo",
) -> list[str]:
    """A bar per axis: its share of the variance of ``metric`` (0 to 1), the metric that
    ranks the study.

    Returns:
        The bars' labels (``Axis.label``), most important first, as drawn top to bottom.
    """
    shares = {n: v if math.isfinite(v) else 0.0 for n, v in importances.items()}  # NaN: none
    order = sorted(shares, key=lambda n: -shares[n])  # stable: ties keep their order
    labels = [_axis_label(n, axes) for n in order]
    height = 1.4 + 0.45 * max(len(order), 1)
    fig, ax = plt.subplots(figsize=(7, height), layout="constrained")
    ax.barh(range(len(order)), [shares[n] for n in order], color="tab:blue")
    for i, n in enumerate(order):
        v = importances[n]
        ax.text(shares[n] + 0.01, i, f"{v:.2f}" if math.isfinite(v) else "n/a", va="center")
    ax.set_yticks(range(len(order)), labels)
    if not order:
        ax.text(
            0.5, 0.5, "no importances to show", ha="center", va="center", transform=ax.transAxes
        )
    ax.invert_yaxis()  # most important on top
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("share of the variance explained (fraction, 0 to 1)")
    ax.set_title(f"What mattered for the {_metric_label(metric)}\n(fANOVA over the configs)")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
    return labels


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
    it is wide enough; halving's rung decisions as dashed vertical lines.

    Returns:
        The number of bars drawn.
    """
    start = t.runs[0].started
    fig, ax = plt.subplots(figsize=(11, 1.4 + 0.5 * t.lanes), layout="constrained")
    for run in t.runs:
        x, width = run.started - start, max(run.ended - run.started, t.span * 1e-4)
        colour = RUN_COLOURS.get(run.status, "black")
        ax.barh(run.lane, width, left=x, height=0.7, color=colour, edgecolor="white",
                linewidth=0.5)  # fmt: skip
        if width > t.span / 12:  # room for its label at 8 points
            ax.text(x + width / 2, run.lane, f"{run.key[:6]} {epochs_done.get(run.key, 0)}e",
                    ha="center", va="center", fontsize=8, color="black", clip_on=True)  # fmt: skip
    for rung, when in t.rungs:
        ax.axvline(when - start, color="black", linestyle="--", linewidth=0.9)
        ax.text(when - start, -0.75, f" rung {rung}", fontsize=8, va="center")
    seen = sorted({run.status for run in t.runs})
    handles = [plt.Rectangle((0, 0), 1, 1, color=RUN_COLOURS.get(s, "black")) for s in seen]
    fig.legend(handles, seen, loc="outside lower center", fontsize=8, ncols=len(seen))
    ax.set_yticks(range(t.lanes), [f"slot {i + 1}" for i in range(t.lanes)])
    ax.set_ylim(t.lanes - 0.4, -0.9)  # slot 1 on top, room above it for the rungs' names
    ax.set_xlim(0, t.span * 1.01 if t.span else 1)
    ax.set_xlabel("seconds since the first run started")
    title = (
        f"Where the time went: {len(t.runs)} runs on {t.lanes} slots, busy {t.occupancy:.0%}, "
        f"idle tail {t.tail:,.0f} s (label: trial key, epochs done)"
    )
    ax.set_title(_wrap(title, fig))
    _save(fig, path)
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


def _value_text(value: float) -> str:
    """A metric value: one decimal, three significant digits when it is huge or tiny."""
    return f"{value:.1f}" if value == 0 or 0.1 <= abs(value) < 1e5 else f"{value:.3g}"


def _metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _axis_label(name: str, axes: Sequence[Axis]) -> str:
    """The axis's label from ``axes``, else from AXIS, else its name."""
    axis = next((a for a in axes if a.name == name), AXIS.get(name))
    if axis is None:
        return name
    return axis.label or axis.name


def _distinct(column: pd.Series) -> list[object]:
    """The distinct values of a column, sorted."""
    return sorted(column.dropna().unique().tolist())


def _columns(panels: int) -> int:
    """Panels per row: about square, at most 4 (1, 2, 3, 2 x 2, 3 x 2, ..., 4 x 3)."""
    return panels if panels <= 3 else 2 if panels == 4 else 3 if panels <= 9 else 4


def _line_cmap() -> Colormap:
    """CMAP without its palest end, which vanishes as a thin line on white."""
    full = plt.get_cmap(CMAP)
    return ListedColormap(full(np.linspace(0.12, 1.0, 256)), name=f"{CMAP}_lines")


def _norm(values: np.ndarray, clip_worse: bool = False) -> Normalize | None:
    """A colour scale over the finite ``values``: logarithmic when they span decades.

    ``clip_worse``: the scale ends at :func:`_cap` instead of the greatest value, so that it
    shows the differences among the better values; greater ones map above 1 (the colour
    map's "over" colour). Logarithmic only when what is left still spans decades.
    None when there are none.
    """
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    low, high = float(finite.min()), float(finite.max())
    if clip_worse:
        high = _cap(finite, log=low > 0 and high / low > LOG_SPAN)
    if low > 0 and high / low > LOG_SPAN:
        return LogNorm(low, high)
    if low == high:  # one value: centre it
        pad = max(0.01 * abs(low), 0.5)
        return Normalize(low - pad, high + pad)
    return Normalize(low, high)


def _cap(finite: np.ndarray, log: bool) -> float:
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


def _cells(
    sub: pd.DataFrame, x: str, y: str, xs: list[object], ys: list[object], metric: str
) -> tuple[np.ndarray, list[list[str]]]:
    """A panel's values (NaN where no config completed) and texts, rows in ``ys`` order."""
    values = np.full((len(ys), len(xs)), np.nan)
    texts: list[list[str]] = []
    for r, yv in enumerate(ys):
        row = []
        for c, xv in enumerate(xs):
            cell = sub[(sub[x] == xv) & (sub[y] == yv)]
            scores = cell.loc[cell["status"] == COMPLETED, metric].to_numpy(dtype=float)
            scores = scores[np.isfinite(scores)]
            if len(scores):
                values[r, c] = scores.min()
                pooled = f"\nof {len(cell)}" if len(cell) > 1 else ""
                row.append(_value_text(values[r, c]) + pooled)
            elif len(cell) and (cell["status"] == DIVERGED).all():
                row.append("div.")
            else:
                row.append("—")
        texts.append(row)
    return values, texts


def _pooled(sub: pd.DataFrame, x: str, y: str) -> pd.Series:
    """How many configs each (x, y) cell of a panel stands for."""
    return sub.groupby([x, y], dropna=False).size()


def _text_colour(cmap: Colormap, norm: Normalize | None, value: float) -> str:
    """Black on light cells (and grey ones), white on dark ones."""
    if norm is None or not math.isfinite(value):
        return "black"
    red, green, blue, _ = cmap(float(norm(value)))
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def _place(column: pd.Series, axis: Axis) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Heights in [0, 1] of a column's values on its vertical axis, and that axis's ticks.

    Strings: evenly spaced in ``axis.choices`` order. Numbers: linear, or logarithmic when
    ``axis.log`` and all are positive; every value ticked when few, else TICKS of them.
    """
    if axis.kind is str or not pd.api.types.is_numeric_dtype(column):
        present = set(column.dropna())
        cats = [c for c in axis.choices if c in present]
        cats += sorted(present - set(cats), key=str)  # not an allowed value, yet there
        step = 1 / (len(cats) - 1) if len(cats) > 1 else 0.0
        at = {c: (i * step if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
        heights = column.map(at).to_numpy(dtype=float)
        return heights, [(at[c], format_value(c)) for c in cats]
    raw = column.to_numpy(dtype=float)
    log = axis.log and bool((raw[np.isfinite(raw)] > 0).all())
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.log10(raw) if log else raw
    finite = t[np.isfinite(t)]
    if not len(finite):
        return np.full(len(raw), np.nan), []
    low, high = float(finite.min()), float(finite.max())
    span = high - low

    def height(v: np.ndarray | float) -> np.ndarray:
        return (np.asarray(v, dtype=np.float64) - low) / span if span else np.full(np.shape(v), 0.5)

    distinct = np.unique(raw[np.isfinite(raw)])
    if len(distinct) <= DISTINCT_TICKS_MAX:
        shown = [float(v) for v in distinct]
    else:
        grid = np.linspace(low, high, TICKS)
        shown = [float(10**g if log else g) for g in grid]
        if axis.kind is int:
            shown = [float(round(v)) for v in shown]
    ticks = [
        (float(height(np.log10(v) if log else v)), format_value(int(v) if axis.kind is int else v))
        for v in shown
    ]
    return height(t), ticks


def _order_key(value: object) -> tuple[int, object]:
    """Numbers before strings, each in their order (a legend's values)."""
    return (0, value) if isinstance(value, int | float | np.number) else (1, str(value))


def _wrap(text: str, fig: Figure, points: float = 11.0) -> str:
    """``text`` broken into lines that fit the figure's width at ``points`` (a title)."""
    chars = int(fig.get_figwidth() * 72 / (0.6 * points))
    return textwrap.fill(text, max(20, chars))


def _save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG at ``DPI`` and, beside it, an SVG (each atomically); free it."""
    save_with(path, fig.savefig, format="png", dpi=DPI)
    save_with(path.with_suffix(".svg"), fig.savefig, format="svg")
    plt.close(fig)
