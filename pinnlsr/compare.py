"""Side-by-side comparison of Adam, Adam + L-BFGS, one-shot LSR and Iterative LSR on one problem.

The same network (seeded) and the same collocation points are trained by Adam, then by L-BFGS, then
refined by one-shot LSR and by Iterative LSR (both from the Adam + L-BFGS network). For equal cost,
Adam and L-BFGS are then continued for at least the wall time that L-BFGS + ILSR took
("adam_long", "lbfgs_long"). Used by ``pinnlsr compare NAME`` and ``scripts/benchmark_pinns.py``.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .ilsr import iterative_lsr
from .lsr import lsr
from .metrics import model_errors
from .models import ParamSpec
from .residual import residual_rows
from .train import train_adam, train_lbfgs

FULL = dict(adam_steps=5000, lbfgs_steps=500, outer=8, gn_iters=10, align_iterations=300, rank=None)
QUICK = dict(adam_steps=100, lbfgs_steps=5, outer=1, gn_iters=2, align_iterations=5, rank=None, points=0.03)


def residual_norm(problem, model, points) -> float:
    rows = residual_rows(problem, model, points)
    with torch.no_grad():
        return float(rows.values(ParamSpec.of(model).flatten(model), check=False).norm())


def probe(problem, model, points, t0, it) -> dict:
    return {"iteration": it, "seconds": time.perf_counter() - t0, "residual": residual_norm(problem, model, points),
            **model_errors(problem, model, torch.float64, "cpu")}


def timed_training(kind, problem, model, points, seconds_min, steps_min, chunk, t_offset, it_offset, **kw):
    """Run Adam/L-BFGS in chunks until both ``steps_min`` steps and ``seconds_min`` seconds are
    done; a history point after each chunk."""
    hist, t0, steps = [], time.perf_counter(), 0
    while steps < steps_min or time.perf_counter() - t0 < seconds_min:
        if kind == "adam":
            train_adam(problem, model, points, chunk, progress=False, **kw)
        else:
            train_lbfgs(problem, model, points, chunk, progress=False)
        steps += chunk
        rec = probe(problem, model, points, t0, it_offset + steps)
        rec["seconds"] += t_offset
        hist.append(rec)
    return hist, time.perf_counter() - t0


def compare_methods(problem, cfg: dict, seed: int) -> dict:
    """Adam, Adam + L-BFGS, one-shot LSR and Iterative LSR on one problem (see the module docstring).

    ``cfg`` has adam_steps, lbfgs_steps, outer, gn_iters, align_iterations, rank and optionally
    points (a fraction of every term's default point count). Returns {"problem", "n_params",
    "n_points", "methods": {name: {rel_l2, residual, seconds, history: [...]}},
    "ratio_baseline_over_ilsr"}."""
    name = problem.name
    if cfg.get("points"):
        counts = {t.name: max(8, int(t.n_points * cfg["points"])) for t in problem.terms() if t.n_points}
    else:
        counts = None
    gen = torch.Generator().manual_seed(seed)
    model = problem.default_model(gen)
    points = problem.sample_points(gen, counts=counts)
    out = {"problem": name, "n_params": ParamSpec.of(model).numel,
           "n_points": {k: int(v.shape[0]) for k, v in points.items()}, "methods": {}}
    t0 = time.perf_counter()
    hist = [probe(problem, model, points, t0, 0)]
    adam_hist, adam_s = timed_training("adam", problem, model, points, 0, cfg["adam_steps"],
                                       max(1, cfg["adam_steps"] // 20), 0.0, 0, lr=3e-3, final_lr=3e-3)
    adam_state = ParamSpec.of(model).flatten(model).clone()
    out["methods"]["adam"] = {"history": hist + adam_hist, "seconds": adam_s, **adam_hist[-1]}
    lb_hist, lb_s = timed_training("lbfgs", problem, model, points, 0, cfg["lbfgs_steps"],
                                   max(1, cfg["lbfgs_steps"] // 10), adam_s, cfg["adam_steps"])
    lbfgs_state = ParamSpec.of(model).flatten(model).clone()
    out["methods"]["adam+lbfgs"] = {"history": lb_hist, "seconds": adam_s + lb_s, **lb_hist[-1]}

    r = lsr(problem, model, points=points, rank=cfg["rank"], seed=seed)
    d = r.diagnostics
    out["methods"]["lsr"] = {"rel_l2": d.get("rel_l2_after"), "max_abs_err": d.get("max_abs_err_after"),
                             "residual": d["residual_after"], "seconds": adam_s + lb_s + d["seconds"]["total"],
                             "rank": d["rank"],
                             "history": [{"iteration": cfg["adam_steps"] + cfg["lbfgs_steps"] + 1,
                                          "seconds": adam_s + lb_s + d["seconds"]["total"],
                                          "residual": d["residual_after"], "rel_l2": d.get("rel_l2_after")}]}
    t = time.perf_counter()
    res = iterative_lsr(problem, model, outer_iterations=cfg["outer"], points=points, rank=cfg["rank"],
                        gn_iterations=cfg["gn_iters"], align_iterations=cfg["align_iterations"], seed=seed)
    ilsr_s = time.perf_counter() - t
    base = adam_s + lb_s
    ih = [{"iteration": cfg["adam_steps"] + cfg["lbfgs_steps"] + h["iteration"], "seconds": base + h["seconds"],
           "residual": h["residual"], "rel_l2": h.get("rel_l2"), "accepted": h.get("accepted")} for h in res.history]
    best = res.history[res.best_iteration]
    out["methods"]["ilsr"] = {"rel_l2": res.diagnostics.get("rel_l2"), "max_abs_err": res.diagnostics.get("max_abs_err"),
                              "residual": best["residual"], "seconds": base + ilsr_s, "history": ih,
                              "best_iteration": res.best_iteration}
    # Equal-cost baselines: continue Adam (from the Adam state) and L-BFGS (from the L-BFGS state)
    # for at least the time that L-BFGS + ILSR took beyond Adam.
    spec = ParamSpec.of(model)
    spec.assign(model, adam_state)
    extra = lb_s + ilsr_s
    h, s = timed_training("adam", problem, model, points, extra, 0, max(1, cfg["adam_steps"] // 20), adam_s,
                          cfg["adam_steps"], lr=3e-4, final_lr=3e-4)
    out["methods"]["adam_long"] = {"history": h, "seconds": adam_s + s, **h[-1]}
    spec.assign(model, lbfgs_state)
    h, s = timed_training("lbfgs", problem, model, points, ilsr_s, 0, max(1, cfg["lbfgs_steps"] // 10),
                          base, cfg["adam_steps"] + cfg["lbfgs_steps"])
    out["methods"]["lbfgs_long"] = {"history": h, "seconds": base + s, **h[-1]}
    baseline = min(out["methods"][k]["rel_l2"] for k in ("adam", "adam+lbfgs", "adam_long", "lbfgs_long"))
    out["ratio_baseline_over_ilsr"] = baseline / out["methods"]["ilsr"]["rel_l2"]
    return out


def plot(result: dict, path: Path) -> Path:
    """Error and residual against iteration and against seconds, every method on each panel."""
    from .plotting import plot_histories

    histories = {}
    for name, m in result["methods"].items():
        h = m["history"]
        histories[name] = {key: [p.get(key) for p in h] for key in ("iteration", "seconds", "rel_l2", "residual")}
    return plot_histories(histories, path, title=result["problem"])


def table(results: list[dict]) -> str:
    """Markdown table of every method per problem, and the baseline/ILSR ratio."""
    lines = ["| problem | params | method | rel. L2 | residual | seconds |", "|---|---|---|---|---|---|"]
    for r in results:
        for name, m in r["methods"].items():
            lines.append(f"| {r['problem']} | {r['n_params']} | {name} | {m['rel_l2']:.3e} | {m['residual']:.3e} | "
                         f"{m['seconds']:.1f} |")
    lines += ["", "| problem | best baseline rel. L2 / ILSR rel. L2 | ILSR >= 10x better |", "|---|---|---|"]
    for r in results:
        ratio = r["ratio_baseline_over_ilsr"]
        lines.append(f"| {r['problem']} | {ratio:.2f} | {'yes' if ratio >= 10 else 'no'} |")
    return "\n".join(lines) + "\n"
