#!/usr/bin/env bash
# Bit-identity of what two checkouts compute: `make identity BASE=/path/to/other/checkout`.
# Runs the smoke study and the halving and binarized smoke studies (bench/identity/) on
# real MNIST ($VAEGRID_DATA) with this checkout and with BASE, on the CPU at K = 2, and
# compares every per-epoch row, trial end, halving stop and Optuna value (bench/rows.py:
# floats as hex). Prints one line per study; exits 1 if any differs.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
base=$(cd "${1:?usage: bench/identity.sh BASE_CHECKOUT}" && pwd)
py="$here/.venv/bin/python"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for study in "$here/studies/smoke.toml" "$here"/bench/identity/*.toml; do
  name=$(basename "$study" .toml)
  for side in here base; do
    root=$([ $side = here ] && echo "$here" || echo "$base")
    PYTHONPATH="$root" "$py" -m vaegrid run "$study" --results "$out/$side" --devices cpu \
      --workers-per-device 2 --no-progress > "$out/$name-$side.log"
    "$py" "$here/bench/rows.py" "$out/$side/$name/study.db" > "$out/$name-$side.json"
  done
  if cmp -s "$out/$name-here.json" "$out/$name-base.json"; then
    echo "$name: identical ($(grep -c '' "$out/$name-here.json") lines of rows)"
  else
    echo "$name: DIFFERENT"; diff "$out/$name-base.json" "$out/$name-here.json" | head -20
    status=1
  fi
done
exit $status
