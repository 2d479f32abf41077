"""Viscous Burgers: u_t + u u_x = (0.01/π) u_xx on x in [-1,1], t in [0,1].

u(x,0) = -sin(πx), u(±1,t) = 0. Reference: DeepXDE's spectral solution ``deepxde/Burgers.npz``
(256 x 100 grid, t <= 0.99) from ``../shared/data``. A nonlinear problem: the default pipeline
pretrains (Adam, L-BFGS), then refines by one-shot LSR and by Iterative LSR.

    python -m problems.burgers1d --out runs/burgers1d
"""
from __future__ import annotations

import math

import torch

from pinnlsr import operators as op
from pinnlsr.geometry import Interval, TimeDomain
from pinnlsr.models import MLP
from pinnlsr.problem import PDEProblem, Term
from pinnlsr.runner import main
from pinnlsr.settings import RunSettings

PI = math.pi
NU = 0.01 / PI


class Burgers1D(PDEProblem):
    name = "burgers1d"
    description = "u_t + u u_x = (0.01/π) u_xx, u(x,0) = -sin(πx), u(±1,t) = 0 (spectral reference)."
    input_names = ("x", "t")
    output_names = ("u",)

    def __init__(self, n_interior: int = 4000, n_boundary: int = 200, n_initial: int = 200,
                 widths=(40, 40, 40), bc_weight: float = 1.0, ic_weight: float = 1.0):
        self.domain = TimeDomain(Interval(-1.0, 1.0), 0.0, 1.0)
        self.n_interior, self.n_boundary, self.n_initial = n_interior, n_boundary, n_initial
        self.widths, self.bc_weight, self.ic_weight = tuple(widths), bc_weight, ic_weight
        self._ref = None

    def terms(self) -> list[Term]:
        return [
            Term("pde", self.pde, self.domain.sample_interior, self.n_interior),
            Term("bc", self.bc, self.domain.sample_boundary, self.n_boundary, self.bc_weight),
            Term("ic", self.ic, self.domain.sample_initial, self.n_initial, self.ic_weight),
        ]

    def pde(self, u, x):
        uu = op.value(u, x)
        return op.partial(u, x, 1) + uu * op.partial(u, x, 0) - NU * op.partial(u, x, 0, 0)

    def bc(self, u, x):
        return u(x)

    def ic(self, u, x):
        return u(x) + torch.sin(PI * x[0])

    def reference(self):
        if self._ref is None:
            from pinnlsr.datasets import load_burgers_npz

            ref = load_burgers_npz()
            self._ref = (torch.from_numpy(ref.points), torch.from_numpy(ref.values))
        return self._ref

    def default_model(self, generator=None, dtype=torch.float64, device="cpu"):
        return MLP(2, 1, self.widths, "tanh", input_lower=(-1, 0), input_upper=(1, 1),
                   generator=generator, dtype=dtype, device=device)


PROBLEM = Burgers1D
# Pretraining, then Iterative LSR in a rank-1000 randomized subspace: tangent Gauss–Newton stopped
# by the validation residual in each outer iteration, half of the points redrawn where the residual
# is large (the shock), the alignment started from the step's network and polished by 20 L-BFGS
# iterations. Three outer iterations bring the network to about 5e-4; the aligned network follows
# the predictor no further, so a final Gauss–Newton run in the whole space of its 3,441 parameters,
# on five times the points (half of them near the shock), sets the accuracy.
DEFAULTS = RunSettings(adam_steps=3000, lbfgs_steps=300, lr=3e-3, final_lr=1e-4, rank=1000, ilsr_outer=3,
                       align_iterations=20, align_warm_start=True, final_gn_iters=3,
                       final_points={"pde": 20000, "bc": 1000, "ic": 1000})

if __name__ == "__main__":
    raise SystemExit(main(Burgers1D, defaults=DEFAULTS))
