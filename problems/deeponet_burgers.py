"""Physics-informed DeepONet for periodic Burgers: s_t + s s_x = 0.01 s_xx, s(x, 0) = f(x).

Periodic in x on [0, 1), t in [0, 1]. Input f: the periodic Gaussian random field
N(0, 25²(-Δ + 25 I)^-4) of Wang, Wang & Perdikaris (2021), 100 sensors at i/100. Periodicity is
imposed weakly (s and s_x equal at x = 0 and 1). Reference: Fourier pseudo-spectral (512 modes).

    python -m problems.deeponet_burgers --out runs/deeponet_burgers
"""
from __future__ import annotations

import numpy as np
import torch

from pinnlsr import operators as op
from pinnlsr import reference_solvers as rs
from pinnlsr.grf import periodic_grf
from pinnlsr.operator_cli import run_operator_cli
from pinnlsr.operator_learning import OperatorProblem, OperatorTerm
from pinnlsr.settings import OperatorSettings

NU = 0.01


def _interior(n, generator):
    return torch.rand(n, 2, generator=generator, dtype=torch.float64)


def _initial(n, generator):
    x = torch.rand(n, 1, generator=generator, dtype=torch.float64)
    return torch.cat([x, torch.zeros_like(x)], 1)


def _left(n, generator):
    t = torch.rand(n, 1, generator=generator, dtype=torch.float64)
    return torch.cat([torch.zeros_like(t), t], 1)


def _periodic(u, x, y):
    """s and s_x at (0, t) minus at (1, t) (x is a point on the left edge)."""
    right = torch.stack([x[0] + 1.0, x[1]])
    return torch.stack([op.value(u, x) - op.value(u, right), op.partial(u, x, 0) - op.partial(u, right, 0)])


class DeepONetBurgers(OperatorProblem):
    name = "deeponet_burgers"
    description = "PI-DeepONet, periodic Burgers s_t + s s_x = 0.01 s_xx, s(x,0) = f ~ periodic GRF; per-instance LSR."
    input_names = ("x", "t")
    output_names = ("s",)
    n_sensors = 100
    periodic = True
    scan_ranks = (100, 200, 400)

    def __init__(self, n_test_x: int = 64, n_test_t: int = 51):
        self.n_test_x, self.n_test_t = n_test_x, n_test_t

    def terms(self):
        return [
            OperatorTerm("pde", self.pde, _interior, 100, 800),
            OperatorTerm("ic", lambda u, x, y: op.value(u, x) - y[0], _initial, 50, 150, weight=20.0),
            OperatorTerm("bc", _periodic, _left, 50, 100),
        ]

    @staticmethod
    def pde(u, x, y):
        s = op.value(u, x)
        return op.partial(u, x, 1) + s * op.partial(u, x, 0) - NU * op.partial(u, x, 0, 0)

    def sample_functions(self, n, generator):
        return periodic_grf(n, 1024, generator=generator)

    def test_axes(self):
        return np.arange(self.n_test_x) / self.n_test_x, np.linspace(0.0, 1.0, self.n_test_t)

    def solve_reference(self, functions, index):
        x, t = self.test_axes()
        return rs.burgers(rs.as_callable(functions, index), x, t, n=512, nu=NU, dt=5e-4).ravel()


PROBLEM = DeepONetBurgers
DEFAULTS = OperatorSettings(widths=(50, 50, 50), latent=50, n_train=1000,
                            adam_steps=2000, batch_size=16, lr=1e-3, final_lr=1e-5, gn_iters=4)


def run_cli(argv=None, prog=None) -> int:
    return run_operator_cli(DeepONetBurgers, argv, prog, DEFAULTS)


if __name__ == "__main__":
    raise SystemExit(run_cli())
