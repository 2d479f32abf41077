"""Differential operators for per-point functions, built on ``torch.func``.

Every operator takes ``u``, a callable mapping one point ``x`` of shape ``(d,)`` to the outputs of
shape ``(k,)``, and the point ``x`` itself. Because they are written with ``torch.func.jvp`` and
``torch.func.jacfwd``/``jacrev``, they compose with ``torch.func.vmap`` over points and with
``jacrev``/``jvp`` over network parameters, so the same residual code gives residual values, their
parameter Jacobians and training gradients.

Example, the residual of -Δu = f at one point::

    def pde(u, x):
        return -laplacian(u, x) - f(x)

A Neumann condition ∂u/∂n = g: the outward normals of the boundary points go in as per-point
targets, so the residual gets the normal n (d,) of its point::

    xb = domain.sample_boundary(200, generator=gen)
    Term("neumann", lambda u, x, n: gradient(u, x) @ n - g(x), xb, targets=domain.boundary_normal(xb))

Residuals run under ``vmap``: branch on coordinates with ``torch.where``, not a Python ``if``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.func import jacfwd, jacrev, jvp

PointFunction = Callable[[torch.Tensor], torch.Tensor]


def _scalar(u: PointFunction, component: int) -> PointFunction:
    def scalar_fn(x: torch.Tensor) -> torch.Tensor:
        out = u(x)
        return out[component] if out.ndim > 0 else out

    return scalar_fn


def _from_jet(u: PointFunction, x: torch.Tensor, component: int | None, dims: tuple[int, ...]) -> torch.Tensor | None:
    """The derivative (of every output when ``component`` is None) read from u's jet when u is
    seen through its jets (pinnlsr.jets.TaylorJet) at this very point x; None otherwise (then it
    is computed by differentiation)."""
    jet_at = getattr(u, "jet_at", None)
    return None if jet_at is None else jet_at(x, component, dims)


def value(u: PointFunction, x: torch.Tensor, component: int = 0) -> torch.Tensor:
    """u_component(x): scalar tensor."""
    fast = _from_jet(u, x, component, ())
    return _scalar(u, component)(x) if fast is None else fast


def gradient(u: PointFunction, x: torch.Tensor, component: int = 0) -> torch.Tensor:
    """∇u_component(x): tensor of shape (d,)."""
    parts = [_from_jet(u, x, component, (j,)) for j in range(x.shape[-1])]
    if all(p is not None for p in parts):
        return torch.stack(parts)
    return jacrev(_scalar(u, component))(x)


def jacobian(u: PointFunction, x: torch.Tensor) -> torch.Tensor:
    """du_i/dx_j at x: tensor of shape (k, d)."""
    columns = [_from_jet(u, x, None, (j,)) for j in range(x.shape[-1])]
    if all(c is not None for c in columns):
        return torch.stack(columns, dim=-1)
    return jacfwd(u)(x)


def partial(u: PointFunction, x: torch.Tensor, *dims: int, component: int = 0) -> torch.Tensor:
    """Mixed partial derivative ∂^n u_component / ∂x_{dims[0]} ... ∂x_{dims[-1]} at x (scalar).

    ``partial(u, x, 0, 0)`` is u_xx, ``partial(u, x, 1)`` is u_y (or u_t for a 1-D space-time
    problem). Each order is one forward-mode directional derivative, so the cost grows linearly
    with the order, not with the dimension.
    """
    if not dims:
        return value(u, x, component)
    d = x.shape[-1]
    for dim in dims:
        if not 0 <= dim < d:
            raise ValueError(f"partial: dimension {dim} out of range for points of dimension {d}")
    fast = _from_jet(u, x, component, dims)
    if fast is not None:
        return fast
    fn = _scalar(u, component)
    for dim in dims:
        fn = _directional(fn, dim)
    return fn(x)


def _directional(fn: PointFunction, dim: int) -> PointFunction:
    def derivative(x: torch.Tensor) -> torch.Tensor:
        direction = (torch.arange(x.shape[-1], device=x.device) == dim).to(x.dtype)
        return jvp(fn, (x,), (direction,))[1]

    return derivative


def hessian(u: PointFunction, x: torch.Tensor, component: int = 0) -> torch.Tensor:
    """Hessian of u_component at x: tensor of shape (d, d)."""
    d = x.shape[-1]
    entries = [[_from_jet(u, x, component, (j, k)) for k in range(d)] for j in range(d)]
    if all(e is not None for row in entries for e in row):
        return torch.stack([torch.stack(row) for row in entries])
    return jacfwd(jacrev(_scalar(u, component)))(x)


def laplacian(
    u: PointFunction, x: torch.Tensor, component: int = 0, dims: Sequence[int] | None = None
) -> torch.Tensor:
    """Σ_i ∂²u_component/∂x_i² over ``dims`` (all coordinates by default; pass the spatial ones for
    a space-time problem, e.g. ``dims=(0, 1)`` when time is the last coordinate). Scalar."""
    dims = range(x.shape[-1]) if dims is None else dims
    fast = [_from_jet(u, x, component, (j, j)) for j in dims]
    if all(f is not None for f in fast):
        return sum(fast)
    diag = torch.diagonal(hessian(u, x, component))  # forward-over-reverse: cheaper than d nested jvp pairs
    return diag[list(dims)].sum()


def divergence(
    v: PointFunction, x: torch.Tensor, components: Sequence[int] | None = None,
    dims: Sequence[int] | None = None,
) -> torch.Tensor:
    """Σ_j ∂v_{components[j]}/∂x_{dims[j]}: the divergence of a vector field (scalar).

    ``v`` maps (d,) to (k,); by default components and dims are 0..d-1 (so k >= d is needed). For
    the flux of a scalar, pass ``v = lambda x: a(x) * gradient(u, x)``.
    """
    d = x.shape[-1]
    dims = list(range(d)) if dims is None else list(dims)
    components = list(range(len(dims))) if components is None else list(components)
    if len(dims) != len(components):
        raise ValueError("divergence: components and dims must have the same length")
    return sum(partial(v, x, dim, component=c) for c, dim in zip(components, dims))
