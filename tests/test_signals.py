"""Ctrl-C and SIGTERM at any moment of any command: one line, exit 128 + the signal, no
traceback, nothing lost (slow: real processes, signalled at several moments)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import sweep

pytestmark = pytest.mark.slow


def _signalled(cmd: list[str], after: float, sig: int) -> tuple[int, str, str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "vaegrid", *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # as from a terminal: the signal reaches the process group
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(after)
    import os

    os.killpg(p.pid, sig)
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


@pytest.mark.parametrize("after", [0.2, 0.8, 1.5, 2.5, 4.0])
def test_run_stopped_at_any_moment_is_one_line_and_exit_130_or_143(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path, after: float
) -> None:
    study = write_study(epochs=30)
    cmd = ["run", str(study), "--results", str(tmp_path / "r"), "--data-dir", str(mnist_root)]
    cmd += ["--devices", "cpu", "--no-progress"]
    for sig in (signal.SIGINT, signal.SIGTERM):
        code, out, err = _signalled(cmd, after, sig)
        assert code == 128 + sig, (out, err)
        assert "Traceback" not in err + out, err
        said = [line for line in (out + err).splitlines() if "interrupted" in line]
        assert len(said) == 1, out + err


def test_report_stopped_by_ctrl_c_is_one_line_and_exit_130(
    tmp_path: Path, mnist_root: Path
) -> None:
    import os

    from conftest import TINY_STUDY

    sweep(tmp_path, TINY_STUDY.format(name="tiny", epochs=1), mnist_root)
    cmd = ["report", str(tmp_path / "r" / "tiny"), "--data-dir", str(mnist_root)]
    p = subprocess.Popen(
        [sys.executable, "-m", "vaegrid", *cmd, "--nll-samples", "50000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert p.stderr is not None
    said = []
    for line in p.stderr:  # signalled while it evaluates, whatever the machine's load
        said.append(line)
        if line.startswith("report: testing 1/1"):
            break
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=120)
    err = "".join(said) + err
    assert p.returncode == 130, (out, err)
    assert "Traceback" not in err + out, err
    assert err.count("interrupted (SIGINT)") == 1, err
    assert "report: tested" not in err and "drawing the figures" not in err, err
