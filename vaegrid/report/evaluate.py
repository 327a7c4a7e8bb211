"""The winners on the test split: their final weights, the test split, their test metrics.

The only module of the report, with figures.py, that touches torch. A trial's test metrics
are computed once (from its final weights and seeds derived from its own), stored in
``vg_test`` by the caller, and reused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vaegrid.layout import StudyLayout
from vaegrid.models.base import BaseVAE
from vaegrid.study.core import TrialConfig, derive_seed
from vaegrid.study.datasets import BUILTIN as BUILTIN_DATASETS
from vaegrid.train.data import ensure_mnist, load_splits
from vaegrid.train.model import importance_nll
from vaegrid.train.trial import evaluate
from vaegrid.train.weights import load_model

# Most importance samples per test image: a pass holds k x 784 logits (50,000: 157 MB
# each for the logits, the targets and the BCE); published results use 5,000.
NLL_SAMPLES_MAX = 50_000


@dataclass(frozen=True)
class Winners:
    """The tested trials, loaded: each one's config and model, and the test split."""

    configs: dict[str, TrialConfig]  # by trial key
    models: dict[str, BaseVAE]  # by trial key, on the test split's device, in eval mode
    test_x: torch.Tensor
    shape: tuple[int, int, int]  # the images' (C, H, W)

    def test_metrics(
        self, key: str, k: int, progress: Callable[[int], None] | None = None
    ) -> dict[str, object]:
        """A ``vg_test`` row: the metrics as for validation, plus the importance-sampled NLL
        with ``k`` samples per image; ``progress`` is told the test images done."""
        return _test_metrics(self.configs[key], self.models[key], self.test_x, k, progress)

    def generator(self, key: str, purpose: str) -> torch.Generator:
        """A generator on the test split's device, seeded from the trial's seed and repeat."""
        cfg = self.configs[key]
        seed = derive_seed(cfg.seed, cfg.repeat, purpose)
        return torch.Generator(self.test_x.device).manual_seed(seed)


def load_winners(
    layout: StudyLayout,
    configs: dict[str, TrialConfig],
    data_root: Path,
    device: str,
    unstamped_ok: bool = False,
) -> Winners:
    """The test split (of the first config's data) and every trial's final weights.

    Raises:
        InputError: a trial's weights are missing, or not its model's.
    """
    first = next(iter(configs.values()))
    if first.data.dataset in BUILTIN_DATASETS:  # downloaded if missing, checked
        ensure_mnist(data_root, first.data)
    splits = load_splits(data_root, first.data, first.seed, device)
    models = {
        k: load_model(cfg, layout, splits.test.device, unstamped_ok) for k, cfg in configs.items()
    }
    return Winners(configs, models, splits.test, splits.shape)


def _test_metrics(
    cfg: TrialConfig,
    model: BaseVAE,
    test_x: torch.Tensor,
    k: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, object]:
    """A winner on the test split: metrics as for validation, plus the IS estimate of the NLL."""
    started = time.perf_counter()
    metrics = evaluate(model, test_x, derive_seed(cfg.seed, cfg.repeat, "test"))
    g = torch.Generator(test_x.device).manual_seed(derive_seed(cfg.seed, cfg.repeat, "test-nll"))
    nll = float(importance_nll(model, test_x, k, g, progress=progress).mean())
    return {
        "key": cfg.key, "elbo": metrics.elbo, "recon": metrics.recon, "kl": metrics.kl, "nll": nll,
        "nll_samples": k, "seconds": time.perf_counter() - started, "evaluated": time.time(),
    }  # fmt: skip
