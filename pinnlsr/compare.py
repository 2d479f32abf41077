"""Side-by-side comparison of Adam, Adam + L-BFGS, one-shot LSR and Iterative LSR on one problem,
with the baselines a user would pick instead at equal wall time.

The same network (seeded) and the same collocation points are trained by Adam, then by L-BFGS, then
refined by one-shot LSR and by Iterative LSR (both from the Adam + L-BFGS network). For equal cost,
Adam and L-BFGS are then continued for at least the wall time that L-BFGS + ILSR took
("adam_long", "lbfgs_long"); SOAP trains the initial network with Adam's schedule and points for at
least the wall time of the whole ILSR pipeline ("soap"), and SciPy's full-batch BFGS continues the
Adam + L-BFGS network for ILSR's time ("bfgs_long", networks of at most ``BFGS_MAX_PARAMS``
parameters). A baseline that cannot run (SOAP's package missing, a network too large for BFGS) is
listed under "skipped" with the reason. Used by ``pinnlsr compare NAME`` and
``scripts/benchmark_pinns.py``.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import time
from pathlib import Path
from typing import Callable

import torch

from .jet_plans import residual_norm
from .lsr import lsr
from .marching import refine_from_points
from .metrics import model_errors, predict, reference_on
from .models import ParamSpec
from .records import HistoryEntry
from .settings import RunSettings, final_options, last_window_options
from .train import BFGS_MAX_PARAMS, soap_optimizer, train_adam, train_bfgs, train_lbfgs

FULL = RunSettings(adam_steps=5000, lbfgs_steps=500, lr=3e-3, final_lr=1e-4, ilsr_outer=8, ilsr_gn_iters=10,
                   align_iterations=300)
QUICK = RunSettings(adam_steps=100, lbfgs_steps=5, lr=3e-3, final_lr=1e-4, ilsr_outer=1, ilsr_gn_iters=2,
                    align_iterations=5)
QUICK_POINT_FRACTION = 0.03  # of every term's default point count, with QUICK
PROBES = 20  # convergence-history points per training phase
TRAINERS = {"adam": train_adam, "lbfgs": train_lbfgs, "bfgs": train_bfgs}
#: Gradient-trained methods: the best of them (by rel. L2) is the baseline ILSR is compared with.
BASELINES = ("adam", "adam+lbfgs", "adam_long", "lbfgs_long", "soap", "bfgs_long")


def probe(problem, model, points, iteration: int, seconds: Callable[[], float]) -> dict:
    """The history entry (JSON form) of the current ``model`` at ``iteration``: its residual at
    ``points``, its errors against the reference (in its dtype, on its device) and ``seconds()``
    read after them."""
    like = next(iter(model.parameters()))
    residual = residual_norm(problem, model, points)
    errors = model_errors(problem, model, like.dtype, like.device)
    return HistoryEntry(iteration, seconds(), residual=residual, errors=errors).to_json()


def timed_training(kind, problem, model, points, steps, t_offset, it_offset, log_every, max_seconds=None, **kw):
    """One run of ``TRAINERS[kind]`` for ``steps`` steps (or until ``max_seconds``), with a history point
    every ``log_every`` steps and at the end; history seconds and iterations are offset by
    ``t_offset`` and ``it_offset``. Returns (history, seconds)."""
    hist, t0 = [], time.perf_counter()

    def record(step, _loss):
        hist.append(probe(problem, model, points, it_offset + step + 1, lambda: t_offset + time.perf_counter() - t0))

    h = TRAINERS[kind](problem, model, points, steps, progress=False, log_every=log_every, callback=record,
              max_seconds=max_seconds, **kw)
    seconds = time.perf_counter() - t0
    done = (h.step[-1] + 1) if h.step else 0
    hist.append(probe(problem, model, points, it_offset + done, lambda: t_offset + seconds))
    return hist, seconds


def compare_methods(problem, settings: RunSettings, seed: int, predictions: dict | None = None, *,
                    point_fraction: float | None = None, dtype: torch.dtype = torch.float64,
                    device: str | torch.device = "cpu") -> dict:
    """Adam, Adam + L-BFGS, one-shot LSR and Iterative LSR on one problem (see the module docstring).

    ``settings`` gives Adam (adam_steps, lr, final_lr: exponential schedule), lbfgs_steps, the LSR
    step (rank, subspace, oversampling, power_iterations, solver, rcond, tikhonov) and the ILSR
    stage (ilsr_outer, ilsr_gn_iters, gn_damping, align_iterations, dtau, align_warm_start,
    align_accept; with time_windows it marches over them, :func:`~pinnlsr.marching.time_marching_lsr`,
    ilsr_outer per window, and last_window_* set the last one). Points: ``settings.points`` or, with
    ``point_fraction``, that fraction of every term's default count. Network and points in
    ``dtype`` on ``device``. Returns {"problem", "n_params", "n_points", "config", "methods":
    {name: {rel_l2, residual, seconds, history: [...]}}, "skipped": {name: reason},
    "ratio_baseline_over_ilsr", "ratio_by_region"} (the best of :data:`BASELINES` over ILSR, on all
    reference points and on each of the problem's error regions). A dict passed
    as ``predictions`` receives each method's final outputs at the reference points ({method: (N, k)
    array}; "points" and "reference" too), for :func:`~pinnlsr.report.write_predictions`."""
    name, s = problem.name, settings
    if point_fraction:
        counts = {t.name: max(8, int(t.n_points * point_fraction)) for t in problem.terms() if t.n_points}
    else:
        counts = dict(s.points) if s.points else None
    gen = torch.Generator().manual_seed(seed)
    model = problem.default_model(gen, dtype, device)
    points = problem.sample_points(gen, dtype, device, counts)
    ref = reference_on(problem, dtype, device) if predictions is not None else None
    if ref is not None:
        predictions.update(points=ref[0].cpu().numpy(), reference=ref[1].cpu().numpy())

    def keep(method: str, predictor) -> None:
        if ref is not None:
            predictions[method] = predict(predictor, ref[0]).cpu().numpy()
    config = {**dataclasses.asdict(s), "point_fraction": point_fraction, "dtype": str(dtype).removeprefix("torch."),
              "device": str(device)}
    spec = ParamSpec.of(model)
    out = {"problem": name, "n_params": spec.numel, "config": config,
           "n_points": {k: int(v.shape[0]) for k, v in points.items()}, "methods": {}, "skipped": {}}
    init_state = spec.flatten(model).clone()
    n_adam, n_lbfgs = s.adam_steps, s.lbfgs_steps
    hist = [probe(problem, model, points, 0, lambda: 0.0)]
    adam_hist, adam_s = timed_training("adam", problem, model, points, n_adam, 0.0, 0,
                                       max(1, n_adam // PROBES), lr=s.lr, final_lr=s.final_lr)
    adam_state = spec.flatten(model).clone()
    out["methods"]["adam"] = {"history": hist + adam_hist, "seconds": adam_s, **adam_hist[-1]}
    keep("adam", model)
    lb_s = 0.0
    if n_lbfgs > 0:
        lb_hist, lb_s = timed_training("lbfgs", problem, model, points, n_lbfgs, adam_s, n_adam,
                                       max(1, n_lbfgs // PROBES))
        out["methods"]["adam+lbfgs"] = {"history": lb_hist, "seconds": adam_s + lb_s, **lb_hist[-1]}
        keep("adam+lbfgs", model)
    lbfgs_state = spec.flatten(model).clone()
    base = adam_s + lb_s

    subspace = dict(rank=s.rank, subspace=s.subspace, oversampling=s.oversampling, power_iterations=s.power_iterations,
                    rcond=s.rcond, seed=seed, dtype=dtype, device=device,
                    memory_budget=None if s.memory_budget_gb is None else int(s.memory_budget_gb * 2**30))
    r = lsr(problem, model, points=points, solver=s.solver, tikhonov=s.tikhonov, **subspace)
    d, after = r.diagnostics, r.diagnostics["after"]
    seconds = base + d["seconds"]["total"]
    out["methods"]["lsr"] = {"rel_l2": after.rel_l2, "max_abs_err": after.max_abs_err,
                             **model_errors(problem, r.model, dtype, device), "residual": after.residual,
                             "seconds": seconds, "rank": d["rank"],
                             "history": [HistoryEntry(n_adam + n_lbfgs + 1, seconds, residual=after.residual,
                                                      errors={"rel_l2": after.rel_l2}).to_json()]}
    keep("lsr", r.model)
    t = time.perf_counter()
    res = refine_from_points(problem, model, points, time_windows=s.time_windows, last_window=last_window_options(s),
                             final=final_options(s), outer_iterations=s.ilsr_outer, gn_iterations=s.ilsr_gn_iters,
                             damping=s.gn_damping, align_iterations=s.align_iterations, dtau=s.dtau,
                             warm_start=s.align_warm_start, accept=s.align_accept, **subspace)
    ilsr_s = time.perf_counter() - t
    ih, offset, window, last = [], 0.0, None, 0.0
    for h in res.history:
        if h.get("window") != window:  # each window's seconds start at 0: make them cumulative
            offset, window = offset + last, h.get("window")
        last = h.seconds
        extras = {"accepted": h.get("accepted"), "network_rel_l2": h.get("network_rel_l2"),
                  **({"window": window} if window is not None else {})}
        ih.append(HistoryEntry(n_adam + n_lbfgs + len(ih), base + offset + h.seconds, residual=h.residual,
                               errors={"rel_l2": h.rel_l2}, extras=extras).to_json())
    best = res.history[res.best_iteration]
    out["methods"]["ilsr"] = {"rel_l2": res.diagnostics.get("rel_l2"), "max_abs_err": res.diagnostics.get("max_abs_err"),
                              **model_errors(problem, res.model, dtype, device), "residual": best.residual,
                              "seconds": base + ilsr_s, "history": ih,
                              "best_iteration": res.best_iteration, "best_state": res.diagnostics.get("best_state")}
    keep("ilsr", res.model)
    # Equal-cost baselines: continue Adam (from the Adam state, at the schedule's final learning
    # rate) for the time L-BFGS + ILSR took, and L-BFGS (from the L-BFGS state) for ILSR's time.
    spec.assign(model, adam_state)
    rate = n_adam / max(adam_s, 1e-9)  # Adam steps per second, to space the history points
    extra = lb_s + ilsr_s
    h, secs = timed_training("adam", problem, model, points, 10**9, adam_s, n_adam,
                             max(1, int(rate * extra / PROBES)), max_seconds=extra,
                             lr=s.final_lr or s.lr, final_lr=None)
    out["methods"]["adam_long"] = {"history": h, "seconds": adam_s + secs, **h[-1]}
    keep("adam_long", model)
    spec.assign(model, lbfgs_state)
    # L-BFGS iterations per second; without an L-BFGS phase, guess one iteration ≈ its 20
    # function evaluations ≈ 20 Adam steps (only the spacing of the history points depends on it)
    lb_rate = n_lbfgs / lb_s if n_lbfgs > 0 and lb_s > 0 else rate / 20
    h, secs = timed_training("lbfgs", problem, model, points, 10**9, base, n_adam + n_lbfgs,
                             max(1, int(lb_rate * ilsr_s / PROBES)), max_seconds=ilsr_s)
    out["methods"]["lbfgs_long"] = {"history": h, "seconds": base + secs, **h[-1]}
    keep("lbfgs_long", model)
    # SOAP from the initial network with Adam's schedule (over Adam's steps, then at the final rate)
    # for at least the whole ILSR pipeline's time.
    total = base + ilsr_s
    try:
        soap = soap_optimizer()
    except ModuleNotFoundError as e:
        out["skipped"]["soap"] = str(e)
    else:
        spec.assign(model, init_state)
        h, secs = timed_training("adam", problem, model, points, 10**9, 0.0, 0, max(1, int(rate * total / PROBES)),
                                 max_seconds=total, lr=s.lr, final_lr=s.final_lr, optimizer=soap,
                                 decay_steps=n_adam, min_steps=n_adam)
        out["methods"]["soap"] = {"history": hist + h, "seconds": secs, **h[-1],
                                  "package": f"pytorch-optimizer {importlib.metadata.version('pytorch-optimizer')}"}
        keep("soap", model)
    # Full-batch BFGS from the L-BFGS state for ILSR's time (an iteration ≈ 2 loss evaluations ≈ 2
    # Adam steps, for the spacing of the history points), on networks small enough for it.
    if spec.numel > BFGS_MAX_PARAMS:
        out["skipped"]["bfgs_long"] = (f"{spec.numel} parameters, more than BFGS_MAX_PARAMS = {BFGS_MAX_PARAMS} "
                                       "(dense m×m inverse Hessian, O(m³) per iteration)")
    else:
        spec.assign(model, lbfgs_state)
        h, secs = timed_training("bfgs", problem, model, points, 10**9, base, n_adam + n_lbfgs,
                                 max(1, int(rate / 2 * ilsr_s / PROBES)), max_seconds=ilsr_s,
                                 max_params=BFGS_MAX_PARAMS)
        out["methods"]["bfgs_long"] = {"history": h, "seconds": base + secs, **h[-1]}
        keep("bfgs_long", model)
    ref_points = reference_on(problem, dtype, device)
    regions = list(problem.error_regions(ref_points[0])) if ref_points is not None else []
    out["ratio_baseline_over_ilsr"], out["ratio_by_region"] = baseline_ratios(out["methods"], regions)
    return out


def baseline_ratios(methods: dict[str, dict], regions: list[str]) -> tuple[float, dict[str, float]]:
    """The lowest rel. L2 of the :data:`BASELINES` present in ``methods`` over ILSR's, on all
    reference points, and the same for each error region (its ``rel_l2_<region>``)."""
    def ratio(key: str) -> float:
        return min(methods[k][key] for k in BASELINES if k in methods) / methods["ilsr"][key]

    return ratio("rel_l2"), {region: ratio(f"rel_l2_{region}") for region in regions}


def plot(result: dict, path: Path) -> Path:
    """Error and residual against iteration and against seconds, every method on each panel."""
    from .plotting import plot_histories

    histories = {}
    for name, m in result["methods"].items():
        h = m["history"]
        histories[name] = {key: [p.get(key) for p in h] for key in ("iteration", "seconds", "rel_l2", "residual")}
    return plot_histories(histories, path, title=result["problem"])


def table(results: list[dict]) -> str:
    """Markdown table of every method per problem (a skipped one with its reason), and the
    best-baseline/ILSR ratio."""
    lines = ["| problem | params | method | rel. L2 | residual | seconds |", "|---|---|---|---|---|---|"]
    for r in results:
        for name, m in r["methods"].items():
            lines.append(f"| {r['problem']} | {r['n_params']} | {name} | {m['rel_l2']:.3e} | {m['residual']:.3e} | "
                         f"{m['seconds']:.1f} |")
        for name, reason in r.get("skipped", {}).items():
            lines.append(f"| {r['problem']} | {r['n_params']} | {name} | skipped: {reason} | | |")
    lines += ["", "| problem | best baseline rel. L2 / ILSR rel. L2 | ILSR >= 10x better |", "|---|---|---|"]
    for r in results:
        ratios = {r["problem"]: r["ratio_baseline_over_ilsr"],
                  **{f"{r['problem']}, {region}": v for region, v in r.get("ratio_by_region", {}).items()}}
        for label, ratio in ratios.items():
            lines.append(f"| {label} | {ratio:.2f} | {'yes' if ratio >= 10 else 'no'} |")
    return "\n".join(lines) + "\n"
