"""Lid-driven cavity (PINNacle NS2d-C): steady Navier–Stokes, ν = 1/100, on [0,1]².

Top lid u = 4x(1-x), v = 0; u = v = 0 on the other walls; the pressure's constant is fixed by the
mean of p over the corner square [0, 0.05]² being 0 (the reference fixes p(0,0) = 0; its mean over
that square is -6e-8, with p of order 0.1 elsewhere). Reference: the COMSOL solution
``pinnacle/lid_driven_a4.dat`` (10,201 nodes, itself approximate) from ``../shared/data``.

    python -m problems.lid_driven --out runs/lid_driven
"""
from __future__ import annotations

import numpy
import torch

from pinnlsr.geometry import Box
from pinnlsr.models import MLP
from pinnlsr.problem import PDEProblem, Term
from pinnlsr.runner import main
from pinnlsr.settings import RunSettings

from problems._navier_stokes import steady_ns

NU = 1.0 / 100


class LidDriven(PDEProblem):
    name = "lid_driven"
    description = "PINNacle NS2d-C: steady Navier–Stokes, ν = 1/100, lid u = 4x(1-x) on [0,1]² (COMSOL reference)."
    input_names = ("x", "y")
    output_names = ("u", "v", "p")

    def __init__(self, n_interior: int = 3000, n_boundary: int = 800, widths=(50, 50, 50), bc_weight: float = 10.0,
                 corner_fraction: float = 0.2, corner_size: float = 0.1, corner_grading: float = 3.0,
                 gauge_size: float = 0.05, gauge_nodes: int = 6):
        if not 0.0 <= corner_fraction < 1.0 or not 0.0 < corner_size <= 0.5 or corner_grading < 1.0:
            raise ValueError(f"need 0 <= corner_fraction < 1, 0 < corner_size <= 0.5 and corner_grading >= 1, "
                             f"got {corner_fraction}, {corner_size}, {corner_grading}")
        self.domain = Box((0.0, 0.0), (1.0, 1.0))
        self.n_interior, self.n_boundary, self.widths, self.bc_weight = n_interior, n_boundary, tuple(widths), bc_weight
        self.corner_fraction, self.corner_size, self.corner_grading = corner_fraction, corner_size, corner_grading
        if not 0.0 <= gauge_size <= 0.5 or gauge_nodes < 1:
            raise ValueError(f"need 0 <= gauge_size <= 0.5 and gauge_nodes >= 1, got {gauge_size}, {gauge_nodes}")
        self.gauge_size, self.gauge_nodes = gauge_size, gauge_nodes
        self._gauge_offsets, self._gauge_weights = gauge_quadrature(gauge_size, gauge_nodes)
        self._ref = None

    def sample_pde_points(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 2) interior points: ``corner_fraction`` of them in the corner_size × corner_size
        squares at the two ends of the lid (half in each), where the pressure grows like log r, at
        distances corner_size·U^corner_grading from the corner along x and y (U uniform; grading 1
        is uniform in the squares, 3 crowds them towards the corner); the rest uniform on the square."""
        n_corner = int(round(self.corner_fraction * n)) // 2
        parts = [self.domain.sample_interior(n - 2 * n_corner, generator=generator)]
        for x_corner, x_sign in ((0.0, 1.0), (1.0, -1.0)):
            d = self.corner_size * torch.rand(n_corner, 2, generator=generator, dtype=torch.float64) ** self.corner_grading
            parts.append(torch.stack([x_corner + x_sign * d[:, 0], 1.0 - d[:, 1]], dim=1))
        return torch.cat(parts)

    def terms(self) -> list[Term]:
        origin = torch.zeros(1, 2, dtype=torch.float64)
        return [
            Term("pde", self.pde, self.sample_pde_points, self.n_interior),
            Term("bc", self.bc, self.domain.sample_boundary, self.n_boundary, self.bc_weight),
            Term("p0", self.pressure_gauge, origin, weight=self.bc_weight),
        ]

    def pde(self, u, x):
        return steady_ns(u, x, NU)

    def bc(self, u, x):
        out = u(x)
        lid = torch.where(x[1] > 1 - 1e-9, 4 * x[0] * (1 - x[0]), torch.zeros_like(x[0]))
        return torch.stack([out[0] - lid, out[1]])

    def pressure_gauge(self, u, x):
        """The mean of p over the square [0, gauge_size]² at x = (0, 0), by a gauge_nodes ×
        gauge_nodes Gauss–Legendre rule; p(0,0) itself for gauge_size 0. A one-point gauge can be
        met by a narrow dip of p at (0, 0) that no PDE point sees, shifting p everywhere else by
        the dip's depth; in a mean over the square such a dip weighs only its share of the area."""
        if self._gauge_offsets is None:
            return u(x)[2]
        offsets = self._gauge_offsets.to(x)
        weights = self._gauge_weights.to(x)
        return sum(w * u(x + o)[2] for o, w in zip(offsets, weights))

    def reference(self):
        if self._ref is None:
            from pinnlsr.datafolder import data_file
            from pinnlsr.readers import load_dat

            ref = load_dat(data_file("pinnacle/lid_driven_a4.dat"), input_names=("x", "y"),
                           output_names=("u", "v", "p"))
            self._ref = (torch.from_numpy(ref.points), torch.from_numpy(ref.values))
        return self._ref

    def error_regions(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reference nodes outside the 0.01 × 0.01 squares at the two lid corners (18 of 10,201
        nodes), where the pressure is log-singular and the values are the reference mesh's."""
        near = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for corner in ((0.0, 1.0), (1.0, 1.0)):
            near |= (x - torch.tensor(corner, dtype=x.dtype, device=x.device)).abs().max(dim=1).values <= 0.01
        return {"outside_corners": ~near}

    def default_model(self, generator=None, dtype=torch.float64, device="cpu"):
        return MLP(2, 3, self.widths, "tanh", input_lower=(0, 0), input_upper=(1, 1),
                   generator=generator, dtype=dtype, device=device)


def gauge_quadrature(size: float, nodes: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Offsets (nodes², 2) and weights (nodes²,), summing to 1, of the tensor Gauss–Legendre rule for
    the mean over [0, size]²; (None, None) for size 0."""
    if size == 0.0:
        return None, None
    t, w = numpy.polynomial.legendre.leggauss(nodes)
    t = torch.from_numpy(size * (t + 1) / 2)
    w = torch.from_numpy(w / 2)
    offsets = torch.stack(torch.meshgrid(t, t, indexing="ij"), dim=-1).reshape(-1, 2)
    return offsets, torch.outer(w, w).reshape(-1)


PROBLEM = LidDriven
# Short pretraining, then five Iterative LSR outer iterations in a rank-1500 randomized subspace (of 5,403
# parameters) with residual-based adaptive points and warm-started alignment; 20% of the PDE points crowd
# the lid corners; the pressure gauge is p's mean over [0, 0.05]². The final refinement: two Gauss–Newton
# steps in the whole space on twice the points.
DEFAULTS = RunSettings(adam_steps=1000, lbfgs_steps=0, lr=3e-3, final_lr=1e-4, rank=1500, ilsr_outer=5,
                       align_iterations=30, align_warm_start=True, final_gn_iters=2,
                       final_points={"pde": 6000, "bc": 1600})

if __name__ == "__main__":
    raise SystemExit(main(LidDriven, defaults=DEFAULTS))
