"""curves.png: the validation -ELBO per epoch of every config, every line identifiable.

Its own module beside figures.py (whose style, saving and text helpers it uses): it is
the one figure that must tell apart up to thousands of lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from vaegrid.report.style import MINUS, order_key, save, value_text, wrap
from vaegrid.status import COMPLETED
from vaegrid.study.axes import AXIS, applies, describe

CURVES_LABELLED = 12  # up to this many configs each get a colour and a legend entry
CURVES_DRAWN_MAX = 200  # past this many configs, the best this many (and the winners)
COLOURED_VALUES_MAX = 10  # a setting of more values among the lines colours none of them
LINE_STYLES = ("-", "--", ":", "-.")


@dataclass
class _Styles:
    """Colour and line style per config: its own colour up to CURVES_LABELLED configs, past
    that the value of ``by_colour``'s setting and line style by ``by_style``'s."""

    many: bool
    by_colour: str | None
    by_style: str | None
    palette: Any
    colours: dict[object, Any] = field(default_factory=dict)
    styles: dict[object, Any] = field(default_factory=dict)

    def of(self, i: int, row: dict[str, Any]) -> tuple[Any, Any]:
        if not self.many:
            return self.palette(i % self.palette.N), "-"
        cv = row[self.by_colour] if self.by_colour else None
        sv = row[self.by_style] if self.by_style else None
        colour = self.colours.setdefault(cv, self.palette(len(self.colours) % self.palette.N))
        style = self.styles.setdefault(sv, LINE_STYLES[len(self.styles) % len(LINE_STYLES)])
        return colour, style

    def legend(self) -> tuple[list[Line2D], list[str]]:
        """What the colours and styles mean, past CURVES_LABELLED configs."""
        handles: list[Line2D] = []
        texts: list[str] = []
        if not self.many or self.by_colour is None:  # one colour: nothing to say of it
            return handles, texts
        for value, colour in sorted(self.colours.items(), key=lambda kv: order_key(kv[0])):
            handles.append(Line2D([], [], color=colour, linewidth=2))
            by = self.by_colour
            texts.append(describe({by: value}, [by]) if by else "")
        if self.by_style and len(self.styles) > 1:
            for value, style in sorted(self.styles.items(), key=lambda kv: order_key(kv[0])):
                handles.append(Line2D([], [], color="0.3", linestyle=style))
                texts.append(describe({self.by_style: value}, [self.by_style]))
        return handles, texts


def curves(
    epochs: pd.DataFrame,
    ranking: pd.DataFrame,
    test: pd.DataFrame,
    path: Path,
    names: Sequence[str],
    order: Sequence[str] = (),
) -> dict[str, str]:
    """Validation -ELBO per epoch: one line per config, the mean over its repeats with a band
    from the lowest to the highest repeat, every line identifiable.

    Up to ``CURVES_LABELLED`` configs each gets its own colour and a legend entry naming the
    settings that differ between configs. Past that, the colour is the value of the first
    of ``order`` (the axes by importance; else the searched axes) that varies, the line
    style the second's, and the legend names those values. The winners (``test``'s keys)
    are drawn thick and named in the legend with the criteria they won. The y-axis shows
    the better configs: where far worse ones are cut off, the plot says so.

    Args:
        epochs: ``vg_epoch`` rows.
        ranking: One row per trial (``tables.rank``): ``key``, ``config``, the axes.
        test: The test table: its ``key`` and ``criterion`` columns.
        path: Where the PNG goes (the SVG beside it).
        names: The searched axes.
        order: The axes in order of importance, for colour and style past the labelled count.

    Returns:
        The legend's entries by config key ("" for a config drawn without an entry).
    """
    val = epochs[epochs["split"] == "val"].merge(ranking[["key", "config"]], on="key")
    configs = ranking.drop_duplicates("config").set_index("config")
    winners: dict[str, list[str]] = {}
    for key, criterion in zip(test["key"], test["criterion"], strict=True):
        winners.setdefault(str(key), []).append(str(criterion))
    total, known = val["config"].nunique(), configs.index.nunique()
    val = _best(val, CURVES_DRAWN_MAX, set(winners))
    configs = configs.loc[sorted(set(val["config"]))]
    varying = [n for n in names if configs[n].nunique() > 1]
    fig, ax = plt.subplots(figsize=(7.0, 4.6), layout="constrained")
    many = val["config"].nunique() > CURVES_LABELLED
    keyed = [n for n in [*order, *varying]
             if n in varying and configs[n].nunique() <= COLOURED_VALUES_MAX]  # fmt: skip
    palette = plt.get_cmap("tab10" if val["config"].nunique() <= 10 or many else "tab20")
    look = _Styles(many, keyed[0] if keyed else None, keyed[1] if len(keyed) > 1 else None,
                   palette)  # fmt: skip
    labels: dict[str, str] = {}
    for i, (config, trials) in enumerate(val.groupby("config", sort=True)):
        row: dict[str, Any] = {str(k): v for k, v in configs.loc[config].items()}
        shown = [n for n in varying if applies(AXIS[n], row)]
        words = describe(row, shown) if shown else str(config)
        won = winners.get(str(config))
        colour, style = look.of(i, row)
        if many:
            label = f"{config}: {words} ({', '.join(won)})" if won else ""
        else:
            label = f"{words}" + (f" \N{EM DASH} best by {', '.join(won)}" if won else "")
        labels[str(config)] = label
        _draw(ax, trials, colour, style, label, bool(won))
    handles, texts = ax.get_legend_handles_labels()
    extra_handles, extra_texts = look.legend()
    handles += extra_handles
    texts += extra_texts
    _clip(ax, val, ranking)
    repeats = val.groupby("config")["key"].nunique().max()
    band = f", band: lowest to highest of {repeats} repeats" if repeats > 1 else ""
    title = f"Validation {MINUS}ELBO of {val['config'].nunique()} configs (mean{band})"
    if total > CURVES_DRAWN_MAX:
        title = (f"Validation {MINUS}ELBO of the best {CURVES_DRAWN_MAX} of {total:,} configs "
                 f"by their last epoch, and the winners (mean{band})")  # fmt: skip
    missing = known - total
    if missing:
        title += f"; {missing} without a finished epoch (diverged or not started)"
    ax.set_title(wrap(title, fig))
    ax.grid(alpha=0.3)
    if handles:
        ncols = 1 if max(map(len, texts)) > 45 else 2
        fig.legend(handles, texts, loc="outside lower center", fontsize=8, ncols=ncols)
    save(fig, path)
    return labels


def _best(val: pd.DataFrame, most: int, keep: set[str]) -> pd.DataFrame:
    """The rows of at most ``most`` configs: those of the lowest validation -ELBO at their
    last epoch (mean over repeats), and the configs in ``keep`` (the winners) whatever."""
    if val["config"].nunique() <= most:
        return val
    last = val[val["epoch"] == val.groupby("key")["epoch"].transform("max")]
    order = last.groupby("config")["elbo"].mean().sort_values(kind="stable")
    chosen = set(order.index[:most]) | keep
    return val[val["config"].isin(chosen)]


def _draw(ax: Axes, trials: pd.DataFrame, colour: Any, style: Any, label: str, won: bool) -> None:
    """A config's mean per epoch over its repeats, and the band of its repeats."""
    per_epoch = trials.groupby("epoch")["elbo"]
    mean, low, high = per_epoch.mean(), per_epoch.min(), per_epoch.max()
    ax.plot(mean.index, mean.to_numpy(), color=colour, linestyle=style,
            linewidth=2.6 if won else 1.2, marker="o" if won else None, markersize=3,
            label=label or None, zorder=3 if won else 2)  # fmt: skip
    if trials["key"].nunique() > 1 and (high > low).any():
        ax.fill_between(mean.index, low.to_numpy(), high.to_numpy(), color=colour,
                        alpha=0.15, linewidth=0, zorder=1)  # fmt: skip


def _clip(ax: Axes, val: pd.DataFrame, ranking: pd.DataFrame) -> None:
    """Axis labels, and the y-range of the better configs: slow and bad starts would
    flatten the rest; where the axis cuts configs off, a note on the plot says so."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {MINUS}ELBO (nats per image)")
    finals = ranking.loc[ranking["status"] == COMPLETED, "val_elbo"].dropna()
    if not len(finals):
        return
    low_y = val["elbo"].min()
    top = max(finals.quantile(0.9), finals.min() * 1.1)
    high_y = top + 0.05 * abs(top)
    ax.set_ylim(low_y - 0.02 * abs(low_y), high_y)
    cut = val.groupby("config")["elbo"].max() > high_y
    if cut.any():
        note = f"axis cut at {value_text(high_y)}: {int(cut.sum())} configs have epochs above"
        ax.text(0.99, 0.98, note, transform=ax.transAxes, ha="right", va="top", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "0.6", "alpha": 0.9})  # fmt: skip
