"""Train DeepXDE's own examples briefly, then refine them with pinnlsr.interop.deepxde.

The setups are DeepXDE's examples/pinn_forward scripts (Poisson_Dirichlet_1d, Helmholtz_Dirichlet_2d
with its hard boundary transform, Burgers with Burgers.npz), unchanged except for CPU-sized
training budgets (and, for Helmholtz, the width: see --helmholtz-width). DeepXDE trains in its
default float32; the refinement runs on a float64 copy.

    python scripts/deepxde_finetune.py --out runs/deepxde            # all examples
    python scripts/deepxde_finetune.py --examples poisson_dirichlet_1d --adam 2000

Poisson_Dirichlet_1d trains on 16 + 2 points; its refinement adds --refine-points uniform PDE points
(anchors used by the refinement only). Writes DIR/<example>/metrics.json (stages "deepxde", "lsr" and for Burgers "gauss_newton") and
prints a table of relative L2 error before/after and seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("DDE_BACKEND", "pytorch")  # before anything imports deepxde

import numpy as np
import torch

from pinnlsr.interop import deepxde as px
from pinnlsr.io import atomic_write_json, data_file


# ---------------------------------------------------------------------------------------------
# DeepXDE's example setups (examples/pinn_forward/*.py, DeepXDE 1.15)
# ---------------------------------------------------------------------------------------------
def poisson_dirichlet_1d(dde, args):
    def pde(x, y):
        dy_xx = dde.grad.hessian(y, x)
        return -dy_xx - np.pi**2 * torch.sin(np.pi * x)

    def boundary(x, on_boundary):
        return on_boundary

    def func(x):
        return np.sin(np.pi * x)

    geom = dde.geometry.Interval(-1, 1)
    bc = dde.icbc.DirichletBC(geom, func, boundary)
    data = dde.data.PDE(geom, pde, bc, 16, 2, solution=func, num_test=100)
    net = dde.nn.FNN([1] + [50] * 3 + [1], "tanh", "Glorot uniform")
    model = dde.Model(data, net)
    model.compile("adam", lr=0.001)
    X = geom.uniform_points(1000, boundary=True).astype(np.float64)
    anchors = geom.uniform_points(args.refine_points, boundary=False) if args.refine_points else None
    return model, (X, func(X)), {"adam": args.adam or 10000, "lbfgs": 0, "anchors": anchors}


def helmholtz_dirichlet_2d(dde, args):
    n = 2
    precision_train, precision_test = 10, 30
    k0 = 2 * np.pi * n

    def pde(x, y):
        dy_xx = dde.grad.hessian(y, x, i=0, j=0)
        dy_yy = dde.grad.hessian(y, x, i=1, j=1)
        f = k0**2 * torch.sin(k0 * x[:, 0:1]) * torch.sin(k0 * x[:, 1:2])
        return -dy_xx - dy_yy - k0**2 * y - f

    def func(x):
        return np.sin(k0 * x[:, 0:1]) * np.sin(k0 * x[:, 1:2])

    def transform(x, y):  # hard Dirichlet constraint
        res = x[:, 0:1] * (1 - x[:, 0:1]) * x[:, 1:2] * (1 - x[:, 1:2])
        return res * y

    geom = dde.geometry.Rectangle([0, 0], [1, 1])
    wave_len = 1 / n
    nx_train = int(1 / (wave_len / precision_train))
    nx_test = int(1 / (wave_len / precision_test))
    data = dde.data.PDE(geom, pde, [], num_domain=nx_train**2, num_boundary=4 * nx_train,
                        solution=func, num_test=nx_test**2)
    net = dde.nn.FNN([2] + [args.helmholtz_width] * 3 + [1], "sin", "Glorot uniform")
    net.apply_output_transform(transform)
    model = dde.Model(data, net)
    model.compile("adam", lr=1e-3)
    X = geom.uniform_points(nx_test**2, boundary=True).astype(np.float64)
    return model, (X, func(X)), {"adam": args.adam or 5000, "lbfgs": 0}


def burgers(dde, args):
    ref = np.load(data_file("deepxde/Burgers.npz"), allow_pickle=False)
    t, x, exact = ref["t"], ref["x"], ref["usol"].T
    xx, tt = np.meshgrid(x, t)
    X = np.vstack((np.ravel(xx), np.ravel(tt))).T.astype(np.float64)
    y = exact.flatten()[:, None].astype(np.float64)

    def pde(x, y):
        dy_x = dde.grad.jacobian(y, x, i=0, j=0)
        dy_t = dde.grad.jacobian(y, x, i=0, j=1)
        dy_xx = dde.grad.hessian(y, x, i=0, j=0)
        return dy_t + y * dy_x - 0.01 / np.pi * dy_xx

    geom = dde.geometry.Interval(-1, 1)
    timedomain = dde.geometry.TimeDomain(0, 0.99)
    geomtime = dde.geometry.GeometryXTime(geom, timedomain)
    bc = dde.icbc.DirichletBC(geomtime, lambda x: 0, lambda _, on_boundary: on_boundary)
    ic = dde.icbc.IC(geomtime, lambda x: -np.sin(np.pi * x[:, 0:1]), lambda _, on_initial: on_initial)
    data = dde.data.TimePDE(geomtime, pde, [bc, ic], num_domain=2540, num_boundary=80, num_initial=160)
    net = dde.nn.FNN([2] + [20] * 3 + [1], "tanh", "Glorot normal")
    model = dde.Model(data, net)
    model.compile("adam", lr=1e-3)
    return model, (X, y), {"adam": args.adam or 15000, "lbfgs": args.lbfgs}


EXAMPLES = {
    "poisson_dirichlet_1d": (poisson_dirichlet_1d, ("lsr",)),
    "helmholtz_dirichlet_2d": (helmholtz_dirichlet_2d, ("lsr",)),
    "burgers": (burgers, ("lsr", "gauss_newton")),
}


# ---------------------------------------------------------------------------------------------
def run_example(name: str, args, dde) -> dict:
    build, stages = EXAMPLES[name]
    dde.config.set_random_seed(args.seed)
    model, reference, budget = build(dde, args)
    t = time.perf_counter()
    model.train(iterations=budget["adam"], display_every=max(1, budget["adam"] // 4), verbose=0)
    if budget["lbfgs"]:
        dde.optimizers.config.set_LBFGS_options(maxiter=budget["lbfgs"])
        model.compile("L-BFGS")
        model.train(verbose=0)
    train_seconds = time.perf_counter() - t
    problem = px.DeepXDEProblem(model, anchors=budget.get("anchors"))
    dtype_model = str(next(model.net.parameters()).dtype).replace("torch.", "")
    X, U = reference
    P0 = px.predict(problem.net, X)
    out = {"problem": f"deepxde_{name}", "seed": args.seed, "device": "cpu", "dtype": "float64",
           "n_params": problem.spec.numel, "n_rows": problem.n_rows, "notes": problem.notes,
           "stages": [{"name": "deepxde", "rel_l2": px.rel_l2(P0, U), "max_abs_err": float(np.abs(P0 - U).max()),
                       "residual": float(torch.linalg.vector_norm(problem.residual_at(problem.theta()))),
                       "seconds": train_seconds, "adam_iterations": budget["adam"],
                       "lbfgs_iterations": budget["lbfgs"], "dtype": dtype_model}]}
    for stage in stages:
        t = time.perf_counter()
        if stage == "lsr":
            res = px.refine(model, reference=reference, problem=problem)
            extra = {"rank": res.diagnostics["rank"], "cond": res.diagnostics["cond"],
                     "linearized_residual": res.diagnostics["linearized_residual"]}
        else:
            res = px.gauss_newton(model, reference=reference, problem=problem, iterations=args.gn_iterations)
            extra = {"iterations": res.diagnostics["iterations"]}
        seconds = time.perf_counter() - t
        d = res.diagnostics
        out["stages"].append({"name": stage, "rel_l2": d["rel_l2_after"], "max_abs_err": d["max_abs_err_after"],
                              "residual": d["residual_after"], "seconds": seconds, **extra})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", nargs="+", default=list(EXAMPLES), choices=list(EXAMPLES))
    ap.add_argument("--out", type=Path, default=None, help="write OUT/<example>/metrics.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adam", type=int, default=None, help="Adam iterations (default: the example's own)")
    ap.add_argument("--lbfgs", type=int, default=0, help="L-BFGS iterations after Adam for Burgers (example: 15000)")
    ap.add_argument("--helmholtz-width", type=int, default=50, help="hidden width (DeepXDE's example: 150)")
    ap.add_argument("--gn-iterations", type=int, default=20)
    ap.add_argument("--refine-points", type=int, default=200,
                    help="Poisson_Dirichlet_1d: extra uniform PDE points for the refinement (its training "
                         "set has 16; 0 = refine on the training points only)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dde = px.import_deepxde()
    rows = []
    for name in args.examples:
        result = run_example(name, args, dde)
        if args.out is not None:
            atomic_write_json(args.out / name / "metrics.json", result)
        rows.append(result)
        print(json.dumps(result["stages"]), flush=True)
    print(f"\n{'example':24s} {'stage':13s} {'rel_l2':>10s} {'residual':>10s} {'seconds':>8s}")
    for r in rows:
        base = r["stages"][0]["rel_l2"]
        for s in r["stages"]:
            gain = f"  ({base / s['rel_l2']:.0f}x)" if s["name"] != "deepxde" else ""
            print(f"{r['problem'][8:]:24s} {s['name']:13s} {s['rel_l2']:10.2e} {s['residual']:10.2e} "
                  f"{s['seconds']:8.1f}{gain}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
