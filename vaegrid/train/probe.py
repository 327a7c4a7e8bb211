"""The probe of the study's plug-ins, run in a child process before any trial (the driver
stays torch-free): ``python -m vaegrid.train.probe JOB_JSON ANSWERS`` writes to the file
ANSWERS one JSON line for a plug-in data set, ``{"images": {"shape", "train", "test",
"digest"}, "error"}``, then one per model, ``{"model", "parameters", "error"}``.

The data set is loaded and checked as every worker loads it (train/data.py), and gives the
images' shape and counts the study's bounds are then checked with. Each model is built at
the given settings (the largest of the study) for that shape, encodes a batch of 4 images
and decodes their codes; then one training step. Whatever goes wrong (an exception at
construction, wrong shapes, non-finite outputs or gradients) is its error, in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from vaegrid.errors import InputError, first_line
from vaegrid.study import datasets
from vaegrid.study.axes import AXES, PLUGINS, applies
from vaegrid.study.core import DataSpec, Probed, Study
from vaegrid.study.sizes import MNIST_SHAPE

PROBE_TIMEOUT_S = 300  # loading a plug-in data set, stepping every plug-in model, torch's import
PROBES_MAX = 64  # builds per model: its string settings' combinations, the first this many


def check_plugins(study: Study, root: Path) -> tuple[Study, Probed]:
    """Probe the study's plug-ins in a child process: its data set when a plug-in's (loaded
    from ``root`` and checked, as workers load it), then every plug-in model at its largest
    settings on those images.

    Returns:
        The study (a plug-in data set's digest in its data, so in its keys) and what was
        probed: its images (shape and counts; its bounds checked against them) and its
        plug-in models' work.

    Raises:
        InputError: the data set failed to load or its images are not allowed, the study's
            settings do not fit them (study/validate.py's check_sizes), or a model failed (named
            with its distribution, what went wrong) or has more parameters than a study may
            have.
    """
    from vaegrid.study.validate import MODEL_PARAMETERS_MAX, check_sizes

    by_axis = dict(study.settings)
    models = [m for m in by_axis["model"] if m in PLUGINS]
    plugin_data = study.data.dataset not in datasets.BUILTIN
    if not models and not plugin_data:
        return study, Probed(datasets.BUILTIN[study.data.dataset])
    todo = [settings for model in models for settings in _probe_settings(model, by_axis)]
    job = {"models": todo, "root": str(root), "data": dataclasses.asdict(study.data)}
    what = ", ".join([f"data set {study.data.dataset}"] * plugin_data + models)
    answers, crash = _run_probe(job, study.source, what)
    found: dict[str, dict[str, Any]] = {}
    measured: dict[str, list[tuple[dict[str, Any], list[int]]]] = {}
    loaded: dict[str, Any] | None = None  # the data set's answer
    for line in answers:
        try:
            row = json.loads(line)
            if "images" in row:
                loaded = row
                continue
            kept = found.get(row["model"])
            if kept is None or (row["error"] and not kept["error"]):  # its first failure
                found[row["model"]] = row
            elif not kept["error"]:
                kept["parameters"] = max(kept["parameters"], row["parameters"])
            if not row["error"] and row.get("macs"):
                measured.setdefault(row["model"], []).append((row["settings"], row["macs"]))
        except (ValueError, KeyError, TypeError):
            continue
    if plugin_data:
        if loaded is None:
            raise InputError(f"{study.source}: data set {study.data.dataset} crashed its probe: "
                             f"{crash}")  # fmt: skip
        if loaded["error"]:
            raise InputError(f"{study.source}: {loaded['error']}")
        info = loaded["images"]
        images = datasets.Images(tuple(info["shape"]), info["train"], info["test"], info["digest"])
        data = dataclasses.replace(study.data, images=info["digest"])
        study = dataclasses.replace(study, data=data)
        check_sizes(study, images)
    else:
        images = datasets.BUILTIN[study.data.dataset]
    for model in models:
        plugin = PLUGINS[model]
        who = f"model {model} ({plugin.dist} {plugin.version})"
        row = found.get(model)
        if row is None:
            raise InputError(f"{study.source}: {who} crashed its probe: {crash}")
        if row["error"]:
            raise InputError(f"{study.source}: {who} failed its probe: {row['error']}")
        if row["parameters"] > MODEL_PARAMETERS_MAX:
            raise InputError(
                f"{study.source}: {who} has {row['parameters']} parameters at the study's "
                f"largest settings; expected at most {MODEL_PARAMETERS_MAX}"
            )
    return study, Probed(images, _plugin_work(measured, images.shape))


def _probe_settings(model: str, by_axis: dict[str, Any]) -> list[dict[str, Any]]:
    """The settings ``model`` is probed at: every combination of the string choices that
    apply to it (at most PROBES_MAX), each size at its largest."""
    at: dict[str, Any] = {"model": model}
    choices = [a for a in AXES if a.kind is str and a.name != "model" and applies(a, at)]
    out = []
    combos = itertools.product(*(by_axis[a.name] for a in choices))
    for combo in itertools.islice(combos, PROBES_MAX):
        settings = {**dict(zip([a.name for a in choices], combo, strict=True)), **at}
        for axis in AXES:
            if axis.name not in settings:
                values = by_axis[axis.name]
                settings[axis.name] = values[0] if axis.kind is str else max(values)
        out.append({a.name: settings[a.name] if applies(a, settings) else a.default[0]
                    for a in AXES})  # fmt: skip
    return out


def _plugin_work(
    measured: dict[str, list[tuple[dict[str, Any], list[int]]]], shape: tuple[int, int, int]
) -> tuple[tuple[str, float, float], ...]:
    """Per plug-in model, what its encoder and decoder measured (torch's FLOP counter on
    the probe) against the cost model's one-hidden-layer guess at the same settings: the
    factors the cost model scales its guess by (cost.py)."""
    from vaegrid.cost import forward_macs

    out = []
    for model, rows in sorted(measured.items()):
        guess = [forward_macs(settings, shape) for settings, _ in rows]
        enc = sum(m[0] for _, m in rows) / max(1, sum(g[0] for g in guess))
        dec = sum(m[1] for _, m in rows) / max(1, sum(g[1] for g in guess))
        if enc > 0 and dec > 0:
            out.append((model, enc, dec))
    return tuple(out)


def _run_probe(job: dict[str, Any], source: str, what: str) -> tuple[list[str], str]:
    """Run the probe's child process on ``job``: its answers (JSON lines, in a file of their
    own, so that what a plug-in prints cannot garble them) and, for a child that answered
    short, what it said last. The child runs in a session of its own: a plug-in's leftover
    processes are ended with it, and cannot hold the probe up.

    Raises:
        InputError: the child ran past PROBE_TIMEOUT_S.
    """
    with tempfile.TemporaryDirectory(prefix="vaegrid-probe-") as tmp:
        answers, said = Path(tmp) / "answers", Path(tmp) / "said"
        with open(said, "wb") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "vaegrid.train.probe", json.dumps(job), str(answers)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
            try:
                code = child.wait(PROBE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                with contextlib.suppress(OSError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        if code is None:
            raise InputError(
                f"{source}: probing the plug-ins ({what}) took more than {PROBE_TIMEOUT_S} s"
            )
        lines = answers.read_text().splitlines() if answers.exists() else []
        with open(said, "rb") as f:  # its last words: the end of what it printed
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            tail = f.read().decode("utf-8", "replace").strip().splitlines()
    last = tail[-1][:200] if tail else "no output"
    return lines, f"it exited with code {code} before answering: {last}"


def probe(settings: dict[str, Any], shape: tuple[int, int, int] = MNIST_SHAPE) -> dict[str, Any]:
    import torch

    from vaegrid.train.model import make_model

    out: dict[str, Any] = {"model": settings["model"], "parameters": 0, "error": None,
                           "settings": settings, "macs": None}  # fmt: skip
    try:
        torch.manual_seed(0)
        model = make_model(settings, shape)
        out["parameters"] = sum(p.numel() for p in model.parameters())
        pixels = shape[0] * shape[1] * shape[2]
        x = torch.rand(4, pixels).round()
        mu, _ = model.encode(x)  # PluginVAE checks the shapes, here and in every trial
        model.decode(mu)
        out["macs"] = _counted(model, x, mu)
        terms = model(x, torch.randn(4, settings["latent"]))
        loss = terms.elbo.mean()
        if not torch.isfinite(loss):
            raise ValueError("its loss on 4 images is not finite")
        loss.backward()
        if not all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters()):
            raise ValueError("its gradients on 4 images are not finite")
        if out["parameters"] == 0:
            raise ValueError("it has no parameters to train")
    except Exception as e:
        which = ", ".join(f"{k} {v}" for k, v in settings.items() if isinstance(v, str)
                          and k != "model" and k in _applying(settings))  # fmt: skip
        at = f" (with {which})" if which else ""
        out["error"] = f"{type(e).__name__}: {first_line(str(e))}{at}"[:300]
    return out


def _counted(model: Any, x: Any, mu: Any) -> list[int] | None:
    """Multiply-adds per image of the model's encoder and decoder, as torch's FLOP counter
    counts them on the probe's 4 images; None when it cannot count them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.no_grad():
            with FlopCounterMode(display=False) as counted:
                model.encode(x)
            encoder = counted.get_total_flops()
            with FlopCounterMode(display=False) as counted:
                model.decode(mu)
            decoder = counted.get_total_flops()
    except Exception:
        return None
    return [encoder // 8, decoder // 8]  # 2 FLOPs a multiply-add, 4 images


def _applying(settings: dict[str, Any]) -> set[str]:
    return {a.name for a in AXES if a.applies is not None and applies(a, settings)}


def probe_images(root: Path, data: DataSpec) -> dict[str, Any]:
    """Load a plug-in data set as a worker does (train/data.py checks it), and say what its
    images are, or why they cannot be used."""
    from vaegrid.train.data import images_digest, plugin_images

    try:
        train, test = plugin_images(root, data)
    except InputError as e:
        return {"images": None, "error": str(e)}
    shape = [int(n) for n in train.shape[1:]]
    counts = {"train": len(train), "test": 0 if test is None else len(test)}
    digest = images_digest(train, test)
    return {"images": {"shape": shape, **counts, "digest": digest}, "error": None}


def main() -> None:
    job = json.loads(sys.argv[1])
    with open(sys.argv[2], "w") as answers:
        _answer(job, answers)


def _answer(job: dict[str, Any], answers: TextIO) -> None:
    raw = job["data"]
    data = DataSpec(**{**raw, "fractions": tuple(raw["fractions"])})
    shape = MNIST_SHAPE
    if data.dataset not in datasets.BUILTIN:
        found = probe_images(Path(job["root"]), data)
        print(json.dumps(found), file=answers, flush=True)
        if found["error"]:
            return
        shape = tuple(found["images"]["shape"])
    for settings in job["models"]:
        print(json.dumps(probe(settings, shape)), file=answers, flush=True)


if __name__ == "__main__":
    main()
