"""Jacobians of stacked rows with respect to the flat parameters: explicit rows and matrix-free products.

For Rows f(theta) of n rows and m parameters, G = df/dtheta is (n, m). Explicit rows come from
``vmap(jacrev)`` over chunks of points whose size is set by a memory budget, so products G·V and
Gᵀ·W are formed chunk by chunk and G is never held whole unless asked for. Matrix-free products use
``torch.func.jvp``/``vjp`` and never form any row of G.
"""
from __future__ import annotations

import warnings
from typing import Iterator

import torch
from torch.func import jacrev, jvp, vjp, vmap

from .residual import Block, Rows

# Peak memory of vmap(jacrev) per Jacobian row, in units of one row (m numbers): the output row,
# the cotangents flowing back through the network and the cat of parameter blocks.
_JACOBIAN_OVERHEAD = 4
_DEFAULT_CPU_BUDGET = 2 * 1024**3


def default_memory_budget(device: torch.device | str = "cpu") -> int:
    """Bytes the Jacobian stage may use at once: half the free memory of a CUDA device; on the
    CPU a quarter of the available RAM, at most 2 GiB."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        return int(min(_DEFAULT_CPU_BUDGET, info.get("MemAvailable", _DEFAULT_CPU_BUDGET * 4) / 4))
    except OSError:
        return _DEFAULT_CPU_BUDGET


def points_per_chunk(rows: Rows, budget_bytes: int | None, dtype: torch.dtype, device,
                     extra_columns: int = 0) -> int:
    """Points per chunk so that the explicit Jacobian rows of a chunk (plus ``extra_columns``
    numbers per row for the product with it) fit in ``budget_bytes``.

    Raises a ValueError if not even one point fits: the budget cannot hold a single row."""
    budget = default_memory_budget(device) if budget_bytes is None else int(budget_bytes)
    itemsize = torch.empty((), dtype=dtype).element_size()
    q_max = max(b.q for b in rows.blocks)
    per_point = q_max * (_JACOBIAN_OVERHEAD * rows.m + extra_columns) * itemsize
    n = budget // per_point
    if n < 1:
        raise ValueError(
            f"memory budget of {budget} bytes cannot hold the Jacobian rows of one point "
            f"({per_point} bytes for m = {rows.m} parameters): raise memory_budget or use "
            "jacobian_mode='matrix_free'"
        )
    return int(n)


def block_jacobian(block: Block, theta: torch.Tensor, points: torch.Tensor,
                   data: torch.Tensor | None = None) -> torch.Tensor:
    """Explicit scaled Jacobian rows of one block at ``points`` (c, d) with their data (c, p):
    shape (c·q, m)."""
    data = points.new_zeros(points.shape[0], 0) if data is None else data
    jac = vmap(jacrev(block.fn, argnums=0), in_dims=(None, 0, 0))(theta, points, data)  # (c, q, m)
    return block.scale * jac.reshape(points.shape[0] * block.q, -1)


def iter_jacobian_rows(rows: Rows, theta: torch.Tensor, memory_budget: int | None = None,
                       extra_columns: int = 0) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (row slice, G[row slice] of shape (c, m)) chunk by chunk, covering all rows."""
    chunk = points_per_chunk(rows, memory_budget, theta.dtype, theta.device, extra_columns)
    for block, start, pts, data in rows.chunks(chunk):
        g = block_jacobian(block, theta, pts, data)
        yield slice(start, start + g.shape[0]), g


def jacobian(rows: Rows, theta: torch.Tensor, memory_budget: int | None = None) -> torch.Tensor:
    """The whole Jacobian G (n, m). Only for problems where it fits; see :func:`apply`."""
    out = torch.empty(rows.n_rows, rows.m, dtype=theta.dtype, device=theta.device)
    for sl, g in iter_jacobian_rows(rows, theta, memory_budget):
        out[sl] = g
    return out


def _block_rows(block: Block, points: torch.Tensor, data: torch.Tensor):
    def f(theta: torch.Tensor) -> torch.Tensor:
        return block.scale * vmap(block.fn, in_dims=(None, 0, 0))(theta, points, data).reshape(-1)

    return f


def _check_directions(rows: Rows, theta: torch.Tensor, v: torch.Tensor, side: str) -> None:
    expected = rows.m if side == "right" else rows.n_rows
    if v.ndim != 2 or v.shape[0] != expected:
        what = "parameters m" if side == "right" else "rows n"
        raise ValueError(f"directions must have shape ({expected}, l) with {what} = {expected}, got {tuple(v.shape)}")
    if v.dtype != theta.dtype or v.device != theta.device:
        raise ValueError(
            f"directions are {v.dtype} on {v.device} but parameters are {theta.dtype} on {theta.device}: convert one"
        )


def apply(rows: Rows, theta: torch.Tensor, v: torch.Tensor, mode: str = "explicit",
          memory_budget: int | None = None, directions_per_pass: int = 32) -> torch.Tensor:
    """G · v for v of shape (m, l): returns (n, l).

    ``mode="explicit"`` forms the rows of G chunk by chunk and multiplies (fast, memory set by the
    budget); ``mode="matrix_free"`` pushes ``directions_per_pass`` directions at a time through
    forward-mode AD (``jvp``) and never forms G. The jet rows and the choice between backends
    are :mod:`pinnlsr.linearize`'s."""
    _check_directions(rows, theta, v, "right")
    out = torch.empty(rows.n_rows, v.shape[1], dtype=theta.dtype, device=theta.device)
    if mode == "explicit":
        for sl, g in iter_jacobian_rows(rows, theta, memory_budget, extra_columns=v.shape[1]):
            out[sl] = g @ v
        return out
    if mode != "matrix_free":
        raise ValueError(f"unknown Jacobian mode {mode!r} here: use 'explicit' or 'matrix_free' "
                         "(pinnlsr.linearize adds 'auto')")
    chunk = _matrix_free_chunk(rows, memory_budget, theta, directions_per_pass)
    for block, start, pts, data in rows.chunks(chunk):
        f = _block_rows(block, pts, data)

        def push(direction: torch.Tensor) -> torch.Tensor:
            return jvp(f, (theta,), (direction,))[1]

        n_rows = pts.shape[0] * block.q
        for j in range(0, v.shape[1], directions_per_pass):
            cols = v[:, j:j + directions_per_pass]
            out[start:start + n_rows, j:j + cols.shape[1]] = vmap(push, in_dims=1, out_dims=1)(cols)
    return out


def apply_transpose(rows: Rows, theta: torch.Tensor, w: torch.Tensor, mode: str = "explicit",
                    memory_budget: int | None = None, directions_per_pass: int = 32) -> torch.Tensor:
    """Gᵀ · w for w of shape (n, l): returns (m, l). Modes as in :func:`apply` (``vjp`` for the
    matrix-free one)."""
    _check_directions(rows, theta, w, "left")
    out = torch.zeros(rows.m, w.shape[1], dtype=theta.dtype, device=theta.device)
    if mode == "explicit":
        for sl, g in iter_jacobian_rows(rows, theta, memory_budget, extra_columns=w.shape[1]):
            out += g.T @ w[sl]
        return out
    if mode != "matrix_free":
        raise ValueError(f"unknown Jacobian mode {mode!r} here: use 'explicit' or 'matrix_free' "
                         "(pinnlsr.linearize adds 'auto')")
    chunk = _matrix_free_chunk(rows, memory_budget, theta, directions_per_pass)
    for block, start, pts, data in rows.chunks(chunk):
        _, pullback = vjp(_block_rows(block, pts, data), theta)
        n_rows = pts.shape[0] * block.q
        for j in range(0, w.shape[1], directions_per_pass):
            cot = w[start:start + n_rows, j:j + directions_per_pass]
            out[:, j:j + cot.shape[1]] += vmap(pullback, in_dims=1, out_dims=1)(cot)[0]
    return out


def _matrix_free_chunk(rows: Rows, memory_budget: int | None, theta: torch.Tensor,
                       directions_per_pass: int) -> int:
    # Forward/reverse passes hold activations per point and direction, not rows of G: a few
    # thousand points per pass keeps the work vectorised without large memory.
    budget = default_memory_budget(theta.device) if memory_budget is None else int(memory_budget)
    itemsize = theta.element_size()
    per_point = 64 * 1024 * itemsize * max(1, directions_per_pass // 8)
    return max(1, min(8192, budget // per_point))


def warn_if_large(n_rows: int, m: int, dtype: torch.dtype, budget: int) -> None:
    """Warn when the dense G (n, m) would exceed the budget (used before dense paths)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    if n_rows * m * itemsize > budget:
        warnings.warn(
            f"dense Jacobian of {n_rows}x{m} needs {n_rows * m * itemsize / 2**30:.1f} GiB, above the "
            f"memory budget of {budget / 2**30:.1f} GiB",
            ResourceWarning,
            stacklevel=3,
        )


__all__ = [
    "default_memory_budget",
    "points_per_chunk",
    "block_jacobian",
    "iter_jacobian_rows",
    "jacobian",
    "apply",
    "apply_transpose",
    "warn_if_large",
]
