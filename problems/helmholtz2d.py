"""Helmholtz: -Δu - k²u = k² sin(kx) sin(ky) on [0,1]², k = 4π, u = 0 on the boundary.

Exact solution u = sin(kx) sin(ky); errors on a 101 x 101 grid.

    python -m problems.helmholtz2d --out runs/helmholtz2d
"""
from __future__ import annotations

import math

import torch

from pinnlsr import operators as op
from pinnlsr.geometry import Box, uniform_grid
from pinnlsr.models import MLP
from pinnlsr.problem import PDEProblem, Term
from pinnlsr.runner import main
from pinnlsr.settings import RunSettings

K = 4 * math.pi


class Helmholtz2D(PDEProblem):
    name = "helmholtz2d"
    description = "-Δu - k²u = k² sin(kx) sin(ky) on [0,1]², k = 4π, u = 0 on the boundary (exact solution)."
    input_names = ("x", "y")
    output_names = ("u",)

    def __init__(self, n_interior: int = 4000, n_boundary: int = 800, widths=(50, 50, 50), bc_weight: float = 100.0):
        self.domain = Box((0.0, 0.0), (1.0, 1.0))
        self.n_interior, self.n_boundary, self.widths, self.bc_weight = n_interior, n_boundary, tuple(widths), bc_weight

    def terms(self) -> list[Term]:
        return [
            Term("pde", self.pde, self.domain.sample_interior, self.n_interior, 1.0 / K**4),
            Term("bc", self.bc, self.domain.sample_boundary, self.n_boundary, self.bc_weight),
        ]

    def pde(self, u, x):
        s = torch.sin(K * x[0]) * torch.sin(K * x[1])
        return -op.laplacian(u, x) - K**2 * op.value(u, x) - K**2 * s

    def bc(self, u, x):
        return u(x)

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.sin(K * x[:, 0]) * torch.sin(K * x[:, 1])).unsqueeze(1)

    def test_points(self) -> torch.Tensor:
        return uniform_grid((0.0, 0.0), (1.0, 1.0), 101)

    def default_model(self, generator=None, dtype=torch.float64, device="cpu"):
        return MLP(2, 1, self.widths, "sin", input_lower=(0, 0), input_upper=(1, 1),
                   generator=generator, dtype=dtype, device=device)


PROBLEM = Helmholtz2D
DEFAULTS = RunSettings(adam_steps=5000, lbfgs_steps=500, lr=3e-3, final_lr=1e-4)

if __name__ == "__main__":
    raise SystemExit(main(Helmholtz2D, defaults=DEFAULTS))
