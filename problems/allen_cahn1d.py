"""Allen–Cahn: u_t - 1e-4 u_xx + 5u³ - 5u = 0, periodic in x on [-1,1], t in [0,1].

u(x,0) = x² cos(πx). Periodicity is exact: the network sees (cos πx, sin πx, t) (a Fourier
embedding), so no boundary term is needed. Reference: jaxpi's ``jaxpi/allen_cahn.mat``
(512 x 201 grid) from ``../shared/data``.

    python -m problems.allen_cahn1d --out runs/allen_cahn1d
"""
from __future__ import annotations

import math

import torch

from pinnlsr import operators as op
from pinnlsr.geometry import Interval, TimeDomain
from pinnlsr.models import MLP, FeatureMLP
from pinnlsr.problem import PDEProblem, Term
from pinnlsr.runner import main
from pinnlsr.settings import RunSettings

PI = math.pi


def periodic_features(x: torch.Tensor) -> torch.Tensor:
    """(cos πx, sin πx, 2t - 1) of one point (x, t)."""
    return torch.stack([torch.cos(PI * x[0]), torch.sin(PI * x[0]), 2 * x[1] - 1])


class PeriodicMLP(FeatureMLP):
    """MLP on (cos πx, sin πx, 2t - 1): exactly 2-periodic in x."""

    def __init__(self, widths=(64, 64, 64), generator=None, dtype=torch.float64, device="cpu"):
        super().__init__(periodic_features, MLP(3, 1, widths, "tanh", generator=generator, dtype=dtype, device=device))


class AllenCahn1D(PDEProblem):
    name = "allen_cahn1d"
    description = "u_t - 1e-4 u_xx + 5u³ - 5u = 0, periodic on [-1,1], u(x,0) = x² cos(πx) (jaxpi reference)."
    input_names = ("x", "t")
    output_names = ("u",)

    def __init__(self, n_interior: int = 4000, n_initial: int = 400, widths=(64, 64, 64), ic_weight: float = 100.0):
        self.domain = TimeDomain(Interval(-1.0, 1.0), 0.0, 1.0)
        self.n_interior, self.n_initial, self.widths, self.ic_weight = n_interior, n_initial, tuple(widths), ic_weight
        self._ref = None

    def terms(self) -> list[Term]:
        return [
            Term("pde", self.pde, self.domain.sample_interior, self.n_interior),
            Term("ic", self.ic, self.domain.sample_initial, self.n_initial, self.ic_weight),
        ]

    def pde(self, u, x):
        uu = op.value(u, x)
        return op.partial(u, x, 1) - 1e-4 * op.partial(u, x, 0, 0) + 5 * uu**3 - 5 * uu

    def ic(self, u, x):
        return u(x) - x[0] ** 2 * torch.cos(PI * x[0])

    def reference(self):
        if self._ref is None:
            from pinnlsr.datasets import load_allen_cahn_mat

            ref = load_allen_cahn_mat(variant="jaxpi")
            self._ref = (torch.from_numpy(ref.points), torch.from_numpy(ref.values))
        return self._ref

    def default_model(self, generator=None, dtype=torch.float64, device="cpu"):
        return PeriodicMLP(self.widths, generator=generator, dtype=dtype, device=device)


PROBLEM = AllenCahn1D
# Pretraining sized for the 30-minute budget on 2 CPU cores; it does not respect causality (its error
# grows along t), so Iterative LSR marches over the time windows [0, 0.25], ..., [0, 1] (one outer
# iteration each, warm-started alignment). The early windows (rank 1000 of the 8,641 parameters, the
# pretraining points) only keep the network on the right trajectory; the last one sets the accuracy,
# so it gets rank 2000 and three times the points, then the final refinement at rank 3000 on twice those.
DEFAULTS = RunSettings(adam_steps=3000, lbfgs_steps=200, lr=3e-3, final_lr=1e-4, rank=1000, ilsr_outer=1,
                       time_windows=(0.25, 0.5, 0.75, 1.0), align_iterations=30, align_warm_start=True,
                       last_window_rank=2000, last_window_points={"pde": 12000, "ic": 800},
                       final_gn_iters=2, final_rank=3000, final_points={"pde": 24000, "ic": 1600})

if __name__ == "__main__":
    raise SystemExit(main(AllenCahn1D, defaults=DEFAULTS))
