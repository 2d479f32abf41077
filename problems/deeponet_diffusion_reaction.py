"""Physics-informed DeepONet for diffusion–reaction: s_t = D s_xx + k s² + f(x), D = k = 0.01.

On [0, 1] × [0, 1] (x, t) with s = 0 at t = 0 and at x = 0, 1. Input f: RBF Gaussian random field,
length scale 0.2, 100 sensors. Reference: finite differences (400 cells) with Radau time stepping.

    python -m problems.deeponet_diffusion_reaction --out runs/deeponet_diffusion_reaction
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

D = K = 0.01


def _interior(n, generator):
    return torch.rand(n, 2, generator=generator, dtype=torch.float64)


def _initial(n, generator):
    x = torch.rand(n, 1, generator=generator, dtype=torch.float64)
    return torch.cat([x, torch.zeros_like(x)], 1)


def _sides(n, generator):
    t = torch.rand(n, 1, generator=generator, dtype=torch.float64)
    x = (torch.arange(n, dtype=torch.float64) % 2).unsqueeze(1)
    return torch.cat([x, t], 1)


class DeepONetDiffusionReaction(OperatorProblem):
    name = "deeponet_diffusion_reaction"
    description = "PI-DeepONet, s_t = 0.01 s_xx + 0.01 s² + f(x), zero IC/BC, f ~ GRF(l = 0.2); per-instance LSR."
    input_names = ("x", "t")
    output_names = ("s",)
    n_sensors = 100
    scan_ranks = (50, 100, 200, 400)

    def __init__(self, length_scale: float = 0.2, n_test: int = 51):
        self.length_scale = length_scale
        self.n_test = n_test

    def terms(self):
        return [
            OperatorTerm("pde", self.pde, _interior, 100, 1000),
            OperatorTerm("ic", lambda u, x, y: op.value(u, x), _initial, 50, 100),
            OperatorTerm("bc", lambda u, x, y: op.value(u, x), _sides, 50, 100),
        ]

    @staticmethod
    def pde(u, x, y):
        s = op.value(u, x)
        return op.partial(u, x, 1) - D * op.partial(u, x, 0, 0) - K * s**2 - y[0]

    def sample_functions(self, n, generator):
        return rbf_grf(n, self.length_scale, generator=generator)

    def test_axes(self):
        g = np.linspace(0.0, 1.0, self.n_test)
        return g, g

    def solve_reference(self, functions, index):
        x, t = self.test_axes()
        return rs.diffusion_reaction(rs.as_callable(functions, index), x, t, nx=400).ravel()


PROBLEM = DeepONetDiffusionReaction
DEFAULTS = OperatorSettings(widths=(50, 50, 50), latent=50, n_train=1000,
                            adam_steps=2000, batch_size=16, lr=1e-3, final_lr=1e-5)


def run_cli(argv=None, prog=None) -> int:
    return run_operator_cli(DeepONetDiffusionReaction, argv, prog, DEFAULTS)


if __name__ == "__main__":
    raise SystemExit(run_cli())
