"""Torch files read back: bounded before and while they are read (:func:`load_bounded`:
checkpoints and weights), and a trial's final weights refused unless they are this
trial's (``report``'s winners and ``vaegrid.load().model``)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import torch

from vaegrid.errors import InputError, first_line
from vaegrid.layout import StudyLayout
from vaegrid.models.base import BaseVAE
from vaegrid.safeio import read_bytes
from vaegrid.study.core import TrialConfig
from vaegrid.train.data import image_shape
from vaegrid.train.model import make_model


def load_model(
    cfg: TrialConfig, layout: StudyLayout, device: torch.device | str, unstamped_ok: bool
) -> BaseVAE:
    """A trial's model with its final weights, in eval mode on ``device``, refused in one
    line unless the weights are this trial's (``report`` and ``vaegrid.load().model``).

    The file is sized before it is read (its model's parameters, 4 bytes each, and room
    for torch's framing), and must carry the identity the trial stamped on it (trial key
    and model version). Weights without one are accepted only from a study made before
    weights were stamped (``unstamped_ok``), by shape alone.
    """
    model = make_model(cfg.axis_values(), image_shape(cfg.data))
    path = layout.trial(cfg.key).weights
    if not path.is_file():
        raise InputError(f"{path}: a winner's weights are missing")
    limit = 2 * 4 * sum(p.numel() for p in model.state_dict().values()) + (1 << 20)
    size = path.stat().st_size
    if size > limit:
        raise InputError(
            f"{path}: {size:,} bytes, not this trial's weights (its model's are at most "
            f"{limit:,}); refused before reading"
        )
    try:
        state = load_bounded(path, limit, "cpu")  # unpacked size checked too
    except InputError:
        raise
    except Exception as e:  # truncated, not a torch file: all the same to a user
        raise InputError(f"{path}: not this trial's weights ({first_line(e)})") from None
    stamped = isinstance(state, dict) and isinstance(state.get("identity"), dict)
    if stamped and state.get("file") != "weights":
        raise InputError(f"{path}: a checkpoint, not a trial's final weights (copied?)")
    if stamped:
        identity = state["identity"]
        for field, want in (("key", cfg.key), ("model", cfg.version)):
            if identity.get(field) != want:
                found = str(identity.get(field))[:40]
                raise InputError(
                    f"{path}: weights of {field} {found!r}, not this trial's {want!r} "
                    "(copied from another trial?)"
                )
        state = state.get("model")
    elif not unstamped_ok:
        raise InputError(
            f"{path}: weights that do not say which trial they belong to; this study's "
            "trials stamp theirs (copied from elsewhere?)"
        )
    try:
        model.load_state_dict(state)
    except Exception as e:  # another shape, not a state dict
        raise InputError(f"{path}: not this trial's weights ({first_line(e)})") from None
    return model.to(device).eval()


def load_bounded(path: Path, limit: int, device: torch.device | str) -> Any:
    """``torch.load`` of a file that holds at most ``limit`` bytes, on disk and unpacked
    (torch's files are zip archives: a small compressed member can unpack to gigabytes).

    Raises:
        ValueError: larger than ``limit``, or not a torch file; InputError: not a regular
            file or a link.
    """
    if path.is_file() and path.stat().st_size > limit:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes, more than {limit:,}")
    data = read_bytes(path)
    try:
        unpacked = sum(i.file_size for i in zipfile.ZipFile(io.BytesIO(data)).infolist())
    except zipfile.BadZipFile:
        unpacked = len(data)  # not an archive: torch.load says what it is
    if unpacked > limit:
        raise ValueError(f"{path}: unpacks to {unpacked:,} bytes, more than {limit:,}")
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
