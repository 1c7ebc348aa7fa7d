#!/usr/bin/env bash
# One short GPU check (issue: main job / GPU check): a full-size CSMCIR training step and base-size MMAPS
# generation, timed with peak memory, written to benchmarks/results/gpu_check.md. CPU-only runs never need it.
# Usage on a GPU machine with the environment built (make venv TORCH_SPEC=... for a CUDA torch):
#   bash benchmarks/gpu_check.sh            # full sizes (needs CUDA)
#   bash benchmarks/gpu_check.sh --smoke    # tiny sizes, any device: checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true
exec "$PY" benchmarks/gpu_check.py "$@"
