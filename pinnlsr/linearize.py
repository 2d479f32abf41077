"""One Jacobian-operator interface over every backend: the stage every refinement takes G from.

For stacked rows f(θ) (:class:`pinnlsr.residual.Rows`, n rows, m parameters) a
:class:`JacobianOperator` offers the residual values f, the products G·V and Gᵀ·W and explicit row
chunks under a memory budget. Backends (``mode``):

- ``"auto"`` (default): jet rows (:mod:`pinnlsr.engine`, :mod:`pinnlsr.jets`) for every term whose
  model and residual allow them, ``vmap(jacrev)`` rows for the others; :attr:`backends` names the
  path of each term and, where jets do not apply, why. Below a memory budget of one point's rows
  the products fall back to the matrix-free ones, with a ResourceWarning.
- ``"explicit"``: ``vmap(jacrev)`` rows for every term (:mod:`pinnlsr.jacobian`; the oracle the
  others are tested against).
- ``"matrix_free"``: ``jvp``/``vjp`` products that never form a row.

Building an operator checks each term's jet plan once (a few probe points); reuse the operator
for all products at the same θ.
"""
from __future__ import annotations

from typing import Iterator

import torch

from . import engine as engine_module
from . import jacobian as jac
from .residual import Rows

MODES = ("auto", "explicit", "matrix_free")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown Jacobian mode {mode!r}: use one of {', '.join(MODES)}")
    return mode


class JacobianOperator:
    """G = ∂f/∂θ (n, m) of ``rows`` at ``theta`` (m,), through the backend ``mode``.

    Args:
        rows: the stacked rows (residual or network outputs).
        theta: the parameters where G is taken.
        mode: "auto", "explicit" or "matrix_free" (see the module docstring).
        memory_budget: bytes for one chunk of rows (default: from free memory).
        engine: a :class:`pinnlsr.engine.StructuredJacobian` of ``rows`` to reuse (mode "auto"):
            its term plans are checked once, for any θ.
    """

    def __init__(self, rows: Rows, theta: torch.Tensor, mode: str = "auto", memory_budget: int | None = None,
                 engine: "engine_module.StructuredJacobian | None" = None):
        self.rows, self.theta = rows, theta.detach()
        self.mode = check_mode(mode)
        self.memory_budget = memory_budget
        if mode == "auto":
            self.engine = engine if engine is not None else engine_module.StructuredJacobian(rows, self.theta)
        else:
            self.engine = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.n_rows, self.rows.m

    @property
    def backends(self) -> dict[str, str]:
        """{term: how its rows are formed}: "jet(u,u_x,...)", "generic: why", "explicit" or "matrix_free"."""
        if self.engine is not None:
            return {name: plan.describe() for name, plan in self.engine.plans.items()}
        label = "explicit: vmap(jacrev) rows" if self.mode == "explicit" else "matrix_free: jvp/vjp products"
        return {b.name: label for b in self.rows.blocks}

    def values(self) -> torch.Tensor:
        """f(θ), shape (n,)."""
        with torch.no_grad():
            return self.rows.values(self.theta)

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """G · v for v (m, l): (n, l)."""
        if self.engine is not None:
            return engine_module.apply(self.rows, self.theta, v, self.memory_budget, self.engine)
        return jac.apply(self.rows, self.theta, v, self.mode, self.memory_budget)

    def rmatmul(self, w: torch.Tensor) -> torch.Tensor:
        """Gᵀ · w for w (n, l): (m, l)."""
        if self.engine is not None:
            return engine_module.apply_transpose(self.rows, self.theta, w, self.memory_budget, self.engine)
        return jac.apply_transpose(self.rows, self.theta, w, self.mode, self.memory_budget)

    def row_chunks(self, extra_columns: int = 0) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """Yield (row slice, G[slice] (c, m), f[slice] (c,)) over all rows, chunks sized so that
        the rows and ``extra_columns`` numbers per row fit in the budget."""
        if self.engine is not None:
            yield from engine_module.iter_rows_and_values(self.rows, self.theta, self.memory_budget, extra_columns,
                                                   self.engine, values=True)
            return
        if self.mode == "matrix_free":
            raise ValueError("row_chunks: the matrix-free backend forms no rows; use mode='auto' or 'explicit'")
        f = self.values()
        for sl, g in jac.iter_jacobian_rows(self.rows, self.theta, self.memory_budget, extra_columns):
            yield sl, g, f[sl]

    def dense(self) -> torch.Tensor:
        """G as one (n, m) tensor (the whole-space basis V = I, small problems, tests)."""
        out = self.theta.new_empty(self.shape)
        for sl, g, _ in self.row_chunks():
            out[sl] = g
        return out


def apply(rows: Rows, theta: torch.Tensor, v: torch.Tensor, mode: str = "auto",
          memory_budget: int | None = None) -> torch.Tensor:
    """G · v (n, l) for v (m, l) through a one-off :class:`JacobianOperator`."""
    return JacobianOperator(rows, theta, mode, memory_budget).matmul(v)


def apply_transpose(rows: Rows, theta: torch.Tensor, w: torch.Tensor, mode: str = "auto",
                    memory_budget: int | None = None) -> torch.Tensor:
    """Gᵀ · w (m, l) for w (n, l) through a one-off :class:`JacobianOperator`."""
    return JacobianOperator(rows, theta, mode, memory_budget).rmatmul(w)


__all__ = ["MODES", "JacobianOperator", "apply", "apply_transpose", "check_mode"]
