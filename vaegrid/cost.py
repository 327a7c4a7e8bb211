"""What a trial costs: predicted before it runs, corrected by what the study has measured.

The one owner of cost: the driver's longest-first order, the one forecast (:func:`forecast`:
the bar's and ``status``'s work done and time left), ``plan``'s estimate and the report's
time left for its test evaluation ask it. Torch-free (the driver reads it).

**Work** is counted in multiply-adds (MACs) of the model's layers for the images a trial
processes: a training epoch is 3 forward passes' worth (forward and backward) of the
encoder and of the decoder k times (IWAE's samples) over the training split, plus one
forward pass over the validation split; the validation NLL at the end is the encoder and k
decoder passes per validation image. Counted from the settings and the images' shape (as
``parameter_count`` counts parameters): every weight of a dense layer is one MAC per image,
a convolution's weights once per output position. A plug-in model's layers are unknown to
the driver: it is guessed as a one-hidden-layer model of its hidden width, scaled by what
the probe measured of it (torch's FLOP counter at the study's largest settings).

**Seconds** are work x the seconds per MAC that the study's runs measured on that kind of
device (their wall time over their work: loading and checkpoints count), or, before any
has, on any kind, or a prior (a CPU slot of one thread: ``PRIOR_MACS_PER_S``). Which
trial will diverge cannot be foreseen: each is predicted to run to its end, and the
forecast scales the work still queued by the share of their predicted work that ended
runs did (a grid whose lr = 1 third diverges at once runs two thirds of its prediction).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from vaegrid.models import CARDS, GUESS, measured
from vaegrid.study.core import (
    MNIST_IMAGES,
    DataSpec,
    HalvingSpec,
    Probed,
    Study,
    TrialConfig,
    split_sizes,
)
from vaegrid.study.datasets import Images
from vaegrid.study.sizes import parameter_count

# A CPU slot of one thread: the seed study's trials (hidden 400-800) measured 2.4-3.5e10
# MAC/s on this project's machine; only used until the study's first epoch is measured.
PRIOR_MACS_PER_S = 2.5e10
# Runs that must have ended before the forecast trusts the share of predicted work done.
REALIZED_AFTER = 3
CHECKPOINT_EXTRA_BYTES = 64 << 10  # a checkpoint's metrics, generator states and pickling
# The forecast's share of a running trial done is at most this: one over its predicted
# time is not done, and is not said to be.
RUNNING_SHARE_MAX = 0.95


def forward_macs(settings: Mapping[str, Any], shape: tuple[int, int, int]) -> tuple[float, float]:
    """Multiply-adds of one image's pass through the encoder and through the decoder: the
    model's card's count (vaegrid/models/); a plug-in's layers are unknown here, guessed
    as the linear model of its hidden width (scaled by what the probe measured)."""
    return CARDS.get(settings["model"], GUESS).macs(settings, shape)


class CostModel:
    """The work and the seconds of any part of any trial of one study."""

    @classmethod
    def of(cls, study: Study, probed: Probed | None = None) -> CostModel:
        """The cost model of ``study`` with what was ``probed`` of it (Probed.of's when
        not given: a plug-in data set not probed, for status, is counted as MNIST)."""
        probed = probed or Probed.of(study) or Probed(MNIST_IMAGES)
        return cls(study.data, study.nll_samples, probed.images, probed.plugin_work)

    def __init__(
        self,
        data: DataSpec,
        nll_samples: int,
        images: Images | None = None,
        plugin_work: tuple[tuple[str, float, float], ...] = (),
    ) -> None:
        # a plug-in model's card from what its probe measured (models.measured)
        self.cards = CARDS | {m: measured(m, e, d) for m, e, d in plugin_work}
        images = images or MNIST_IMAGES  # a plug-in data set not probed (status): MNIST's
        self.shape = images.shape
        self.n_train, self.n_val, _ = split_sizes(data, images)
        self.nll_samples = nll_samples
        self._measured: dict[str, list[float]] = {}  # device kind -> [seconds, work]
        self._runs = [0.0, 0.0, 0]  # work predicted at the runs' starts, work they did, runs
        self._epoch: dict[str, float] = {}  # trial key -> work of one epoch
        self._forward: dict[str, tuple[float, float]] = {}  # trial key -> forward()

    def epoch_work(self, cfg: TrialConfig) -> float:
        """MACs of one training epoch and its validation pass."""
        if cfg.key not in self._epoch:
            enc, dec = self.forward(cfg)
            k = cfg.samples if cfg.objective == "iwae" else 1
            self._epoch[cfg.key] = 3 * (enc + k * dec) * self.n_train + (enc + dec) * self.n_val
        return self._epoch[cfg.key]

    def nll_work(self, cfg: TrialConfig) -> float:
        """MACs of the validation NLL a trial computes at its end (0 without one)."""
        if not self.nll_samples:
            return 0.0
        enc, dec = self.forward(cfg)
        return float((enc + self.nll_samples * dec) * self.n_val)

    def test_work(self, cfg: TrialConfig, k: int, images: int) -> float:
        """MACs of a winner's test evaluation (``report``): the one-z pass (elbo, recon, kl)
        and the NLL's encoder and ``k`` decoder passes, over ``images`` test images."""
        enc, dec = self.forward(cfg)
        return float((2 * enc + (k + 1) * dec) * images)

    def forward(self, cfg: TrialConfig) -> tuple[float, float]:
        """MACs of one image through the encoder and the decoder, as its model's card counts
        them (a plug-in's: from its probe; not probed, the guess); once a config."""
        if cfg.key not in self._forward:
            enc, dec = self.cards.get(cfg.model, GUESS).macs(cfg.axis_values(), self.shape)
            self._forward[cfg.key] = (float(enc), float(dec))
        return self._forward[cfg.key]

    def file_bytes(self, cfg: TrialConfig) -> tuple[int, int]:
        """Bytes of a trial's final weights and of its checkpoint (the weights, the
        optimizer's state: Adam's two moments, SGD's momentum; and its metrics), counted as
        ``parameter_count`` counts parameters (float32); a plug-in model's: 0, unknown here."""
        params = parameter_count(cfg.axis_values(), self.shape)
        moments = {"adam": 2, "adamw": 2}.get(cfg.optimizer, 1)
        return 4 * params, 4 * params * (1 + moments) + CHECKPOINT_EXTRA_BYTES

    def work(self, cfg: TrialConfig, start: int, end: int) -> float:
        """MACs of epochs ``start`` + 1 to ``end``, and of the NLL when ``end`` is the last."""
        if end <= start:
            return 0.0
        nll = self.nll_work(cfg) if end >= cfg.epochs else 0.0
        return (end - start) * self.epoch_work(cfg) + nll

    def observe(self, kind: str, seconds: float, work: float) -> None:
        """Epochs of ``work`` MACs took ``seconds`` of training on a device of ``kind``."""
        if seconds > 0 and work > 0 and math.isfinite(seconds):
            seen = self._measured.setdefault(kind, [0.0, 0.0])
            seen[0] += seconds
            seen[1] += work

    def finished(self, predicted: float, ran: float) -> None:
        """A run predicted to do ``predicted`` MACs did ``ran`` (less when it diverged)."""
        if predicted > 0 and math.isfinite(ran):
            self._runs[0] += predicted
            self._runs[1] += min(ran, predicted)
            self._runs[2] += 1

    def realized(self) -> float:
        """The share of their predicted work that runs did (trials that diverge stop early),
        once REALIZED_AFTER runs have ended; 1 before. The forecast scales the queue by it."""
        predicted, ran, runs = self._runs
        if runs < REALIZED_AFTER or predicted <= 0:
            return 1.0
        return max(0.05, ran / predicted)

    def measured(self) -> bool:
        """Whether any epoch has been measured."""
        return bool(self._measured)

    def seconds_per_mac(self, kind: str | None = None) -> float:
        """What a MAC costs on ``kind`` as measured; any kind's when it has none yet; the
        prior when nothing was measured."""
        seen = self._measured.get(kind) if kind is not None else None
        if seen is None and self._measured:
            seconds = sum(s for s, _ in self._measured.values())
            return seconds / sum(w for _, w in self._measured.values())
        return seen[0] / seen[1] if seen is not None else 1.0 / PRIOR_MACS_PER_S

    def seconds(self, work: float, kind: str | None = None) -> float:
        return work * self.seconds_per_mac(kind)


class Forecast(NamedTuple):
    """Where a sweep stands: the share of its work done, and the seconds left."""

    done: float  # 0 to 1
    seconds: float
    measured: bool  # False: the seconds are the prior's (no epoch measured yet)

    def words(self) -> str:
        """``38% of the work done, about 11 min left``."""
        left = f"about {duration(self.seconds)} left" if self.measured else "time left unknown yet"
        return f"{self.done:.0%} of the work done, {left}"


class Left(NamedTuple):
    """A trial as the forecast sees it."""

    cfg: TrialConfig
    epochs_done: int
    target: int  # the epoch it may run to now (``epochs_done``: none now)
    ended: bool = False  # completed, diverged, failed or stopped: only the halving plan
    nll_done: bool = False  # its end's validation NLL is computed (completed)
    # Running now: (seconds it has run, the work predicted at its start, its device kind)
    running: tuple[float, float, str] | None = None


def forecast(
    model: CostModel,
    trials: Iterable[Left],
    slots: int,
    halving: HalvingSpec | None = None,
    open_rung: int | None = None,
) -> Forecast:
    """The one forecast of a sweep (the bar, ``status``): the share of the work done and the
    seconds left on ``slots`` slots. Trials running: their predicted seconds less the time
    they have run (a trial over its prediction is nearly done, not done); the others: their
    work to ``target``, those not started scaled by the share of predicted work ended runs
    did (:meth:`CostModel.realized`: trials diverge early, in their first epoch; one that
    finished an epoch is taken to run on), longest first onto the slots that free first; with
    halving, the work the plan still allows beyond ``open_rung`` for the trials not ended
    (:func:`halving_work`), spread over the slots. Every part counts, the NLL included."""
    trials = list(trials)
    realized = model.realized()
    done = left = 0.0
    running: list[float] = []
    queued: list[float] = []
    for t in trials:
        done += t.epochs_done * model.epoch_work(t.cfg)
        done += model.nll_work(t.cfg) if t.nll_done else 0.0
        if t.running is not None:
            ran, work, kind = t.running
            seconds = model.seconds(work, kind)
            share = min(RUNNING_SHARE_MAX, ran / seconds) if seconds > 0 else 0.0
            running.append(seconds * (1 - share))
            done += work * share
            left += work * (1 - share)
        elif not t.ended:  # one that finished an epoch has passed where trials diverge
            scale = realized if t.epochs_done == 0 else 1.0
            queued.append(model.work(t.cfg, t.epochs_done, t.target) * scale)
    left += sum(queued)
    slots = max(1, slots)
    seconds = makespan(running, map(model.seconds, queued), slots)
    if halving is not None:
        alive = [t.cfg for t in trials if not t.ended]
        epochs = max((t.cfg.epochs for t in trials), default=0)
        rest = halving_work(model, alive, open_rung, halving, epochs)
        left += rest
        seconds += model.seconds(rest) / slots
    total = done + left
    return Forecast(done / total if total else 1.0, seconds, model.measured())


def makespan(running: Iterable[float], queued: Iterable[float], slots: int) -> float:
    """Seconds until the last of ``queued`` trials ends when each, longest first, goes to the
    slot that frees first, with ``running`` trials' seconds left on their slots."""
    free = sorted(running)[:slots]
    free += [0.0] * (slots - len(free))
    heapq.heapify(free)
    for seconds in sorted(queued, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + seconds)
    return max(free, default=0.0)


def halving_rest(
    contenders: int, open_rung: int | None, rungs: tuple[int, ...], keep: float, epochs: int
) -> list[tuple[int, int]]:
    """The work a halving plan still allows beyond its open rung: ``(trials, epochs)`` per
    stretch, for the ``contenders`` of the open rung (each stretch's survivors, as the rule
    keeps them)."""
    from vaegrid.halving import n_survivors

    if open_rung is None or not contenders:
        return []
    out, n = [], contenders
    bounds = [r for r in rungs if r >= open_rung] + [epochs]
    for start, end in itertools.pairwise(bounds):
        n = n_survivors(n, keep)
        out.append((n, end - start))
    return out


def halving_work(
    model: CostModel,
    alive: list[TrialConfig],
    open_rung: int | None,
    spec: HalvingSpec,
    epochs: int,
) -> float:
    """MACs a halving plan still allows beyond its open rung for the trials ``alive`` (not
    ended): each stretch's survivors at the mean epoch of those trials, and the last
    stretch's their NLL too (which survive cannot be known before the rung)."""
    if not alive:
        return 0.0
    stretches = halving_rest(len(alive), open_rung, spec.rungs, spec.keep, epochs)
    if not stretches:
        return 0.0
    mean = sum(map(model.epoch_work, alive)) / len(alive)
    nll = sum(map(model.nll_work, alive)) / len(alive)
    return sum(n * e * mean for n, e in stretches) + stretches[-1][0] * nll


def duration(seconds: float) -> str:
    """``11 min``, ``1 h 05 min``, ``40 s``: a time left, as the bar and ``status`` say it."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def space_short(
    root: Path, model: CostModel, left: list[TrialConfig], at_once: int, fault_wait: float
) -> str | None:
    """A line saying the disk of ``root`` lacks room for what a sweep writes (the cost
    model's sizes: every trial ``left``'s final weights, and the checkpoints of the
    ``at_once`` largest: the trials that run at once, or every trial left with halving);
    None when it has."""
    import shutil

    sizes = [model.file_bytes(cfg) for cfg in left]
    weights = sum(w for w, _ in sizes)
    checkpoints = sum(sorted((c for _, c in sizes), reverse=True)[:at_once])
    free = shutil.disk_usage(root).free
    if free >= weights + checkpoints:
        return None
    mb = 1 << 20
    return (
        f"vaegrid: warning: {root} has {free / mb:,.1f} MB free; this sweep "
        f"writes about {(weights + checkpoints) / mb:,.1f} MB (weights "
        f"{weights / mb:,.1f} MB, checkpoints up to {checkpoints / mb:,.1f} MB): when the "
        f"disk is full its trials wait, and after --fault-wait ({fault_wait:g} s) the "
        "sweep stops with exit 3"
    )
