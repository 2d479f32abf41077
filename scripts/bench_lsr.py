"""Benchmark one LSR step: reference-style matrix-free jvp/vjp vs pinnlsr's streamed engine.

Setting: the Burgers PINN of the LSR paper's Iterative LSR script, u_t + u u_x = (0.01/π) u_xx on
[-1, 1] × [0, 1], u(x, 0) = -sin(πx), periodic in x (u and u_x); 2-[128]x6-1 tanh MLP (83,073
parameters), 20,000 PDE + 1,000 initial + 1,000 periodic points (each periodic point evaluates
both sides, so the output Jacobian sees 2×1,000 boundary points: n = 23,000 rows), r = 1000,
oversampling 10 (``--size paper``), and a CPU-sized version (``--size cpu``).

One LSR step = sketch Y = Jᵀ Ω, Q = orth(Y), B = J Q, SVD → scaled basis V, A = G V, least squares.
(a) reference style: ``torch.func`` vjp/jvp over all points, vmapped over chunks of 32 directions
(as the paper's code), dense SVDs; (b) pinnlsr: :func:`pinnlsr.lsr.lsr_step` (jet rows for the
MLP, GEMMs over row chunks from a memory budget, QR/TSQR reductions). Both use the same Ω and must
reach the same linearized residual to 1e-6 relative.

    python scripts/bench_lsr.py --size cpu --out runs/bench_cpu
    python scripts/bench_lsr.py --size paper --device cuda --dtype float64 --out runs/bench_gpu

Writes DIR/bench.json (reference_seconds, pinnlsr_seconds, ratio, reference_peak_gb,
pinnlsr_peak_gb, linres_reference, linres_pinnlsr, device, dtype, phases, scans, 2-process run)
and DIR/scaling_n.png, DIR/scaling_r.png (pinnlsr time and memory against n and r).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time

import torch
from torch.func import jvp, vjp, vmap

from pinnlsr.lsr import lsr_step
from pinnlsr import operators as op
from pinnlsr.models import MLP, ParamSpec
from pinnlsr.problem import PDEProblem, Term
from pinnlsr.residual import Rows, output_rows, residual_rows
from pinnlsr.allocator import tune_allocator
from pinnlsr.settings import add_device_options, device_and_dtype

NU = 0.01 / math.pi
SIZES = {
    "paper": dict(widths=(128,) * 6, n_pde=20000, n_ic=1000, n_bc=1000, rank=1000,
                  scan_n=(0.25, 0.5, 1.0), scan_r=(250, 500, 1000)),
    # r/n as in the paper setting (1000 / 23,000 ≈ 0.04 vs 100 / 1,800 ≈ 0.06), and r inside the
    # numerical rank of this network's output Jacobian (σ_r/σ_1 ≈ 1e-9; at r = 150 it is 6e-12,
    # where the top-r subspace is fixed only up to rounding and the two implementations differ by 1e-6)
    "cpu": dict(widths=(32,) * 4, n_pde=1500, n_ic=100, n_bc=100, rank=100,
                scan_n=(0.5, 1.0, 2.0, 4.0), scan_r=(50, 100, 150, 200)),
}


class Burgers(PDEProblem):
    """Viscous Burgers with periodic boundary (the LSR paper's Burgers setting)."""

    name = "burgers_bench"
    input_names = ("x", "t")
    output_names = ("u",)

    def __init__(self, n_pde: int, n_ic: int, n_bc: int):
        self.n_pde, self.n_ic, self.n_bc = n_pde, n_ic, n_bc

    def terms(self):
        def interior(n, generator):
            p = torch.rand(n, 2, generator=generator, dtype=torch.float64)
            return torch.stack([2 * p[:, 0] - 1, p[:, 1]], 1)

        def initial(n, generator):
            x = 2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1
            return torch.stack([x, torch.zeros_like(x)], 1)

        def left(n, generator):
            t = torch.rand(n, generator=generator, dtype=torch.float64)
            return torch.stack([-torch.ones_like(t), t], 1)

        return [Term("pde", self.pde, interior, self.n_pde), Term("ic", self.ic, initial, self.n_ic),
                Term("periodic", self.periodic, left, self.n_bc)]

    @staticmethod
    def pde(u, x):
        g = op.gradient(u, x)
        return g[1] + op.value(u, x) * g[0] - NU * op.partial(u, x, 0, 0)

    @staticmethod
    def ic(u, x):
        return op.value(u, x) + torch.sin(math.pi * x[0])

    @staticmethod
    def periodic(u, x):
        right = x + torch.tensor([2.0, 0.0], dtype=x.dtype, device=x.device)
        return torch.stack([op.value(u, x) - op.value(u, right),
                            op.partial(u, x, 0) - op.partial(u, right, 0)])

    def exact(self, x):
        return torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)

    def test_points(self):
        return torch.zeros(1, 2, dtype=torch.float64)


def setup_problem(size: str, dtype: torch.dtype, device: torch.device, scale_n: float = 1.0, seed: int = 0):
    """(problem, network, points) of the benchmark setting; ``scale_n`` scales every point count."""
    cfg = SIZES[size]
    gen = torch.Generator().manual_seed(seed)
    net = MLP(2, 1, cfg["widths"], "tanh", input_lower=(-1, 0), input_upper=(1, 1), generator=gen,
              dtype=dtype)  # built on the CPU from the seed, then moved: the same network everywhere
    with torch.no_grad():  # a non-trivial state: random biases too
        for p in net.parameters():
            if p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=dtype))
    net = net.to(device)
    counts = {k: max(1, int(round(cfg[f"n_{k if k != 'periodic' else 'bc'}"] * scale_n)))
              for k in ("pde", "ic", "periodic")}
    problem = Burgers(counts["pde"], counts["ic"], counts["periodic"])
    points = problem.sample_points(gen, dtype, device)
    return problem, net, points


def setup(size: str, dtype: torch.dtype, device: torch.device, scale_n: float = 1.0, seed: int = 0):
    """(rows, out_rows, theta, network) of the benchmark setting: the residual rows and the output
    rows at all points (both sides of the periodic points)."""
    problem, net, points = setup_problem(size, dtype, device, scale_n, seed)
    spec = ParamSpec.of(net)
    rows = residual_rows(problem, net, points, spec)
    bc = points["periodic"]
    all_points = torch.cat([points["pde"], points["ic"], bc, bc + torch.tensor([2.0, 0.0], dtype=dtype, device=device)])
    out = output_rows(net, all_points, spec)
    return rows, out, spec.flatten(net), net


# ----------------------------------------------------------------------------------------------
# (a) reference style
# ----------------------------------------------------------------------------------------------
def reference_step(rows: Rows, out_rows: Rows, theta: torch.Tensor, rank: int, omega: torch.Tensor,
                   chunk: int = 32, rcond: float = 1e-14) -> dict:
    """The paper-code style LSR step: matrix-free jvp/vjp over all points at once, 32 directions
    per vmapped pass, dense QR/SVD. Returns z, V, linres and seconds per phase."""
    net_block = out_rows.blocks[0]
    x_out = net_block.points

    def f_out(th):
        return vmap(net_block.fn, in_dims=(None, 0, 0))(th, x_out, net_block.data).reshape(-1)

    def f_res(th):
        return torch.cat([b.scale * vmap(b.fn, in_dims=(None, 0, 0))(th, b.points, b.data).reshape(-1)
                          for b in rows.blocks])

    def push(f, directions):
        cols = []
        for j in range(0, directions.shape[1], chunk):
            cols.append(vmap(lambda d: jvp(f, (theta,), (d,))[1], in_dims=1, out_dims=1)(directions[:, j:j + chunk]))
        return torch.cat(cols, 1)

    t, dev = {}, theta.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    f0 = f_res(theta).detach()
    _, pull = vjp(f_out, theta)
    y = torch.cat([vmap(pull, in_dims=1, out_dims=1)(omega[:, j:j + chunk])[0]
                   for j in range(0, omega.shape[1], chunk)], 1)
    sync(); t["sketch"] = time.perf_counter() - t0
    tt = time.perf_counter()
    q, _ = torch.linalg.qr(y)
    b = push(f_out, q)
    _, s, vh = torch.linalg.svd(b, full_matrices=False)
    keep = int((s > max(out_rows.n_rows, out_rows.m) * torch.finfo(s.dtype).eps * s[0]).sum())
    r = min(rank, keep)
    v = (q @ vh[:r].T) / s[:r]
    sync(); t["basis"] = time.perf_counter() - tt
    tt = time.perf_counter()
    a = push(f_res, v)
    sync(); t["jacobian"] = time.perf_counter() - tt
    tt = time.perf_counter()
    u, sa, vah = torch.linalg.svd(a, full_matrices=False)
    k = int((sa > rcond * sa[0]).sum())
    z = -(vah[:k].T @ ((u[:, :k].T @ f0) / sa[:k]))
    linres = float((a @ z + f0).norm())
    sync(); t["solve"] = time.perf_counter() - tt
    t["total"] = time.perf_counter() - t0
    return dict(z=z, V=v, linres=linres, seconds=t, residual_before=float(f0.norm()), rank=r)


# ----------------------------------------------------------------------------------------------
# measurement helpers
# ----------------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of a code region in GiB: CUDA max_memory_allocated, or on the CPU the peak
    resident set size sampled every 5 ms (absolute, the process's baseline included)."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0.0, threading.Event()

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())


def run_pinnlsr(rows, out_rows, theta, rank, omega, budget, engines=None):
    """One pinnlsr step and its peak memory; ``engines`` reuses checked plans (iterative LSR)."""
    with PeakMemory(theta.device) as mem:
        res = lsr_step(rows, out_rows, theta, rank, omega=omega, memory_budget=budget, engines=engines)
    return res, mem.peak


def basis_gap(s: torch.Tensor, rank: int) -> dict:
    """How well the rank-r basis is determined: σ_r/σ_1 of the sketched output Jacobian and the
    gap σ_r/σ_(r+1). When σ_r/σ_1 nears n·ε, or the gap nears 1, the top-r subspace (and so the
    linearized residual) is fixed only up to rounding, and two correct implementations differ."""
    s = s.double().cpu()
    out = dict(sigma_r_over_sigma_1=float(s[rank - 1] / s[0]) if len(s) >= rank else None)
    out["sigma_gap_r"] = float(s[rank - 1] / s[rank]) if len(s) > rank else None
    return out


def make_omega(out_rows, rank, oversampling, dtype, device, seed=0):
    width = min(rank + oversampling, out_rows.m)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(out_rows.n_rows, width, generator=gen, dtype=dtype).to(device)


def _dist_worker(rank, world, port, size, dtype_name, threads, queue):
    """One rank of the distributed timing (gloo on the CPU)."""
    import torch.distributed as dist
    from pinnlsr import distributed as dl

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    problem, net, points = setup_problem(size, getattr(torch, dtype_name), torch.device("cpu"))
    cfg = SIZES[size]
    dl.lsr_step(problem, net, points, rank=8, seed=0)  # warm-up
    dist.barrier()
    t0 = time.perf_counter()
    res = dl.lsr_step(problem, net, points, rank=cfg["rank"], seed=0)
    dist.barrier()
    queue.put((rank, time.perf_counter() - t0, res.z.tolist(), res.linearized_residual))
    dl.shutdown()
    os._exit(0)  # skip torch's C++ static teardown, which sometimes aborts gloo processes (see README)


def _two_process(args, dtype, world: int = 2) -> dict:
    """distributed.lsr_step on the CPU-sized setting with 1 and with ``world`` gloo processes
    (the threads split between them), in fresh processes each."""
    import socket

    import torch.multiprocessing as mp

    out = {}
    for nproc in (1, world):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        queue = mp.get_context("spawn").SimpleQueue()
        mp.start_processes(_dist_worker, args=(nproc, port, "cpu", args.dtype, max(1, args.threads // nproc), queue),
                           nprocs=nproc, join=True, start_method="spawn")
        got = [queue.get() for _ in range(nproc)]
        out[nproc] = dict(seconds=max(g[1] for g in got), z=torch.tensor(got[0][2]), linres=got[0][3])
    zdiff = float((out[world]["z"] - out[1]["z"]).norm() / out[1]["z"].norm())
    return dict(processes=world, one_process_seconds=out[1]["seconds"], seconds=out[world]["seconds"],
                speedup=out[1]["seconds"] / out[world]["seconds"], z_rel_diff=zdiff,
                linres_one=out[1]["linres"], linres=out[world]["linres"], threads_total=args.threads,
                setting="cpu", note="CPU processes with gloo; threads split between processes")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    add_device_options(ap)
    ap.add_argument("--out", default=None, help="directory for bench.json and the plots")
    ap.add_argument("--memory-budget-gb", type=float, default=None,
                    help="pinnlsr's budget for Jacobian chunks (default: 4 GiB on CUDA, 0.5 on the CPU)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-scan", action="store_true", help="skip the time/memory scans over n and r")
    ap.add_argument("--no-reference", action="store_true", help="time pinnlsr alone (ratio omitted)")
    ap.add_argument("--processes", type=int, default=2, help="also time distributed LSR with this many "
                    "CPU processes on the CPU setting (0 to skip)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()  # malloc kept for repeated tensor passes (pinnlsr.allocator)
    torch.set_num_threads(args.threads)
    device, dtype = device_and_dtype(args)
    cfg = SIZES[args.size]
    budget_gb = args.memory_budget_gb or (4.0 if device.type == "cuda" else 0.5)
    budget = int(budget_gb * 2**30)
    rank, p = cfg["rank"], 10
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False

    rows, out_rows, theta, _ = setup(args.size, dtype, device)
    omega = make_omega(out_rows, rank, p, dtype, device)
    print(f"setting {args.size}: n = {rows.n_rows} residual rows, {out_rows.n_rows} output rows, "
          f"m = {rows.m}, r = {rank}, {dtype} on {device}", flush=True)

    # warm-up (kernels, cuBLAS/cuSOLVER handles) at a small rank for both paths
    w_omega = omega[:, :16]
    warm = lsr_step(rows, out_rows, theta, 8, omega=w_omega, memory_budget=budget)
    if not args.no_reference:
        small = setup(args.size, dtype, device, scale_n=0.05)
        reference_step(small[0], small[1], small[2], 8, make_omega(small[1], 8, 8, dtype, device))

    # a step that checks every term's plan first (a first LSR step), then the steady-state step
    # with the plans of the warm-up step reused (every later step of an iterative LSR)
    cold, cold_peak = run_pinnlsr(rows, out_rows, theta, rank, omega, budget)
    res, pin_peak = run_pinnlsr(rows, out_rows, theta, rank, omega, budget, engines=warm.engines)
    for label, r_ in (("pinnlsr (plans checked in the step)", cold), ("pinnlsr (plans reused)", res)):
        print(f"{label}: {r_.seconds['total']:.3f} s, linres {r_.linearized_residual:.6e}, "
              f"phases {json.dumps({k: round(v, 4) for k, v in r_.seconds.items()})}", flush=True)
    print(f"peak {pin_peak:.2f} GiB (plans reused), {cold_peak:.2f} GiB (checked); plans {res.plans}", flush=True)
    result = dict(size=args.size, device=str(device), dtype=args.dtype, n_rows=rows.n_rows,
                  n_output_rows=out_rows.n_rows, m=rows.m, rank=rank, oversampling=p,
                  flops_floor=6.0 * rows.n_rows * rows.m * (rank + p),
                  pinnlsr_seconds=res.seconds["total"], pinnlsr_peak_gb=max(pin_peak, cold_peak),
                  pinnlsr_phases=res.seconds, pinnlsr_plans=res.plans,
                  pinnlsr_seconds_with_plan_checks=cold.seconds["total"],
                  pinnlsr_phases_with_plan_checks=cold.seconds,
                  linres_pinnlsr_with_plan_checks=cold.linearized_residual,
                  timing_note="pinnlsr_seconds: one LSR step with the per-term plans reused from an earlier "
                              "step on the same rows (as in every later step of iterative LSR); "
                              "pinnlsr_seconds_with_plan_checks: the same step checking the plans first",
                  linres_pinnlsr=res.linearized_residual, residual_before=res.residual_before,
                  memory_budget_gb=budget_gb, threads=args.threads, **basis_gap(res.singular_values, rank))
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)

    if not args.no_reference:
        with PeakMemory(device) as mem:
            ref = reference_step(rows, out_rows, theta, rank, omega)
        rel = abs(ref["linres"] - res.linearized_residual) / ref["linres"]
        zrel = float((ref["z"] - res.z).norm() / ref["z"].norm())
        print(f"reference: {ref['seconds']['total']:.3f} s, peak {mem.peak:.2f} GiB, linres {ref['linres']:.6e}, "
              f"phases {json.dumps({k: round(v, 4) for k, v in ref['seconds'].items()})}", flush=True)
        result.update(reference_seconds=ref["seconds"]["total"], reference_peak_gb=mem.peak,
                      reference_phases=ref["seconds"], linres_reference=ref["linres"],
                      ratio=ref["seconds"]["total"] / res.seconds["total"], linres_rel_diff=rel,
                      ratio_with_plan_checks=ref["seconds"]["total"] / cold.seconds["total"],
                      z_rel_diff=zrel, linres_agree=bool(rel <= 1e-6))
        del ref

    if not args.no_scan:
        scans = {"n": [], "r": []}
        small_budget = int(budget / 8) if device.type == "cpu" else budget  # chunking engages
        for s in cfg["scan_n"]:
            r_, o_, th_, _ = setup(args.size, dtype, device, scale_n=s)
            om = make_omega(o_, rank, p, dtype, device)
            rs, pk = run_pinnlsr(r_, o_, th_, rank, om, small_budget)
            scans["n"].append(dict(n=r_.n_rows, seconds=rs.seconds["total"], peak_gb=pk))
            print(f"scan n = {r_.n_rows}: {rs.seconds['total']:.3f} s, {pk:.3f} GiB", flush=True)
            del r_, o_, th_, om, rs
        for rk in cfg["scan_r"]:
            om = make_omega(out_rows, rk, p, dtype, device)
            rs, pk = run_pinnlsr(rows, out_rows, theta, rk, om, small_budget)
            scans["r"].append(dict(r=rk, seconds=rs.seconds["total"], peak_gb=pk))
            print(f"scan r = {rk}: {rs.seconds['total']:.3f} s, {pk:.3f} GiB", flush=True)
        result["scans"] = scans
        result["scan_memory_budget_gb"] = small_budget / 2**30

    if args.processes and args.processes > 1:
        try:
            result["two_process"] = _two_process(args, dtype)
            print(f"2 processes: {json.dumps(result['two_process'])}", flush=True)
        except Exception as exc:  # report, do not lose the main numbers
            result["two_process"] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"2-process run failed: {exc}", flush=True)

    summary = {k: result.get(k) for k in ("reference_seconds", "pinnlsr_seconds", "ratio",
                                          "pinnlsr_seconds_with_plan_checks", "ratio_with_plan_checks",
                                          "reference_peak_gb",
                                          "pinnlsr_peak_gb", "linres_reference", "linres_pinnlsr",
                                          "linres_rel_diff", "device", "dtype")}
    print(json.dumps(summary, indent=1))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench.json"), "w") as fh:
            json.dump(result, fh, indent=1)
        if "scans" in result:
            plot_scans(result, args.out)
    return 0


def plot_scans(result: dict, out_dir: str) -> None:
    """scaling_n.png and scaling_r.png: pinnlsr seconds and peak memory against n and r."""
    from matplotlib.figure import Figure

    for key, label in (("n", "residual rows n"), ("r", "rank r")):
        data = result["scans"][key]
        fig = Figure(figsize=(8, 3.2))
        ax1, ax2 = fig.subplots(1, 2)
        xs = [d[key] for d in data]
        ax1.plot(xs, [d["seconds"] for d in data], "o-")
        ax1.set_xlabel(label)
        ax1.set_ylabel("seconds per LSR step")
        ax2.plot(xs, [d["peak_gb"] for d in data], "s-", color="C1")
        ax2.set_xlabel(label)
        ax2.set_ylabel("peak memory (GiB)")
        ax2.set_ylim(bottom=0)
        fig.suptitle(f"pinnlsr LSR step, {result['size']} setting, {result['dtype']} on {result['device']}")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, f"scaling_{key}.png"), dpi=110)


if __name__ == "__main__":
    sys.exit(main())
