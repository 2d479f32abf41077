"""How closely can a problem's network represent its reference solution? A supervised fit, no PDE.

When a refinement stalls, either the optimization or the network is the limit. This script takes
the optimization out: it fits the problem's default network (or one of other ``--widths``) to the
reference values themselves, by Adam, then L-BFGS, then Levenberg–Marquardt over all parameters
(the Jacobian of u at the training points in θ, its R factor by Householder QR, the SVD of R, and
the damping of each step chosen by trying it on held-out reference points, as in
:class:`pinnlsr.solvers.DampingSearch`). The relative L2 error it ends at over all reference points
is what this architecture can give at best from this start; a PINN of the same network cannot
beat it by much.

Writes ``DIR/capacity.json``: {"problem", "widths", "n_params", "n_train", "seed", "threads",
"stages": [{"stage", "rel_l2", "train_residual", "validation_residual", "seconds"}], "lm_history"}.

    python scripts/fit_capacity.py --problem allen_cahn1d --threads 1 --out runs/capacity_ac
    python scripts/fit_capacity.py --problem allen_cahn1d --widths 32 32 --points 2000 --lm-steps 2 --out /tmp/c
"""
from __future__ import annotations

import importlib
import json
import math
import time
from pathlib import Path

import torch

from pinnlsr.allocator import tune_allocator
from pinnlsr.ilsr import AlignmentProblem
from pinnlsr.linearize import JacobianOperator
from pinnlsr.metrics import error_metrics, predict
from pinnlsr.problem import PDEProblem
from pinnlsr.models import ParamSpec
from pinnlsr.residual import residual_rows
from pinnlsr.settings import Parser
from pinnlsr.solvers import DampedLeastSquares, DampingSearch
from pinnlsr.train import train_adam, train_lbfgs

PROBLEMS = {
    "allen_cahn1d": ("problems.allen_cahn1d", "AllenCahn1D"),
    "burgers1d": ("problems.burgers1d", "Burgers1D"),
    "kovasznay": ("problems.kovasznay", "Kovasznay"),
    "lid_driven": ("problems.lid_driven", "LidDriven"),
}


def reference_fit(problem: PDEProblem, x: torch.Tensor, y: torch.Tensor) -> AlignmentProblem:
    """Supervised least squares u(x_i) ≈ y_i at fixed points x (n, d) with values y (n, k), no PDE
    (the Iterative LSR alignment's supervised term alone; its one term is "align")."""
    return AlignmentProblem(problem, x, y, dtau=None)


def split_reference(x: torch.Tensor, y: torch.Tensor, n_train: int, seed: int):
    """Disjoint random training and validation sets of the reference points, n_train each."""
    if not 0 < 2 * n_train <= x.shape[0]:
        raise ValueError(f"--points {n_train}: give 1 to {x.shape[0] // 2} (the reference has {x.shape[0]} points, "
                         "half at most for training, as many for validation)")
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    train, val = perm[:n_train], perm[n_train:2 * n_train]
    return (x[train], y[train]), (x[val], y[val])


def levenberg_marquardt(fit: PDEProblem, validation: PDEProblem, net: torch.nn.Module, steps: int,
                        rcond: float = 1e-14, log=print, callback=None) -> list[dict]:
    """Levenberg–Marquardt over all of ``net``'s parameters on ``fit``'s supervised term (a
    :func:`reference_fit`), the damping of every step chosen on ``validation``'s; in place on ``net``. Returns one record per step
    (residuals as root mean squares, the numerical rank of the Jacobian at ``rcond``, seconds),
    each also passed to ``callback`` as it is taken."""
    spec = ParamSpec.of(net)
    train_rows = residual_rows(fit, net, {"align": fit.align_points}, spec)
    val_rows = residual_rows(validation, net, {"align": validation.align_points}, spec)
    search, history = DampingSearch(damping=1e-6), []
    theta = spec.flatten(net).detach()
    for step in range(steps):
        t = time.perf_counter()
        op = JacobianOperator(train_rows, theta)
        f = op.values()
        f_norm = float(torch.linalg.vector_norm(f))
        with torch.no_grad():
            val_norm = float(torch.linalg.vector_norm(val_rows.values(theta)))
        damped = DampedLeastSquares(op.dense(), -f, rcond)

        def evaluate(delta):
            with torch.no_grad():
                norm = float(torch.linalg.vector_norm(train_rows.values(theta + delta)))
            return (norm if math.isfinite(norm) else math.inf), None

        def validate(delta, _):
            with torch.no_grad():
                return float(torch.linalg.vector_norm(val_rows.values(theta + delta)))

        trial, tries, _ = search.choose(damped, f_norm, evaluate, validate)
        if trial is None or trial.score >= val_norm:
            log(f"LM step {step}: no step lowers the residuals; stopping")
            break
        theta = theta + trial.delta
        record = {"step": step, "train_residual": trial.norm, "validation_residual": trial.score, "mu": trial.mu,
                  "tries": tries, "rank_used": damped.rank_used, "cond": damped.cond,
                  "seconds": time.perf_counter() - t}
        history.append(record)
        spec.assign(net, theta)
        if callback is not None:
            callback(record)
        log(f"LM step {step}: train {trial.norm:.3e}, validation {trial.score:.3e}, rank {damped.rank_used}, "
            f"{record['seconds']:.0f} s")
    spec.assign(net, theta)
    return history


def build_parser() -> Parser:
    p = Parser(prog="python scripts/fit_capacity.py", description=__doc__.splitlines()[0])
    p.add_argument("--problem", choices=list(PROBLEMS), default="allen_cahn1d", help="problem whose reference is fitted")
    p.add_argument("--out", type=Path, required=True, help="folder for capacity.json")
    p.add_argument("--widths", type=int, nargs="+", default=None, help="hidden widths (default: the problem's)")
    p.add_argument("--points", type=int, default=16000, help="training points drawn from the reference (as many "
                   "others validate)")
    p.add_argument("--adam-steps", type=int, default=3000, help="Adam steps (learning rate 3e-3 decayed to 1e-4)")
    p.add_argument("--lbfgs-steps", type=int, default=500, help="L-BFGS iterations after Adam")
    p.add_argument("--lm-steps", type=int, default=10, help="Levenberg–Marquardt steps over all parameters")
    p.add_argument("--seed", type=int, default=0, help="seed of the network and of the point split")
    p.add_argument("--threads", type=int, default=1, help="torch threads (state it with the numbers)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()
    torch.set_num_threads(args.threads)
    module, cls = PROBLEMS[args.problem]
    problem_cls = getattr(importlib.import_module(module), cls)
    problem = problem_cls(widths=tuple(args.widths)) if args.widths else problem_cls()
    x_ref, y_ref = (torch.as_tensor(a, dtype=torch.float64) for a in problem.reference())
    y_ref = y_ref.reshape(x_ref.shape[0], -1)
    (xt, yt), (xv, yv) = split_reference(x_ref, y_ref, args.points, args.seed)
    fit, validation = reference_fit(problem, xt, yt), reference_fit(problem, xv, yv)
    net = problem.default_model(generator=torch.Generator().manual_seed(args.seed))
    n_params = sum(p.numel() for p in net.parameters())
    args.out.mkdir(parents=True, exist_ok=True)
    stages, t0 = [], time.perf_counter()

    def write() -> None:
        result = {"problem": problem.name, "widths": list(getattr(problem, "widths", args.widths or [])),
                  "n_params": n_params, "n_train": args.points, "seed": args.seed, "threads": args.threads,
                  "stages": stages, "lm_history": lm_history}
        (args.out / "capacity.json").write_text(json.dumps(result, indent=1))

    def record(stage: str) -> None:
        with torch.no_grad():
            pred = predict(net, x_ref)
            train = float(torch.linalg.vector_norm(net(xt) - yt) / math.sqrt(xt.shape[0]))
            val = float(torch.linalg.vector_norm(net(xv) - yv) / math.sqrt(xv.shape[0]))
        stages.append({"stage": stage, "rel_l2": error_metrics(pred, y_ref)["rel_l2"], "train_residual": train,
                       "validation_residual": val, "seconds": time.perf_counter() - t0})
        print(f"{stage}: rel_l2 {stages[-1]['rel_l2']:.3e} (train rms {train:.3e}, validation rms {val:.3e}), "
              f"{stages[-1]['seconds']:.0f} s", flush=True)
        write()

    lm_history: list[dict] = []
    points = {"align": xt}
    train_adam(fit, net, points, args.adam_steps, lr=3e-3, final_lr=1e-4, progress=False)
    record("adam")
    train_lbfgs(fit, net, points, args.lbfgs_steps, progress=False)
    record("lbfgs")
    levenberg_marquardt(fit, validation, net, args.lm_steps,
                        log=lambda line: print(line, flush=True), callback=lambda rec: (lm_history.append(rec), write()))
    record("levenberg_marquardt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
