"""How accurate is burgers1d's reference? deepxde/Burgers.npz against the exact Hopf–Cole solution.

Evaluates :func:`pinnlsr.reference_solvers.burgers_hopf_cole` on every (x, t) node of the shared
spectral reference and prints the relative L2 and the largest absolute difference, overall and for
the worst time column. No randomness.

    python scripts/check_burgers_reference.py
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from pinnlsr.datafolder import data_file
from pinnlsr.reference_solvers import burgers_hopf_cole


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=40001, help="trapezoid nodes of the Hopf–Cole integrals")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    with np.load(data_file("deepxde/Burgers.npz"), allow_pickle=False) as d:
        x, t, usol = d["x"].ravel(), d["t"].ravel(), d["usol"]
    exact = np.stack([burgers_hopf_cole(x, float(tj), nodes=args.nodes) for tj in t], 1)
    diff = usol - exact
    per_t = np.linalg.norm(diff, axis=0) / np.maximum(np.linalg.norm(exact, axis=0), 1e-300)
    worst = int(per_t.argmax())
    print(f"Burgers.npz ({usol.shape[0]} x-nodes, {usol.shape[1]} times) against Hopf–Cole ({args.nodes} nodes): "
          f"rel. L2 {np.linalg.norm(diff) / np.linalg.norm(exact):.2e}, max |diff| {np.abs(diff).max():.2e}; "
          f"worst time t = {t[worst]:.2f}: rel. L2 {per_t[worst]:.2e} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
