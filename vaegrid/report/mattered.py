"""What mattered, in pictures: the final metric over two searched settings (heatmap), every
config across every searched setting (parallel coordinates), and each setting's fANOVA
importance (bars)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.colors import Colormap, ListedColormap, Normalize

from vaegrid.report.style import (
    CMAP,
    axis_label,
    colour_scale,
    distinct,
    metric_label,
    panel_columns,
    save,
    value_text,
    wrap,
)
from vaegrid.status import COMPLETED, DIVERGED
from vaegrid.study.axes import Axis, describe, format_value

GREY = "0.82"  # heatmap cells without a completed config


LINE_GREY = "0.55"  # parallel coordinates: configs that did not complete


# heatmap: more panels than this (combinations of the other axes) would not be readable;
# draw one panel of the best over the other axes instead.
PANELS_MAX = 12


# parallel: a numeric vertical axis labels each value up to this many, else TICKS of them.
DISTINCT_TICKS_MAX = 8


TICKS = 5


# parallel: where configs that did not complete end, above the metric axis's worst value.
NOT_DONE_Y = 1.12


NOT_DONE = "diverged / not completed"


FIGURE_INCHES_MAX = 24.0  # heatmaps of long axes stop growing here
CELL_TEXTS_MAX = 400  # a heatmap panel of more cells shows colours only, no numbers
TICKS_MAX = 40  # an axis of more values is labelled at every k-th
# Parallel coordinates draw at most this many configs: the best half of them, and the
# others evenly by rank (100,000 lines took 29 s and 20 MB of SVG, and showed a wall).
LINES_MAX = 2_000


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
    the scale ends where :func:`style.cap` puts it, worse cells take its darkest colour and the
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
    xs, ys = distinct(frame[x]), distinct(frame[y])
    if not xs or not ys:
        raise ValueError(f"heatmap: no configs with values of {x} and {y}")
    panels, title = _panels(frame, x, y, others, metric)
    cells = [_cells(sub, x, y, xs, ys, metric) for _, sub in panels]
    shown = np.concatenate([values.ravel() for values, _ in cells])
    norm = colour_scale(shown, clip_worse=True)
    cmap = plt.get_cmap(CMAP).with_extremes(bad=GREY)

    ncols = panel_columns(len(panels))
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
        ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm or Normalize(0, 1),
                  origin="lower", aspect="auto")  # fmt: skip
        if len(xs) * len(ys) <= CELL_TEXTS_MAX:  # past that a cell has no room for its number
            for r, row in enumerate(texts):
                for c, text in enumerate(row):
                    colour = _text_colour(cmap, norm, float(values[r, c]))
                    ax.text(c, r, text, ha="center", va="center", fontsize=fontsize,
                            color=colour)  # fmt: skip
        ax.set_xticks(*_ticks(xs))
        ax.set_yticks(*_ticks(ys))
        if i + ncols >= len(panels):  # no panel below it
            ax.set_xlabel(axis_label(x, axes))
        if i % ncols == 0:
            ax.set_ylabel(axis_label(y, axes))
        if name:
            ax.set_title(name, fontsize=10)
        out[name] = texts
    for ax in grid.flat[len(panels) :]:
        ax.set_axis_off()
    if norm is not None:
        mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        label = f"{metric_label(metric)} (nats)"
        top = float(norm.vmax if norm.vmax is not None else np.nanmax(shown))
        clipped = bool(np.nanmax(shown) > top)
        if clipped:
            label += f"\nclipped at {value_text(top)}: worse configs are darkest"
        fig.colorbar(mappable, ax=grid, label=label, extend="max" if clipped else "neither")
    fig.suptitle("\n".join(wrap(line, fig) for line in title.split("\n")))
    save(fig, path)
    return out


def _ticks(values: Sequence[Any]) -> tuple[list[int], list[str]]:
    """Where an axis of the heatmap is labelled: every value, or every k-th past TICKS_MAX."""
    step = math.ceil(len(values) / TICKS_MAX)
    at = list(range(0, len(values), step))
    return at, [format_value(values[i]) for i in at]


def _panels(
    frame: pd.DataFrame, x: str, y: str, others: list[str], metric: str
) -> tuple[list[tuple[str, pd.DataFrame]], str]:
    """The heatmap's panels (title, configs): one per combination of the ``others``, or
    one of the best over them past PANELS_MAX; and the figure's title, saying what a cell
    pools."""
    panels: list[tuple[str, pd.DataFrame]] = [("", frame)]
    title = metric_label(metric)
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
    pooled = max((int(_pooled(sub, x, y).max()) for _, sub in panels), default=1)
    if pooled > 1 and not title.count("\n"):  # (a collapsed panel says it pools already)
        title += (
            f"\na cell pools up to {pooled} configs (settings not on its axes, or that apply "
            "to some configs only): it shows their best, 'of N' their number"
        )
    return panels, title


def parallel(
    frame: pd.DataFrame, axes: Sequence[Axis], path: Path, metric: str = "val_elbo"
) -> list[str]:
    """Parallel coordinates: a vertical axis per entry of ``axes`` and one for ``metric``.

    Each config of ``frame`` (one a row; past LINES_MAX, :func:`_lines`'s) is a line through
    its values, coloured by its ``metric``, lower (better) lower; one that did not complete
    a grey dashed line ending above the metric axis. Axes with ``log`` on a log scale.

    Returns:
        The vertical axes' labels, left to right (the metric's last).
    """
    labels = [a.label or a.name for a in axes] + [f"{metric_label(metric)} (nats)"]
    frame, title, note = _lines(frame, metric)
    scaled = [_place(frame[a.name], a) for a in axes]
    values = frame[metric].to_numpy(dtype=float)
    done = (frame["status"] == COMPLETED).to_numpy() & np.isfinite(values)
    # The scale shows the better configs apart (as the heatmap's): far worse ones end at
    # its top, in its darkest colour, under a tick that says they are beyond it.
    norm = colour_scale(values[done], clip_worse=True)
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
            (float(t), value_text(float(norm.inverse(t)))) for t in np.linspace(0, 1, TICKS)
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
        label = f"{metric_label(metric)} (nats)"
        if clipped:
            top = value_text(float(norm.vmax if norm.vmax is not None else 0.0))
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
    share = 0.8 if norm is not None else 1.0  # the colorbar's fifth of the width
    ax.set_title(wrap(title, fig, share=share) + "\n" + wrap(note, fig, share=share))
    save(fig, path)
    return labels


def _lines(frame: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, str, str]:
    """The configs parallel coordinates draw (all up to LINES_MAX, past it the best half
    of that by ``metric`` and as many others evenly by rank), its title and its note."""
    title = f"Searched settings of {{}} configs and their {metric_label(metric)}"
    if len(frame) <= LINES_MAX:
        return frame, title.format(f"{len(frame):,}"), "(one line per config; lower is better)"
    done = (frame["status"] == COMPLETED) & np.isfinite(frame[metric].to_numpy(dtype=float))
    ranked = frame.assign(_done=~done).sort_values(["_done", metric], kind="stable")
    best = LINES_MAX // 2
    every = np.linspace(best, len(frame) - 1, LINES_MAX - best).round().astype(int)
    picked = ranked.iloc[np.concatenate([np.arange(best), every])].drop(columns="_done")
    note = f"the {best:,} best, {LINES_MAX - best:,} others evenly by rank; lower is better"
    return (
        picked,
        title.format(f"{LINES_MAX:,} of {len(frame):,}"),
        f"(one line per config: {note})",
    )


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
    labels = [axis_label(n, axes) for n in order]
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
    ax.set_title(f"What mattered for the {metric_label(metric)}\n(fANOVA over the configs)")
    ax.grid(axis="x", alpha=0.3)
    save(fig, path)
    return labels


def _line_cmap() -> Colormap:
    """CMAP without its palest end, which vanishes as a thin line on white."""
    full = plt.get_cmap(CMAP)
    return ListedColormap(full(np.linspace(0.12, 1.0, 256)), name=f"{CMAP}_lines")


def _cells(
    sub: pd.DataFrame, x: str, y: str, xs: list[object], ys: list[object], metric: str
) -> tuple[np.ndarray, list[list[str]]]:
    """A panel's values (NaN where no config completed) and texts, rows in ``ys`` order
    (counted with arrays: a filter per cell took 64 s for a 1,000 x 100 panel)."""
    shape = (len(ys), len(xs))
    col = sub[x].map({v: i for i, v in enumerate(xs)}).to_numpy(dtype=float)
    row = sub[y].map({v: i for i, v in enumerate(ys)}).to_numpy(dtype=float)
    placed = ~(np.isnan(col) | np.isnan(row))  # a value in no cell (NaN) is in none
    cell = row[placed].astype(int) * len(xs) + col[placed].astype(int)
    status = sub["status"].to_numpy()[placed]
    score = sub[metric].to_numpy(dtype=float)[placed]
    configs = np.bincount(cell, minlength=shape[0] * shape[1])
    diverged = np.bincount(cell, weights=status == DIVERGED, minlength=len(configs))
    best = np.full(len(configs), np.inf)
    scored = (status == COMPLETED) & np.isfinite(score)
    np.minimum.at(best, cell[scored], score[scored])
    values = np.where(np.isfinite(best), best, np.nan).reshape(shape)
    texts = []
    for r in range(shape[0]):
        line = []
        for c in range(shape[1]):
            i = r * shape[1] + c
            if np.isfinite(best[i]):
                pooled = f"\nof {configs[i]}" if configs[i] > 1 else ""
                line.append(value_text(values[r, c]) + pooled)
            else:
                line.append("div." if configs[i] and diverged[i] == configs[i] else "—")
        texts.append(line)
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
