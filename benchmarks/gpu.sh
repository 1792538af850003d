#!/usr/bin/env bash
# The karras_jax benchmark suite sized for one GPU (H100/H200 class), in under 5 minutes.
#
#   benchmarks/gpu.sh OUT_DIR
#
# Needs JAX with CUDA, flax and numpy (PyTorch with CUDA and diffusers for measurement 2;
# without them it is recorded as skipped). No network is used. Writes to OUT_DIR:
#   <machine>.json         every raw figure (replaced after each measurement; fold it into
#                          benchmarks/results with python -m benchmarks.store FILE --out ...)
#   report.md              the printed tables
#   log.txt                progress and warnings
# Environment: PYTHON (default python3), BUDGET_S (default 220: measurements not yet started
# by then are skipped), TIMEOUT_S (default 295: hard stop), PRESET (default gpu; quick to
# try the script out on a CPU).
set -euo pipefail

out="${1:?usage: benchmarks/gpu.sh OUT_DIR}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$(command -v python3 || command -v python)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$root"

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1
export PRESET="${PRESET:-gpu}"
# JAX and PyTorch share the GPU: leave PyTorch room instead of JAX's default 75%.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}"

"$py" - <<'PY' 2>&1 | tee "$out/log.txt"
import importlib.util, sys
missing = [m for m in ("jax", "flax", "numpy", "karras_jax") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu.sh: cannot import {missing}; install them (pip install -e . from the repo root).")
import jax
print("devices:", jax.devices())
if jax.default_backend() != "gpu":
    import os
    print(f"gpu.sh: WARNING: JAX has no GPU here; running the {os.environ['PRESET']} preset on",
          jax.default_backend())
for optional in ("torch", "diffusers"):
    if importlib.util.find_spec(optional) is None:
        print(f"gpu.sh: {optional} not installed; measurement 2 will be skipped or partial")
PY

timeout --kill-after=5 "${TIMEOUT_S:-295}" "$py" benchmarks/run.py "--$PRESET" --out "$out" \
    --budget-s "${BUDGET_S:-220}" 2>>"$out/log.txt" | tee "$out/report.md"
