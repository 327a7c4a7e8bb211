"""The layers the code keeps, at run time: the driver, ``status`` and ``plan`` load no torch,
pandas or matplotlib (the import contract in pyproject.toml checks the parts' order)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HEAVY = ("torch", "torchvision", "pandas", "matplotlib")

PROBE = """
import json, sys
from vaegrid.cli import main
study, results, data = sys.argv[1:4]
codes = [
    main(["plan", study]),
    main(["run", study, "--results", results, "--data-dir", data, "--devices", "cpu",
          "--workers-per-device", "1", "--no-progress"]),
    main(["status", results + "/tiny"]),
]
print(json.dumps([codes, sorted(m for m in {heavy} if m in sys.modules)]))
"""


def test_the_driver_status_and_plan_load_no_torch_pandas_or_matplotlib(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path
) -> None:
    """A sweep's driver process runs for hours beside its workers: torch (seconds to
    import, hundreds of MB), pandas and matplotlib are the workers' and the report's."""
    probe = PROBE.replace("{heavy}", repr(set(HEAVY)))
    args = [str(write_study()), str(tmp_path / "r"), str(mnist_root)]
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    codes, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert codes == [0, 0, 0], done.stdout
    assert loaded == [], f"the driver's process loaded {loaded}"
