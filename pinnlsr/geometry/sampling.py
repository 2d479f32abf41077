"""Validation and random-number helpers shared by the domains, regular grids (``uniform_grid``) and
rejection sampling. Random numbers are drawn in float64 on the generator's device."""

from __future__ import annotations

import math
import operator

import torch

_F64 = torch.float64


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _check_n(n, name: str = "n") -> int:
    """Return ``n`` as a positive int or raise (``name`` in the message)."""
    try:
        if isinstance(n, bool):
            raise TypeError
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {n!r}") from None
    if n <= 0:
        raise ValueError(f"empty point set: {name} must be positive, got {name}={n}")
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


def _as_bounds(lower, upper) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The corners of a box as float tuples, checked: same length, lower < upper in every coordinate."""
    lo = _as_float_vector(lower, "lower")
    hi = _as_float_vector(upper, "upper")
    if len(lo) != len(hi):
        raise ValueError(f"dimension mismatch: lower has {len(lo)} entries, upper has {len(hi)}")
    for k, (a, b) in enumerate(zip(lo, hi)):
        if not a < b:
            raise ValueError(f"need lower < upper in every coordinate; coordinate {k}: {a} >= {b}")
    return lo, hi


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
    return tuple(_check_n(c, "n_per_dim") for c in counts)


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
    lo, hi = _as_bounds(lower, upper)
    counts = _check_n_per_dim(n_per_dim, len(lo))
    axes = [_linspace(a, b, k) for a, b, k in zip(lo, hi, counts)]
    mesh = torch.meshgrid(*axes, indexing="ij")
    pts = torch.stack([m.reshape(-1) for m in mesh], dim=1)
    return pts.to(dtype=dtype, device=device)


def _like(t64: torch.Tensor, ref) -> torch.Tensor:
    """Cast a float64 result to the floating dtype/device of ``ref`` (if a tensor)."""
    if isinstance(ref, torch.Tensor) and ref.dtype.is_floating_point:
        return t64.to(dtype=ref.dtype, device=ref.device)
    return t64


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
