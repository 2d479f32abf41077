"""Inverse heat problem (PINNacle "HInv"): recover the coefficient a(x, y) from noisy observations.

    u_t - ∇·(a ∇u) = f   on [-1,1]² × [0,1],
    exact u = e^{-t} sin(πx) sin(πy),  a = 2 + sin(πx) sin(πy),  f from them,
    a = exact (= 2) on the spatial boundary, u observed at the 2,500 points of
    ../shared/data/pinnacle/heatinv_points.dat with Gaussian noise of standard deviation σ.

Two tanh MLPs give u(x, y, t) (3-[30]x3-1) and a(x, y) (2-[20]x2-1; a does not depend on t).
80% of the observations train (weight 100, with the PDE and the boundary term of a), 20% are held
out. Per noise level: Adam, then an LSR rank scan (one SVD basis, one QR) with the rank chosen by
the error on the held-out observations (rank 0 = keep the trained network), then Gauss–Newton in
the coefficients z at that rank (the term a·Δu is quadratic in z), each step kept only if it lowers
the training residual and keeps the validation error at most the trained network's.
Errors of u and a on a 41×41×11 grid.

    python -m problems.heat_inverse --out runs/heat_inverse            # σ = 0, 0.01, 0.05, 0.1
    python -m problems.heat_inverse --noise 0.1 --adam-steps 1000 --points pde=800 bc_a=200
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from pinnlsr import operators as op
from pinnlsr.geometry import Box, TimeDomain
from pinnlsr.datafolder import data_file
from pinnlsr.readers import load_points_dat
from pinnlsr.metrics import model_errors
from pinnlsr import jacobian as jac
from pinnlsr.models import MLP, LinearizedModel, ParamSpec
from pinnlsr.residual import residual_rows
from pinnlsr.solvers import DampedLeastSquares, DampingSearch
from pinnlsr.problem import PDEProblem, Term
from pinnlsr.plotting import draw_safely, plot_rank_scan
from pinnlsr.pipeline import Pipeline, Run, Stage, add_run_options, evaluate, run_guarded, run_pipeline
from pinnlsr.rank import TermsProblem, default_ranks, lsr_rank_scan, scan_stage
from pinnlsr.records import Evaluation, HistoryEntry, StageRecord
from pinnlsr.settings import Parser, RunSettings, add_alias, add_settings, parse_counts
from pinnlsr.train import train_adam

PI = math.pi
POINTS_FILE = "pinnacle/heatinv_points.dat"
NOISE_LEVELS = (0.0, 0.01, 0.05, 0.1)


def exact_u(x: torch.Tensor) -> torch.Tensor:
    """u = e^{-t} sin(πx) sin(πy) at points (..., 3)."""
    return torch.exp(-x[..., 2]) * torch.sin(PI * x[..., 0]) * torch.sin(PI * x[..., 1])


def exact_a(x: torch.Tensor) -> torch.Tensor:
    """a = 2 + sin(πx) sin(πy) at points (..., ≥2)."""
    return 2 + torch.sin(PI * x[..., 0]) * torch.sin(PI * x[..., 1])


def source(x: torch.Tensor) -> torch.Tensor:
    """f = u_t - ∇·(a∇u) for the exact u, a (S = sin πx sin πy, |∇S|² = π²(cx² sy² + sx² cy²)):
    f = e^{-t} (-S - |∇S|² + 2π² S (2 + S))."""
    sx, sy = torch.sin(PI * x[..., 0]), torch.sin(PI * x[..., 1])
    cx, cy = torch.cos(PI * x[..., 0]), torch.cos(PI * x[..., 1])
    s = sx * sy
    grad_sq = PI**2 * (cx**2 * sy**2 + sx**2 * cy**2)
    return torch.exp(-x[..., 2]) * (-s - grad_sq + 2 * PI**2 * s * (2 + s))


def observation_residual(u, x, y):
    """Predicted u minus the observed value at one point."""
    return u(x)[0] - y[0]


class HeatInverseNet(nn.Module):
    """u(x, y, t) and a(x, y) from two MLPs, as one model (N, 3) -> (N, 2) with outputs (u, a)."""

    def __init__(self, u_widths=(30, 30, 30), a_widths=(20, 20), generator=None, dtype=torch.float64, device="cpu"):
        super().__init__()
        self.u = MLP(3, 1, tuple(u_widths), "tanh", input_lower=(-1, -1, 0), input_upper=(1, 1, 1),
                     generator=generator, dtype=dtype, device=device)
        self.a = MLP(2, 1, tuple(a_widths), "tanh", input_lower=(-1, -1), input_upper=(1, 1),
                     generator=generator, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.u(x), self.a(x[:, :2])], 1)


class HeatInverse(PDEProblem):
    name = "heat_inverse"
    description = ("PINNacle HInv: u_t = ∇·(a∇u) + f on [-1,1]²×[0,1], unknown a(x,y) from 2,500 noisy "
                   "observations of u.")
    input_names = ("x", "y", "t")
    output_names = ("u", "a")

    def __init__(self, noise: float = 0.0, n_pde: int = 500, n_bc: int = 100, validation_fraction: float = 0.2,
                 obs_weight: float = 100.0, bc_weight: float = 1.0, seed: int = 0, points_path=None, grid=(41, 11)):
        if noise < 0 or not 0 < validation_fraction < 1:
            raise ValueError(f"heat_inverse: need noise >= 0 and 0 < validation_fraction < 1, got {noise}, "
                             f"{validation_fraction}")
        path = Path(points_path) if points_path is not None else data_file(POINTS_FILE)
        obs = torch.as_tensor(np.ascontiguousarray(load_points_dat(path)), dtype=torch.float64)
        if obs.ndim != 2 or obs.shape[1] != 3:
            raise ValueError(f"{path}: expected rows x, y, t (N, 3), got shape {tuple(obs.shape)}")
        gen = torch.Generator().manual_seed(seed)
        values = exact_u(obs) + noise * torch.randn(obs.shape[0], generator=gen, dtype=torch.float64)
        perm = torch.randperm(obs.shape[0], generator=gen)
        n_val = max(1, round(obs.shape[0] * validation_fraction))
        self.x_val, self.y_val = obs[perm[:n_val]], values[perm[:n_val]].unsqueeze(1)
        self.x_obs, self.y_obs = obs[perm[n_val:]], values[perm[n_val:]].unsqueeze(1)
        self.domain = TimeDomain(Box((-1.0, -1.0), (1.0, 1.0)), 0.0, 1.0)
        self.noise, self.n_pde, self.n_bc = noise, n_pde, n_bc
        self.obs_weight, self.bc_weight, self.grid = obs_weight, bc_weight, grid

    def terms(self) -> list[Term]:
        return [
            Term("pde", self.pde, self.domain.sample_interior, self.n_pde),
            Term("bc_a", self.bc_a, self.domain.sample_boundary, self.n_bc, self.bc_weight),
            Term("obs", observation_residual, self.x_obs, weight=self.obs_weight, targets=self.y_obs),
        ]

    def validation(self) -> PDEProblem:
        """The held-out observations as a problem with one data term."""
        return TermsProblem([Term("obs", observation_residual, self.x_val, targets=self.y_val)],
                            self.input_names, self.output_names, name="heat_inverse_validation")

    def pde(self, u, x):
        jac = op.jacobian(u, x)  # (2, 3): rows u, a; columns x, y, t
        lap_u = op.laplacian(u, x, component=0, dims=(0, 1))
        a = u(x)[1]
        div = a * lap_u + jac[1, 0] * jac[0, 0] + jac[1, 1] * jac[0, 1]
        return jac[0, 2] - div - source(x)

    def bc_a(self, u, x):
        return u(x)[1] - exact_a(x)

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([exact_u(x), exact_a(x)], 1)

    def test_points(self) -> torch.Tensor:
        n_space, n_time = self.grid
        return self.domain.grid(n_space, n_time)

    def default_model(self, generator=None, dtype=torch.float64, device="cpu"):
        return HeatInverseNet(generator=generator, dtype=dtype, device=device)


def tangent_gauss_newton(problem: PDEProblem, refined: LinearizedModel, points: dict, validation: PDEProblem,
                         iterations: int, validation_limit: float, rcond: float = 1e-12, max_tries: int = 12
                         ) -> tuple[LinearizedModel, list[HistoryEntry], float]:
    """Levenberg–Marquardt in the coefficients z of the refined predictor u0 + J V z (the PDE term
    a·Δu is quadratic in z, so one linear solve is not its minimizer): the damped step of
    :class:`pinnlsr.solvers.DampedLeastSquares`, the damping tried over decades per Jacobian
    (:class:`pinnlsr.solvers.DampingSearch`, starting nearly undamped). A trial step counts only if it
    lowers the training residual and keeps the validation error at most ``validation_limit`` (the
    trained network's: never worse than it); of those the one with the lowest validation error is
    taken; when none qualifies the damping grows, up to ``max_tries`` more trials. Returns the
    predictor, one record per iteration and the predictor's residual."""
    history = []
    val_points = validation.sample_points(torch.Generator())

    def scores(model):
        theta = ParamSpec.of(model).flatten(model)
        return (float(residual_rows(problem, model, points).values(theta).norm()),
                float(residual_rows(validation, model, val_points).values(theta).norm()))

    residual = scores(refined)[0]
    search = DampingSearch(1e-20, max_tries=max_tries)
    for it in range(iterations):
        z = refined.z.detach()
        rows = residual_rows(problem, refined, points)
        step = DampedLeastSquares(jac.jacobian(rows, z), -rows.values(z), rcond)

        def try_step(delta):
            candidate = copy.deepcopy(refined)
            with torch.no_grad():
                candidate.z.add_(delta)
            new_residual, new_val = scores(candidate)
            return new_residual, (candidate, new_val)

        def validate(delta, payload):  # never worse than the trained network on the validation data
            return payload[1] if payload[1] <= validation_limit else math.inf

        trial, tries, _ = search.choose(step, residual, try_step, validate)
        accepted = trial is not None
        history.append(HistoryEntry(it + 1, residual=trial.norm if accepted else residual,
                                    extras={"validation": trial.score if accepted else None, "accepted": accepted,
                                            "tries": tries}))
        if not accepted:
            break
        refined, residual = trial.payload[0], trial.norm
    return refined, history, residual


#: the settings of the run (Adam, then the rank scan and Gauss–Newton; the other options are this problem's own)
DEFAULTS = RunSettings(adam_steps=1500, lr=1e-3, final_lr=1e-4, gn_iters=5)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = Parser(prog=prog or "python -m problems.heat_inverse",
               description=HeatInverse.description + " Adam, then LSR with the rank chosen on "
               "held-out observations, per noise level.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_options(p, seed_help="seed of noise, split, initialisation and points",
                    out_help="folder for metrics.json and rank-scan figures", plot_help="skip the figures")
    p.add_argument("--noise", type=float, nargs="+", default=list(NOISE_LEVELS), help="noise standard deviations")
    p.add_argument("--points-file", type=Path, default=None, help=f"observation points (default: shared {POINTS_FILE})")
    add_settings(p, DEFAULTS, ("points",), notes={"points": "terms: pde=500, bc_a=100"})
    p.add_argument("--widths", type=int, nargs="+", default=[30, 30, 30], help="hidden widths of the u network")
    p.add_argument("--a-widths", type=int, nargs="+", default=[20, 20], help="hidden widths of the a network")
    p.add_argument("--obs-weight", type=float, default=100.0, help="weight of the observation term")
    add_settings(p, DEFAULTS, ("adam_steps", "lr", "final_lr"))
    p.add_argument("--max-rank", type=int, default=None, help="basis columns (default: all parameters)")
    p.add_argument("--n-ranks", type=int, default=25, help="about this many ranks scanned")
    p.add_argument("--criterion", choices=["validation", "residual"], default="validation",
                   help="what chooses the rank: error on the held-out observations or training residual")
    add_settings(p, DEFAULTS, ("gn_iters",), notes={"gn_iters": "here in z at the chosen rank"})
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_alias(p, "--n-pde", "--points", term="pde", type=int)
    add_alias(p, "--n-bc", "--points", term="bc_a", type=int)
    add_alias(p, "--gn-iterations", "--gn-iters", type=int)
    return p


def noise_level(noise: float) -> list[Stage]:
    """The stages at one noise level: Adam, the validated rank scan, Gauss–Newton in z at the
    chosen rank, and the level's summary row (no stage of its own)."""
    level = SimpleNamespace(noise=noise)

    def adam(run: Run) -> StageRecord:
        args = run.args
        level.problem = HeatInverse(noise, obs_weight=args.obs_weight, seed=args.seed, points_path=args.points_file)
        gen = torch.Generator().manual_seed(args.seed)  # each noise level starts from the same network and points
        level.model = HeatInverseNet(args.widths, args.a_widths, gen, run.dtype, run.device)
        level.points = level.problem.sample_points(gen, run.dtype, run.device, parse_counts(args.points))
        t = time.perf_counter()
        train_adam(level.problem, level.model, level.points, args.adam_steps, args.lr, args.final_lr,
                   False if args.quiet else None)
        level.trained = StageRecord("adam", time.perf_counter() - t,
                                    evaluate(level.problem, level.model, level.points, run.dtype, run.device),
                                    {"steps": args.adam_steps, "noise": noise})
        return level.trained

    def lsr(run: Run) -> StageRecord:
        args = run.args
        m = ParamSpec.of(level.model).numel
        if run.metrics["n_params"] is None:  # the first level's (every level has the same network)
            run.metrics["n_params"] = m
        max_rank = min(m, args.max_rank or m)
        level.result = lsr_rank_scan(level.problem, level.model, points=level.points,
                                     validation=level.problem.validation(), ranks=default_ranks(max_rank, args.n_ranks),
                                     max_rank=max_rank, criterion=args.criterion, seed=args.seed, dtype=run.dtype,
                                     device=run.device)
        level.lsr = level.final = scan_stage(level.result)
        level.lsr.extras["noise"] = noise
        return level.lsr

    def gauss_newton(run: Run) -> StageRecord | None:
        result = level.result
        if run.args.gn_iters <= 0 or result.rank == 0:
            return None
        t = time.perf_counter()
        refined, history, residual = tangent_gauss_newton(level.problem, result.model, result.points,
                                                          level.problem.validation(), run.args.gn_iters,
                                                          result.scan.validation_error[0])
        errors = model_errors(level.problem, refined, run.dtype, run.device)
        level.final = StageRecord("gauss_newton", time.perf_counter() - t, Evaluation(errors, residual),
                                  {"rank": result.rank, "iterations": [h.to_json() for h in history], "noise": noise})
        return level.final

    def summary(run: Run) -> None:
        scan = level.result.scan
        if run.out is not None and not run.args.no_plot:
            path = draw_safely(lambda: plot_rank_scan(scan, run.out / f"rank_scan_noise{noise:g}.png",
                                                      title=f"heat_inverse, σ = {noise:g}"))
            if path is not None:
                level.lsr.extras["figure"] = path.name
        run.state.levels.append(level)
        run.metrics["summary"].append(summary_row(level))
        print_summary([level])
        return None

    return [Stage("adam", adam), Stage("lsr", lsr), Stage("gauss_newton", gauss_newton), Stage("summary", summary)]


def summary_row(level: SimpleNamespace) -> dict:
    """The metrics.json summary row of a noise level: errors of u and a of the trained network
    (before), of the LSR predictor and of the final predictor (after), the best and the largest
    scanned rank's error of a, seconds."""
    trained, lsr, final = (s.evaluation.errors for s in (level.trained, level.lsr, level.final))
    scan, d = level.result.scan, level.result.diagnostics
    return {"noise": level.noise, "n_params": ParamSpec.of(level.model).numel, "rank": level.result.rank,
            "max_rank": d["max_rank"], "rel_l2_u_before": trained["rel_l2_0"], "rel_l2_u_after": final["rel_l2_0"],
            "rel_l2_a_before": trained["rel_l2_1"], "rel_l2_a_after": final["rel_l2_1"],
            "rel_l2_u_lsr": lsr["rel_l2_0"], "rel_l2_a_lsr": lsr["rel_l2_1"],
            "rel_l2_a_best_rank": min(scan.test_errors["rel_l2_a"]), "rel_l2_a_max_rank": scan.test_errors["rel_l2_a"][-1],
            "seconds_adam": level.trained.seconds,
            "seconds_lsr": level.lsr.seconds + (level.final.seconds if level.final is not level.lsr else 0.0)}


def print_summary(levels: list[SimpleNamespace], file=None) -> None:
    """Per noise level: the chosen rank and the errors of a and u before and after."""
    file = sys.stdout if file is None else file  # resolved per call: sys.stdout can be replaced
    print(f"{'noise':>6}{'rank':>7}{'a before':>11}{'a after':>11}{'a ratio':>9}{'u before':>11}{'u after':>11}",
          file=file)
    for level in levels:
        before, after = level.trained.evaluation.errors, level.final.evaluation.errors
        print(f"{level.noise:>6g}{level.result.rank:>7d}{before['rel_l2_1']:>11.3e}{after['rel_l2_1']:>11.3e}"
              f"{before['rel_l2_1'] / after['rel_l2_1']:>9.1f}{before['rel_l2_0']:>11.3e}"
              f"{after['rel_l2_0']:>11.3e}", file=file)


def stages(run: Run) -> list[Stage]:
    """Every noise level's stages, in the order of ``--noise``."""
    return [stage for noise in run.args.noise for stage in noise_level(noise)]


def prepare(run: Run) -> None:
    """The top-level metrics.json keys the noise levels fill in."""
    run.metrics.update(n_params=None, noise_levels=list(run.args.noise), summary=[])
    run.state.levels = []


def finish(run: Run, metrics: dict) -> None:
    """The summary of every noise level, printed together."""
    print()
    print_summary(run.state.levels)


#: the pipeline: per noise level Adam, the validated rank scan and Gauss–Newton
PIPELINE = Pipeline(HeatInverse, stages, prepare=prepare, finish=finish)


def run(args: argparse.Namespace) -> dict:
    return run_pipeline(PIPELINE, args)


def run_cli(argv: list[str] | None = None, prog: str | None = None) -> int:
    return run_guarded(run, build_parser(prog).parse_args(argv))[0]


PROBLEM = HeatInverse

if __name__ == "__main__":
    raise SystemExit(run_cli())
