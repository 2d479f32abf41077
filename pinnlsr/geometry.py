"""Domains and seedable samplers for collocation points.

Every point set is a ``torch.Tensor`` of shape ``(n, d)`` (one row per point).
Randomness comes only from a ``torch.Generator`` passed by the caller: the same
generator state gives the same points, and nothing here touches the global RNG
or keeps global state.

Random numbers are drawn in float64 on the generator's device and the result is
then cast to the requested ``dtype`` / ``device``; the same seed therefore gives
the same points (up to rounding) for every dtype and output device.

Classes
-------
``Domain``        abstract base (``dim``, ``bbox``, ``contains``, samplers, ``grid``)
``Box``           axis-aligned box in any dimension ``d >= 1``
``Interval``      ``Box`` in 1-D with attributes ``a`` and ``b``
``Ball``          ball in any dimension; ``Disk`` is the 2-D ball
``Difference``    ``base`` minus open ``holes`` (also ``base - hole``)
``TimeDomain``    space-time product, time is the LAST coordinate
``PointSet``      a fixed, finite set of points

Grids (``uniform_grid`` and ``Domain.grid``) use ``"ij"`` (meshgrid) order: the
FIRST coordinate varies slowest and the LAST coordinate varies fastest.

Membership (``contains``) is for the closed set with a tolerance of
``max(1e-12, 4 * eps(x.dtype))`` relative to the domain's size scale
``max(1, max|bbox coordinate|, max bbox extent)``.
"""

from __future__ import annotations

import abc
import math
import operator
from typing import Sequence

import torch

__all__ = [
    "Domain",
    "Box",
    "Interval",
    "Ball",
    "Disk",
    "Difference",
    "TimeDomain",
    "PointSet",
    "uniform_grid",
]

_F64 = torch.float64


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _check_n(n) -> int:
    """Return ``n`` as a positive int or raise."""
    if isinstance(n, bool):
        raise TypeError(f"n must be an integer, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be an integer, got {n!r}") from None
    if n <= 0:
        raise ValueError(f"empty point set: n must be positive, got n={n}")
    return n


def _check_generator(generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            "generator must be a torch.Generator (randomness is only taken from an "
            f"explicit generator), got {type(generator).__name__}"
        )
    return generator


def _check_dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point torch.dtype, got {dtype!r}")
    return dtype


def _as_float_vector(values, name: str) -> tuple[float, ...]:
    """Scalar or 1-D sequence of finite numbers -> tuple of floats."""
    t = torch.as_tensor(values, dtype=_F64).detach().cpu()
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a scalar or a non-empty 1-D sequence, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return tuple(float(v) for v in t)


def _as_float(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """Uniform [0, 1) float64 numbers on the generator's device."""
    return torch.rand(*shape, generator=generator, dtype=_F64, device=generator.device)


def _randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=_F64, device=generator.device)


def _check_n_per_dim(n_per_dim, d: int) -> tuple[int, ...]:
    if isinstance(n_per_dim, (list, tuple)):
        counts = tuple(n_per_dim)
        if len(counts) != d:
            raise ValueError(f"n_per_dim has {len(counts)} entries but the domain has dimension {d}")
    else:
        counts = (n_per_dim,) * d
    out = []
    for c in counts:
        if isinstance(c, bool):
            raise TypeError(f"n_per_dim entries must be integers, got {c!r}")
        try:
            c = operator.index(c)
        except TypeError:
            raise TypeError(f"n_per_dim entries must be integers, got {c!r}") from None
        if c <= 0:
            raise ValueError(f"empty point set: n_per_dim must be positive, got {c}")
        out.append(c)
    return tuple(out)


def _linspace(lo: float, hi: float, k: int) -> torch.Tensor:
    """float64 CPU linspace with exact endpoints (k == 1 gives ``lo``)."""
    v = torch.linspace(lo, hi, k, dtype=_F64)
    v[0] = lo
    if k > 1:
        v[-1] = hi
    return v


def uniform_grid(
    lower,
    upper,
    n_per_dim,
    dtype: torch.dtype = torch.float64,
    device="cpu",
) -> torch.Tensor:
    """Regular tensor-product grid over the box ``[lower, upper]``.

    ``n_per_dim`` is an int (same count in every direction) or a sequence of
    ``d`` ints; each direction uses ``linspace(lower_k, upper_k, n_k)`` with
    exact endpoints (``n_k == 1`` gives just ``lower_k``).

    Returns a tensor of shape ``(prod(n_k), d)`` in ``"ij"`` order: the first
    coordinate varies slowest, the last coordinate fastest.
    """
    _check_dtype(dtype)
    lo = _as_float_vector(lower, "lower")
    hi = _as_float_vector(upper, "upper")
    if len(lo) != len(hi):
        raise ValueError(f"dimension mismatch: lower has {len(lo)} entries, upper has {len(hi)}")
    for k, (a, b) in enumerate(zip(lo, hi)):
        if not a < b:
            raise ValueError(f"need lower < upper in every coordinate; coordinate {k}: {a} >= {b}")
    counts = _check_n_per_dim(n_per_dim, len(lo))
    axes = [_linspace(a, b, k) for a, b, k in zip(lo, hi, counts)]
    mesh = torch.meshgrid(*axes, indexing="ij")
    pts = torch.stack([m.reshape(-1) for m in mesh], dim=1)
    return pts.to(dtype=dtype, device=device)


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
        n = _check_n(n)
        _check_generator(generator)
        _check_dtype(dtype)
        return self._interior(n, generator).to(dtype=dtype, device=device)

    def sample_boundary(
        self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64, device="cpu"
    ) -> torch.Tensor:
        """``n`` points uniform w.r.t. the boundary measure: tensor ``(n, dim)``."""
        n = _check_n(n)
        _check_generator(generator)
        _check_dtype(dtype)
        return self._boundary(n, generator).to(dtype=dtype, device=device)

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
# Box / Interval
# --------------------------------------------------------------------------- #
class Box(Domain):
    """Axis-aligned box ``[lower, upper]`` in ``R^d`` (``d >= 1``).

    Boundary sampling picks faces with probability proportional to their
    ``(d-1)``-measure and samples uniformly on the chosen face; in 1-D the
    boundary is the two endpoints (see ``Interval``).
    """

    def __init__(self, lower, upper):
        lo = _as_float_vector(lower, "lower")
        hi = _as_float_vector(upper, "upper")
        if len(lo) != len(hi):
            raise ValueError(f"dimension mismatch: lower has {len(lo)} entries, upper has {len(hi)}")
        for k, (a, b) in enumerate(zip(lo, hi)):
            if not a < b:
                raise ValueError(f"need lower < upper in every coordinate; coordinate {k}: {a} >= {b}")
        self.lower = lo
        self.upper = hi
        self.dim = len(lo)

    def __repr__(self) -> str:
        return f"Box(lower={list(self.lower)}, upper={list(self.upper)})"

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
        return lo + (hi - lo) * _rand(generator, n, self.dim)

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


def _like(t64: torch.Tensor, ref) -> torch.Tensor:
    """Cast a float64 result to the floating dtype/device of ``ref`` (if a tensor)."""
    if isinstance(ref, torch.Tensor) and ref.dtype.is_floating_point:
        return t64.to(dtype=ref.dtype, device=ref.device)
    return t64


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


# --------------------------------------------------------------------------- #
# rejection sampling
# --------------------------------------------------------------------------- #
def _rejection(n, propose, accept, generator, what: str, max_rounds: int, max_batch: int = 1_000_000):
    """Draw candidates ``propose(m) -> (m, d)`` and keep rows with ``accept``.

    Batches grow with the observed acceptance rate; raises ``RuntimeError``
    after ``max_rounds`` batches without collecting ``n`` points.
    """
    kept: list[torch.Tensor] = []
    have = 0
    tried = 0
    for _ in range(max_rounds):
        rate = have / tried if tried else 0.5
        rate = max(rate, 0.01)
        m = min(max_batch, int(math.ceil((n - have) / rate * 1.2)) + 64)
        cand = propose(m)
        ok = accept(cand)
        tried += m
        good = cand[ok]
        kept.append(good)
        have += good.shape[0]
        if have >= n:
            return torch.cat(kept, dim=0)[:n]
    raise RuntimeError(
        f"{what}: rejection sampling collected only {have} of {n} points after {max_rounds} "
        f"batches ({tried} candidates, acceptance rate {have / max(tried, 1):.2e}); "
        "the holes may cover (almost) all of the base domain"
    )


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
        n = _check_n(n)
        _check_generator(generator)
        _check_dtype(dtype)
        xs = self.space._interior(n, generator)
        t = torch.full((n, 1), self.t0, dtype=_F64, device=xs.device)
        return torch.cat([xs, t], dim=1).to(dtype=dtype, device=device)

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
