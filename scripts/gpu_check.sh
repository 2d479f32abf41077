#!/bin/bash
# GPU check: the paper-size benchmark (float64, float32; no scans), then a CUDA-vs-CPU
# engine check (structured rows incl. the shifted-point periodic term, Cholesky-QR vs Householder)
# and a timing of the small SVD drivers.
# Usage on the device machine: bash scripts/gpu_check.sh   (writes under $OUT)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH
OUT=${OUT:-/tmp/gpu_out}; mkdir -p $OUT
DEV=${DEV:-cuda}
if [ "$DEV" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
  timeout 150 python3 scripts/bench_lsr.py --size paper --device cuda --dtype float64 --threads 8 --processes 0 --no-scan --out $OUT/paper64 2>&1 | tee $OUT/paper64.log
  timeout 90 python3 scripts/bench_lsr.py --size paper --device cuda --dtype float32 --threads 8 --processes 0 --no-scan --out $OUT/paper32 2>&1 | tee $OUT/paper32.log
fi
DEV=$DEV timeout 90 python3 - <<'PY' 2>&1 | tee $OUT/cuda_check.log
import os, sys, time, torch
sys.path.insert(0, "scripts")
import bench_lsr as b
from pinnlsr import engine
dev = torch.device(os.environ["DEV"])
torch.backends.cuda.matmul.allow_tf32 = False
rc, oc, thc, _ = b.setup("cpu", torch.float64, torch.device("cpu"), scale_n=0.3)
rg, og, thg, _ = b.setup("cpu", torch.float64, dev, scale_n=0.3)
v = torch.randn(rc.m, 20, dtype=torch.float64)
eg = engine.StructuredJacobian(rg, thg)
print("plans on", dev, {k: p.describe() for k, p in eg.plans.items()})
ac = engine.apply(rc, thc, v); ag = engine.apply(rg, thg, v.to(dev), engine=eg)
print("device vs cpu G V max rel diff", float((ag.cpu() - ac).abs().max() / ac.abs().max()))
om = b.make_omega(oc, 40, 10, torch.float64, "cpu")
sc = engine.lsr_step(rc, oc, thc, 40, omega=om); sg = engine.lsr_step(rg, og, thg, 40, omega=om.to(dev))
print("device vs cpu linres", sc.linearized_residual, sg.linearized_residual,
      "rel", abs(sc.linearized_residual - sg.linearized_residual) / sc.linearized_residual)
y = torch.randn(20000, 300, dtype=torch.float64, device=dev) @ torch.diag(torch.logspace(0, -8, 300, dtype=torch.float64, device=dev))
q, r = engine.cholesky_qr(y)
r_ref = torch.linalg.qr(y, mode="r")[1]
print("cholesky_qr on", dev, "orth", float((q.T @ q - torch.eye(300, dtype=torch.float64, device=dev)).abs().max()),
      "|R|-|R_householder|", float((r.abs() - r_ref.abs()).abs().max() / r_ref.abs().max()))
# the small SVD (R factor 1010 x 1010 with a graded spectrum) by driver, and on the CPU
g = torch.Generator().manual_seed(0)
a = torch.linalg.qr(torch.randn(1010, 1010, generator=g, dtype=torch.float64))[0] * torch.logspace(0, -12, 1010, dtype=torch.float64)
rr = torch.linalg.qr(a @ torch.linalg.qr(torch.randn(1010, 1010, generator=g, dtype=torch.float64))[0], mode="r")[1]
for name, fn in [("cpu", lambda: torch.linalg.svd(rr, full_matrices=False))] + (
        [(str(d), (lambda d=d: torch.linalg.svd(rr.to(dev), full_matrices=False, driver=d))) for d in (None, "gesvd", "gesvdj")]
        if dev.type == "cuda" else []):
    fn()
    if dev.type == "cuda": torch.cuda.synchronize()
    t0 = time.perf_counter(); out = fn()
    if dev.type == "cuda": torch.cuda.synchronize()
    print(f"svd 1010 {name}: {time.perf_counter() - t0:.4f} s")
PY
ls -la $OUT
