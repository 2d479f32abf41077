"""Space-time cylinders: ``TimeDomain(space, t0, t1)``, time the last coordinate."""

from __future__ import annotations

import torch

from .domain import Domain, PointSet
from .sampling import _F64, _as_float, _check_n_per_dim, _like, _linspace, _rand


# --------------------------------------------------------------------------- #
# TimeDomain
# --------------------------------------------------------------------------- #
class TimeDomain(Domain):
    """Space-time cylinder ``space x [t0, t1]``; time is the LAST coordinate,
    ``dim = space.dim + 1``.

    ``sample_boundary`` samples the lateral boundary only (spatial boundary x
    uniform time); use ``sample_initial`` for ``t = t0``.
    """

    def __init__(self, space: Domain, t0, t1):
        if not isinstance(space, Domain) or isinstance(space, (TimeDomain, PointSet)):
            raise TypeError("space must be a spatial Domain (not a TimeDomain or PointSet)")
        self.space = space
        self.t0 = _as_float(t0, "t0")
        self.t1 = _as_float(t1, "t1")
        if not self.t0 < self.t1:
            raise ValueError(f"need t0 < t1, got t0={self.t0}, t1={self.t1}")
        self.dim = space.dim + 1

    def __repr__(self) -> str:
        return f"TimeDomain({self.space!r}, t0={self.t0}, t1={self.t1})"

    @property
    def bbox(self):
        lo, hi = self.space.bbox
        return tuple(lo) + (self.t0,), tuple(hi) + (self.t1,)

    def measure(self) -> float:
        return self.space.measure() * (self.t1 - self.t0)

    def boundary_measure(self) -> float:
        """Measure of the lateral boundary (spatial boundary x time)."""
        return self.space.boundary_measure() * (self.t1 - self.t0)

    def _times(self, n, generator) -> torch.Tensor:
        return self.t0 + (self.t1 - self.t0) * _rand(generator, n, 1)

    def contains(self, x) -> torch.Tensor:
        xs = self._checked(x)[:, :-1]
        x, tol = self._points(x)
        t = x[:, -1]
        return self.space.contains(xs) & (t >= self.t0 - tol) & (t <= self.t1 + tol)

    def contains_open(self, x) -> torch.Tensor:
        xs = self._checked(x)[:, :-1]
        x, tol = self._points(x)
        t = x[:, -1]
        return self.space.contains_open(xs) & (t > self.t0 + tol) & (t < self.t1 - tol)

    def _interior(self, n, generator):
        xs = self.space._interior(n, generator)
        return torch.cat([xs, self._times(n, generator)], dim=1)

    def _boundary(self, n, generator):
        xs = self.space._boundary(n, generator)
        return torch.cat([xs, self._times(n, generator)], dim=1)

    def sample_initial(
        self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64, device="cpu"
    ) -> torch.Tensor:
        """``n`` points uniform in ``space`` at ``t = t0``: tensor ``(n, dim)``."""
        return self._sampled(self._initial, n, generator, dtype, device)

    def _initial(self, n, generator):
        xs = self.space._interior(n, generator)
        return torch.cat([xs, torch.full((n, 1), self.t0, dtype=_F64, device=xs.device)], dim=1)

    def grid(self, n_per_dim, n_time: int | None = None, dtype: torch.dtype = torch.float64, device="cpu"):
        """``space.grid(n_per_dim)`` x ``linspace(t0, t1, n_time)`` (``n_time``
        defaults to ``n_per_dim`` when that is an int): ``(N_space * n_time, dim)``,
        spatial points slowest, time fastest."""
        if n_time is None:
            if isinstance(n_per_dim, (list, tuple)):
                raise ValueError("n_time is required when n_per_dim is a sequence")
            n_time = n_per_dim
        (n_time,) = _check_n_per_dim(n_time, 1)
        xs = self.space.grid(n_per_dim)
        ts = _linspace(self.t0, self.t1, n_time)
        pts = torch.cat(
            [xs.repeat_interleave(n_time, dim=0), ts.repeat(xs.shape[0]).reshape(-1, 1)], dim=1
        )
        return pts.to(dtype=dtype, device=device)

    def _boundary_distance(self, x64):
        return self.space._boundary_distance(x64[:, :-1])

    def boundary_normal(self, x) -> torch.Tensor:
        """Outward normals ``(n, dim)`` on the lateral boundary (time component 0)."""
        x_in = x
        x, _ = self._points(x)
        ns = self.space.boundary_normal(x[:, :-1]).to(_F64)
        return _like(torch.cat([ns, torch.zeros_like(x[:, :1])], dim=1), x_in)
