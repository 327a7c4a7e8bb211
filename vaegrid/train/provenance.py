"""What a result was computed with: library versions, code version, host, device kind.

Results are bit-identical on one machine with one set of libraries, not across CPUs, GPUs
or torch releases (docs/explanation/computed.md). So every run records what it ran with, and a
trial is only ever continued on the same kind of device and torch. Nothing here imports
torch: the driver uses it too.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path

from vaegrid.version import __version__

# The libraries whose versions can change a number vaegrid reports.
PACKAGES = ("torch", "torchvision", "numpy", "optuna", "pandas", "sqlalchemy", "joblib")


def device_kind(device_name: str) -> str:
    """The identity a trial's numbers depend on: the device model and the torch release.

    ``device_name`` is "cpu" or a CUDA device's name (``torch.cuda.get_device_name``).
    """
    return f"{device_name} / torch {_version('torch')}"


@functools.cache
def versions() -> dict[str, str]:
    """Python, vaegrid (with its git commit when run from a checkout) and :data:`PACKAGES`."""
    out = {"python": platform.python_version(), "vaegrid": __version__}
    commit = _git_commit()
    if commit:
        out["git"] = commit
    for name in PACKAGES:
        out[name] = _version(name)
    out.update(_plugins())
    return out


def _plugins() -> dict[str, str]:
    """Every usable plug-in model and data set installed, as ``plug-in DIST`` -> version:
    report.md's "Computed with" names them (their code computes the numbers too)."""
    from vaegrid.study.axes import PLUGINS as MODELS
    from vaegrid.study.datasets import PLUGINS as DATASETS

    found = [p for p in (*MODELS.values(), *DATASETS.values()) if p.problem is None]
    return {f"plug-in {p.dist}": p.version for p in found}


def host() -> str:
    return socket.gethostname()


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str | None:
    """HEAD of the checkout vaegrid runs from (with ``+dirty`` if it has local changes)."""
    root = Path(__file__).resolve().parent.parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")
