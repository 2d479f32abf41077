"""Where the error of a run sits: per output, its relative L2 error, the share of its squared error
inside given boxes, and its relative L2 error outside them.

Reads the run folder's ``predictions.npz`` (points (N, d), reference (N, k), pred_STAGE (N, k)).
A box is given by its lower and upper corner, d numbers each (``--box X0 Y0 X1 Y1`` in 2-D; repeat
``--box`` for several). Example, the lid corners of the cavity:

    python -m problems.lid_driven --out runs/lid_driven
    python scripts/error_by_region.py runs/lid_driven --stage ilsr --box 0 0.95 0.05 1 --box 0.95 0.95 1 1

``--around X Y --radii R ...`` prints instead how the reference and the prediction behave towards a
point (a corner where the solution may be singular): their means, per output, over the reference
points at distance r/√2 <= |x - point| < r·√2 (one octave around each r).

``--free-constant J`` treats output J as defined up to a constant (a pressure): the mean of
prediction − reference outside the boxes is removed from it before measuring. ``--against RUN2``
measures the stage against RUN2's prediction of the same stage at the same points instead of the
reference: how far two runs (seeds, settings) are apart, beside how far each is from the reference.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pinnlsr.report import read_predictions


def inside_boxes(points: np.ndarray, boxes) -> np.ndarray:
    """(N,) bool: the points inside any of ``boxes`` (each (lower corner, upper corner), closed)."""
    mask = np.zeros(points.shape[0], dtype=bool)
    for lower, upper in boxes:
        mask |= np.all((points >= np.asarray(lower)) & (points <= np.asarray(upper)), axis=1)
    return mask


def remove_constants(reference: np.ndarray, prediction: np.ndarray, columns, mask: np.ndarray) -> np.ndarray:
    """A copy of ``prediction`` (N, k) with, in each of ``columns``, the mean of prediction − reference
    over the points where ``mask`` (N,) is False subtracted (the constant that best fits there)."""
    shifted = prediction.copy()
    for j in columns:
        shifted[:, j] -= np.mean(prediction[~mask, j] - reference[~mask, j])
    return shifted


def error_by_region(points: np.ndarray, reference: np.ndarray, prediction: np.ndarray, boxes,
                    free_constant=()) -> list[dict]:
    """Per output column, then for all outputs together (the last row, as the runs' rel_l2):
    rel_l2 (all points), share_in_boxes (of the squared error), rel_l2_outside (error and reference
    norm both outside the boxes). Outputs in ``free_constant`` are first shifted by their mean
    difference outside the boxes (see ``remove_constants``)."""
    mask = inside_boxes(points, boxes)
    prediction = remove_constants(reference, prediction, free_constant, mask)
    rows = []
    for j in list(range(reference.shape[1])) + [slice(None)]:
        err, ref = prediction[:, j] - reference[:, j], reference[:, j]
        total = float(np.sum(err ** 2))
        rows.append({"rel_l2": float(np.linalg.norm(err) / max(np.linalg.norm(ref), 1e-300)),
                     "share_in_boxes": float(np.sum(err[mask] ** 2) / total) if total > 0 else 0.0,
                     "rel_l2_outside": float(np.linalg.norm(err[~mask]) / max(np.linalg.norm(ref[~mask]), 1e-300))})
    return rows


def radial_profile(points: np.ndarray, values: np.ndarray, center, radii) -> list[tuple[int, np.ndarray]]:
    """For each r in ``radii``: (number of points, mean of ``values`` (N, k) over them) for the
    points at distance r/√2 <= |x - center| < r·√2; the mean is NaN where there are none."""
    dist = np.linalg.norm(points - np.asarray(center, dtype=float), axis=1)
    out = []
    for r in radii:
        band = (dist >= r / np.sqrt(2)) & (dist < r * np.sqrt(2))
        mean = values[band].mean(axis=0) if band.any() else np.full(values.shape[1], np.nan)
        out.append((int(band.sum()), mean))
    return out


def print_profile(points, reference, stages, center, radii) -> None:
    print(f"mean values at distance r (one octave) from {tuple(center)}")
    print(f"{'r':>10}{'points':>8}  " + "  ".join(f"{name:>10}" for name in ["reference", *stages]))
    profiles = [radial_profile(points, v, center, radii) for v in [reference, *stages.values()]]
    for i, r in enumerate(radii):
        count = profiles[0][i][0]
        cells = ["[" + " ".join(f"{m:.3f}" for m in prof[i][1]) + "]" for prof in profiles]
        print(f"{r:>10.4g}{count:>8}  " + "  ".join(cells))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a run folder with predictions.npz")
    p.add_argument("--stage", default=None, help="stage to report (default: every pred_* in the file)")
    p.add_argument("--box", type=float, nargs="+", action="append", default=[], metavar="C",
                   help="lower corner then upper corner (2d numbers); repeat for several boxes")
    p.add_argument("--around", type=float, nargs="+", default=None, metavar="C",
                   help="a point (d numbers): print the radial profile towards it instead of boxes")
    p.add_argument("--radii", type=float, nargs="+", default=[0.004, 0.008, 0.016, 0.032, 0.064, 0.128],
                   help="distances of the --around profile")
    p.add_argument("--free-constant", type=int, nargs="+", default=[], metavar="J",
                   help="outputs defined up to a constant (e.g. a pressure): remove their mean difference")
    p.add_argument("--against", type=Path, default=None, metavar="RUN2",
                   help="measure against RUN2's prediction of the same stage instead of the reference")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.box and args.around is None and not args.free_constant and args.against is None:
        raise SystemExit("error: give at least one --box, --around, --free-constant or --against")
    try:
        points, reference, stages = read_predictions(args.run_dir)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None
    d = points.shape[1]
    if args.stage is not None:
        if args.stage not in stages:
            raise SystemExit(f"error: no stage {args.stage!r} in {args.run_dir}/predictions.npz; it has {sorted(stages)}")
        stages = {args.stage: stages[args.stage]}
    if any(not 0 <= j < reference.shape[1] for j in args.free_constant):
        raise SystemExit(f"error: --free-constant takes output indices 0..{reference.shape[1] - 1}")
    if args.against is not None:
        try:
            other_points, _, other_stages = read_predictions(args.against)
        except FileNotFoundError as exc:
            raise SystemExit(f"error: {exc}") from None
        if other_points.shape != points.shape or not np.array_equal(other_points, points):
            raise SystemExit(f"error: {args.against} has other points than {args.run_dir}: compare runs of one problem")
        if args.stage is None or args.stage not in other_stages:
            raise SystemExit(f"error: --against needs a --stage that both runs have; {args.against} has {sorted(other_stages)}")
        reference = other_stages[args.stage]
        print(f"measured against {args.against}'s {args.stage} prediction, not the reference")
    if args.around is not None:
        if len(args.around) != d:
            raise SystemExit(f"error: --around needs {d} numbers for {d}-D points")
        print_profile(points, reference, stages, args.around, args.radii)
        if not args.box and not args.free_constant:
            return 0
    if any(len(b) != 2 * d for b in args.box):
        raise SystemExit(f"error: each --box needs {2 * d} numbers (lower corner, upper corner) for {d}-D points")
    boxes = [(b[:d], b[d:]) for b in args.box]
    mask = inside_boxes(points, boxes)
    print(f"{int(mask.sum())} of {len(mask)} reference points ({mask.mean():.1%}) lie in the boxes")
    print(f"{'stage':<14}{'output':<8}{'rel. L2':>12}{'share in boxes':>16}{'rel. L2 outside':>17}")
    for name, pred in stages.items():
        rows = error_by_region(points, reference, pred, boxes, args.free_constant)
        for j, row in enumerate(rows):
            print(f"{name:<14}{j if j < len(rows) - 1 else 'all':<8}{row['rel_l2']:>12.3e}{row['share_in_boxes']:>16.1%}{row['rel_l2_outside']:>17.3e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
