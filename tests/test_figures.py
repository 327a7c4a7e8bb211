"""The report's matplotlib figures on tiny hand-made frames: what they draw, not just files.

Each test keeps the Figure it saved (``drawn``) to read back its texts, ticks and lines.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from vaegrid.report import figures, mattered, style
from vaegrid.report.curves import curves
from vaegrid.study.axes import AXIS, Axis

NAN = float("nan")
HEAT_AXES = [AXIS["hidden"], AXIS["lr"], AXIS["clip"]]
LRS = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every Figure the figures module saves, in order, once (it still writes its PNG and
    its SVG)."""
    saved: list[Figure] = []
    real = figures.save_with

    def keep(path: Path, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        figure = write.__self__  # fig.savefig, bound to its figure
        if not saved or saved[-1] is not figure:
            saved.append(figure)
        real(path, write, *args, **kwargs)

    monkeypatch.setattr(figures, "save_with", keep)  # digit grids
    monkeypatch.setattr(style, "save_with", keep)  # every chart
    return saved


def png_shape(path: Path) -> tuple[int, int]:
    """(height, width) in pixels of a PNG that matplotlib reads back."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image.shape[0], image.shape[1]


def config(status: str, val_elbo: float = NAN, **axes: object) -> dict[str, object]:
    return {**axes, "status": status, "val_elbo": val_elbo}


def heat_frame() -> pd.DataFrame:
    """hidden x lr in two clip panels; latent (not an axis here) doubles some cells."""
    return pd.DataFrame(
        [
            config("completed", 100.04, hidden=400, lr=1e-3, clip=1.0, latent=4),
            config("completed", 98.96, hidden=400, lr=1e-3, clip=1.0, latent=8),  # the best
            config("diverged", hidden=400, lr=1e-2, clip=1.0, latent=4),
            config("diverged", hidden=400, lr=1e-2, clip=1.0, latent=8),
            config("completed", 120.0, hidden=800, lr=1e-3, clip=1.0, latent=4),
            config("diverged", hidden=800, lr=1e-2, clip=1.0, latent=4),
            config("failed", hidden=800, lr=1e-2, clip=1.0, latent=8),
            config("completed", 150.26, hidden=400, lr=1e-3, clip=0.5, latent=4),
            config("stopped", 140.0, hidden=400, lr=1e-2, clip=0.5, latent=4),  # not final
            config("completed", 130.0, hidden=800, lr=1e-3, clip=0.5, latent=4),
            config("completed", 111.11, hidden=800, lr=1e-2, clip=0.5, latent=4),
        ]
    )


def test_heatmap_cells_panels_and_labels(tmp_path: Path, drawn: list[Figure]) -> None:
    path = tmp_path / "heatmap.png"
    texts = mattered.heatmap(heat_frame(), "lr", "hidden", HEAT_AXES, path)
    # Rows: hidden 400, 800; columns: lr 0.001, 0.01; panels by clip, in increasing order.
    assert texts == {
        "clip 0.5": [["150.3", "—"], ["130.0", "111.1"]],
        "clip 1": [["99.0\nof 2", "div."], ["120.0", "—"]],  # latent 4 and 8 pooled
    }
    height, width = png_shape(path)
    assert 500 <= height <= 2400 and 1000 <= width <= 3200  # at 200 dpi
    assert path.with_suffix(".svg").read_text().lstrip().startswith("<?xml")  # the vector file
    (fig,) = drawn
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["clip 0.5", "clip 1"]
    for ax, cells in zip(panels, texts.values(), strict=True):
        assert [t.get_text() for t in ax.texts] == [c for row in cells for c in row]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0.001", "0.01"]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["400", "800"]
        grey = np.ma.getmaskarray(ax.images[0].get_array())
        assert grey.tolist() == [[c in ("div.", "—") for c in row] for row in cells]
    assert not panels[0].yaxis_inverted()  # row 0 (hidden 400) at the bottom
    colours = {t.get_text(): t.get_color() for ax in panels for t in ax.texts}
    assert colours["99.0\nof 2"] == "black" and colours["150.3"] == "white"  # yellow, purple
    assert colours["div."] == "black"  # on grey
    assert panels[0].get_xlabel() == "learning rate"
    assert panels[0].get_ylabel() == "hidden width (units)"
    assert fig.get_suptitle().startswith(
        "Final validation \N{MINUS SIGN}ELBO (nats, lower is better)\na cell pools up to 2 configs"
    )  # latent is not on the heatmap's axes: its configs share cells, and it says so
    (colorbar,) = [ax for ax in fig.axes if not ax.images]
    # cells 99.0, 111.1, 120.0 | 130.0, 150.3: spaced as evenly as the better half (99.0 to
    # the median 120.0, 2 ranks), the worst would be 99.0 + 4 x 21.0 / 2 = 141.0
    assert colorbar.get_ylabel() == (
        "final validation \N{MINUS SIGN}ELBO (nats)\nclipped at 141.0: worse configs are darkest"
    )
    assert not isinstance(panels[0].images[0].norm, LogNorm)  # 99 to 141: a linear scale


def test_heatmap_log_scale_when_values_span_decades(tmp_path: Path, drawn: list[Figure]) -> None:
    frame = pd.DataFrame(
        [
            config("completed", 90.0, hidden=400, lr=1e-3),
            config("completed", 2000.0, hidden=400, lr=1.0),
        ]
    )
    texts = mattered.heatmap(frame, "lr", "hidden", HEAT_AXES[:2], tmp_path / "h.png")
    assert texts == {"": [["90.0", "2000.0"]]}  # no other axis: one untitled panel
    (fig,) = drawn
    assert isinstance(fig.axes[0].images[0].norm, LogNorm)
    colorbar = fig.axes[1]  # two values: nothing to clip
    assert colorbar.get_ylabel() == "final validation \N{MINUS SIGN}ELBO (nats)"
    assert colorbar._colorbar.extend == "neither"


def seed_shaped() -> tuple[list[float], pd.DataFrame]:
    """The seed study's shape: good configs at 106.5-111.7 nats, slow ones at 210-310."""
    values = [106.5, 108.0, 111.7, 210.0, 310.0]
    frame = pd.DataFrame(
        [config("completed", v, hidden=400, lr=lr) for v, lr in zip(values, LRS, strict=True)]
    )
    return values, frame


def test_heatmap_colours_tell_the_good_configs_apart_beside_far_worse_ones(
    tmp_path: Path, drawn: list[Figure]
) -> None:
    values, frame = seed_shaped()
    texts = mattered.heatmap(frame, "lr", "hidden", HEAT_AXES[:2], tmp_path / "h.png")
    assert texts == {"": [["106.5", "108.0", "111.7", "210.0", "310.0"]]}  # the true values
    (fig,) = drawn
    panel, colorbar = fig.axes
    assert [t.get_text() for t in panel.texts] == texts[""][0]
    image = panel.images[0]
    rgb = [image.cmap(float(image.norm(v)))[:3] for v in values]
    darkest = image.cmap(1.0)[:3]
    assert rgb[3] == rgb[4] == darkest  # both far worse configs: the darkest colour
    for i, j in itertools.combinations(range(4), 2):  # the good ones and the first bad one
        assert np.abs(np.subtract(rgb[i], rgb[j])).max() > 0.1, (values[i], values[j])
    # better half 106.5-111.7 over 2 ranks: the scale ends at 106.5 + 4 x 5.2 / 2 = 116.9
    assert colorbar.get_ylabel().endswith("\nclipped at 116.9: worse configs are darkest")
    assert colorbar._colorbar.extend == "max"
    assert [t.get_color() for t in panel.texts][3:] == ["white", "white"]  # on the darkest


@pytest.mark.parametrize("clips", [12, 13])
def test_heatmap_more_than_12_panels_collapses_to_the_best(
    tmp_path: Path, drawn: list[Figure], clips: int
) -> None:
    rows = []
    for i in range(clips):  # clip i: lr 0.001 scores 200 - i; lr 1 always diverges
        rows.append(config("completed", 200.0 - i, hidden=400, lr=1e-3, clip=10.0**-i))
        rows.append(config("diverged", hidden=400, lr=1.0, clip=10.0**-i))
    texts = mattered.heatmap(pd.DataFrame(rows), "lr", "hidden", HEAT_AXES, tmp_path / "h.png")
    (fig,) = drawn
    if clips == 12:  # still one panel per clip
        assert len(texts) == 12 and texts["clip 1"] == [["200.0", "div."]]
        assert texts["clip 1e-11"] == [["189.0", "div."]]
        assert len([ax for ax in fig.axes if ax.images]) == 12
    else:
        assert texts == {"best over clip": [[f"{200.0 - 12:.1f}\nof 13", "div."]]}
        assert len([ax for ax in fig.axes if ax.images]) == 1
        assert "the best (lowest) over clip (13 combinations" in fig.get_suptitle().replace(
            "\n", " "
        )


def test_heatmap_string_axis_single_value_and_all_diverged(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        [
            config("completed", 101.23, optimizer="sgd", hidden=400),
            config("diverged", optimizer="adam", hidden=400),
            config("stopped", optimizer="adamw", hidden=400),
        ]
    )
    axes = [AXIS["optimizer"], AXIS["hidden"]]
    assert mattered.heatmap(frame, "optimizer", "hidden", axes, tmp_path / "a.png") == {
        "": [["div.", "—", "101.2"]]  # adam, adamw, sgd
    }
    nothing = frame.assign(status="diverged", val_elbo=NAN)  # no colour scale at all
    assert mattered.heatmap(nothing, "optimizer", "hidden", axes, tmp_path / "b.png") == {
        "": [["div.", "div.", "div."]]
    }
    assert png_shape(tmp_path / "b.png")[0] > 100


def test_heatmap_refuses_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="two different axes"):
        mattered.heatmap(heat_frame(), "lr", "lr", HEAT_AXES, tmp_path / "h.png")
    with pytest.raises(ValueError, match="no column beta"):
        mattered.heatmap(
            heat_frame(), "lr", "hidden", [*HEAT_AXES, AXIS["beta"]], tmp_path / "h.png"
        )
    assert not (tmp_path / "h.png").exists()


def parallel_frame() -> pd.DataFrame:
    return pd.DataFrame(
        [
            config("completed", 100.0, hidden=100, beta=0.0, optimizer="adam"),
            config("completed", 150.0, hidden=1000, beta=0.5, optimizer="sgd"),
            config("completed", 120.0, hidden=10000, beta=2.0, optimizer="adam"),
            config("diverged", hidden=1000, beta=2.0, optimizer="sgd"),
        ]
    )


def test_parallel_axes_positions_and_colours(tmp_path: Path, drawn: list[Figure]) -> None:
    path = tmp_path / "parallel.png"
    axes = [AXIS["hidden"], AXIS["beta"], AXIS["optimizer"]]
    labels = mattered.parallel(parallel_frame(), axes, path)
    assert labels == [
        "hidden width (units)",
        "KL weight beta",
        "optimizer",
        "final validation \N{MINUS SIGN}ELBO (nats)",
    ]
    height, width = png_shape(path)
    assert 800 <= height <= 1600 and 1400 <= width <= 3000  # at 200 dpi
    (fig,) = drawn
    ax, colorbar = fig.axes
    assert [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()] == labels
    # 150 is beyond the scale of the better half (100 + 2 x 20 = 140): at the top, darkest
    assert colorbar.get_ylabel() == labels[-1] + (
        "\nclipped at 140.0: worse configs are darkest, at the top"
    )
    grey, coloured = [c for c in ax.collections if isinstance(c, LineCollection)]
    # hidden on a log scale (100, 1000, 10000 evenly), beta linear (0, 0.5, 2), optimizer in
    # the order of its choices (adam, sgd: adamw absent), the metric from best (0) to worst.
    (diverged,) = grey.get_segments()
    assert np.allclose(diverged[:, 1], [0.5, 1.0, 1.0, mattered.NOT_DONE_Y])
    assert grey.get_linestyle() != coloured.get_linestyle()  # dashed, not solid
    lines = {tuple(np.round(s[:, 1], 6)) for s in coloured.get_segments()}
    assert lines == {(0.0, 0.0, 0.0, 0.0), (0.5, 0.25, 1.0, 1.0), (1.0, 1.0, 0.0, 0.5)}
    worst_first = coloured.get_array()
    assert worst_first is not None and list(worst_first) == [150.0, 120.0, 100.0]
    ticks = [t.get_text() for t in ax.texts]
    assert {"100", "1000", "10000", "0", "0.5", "2", "adam", "sgd"} <= set(ticks)
    assert "adamw" not in ticks and "diverged / not completed (1)" in ticks
    assert "100.0" in ticks and "\N{GREATER-THAN OR EQUAL TO} 140.0" in ticks  # its ends


def test_parallel_tells_the_good_configs_apart_beside_far_worse_ones(
    tmp_path: Path, drawn: list[Figure]
) -> None:
    # The seed study's shape again: far worse configs end at the top of the metric axis,
    # in the darkest colour; the good ones spread over the scale instead of sharing its
    # bottom tenth.
    _, frame = seed_shaped()
    mattered.parallel(frame, [AXIS["lr"]], tmp_path / "p.png")
    (fig,) = drawn
    ax, colorbar = fig.axes
    _, coloured = [c for c in ax.collections if isinstance(c, LineCollection)]
    pairs = zip(coloured.get_array(), coloured.get_segments(), strict=True)  # type: ignore[arg-type]
    ends = {float(v): float(s[-1, 1]) for v, s in pairs}
    assert ends[310.0] == ends[210.0] == 1.0  # at the top
    assert ends[106.5] == 0.0 and 0.35 < ends[111.7] < 0.6  # 5.2 of the 10.4 shown
    assert colorbar.get_ylabel().endswith(
        "\nclipped at 116.9: worse configs are darkest, at the top"
    )
    assert colorbar._colorbar.extend == "max"
    assert "\N{GREATER-THAN OR EQUAL TO} 116.9" in [t.get_text() for t in ax.texts]


def test_parallel_takes_any_axis_strings_in_the_order_of_their_choices(
    tmp_path: Path, drawn: list[Figure]
) -> None:
    act = Axis("activation", str, ("relu",), False, choices=("relu", "tanh", "elu"),
               label="activation function")  # fmt: skip
    frame = pd.DataFrame(
        [
            config("completed", 100.0, activation="elu"),
            config("completed", 110.0, activation="relu"),
            config("completed", 120.0, activation="tanh"),
        ]
    )
    labels = mattered.parallel(frame, [act], tmp_path / "p.png")
    assert labels[0] == "activation function"
    (fig,) = drawn
    (coloured,) = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)][1:]
    heights = sorted(tuple(np.round(s[:, 1], 6)) for s in coloured.get_segments())
    assert heights == [(0.0, 0.5), (0.5, 1.0), (1.0, 0.0)]  # relu, tanh, elu: choices order


def test_parallel_past_its_lines_draws_the_best_and_the_others_evenly_and_says_so(
    tmp_path: Path, drawn: list[Figure]
) -> None:
    n = mattered.LINES_MAX * 5 // 2  # 5,000 configs: 1 in 10 diverged
    frame = pd.DataFrame(
        [config("diverged" if i % 10 == 9 else "completed", NAN if i % 10 == 9 else 100.0 + i,
                hidden=1 + i) for i in range(n)]
    ).sample(frac=1.0, random_state=0)  # fmt: skip
    mattered.parallel(frame, [AXIS["hidden"]], tmp_path / "p.png")
    (fig,) = drawn
    ax = fig.axes[0]
    grey, coloured = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(grey.get_segments()) + len(coloured.get_segments()) == mattered.LINES_MAX
    drawn_values = sorted(float(v) for v in coloured.get_array())  # type: ignore[union-attr]
    completed = sorted(100.0 + i for i in range(n) if i % 10 != 9)
    best = mattered.LINES_MAX // 2
    assert drawn_values[:best] == completed[:best]  # every one of the best
    assert drawn_values[-1] == completed[-1]  # and the others to the worst, evenly
    assert 0 < len(grey.get_segments()) < mattered.LINES_MAX // 2
    title = ax.get_title().replace("\n", " ")
    assert title.startswith("Searched settings of 2,000 of 5,000 configs and their final")
    assert "(one line per config: the 1,000 best, 1,000 others evenly by rank;" in title


def test_a_collection_of_many_shapes_is_an_image_in_the_svg_and_few_stay_paths(
    tmp_path: Path,
) -> None:
    from matplotlib.collections import LineCollection as Lines

    for count in (style.SVG_SHAPES_MAX + 1, 50):
        fig, ax = plt.subplots()
        ax.add_collection(Lines([[(i, 0), (i, 1)] for i in range(count)]))
        ax.set_xlim(0, count)
        style.save(fig, tmp_path / f"{count}.png")
        svg = (tmp_path / f"{count}.svg").read_text()
        many = count > style.SVG_SHAPES_MAX
        assert ("<image" in svg) == many and (svg.count("<path") > count) != many
        assert "<text" in svg or "glyph" in svg or "use xlink" in svg  # the axes' labels


def test_parallel_with_nothing_completed_has_no_colour_scale(
    tmp_path: Path, drawn: list[Figure]
) -> None:
    frame = parallel_frame().assign(status="diverged", val_elbo=NAN)
    labels = mattered.parallel(frame, [AXIS["hidden"]], tmp_path / "p.png")
    assert labels == ["hidden width (units)", "final validation \N{MINUS SIGN}ELBO (nats)"]
    (fig,) = drawn
    assert len(fig.axes) == 1  # no colorbar
    assert png_shape(tmp_path / "p.png")[0] > 100


def test_importance_sorts_and_labels(tmp_path: Path, drawn: list[Figure]) -> None:
    path = tmp_path / "importance.png"
    found = {"hidden": 0.1, "lr": 0.55, "clip": 0.3, "beta": NAN, "latent": 0.05}
    labels = mattered.importance(found, [AXIS[n] for n in found], path)
    expected = [
        "learning rate",
        "max gradient norm",
        "hidden width (units)",
        "latent dimension",
        "KL weight beta",  # NaN: no bar, last
    ]
    assert labels == expected
    height, width = png_shape(path)
    assert width == 1400 and 600 <= height <= 1000  # 7 inches at 200 dpi
    (fig,) = drawn
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == expected
    assert [round(p.get_width(), 6) for p in ax.patches] == [0.55, 0.3, 0.1, 0.05, 0.0]
    assert ax.yaxis_inverted()  # the first, most important, on top
    assert ax.get_title() == (
        "What mattered for the final validation \N{MINUS SIGN}ELBO\n(fANOVA over the configs)"
    )
    mattered.importance(found, [AXIS[n] for n in found], path, "val_nll")
    assert drawn[-1].axes[0].get_title().startswith("What mattered for the final validation NLL")
    assert [t.get_text() for t in ax.texts] == ["0.55", "0.30", "0.10", "0.05", "n/a"]


def test_curves_legend_names_any_axes(tmp_path: Path, drawn: list[Figure]) -> None:
    epochs = pd.DataFrame(
        {
            "key": ["a"] * 4 + ["b"] * 4,
            "epoch": [1, 1, 2, 2] * 2,
            "split": ["train", "val"] * 4,
            "elbo": [130.0, 128.0, 120.0, 119.0, 140.0, 139.0, 135.0, 134.0],
        }
    )
    ranking = pd.DataFrame(
        [
            {"key": "a", "hidden": 400, "beta": 1.0, "optimizer": "sgd", "lr": 3e-4},
            {"key": "b", "hidden": 800, "beta": 1.0, "optimizer": "adam", "lr": 1e-2},
        ]
    ).assign(status="completed", val_elbo=[119.0, 134.0], config=["a", "b"])
    test = pd.DataFrame({"key": ["a", "a"], "criterion": ["val_elbo", "val_recon"]})
    path = tmp_path / "curves.png"
    curves(epochs, ranking, test, path, ["hidden", "beta", "optimizer", "lr"])
    assert png_shape(path)[1] == 1400  # 7 inches at 200 dpi
    (fig,) = drawn
    # every config labelled by the settings that differ (beta does not), the winner its wins
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "hidden 400, optimizer sgd, lr 0.0003 \N{EM DASH} best by val_elbo, val_recon",
        "hidden 800, optimizer adam, lr 0.01",
    ]


def test_curves_show_the_mean_of_the_repeats_in_a_band_and_colour_many_configs_by_axis(
    tmp_path: Path, drawn: list[Figure]
) -> None:
    rows, trials = [], []
    for hidden, lr, repeat in itertools.product((100, 200, 400, 800), (1e-3, 1e-2, 1e-1, 1.0),
                                                (0, 1)):  # fmt: skip
        config = f"h{hidden}-lr{lr}"
        key = f"{config}-r{repeat}"
        base = 100.0 + hidden / 100 + 10 * math.log10(lr) ** 2 + repeat  # repeats 1 apart
        trials.append({"key": key, "config": config, "hidden": hidden, "lr": lr,
                       "status": "completed", "val_elbo": base})  # fmt: skip
        rows += [{"key": key, "epoch": e, "split": "val", "elbo": base + 10 / e} for e in (1, 2)]
    ranking = pd.DataFrame(trials)
    test = pd.DataFrame({"key": ["h100-lr0.01"], "criterion": ["val_elbo"]})
    labels = curves(pd.DataFrame(rows), ranking, test, tmp_path / "c.png",
                            ["hidden", "lr"], order=["lr", "hidden"])  # fmt: skip
    (fig,) = drawn
    ax = fig.axes[0]
    assert len(ax.lines) == 16  # one per config: the mean of its 2 repeats
    means = {tuple(np.round(line.get_ydata(), 6)) for line in ax.lines}
    assert (120.5 + 1, 115.5 + 1) in means  # h100, lr 0.01: repeats at +0 and +1, mean +0.5
    assert len(ax.collections) == 16  # a band per config, from its lowest repeat to its highest
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    # 16 configs: colour by lr (it mattered most), style by hidden; the winner by name
    assert texts[0].startswith("h100-lr0.01: hidden 100, lr 0.01 (val_elbo)")
    assert texts[1:] == [f"lr {v}" for v in ("0.001", "0.01", "0.1", "1")] + [
        f"hidden {h}" for h in (100, 200, 400, 800)
    ]
    assert labels["h100-lr0.01"] and not labels["h800-lr1.0"]
    colour = {line.get_color() for line in ax.lines if line.get_linestyle() == "-"}
    assert len(colour) == 4  # hidden 100 (solid): a colour per lr
    assert (
        "Validation \N{MINUS SIGN}ELBO of 16 configs (mean, band: lowest to highest of 2 "
        "repeats)" in ax.get_title().replace("\n", " ")
    )


def test_a_clipped_norm_spends_the_scale_on_the_better_values() -> None:
    values = np.array([106.5, 108.0, 111.7, 210.0, 310.0, NAN])
    full = style.colour_scale(values)
    assert full is not None and float(full(111.7)) < 0.03  # the good ones: one colour
    norm = style.colour_scale(values, clip_worse=True)
    assert norm is not None and not isinstance(norm, LogNorm)
    assert norm.vmin == 106.5 and norm.vmax == pytest.approx(116.9)
    good = np.asarray(norm(values[:3]))
    assert good == pytest.approx([0.0, 1.5 / 10.4, 0.5])  # half the scale, not 3 %
    assert (np.asarray(norm(values[3:5])) > 1).all()  # above the top: the "over" colour
    # Evenly spread values keep their whole range (of 6, the lower median 120 is 2 ranks from
    # the best: 100 + 5 x 20 / 2 = 150); so do two values and a better half without spread.
    for kept in ([100.0, 110.0, 120.0, 130.0, 140.0, 150.0], [90.0, 200.0], [5.0, 5.0, 9.0]):
        unclipped = style.colour_scale(np.array(kept), clip_worse=True)
        assert unclipped is not None and unclipped.vmax == max(kept), kept


def test_a_clipped_norm_clips_on_the_log_axis_and_is_log_only_if_what_is_left_spans_decades() -> (
    None
):
    evenly = style.colour_scale(np.array([1.0, 10.0, 100.0, 1000.0, 10000.0]), clip_worse=True)
    assert isinstance(evenly, LogNorm) and evenly.vmax == 10000.0  # even on the log axis
    # A far outlier makes the span logarithmic; the better half (100, 110: 1 rank) caps it
    # 3 ranks on at 100 x 1.1^3 = 133.1 on the log axis, and 100 to 133.1 is drawn linear.
    outlier = style.colour_scale(np.array([100.0, 110.0, 115.0, 1e5]), clip_worse=True)
    assert outlier is not None and not isinstance(outlier, LogNorm)
    assert outlier.vmin == 100.0 and outlier.vmax == pytest.approx(133.1)


def test_norm_is_logarithmic_only_beyond_a_factor_of_10() -> None:
    assert isinstance(style.colour_scale(np.array([10.0, 101.0, NAN])), LogNorm)
    linear = style.colour_scale(np.array([10.0, 100.0]))
    assert linear is not None and not isinstance(linear, LogNorm)
    assert linear.vmin == 10.0 and linear.vmax == 100.0
    assert style.colour_scale(np.array([NAN, math.inf])) is None
    one = style.colour_scale(np.array([100.0]))
    assert one is not None and float(one(100.0)) == 0.5


def test_curves_of_thousands_of_configs_draw_the_best_and_the_winners_with_a_short_legend(
    tmp_path: Path, drawn: list[Figure]
) -> None:
    # 50 hidden x 60 latent = 3,000 configs: the best 200 by their last epoch, and the
    # winner wherever it ranks; a legend of a few values, not of 60.
    rows, trials = [], []
    for hidden, latent in itertools.product(range(1, 51), range(1, 61)):
        key = f"h{hidden}-l{latent}"
        base = 100.0 + hidden + latent / 100
        trials.append({"key": key, "config": key, "hidden": hidden, "latent": latent,
                       "status": "completed", "val_elbo": base})  # fmt: skip
        rows += [{"key": key, "epoch": e, "split": "val", "elbo": base + 10 / e} for e in (1, 2)]
    test = pd.DataFrame({"key": ["h50-l60"], "criterion": ["val_elbo"]})  # the worst, say
    labels = curves(pd.DataFrame(rows), pd.DataFrame(trials), test, tmp_path / "c.png",
                    ["hidden", "latent"])  # fmt: skip
    (fig,) = drawn
    ax = fig.axes[0]
    assert len(ax.lines) == 201 and len(labels) == 201
    assert set(labels) == {f"h{h}-l{x}" for h in range(1, 5) for x in range(1, 61)
                           if (h - 1) * 60 + x <= 200} | {"h50-l60"}  # fmt: skip
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    # hidden: 5 values among the lines, a colour each; latent's 60 colour nothing
    assert texts == ["h50-l60: hidden 50, latent 60 (val_elbo)"] + [
        f"hidden {h}" for h in (1, 2, 3, 4, 50)
    ]
    assert " ".join(ax.get_title().split()) == (
        "Validation \N{MINUS SIGN}ELBO of the best 200 of 3,000 configs by their last epoch, "
        "and the winners (mean)"
    )
