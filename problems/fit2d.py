"""Supervised fit of u = sin(πx) sin(πy) on [-1,1]²: LSR of a trained regressor.

10,000 random samples (80/20 train/validation split, optional Gaussian label noise), an MLP
2-[30]x3-1 tanh trained by Adam on the mean squared error, then LSR with a rank scan: one SVD
basis of the output Jacobian, one QR of G·V, every rank solved, the rank chosen on the validation
split (rank 0 = keep the trained network). Errors on a 100×100 grid.

    python -m problems.fit2d --out runs/fit2d
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from pinnlsr import checkpoint as ckpt
from pinnlsr.geometry import uniform_grid
from pinnlsr.models import MLP, ParamSpec
from pinnlsr.pipeline import Pipeline, Run, Stage, add_run_options, evaluate, run_guarded, run_pipeline
from pinnlsr.problem import PDEProblem, Term
from pinnlsr.plotting import draw_safely, plot_rank_scan
from pinnlsr.rank import TermsProblem, default_ranks, lsr_rank_scan, scan_stage
from pinnlsr.records import StageRecord
from pinnlsr.settings import Parser, RunSettings, add_settings
from pinnlsr.train import train_adam

PI = math.pi


def data_residual(u, x, y):
    """Prediction minus label at one sample."""
    return u(x) - y


class Fit2D(PDEProblem):
    name = "fit2d"
    description = "Supervised fit of sin(πx) sin(πy) on [-1,1]² from 10,000 random samples (80/20 split)."
    input_names = ("x", "y")
    output_names = ("u",)

    def __init__(self, n_samples: int = 10000, validation_fraction: float = 0.2, noise: float = 0.0,
                 seed: int = 0, grid: int = 100):
        if n_samples < 2 or not 0 < validation_fraction < 1:
            raise ValueError(f"fit2d: need n_samples >= 2 and 0 < validation_fraction < 1, got "
                             f"{n_samples} and {validation_fraction}")
        gen = torch.Generator().manual_seed(seed)
        x = 2 * torch.rand(n_samples, 2, generator=gen, dtype=torch.float64) - 1
        y = self.exact(x) + noise * torch.randn(n_samples, 1, generator=gen, dtype=torch.float64)
        n_val = max(1, round(n_samples * validation_fraction))
        self.x_train, self.y_train = x[n_val:], y[n_val:]
        self.x_val, self.y_val = x[:n_val], y[:n_val]
        self.noise, self.grid = noise, grid

    def terms(self) -> list[Term]:
        return [Term("data", data_residual, self.x_train, targets=self.y_train)]

    def validation(self) -> PDEProblem:
        """The held-out split as a problem with one data term (scores each rank)."""
        return TermsProblem([Term("data", data_residual, self.x_val, targets=self.y_val)], self.input_names,
                            self.output_names, name="fit2d_validation")

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.sin(PI * x[:, 0]) * torch.sin(PI * x[:, 1])).unsqueeze(1)

    def test_points(self) -> torch.Tensor:
        return uniform_grid((-1.0, -1.0), (1.0, 1.0), self.grid)

    def default_model(self, generator=None, dtype=torch.float64, device="cpu"):
        return MLP(2, 1, (30, 30, 30), "tanh", generator=generator, dtype=dtype, device=device)


#: the settings of the run (Adam, then the rank scan; the other options are fit2d's own)
DEFAULTS = RunSettings(adam_steps=5000, lr=1e-3, final_lr=1e-4)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = Parser(prog=prog or "python -m problems.fit2d", description=Fit2D.description
               + " Adam, then LSR with the rank chosen on the validation split.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_options(p, seed_help="seed of data, initialisation and sketches",
                    out_help="folder for metrics.json, model.pt, rank_scan.png")
    p.add_argument("--samples", type=int, default=10000, help="random samples (train + validation)")
    p.add_argument("--validation-fraction", type=float, default=0.2, help="share of the samples held out")
    p.add_argument("--noise", type=float, default=0.0, help="std of Gaussian label noise")
    p.add_argument("--widths", type=int, nargs="+", default=[30, 30, 30], help="hidden layer widths")
    add_settings(p, DEFAULTS, ("adam_steps", "lr", "final_lr"))
    p.add_argument("--max-rank", type=int, default=None, help="basis columns (default: all parameters)")
    p.add_argument("--n-ranks", type=int, default=40, help="about this many ranks scanned")
    p.add_argument("--criterion", choices=["validation", "residual"], default="validation",
                   help="what chooses the rank: error on the validation split or training residual")
    p.add_argument("--subspace", choices=["auto", "svd", "randomized"], default="auto", help="how the basis is chosen")
    p.add_argument("--least-squares", choices=["dense", "streaming"], default="dense",
                   help="reduced solve: dense QR or streamed TSQR")
    p.add_argument("--checkpoint", type=Path, default=None, help="refine this state_dict instead of training")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def prepare(run: Run) -> None:
    """The data, the network and the training points."""
    args, s = run.args, run.state
    s.problem = Fit2D(args.samples, args.validation_fraction, args.noise, args.seed)
    s.model = MLP(2, 1, tuple(args.widths), "tanh", generator=run.generator, dtype=run.dtype, device=run.device)
    s.points = s.problem.sample_points(run.generator, run.dtype, run.device)
    p = s.problem
    run.metrics.update(n_params=ParamSpec.of(s.model).numel,
                       n_points={"train": int(p.x_train.shape[0]), "validation": int(p.x_val.shape[0]),
                                 "test": int(p.test_points().shape[0])},
                       noise=args.noise)


def pretrain(run: Run) -> StageRecord:
    """Adam on the training split, or the network of ``--checkpoint``."""
    args, s = run.args, run.state
    t = time.perf_counter()
    if args.checkpoint is not None:
        ckpt.load_into(s.model, args.checkpoint)
        return StageRecord("checkpoint", time.perf_counter() - t,
                           evaluate(s.problem, s.model, s.points, run.dtype, run.device), {"path": str(args.checkpoint)})
    train_adam(s.problem, s.model, s.points, args.adam_steps, args.lr, args.final_lr, False if args.quiet else None)
    return StageRecord("adam", time.perf_counter() - t, evaluate(s.problem, s.model, s.points, run.dtype, run.device),
                       {"steps": args.adam_steps})


def rank_scan(run: Run) -> StageRecord:
    """LSR with the rank chosen on the validation split (or by the training residual)."""
    args, s = run.args, run.state
    m = ParamSpec.of(s.model).numel
    max_rank = min(m, s.problem.x_train.shape[0], args.max_rank or m)
    s.result = lsr_rank_scan(s.problem, s.model, points=s.points, validation=s.problem.validation(),
                             ranks=default_ranks(max_rank, args.n_ranks), max_rank=max_rank,
                             criterion=args.criterion, subspace=args.subspace, seed=args.seed, dtype=run.dtype,
                             device=run.device, least_squares=args.least_squares)
    return scan_stage(s.result)


def finish(run: Run, metrics: dict) -> None:
    """The improvement over the trained network; model.pt and rank_scan.png."""
    first, last, result = run.stages[0], run.stages[-1], run.state.result
    metrics["improvement"] = first.rel_l2 / max(last.rel_l2, 1e-300)
    print(f"chosen rank {result.rank} of {result.diagnostics['max_rank']} ({run.args.criterion}); "
          f"test error {first.rel_l2:.3e} -> {last.rel_l2:.3e} ({metrics['improvement']:.1f}x)")
    if run.out is not None:
        run.out.mkdir(parents=True, exist_ok=True)
        ckpt.save_state_dict(run.state.model, run.out / "model.pt")
        if not run.args.no_plot:
            path = draw_safely(lambda: plot_rank_scan(result.scan, run.out / "rank_scan.png", title="fit2d"))
            if path is not None:
                metrics["figure"] = path.name


#: the pipeline: train (or load), then the validated rank scan
PIPELINE = Pipeline(Fit2D, [Stage("pretrain", pretrain), Stage("lsr", rank_scan)], prepare=prepare, finish=finish)


def run(args: argparse.Namespace) -> dict:
    return run_pipeline(PIPELINE, args)


def run_cli(argv: list[str] | None = None, prog: str | None = None) -> int:
    return run_guarded(run, build_parser(prog).parse_args(argv))[0]


PROBLEM = Fit2D

if __name__ == "__main__":
    raise SystemExit(run_cli())
