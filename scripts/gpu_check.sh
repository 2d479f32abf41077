#!/usr/bin/env bash
# The GPU check in one command, for a machine with a CUDA GPU (see scripts/gpu_check.py):
# every pipeline on the GPU at reduced size against the same run on the CPU, the paper-setting LSR
# step in float64 and float32, and the full default burgers1d pipeline; writes $OUT/gpu_check.json.
#     OUT=/tmp/gpu_out bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, installed or not
nvidia-smi --query-gpu=name,memory.total --format=csv || true
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
timeout 560 python scripts/gpu_check.py --device "${DEVICE:-cuda}" --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
