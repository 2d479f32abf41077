"""Stacked residual vectors as functions of a flat parameter vector.

:class:`Rows` is the common currency of the Jacobian, subspace and solver stages: a list of blocks,
each a point set (n, d), optional per-point data (n, p) (targets of a data term, p may be 0) and a
per-point function ``fn(theta, x, y) -> (q,)`` with a row scale. Its value is
f(theta) = concat_b scale_b · fn_b(theta, x_i, y_i), flattened point-major (point i gives q_b
consecutive rows). The residual of a problem and the outputs of a network are both Rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, vmap

from .models import ParamSpec
from .problem import PDEProblem, checked_terms

BlockFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Block:
    """One term's rows: ``scale · fn(theta, x_i, y_i)`` for each point, q rows per point."""

    name: str
    points: torch.Tensor  # (n, d)
    fn: BlockFunction  # (theta (m,), x (d,), y (p,)) -> (q,)
    scale: float
    q: int
    data: torch.Tensor | None = None  # (n, p); None means p = 0
    #: what ``fn`` evaluates, for backends that evaluate it their own way (jets): the per-point
    #: residual ``residual(u, x[, y])``, the network and whether the residual takes data y.
    residual: Callable | None = None
    model: nn.Module | None = None
    with_data: bool = False

    def __post_init__(self):
        if self.data is None:
            self.data = self.points.new_zeros(self.points.shape[0], 0)

    @property
    def n_rows(self) -> int:
        return self.points.shape[0] * self.q


@dataclass
class Rows:
    """A stacked row function f(theta) over several blocks; see the module docstring."""

    blocks: list[Block]
    spec: ParamSpec
    eval_chunk: int = field(default=4096)

    @property
    def n_rows(self) -> int:
        return sum(b.n_rows for b in self.blocks)

    @property
    def m(self) -> int:
        return self.spec.numel

    def offsets(self) -> dict[str, slice]:
        """Row range of each block in the stacked vector."""
        out, start = {}, 0
        for b in self.blocks:
            out[b.name] = slice(start, start + b.n_rows)
            start += b.n_rows
        return out

    def chunks(self, points_per_chunk: int) -> Iterator[tuple[Block, int, torch.Tensor, torch.Tensor]]:
        """Yield (block, first row index, points (c, d), data (c, p)) covering every row in order."""
        start = 0
        for b in self.blocks:
            n = b.points.shape[0]
            for i in range(0, n, points_per_chunk):
                sl = slice(i, i + points_per_chunk)
                yield b, start + i * b.q, b.points[sl], b.data[sl]
            start += b.n_rows

    def block_values(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unscaled per-point values of each block: {name: (n, q)}. Differentiable in theta."""
        out = {}
        for b in self.blocks:
            parts = [vmap(b.fn, in_dims=(None, 0, 0))(theta, b.points[i:i + self.eval_chunk],
                                                      b.data[i:i + self.eval_chunk])
                     for i in range(0, b.points.shape[0], self.eval_chunk)]
            out[b.name] = torch.cat(parts).reshape(b.points.shape[0], b.q)
        return out

    def values(self, theta: torch.Tensor, check: bool = True) -> torch.Tensor:
        """The stacked, scaled vector f(theta), shape (n_rows,). Differentiable in theta.

        With ``check``, NaN/Inf raise a ValueError that names the block."""
        vals = self.block_values(theta)
        if check:
            for b in self.blocks:
                if not torch.isfinite(vals[b.name]).all():
                    raise FloatingPointError(
                        f"residual term {b.name!r} has NaN or Inf values at the current parameters: "
                        "check the network's parameters and outputs (a diverged training run?) and the "
                        "term's residual function for divisions by zero or logs of negative numbers"
                    )
        return torch.cat([b.scale * vals[b.name].reshape(-1) for b in self.blocks])

    def norms(self, theta: torch.Tensor) -> dict[str, float]:
        """Weighted norm of each block, sqrt(w_t · mean |r_t|²)."""
        vals = self.block_values(theta)
        return {b.name: float(b.scale * vals[b.name].norm()) for b in self.blocks}


def point_function(model: nn.Module, spec: ParamSpec, residual, name: str, with_data: bool = False) -> BlockFunction:
    """Wrap a per-point residual ``residual(u, x)`` (or ``residual(u, x, y)`` for a term with
    targets) into ``fn(theta, x, y) -> (q,)``."""

    def fn(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        params = spec.unflatten(theta)

        def u(xp: torch.Tensor) -> torch.Tensor:
            return functional_call(model, params, (xp.unsqueeze(0),)).squeeze(0)

        r = residual(u, x, y) if with_data else residual(u, x)
        return torch.as_tensor(r).reshape(-1)

    fn.__name__ = f"residual_{name}"
    return fn


def check_model(problem: PDEProblem, model: nn.Module, probe: torch.Tensor) -> None:
    """Raise a clear error when the model does not map (N, d) to (N, k) for this problem, or when
    its dtype/device differ from the probe points (1, d)."""
    params = list(model.parameters()) + list(model.buffers())
    float_params = [p for p in params if p.is_floating_point()]
    if float_params:
        dtypes = {p.dtype for p in float_params}
        devices = {p.device for p in float_params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                f"model mixes dtypes {sorted(map(str, dtypes))} or devices {sorted(map(str, devices))}: "
                "move it to one with model.to(dtype=..., device=...)"
            )
        dtype, device = dtypes.pop(), devices.pop()
        if dtype != probe.dtype or device != probe.device:
            raise ValueError(
                f"model is {dtype} on {device} but the points are {probe.dtype} on {probe.device}: "
                f"use model.to(dtype={probe.dtype}, device='{probe.device}') or pass matching dtype/device"
            )
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception as exc:  # the user's module failed on our input: say what we passed
        raise ValueError(
            f"model failed on points of shape {tuple(probe.shape)} (problem {problem.name!r} has "
            f"{problem.dim} inputs {problem.input_names}): {type(exc).__name__}: {exc}. The model "
            "must map (N, d) to (N, k)."
        ) from exc
    k = problem.n_outputs
    if not isinstance(out, torch.Tensor) or out.shape != (probe.shape[0], k):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"model output has shape {shape} for input {tuple(probe.shape)}, but problem "
            f"{problem.name!r} expects (N, {k}) with outputs {problem.output_names}: build the "
            f"network with {k} output(s)"
        )
    if not torch.isfinite(out).all():
        raise FloatingPointError(
            "model output contains NaN or Inf: the parameters are probably corrupted (diverged "
            "training or a bad checkpoint)"
        )


def residual_rows(problem: PDEProblem, model: nn.Module, points: dict[str, torch.Tensor],
                  spec: ParamSpec | None = None, targets: dict[str, torch.Tensor] | None = None) -> Rows:
    """The problem's stacked residual as Rows over ``points`` ({term name: (n, d)}).

    Terms with targets (data terms) take them from ``targets`` ({term name: (n, p)}) or, when
    absent there, from ``Term.targets``; their residual is called as ``residual(u, x, y)``."""
    spec = spec or ParamSpec.of(model)
    terms = checked_terms(problem, points)
    missing = set(terms) - set(points)
    unknown = set(points) - set(terms)
    if missing or unknown:
        raise ValueError(
            f"points do not match the problem's terms: missing {sorted(missing)}, unknown {sorted(unknown)}"
        )
    first = next(iter(points.values()))
    check_model(problem, model, first[:1])
    theta = spec.flatten(model)
    blocks = []
    for name, term in terms.items():
        pts = points[name]
        if pts.ndim != 2 or pts.shape[0] == 0:
            raise ValueError(f"term {name!r}: empty point set; give it at least one point")
        if pts.shape[1] != problem.dim:
            raise ValueError(
                f"term {name!r}: points have {pts.shape[1]} columns, the problem has {problem.dim} inputs"
            )
        if term.weight < 0 or not torch.isfinite(torch.tensor(float(term.weight))):
            raise ValueError(f"term {name!r}: weight must be finite and >= 0, got {term.weight}")
        data = targets.get(name) if targets else None
        if data is None and term.targets is not None:
            own = torch.as_tensor(term.points)
            if own.shape != pts.shape or not torch.equal(own.to(pts), pts):
                raise ValueError(
                    f"term {name!r}: its targets belong to its own fixed points, but other points were given; "
                    f"pass targets for them (targets={{{name!r}: ...}}) or use the term's own points"
                )
            data = torch.as_tensor(term.targets)
        if data is not None:
            data = torch.as_tensor(data).to(pts)
            data = data.unsqueeze(1) if data.ndim == 1 else data
            if data.ndim != 2 or data.shape[0] != pts.shape[0]:
                raise ValueError(
                    f"term {name!r}: targets have shape {tuple(data.shape)}, expected ({pts.shape[0]}, p) "
                    "with one row per point"
                )
            if not torch.isfinite(data).all():
                raise ValueError(f"term {name!r}: targets contain NaN or Inf")
        fn = point_function(model, spec, term.residual, name, with_data=data is not None)
        try:
            probe_y = data[0] if data is not None else pts.new_zeros(0)
            q = fn(theta, pts[0], probe_y).numel()
        except Exception as exc:
            raise ValueError(f"residual term {name!r} failed on one point: {type(exc).__name__}: {exc}") from exc
        scale = (float(term.weight) / pts.shape[0]) ** 0.5
        blocks.append(Block(name, pts, fn, scale, q, data, term.residual, model, data is not None))
    return Rows(blocks, spec)


def output_rows(model: nn.Module, points: torch.Tensor, spec: ParamSpec | None = None,
                name: str = "outputs") -> Rows:
    """The network outputs at ``points`` (n, d) as Rows (k rows per point, scale 1)."""
    spec = spec or ParamSpec.of(model)

    def fn(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return functional_call(model, spec.unflatten(theta), (x.unsqueeze(0),)).reshape(-1)

    q = fn(spec.flatten(model), points[0], points.new_zeros(0)).numel()
    return Rows([Block(name, points, fn, 1.0, q, None, _network_output, model)], spec)


def _network_output(u, x):
    return u(x)
