"""One trial: train one config on one device into its folder, epoch by epoch, resumably.

The folder (layout.TrialFiles) holds the config, a checkpoint rewritten atomically at the
end of every epoch (model, optimizer and the metrics so far, enough to continue
bit-for-bit), the final weights and a log. Every random draw comes from a generator
seeded by (study seed, repeat, purpose, epoch), so a trial gives the same metrics whatever
ran before it in the process and whether or not it was interrupted. The draws are common
random numbers: the initial weights depend on (study seed, repeat, hidden, latent) only,
the data order, z draws and binarization on (study seed, repeat, epoch), so two configs
that differ only in lr, clip, optimizer, beta or weight decay start from the same weights
and see the same batches, and the comparison of their repeats is paired.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from vaegrid.errors import InputError
from vaegrid.layout import TrialFiles
from vaegrid.models.base import BaseVAE
from vaegrid.safeio import ensure_dir, open_file, read_bytes, save_with, write_atomic
from vaegrid.status import COMPLETED, DIVERGED, INTERRUPTED, PAUSED
from vaegrid.study.axes import PLUGINS
from vaegrid.study.core import TrialConfig, derive_seed
from vaegrid.study.plugins import load_factory
from vaegrid.study.sizes import EVAL_ROWS
from vaegrid.train import provenance
from vaegrid.train.data import binarize, image_shape
from vaegrid.train.model import importance_nll, iwae_terms, make_model
from vaegrid.train.records import EpochRecord, Metrics, TrialResult, ValNll
from vaegrid.train.weights import load_bounded

EVAL_CHUNK = EVAL_ROWS  # images per forward pass when evaluating a whole split


OnEpoch = Callable[[EpochRecord], None]


def device_kind(device: torch.device) -> str:
    """What a trial's numbers depend on besides its config: the device model and torch.

    Two kinds of device (or two torch releases) give different floating-point results for
    the same draws, so a trial is never continued on another kind than it started on.
    """
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return provenance.device_kind(name)


class DeviceMismatch(Exception):
    """A checkpoint made on another kind of device (or torch) than the one resuming it."""


# torch's layers draw their initial weights from the process-wide generator. Trials that
# share a process (a Dask worker runs K of them in threads) must not reseed it under each
# other's feet: found by the cluster test, where two inits overlapped under load.
_INIT_LOCK = threading.Lock()


def build_model(cfg: TrialConfig, device: torch.device | str) -> BaseVAE:
    """The trial's model with its seeded initial weights, on ``device``."""
    if cfg.model in PLUGINS:  # imported before seeding: an import that draws numbers
        load_factory(cfg.model)  # must not shift the first trial's weights
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, cfg.repeat, cfg.hidden, cfg.latent, "init"))
        model = make_model(cfg.axis_values(), image_shape(cfg.data))
    return model.to(device)


@torch.inference_mode()
def evaluate(model: BaseVAE, x: torch.Tensor, seed: int) -> Metrics:
    """Mean loss terms of ``x`` in eval mode, with one z per image drawn from ``seed``."""
    was_training = model.training
    model.eval()
    g = torch.Generator(x.device).manual_seed(seed)
    eps = torch.randn(len(x), model.latent, generator=g, device=x.device)
    recon = x.new_zeros(())
    kl = x.new_zeros(())
    for start in range(0, len(x), EVAL_CHUNK):
        terms = model(x[start : start + EVAL_CHUNK], eps[start : start + EVAL_CHUNK])
        recon += terms.recon.sum()
        kl += terms.kl.sum()
    model.train(was_training)
    r, k = (recon / len(x)).item(), (kl / len(x)).item()
    return Metrics(r + k, r, k)


def run_trial(
    cfg: TrialConfig,
    train_x: torch.Tensor,
    val_x: torch.Tensor,
    files: TrialFiles,
    on_epoch: OnEpoch | None = None,
    stop: threading.Event | None = None,
    stop_at: int | None = None,
    nll_samples: int = 0,
    nll_when_paused: bool = False,
) -> TrialResult:
    """Train ``cfg`` on the device that holds ``train_x``, continuing from a checkpoint if any.

    Args:
        cfg: The trial.
        train_x: Training split, ``[n, C x H x W]`` in [0, 1], on the trial's device.
        val_x: Validation split, same layout and device.
        files: The trial's folder (created if missing).
        on_epoch: Called after each epoch's checkpoint is on disk. On resume it is first
            called again for the epochs restored from the checkpoint, so it must be
            idempotent: a store that missed the last commit catches up.
        stop: Set by another thread to end the run at the next batch (its driver is gone,
            its lease lost): ``interrupted``, with the epochs finished so far.
        stop_at: Train only up to this epoch (a halving rung) and return ``paused`` with
            the checkpoint kept; None (or ``cfg.epochs`` or more) trains to the end.
            Stopping and going on later computes exactly what one run would.
        nll_samples: k > 0: the importance-sampled validation NLL with k samples per image
            is computed once training ends (completed), and when ``nll_when_paused``, at
            the epoch it pauses at too (a halving rung that compares by it). Its draws come
            from (study seed, repeat, epoch): the same value however the run was cut.

    Returns:
        ``completed`` with the history, ``diverged`` with the epoch and cause, or ``paused``
        when ``stop_at`` comes before the last epoch (also when the checkpoint is already
        at or past it).

    Raises:
        ValueError: the folder holds another trial's files.
        DeviceMismatch: its checkpoint was made on another kind of device or torch.
        InputError: a file of the trial's folder is a symbolic link.
    """
    ensure_dir(files.folder)
    _write_config(cfg, files)
    device = train_x.device
    model = build_model(cfg, device)
    optimizer = make_optimizer(cfg, model.parameters())
    identity = {"key": cfg.key, "model": cfg.version, "device": device_kind(device)}
    history = _restore(files.checkpoint, model, optimizer, device, identity)
    for record in history:
        if on_epoch:
            on_epoch(record)
    val_seed = derive_seed(cfg.seed, cfg.repeat, "val")
    last = cfg.epochs if stop_at is None else min(stop_at, cfg.epochs)
    with open_file(files.log, "a") as log:
        # A worker killed between saving an epoch's checkpoint and logging it left that line
        # out: it is written now, from the checkpoint, before the next epoch's.
        logged = _last_logged_epoch(files.log)
        log.writelines(_log_line(r, cfg.epochs) for r in history if r.epoch > logged)
        for epoch in range(len(history) + 1, last + 1):
            started = time.perf_counter()
            try:
                train = _train_epoch(model, optimizer, train_x, cfg, epoch, stop)
                val = evaluate(model, val_x, val_seed)
                if not math.isfinite(val.elbo):
                    raise _Diverged("non-finite validation loss")
            except _Diverged as d:
                log.write(f"epoch {epoch}: diverged: {d}\n")
                return TrialResult(DIVERGED, history, f"{d} in epoch {epoch}", epoch)
            except _Stopped:
                log.write(f"epoch {epoch}: stopped (driver gone, lease lost or worker retiring)\n")
                return TrialResult(INTERRUPTED, history)
            record = EpochRecord(epoch, train, val, time.perf_counter() - started)
            history.append(record)
            _save_checkpoint(files.checkpoint, model, optimizer, history, identity)
            log.write(_log_line(record, cfg.epochs))
            log.flush()
            if on_epoch:
                on_epoch(record)
    k = nll_samples if len(history) == cfg.epochs or nll_when_paused else 0
    return _end(model, val_x, cfg, history, files, identity, k)


def _end(
    model: BaseVAE,
    val_x: torch.Tensor,
    cfg: TrialConfig,
    history: list[EpochRecord],
    files: TrialFiles,
    identity: dict[str, str],
    nll_samples: int,
) -> TrialResult:
    """A run that trained to its last epoch, or paused at a rung: its validation NLL with
    ``nll_samples`` (0: none), and at the end its final weights, stamped."""
    nll = val_nll(model, val_x, cfg, len(history), nll_samples) if nll_samples else None
    if nll is not None and not math.isfinite(nll.nll):
        return _nll_diverged(history, nll)
    if len(history) < cfg.epochs:  # stopped at a rung: no final weights yet
        return TrialResult(PAUSED, history, nll=nll)
    if not files.weights.exists():  # stamped, as the checkpoint: a copy is caught
        final = {"identity": identity, "file": "weights", "model": model.state_dict()}
        save_with(files.weights, torch.save, final)
    return TrialResult(COMPLETED, history, nll=nll)


def _nll_diverged(history: list[EpochRecord], nll: ValNll) -> TrialResult:
    """A validation NLL that is not finite: the trial's result, as a non-finite loss is."""
    return TrialResult(
        DIVERGED, history, f"non-finite validation NLL at epoch {nll.epoch}", nll.epoch
    )


def val_nll(model: BaseVAE, val_x: torch.Tensor, cfg: TrialConfig, epoch: int, k: int) -> ValNll:
    """The importance-sampled NLL of the validation split with ``k`` samples per image."""
    started = time.perf_counter()
    g = torch.Generator(val_x.device).manual_seed(
        derive_seed(cfg.seed, cfg.repeat, "val-nll", epoch)
    )
    nll = importance_nll(model, val_x, k, g).mean().item()
    return ValNll(epoch, nll, k, time.perf_counter() - started)


_LOG_TAIL = 64 << 10  # bytes of an existing log read back on resume: its last lines


def _last_logged_epoch(path: Path) -> int:
    """The epoch of the last ``epoch N/M`` line in the log's tail, 0 when there is none."""
    with open_file(path, "rb") as f:
        f.seek(max(0, f.seek(0, io.SEEK_END) - _LOG_TAIL))
        tail = f.read(_LOG_TAIL).decode("utf-8", "replace")
    epochs = re.findall(r"^epoch (\d{1,9})/\d+ ", tail, flags=re.MULTILINE)
    return int(epochs[-1]) if epochs else 0


def _log_line(r: EpochRecord, epochs: int) -> str:
    return (
        f"epoch {r.epoch}/{epochs} train elbo {r.train.elbo:.3f} val elbo {r.val.elbo:.3f} "
        f"recon {r.val.recon:.3f} kl {r.val.kl:.3f} ({r.seconds:.2f}s)\n"
    )


def make_optimizer(cfg: TrialConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The config's optimizer: adam and sgd add ``weight_decay`` x w to the gradient (L2),
    adamw decays the weights apart from it (Loshchilov & Hutter); sgd uses ``momentum``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class _Diverged(Exception):
    """A non-finite loss or gradient norm: the trial's result, raised only inside this module."""


class _Stopped(Exception):
    """The run was asked to stop (``run_trial``'s ``stop``); raised only inside this module."""


def _train_epoch(
    model: BaseVAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    cfg: TrialConfig,
    epoch: int,
    stop: threading.Event | None = None,
) -> Metrics:
    """One pass over ``x``, returning the train metrics.

    Raises:
        _Diverged: a loss or gradient norm was not finite (the first one is named).

    Nothing here waits for the device: losses and gradient norms stay tensors and are
    checked for finiteness once, at the end of the epoch.
    """
    model.train()
    device = x.device
    g = torch.Generator(device).manual_seed(derive_seed(cfg.seed, cfg.repeat, "epoch", epoch))
    perm = torch.randperm(len(x), generator=g, device=device)
    draw = cfg.data.binarize == "dynamic"  # a fresh binary image of every image each epoch
    # read once: a setting is looked up by name, and the loop below runs every batch
    k = cfg.samples if cfg.objective == "iwae" else 0
    beta, clip = cfg.beta, cfg.clip
    batch = cfg.batch_size
    params = list(model.parameters())
    losses, norms, sums = [], [], []
    n = 0  # images seen
    # A last batch of one image is dropped: BatchNorm cannot normalise a single sample.
    for start in range(0, len(x) - 1, batch):
        if stop is not None and stop.is_set():  # a flag read: nothing waits for the device
            raise _Stopped
        xb = x.index_select(0, perm[start : start + batch])
        if draw:
            xb = binarize(xb, cfg.seed, cfg.repeat, "epoch", epoch, "batch", start)
        n += len(xb)
        if k:  # Burda et al.'s bound; the metrics stay the ELBO's
            eps = torch.randn(k, len(xb), model.latent, generator=g, device=device)
            bound, terms = iwae_terms(model, xb, eps)
            loss = bound.mean()
        else:
            eps = torch.randn(len(xb), model.latent, generator=g, device=device)
            terms = model(xb, eps)
            # beta weighs the KL in what is minimised (a beta-VAE); the metrics stay the ELBO's.
            loss = (terms.recon + beta * terms.kl).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(params, clip))
        optimizer.step()
        losses.append(loss.detach())
        sums.append(torch.stack([terms.recon.detach().sum(), terms.kl.detach().sum()]))
    bad_loss = _first_nonfinite(losses)
    bad_norm = _first_nonfinite(norms)
    if bad_loss is not None and (bad_norm is None or bad_loss <= bad_norm):
        raise _Diverged(f"non-finite loss at batch {bad_loss + 1}")
    if bad_norm is not None:
        raise _Diverged(f"non-finite gradient norm at batch {bad_norm + 1}")
    recon, kl = (torch.stack(sums).sum(0) / n).tolist()
    return Metrics(recon + kl, recon, kl)


def _first_nonfinite(values: Sequence[torch.Tensor]) -> int | None:
    finite = torch.isfinite(torch.stack(list(values)))
    if bool(finite.all()):
        return None
    return int((~finite).nonzero()[0, 0])


def _write_config(cfg: TrialConfig, files: TrialFiles) -> None:
    path = files.config
    if path.exists() or path.is_symlink():
        try:
            stored = TrialConfig.from_json(read_bytes(path).decode()).key
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            stored = None  # unreadable: certainly not this trial's
        if stored != cfg.key:
            raise ValueError(f"{files.folder} holds another trial's files")
        return
    write_atomic(path, json.dumps(json.loads(cfg.to_json()), indent=2) + "\n")


def _restore(
    path: Path,
    model: BaseVAE,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    identity: dict[str, str],
) -> list[EpochRecord]:
    if not path.exists() and not path.is_symlink():
        return []
    # Model and Adam's two moments, 4 bytes each, and the metrics: sized before reading.
    limit = 4 * 4 * sum(p.numel() for p in model.parameters()) + (16 << 20)
    try:
        state = load_bounded(path, limit, device)
        stored = state["identity"]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = [_record(r) for r in state["history"]]
    except InputError:
        raise
    except Exception as e:  # truncated, not a checkpoint, another shape: never half-loaded
        raise ValueError(f"{path}: not a readable checkpoint of this trial ({e})") from None
    for field in ("key", "model", "device"):
        if stored.get(field) != identity[field]:
            if field == "device":
                raise DeviceMismatch(
                    f"{path} was made on {stored.get(field)}, this worker is {identity[field]}: "
                    "a trial never continues on another kind of device or torch (its numbers "
                    "would mix two computations); run it where such a device is"
                )
            raise ValueError(
                f"{path}: made for {field} {stored.get(field)!r}, not {identity[field]!r}"
            )
    return history


def _save_checkpoint(
    path: Path,
    model: BaseVAE,
    optimizer: torch.optim.Optimizer,
    history: list[EpochRecord],
    identity: dict[str, str],
) -> None:
    state = {
        "identity": identity,  # what it belongs to, checked on resume (as nanoGPT's config)
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": [dataclasses.asdict(r) for r in history],
    }
    save_with(path, torch.save, state)


def _record(raw: dict[str, Any]) -> EpochRecord:
    return EpochRecord(raw["epoch"], Metrics(**raw["train"]), Metrics(**raw["val"]), raw["seconds"])
