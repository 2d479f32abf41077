"""Poisson on the unit square: -Δu = 2π² sin(πx) sin(πy), u = 0 on the boundary.

Exact solution u = sin(πx) sin(πy). Default: MLP 2-[30]x3-1 tanh, 2000 interior + 400 boundary
points, 5000 Adam steps, then one-shot LSR in the whole parameter space; errors on a 101×101 grid.

    python -m problems.poisson2d --out runs/poisson2d
"""
from __future__ import annotations

import math

import torch

from pinnlsr import operators as op
from pinnlsr.geometry import Box, uniform_grid
from pinnlsr.models import MLP
from pinnlsr.problem import PDEProblem, Term
from pinnlsr.runner import main

PI = math.pi


class Poisson2D(PDEProblem):
    name = "poisson2d"
    description = "-Δu = 2π² sin(πx) sin(πy) on [0,1]², u = 0 on the boundary (exact solution)."
    input_names = ("x", "y")
    output_names = ("u",)

    def __init__(self, n_interior: int = 2000, n_boundary: int = 400, bc_weight: float = 1.0):
        self.domain = Box((0.0, 0.0), (1.0, 1.0))
        self.n_interior, self.n_boundary, self.bc_weight = n_interior, n_boundary, bc_weight

    def terms(self) -> list[Term]:
        return [
            Term("pde", self.pde, self.domain.sample_interior, self.n_interior),
            Term("bc", self.bc, self.domain.sample_boundary, self.n_boundary, self.bc_weight),
        ]

    def pde(self, u, x):
        return -op.laplacian(u, x) - 2 * PI**2 * torch.sin(PI * x[0]) * torch.sin(PI * x[1])

    def bc(self, u, x):
        return u(x)

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.sin(PI * x[:, 0]) * torch.sin(PI * x[:, 1])).unsqueeze(1)

    def test_points(self) -> torch.Tensor:
        return uniform_grid((0.0, 0.0), (1.0, 1.0), 101)

    def default_model(self, generator=None, dtype=torch.float64, device="cpu"):
        return MLP(2, 1, (30, 30, 30), "tanh", input_lower=(0, 0), input_upper=(1, 1),
                   generator=generator, dtype=dtype, device=device)


PROBLEM = Poisson2D

if __name__ == "__main__":
    raise SystemExit(main(Poisson2D))
