"""The probe of the study's plug-in models, run in a child process before any trial (the
driver stays torch-free): ``python -m vaegrid.train.probe SETTINGS_JSON`` prints one JSON
line per model, ``{"model", "parameters", "error"}``.

Each model is built at the given settings (the largest of the study), encodes a batch of 4
images and decodes their codes; then one training step. Whatever goes wrong (an exception
at construction, wrong shapes, non-finite outputs or gradients) is its error, in one line.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from vaegrid.errors import InputError
from vaegrid.spec.axes import AXES, PLUGINS, applies

if TYPE_CHECKING:
    from vaegrid.spec.study import Study

PROBE_TIMEOUT_S = 300  # building and stepping every plug-in model of a study, torch's import
PROBES_MAX = 64  # builds per model: its string settings' combinations, the first this many


def check_plugins(study: Study) -> None:
    """Probe every plug-in model of ``study`` at its largest settings in a child process.

    Raises:
        InputError: a model failed (named with its distribution, what went wrong), or has
            more parameters than a study may have.
    """
    from vaegrid.spec.load import MODEL_PARAMETERS_MAX

    by_axis = dict(study.settings)
    models = [m for m in by_axis["model"] if m in PLUGINS]
    if not models:
        return
    todo = []
    for model in models:
        # every combination of the choices that apply to it (a few), each size at its largest
        at: dict[str, Any] = {"model": model}
        choices = [a for a in AXES if a.kind is str and a.name != "model" and applies(a, at)]
        for combo in itertools.islice(
            itertools.product(*(by_axis[a.name] for a in choices)), PROBES_MAX
        ):
            settings = {**dict(zip([a.name for a in choices], combo, strict=True)), **at}
            for axis in AXES:
                if axis.name not in settings:
                    values = by_axis[axis.name]
                    settings[axis.name] = values[0] if axis.kind is str else max(values)
            todo.append({a.name: settings[a.name] if applies(a, settings) else a.default[0]
                         for a in AXES})  # fmt: skip
    try:
        done = subprocess.run(
            [sys.executable, "-m", "vaegrid.train.probe", json.dumps(todo)],
            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise InputError(
            f"{study.source}: probing the plug-in models {', '.join(models)} took more than "
            f"{PROBE_TIMEOUT_S} s"
        ) from None
    found: dict[str, dict[str, Any]] = {}
    for line in done.stdout.splitlines():
        try:
            row = json.loads(line)
            kept = found.get(row["model"])
            if kept is None or (row["error"] and not kept["error"]):  # its first failure
                found[row["model"]] = row
            elif not kept["error"]:
                kept["parameters"] = max(kept["parameters"], row["parameters"])
        except (ValueError, KeyError, TypeError):
            continue
    for model in models:
        plugin = PLUGINS[model]
        who = f"model {model} ({plugin.dist} {plugin.version})"
        row = found.get(model)
        if row is None:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
            raise InputError(f"{study.source}: {who} crashed its probe: {last}")
        if row["error"]:
            raise InputError(f"{study.source}: {who} failed its probe: {row['error']}")
        if row["parameters"] > MODEL_PARAMETERS_MAX:
            raise InputError(
                f"{study.source}: {who} has {row['parameters']} parameters at the study's "
                f"largest settings; expected at most {MODEL_PARAMETERS_MAX}"
            )


def probe(settings: dict[str, Any]) -> dict[str, Any]:
    import torch

    from vaegrid.train.model import make_model

    out: dict[str, Any] = {"model": settings["model"], "parameters": 0, "error": None}
    try:
        torch.manual_seed(0)
        model = make_model(settings)
        out["parameters"] = sum(p.numel() for p in model.parameters())
        x = torch.rand(4, 784).round()
        mu, logvar = model.encode(x)
        want = (4, settings["latent"])
        if tuple(mu.shape) != want or tuple(logvar.shape) != want:
            raise ValueError(
                f"encode gave mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} for 4 "
                f"images, expected {want} each"
            )
        logits = model.decode(mu)
        if tuple(logits.shape) != (4, 784):
            raise ValueError(
                f"decode gave {tuple(logits.shape)} elements per batch of 4, expected images "
                "of 1 x 28 x 28"
            )
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
        lines = str(e).strip().splitlines()
        which = ", ".join(f"{k} {v}" for k, v in settings.items() if isinstance(v, str)
                          and k != "model" and k in _applying(settings))  # fmt: skip
        at = f" (with {which})" if which else ""
        out["error"] = f"{type(e).__name__}: {lines[0] if lines else ''}{at}"[:300]
    return out


def _applying(settings: dict[str, Any]) -> set[str]:
    return {a.name for a in AXES if a.applies is not None and applies(a, settings)}


def main() -> None:
    for settings in json.loads(sys.argv[1]):
        print(json.dumps(probe(settings)), flush=True)


if __name__ == "__main__":
    main()
