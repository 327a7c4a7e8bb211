"""What a trial reports, in plain data: an epoch's metrics, how a run ended, the
validation NLL. Apart from the training (train/trial.py) so that the store, the worker's
bookkeeping and the driver read and write them without loading torch."""

from __future__ import annotations

from dataclasses import dataclass

from vaegrid.layout import TrialFiles
from vaegrid.status import Status


@dataclass(frozen=True)
class Metrics:
    """Mean per-image loss terms over a split, in nats (lower is better)."""

    elbo: float  # negative ELBO = recon + kl
    recon: float  # Bernoulli negative log-likelihood, summed over the C x H x W values
    kl: float  # KL(q(z|x) || N(0, I))


@dataclass(frozen=True)
class EpochRecord:
    """What one finished epoch reports."""

    epoch: int  # 1-based
    train: Metrics  # mean over the epoch's training batches (train mode)
    val: Metrics  # validation split in eval mode, one z per image from a fixed seed
    seconds: float  # wall time of the epoch, training and validation


@dataclass(frozen=True)
class TrialResult:
    """How a run of a trial ended: ``completed`` or ``diverged`` (a result, not an error),
    or ``interrupted`` (asked to stop: it continues from its last epoch next time),
    or ``paused`` at the epoch it was asked to stop at (its checkpoint kept to go on)."""

    status: Status  # COMPLETED, DIVERGED, INTERRUPTED or PAUSED
    history: list[EpochRecord]  # every finished epoch, resumed ones included
    cause: str | None = None  # for diverged: what went non-finite, where
    diverged_epoch: int | None = None
    nll: ValNll | None = None  # the validation NLL at the last epoch (asked for: run_trial)


@dataclass(frozen=True)
class ValNll:
    """The importance-sampled validation NLL of a trial at an epoch."""

    epoch: int
    nll: float  # -log p(x), nats per image, mean over the validation split
    samples: int  # k
    seconds: float


def finalize(files: TrialFiles) -> None:
    """Drop the resume checkpoint of a trial whose end is committed: weights are what stays."""
    files.checkpoint.unlink(missing_ok=True)


__all__ = ["EpochRecord", "Metrics", "TrialResult", "ValNll", "finalize"]
