"""Poisson with a multiscale solution: -Δu = f on [0,1]², exact u = sin(π(2x)²) sin(πy).

f = -Δu of the exact solution (taken by automatic differentiation of the closed form, so it is
exact to rounding); Dirichlet data from u on the whole boundary. Errors on a 101 x 101 grid.

The default network is a sine MLP 2-[50]x3-1 whose first-layer weights start 4x larger than
Xavier's (``frequency_scale``, SIREN's ω0): gradient training of either it or a tanh MLP stays at
u ≈ 0 (spectral bias; relative error 1.0), but the tangent space of the sine network at that point
holds the multiscale solution: whole-space LSR from it reaches about 5e-7, against 8.5e-3 from the
tanh network of the same size.

    python -m problems.poisson2d_hard --out runs/poisson2d_hard
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

PI = math.pi


def exact_point(x: torch.Tensor) -> torch.Tensor:
    """u at one point (2,) -> (1,)."""
    return (torch.sin(PI * (2 * x[0]) ** 2) * torch.sin(PI * x[1])).reshape(1)


class Poisson2DHard(PDEProblem):
    name = "poisson2d_hard"
    description = "-Δu = f on [0,1]², exact u = sin(π(2x)²) sin(πy), Dirichlet data from u."
    input_names = ("x", "y")
    output_names = ("u",)

    def __init__(self, n_interior: int = 4000, n_boundary: int = 800, widths=(50, 50, 50), bc_weight: float = 100.0,
                 activation: str = "sin", frequency_scale: float = 4.0):
        self.domain = Box((0.0, 0.0), (1.0, 1.0))
        self.n_interior, self.n_boundary, self.widths, self.bc_weight = n_interior, n_boundary, tuple(widths), bc_weight
        self.activation, self.frequency_scale = activation, frequency_scale

    def terms(self) -> list[Term]:
        scale = 1.0 / (16 * PI) ** 4  # |Δu| reaches about (16π)²: keep the two terms comparable
        return [
            Term("pde", self.pde, self.domain.sample_interior, self.n_interior, scale),
            Term("bc", self.bc, self.domain.sample_boundary, self.n_boundary, self.bc_weight),
        ]

    def pde(self, u, x):
        return -op.laplacian(u, x) + op.laplacian(exact_point, x)

    def bc(self, u, x):
        return u(x) - exact_point(x)

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.sin(PI * (2 * x[:, 0]) ** 2) * torch.sin(PI * x[:, 1])).unsqueeze(1)

    def test_points(self) -> torch.Tensor:
        return uniform_grid((0.0, 0.0), (1.0, 1.0), 101)

    def default_model(self, generator=None, dtype=torch.float64, device="cpu"):
        return MLP(2, 1, self.widths, self.activation, input_lower=(0, 0), input_upper=(1, 1),
                   generator=generator, dtype=dtype, device=device, first_layer_scale=self.frequency_scale)


PROBLEM = Poisson2DHard
DEFAULTS = RunSettings(adam_steps=2000, lbfgs_steps=200, lr=1e-3, final_lr=1e-4)

if __name__ == "__main__":
    raise SystemExit(main(Poisson2DHard, defaults=DEFAULTS))
