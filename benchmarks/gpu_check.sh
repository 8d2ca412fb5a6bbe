#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): one NVIDIA GPU, no network. The machine brings
# Python 3.12 with jax (CUDA), flax, optax, orbax, torch and transformers; the project's other
# dependencies come as py3.12 wheels in ${WHEELS:-wheels/} (pip download -r requirements.txt
# --python-version 3.12 --only-binary=:all: -d wheels/ on a connected machine). Under 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d "${WHEELS:-wheels}" ]; then
  python -m pip install -q --no-index --find-links "${WHEELS:-wheels}" --no-deps -e . -r requirements.txt
fi
export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}" XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout "${TIMEOUT_S:-450}" python -m benchmarks.gpu_check --shape "${SHAPE:-qwen2.5-0.5b}" --json "${OUT:-gpu_check.json}"
