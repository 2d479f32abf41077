"""Cost of a residual that reads u at fixed shifts of its point, side by side in one run.

lid_driven's pressure gauge is either p(0,0) (``LidDriven(gauge_size=0)``) or the mean of p over
[0, 0.05]² from 36 Gauss–Legendre nodes (the default): one term that reads u at 36 shifted points.
Prints the milliseconds per training loss and gradient (:class:`pinnlsr.train.Objective`, jets) of both
at the default network and points, and their ratio; the gauge term is one of 3,801 points, so a
ratio near 1 means the shifted reads cost about what their 36 network evaluations do.

    python scripts/bench_shifted_points.py --threads 1
"""
from __future__ import annotations

import argparse
import time

import torch

from pinnlsr.allocator import tune_allocator
from pinnlsr.train import Objective
from problems.lid_driven import LidDriven


def ms_per_loss(problem: LidDriven, seed: int, repeats: int) -> tuple[float, dict]:
    """(ms per value_and_grad, backends) at the problem's default network and points."""
    gen = torch.Generator().manual_seed(seed)
    model = problem.default_model(gen)
    objective = Objective(problem, model, problem.sample_points(gen))
    theta = objective.spec.flatten(model)
    objective.value_and_grad(theta)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        objective.value_and_grad(theta)
    return 1e3 * (time.perf_counter() - start) / repeats, objective.backends


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (state it with the numbers)")
    parser.add_argument("--repeats", type=int, default=20, help="timed evaluations of each loss")
    parser.add_argument("--seed", type=int, default=0, help="seed of network and points")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()
    torch.set_num_threads(args.threads)
    point, _ = ms_per_loss(LidDriven(gauge_size=0.0), args.seed, args.repeats)
    area, backends = ms_per_loss(LidDriven(), args.seed, args.repeats)
    print(f"lid_driven loss and gradient ({args.threads} thread(s), float64): p(0,0) gauge {point:.1f} ms, "
          f"mean over [0, 0.05]² {area:.1f} ms (gauge term: {backends['p0']}); ratio {area / point:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
