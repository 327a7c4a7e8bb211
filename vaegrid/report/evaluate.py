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

from vaegrid.errors import InputError
from vaegrid.layout import StudyLayout
from vaegrid.spec.datasets import BUILTIN as BUILTIN_DATASETS
from vaegrid.spec.study import TrialConfig, derive_seed
from vaegrid.train.data import ensure_mnist, image_shape, load_splits
from vaegrid.train.model import BaseVAE, importance_nll, make_model
from vaegrid.train.trial import evaluate, load_bounded

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

    def evaluate(
        self, key: str, k: int, progress: Callable[[int], None] | None = None
    ) -> dict[str, object]:
        """A ``vg_test`` row: the metrics as for validation, plus the importance-sampled NLL
        with ``k`` samples per image; ``progress`` is told the test images done."""
        return _evaluate(self.configs[key], self.models[key], self.test_x, k, progress)

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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not this trial's weights ({first[:200]})") from None
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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not this trial's weights ({first[:200]})") from None
    return model.to(device).eval()


def _evaluate(
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
