"""Relative L2 error of each stage of a time-dependent run, per time slice of the reference grid.

Reads the run folder's ``predictions.npz`` (points (N, 2) with time in the last column, reference
(N, k), pred_STAGE (N, k)) and prints one row per time slice: how the error grows in time shows
whether training respected causality.

    python -m problems.allen_cahn1d --out runs/allen_cahn1d
    python scripts/error_by_time.py runs/allen_cahn1d --times 0 0.1 0.3 0.5 1
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pinnlsr.report import read_predictions


def error_by_time(points: np.ndarray, reference: np.ndarray, prediction: np.ndarray, times) -> list[float]:
    """Relative L2 error of ``prediction`` on the reference points nearest to each time in ``times``
    (points (N, d), time in the last column; reference, prediction (N, k))."""
    t = points[:, -1]
    grid = np.unique(t)
    errors = []
    for time in times:
        nearest = grid[np.argmin(np.abs(grid - time))]
        rows = t == nearest
        ref = reference[rows]
        errors.append(float(np.linalg.norm(prediction[rows] - ref) / max(np.linalg.norm(ref), 1e-300)))
    return errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a run folder with predictions.npz")
    p.add_argument("--times", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        points, reference, stages = read_predictions(args.run_dir)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None
    print("t        " + "".join(f"{name:>12}" for name in stages))
    columns = {name: error_by_time(points, reference, pred, args.times) for name, pred in stages.items()}
    for i, time in enumerate(args.times):
        print(f"{time:<9.3g}" + "".join(f"{columns[name][i]:>12.3e}" for name in stages))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
