#!/usr/bin/env bash
# The CUDA path, measured on one lent GPU in well under 8 minutes (bench/gpu_slice.py does
# the work): a slice of the seed grid (the 12 lr 3e-2 trials, 3 epochs) at K = 1, 2, 4
# trials at once (wall, GPU utilisation and memory from nvidia-smi, the full sweep
# extrapolated), the determinism check (K = 1, 2 and 4 give the same rows bit for bit)
# and one trial at batch 1000 on the GPU against the CPU.
#
#   VAEGRID_DATA=/path/to/data bench/gpu.sh [OUT_DIR]
#
# Without a CUDA device it says so and exits 0 (GPU_SH_DEVICE=cpu runs the same steps on
# the CPU, 1 epoch, to test this script where there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${GPU_SH_DEVICE:-cuda:0}
OUT=${1:-${OUT:-$(mktemp -d)}}
if [ "$DEVICE" != cpu ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu.sh: no CUDA device here (torch.cuda.is_available() is False): skipped"
    exit 0
fi
: "${VAEGRID_DATA:?gpu.sh: set VAEGRID_DATA to the folder that holds MNIST/raw}"
mkdir -p "$OUT"
exec "$PY" bench/gpu_slice.py --device "$DEVICE" --out "$OUT"
