#!/usr/bin/env bash
# One GPU check of t3s, about 8 minutes on one H100/H200; prints one table (see gpu_check.py).
#   benchmarks/gpu_check.sh                 # CUDA: bf16 probe, profile, masked training, gpu tests, vLLM, 8K/32K profile
#   benchmarks/gpu_check.sh --device cpu    # dry path: tiny model and sizes, a few minutes on a CPU
# Python: $PYTHON, else the checkout's .venv, else python3; this checkout's src/ comes first on the path.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$here/gpu_check.py" "$@"
