"""What a trial's model and training step weigh, from its settings alone: its parameters
and the memory a step needs (the study file's checks, the pool's memory budget and the
cost model use them; nothing is built)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from vaegrid.models import CARDS, GUESS
from vaegrid.study.datasets import Images

MNIST_SHAPE = Images().shape  # (channels, height, width) of MNIST's (and Fashion-MNIST's)
# Images per evaluation pass (train/trial.py) and decoded images per pass of the
# importance-sampled NLL (train/model.py): what bounds their memory.
EVAL_ROWS = 10_000
NLL_ROWS = 1_000


def parameter_count(settings: Mapping[str, Any], shape: tuple[int, int, int] = MNIST_SHAPE) -> int:
    """Trainable parameters of the model of ``settings`` for images of ``shape`` (C, H, W),
    without building it (its card's count: vaegrid/models/); a plug-in's: 0, counted when
    the driver probes it (train/probe.py)."""
    card = CARDS.get(settings["model"])
    return card.parameters(settings, shape) if card is not None else 0


def training_mb(settings: Mapping[str, Any], shape: tuple[int, int, int] = MNIST_SHAPE) -> int:
    """An estimate of the memory a trial of ``settings`` on images of ``shape`` needs beyond
    the worker's own (MB): the parameters, their gradients and Adam's two moments, and the
    larger of a training step's activations (kept for the backward pass, half again for the
    backward's own) and an evaluation or NLL pass's (within a factor of 2 of what a
    training step, a validation pass and an NLL pass measured for linear, conv and IWAE
    trials: tested).

    The activations of a batch of B images with k samples (k = 1 for the ELBO) are
    dominated by the decoder's k x B x (its layers and the P values' logits with their
    loss) and the encoder's B x (its layers), as the model's card counts them (a plug-in's
    as the linear model of its width).
    """
    batch, pixels = settings["batch_size"], math.prod(shape)
    k = settings["samples"] if settings["objective"] == "iwae" else 1
    per_image, decoded, widest = CARDS.get(settings["model"], GUESS).activations(settings, shape)
    activations = batch * (pixels + per_image) + k * batch * decoded
    # Evaluation (EVAL_ROWS images a pass) and the validation NLL (NLL_ROWS decoded images
    # a pass) keep no activations for a backward pass: their widest layers at once.
    passes = max(EVAL_ROWS, NLL_ROWS) * (3 * pixels + 2 * widest)
    floats = 4 * parameter_count(settings, shape) + max(3 * activations // 2, passes)
    return 4 * floats // (1 << 20) + 1


def largest_trials(by_axis: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """For each model and objective of a study, the settings of its largest trial (every
    size at its largest: memory grows with each)."""
    sizes = {n: max(by_axis[n]) for n in ("hidden", "latent", "depth", "channels",
                                           "samples", "batch_size")}  # fmt: skip
    return [
        {**sizes, "model": m, "objective": o}
        for m in by_axis["model"]
        for o in by_axis["objective"]
    ]
