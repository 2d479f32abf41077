#!/bin/bash
# GPU check for issue 7: a CUDA-vs-CPU engine check, then the paper-size benchmark (float64, float32).
# Usage on the device machine: bash scripts/gpu_check.sh   (writes under $OUT)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH
OUT=${OUT:-/tmp/gpu_out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout 90 python3 - <<'PY' 2>&1 | tee $OUT/cuda_check.log
import torch, sys
sys.path.insert(0, "scripts")
import bench_lsr as b
from pinnlsr import engine
torch.backends.cuda.matmul.allow_tf32 = False
rc, oc, thc, _ = b.setup("cpu", torch.float64, torch.device("cpu"), scale_n=0.3)
rg, og, thg, _ = b.setup("cpu", torch.float64, torch.device("cuda"), scale_n=0.3)
v = torch.randn(rc.m, 20, dtype=torch.float64)
ac = engine.apply(rc, thc, v); ag = engine.apply(rg, thg, v.cuda())
print("cuda vs cpu G V max rel diff", float((ag.cpu() - ac).abs().max() / ac.abs().max()))
om = b.make_omega(oc, 40, 10, torch.float64, "cpu")
sc = engine.lsr_step(rc, oc, thc, 40, omega=om); sg = engine.lsr_step(rg, og, thg, 40, omega=om.cuda())
print("cuda vs cpu linres", sc.linearized_residual, sg.linearized_residual)
PY
timeout 280 python3 scripts/bench_lsr.py --size paper --device cuda --dtype float64 --threads 8 --processes 0 --out $OUT/paper64 2>&1 | tee $OUT/paper64.log
timeout 110 python3 scripts/bench_lsr.py --size paper --device cuda --dtype float32 --threads 8 --processes 0 --no-scan --out $OUT/paper32 2>&1 | tee $OUT/paper32.log
