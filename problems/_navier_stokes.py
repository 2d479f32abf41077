"""Steady incompressible Navier–Stokes residual for 2-D problems with outputs (u, v, p)."""
from __future__ import annotations

import torch

from pinnlsr import operators as op


def steady_ns(u, x, nu: float) -> torch.Tensor:
    """(momentum x, momentum y, continuity) at one point x = (x, y) for outputs (u, v, p)."""
    out = u(x)
    jac = op.jacobian(u, x)  # (3, 2): rows u, v, p; columns d/dx, d/dy
    lap_u = op.laplacian(u, x, component=0)
    lap_v = op.laplacian(u, x, component=1)
    uu, vv = out[0], out[1]
    mom_x = uu * jac[0, 0] + vv * jac[0, 1] + jac[2, 0] - nu * lap_u
    mom_y = uu * jac[1, 0] + vv * jac[1, 1] + jac[2, 1] - nu * lap_v
    return torch.stack([mom_x, mom_y, jac[0, 0] + jac[1, 1]])
