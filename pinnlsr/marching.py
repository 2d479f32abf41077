"""Time marching for Iterative LSR: refine over growing time windows [t0, T_1] ⊂ ... ⊂ [t0, t1].

A network trained by gradient descent on a whole space-time domain can settle on the wrong
trajectory (it does not respect causality: its error grows along t). Refinement in the tangent space
of such a network cannot leave that basin. Marching fixes the order: Iterative LSR first on
[t0, T_1] (where the initial condition pins the solution down), then, from the network aligned
there, on [t0, T_2], and so on to the whole interval. Every window sees all earlier times again,
so errors left by an alignment are corrected by the next window's Gauss–Newton.

A window is the problem with the time coordinate (the last input) of every sampled point mapped
from [t0, t1] onto [t0, T_k]; fixed points later than T_k are left out.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .geometry import TimeDomain
from .ilsr import ILSRResult, iterative_lsr
from .problem import PDEProblem, Term
from .records import HistoryEntry


class TimeWindow(PDEProblem):
    """``problem`` restricted to t in [t0, t_end]: its terms with sampled times (last column)
    squeezed from [t0, t1] onto [t0, t_end], and its reference points with t <= t_end.
    ``problem.domain`` must be a :class:`~pinnlsr.geometry.TimeDomain`."""

    def __init__(self, problem: PDEProblem, t_end: float):
        domain = getattr(problem, "domain", None)
        if not isinstance(domain, TimeDomain):
            raise ValueError(f"{type(problem).__name__}: time windows need a problem whose .domain is a "
                             f"TimeDomain (time as the last input), got {domain!r}")
        if not domain.t0 < float(t_end) <= domain.t1:
            raise ValueError(f"window end {t_end} must lie in ({domain.t0}, {domain.t1}]")
        self.base, self.t0, self.t1, self.t_end = problem, domain.t0, domain.t1, float(t_end)
        self.name = f"{problem.name}[t<={self.t_end:g}]"
        self.input_names, self.output_names = problem.input_names, problem.output_names

    def terms(self) -> list[Term]:
        out = []
        for term in self.base.terms():
            if isinstance(term.points, torch.Tensor):
                keep = term.points[:, -1] <= self.t_end + 1e-12
                if not bool(keep.any()):
                    continue
                targets = None if term.targets is None else term.targets[keep]
                out.append(dataclasses.replace(term, points=term.points[keep], targets=targets))
            else:
                out.append(dataclasses.replace(term, points=self._squeezed(term.points)))
        return out

    def _squeezed(self, sampler: Callable) -> Callable:
        scale = (self.t_end - self.t0) / (self.t1 - self.t0)

        def sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
            pts = torch.as_tensor(sampler(n, generator=generator)).clone()
            pts[:, -1] = self.t0 + (pts[:, -1] - self.t0) * scale
            return pts

        return sample

    def reference(self):
        """The base problem's reference points with t <= t_end (a window's predictor is fitted
        there only; elsewhere it extrapolates), so a window's errors are its own."""
        ref = self.base.reference()
        if ref is None:
            return None
        x, u = (torch.as_tensor(a) for a in ref)
        keep = x[:, -1] <= self.t_end + 1e-12
        return x[keep], u[keep]

    def default_model(self, *args, **kwargs) -> nn.Module:
        return self.base.default_model(*args, **kwargs)


def check_windows(problem: PDEProblem, windows) -> list[float]:
    """The window end times as floats; a ValueError unless they increase, lie in (t0, t1] of the
    problem's TimeDomain and the last one is t1."""
    windows = [float(t) for t in windows]
    domain = getattr(problem, "domain", None)
    if not windows or any(b <= a for a, b in zip(windows, windows[1:])):
        raise ValueError(f"time windows must be a non-empty increasing list of end times, got {windows}")
    if isinstance(domain, TimeDomain) and abs(windows[-1] - domain.t1) > 1e-12:
        raise ValueError(f"the last time window must end at t1 = {domain.t1}, got {windows[-1]}")
    for t_end in windows:
        TimeWindow(problem, t_end)  # a TimeDomain, and t0 < t_end <= t1
    return windows


def time_marching_lsr(problem: PDEProblem, model: nn.Module, windows, *, counts: dict[str, int] | None = None,
                      checkpoint_dir: str | os.PathLike | None = None, seed: int = 0,
                      callback: Callable[[HistoryEntry], None] | None = None, last_window: dict | None = None,
                      **ilsr_kwargs) -> ILSRResult:
    """Iterative LSR of ``model`` on the windows [t0, T] for T in ``windows`` (increasing, the last
    one t1), each starting from the network the previous one aligned.

    ``counts`` gives the points per term of every window (default: the problem's own numbers);
    ``ilsr_kwargs`` go to :func:`~pinnlsr.ilsr.iterative_lsr` (outer_iterations per window, rank,
    align_iterations, ...); window k uses seed ``seed + k``. ``last_window`` overrides them for the
    last window only (e.g. ``{"rank": 2000, "outer_iterations": 2, "counts": {"pde": 12000}}``):
    the earlier windows only have to keep the network on the right trajectory, the last one sets
    the accuracy of the returned predictor, so that is where a larger rank and more points pay.
    With ``checkpoint_dir`` each window checkpoints to ``ilsr_window{k}.pt`` there, so an
    interrupted run resumes in the window it stopped in (finished windows are read back, not recomputed). Returns the last window's result
    (its predictor covers the whole interval) with the history of all windows, every record
    carrying its ``window`` end time; its ``diagnostics["windows"]`` has one summary per window."""
    windows = check_windows(problem, windows)
    overrides = dict(last_window or {})
    last_counts = overrides.pop("counts", None)
    unknown = set(overrides) - set(inspect.signature(iterative_lsr).parameters)
    if unknown:
        raise ValueError(f"last_window: {sorted(unknown)} are not arguments of iterative_lsr")
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    history, summaries, net = [], [], model
    for k, t_end in enumerate(windows):
        window = TimeWindow(problem, t_end)

        def tagged(rec, t_end=t_end):
            if callback:
                callback(rec.with_extras(window=t_end))

        path = folder / f"ilsr_window{k}.pt" if folder is not None else None
        last = k == len(windows) - 1
        window_counts = {**(counts or {}), **(last_counts or {})} if last and last_counts else counts
        options = {**ilsr_kwargs, **overrides} if last else ilsr_kwargs
        res = iterative_lsr(window, net, counts=window_counts, seed=seed + k, checkpoint=path, callback=tagged,
                            **options)
        offset = len(history)
        history.extend(rec.with_extras(window=t_end) for rec in res.history)
        summaries.append({"window": t_end, **{key: res.diagnostics.get(key) for key in
                                              ("best_iteration", "validation_residual", "rel_l2", "seconds")}})
        net = res.network
    res.history, res.best_iteration = history, offset + res.best_iteration  # index into the joined history
    res.diagnostics["windows"] = summaries
    res.diagnostics["seconds"] = sum(s["seconds"] or 0.0 for s in summaries)
    return res


def refine_from_points(problem: PDEProblem, model: nn.Module, points: dict[str, torch.Tensor], *,
                       time_windows=None, last_window: dict | None = None, final: dict | None = None,
                       out_dir: str | os.PathLike | None = None, **ilsr_kwargs) -> ILSRResult:
    """Iterative LSR of ``model`` starting from ``points`` ({term: (n, d)}), or, with
    ``time_windows``, time marching with as many points per term in every window (``last_window``:
    the last window's own settings, see :func:`time_marching_lsr`). ``final`` (the ``final_*``
    options of :func:`~pinnlsr.ilsr.iterative_lsr`) sets the final refinement, of the last window
    when marching. With ``out_dir`` it checkpoints there (``ilsr.pt``, or ``ilsr_window{k}.pt``
    per window) and resumes."""
    if time_windows and final:
        last_window = {**(last_window or {}), **final}
    elif final:
        ilsr_kwargs.update(final)
    if time_windows:
        counts = {k: int(v.shape[0]) for k, v in points.items()}
        return time_marching_lsr(problem, model, time_windows, counts=counts, checkpoint_dir=out_dir,
                                 last_window=last_window, **ilsr_kwargs)
    if last_window:
        raise ValueError("last_window sets the last time window's options: it needs time_windows")
    path = Path(out_dir) / "ilsr.pt" if out_dir is not None else None
    return iterative_lsr(problem, model, points=points, checkpoint=path, **ilsr_kwargs)
