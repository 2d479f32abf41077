"""The ``Domain`` interface, and the domains defined by other domains or by points: set differences
(``Difference``, also written ``base - hole``) and fixed point sets (``PointSet``)."""

from __future__ import annotations

import abc
from typing import Sequence

import torch

from .sampling import _F64, _check_dtype, _check_generator, _check_n, _like, _rejection, uniform_grid


# --------------------------------------------------------------------------- #
# base class
# --------------------------------------------------------------------------- #
class Domain(abc.ABC):
    """Abstract domain in ``R^dim``.

    Subclasses implement ``contains``, ``contains_open``, ``_interior`` and
    ``_boundary`` (the last two return float64 tensors on the generator's
    device); the public samplers validate input and cast the result.
    """

    dim: int

    # -- geometry ------------------------------------------------------------
    @property
    @abc.abstractmethod
    def bbox(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Bounding box ``(lower, upper)``, two tuples of length ``dim``."""

    @abc.abstractmethod
    def contains(self, x) -> torch.Tensor:
        """Membership in the CLOSED domain: ``x (n, dim) -> BoolTensor (n,)``."""

    @abc.abstractmethod
    def contains_open(self, x) -> torch.Tensor:
        """Membership in the OPEN interior (boundary excluded, with tolerance):
        ``x (n, dim) -> BoolTensor (n,)``."""

    def measure(self) -> float:
        """Volume (length / area / ...) of the domain."""
        raise NotImplementedError(f"{type(self).__name__} does not define measure()")

    def boundary_measure(self) -> float:
        """Measure of the boundary (counting measure in 1-D)."""
        raise NotImplementedError(f"{type(self).__name__} does not define boundary_measure()")

    def boundary_normal(self, x) -> torch.Tensor:
        """Outward unit normals ``(n, dim)`` for points ``x (n, dim)`` on the boundary."""
        raise NotImplementedError(f"{type(self).__name__} does not define boundary normals")

    def _boundary_distance(self, x64: torch.Tensor) -> torch.Tensor:
        """Distance-like quantity ``(n,)`` to the boundary (0 on it); used to pick pieces."""
        raise NotImplementedError(f"{type(self).__name__} does not define a boundary distance")

    # -- sampling hooks ---------------------------------------------------------
    @abc.abstractmethod
    def _interior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` uniform interior points, float64 on ``generator.device``."""

    @abc.abstractmethod
    def _boundary(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` uniform boundary points, float64 on ``generator.device``."""

    # -- public samplers -----------------------------------------------------------
    def sample_interior(
        self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64, device="cpu"
    ) -> torch.Tensor:
        """``n`` points uniform in the domain: tensor ``(n, dim)``."""
        return self._sampled(self._interior, n, generator, dtype, device)

    def sample_boundary(
        self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64, device="cpu"
    ) -> torch.Tensor:
        """``n`` points uniform w.r.t. the boundary measure: tensor ``(n, dim)``."""
        return self._sampled(self._boundary, n, generator, dtype, device)

    def _sampled(self, draw, n, generator, dtype, device) -> torch.Tensor:
        """``draw(n, generator)`` (float64) after checking the arguments, cast to ``dtype`` / ``device``."""
        n = _check_n(n)
        _check_generator(generator)
        _check_dtype(dtype)
        return draw(n, generator).to(dtype=dtype, device=device)

    def grid(self, n_per_dim, dtype: torch.dtype = torch.float64, device="cpu") -> torch.Tensor:
        """Regular grid over ``bbox`` (see ``uniform_grid``, first coordinate
        slowest) keeping only the points the domain contains: ``(N, dim)``."""
        lo, hi = self.bbox
        pts = uniform_grid(lo, hi, n_per_dim)
        pts = pts[self.contains(pts)]
        return pts.to(dtype=dtype, device=device)

    # -- helpers ---------------------------------------------------------------------
    def _scale(self) -> float:
        lo, hi = self.bbox
        s = 1.0
        for a, b in zip(lo, hi):
            s = max(s, abs(a), abs(b), b - a)
        return s

    def _tol(self, dtype: torch.dtype) -> float:
        eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
        return max(1e-12, 4.0 * eps) * self._scale()

    def _points(self, x, name: str = "x") -> tuple[torch.Tensor, float]:
        """Validate ``x (n, dim)``; return it as float64 plus the tolerance."""
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        if x.ndim != 2:
            raise ValueError(f"{name} must have shape (n, {self.dim}), got {tuple(x.shape)}")
        if x.shape[1] != self.dim:
            raise ValueError(
                f"dimension mismatch: {name} has {x.shape[1]} columns, domain has dimension {self.dim}"
            )
        src = x.dtype if x.dtype.is_floating_point else _F64
        return x.detach().to(_F64), self._tol(src)

    def _checked(self, x) -> torch.Tensor:
        """Validate ``x (n, dim)`` and return it as a tensor in its own precision."""
        self._points(x)
        x = torch.as_tensor(x).detach()
        return x if x.dtype.is_floating_point else x.to(_F64)

    def __sub__(self, other: "Domain") -> "Difference":
        if not isinstance(other, Domain):
            return NotImplemented
        return Difference(self, [other])


# --------------------------------------------------------------------------- #
# Difference
# --------------------------------------------------------------------------- #
class Difference(Domain):
    """``base`` minus the open interiors of ``holes``.

    ``contains``: in ``base`` (closed) and not strictly inside any hole, so
    points on a hole boundary are contained.  ``sample_interior`` rejects
    base-interior samples lying in any (closed) hole.  ``sample_boundary``
    proposes points on ``base`` and hole boundaries with probabilities
    proportional to their boundary measures and keeps those on the boundary of
    the difference (base-boundary points not strictly inside a hole, hole
    boundary points inside the base and not strictly inside another hole):
    the accepted points are exactly uniform on the boundary of the difference.
    Each piece must implement ``boundary_measure()``.

    ``Difference(...) - hole`` appends ``hole`` to the hole list.
    """

    def __init__(self, base: Domain, holes: Sequence[Domain] | Domain = (), max_rounds: int = 50):
        if not isinstance(base, Domain):
            raise TypeError(f"base must be a Domain, got {type(base).__name__}")
        if isinstance(holes, Domain):
            holes = [holes]
        holes = list(holes)
        for h in holes:
            if not isinstance(h, Domain):
                raise TypeError(f"holes must be Domains, got {type(h).__name__}")
            if h.dim != base.dim:
                raise ValueError(f"dimension mismatch: base has dimension {base.dim}, a hole has {h.dim}")
        if isinstance(base, PointSet) or any(isinstance(h, PointSet) for h in holes):
            raise TypeError("Difference does not support PointSet pieces")
        self.base = base
        self.holes = holes
        self.dim = base.dim
        self.max_rounds = int(max_rounds)

    def __repr__(self) -> str:
        return f"Difference({self.base!r}, {self.holes!r})"

    def __sub__(self, other: Domain) -> "Difference":
        if not isinstance(other, Domain):
            return NotImplemented
        return Difference(self.base, self.holes + [other], max_rounds=self.max_rounds)

    @property
    def bbox(self):
        return self.base.bbox

    def _in_any_hole_open(self, x64) -> torch.Tensor:
        out = torch.zeros(x64.shape[0], dtype=torch.bool, device=x64.device)
        for h in self.holes:
            out |= h.contains_open(x64)
        return out

    def contains(self, x) -> torch.Tensor:
        x = self._checked(x)
        return self.base.contains(x) & ~self._in_any_hole_open(x)

    def contains_open(self, x) -> torch.Tensor:
        x = self._checked(x)
        out = self.base.contains_open(x)
        for h in self.holes:
            out &= ~h.contains(x)
        return out

    def _interior(self, n, generator):
        def accept(c):
            ok = torch.ones(c.shape[0], dtype=torch.bool, device=c.device)
            for h in self.holes:
                ok &= ~h.contains(c)
            return ok

        return _rejection(
            n, lambda m: self.base._interior(m, generator), accept, generator,
            "Difference.sample_interior", self.max_rounds,
        )

    def _pieces(self) -> list[Domain]:
        return [self.base] + self.holes

    def _propose_boundary(self, m, generator) -> torch.Tensor:
        pieces = self._pieces()
        w = torch.tensor([p.boundary_measure() for p in pieces], dtype=_F64, device=generator.device)
        label = torch.multinomial(w / w.sum(), m, replacement=True, generator=generator)
        out = torch.empty(m, self.dim, dtype=_F64, device=generator.device)
        for i, p in enumerate(pieces):
            idx = (label == i).nonzero(as_tuple=True)[0]
            if idx.numel():
                out[idx] = p._boundary(idx.numel(), generator)
        return out

    def _accept_boundary(self, c) -> torch.Tensor:
        return self.base.contains(c) & ~self._in_any_hole_open(c)

    def _boundary(self, n, generator):
        return _rejection(
            n, lambda m: self._propose_boundary(m, generator), self._accept_boundary, generator,
            "Difference.sample_boundary", self.max_rounds,
        )

    def measure(self, n_estimate: int = 200_000, seed: int = 0) -> float:
        """Monte-Carlo estimate (fixed private seed): base measure times the
        accepted fraction of base-interior samples."""
        g = torch.Generator().manual_seed(seed)
        c = self.base._interior(n_estimate, g)
        ok = torch.ones(n_estimate, dtype=torch.bool)
        for h in self.holes:
            ok &= ~h.contains(c)
        return self.base.measure() * ok.double().mean().item()

    def boundary_measure(self, n_estimate: int = 200_000, seed: int = 0) -> float:
        """Monte-Carlo estimate (fixed private seed) of the boundary measure."""
        g = torch.Generator().manual_seed(seed)
        total = sum(p.boundary_measure() for p in self._pieces())
        c = self._propose_boundary(n_estimate, g)
        return total * self._accept_boundary(c).double().mean().item()

    def _boundary_distance(self, x64):
        return torch.stack([p._boundary_distance(x64) for p in self._pieces()], dim=1).min(dim=1).values

    def boundary_normal(self, x) -> torch.Tensor:
        """Outward unit normals ``(n, d)`` of the piece nearest to each point;
        on a hole boundary the normal points into the hole (outward from the
        difference)."""
        x_in = x
        x, _ = self._points(x)
        pieces = self._pieces()
        dist = torch.stack([p._boundary_distance(x) for p in pieces], dim=1)
        which = dist.argmin(dim=1)
        nrm = torch.empty_like(x)
        for i, p in enumerate(pieces):
            idx = (which == i).nonzero(as_tuple=True)[0]
            if idx.numel():
                v = p.boundary_normal(x[idx]).to(_F64)
                nrm[idx] = v if i == 0 else -v
        return _like(nrm, x_in)


# --------------------------------------------------------------------------- #
# PointSet
# --------------------------------------------------------------------------- #
class PointSet(Domain):
    """A fixed finite set of points ``(m, d)`` (array-like or tensor).

    ``sample_interior(n, generator)`` returns ``n`` rows drawn without
    replacement (random order), or all points in stored order when ``n`` is
    ``None`` or ``n == m`` (no generator needed then).  ``contains`` is exact
    row membership.  A point set has no boundary.
    """

    def __init__(self, points):
        p = torch.as_tensor(points)
        if not (p.dtype.is_floating_point or p.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
            raise ValueError(f"points must be real numbers, got dtype {p.dtype}")
        p = p.detach().to(device="cpu", dtype=_F64)
        if p.ndim != 2:
            raise ValueError(f"points must be a 2-D array of shape (n, d), got shape {tuple(p.shape)}")
        if p.shape[0] == 0 or p.shape[1] == 0:
            raise ValueError(f"empty point set: points has shape {tuple(p.shape)}")
        if not torch.isfinite(p).all():
            raise ValueError("points contain NaN or Inf values")
        self.points = p.clone()
        self.dim = p.shape[1]

    def __repr__(self) -> str:
        return f"PointSet({len(self)} points in R^{self.dim})"

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def bbox(self):
        return (
            tuple(self.points.min(dim=0).values.tolist()),
            tuple(self.points.max(dim=0).values.tolist()),
        )

    def contains(self, x) -> torch.Tensor:
        x, _ = self._points(x)
        p = self.points.to(x.device)
        out = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        chunk = max(1, 4_000_000 // max(1, p.shape[0] * self.dim))
        for s in range(0, x.shape[0], chunk):
            xc = x[s : s + chunk]
            out[s : s + chunk] = (xc[:, None, :] == p[None, :, :]).all(dim=2).any(dim=1)
        return out

    def contains_open(self, x) -> torch.Tensor:
        x, _ = self._points(x)
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def sample_interior(
        self, n: int | None = None, generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64, device="cpu",
    ) -> torch.Tensor:
        """``n`` stored rows without replacement ``(n, d)``; all rows in stored
        order when ``n`` is None or equals the number of points."""
        _check_dtype(dtype)
        m = len(self)
        if n is None:
            return self.points.to(dtype=dtype, device=device)
        n = _check_n(n)
        if n > m:
            raise ValueError(f"cannot draw n={n} points without replacement from a PointSet of {m} points")
        if n == m:
            return self.points.to(dtype=dtype, device=device)
        return self._interior(n, _check_generator(generator)).to(dtype=dtype, device=device)

    def _interior(self, n, generator):
        idx = torch.randperm(len(self), generator=generator, device=generator.device)[:n].cpu()
        return self.points[idx].to(generator.device)

    def _boundary(self, n, generator):
        raise NotImplementedError("a PointSet has no boundary")

    def grid(self, n_per_dim=None, dtype: torch.dtype = torch.float64, device="cpu"):
        """All stored points ``(m, d)`` (``n_per_dim`` is ignored)."""
        return self.points.to(dtype=dtype, device=device)
