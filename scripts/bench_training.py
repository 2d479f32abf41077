"""Training and refinement speed, side by side in one run: pinnlsr against what users would write.

For burgers1d, kovasznay, lid_driven and allen_cahn1d at their default networks and point counts
(float64, --threads threads, default 1), the milliseconds per Adam step of

- ``pinnlsr``: :func:`pinnlsr.train.train_adam` (loss and gradient from jets);
- ``pinnlsr_generic``: the same with ``loss_mode="generic"`` (vmap + autograd per point);
- ``autograd``: the same loss written by hand with batched ``torch.autograd.grad(create_graph=True)``
  on the same network and points;
- ``deepxde``: DeepXDE's ``dde.data.TimePDE``/``PDE`` with the same network (``dde.nn.FNN``, same
  widths, tanh, the periodic feature map for allen_cahn1d) and the same point counts (its own
  points), float64, its own ``model.train`` loop;

then the seconds per tangent Gauss–Newton step on burgers1d (rank 1000, default points) with
explicit ``vmap(jacrev)`` rows and with jet rows, and the seconds of one Iterative LSR outer
iteration at burgers1d's default settings, and the seconds of the randomized range finder on
allen_cahn1d's last time window (12,000 points, rank 2000) with and without the left singular
vectors. Writes OUT/bench_training.json and prints a table.

    python scripts/bench_training.py --out runs/bench_training
    python scripts/bench_training.py --problems burgers1d --adam-steps 50 --no-deepxde --out /tmp/b
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("DDE_BACKEND", "pytorch")  # before anything imports deepxde

import torch

from pinnlsr.gauss_newton import tangent_gauss_newton
from pinnlsr.ilsr import iterative_lsr
from pinnlsr.io import atomic_write_json
from pinnlsr.train import train_adam
from pinnlsr.allocator import tune_allocator
from pinnlsr.settings import add_alias
from problems import allen_cahn1d, burgers1d, kovasznay, lid_driven

PROBLEMS = {"burgers1d": burgers1d.Burgers1D, "kovasznay": kovasznay.Kovasznay,
            "lid_driven": lid_driven.LidDriven, "allen_cahn1d": allen_cahn1d.AllenCahn1D}


# ---------------------------------------------------------------------------------------------
# The losses written by hand with batched autograd
# ---------------------------------------------------------------------------------------------
def _grad(y, x):
    return torch.autograd.grad(y.sum(), x, create_graph=True)[0]


def _ns(out, x, nu):
    u, v, p = out[:, 0], out[:, 1], out[:, 2]
    du, dv, dp = _grad(u, x), _grad(v, x), _grad(p, x)
    u_xx, u_yy = _grad(du[:, 0], x)[:, 0], _grad(du[:, 1], x)[:, 1]
    v_xx, v_yy = _grad(dv[:, 0], x)[:, 0], _grad(dv[:, 1], x)[:, 1]
    return torch.stack([u * du[:, 0] + v * du[:, 1] + dp[:, 0] - nu * (u_xx + u_yy),
                        u * dv[:, 0] + v * dv[:, 1] + dp[:, 1] - nu * (v_xx + v_yy),
                        du[:, 0] + dv[:, 1]], 1)


def autograd_loss(name: str, problem, model, points):
    """loss() of the problem written with batched autograd (the same value as pinnlsr's loss)."""
    w = {t.name: t.weight for t in problem.terms()}
    x = points["pde"].clone().requires_grad_(True)

    def mean_sq(r, term):
        return w[term] * r.square().sum() / r.shape[0]

    if name == "burgers1d":
        def loss():
            u = model(x)[:, 0]
            du = _grad(u, x)
            u_xx = _grad(du[:, 0], x)[:, 0]
            r = du[:, 1] + u * du[:, 0] - burgers1d.NU * u_xx
            ic = model(points["ic"])[:, 0] + torch.sin(math.pi * points["ic"][:, 0])
            return mean_sq(r, "pde") + mean_sq(model(points["bc"])[:, 0], "bc") + mean_sq(ic, "ic")
    elif name == "allen_cahn1d":
        def loss():
            u = model(x)[:, 0]
            du = _grad(u, x)
            u_xx = _grad(du[:, 0], x)[:, 0]
            r = du[:, 1] - 1e-4 * u_xx + 5 * u**3 - 5 * u
            xi = points["ic"][:, 0]
            ic = model(points["ic"])[:, 0] - xi**2 * torch.cos(math.pi * xi)
            return mean_sq(r, "pde") + mean_sq(ic, "ic")
    elif name == "kovasznay":
        def loss():
            r = _ns(model(x), x, kovasznay.NU)
            xb = points["bc"]
            bc = model(xb) - kovasznay.exact_columns(xb[:, 0], xb[:, 1])
            return (w["pde"] * r.square().sum() / x.shape[0] + w["bc"] * bc.square().sum() / xb.shape[0])
    elif name == "lid_driven":
        offsets, weights = lid_driven.gauge_quadrature(problem.gauge_size, problem.gauge_nodes)

        def loss():
            r = _ns(model(x), x, lid_driven.NU)
            xb = points["bc"]
            out = model(xb)
            lid = torch.where(xb[:, 1] > 1 - 1e-9, 4 * xb[:, 0] * (1 - xb[:, 0]), torch.zeros_like(xb[:, 0]))
            bc = torch.stack([out[:, 0] - lid, out[:, 1]], 1)
            if offsets is None:  # one-point gauge p(0,0)
                p0 = model(points["p0"])[:, 2]
            else:  # the mean of p over the gauge square
                p0 = (weights * model(points["p0"] + offsets)[:, 2]).sum()
            return (w["pde"] * r.square().sum() / x.shape[0] + w["bc"] * bc.square().sum() / xb.shape[0]
                    + w["p0"] * p0.square().sum())
    else:
        raise ValueError(name)
    return loss


def ms_autograd_adam(name, problem, model, points, steps):
    loss = autograd_loss(name, problem, model, points)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        opt.step()
        return value

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return 1e3 * (time.perf_counter() - start) / steps


def ms_pinnlsr_adam(problem, model, points, steps, loss_mode):
    train_adam(problem, model, points, 2, lr=1e-4, final_lr=None, progress=False, loss_mode=loss_mode)
    start = time.perf_counter()
    hist = train_adam(problem, model, points, steps, lr=1e-4, final_lr=None, progress=False, loss_mode=loss_mode)
    return 1e3 * (time.perf_counter() - start) / steps, hist.backends


# ---------------------------------------------------------------------------------------------
# DeepXDE with the same network and point counts
# ---------------------------------------------------------------------------------------------
def ms_deepxde_adam(name, problem, steps):
    """(ms per Adam step, note) of DeepXDE's own training loop on the problem's PDE."""
    import deepxde as dde

    dde.config.set_default_float("float64")
    widths = list(problem.widths)
    counts = {t.name: t.n_points for t in problem.terms() if t.n_points}
    if name == "burgers1d":
        geom = dde.geometry.TimeDomain(0, 1)
        geomtime = dde.geometry.GeometryXTime(dde.geometry.Interval(-1, 1), geom)

        def pde(x, y):
            dy_x = dde.grad.jacobian(y, x, i=0, j=0)
            dy_t = dde.grad.jacobian(y, x, i=0, j=1)
            dy_xx = dde.grad.hessian(y, x, i=0, j=0)
            return dy_t + y * dy_x - burgers1d.NU * dy_xx

        bc = dde.icbc.DirichletBC(geomtime, lambda x: 0 * x[:, :1], lambda _, on_boundary: on_boundary)
        ic = dde.icbc.IC(geomtime, lambda x: -torch.sin(math.pi * torch.as_tensor(x[:, :1])).numpy(),
                         lambda _, on_initial: on_initial)
        data = dde.data.TimePDE(geomtime, pde, [bc, ic], num_domain=counts["pde"], num_boundary=counts["bc"],
                                num_initial=counts["ic"])
        net = dde.nn.FNN([2] + widths + [1], "tanh", "Glorot normal")
        note = "same network and point counts"
    elif name == "allen_cahn1d":
        geomtime = dde.geometry.GeometryXTime(dde.geometry.Interval(-1, 1), dde.geometry.TimeDomain(0, 1))

        def pde(x, y):
            dy_t = dde.grad.jacobian(y, x, i=0, j=1)
            dy_xx = dde.grad.hessian(y, x, i=0, j=0)
            return dy_t - 1e-4 * dy_xx + 5 * y**3 - 5 * y

        ic = dde.icbc.IC(geomtime, lambda x: x[:, :1] ** 2 * torch.cos(math.pi * torch.as_tensor(x[:, :1])).numpy(),
                         lambda _, on_initial: on_initial)
        data = dde.data.TimePDE(geomtime, pde, [ic], num_domain=counts["pde"], num_initial=counts["ic"])
        net = dde.nn.FNN([3] + widths + [1], "tanh", "Glorot normal")
        net.apply_feature_transform(lambda x: torch.stack(
            [torch.cos(math.pi * x[:, 0]), torch.sin(math.pi * x[:, 0]), 2 * x[:, 1] - 1], 1))
        note = "same network (periodic feature map as DeepXDE's feature transform) and point counts"
    else:  # kovasznay, lid_driven: steady Navier–Stokes with three outputs
        lower, upper = (kovasznay.LOWER, kovasznay.UPPER) if name == "kovasznay" else ((0, 0), (1, 1))
        nu = kovasznay.NU if name == "kovasznay" else lid_driven.NU
        geom = dde.geometry.Rectangle(lower, upper)

        def pde(x, y):
            u, v = y[:, 0:1], y[:, 1:2]
            u_x, u_y = dde.grad.jacobian(y, x, i=0, j=0), dde.grad.jacobian(y, x, i=0, j=1)
            v_x, v_y = dde.grad.jacobian(y, x, i=1, j=0), dde.grad.jacobian(y, x, i=1, j=1)
            p_x, p_y = dde.grad.jacobian(y, x, i=2, j=0), dde.grad.jacobian(y, x, i=2, j=1)
            u_xx, u_yy = dde.grad.hessian(y, x, component=0, i=0, j=0), dde.grad.hessian(y, x, component=0, i=1, j=1)
            v_xx, v_yy = dde.grad.hessian(y, x, component=1, i=0, j=0), dde.grad.hessian(y, x, component=1, i=1, j=1)
            return [u * u_x + v * u_y + p_x - nu * (u_xx + u_yy), u * v_x + v * v_y + p_y - nu * (v_xx + v_yy),
                    u_x + v_y]

        boundary = lambda _, on_boundary: on_boundary  # noqa: E731
        bcs = [dde.icbc.DirichletBC(geom, lambda x: 0 * x[:, :1], boundary, component=c) for c in range(3 if name == "kovasznay" else 2)]
        if name == "lid_driven":
            bcs.append(dde.icbc.PointSetBC([[0.0, 0.0]], [[0.0]], component=2))
        data = dde.data.PDE(geom, pde, bcs, num_domain=counts["pde"], num_boundary=counts["bc"])
        net = dde.nn.FNN([2] + widths + [3], "tanh", "Glorot normal")
        note = "same network and point counts (Dirichlet values zero: the cost does not depend on them)"
    model = dde.Model(data, net)
    model.compile("adam", lr=1e-4)
    model.train(iterations=2, display_every=10**9, verbose=0)
    start = time.perf_counter()
    model.train(iterations=steps, display_every=10**9, verbose=0)
    return 1e3 * (time.perf_counter() - start) / steps, note


# ---------------------------------------------------------------------------------------------
# Refinement stages on burgers1d
# ---------------------------------------------------------------------------------------------
def gn_step_seconds(problem, model, points, mode, rank, iterations):
    res = tangent_gauss_newton(problem, model, points=points, rank=rank, max_iters=iterations, patience=iterations,
                               compute_errors=False, jacobian_mode=mode, seed=0)
    h = res.history
    return (h[-1]["seconds"] - h[0]["seconds"]) / max(1, len(h) - 1), res.diagnostics["jacobian_backends"]


def ilsr_outer_seconds(problem, model, points):
    d = burgers1d.DEFAULTS
    res = iterative_lsr(problem, model, outer_iterations=1, points=points, rank=d["rank"],
                        align_iterations=d["align_iterations"], warm_start=d["align_warm_start"],
                        compute_errors=False, seed=0)
    return res.history[-1]["seconds_iteration"]


def sketch_seconds(points: int, rank: int, seed: int) -> dict:
    """Seconds of the randomized range finder (:func:`pinnlsr.subspace.sketch_svd`) on allen_cahn1d's
    output Jacobian (default network, ``points`` interior points: its last time window), with the
    left singular vectors of the tall G Q (``left=True``, the SVD of G Q itself) and without them
    (the SVD of its R factor, what the pipelines run), and the largest difference of the singular
    values between the two."""
    from pinnlsr.linearize import JacobianOperator
    from pinnlsr.models import ParamSpec
    from pinnlsr.residual import output_rows
    from pinnlsr.subspace import sketch_svd

    problem = allen_cahn1d.AllenCahn1D(n_interior=points)
    gen = torch.Generator().manual_seed(seed)
    model = problem.default_model(gen)
    x = problem.sample_points(gen)["pde"]
    op = JacobianOperator(output_rows(model, x), ParamSpec.of(model).flatten(model))
    out = {"points": points, "rank": rank}
    values = {}
    for left in (True, False):
        start = time.perf_counter()
        _, values[left], _ = sketch_svd(op, rank, 10, generator=torch.Generator().manual_seed(seed), left=left)
        out["sketch_s_with_u" if left else "sketch_s_through_r"] = time.perf_counter() - start
    out["sketch_speedup"] = out["sketch_s_with_u"] / out["sketch_s_through_r"]
    out["max_singular_value_difference"] = float((values[True] - values[False]).abs().max() / values[True][0])
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for bench_training.json")
    ap.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--adam-steps", type=int, default=100, help="timed Adam steps per implementation")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (state it with the numbers)")
    ap.add_argument("--gn-iters", type=int, default=2, help="timed Gauss–Newton steps per backend")
    ap.add_argument("--rank", type=int, default=1000, help="Gauss–Newton subspace rank on burgers1d")
    ap.add_argument("--no-deepxde", action="store_true", help="skip DeepXDE")
    ap.add_argument("--no-refinement", action="store_true", help="skip the Gauss–Newton and ILSR timings")
    ap.add_argument("--sketch-points", type=int, default=12000,
                    help="allen_cahn1d interior points of the range-finder timing (0: skip it)")
    ap.add_argument("--sketch-rank", type=int, default=2000, help="rank of the range-finder timing")
    ap.add_argument("--seed", type=int, default=0)
    add_alias(ap, "--steps", "--adam-steps", type=int)
    add_alias(ap, "--gn-iterations", "--gn-iters", type=int)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()  # malloc kept for repeated tensor passes (pinnlsr.allocator)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"threads": args.threads, "steps": args.adam_steps, "seed": args.seed, "dtype": "float64",
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "problems": {}}
    for name in args.problems:
        problem = PROBLEMS[name]()
        gen = torch.Generator().manual_seed(args.seed)
        model = problem.default_model(gen)
        points = problem.sample_points(gen)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        row = {}
        row["adam_ms_pinnlsr"], row["backends"] = ms_pinnlsr_adam(problem, model, points, args.adam_steps, "auto")
        model.load_state_dict(state)
        row["adam_ms_pinnlsr_generic"] = ms_pinnlsr_adam(problem, model, points, max(5, args.adam_steps // 5), "generic")[0]
        model.load_state_dict(state)
        row["adam_ms_autograd"] = ms_autograd_adam(name, problem, model, points, args.adam_steps)
        row["adam_ms_deepxde"], row["deepxde_note"] = (None, "not run") if args.no_deepxde else \
            ms_deepxde_adam(name, problem, args.adam_steps)
        result["problems"][name] = row
        dx = "-" if row["adam_ms_deepxde"] is None else f"{row['adam_ms_deepxde']:7.1f}"
        print(f"{name:13s} Adam ms/step: pinnlsr {row['adam_ms_pinnlsr']:7.1f}  generic "
              f"{row['adam_ms_pinnlsr_generic']:7.1f}  autograd {row['adam_ms_autograd']:7.1f}  deepxde {dx}", flush=True)
    if not args.no_refinement:
        problem = burgers1d.Burgers1D()
        gen = torch.Generator().manual_seed(args.seed)
        model = problem.default_model(gen)
        points = problem.sample_points(gen)
        train_adam(problem, model, points, 200, lr=3e-3, progress=False)
        for mode, key in (("explicit", "gn_step_s_explicit"), ("auto", "gn_step_s_fast")):
            result[key], backends = gn_step_seconds(problem, model, points, mode, args.rank, args.gn_iters)
            result[key.replace("_s_", "_backends_")] = backends
        result["gn_speedup"] = result["gn_step_s_explicit"] / result["gn_step_s_fast"]
        result["ilsr_outer_s"] = ilsr_outer_seconds(problem, model, points)
        print(f"burgers1d Gauss–Newton step (rank {args.rank}): explicit rows {result['gn_step_s_explicit']:.2f} s, "
              f"jets {result['gn_step_s_fast']:.2f} s ({result['gn_speedup']:.1f}x); one ILSR outer iteration "
              f"{result['ilsr_outer_s']:.1f} s", flush=True)
    if args.sketch_points > 0:
        result["sketch"] = sketch_seconds(args.sketch_points, args.sketch_rank, args.seed)
        sk = result["sketch"]
        print(f"allen_cahn1d range finder ({sk['points']} points, rank {sk['rank']}): with U {sk['sketch_s_with_u']:.1f} s, "
              f"through R {sk['sketch_s_through_r']:.1f} s ({sk['sketch_speedup']:.2f}x; singular values differ by "
              f"{sk['max_singular_value_difference']:.1e} relative)", flush=True)
    atomic_write_json(args.out / "bench_training.json", result)
    print(f"wrote {args.out / 'bench_training.json'} (threads {args.threads})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
