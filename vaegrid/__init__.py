"""vaegrid: correct, fast, resumable hyperparameter grid search over VAE training."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vaegrid.version import __version__

if TYPE_CHECKING:
    from vaegrid.api import Results

__all__ = ["__version__", "load"]


def load(
    results_dir_or_storage: str | Path, study: str, *, results: str | Path | None = None
) -> Results:
    """A study's results as pandas frames, read-only, and its trained models
    (``.model(key)``): see :func:`vaegrid.api.load`."""
    from vaegrid.api import load as _load  # pandas and optuna load only when asked

    return _load(results_dir_or_storage, study, results=results)
