"""PDE problems: named residual terms with their point sets, and an exact or reference solution.

A problem is written once, per point. Each residual term maps the solution callable ``u`` (one
point ``x`` of shape (d,) -> outputs (k,)) and the point ``x`` to a residual of shape (q,) or a
scalar; the derivative helpers of :mod:`pinnlsr.operators` build PDE operators from ``u``. The same
code then serves pretraining, LSR, Gauss–Newton, error checks and plots.

Residuals run under ``torch.func.vmap`` (over points) and ``jacrev``/``jvp`` (over parameters), so
they must not branch in Python on tensor values: instead of ``if x[0] > 0.5: ...`` write
``torch.where(x[0] > 0.5, a, b)`` (a Python ``if`` on a coordinate fails with torch's
"data-dependent control flow" error).

The stacked residual of a problem is f = concat_t sqrt(w_t / n_t) · r_t(x_i), so that
||f||² = Σ_t w_t · mean_i |r_t(x_i)|² is exactly the training loss.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import nn

PointFunction = Callable[[torch.Tensor], torch.Tensor]
ResidualFunction = Callable[[PointFunction, torch.Tensor], torch.Tensor]
Sampler = Callable[..., torch.Tensor]


@dataclass
class Term:
    """One residual term of a problem.

    Args:
        name: unique name ("pde", "bc", "ic", "data", ...), used in diagnostics and errors.
        residual: ``residual(u, x) -> (q,)`` or scalar, for one point x of shape (d,); runs
            under ``vmap``: use ``torch.where``, not a Python ``if``, on coordinates.
        points: a fixed tensor (n, d), or a sampler called as ``sampler(n, generator=g) -> (n, d)``
            with ``n = n_points`` and the generator as a keyword (the ``sample_*`` methods of
            :mod:`pinnlsr.geometry` fit; a lambda needs the parameter name:
            ``lambda n, generator=None: torch.rand(n, 2, generator=generator)``).
        n_points: how many points a sampler draws (ignored for fixed points).
        weight: w_t in the loss Σ_t w_t · mean |r_t|².
        targets: optional per-point data (n, p) aligned with fixed ``points`` (observations,
            labels); the residual is then called as ``residual(u, x, y)`` with y of shape (p,).
            Example, a supervised term: ``Term("data", lambda u, x, y: u(x) - y, X, targets=Y)``.
    """

    name: str
    residual: ResidualFunction
    points: Union[torch.Tensor, Sampler]
    n_points: int | None = None
    weight: float = 1.0
    targets: torch.Tensor | None = None

    def __post_init__(self):
        if self.targets is not None and not isinstance(self.points, torch.Tensor):
            raise ValueError(f"term {self.name!r}: targets need fixed points (a tensor), not a sampler")

    def sample(self, generator: torch.Generator, dtype: torch.dtype, device) -> torch.Tensor:
        """The term's points as a (n, d) tensor of the given dtype/device."""
        if isinstance(self.points, torch.Tensor):
            pts = self.points
        elif callable(self.points):
            if self.n_points is None or self.n_points <= 0:
                raise ValueError(
                    f"term {self.name!r}: empty point set (n_points={self.n_points}); give a positive n_points"
                )
            try:
                inspect.signature(self.points).bind(self.n_points, generator=generator)
            except TypeError:
                raise TypeError(f"term {self.name!r}: samplers are called as sampler(n, generator=g); give yours a "
                                "parameter named generator, e.g. lambda n, generator=None: ...") from None
            except ValueError:  # no signature to check (a builtin)
                pass
            pts = self.points(self.n_points, generator=generator)
        else:
            raise TypeError(f"term {self.name!r}: points must be a tensor (n, d) or a sampler callable")
        pts = torch.as_tensor(pts).to(dtype=dtype, device=device)
        if pts.ndim != 2 or pts.shape[0] == 0:
            raise ValueError(
                f"term {self.name!r}: points must be a non-empty (n, d) array, got shape {tuple(pts.shape)}"
            )
        if not torch.isfinite(pts).all():
            raise ValueError(f"term {self.name!r}: points contain NaN or Inf")
        return pts


def checked_terms(problem, points: dict[str, torch.Tensor]) -> dict[str, Term]:
    """{name: term} of ``problem``; a ValueError when two terms share a name (one would be
    dropped) or the given points of a term contain NaN or Inf."""
    terms = problem.terms()
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"{type(problem).__name__}: term names must be unique, got {names}; rename the terms")
    for name, pts in points.items():
        if isinstance(pts, torch.Tensor) and not torch.isfinite(pts).all():
            raise ValueError(f"term {name!r}: the given points contain NaN or Inf; pass finite points")
    return {t.name: t for t in terms}


class PDEProblem:
    """Base class of a problem. Subclasses set the class attributes and implement :meth:`terms`.

    Class attributes:
        name: short identifier (used by the CLI and in metrics.json).
        description: one line for ``pinnlsr list``.
        input_names: names of the d input coordinates (time last for space-time problems).
        output_names: names of the k outputs.

    Methods to implement: :meth:`terms`; and :meth:`exact` (closed-form solution), a
    :attr:`reference_path`, or :meth:`reference` (reference data) for error metrics.
    """

    name: str = "problem"
    description: str = ""
    input_names: tuple[str, ...] = ("x",)
    output_names: tuple[str, ...] = ("u",)
    #: a reference solution file (.npz, .mat, PINNacle .dat, or any mesh meshio reads, with point
    #: data) used by :meth:`reference` when set; its columns must match the inputs and outputs.
    reference_path: str | None = None

    @property
    def dim(self) -> int:
        """Number of input coordinates d."""
        return len(self.input_names)

    @property
    def n_outputs(self) -> int:
        """Number of outputs k."""
        return len(self.output_names)

    def terms(self) -> list[Term]:
        """The residual terms with their points and weights."""
        raise NotImplementedError(f"{type(self).__name__} must implement terms()")

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """Exact solution at points x (N, d) -> (N, k), where one is known."""
        raise NotImplementedError

    def test_points(self) -> torch.Tensor:
        """Points (N, d) where errors against :meth:`exact` are measured."""
        raise NotImplementedError

    def reference(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(points (N, d), values (N, k)) for error metrics, or None when the problem has neither
        an exact solution nor reference data. The default uses :meth:`test_points` and
        :meth:`exact`; with :attr:`reference_path` set it loads that file (through
        :func:`pinnlsr.readers.load_reference`) and checks its columns against the problem."""
        if self.reference_path is not None:
            from .readers import load_reference

            ref = load_reference(self.reference_path, dim=self.dim)
            ref.check(self.dim, self.n_outputs)
            return torch.from_numpy(ref.points), torch.from_numpy(ref.values)
        try:
            x = self.test_points()
            return x, self.exact(x)
        except NotImplementedError:
            return None

    def error_regions(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named subsets of the reference points x (N, d), as boolean masks (N,), on which errors
        are reported too (``rel_l2_<name>``), e.g. away from a singularity; none by default."""
        return {}

    def default_model(self, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float64, device="cpu") -> nn.Module:
        """The network this problem trains by default (an MLP, 3 hidden layers of 30, tanh)."""
        from .models import MLP

        return MLP(self.dim, self.n_outputs, (30, 30, 30), "tanh", generator=generator, dtype=dtype, device=device)

    def sample_points(self, generator: torch.Generator, dtype: torch.dtype = torch.float64,
                      device="cpu", counts: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
        """Points of every term, drawn with ``generator``: {term name: (n_t, d)}.

        ``counts`` overrides the number of points of sampled terms by name."""
        terms = list(checked_terms(self, {}).values())
        names = [t.name for t in terms]
        unknown = set(counts or {}) - set(names)
        if unknown:
            raise ValueError(f"point counts for unknown terms {sorted(unknown)}; the terms are {names}")
        points = {}
        for term in terms:
            if counts and term.name in counts:
                term = dataclasses.replace(term, n_points=int(counts[term.name]))
            pts = term.sample(generator, dtype, device)
            if pts.shape[1] != self.dim:
                raise ValueError(
                    f"term {term.name!r}: points have {pts.shape[1]} columns but the problem has "
                    f"{self.dim} inputs {self.input_names}"
                )
            points[term.name] = pts
        return points
