"""Nonlinear-PDE benchmark: one-shot and Iterative LSR beside Adam, L-BFGS, SOAP and BFGS at equal time.

For each problem the same network (seeded) and the same collocation points are trained by Adam,
then by L-BFGS, then refined by one-shot LSR and by Iterative LSR (both starting from the Adam +
L-BFGS network). To compare at equal cost, Adam and L-BFGS are then continued for at least the
wall time that L-BFGS + ILSR took ("adam_long", "lbfgs_long"), SOAP (package pytorch-optimizer)
trains the initial network with Adam's schedule and points for at least the whole pipeline's time
("soap"), and SciPy's BFGS continues the Adam + L-BFGS network for ILSR's time on networks of at
most ``pinnlsr.train.BFGS_MAX_PARAMS`` parameters ("bfgs_long"); a baseline that cannot run is
listed as skipped, with the reason (see ``pinnlsr.compare``). Writes, under --out:

- ``benchmark_pinns.md``: the table (relative L2 against the reference, residual, seconds) and,
  per problem, the ratio best(gradient-trained baselines) / ILSR;
- ``benchmark_pinns.json``: every number and every convergence history;
- ``NAME_convergence.png``: error and residual against iteration and against seconds, all methods;
- ``NAME/predictions.npz``: every method's final prediction at the reference points, so
  ``scripts/error_by_region.py OUT/NAME --stage METHOD`` and ``scripts/error_by_time.py`` read it
  as they read a run folder.

Each problem runs with its module's ``DEFAULTS`` (what ``python -m problems.NAME`` runs), plus one
Iterative LSR outer iteration for the problems whose default run has none (``ADDED_ILSR``).

    python scripts/benchmark_pinns.py --out results/pinns                 # default sizes (hours)
    python scripts/benchmark_pinns.py --problems helmholtz2d --out results/pinns_helmholtz2d
    python scripts/benchmark_pinns.py --quick --problems burgers1d --out /tmp/b   # minutes
"""
from __future__ import annotations

import dataclasses
import importlib
import sys
import time
from pathlib import Path

import torch

from pinnlsr.allocator import tune_allocator
from pinnlsr.compare import QUICK, QUICK_POINT_FRACTION, compare_methods, plot, table
from pinnlsr.io import atomic_write_json, atomic_write_text
from pinnlsr.report import write_predictions
from pinnlsr.settings import Parser, RunSettings, add_device_options, device_and_dtype

PROBLEMS = {
    "burgers1d": ("problems.burgers1d", "Burgers1D"),
    "allen_cahn1d": ("problems.allen_cahn1d", "AllenCahn1D"),
    "helmholtz2d": ("problems.helmholtz2d", "Helmholtz2D"),
    "kovasznay": ("problems.kovasznay", "Kovasznay"),
    "poisson2d_hard": ("problems.poisson2d_hard", "Poisson2DHard"),
    "lid_driven": ("problems.lid_driven", "LidDriven"),
}
QUICK_KWARGS = {"widths": (12, 12)}
#: An Iterative LSR stage for the problems whose default run has none: one outer iteration, whose
#: Gauss–Newton already reaches the target (linear PDEs converge in two steps, kovasznay in ten).
ADDED_ILSR = {
    "helmholtz2d": dict(ilsr_outer=1, ilsr_gn_iters=2, align_iterations=100),
    "poisson2d_hard": dict(ilsr_outer=1, ilsr_gn_iters=2, align_iterations=100),
    "kovasznay": dict(ilsr_outer=1, ilsr_gn_iters=10, align_iterations=100),
}


def settings(name: str, quick: bool) -> RunSettings:
    """The benchmark settings of one problem: the problem module's DEFAULTS (what
    ``python -m problems.NAME`` runs) with ADDED_ILSR; QUICK with ``quick``."""
    if quick:
        return QUICK
    defaults = importlib.import_module(PROBLEMS[name][0]).DEFAULTS
    return dataclasses.replace(defaults, **ADDED_ILSR.get(name, {}))


def run_problem(name: str, args) -> dict:
    module, cls = PROBLEMS[name]
    problem = getattr(importlib.import_module(module), cls)(**(QUICK_KWARGS if args.quick else {}))
    device, dtype = device_and_dtype(args)
    predictions = {}
    result = compare_methods(problem, settings(name, args.quick), args.seed, predictions=predictions,
                             point_fraction=QUICK_POINT_FRACTION if args.quick else None, dtype=dtype, device=device)
    if predictions:
        (args.out / name).mkdir(exist_ok=True)
        write_predictions(args.out / name / "predictions.npz", predictions.pop("points"), predictions.pop("reference"),
                          predictions)
    return result


def build_parser() -> Parser:
    p = Parser(prog="python scripts/benchmark_pinns.py", description=__doc__.splitlines()[0])
    p.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS), help="problems to run")
    p.add_argument("--out", type=Path, required=True, help="folder for the table, JSON, figures and predictions")
    p.add_argument("--seed", type=int, default=0, help="seed of network, points and sketches")
    add_device_options(p)
    p.add_argument("--quick", action="store_true", help="reduced sizes (a smoke run, minutes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (state it with the numbers)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()  # malloc kept for repeated tensor passes (pinnlsr.allocator)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.problems:
        t = time.perf_counter()
        res = run_problem(name, args)
        results.append(res)
        plot(res, args.out / f"{name}_convergence.png")
        atomic_write_json(args.out / "benchmark_pinns.json", {"quick": args.quick, "seed": args.seed,
                                                              "device": args.device, "dtype": args.dtype,
                                                              "threads": args.threads, "results": results})
        atomic_write_text(args.out / "benchmark_pinns.md", table(results))
        print(f"{name}: done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
