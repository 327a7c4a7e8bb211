"""The built-in models, one file each (card.py says what a card holds). Adding one is a
file and a line here; a plug-in model gets a card from its probe (train/probe.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaegrid.models import conv, linear, mlp
from vaegrid.models.card import Activations, Card, Settings, Shape

if TYPE_CHECKING:
    from vaegrid.models.base import BaseVAE

CARDS: dict[str, Card] = {m.CARD.name: m.CARD for m in (linear, mlp, conv)}
NAMES = tuple(CARDS)  # the study's model choices, the seed's first

# A plug-in's layers are unknown to the driver: guessed as the linear model of its hidden
# width (cost.py scales the guess by what the probe measured), its parameters counted by
# the probe.
GUESS = linear.CARD


def measured(name: str, encoder: float, decoder: float) -> Card:
    """A plug-in model's card, from its probe: its layers are unknown here, so its work is
    the linear model's of its width scaled by what the probe measured of it (torch's FLOP
    counter at the study's largest settings: ``encoder`` and ``decoder`` times the guess),
    its activations the guess's; its parameters are counted by the probe (0 here), its
    version is in its trials' keys and its module is its factory's (train/model.py)."""

    def macs(settings: Settings, shape: Shape) -> tuple[float, float]:
        enc, dec = GUESS.macs(settings, shape)
        return enc * encoder, dec * decoder

    def build(settings: Settings, shape: Shape) -> BaseVAE:
        raise TypeError(f"model {name}: built by its plug-in's factory (train/model.py)")

    return Card(name, "", lambda s, shape: 0, macs, GUESS.activations, build)


__all__ = ["CARDS", "GUESS", "NAMES", "Activations", "Card", "measured"]
