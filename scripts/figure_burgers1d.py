"""The burgers1d figure of README.md: a pretrained network of a burgers1d run folder against the
spectral reference, as space-time maps (prediction, reference, |error|).

    python -m problems.burgers1d --ilsr-outer 0 --subspace full --out runs/burgers1d
    python scripts/figure_burgers1d.py runs/burgers1d docs/burgers1d.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pinnlsr import checkpoint as ckpt
from pinnlsr.datasets import load_burgers_npz
from pinnlsr.metrics import error_metrics, predict
from pinnlsr.plotting import plot_spacetime_comparison
from problems.burgers1d import Burgers1D


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="folder of a burgers1d run (its model.pt)")
    parser.add_argument("figure", type=Path, help="PNG to write")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    problem = Burgers1D()
    model = problem.default_model()
    ckpt.load_into(model, args.run_dir / "model.pt")
    ref = load_burgers_npz()
    nx, nt = ref.grid_shape
    x = torch.from_numpy(ref.points)
    pred = predict(model, x)
    err = error_metrics(pred, torch.from_numpy(ref.values))
    print(f"rel. L2 {err['rel_l2']:.3e}, max error {err['max_abs_err']:.3e}")
    plot_spacetime_comparison(ref.axes[0], ref.axes[1], pred[:, 0].numpy().reshape(nx, nt).T,
                              ref.values[:, 0].reshape(nx, nt).T, args.figure,
                              suptitle=f"burgers1d: pretrained network (rel. L2 {err['rel_l2']:.2e}) vs spectral reference",
                              log_error=True)
    print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
