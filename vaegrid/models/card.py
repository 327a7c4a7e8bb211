"""What vaegrid knows of a model, in one place: a card.

A card says everything the rest of vaegrid asks of a model, torch-free: its version (part
of every trial key), its parameters, the multiply-adds of one image through its encoder
and its decoder, the activations a training step keeps, the images it can take, and how
to build it. The study checks it (study/load.py: sizes, memory), the cost model counts
with it (cost.py), the probe measures a plug-in's against it (train/probe.py) and the
trainer builds from it (train/model.py). Each built-in model is one file holding its card
and its torch module (linear.py, mlp.py, conv.py); the module is defined the first time it
is asked for, so the driver reads cards without loading torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from vaegrid.models.base import BaseVAE

Shape = tuple[int, int, int]  # C, H, W
Settings = Mapping[str, Any]  # a trial's settings (TrialConfig.axis_values())


class Activations(NamedTuple):
    """Floats a training step keeps per image, as the memory estimate counts them."""

    encoder: int  # per image, the encoder's layers (pre- and post-activation)
    decoded: int  # per decoded sample: the decoder's layers, the logits and their loss
    widest: int  # the widest layer an evaluation pass holds per image


@dataclass(frozen=True)
class Card:
    """One model: the functions of its settings and its images' shape."""

    name: str  # as a study file names it (``model = "linear"``)
    version: str  # bumped whenever what a config computes changes: part of the trial key
    parameters: Callable[[Settings, Shape], int]
    macs: Callable[[Settings, Shape], tuple[float, float]]  # encoder, decoder, per image
    activations: Callable[[Settings, Shape], Activations]
    build: Callable[[Settings, Shape], BaseVAE]  # on the CPU (imports torch)
    # Why images of this shape cannot be taken, in words (None: they can).
    refuses: Callable[[Shape], str | None] = lambda shape: None


def lazy_module(
    name: str, module: str, define: Callable[[], type[BaseVAE]]
) -> tuple[Callable[[], type[BaseVAE]], Callable[[str], Any]]:
    """A model file's torch module, defined by ``define`` the first time it is asked for
    (torch loads then, not when the card is read). Returns the function that gives it and
    the model file's ``__getattr__``, so that ``from vaegrid.models.linear import
    LinearVAE`` and pickling find the class by its ``name`` in ``module``."""

    @functools.cache
    def get() -> type[BaseVAE]:
        found = define()
        found.__module__, found.__qualname__, found.__name__ = module, name, name
        return found

    def attribute(attr: str) -> Any:
        if attr == name:
            return get()
        raise AttributeError(f"module {module!r} has no attribute {attr!r}")

    return get, attribute
