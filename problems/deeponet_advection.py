"""Physics-informed DeepONet for advection with variable speed: s_t + f(x) s_x = 0, f > 0.

On [0, 1] × [0, 1] (x, t), s(x, 0) = sin(πx), s(0, t) = sin(πt/2). Input f = v - min v + 1 with v an
RBF Gaussian random field (length scale 0.2), 100 sensors. Reference: exact characteristics.

    python -m problems.deeponet_advection --out runs/deeponet_advection
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pinnlsr import operators as op
from pinnlsr import reference_solvers as rs
from pinnlsr.grf import FunctionBatch, rbf_grf
from pinnlsr.operator_cli import run_operator_cli
from pinnlsr.operator_learning import OperatorProblem, OperatorTerm
from pinnlsr.settings import OperatorSettings

PI = math.pi


def _interior(n, generator):
    return torch.rand(n, 2, generator=generator, dtype=torch.float64)


def _initial(n, generator):
    x = torch.rand(n, 1, generator=generator, dtype=torch.float64)
    return torch.cat([x, torch.zeros_like(x)], 1)


def _inflow(n, generator):
    t = torch.rand(n, 1, generator=generator, dtype=torch.float64)
    return torch.cat([torch.zeros_like(t), t], 1)


class DeepONetAdvection(OperatorProblem):
    name = "deeponet_advection"
    description = "PI-DeepONet, s_t + f(x) s_x = 0, s(x,0) = sin(πx), s(0,t) = sin(πt/2), f = v - min v + 1; per-instance LSR."
    input_names = ("x", "t")
    output_names = ("s",)
    n_sensors = 100
    scan_ranks = (100, 200, 400)

    def __init__(self, length_scale: float = 0.2, n_test: int = 51):
        self.length_scale = length_scale
        self.n_test = n_test

    def terms(self):
        return [
            OperatorTerm("pde", lambda u, x, y: op.partial(u, x, 1) + y[0] * op.partial(u, x, 0),
                         _interior, 100, 800),
            OperatorTerm("ic", lambda u, x, y: op.value(u, x) - torch.sin(PI * x[0]), _initial, 50, 100),
            OperatorTerm("bc", lambda u, x, y: op.value(u, x) - torch.sin(PI * x[1] / 2), _inflow, 50, 100),
        ]

    def sample_functions(self, n, generator):
        v = rbf_grf(n, self.length_scale, generator=generator)
        return FunctionBatch(v.grid, v.values - v.values.min(1, keepdim=True).values + 1.0)

    def test_axes(self):
        g = np.linspace(0.0, 1.0, self.n_test)
        return g, g

    def solve_reference(self, functions, index):
        x, t = self.test_axes()
        tt, xx = np.meshgrid(t, x, indexing="ij")
        return rs.advection(rs.as_callable(functions, index), xx.ravel(), tt.ravel(), n=8192)


PROBLEM = DeepONetAdvection
DEFAULTS = OperatorSettings(widths=(50, 50, 50), latent=50, n_train=1000,
                            adam_steps=3000, batch_size=16, lr=1e-3, final_lr=1e-5)


def run_cli(argv=None, prog=None) -> int:
    return run_operator_cli(DeepONetAdvection, argv, prog, DEFAULTS)


if __name__ == "__main__":
    raise SystemExit(run_cli())
