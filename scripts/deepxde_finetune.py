"""Train DeepXDE's own examples briefly, then refine them with pinnlsr.interop.deepxde.

The setups are DeepXDE's examples (pinn_forward: Poisson_Dirichlet_1d, Helmholtz_Dirichlet_2d with
its hard boundary transform, Burgers with Burgers.npz; operator: antiderivative_aligned_pideeponet),
unchanged except for CPU-sized training budgets (and, for Helmholtz, the width: see
--helmholtz-width). DeepXDE trains in its default float32; the refinement runs on a float64 copy.

    python scripts/deepxde_finetune.py --out runs/deepxde            # all examples
    python scripts/deepxde_finetune.py --examples poisson_dirichlet_1d --adam-steps 2000
    python scripts/deepxde_finetune.py --examples burgers antiderivative_pideeponet --out runs/deepxde

Poisson_Dirichlet_1d trains on 16 + 2 points; its refinement adds --refine-points uniform PDE points
(anchors used by the refinement only).

Burgers: Adam for the example's 15,000 iterations (about a minute on one core; the example's
L-BFGS stage is off, --lbfgs-steps N adds it). Then one-shot LSR (stage "lsr", not enough for a
nonlinear PDE) and iterated LSR (stage "ilsr"): Levenberg-Marquardt in parameter space, each step a damped
whole-space LSR solve from the moved network, on the training points plus --burgers-anchors random
PDE points, the best iterate chosen on --validation-points fresh points (a few minutes).

antiderivative_pideeponet: the PI-DeepONet is trained for --deeponet-adam Adam iterations (the
example: 40,000), then refined separately for --deeponet-instances GRF test functions (one-shot
LSR, randomized subspace of rank --deeponet-rank, on --deeponet-points uniform PDE points); errors
against the quadrature of each input function, mean and std over the functions.

Writes DIR/<example>/metrics.json (stages "deepxde", then "lsr" / "ilsr") and prints a table of
relative L2 error before/after and seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("DDE_BACKEND", "pytorch")  # before anything imports deepxde

import numpy as np
import torch

from pinnlsr.interop import deepxde as px
from pinnlsr.interop import deepxde_operator as pxo
from pinnlsr.datasets import load_burgers_npz
from pinnlsr.io import atomic_write_json
from pinnlsr.reference_solvers import antiderivative
from pinnlsr.allocator import tune_allocator
from pinnlsr.settings import add_alias


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
    return model, (X, func(X)), {"adam": args.adam_steps or 10000, "lbfgs": 0, "anchors": anchors}


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
    return model, (X, func(X)), {"adam": args.adam_steps or 5000, "lbfgs": 0}


def burgers(dde, args):
    ref = load_burgers_npz()  # DeepXDE's Burgers.npz: (x, t) on the 256 x 100 grid
    X, y = ref.points.astype(np.float64), ref.values.astype(np.float64)

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
    # Adam as in the example (15,000 iterations, about a minute on one CPU core); the example's
    # L-BFGS stage is left out (--lbfgs-steps N adds it).
    return model, (X, y), {"adam": args.adam_steps or 15000, "lbfgs": args.lbfgs_steps,
                           "anchors": ("random", args.burgers_anchors)}


def antiderivative_pideeponet(dde, args):
    """examples/operator/antiderivative_aligned_pideeponet.py: u' = v on [0, 1], u(0) = 0 (hard
    constraint u = x·N), v from a GRF with length scale 0.2 seen at 50 sensors. The example's
    tf.transpose becomes torch's .T; Adam iterations are CPU-sized (--deeponet-adam)."""

    def pde(x, u, v):
        return dde.grad.jacobian(u, x) - v

    geom = dde.geometry.TimeDomain(0, 1)
    ic = dde.icbc.IC(geom, lambda _: 0, lambda _, on_initial: on_initial)
    pde_data = dde.data.PDE(geom, pde, ic, num_domain=20, num_boundary=2, num_test=40)
    func_space = dde.data.GRF(length_scale=0.2)
    eval_pts = np.linspace(0, 1, num=50)[:, None]
    data = dde.data.PDEOperatorCartesianProd(pde_data, func_space, eval_pts, 1000, num_test=100, batch_size=100)
    net = dde.nn.DeepONetCartesianProd([50, 128, 128, 128], [1, 128, 128, 128], "tanh", "Glorot normal")

    def zero_ic(inputs, outputs):  # hard zero initial condition
        return outputs * inputs[1].T

    net.apply_output_transform(zero_ic)
    model = dde.Model(data, net)
    model.compile("adam", lr=0.0005)
    return model, func_space, eval_pts, {"adam": args.deeponet_adam, "lbfgs": 0}


EXAMPLES = {
    "poisson_dirichlet_1d": (poisson_dirichlet_1d, ("lsr",)),
    "helmholtz_dirichlet_2d": (helmholtz_dirichlet_2d, ("lsr",)),
    "burgers": (burgers, ("lsr", "ilsr")),
    "antiderivative_pideeponet": (antiderivative_pideeponet, ("lsr",)),
}
OPERATOR_EXAMPLES = ("antiderivative_pideeponet",)


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
    anchors = budget.get("anchors")
    if isinstance(anchors, tuple):  # ("random", n): n fresh PDE points of the example's geometry
        anchors = px.DeepXDEProblem(model).sample_pde_points(anchors[1], seed=args.seed + 1000) if anchors[1] else None
    problem = px.DeepXDEProblem(model, anchors=anchors)
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
        else:  # "ilsr": re-linearize and solve again, the network moved to θ + V z after each step
            res = px.gauss_newton(model, reference=reference, problem=problem, iterations=args.gn_iters,
                                  validation=args.validation_points, seed=args.seed + 2000,
                                  max_seconds=args.gn_seconds)
            d = res.diagnostics
            extra = {"method": "Levenberg-Marquardt in parameter space (whole-space LSR step with Nielsen "
                               "damping, repeated from the moved network; best state on validation points)",
                     "iterations": d["iterations"], "best_iteration": d["best_iteration"], "stopped": d["stopped"],
                     "validation_points": d["validation_points"], "validation_residual": d["after"].validation,
                     "history": [{k: r.get(k) for k in ("iteration", "residual", "validation", "damping")}
                                 for r in res.history]}
        seconds = time.perf_counter() - t
        after = res.diagnostics["after"]
        out["stages"].append({"name": stage, "rel_l2": after.rel_l2, "max_abs_err": after.max_abs_err,
                              "residual": after.residual, "seconds": seconds, **extra})
    return out


def run_operator_example(name: str, args, dde) -> dict:
    """Train a PI-DeepONet as DeepXDE's example does, then refine it per test function by LSR."""
    build, _ = EXAMPLES[name]
    dde.config.set_random_seed(args.seed)
    model, func_space, eval_pts, budget = build(dde, args)
    t = time.perf_counter()
    model.train(iterations=budget["adam"], display_every=max(1, budget["adam"] // 4), verbose=0)
    train_seconds = time.perf_counter() - t
    # test functions: a seeded GRF draw (DeepXDE's samplers use NumPy's global generator)
    dde.config.set_random_seed(args.seed + 1)
    feats = func_space.random(args.deeponet_instances)
    V = func_space.eval_batch(feats, eval_pts)
    x = np.linspace(0, 1, 201)[:, None]
    anchors = np.linspace(0, 1, args.deeponet_points + 2)[1:-1, None]
    before, after, res_before, res_after, seconds = [], [], [], [], []
    n_params = n_rows = rank = None
    for i in range(len(V)):
        def fun(s, i=i):
            return func_space.eval_batch(feats[i:i + 1], np.asarray(s, dtype=np.float64).reshape(-1, 1))[0]

        u_ref = antiderivative(fun, x[:, 0], n=2**16)[:, None]
        t = time.perf_counter()
        res = pxo.refine_instance(model, V[i], lambda p, fun=fun: fun(p[:, 0]), anchors=anchors,
                                  rank=args.deeponet_rank, seed=args.seed + i, reference=(x, u_ref))
        seconds.append(time.perf_counter() - t)
        d = res.diagnostics
        before.append(d["before"].rel_l2)
        after.append(d["after"].rel_l2)
        res_before.append(d["before"].residual)
        res_after.append(d["after"].residual)
        n_params, n_rows, rank = d["n_params"], d["n_rows"], d["rank"]
    b, a = np.asarray(before), np.asarray(after)
    common = {"n_instances": len(a), "reference": "trapezoid quadrature of the input function (2^16 cells)"}
    return {"problem": f"deepxde_{name}", "seed": args.seed, "device": "cpu", "dtype": "float64",
            "n_params": n_params, "n_rows": n_rows,
            "stages": [{"name": "deepxde", "rel_l2": float(b.mean()), "rel_l2_mean": float(b.mean()),
                        "rel_l2_std": float(b.std()), "residual": float(np.mean(res_before)), "seconds": train_seconds,
                        "adam_iterations": budget["adam"], "dtype": str(next(model.net.parameters()).dtype)[6:],
                        **common},
                       {"name": "lsr", "rel_l2": float(a.mean()), "rel_l2_mean": float(a.mean()),
                        "rel_l2_std": float(a.std()), "residual": float(np.mean(res_after)),
                        "seconds": float(np.sum(seconds)), "seconds_per_instance": float(np.mean(seconds)),
                        "rank": rank, "subspace": "randomized", "anchors": args.deeponet_points,
                        "gain_median": float(np.median(b / a)), **common}]}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", nargs="+", default=list(EXAMPLES), choices=list(EXAMPLES))
    ap.add_argument("--out", type=Path, default=None, help="write OUT/<example>/metrics.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adam-steps", type=int, default=None, help="Adam iterations (default: the example's own)")
    ap.add_argument("--lbfgs-steps", type=int, default=0,
                    help="L-BFGS iterations after Adam for Burgers (example: 15000)")
    ap.add_argument("--helmholtz-width", type=int, default=50, help="hidden width (DeepXDE's example: 150)")
    ap.add_argument("--gn-iters", type=int, default=100, help="Burgers: Levenberg-Marquardt iterations")
    ap.add_argument("--gn-seconds", type=float, default=600.0, help="Burgers: time limit of the iterations")
    ap.add_argument("--burgers-anchors", type=int, default=6000,
                    help="Burgers: extra random PDE points for the refinement (0 = training points only)")
    ap.add_argument("--validation-points", type=int, default=2000,
                    help="Burgers: fresh PDE points that pick the best iterate")
    ap.add_argument("--deeponet-adam", type=int, default=3000,
                    help="PI-DeepONet: Adam iterations (the example: 40000)")
    ap.add_argument("--deeponet-instances", type=int, default=50, help="PI-DeepONet: test functions refined")
    ap.add_argument("--deeponet-points", type=int, default=200, help="PI-DeepONet: PDE points per instance")
    ap.add_argument("--deeponet-rank", type=int, default=150, help="PI-DeepONet: randomized subspace rank")
    ap.add_argument("--refine-points", type=int, default=200,
                    help="Poisson_Dirichlet_1d: extra uniform PDE points for the refinement (its training "
                         "set has 16; 0 = refine on the training points only)")
    ap.add_argument("--threads", type=int, default=1)
    add_alias(ap, "--adam", "--adam-steps", type=int)
    add_alias(ap, "--lbfgs", "--lbfgs-steps", type=int)
    add_alias(ap, "--gn-iterations", "--gn-iters", type=int)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()  # malloc kept for repeated tensor passes (pinnlsr.allocator)
    torch.set_num_threads(args.threads)
    dde = px.import_deepxde()
    rows = []
    for name in args.examples:
        result = (run_operator_example if name in OPERATOR_EXAMPLES else run_example)(name, args, dde)
        if args.out is not None:
            atomic_write_json(args.out / name / "metrics.json", result)
        rows.append(result)
        print(json.dumps(result["stages"]), flush=True)
    print(f"\n{'example':26s} {'stage':13s} {'rel_l2':>10s} {'residual':>10s} {'seconds':>8s}")
    for r in rows:
        base = r["stages"][0]["rel_l2"]
        for s in r["stages"]:
            gain = f"  ({base / s['rel_l2']:.0f}x)" if s["name"] != "deepxde" else ""
            print(f"{r['problem'][8:]:26s} {s['name']:13s} {s['rel_l2']:10.2e} {s['residual']:10.2e} "
                  f"{s['seconds']:8.1f}{gain}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
