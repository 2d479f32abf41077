"""Physics-informed DeepONet for the antiderivative: s'(x) = f(x) on [0, 1], s(0) = 0.

Input functions f: RBF Gaussian random field, length scale 0.2 (Wang, Wang & Perdikaris 2021), 100
sensors. Reference: the exact integral of the piecewise-linear GRF sample. Pretrain (or
``--checkpoint``), evaluate on test functions, refine each by LSR (randomized subspace), report.

    python -m problems.deeponet_antiderivative --out runs/deeponet_antiderivative
"""
from __future__ import annotations

import numpy as np
import torch

from pinnlsr import operators as op
from pinnlsr import reference_solvers as rs
from pinnlsr.grf import rbf_grf
from pinnlsr.operator_cli import run_operator_cli
from pinnlsr.operator_learning import OperatorProblem, OperatorTerm
from pinnlsr.settings import OperatorSettings


def _uniform(n, generator):
    return torch.rand(n, 1, generator=generator, dtype=torch.float64)


def _origin(n, generator):
    return torch.zeros(n, 1, dtype=torch.float64)


class DeepONetAntiderivative(OperatorProblem):
    name = "deeponet_antiderivative"
    description = "PI-DeepONet, s'(x) = f(x), s(0) = 0, f ~ GRF(l = 0.2); per-instance LSR."
    input_names = ("x",)
    output_names = ("s",)
    n_sensors = 100
    scan_ranks = (10, 20, 40, 80)

    def __init__(self, length_scale: float = 0.2, n_test_points: int = 200):
        self.length_scale = length_scale
        self.n_test_points = n_test_points

    def terms(self):
        return [
            OperatorTerm("ode", lambda u, x, y: op.partial(u, x, 0) - y[0], _uniform, 100, 200),
            OperatorTerm("ic", lambda u, x, y: op.value(u, x), _origin, 1, 1),
        ]

    def sample_functions(self, n, generator):
        return rbf_grf(n, self.length_scale, generator=generator)

    def test_axes(self):
        return (np.linspace(0.0, 1.0, self.n_test_points),)

    def solve_reference(self, functions, index):
        f = rs.as_callable(functions, index)
        return rs.antiderivative(f, self.test_axes()[0], n=512, grid=functions.grid.numpy())


PROBLEM = DeepONetAntiderivative
DEFAULTS = OperatorSettings(widths=(50, 50, 50), latent=50, n_train=1000,
                            adam_steps=3000, batch_size=32, lr=1e-3, final_lr=1e-5)


def run_cli(argv=None, prog=None) -> int:
    return run_operator_cli(DeepONetAntiderivative, argv, prog, DEFAULTS)


if __name__ == "__main__":
    raise SystemExit(run_cli())
