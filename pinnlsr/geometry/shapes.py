"""Primitive domains: axis-aligned boxes (``Box``, ``Interval``) and balls (``Ball``, ``Disk``)."""

from __future__ import annotations

import math

import torch

from .domain import Domain
from .sampling import _F64, _as_bounds, _as_float, _as_float_vector, _like, _rand, _randn


# --------------------------------------------------------------------------- #
# Box / Interval
# --------------------------------------------------------------------------- #
class Box(Domain):
    """Axis-aligned box ``[lower, upper]`` in ``R^d`` (``d >= 1``).

    Boundary sampling picks faces with probability proportional to their
    ``(d-1)``-measure and samples uniformly on the chosen face; in 1-D the
    boundary is the two endpoints (see ``Interval``).

    ``sampling="sobol"`` draws scrambled Sobol points instead of independent uniform ones (the
    scrambling seeded from the generator, so a seed still fixes the points): they cover the box
    more evenly, which lowers the gap between the residual at the collocation points and at fresh
    points. On the boundary (d >= 2) the first Sobol coordinate picks the face, by cumulative
    face measure, and the others place the point on it.
    """

    def __init__(self, lower, upper, sampling: str = "random"):
        self.lower, self.upper = _as_bounds(lower, upper)
        self.dim = len(self.lower)
        if sampling not in ("random", "sobol"):
            raise ValueError(f"sampling must be 'random' or 'sobol', got {sampling!r}")
        self.sampling = sampling

    def __repr__(self) -> str:
        extra = "" if self.sampling == "random" else f", sampling={self.sampling!r}"
        return f"Box(lower={list(self.lower)}, upper={list(self.upper)}{extra})"

    def _unit(self, n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
        """(n, dim) float64 numbers in [0, 1) on the generator's device: independent uniform, or
        scrambled Sobol with a scrambling seed drawn from the generator."""
        if self.sampling == "random":
            return _rand(generator, n, dim)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
        engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)
        return engine.draw(n, dtype=_F64).to(generator.device)

    @property
    def bbox(self):
        return self.lower, self.upper

    def _bounds(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.tensor(self.lower, dtype=_F64, device=device),
            torch.tensor(self.upper, dtype=_F64, device=device),
        )

    def measure(self) -> float:
        return math.prod(b - a for a, b in zip(self.lower, self.upper))

    def _face_measures(self) -> list[float]:
        """Measures of the faces, ordered [lower_0..lower_{d-1}, upper_0..upper_{d-1}]."""
        ext = [b - a for a, b in zip(self.lower, self.upper)]
        per = [math.prod(e for j, e in enumerate(ext) if j != k) for k in range(self.dim)]
        return per + per

    def boundary_measure(self) -> float:
        return float(sum(self._face_measures()))

    def contains(self, x) -> torch.Tensor:
        x, tol = self._points(x)
        lo, hi = self._bounds(x.device)
        return ((x >= lo - tol) & (x <= hi + tol)).all(dim=1)

    def contains_open(self, x) -> torch.Tensor:
        x, tol = self._points(x)
        lo, hi = self._bounds(x.device)
        return ((x > lo + tol) & (x < hi - tol)).all(dim=1)

    def _interior(self, n, generator):
        lo, hi = self._bounds(generator.device)
        return lo + (hi - lo) * self._unit(n, self.dim, generator)

    def _boundary(self, n, generator):
        lo, hi = self._bounds(generator.device)
        d = self.dim
        if d == 1:
            # n // 2 copies of each endpoint, one extra endpoint by coin flip
            # when n is odd, in an order shuffled by the generator.
            half = n // 2
            side = torch.zeros(n, dtype=_F64, device=generator.device)
            side[half : 2 * half] = 1.0
            if n % 2:
                side[-1] = (_rand(generator, 1) < 0.5).to(_F64)[0]
            side = side[torch.randperm(n, generator=generator, device=generator.device)]
            return (lo + (hi - lo) * side).reshape(n, 1)
        w = torch.tensor(self._face_measures(), dtype=_F64, device=generator.device)
        if self.sampling == "sobol":
            u = self._unit(n, d, generator)
            edges = torch.cumsum(w / w.sum(), 0)
            face = torch.searchsorted(edges, u[:, 0].contiguous(), right=True).clamp(max=2 * d - 1)
            # coordinate j of a point on a face normal to k takes Sobol coordinate 1 + j - (j > k)
            j = torch.arange(d, device=generator.device)
            col = 1 + j - (j > (face % d).unsqueeze(1)).long()
            x = lo + (hi - lo) * u.gather(1, col.clamp(max=d - 1))
        else:
            face = torch.multinomial(w / w.sum(), n, replacement=True, generator=generator)
            x = lo + (hi - lo) * _rand(generator, n, d)
        k = face % d
        at_upper = face >= d
        rows = torch.arange(n, device=generator.device)
        x[rows, k] = torch.where(at_upper, hi[k], lo[k])
        return x

    def _face_distances(self, x64: torch.Tensor) -> torch.Tensor:
        lo, hi = self._bounds(x64.device)
        return torch.cat([(x64 - lo).abs(), (hi - x64).abs()], dim=1)  # (n, 2d)

    def _boundary_distance(self, x64):
        return self._face_distances(x64).min(dim=1).values

    def boundary_normal(self, x) -> torch.Tensor:
        """Outward unit normals ``(n, d)``: ``-e_k`` / ``+e_k`` of the nearest
        face (at edges/corners the first nearest face in the order
        lower_0..lower_{d-1}, upper_0..upper_{d-1})."""
        x_in = x
        x, _ = self._points(x)
        face = self._face_distances(x).argmin(dim=1)
        d = self.dim
        nrm = torch.zeros_like(x)
        rows = torch.arange(x.shape[0], device=x.device)
        nrm[rows, face % d] = torch.where(face >= d, 1.0, -1.0).to(_F64)
        return _like(nrm, x_in)


class Interval(Box):
    """Interval ``[a, b]`` (a 1-D ``Box``).

    ``sample_boundary(n)`` returns ``n // 2`` copies of each endpoint (plus one
    endpoint chosen by a fair coin when ``n`` is odd) in an order shuffled by
    the generator.
    """

    def __init__(self, a, b):
        a = _as_float(a, "a")
        b = _as_float(b, "b")
        if not a < b:
            raise ValueError(f"need a < b for Interval(a, b), got a={a}, b={b}")
        super().__init__([a], [b])
        self.a = a
        self.b = b

    def __repr__(self) -> str:
        return f"Interval({self.a}, {self.b})"


# --------------------------------------------------------------------------- #
# Ball / Disk
# --------------------------------------------------------------------------- #
class Ball(Domain):
    """Closed ball ``|x - center| <= radius`` in ``R^d``.

    Interior: uniform by volume (radius ``r * u**(1/d)``); boundary: uniform
    on the sphere (angle parametrisation in 2-D, normalised Gaussians otherwise).
    """

    def __init__(self, center, radius):
        self.center = _as_float_vector(center, "center")
        self.radius = _as_float(radius, "radius")
        if not self.radius > 0:
            raise ValueError(f"radius must be positive, got {self.radius}")
        self.dim = len(self.center)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(center={list(self.center)}, radius={self.radius})"

    @property
    def bbox(self):
        r = self.radius
        return tuple(c - r for c in self.center), tuple(c + r for c in self.center)

    def _c(self, device) -> torch.Tensor:
        return torch.tensor(self.center, dtype=_F64, device=device)

    def measure(self) -> float:
        d = self.dim
        return math.pi ** (d / 2) / math.gamma(d / 2 + 1) * self.radius**d

    def boundary_measure(self) -> float:
        if self.dim == 1:
            return 2.0
        return self.dim * self.measure() / self.radius

    def contains(self, x) -> torch.Tensor:
        x, tol = self._points(x)
        return (x - self._c(x.device)).norm(dim=1) <= self.radius + tol

    def contains_open(self, x) -> torch.Tensor:
        x, tol = self._points(x)
        return (x - self._c(x.device)).norm(dim=1) < self.radius - tol

    def _directions(self, n, generator) -> torch.Tensor:
        if self.dim == 2:
            theta = 2.0 * math.pi * _rand(generator, n)
            return torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
        v = _randn(generator, n, self.dim)
        return v / v.norm(dim=1, keepdim=True)

    def _interior(self, n, generator):
        u = self._directions(n, generator)
        r = self.radius * _rand(generator, n, 1) ** (1.0 / self.dim)
        return self._c(generator.device) + r * u

    def _boundary(self, n, generator):
        return self._c(generator.device) + self.radius * self._directions(n, generator)

    def _boundary_distance(self, x64):
        return ((x64 - self._c(x64.device)).norm(dim=1) - self.radius).abs()

    def boundary_normal(self, x) -> torch.Tensor:
        """Outward unit normals ``(x - center) / |x - center|``: ``(n, d)``."""
        x_in = x
        x, _ = self._points(x)
        v = x - self._c(x.device)
        r = v.norm(dim=1, keepdim=True)
        if (r == 0).any():
            raise ValueError("boundary normal undefined at the center of the ball")
        return _like(v / r, x_in)


class Disk(Ball):
    """Closed disk in 2-D: ``Disk(center=(cx, cy), radius)``."""

    def __init__(self, center, radius):
        super().__init__(center, radius)
        if self.dim != 2:
            raise ValueError(f"Disk needs a 2-D center, got {len(self.center)} coordinates (use Ball)")
