"""The built-in models, one file each (card.py says what a card holds). Adding one is a
file and a line here; a plug-in model gets a card from its probe (train/probe.py)."""

from __future__ import annotations

from vaegrid.models import conv, linear, mlp
from vaegrid.models.card import Activations, Card

CARDS: dict[str, Card] = {m.CARD.name: m.CARD for m in (linear, mlp, conv)}
NAMES = tuple(CARDS)  # the study's model choices, the seed's first

# A plug-in's layers are unknown to the driver: guessed as the linear model of its hidden
# width (cost.py scales the guess by what the probe measured), its parameters counted by
# the probe.
GUESS = linear.CARD

__all__ = ["CARDS", "GUESS", "NAMES", "Activations", "Card"]
