"""bench/gpu.sh's work: the seed grid's 12 lr 3e-2 trials for 3 epochs at K = 1, 2, 4 on
one device (wall, utilisation and memory sampled by nvidia-smi every 0.5 s, the full
54-trial, 15-epoch sweep extrapolated by the cost model), the rows of the three runs
compared bit for bit, and one trial at batch 1000 timed on the device and on the CPU.
Prints a summary and writes it to OUT/gpu.txt."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vaegrid.cost import CostModel
from vaegrid.study.core import expand
from vaegrid.study.load import load_study

sys.path.insert(0, str(Path(__file__).parent))
from rows import dump  # bench/rows.py: the rows as hex floats

SLICE = """
name = "slice"
seed = 0
[train]
epochs = {epochs}
batch_size = 1000
lr = 3e-2
[grid]
hidden = [400, 600, 800]
latent = [100, 200]
clip = [1.0, 2e-4]
repeats = 2
"""


def sampler(out: Path) -> subprocess.Popen[bytes] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    query = "--query-gpu=utilization.gpu,memory.used"
    with open(out, "wb") as f:
        return subprocess.Popen(
            ["nvidia-smi", query, "--format=csv,noheader,nounits", "-lms", "500"], stdout=f
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    epochs = 1 if args.device == "cpu" else 3
    study_file = args.out / "slice.toml"
    study_file.write_text(SLICE.format(epochs=epochs))
    lines = [f"device {args.device}; slice: 12 trials x {epochs} epochs, batch 1000"]
    walls, found = {}, {}
    for k in (1, 2, 4):
        results = args.out / f"k{k}"
        smi = sampler(args.out / f"smi-k{k}.csv")
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "vaegrid", "run", str(study_file), "--results", str(results),
             "--devices", args.device, "--workers-per-device", str(k), "--no-progress"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        walls[k] = time.monotonic() - start
        if smi is not None:
            smi.terminate()
            smi.wait()
        if done.returncode != 0:
            sys.exit(f"gpu_slice: K = {k} exited {done.returncode}: {done.stderr[-500:]}")
        found[k] = dump(str(results / "slice" / "study.db"))["epochs"]  # bit for bit
        util, mem = [], []
        for line in (args.out / f"smi-k{k}.csv").read_text().splitlines() if smi else []:
            u, m = (float(x) for x in line.split(","))
            util.append(u)
            mem.append(m)
        busy = (
            f", GPU busy {sum(util) / len(util):.0f}% mean, {max(mem):,.0f} MiB peak"
            if util
            else ""
        )
        lines.append(f"K = {k}: wall {walls[k]:.1f} s{busy}")
    same = found[1] == found[2] == found[4]
    lines.append(f"rows bit-identical at K = 1, 2, 4: {same} ({len(found[1])} rows)")
    # The full seed sweep from the best K's wall: the cost model's work of the whole grid
    # over the slice's (each trial's 15 epochs against the slice's).
    seed = load_study(Path("studies/seed.toml"))
    model = CostModel.of(seed)
    full = sum(model.work(c, 0, c.epochs) for c in expand(seed))
    part = sum(model.work(c, 0, epochs) for c in expand(load_study(study_file)))
    best = min(walls, key=walls.__getitem__)
    lines.append(
        f"full seed sweep (54 trials x 15 epochs, lr = 1 diverging at once not discounted): "
        f"about {walls[best] * full / part / 60:.1f} min at K = {best} (work {full / part:.1f}x "
        "the slice's)"
    )
    for device in dict.fromkeys([args.device, "cpu"]):
        done = subprocess.run(
            [sys.executable, "-c", TRIAL, device], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            sys.exit(f"gpu_slice: the one-trial timing failed on {device}: {done.stderr[-500:]}")
        lines.append(f"one trial (hidden 400, latent 100, batch 1000, 1 epoch) on {device}: "
                     f"{done.stdout.strip()}")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    (args.out / "gpu.txt").write_text(text + "\n")


TRIAL = """
import sys, tempfile, time
from pathlib import Path
import torch
from vaegrid.layout import TrialFiles
from vaegrid.study.core import DataSpec, TrialConfig
from vaegrid.train.data import data_dir, load_splits
from vaegrid.train.trial import run_trial
device = sys.argv[1]
if device == "cpu":
    torch.set_num_threads(1)
splits = load_splits(data_dir(None), DataSpec(), 0, device)
cfg = TrialConfig.make(0, DataSpec(), hidden=400, latent=100, lr=3e-2, clip=1.0, epochs=1)
with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    run_trial(cfg, splits.train, splits.val, TrialFiles(Path(tmp)))
    took = time.perf_counter() - start
print(f"{took:.2f} s for 56,000 + 7,000 images ({56_000 / took:,.0f} training images/s)")
"""


if __name__ == "__main__":
    main()
