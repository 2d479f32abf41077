"""Results table of README.md for poisson2d: Adam, then one-shot LSR in the whole parameter space
and in randomized subspaces of several ranks, all from the same trained network.

    python scripts/results_poisson2d.py --out runs/results_poisson2d [--seed 0] [--checkpoint PATH]

Writes OUT/results.json, OUT/results.md (the table), OUT/model.pt and OUT/comparison.png.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from pinnlsr import checkpoint as ckpt
from pinnlsr import plotting
from pinnlsr.io import atomic_write_json, atomic_write_text
from pinnlsr.lsr import lsr
from pinnlsr.metrics import model_errors, predict
from pinnlsr.models import ParamSpec
from pinnlsr.train import train_adam
from problems.poisson2d import Poisson2D


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md and figures")
    parser.add_argument("--seed", type=int, default=0, help="seed of network, points and sketches")
    parser.add_argument("--adam-steps", type=int, default=5000, help="Adam pretraining steps")
    parser.add_argument("--ranks", type=int, nargs="*", default=[100, 200, 300, 500, 800],
                        help="ranks of the randomized subspaces")
    parser.add_argument("--checkpoint", type=Path, default=None, help="skip Adam: a model.pt of the default MLP")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    print(f"seed {args.seed}")
    problem = Poisson2D()
    gen = torch.Generator().manual_seed(args.seed)
    model = problem.default_model(gen)
    points = problem.sample_points(gen)
    rows = []
    if args.checkpoint:
        ckpt.load_into(model, args.checkpoint)
        adam_seconds = float("nan")
    else:
        t = time.perf_counter()
        train_adam(problem, model, points, args.adam_steps, progress=False)
        adam_seconds = time.perf_counter() - t
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt.save_state_dict(model, args.out / "model.pt")
    adam = model_errors(problem, model, torch.float64, "cpu")
    rows.append({"method": f"Adam ({args.adam_steps} steps)", "rank": None, "rel_l2": adam["rel_l2"],
                 "max_abs_err": adam["max_abs_err"], "seconds": adam_seconds})
    full = lsr(problem, model, points=points, seed=args.seed)
    d = full.diagnostics
    rows.append({"method": "LSR, whole space (truncated SVD, rcond 1e-14)", "rank": d["rank_used"],
                 "rel_l2": d["after"].rel_l2, "max_abs_err": d["after"].max_abs_err,
                 "seconds": d["seconds"]["refine"], "cond": d["cond"]})
    x = problem.test_points()
    plotting.plot_comparison(x.numpy(), predict(full.model, x)[:, 0].numpy(), problem.exact(x)[:, 0].numpy(),
                             args.out / "comparison.png", titles=("LSR prediction", "exact", "|error|"),
                             suptitle="poisson2d: Adam then one-shot LSR", log_error=True)
    for r in args.ranks:
        res = lsr(problem, model, points=points, rank=r, subspace="randomized", seed=args.seed)
        d = res.diagnostics
        rows.append({"method": "LSR, randomized subspace", "rank": d["rank"], "rel_l2": d["after"].rel_l2,
                     "max_abs_err": d["after"].max_abs_err, "seconds": d["seconds"]["refine"], "cond": d["cond"]})
    lines = ["| method | rank | rel. L2 | max error | cond(GV) used | seconds |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        cond = f"{row['cond']:.1e}" if "cond" in row else ""
        rank = "" if row["rank"] is None else str(row["rank"])
        lines.append(f"| {row['method']} | {rank} | {row['rel_l2']:.2e} | {row['max_abs_err']:.2e} | {cond} | {row['seconds']:.1f} |")
    table = "\n".join(lines)
    print(table)
    atomic_write_text(args.out / "results.md", table + f"\n\nseed {args.seed}, {ParamSpec.of(model).numel} parameters, "
                      f"{sum(v.shape[0] for v in points.values())} points, float64, "
                      f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    atomic_write_json(args.out / "results.json", {"seed": args.seed, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
