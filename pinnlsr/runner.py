"""The pipeline of a problem run: pretrain (or load), refine, report.

``python -m problems.NAME [options]`` and ``pinnlsr run NAME [options]`` both end here. Its stages
(:data:`STAGES`: pretrain, lbfgs, lsr, gauss_newton, ilsr) run through
:func:`pinnlsr.pipeline.run_pipeline`, as the pipelines problems declare for themselves. A run
prints a table (stage, relative L2, max error, residual, seconds) and, with ``--out DIR``, writes
``DIR/metrics.json`` following the run output contract (docs/run_output.md), ``DIR/config.json``, the
pretrained network ``DIR/model.pt`` (reusable with ``--checkpoint``), history.csv, predictions.npz
and figures.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from . import checkpoint as ckpt
from . import runfolder
from .gauss_newton import tangent_gauss_newton
from .io import atomic_write_json, atomic_write_text
from .lsr import lsr, resolve_subspace
from .marching import check_windows, refine_from_points
from .metrics import model_errors, predict, reference_on
from .models import ParamSpec
from .pipeline import (INPUT_ERRORS, Pipeline, Run, Stage, add_run_options, check_options,  # noqa: F401
                       evaluate, print_table, run_config, run_guarded, run_pipeline)
from .problem import PDEProblem
from .records import Evaluation, HistoryEntry, StageRecord
from .report import history_rows, rebuild_report, summary_markdown, write_history_csv, write_predictions
from .residual import check_model
from .settings import (DTYPES, Parser, RunSettings, device_and_dtype,  # noqa: F401
                       final_options, last_window_options, parse_counts, resolve_device, settings_parser)
from .train import train_adam, train_lbfgs


def build_parser(problem: PDEProblem, defaults: RunSettings | dict | None = None,
                 prog: str | None = None) -> argparse.ArgumentParser:
    """Command-line options of a problem run: the run's own options and, from the shared parent
    parser, the settings (:class:`~pinnlsr.settings.RunSettings`) with ``defaults`` (the problem's
    DEFAULTS: settings or a dict of their fields) as defaults."""
    terms = ", ".join(f"{t.name}={t.n_points}" for t in problem.terms() if t.n_points)
    settings = settings_parser(RunSettings.of(defaults), notes={"points": f"terms: {terms}"})
    p = Parser(
        prog=prog or f"python -m problems.{problem.name}",
        description=f"{problem.name}: {problem.description} Pretrains a network (or loads one), "
                    "refines it by one-shot LSR and reports the error against the reference.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, parents=[settings],
    )
    add_run_options(p, seed_help="seed of initialisation, points and sketches", resume=True,
                    out_help="output folder for metrics.json, figures, checkpoints")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="refine the network in this state_dict file instead of pretraining one (no L-BFGS "
                        "steps unless --lbfgs-steps is given)")
    p.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                   help="the network: 'package.module:function' or 'file.py:function', called without arguments, "
                        "returning the nn.Module (default: the problem's MLP)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def build_model(problem: PDEProblem, args, generator: torch.Generator, dtype: torch.dtype,
                device: torch.device) -> torch.nn.Module:
    """The network of a run: ``--model``'s factory (called without arguments) or the problem's
    default model, in ``dtype`` on ``device``."""
    if not args.model:
        return problem.default_model(generator, dtype, device)
    factory = ckpt.resolve_factory(args.model)
    try:
        model = factory()
    except TypeError as exc:
        raise ValueError(f"--model {args.model}: calling the factory without arguments failed ({exc}); the "
                         "factory takes no arguments and returns the nn.Module") from None
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--model {args.model} returned a {type(model).__name__}, not a torch.nn.Module")
    return model.to(dtype=dtype, device=device)


def check_resume(problem: PDEProblem, args) -> None:
    """With --resume: the run in --out must have been made with the same settings (config.json)
    and its checkpoints must be readable, checked before any computing."""
    from .ilsr import read_checkpoint

    files = runfolder.existing_run(args.out)[1]
    for path in files:
        read_checkpoint(path)
    config = args.out / "config.json"
    if not config.is_file():
        return
    import json

    try:
        old = json.loads(config.read_text())
    except ValueError:
        raise ValueError(f"--resume: {str(config)!r} is not valid JSON; start over with --overwrite") from None
    new = run_config(problem, args)
    # a setting added since that run had its default value then
    old = {**{k: v for k, v in vars(build_parser(problem).parse_args([])).items() if k not in old}, **old}
    diff = [f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
            if k not in RESUMABLE and old.get(k) != new.get(k)]
    if diff:
        raise ValueError(f"--resume: the run in --out {str(args.out)!r} had other settings ({'; '.join(diff[:6])}); "
                         "resume with the same options, or start over with --overwrite")


#: config.json entries a resumed run may change (they do not change the history so far)
RESUMABLE = ("out", "quiet", "no_plot", "resume", "overwrite", "ilsr_outer", "memory_budget_gb", "threads")


def checked_inputs(problem: PDEProblem, args, generator: torch.Generator, dtype: torch.dtype,
                   device: torch.device):
    """Check the inputs of a run before any computing (model, points, reference data, time
    windows, subspace, checkpoints; options, device and output folder are checked by the caller:
    :func:`~pinnlsr.pipeline.run_pipeline`); returns the model (with ``--checkpoint`` loaded), the
    points and (checkpoint notes, load seconds)."""
    model = build_model(problem, args, generator, dtype, device)
    points = problem.sample_points(generator, dtype, device, parse_counts(args.points))
    check_model(problem, model, next(iter(points.values()))[:2])
    reference_on(problem, dtype, device)  # a missing or malformed reference file fails here, not after training
    if args.time_windows:
        check_windows(problem, args.time_windows)
    last_window_options(args)
    final = final_options(args)
    if final is not None and args.ilsr_outer <= 0:
        if args.gn_iters <= 0:
            raise ValueError("--final-gn-iters continues an ilsr stage (--ilsr-outer N) or a Gauss–Newton stage "
                             "(--gn-iters N): give one of them")
        if final["final_rank"] is not None:
            raise ValueError("--final-rank sets the rank of the ILSR's final refinement; the Gauss–Newton stage "
                             "continues in its own subspace (--rank): drop --final-rank")
    try:
        resolve_subspace(ParamSpec.of(model).numel, args.rank, args.subspace)
    except ValueError as e:
        raise ValueError(f"{e} (on the command line: --rank R or --subspace full)") from None
    load = ([], 0.0)
    if args.checkpoint is not None:
        t = time.perf_counter()
        load = (ckpt.load_into(model, args.checkpoint), time.perf_counter() - t)
    if args.resume:
        check_resume(problem, args)
    return model, points, load


def pretrain_stage(run: Run) -> StageRecord:
    """The network the refinement starts from: loaded (``--checkpoint``), trained by Adam
    (``--adam-steps``) or untrained ("init")."""
    args, s = run.args, run.state
    if args.checkpoint is not None:
        notes, t_load = s.load
        for note in notes:
            print(f"checkpoint: {note}", file=sys.stderr)
        return StageRecord("checkpoint", t_load, evaluate(s.problem, s.model, s.points, run.dtype, run.device),
                           {"path": str(args.checkpoint)})
    if args.adam_steps > 0:
        t = time.perf_counter()
        hist = train_adam(s.problem, s.model, s.points, args.adam_steps, args.lr, args.final_lr, s.progress)
        s.histories.extend(history_rows("adam", hist.entries))
        return StageRecord("adam", time.perf_counter() - t, evaluate(s.problem, s.model, s.points, run.dtype, run.device),
                           {"steps": args.adam_steps, "diverged": hist.diverged, "backends": hist.backends})
    return StageRecord("init", 0.0, evaluate(s.problem, s.model, s.points, run.dtype, run.device))


def lbfgs_stage(run: Run) -> StageRecord | None:
    """L-BFGS after the pretraining (``--lbfgs-steps``)."""
    args, s = run.args, run.state
    if args.lbfgs_steps <= 0:
        return None
    t = time.perf_counter()
    hist = train_lbfgs(s.problem, s.model, s.points, args.lbfgs_steps, progress=s.progress)
    s.histories.extend(history_rows("lbfgs", hist.entries))
    return StageRecord("lbfgs", time.perf_counter() - t, evaluate(s.problem, s.model, s.points, run.dtype, run.device),
                       {"steps": args.lbfgs_steps, "diverged": hist.diverged, "backends": hist.backends})


def lsr_stage(run: Run) -> StageRecord:
    """One-shot LSR of the pretrained network."""
    args, model = run.args, run.state.model
    result = lsr(run.state.problem, model, points=run.state.points, rank=args.rank, subspace=args.subspace,
                 oversampling=args.oversampling, power_iterations=args.power_iterations,
                 solver=args.solver, rcond=args.rcond, tikhonov=args.tikhonov, seed=args.seed,
                 dtype=run.dtype, device=run.device, memory_budget=run.state.memory_budget)
    run.state.lsr = result
    d = result.diagnostics
    if d["rank_used"] == ParamSpec.of(model).numel:
        print(f"warning: LSR used all {d['rank_used']} parameter directions (rank_used == n_params): the network "
              "is probably too small for the problem; a larger one (--model) can reach a lower error", file=sys.stderr)
    after = d["after"]
    return StageRecord("lsr", d["seconds"]["total"], Evaluation(after.errors, after.residual), {
        "rank": d["rank"], "rank_used": d["rank_used"], "subspace": d["subspace"], "cond": d["cond"],
        "linearized_residual": d["linearized_residual"], "seconds_by_phase": d["seconds"],
        "peak_memory_gb": d["peak_memory_gb"], "backends": d["jacobian_backends"]})


#: the per-iteration quantities a Gauss–Newton or ILSR stage keeps in metrics.json
HISTORY_KEYS = ("iteration", "residual", "validation_residual", "linearized_residual", "rel_l2", "seconds")
#: and per ILSR outer iteration (``rank``, ``gn_iterations``, ``chord_steps``: its Gauss–Newton run; ``points``: the
#: final refinement's point counts; ``final``: the final refinement's record, see --final-gn-iters)
ILSR_HISTORY_KEYS = ("accepted", "accepted_by", "network_rel_l2", "rank", "gn_iterations", "chord_steps", "points",
                     "final")
#: and per Gauss–Newton step: the damping μ kept (also relative to σ_max(A)²), the gain ratio (actual
#: over predicted decrease), the step's norm in z, the trial steps evaluated (pinnlsr.solvers.DampingSearch)
#: and the chord steps taken from the same factorization (--gn-chord-steps)
GN_HISTORY_KEYS = HISTORY_KEYS + ("damping", "relative_damping", "gain_ratio", "step_norm", "tries", "chord_steps")


def gauss_newton_stage(run: Run) -> StageRecord | None:
    """Tangent Gauss–Newton from the pretrained network (``--gn-iters``)."""
    args = run.args
    if args.gn_iters <= 0:
        return None
    # The one-shot LSR linearized the same network on the same points and basis: its factorization
    # is Gauss–Newton's first one (the svd solver without a Tikhonov term keeps it).
    one_shot = getattr(run.state, "lsr", None)
    reuse = {} if one_shot is None or one_shot.solution.factorization is None else \
        {"basis": one_shot.basis, "first_step": one_shot.solution.factorization}
    gn = tangent_gauss_newton(run.state.problem, run.state.model, points=run.state.points, rank=args.rank,
                              subspace=args.subspace, oversampling=args.oversampling,
                              power_iterations=args.power_iterations, max_iters=args.gn_iters, damping=args.gn_damping,
                              chord_steps=args.gn_chord_steps, rcond=args.rcond, seed=args.seed, dtype=run.dtype,
                              device=run.device,
                              memory_budget=run.state.memory_budget, **reuse)
    history, seconds, final = [h.to_json(GN_HISTORY_KEYS) for h in gn.history], gn.diagnostics["seconds"], None
    continued = final_options(args) if args.ilsr_outer <= 0 else None  # else the ILSR's final refinement
    if continued is not None:
        gn, final = continue_on_more_points(run, gn, continued)
        history += [{**h.to_json(GN_HISTORY_KEYS), "iteration": len(history) - 1 + h.iteration,
                     "seconds": seconds + h.seconds} for h in gn.history[1:]]
        seconds += gn.diagnostics["seconds"]
    best = gn.history[gn.best_iteration]
    run.state.refined["gauss_newton"] = gn.model
    evaluation = Evaluation(gn.diagnostics["after"].errors, best.residual)
    return StageRecord("gauss_newton", seconds, evaluation, {
        "rank": gn.basis.rank, "validation_residual": best["validation_residual"], "stop_reason": gn.stop_reason,
        "backends": {**(one_shot.diagnostics["jacobian_backends"] if reuse else {}),
                     **gn.diagnostics["jacobian_backends"]},
        "first_step": "lsr" if reuse else "factorized", "final": final, "history": history})


def continue_on_more_points(run: Run, gn, options: dict):
    """The Gauss–Newton stage continued from its best z, in its subspace, on new points
    (``--final-points``, ``--final-gn-iters`` iterations): the first iterations, far from the
    solution, run on the pretraining points; the last ones, where the points set the floor, on
    more. Returns the continued result and its record for metrics.json."""
    args, problem = run.args, run.state.problem
    counts = {**{k: int(v.shape[0]) for k, v in run.state.points.items()}, **(options["final_counts"] or {})}
    points = problem.sample_points(run.generator, run.dtype, run.device, counts)
    more = tangent_gauss_newton(problem, run.state.model, points=points, basis=gn.basis, z0=gn.z,
                                max_iters=options["final_gn_iterations"], damping=args.gn_damping, rcond=args.rcond,
                                chord_steps=args.gn_chord_steps,
                                seed=args.seed, dtype=run.dtype, device=run.device,
                                memory_budget=run.state.memory_budget)
    return more, {"points": counts, "iterations": len(more.history) - 1, "best_iteration": more.best_iteration,
                  "stop_reason": more.stop_reason, "validation_residual": more.history[more.best_iteration][
                      "validation_residual"]}


def ilsr_stage(run: Run) -> StageRecord | None:
    """Iterative LSR from the pretrained network (``--ilsr-outer``; over ``--time-windows``)."""
    args, problem = run.args, run.state.problem
    if args.ilsr_outer <= 0:
        return None
    options = dict(outer_iterations=args.ilsr_outer, rank=args.rank, subspace=args.subspace,
                   oversampling=args.oversampling, power_iterations=args.power_iterations, rcond=args.rcond,
                   gn_iterations=args.ilsr_gn_iters, damping=args.gn_damping, chord_steps=args.gn_chord_steps,
                   align_iterations=args.align_iterations, dtau=args.dtau,
                   warm_start=args.align_warm_start, accept=args.align_accept, seed=args.seed, dtype=run.dtype, device=run.device,
                   memory_budget=run.state.memory_budget, resume=bool(getattr(args, "resume", False)))
    windows = getattr(args, "time_windows", None)
    res = refine_from_points(problem, run.state.model, run.state.points, time_windows=windows,
                             last_window=last_window_options(args), final=final_options(args), out_dir=args.out,
                             **options)
    best = res.history[res.best_iteration]
    run.state.refined["ilsr"] = res.model
    errors = model_errors(problem, res.model, run.dtype, run.device)  # every metric, as the lsr stage has
    keys = HISTORY_KEYS + ILSR_HISTORY_KEYS + (("window",) if windows else ())
    extras = {"rank": best.get("rank"), "validation_residual": res.diagnostics["validation_residual"],
              "best_iteration": res.best_iteration, "best_state": res.diagnostics["best_state"],
              "backends": res.diagnostics["backends"].get("gauss_newton", {}),
              "alignment_backends": res.diagnostics["backends"].get("alignment", {}),
              "history": [h.to_json(keys) for h in res.history]}
    if windows:
        extras["windows"] = res.diagnostics["windows"]
    return StageRecord("ilsr", res.diagnostics["seconds"], Evaluation(errors, best.residual), extras)


def prepare(run: Run) -> None:
    """Check the inputs (:func:`checked_inputs`) and set up what the stages share."""
    problem, args = run.state.problem, run.args
    model, points, load = checked_inputs(problem, args, run.generator, run.dtype, run.device)
    run.state.model, run.state.points, run.state.load = model, points, load
    run.state.progress = False if args.quiet else None
    run.state.memory_budget = None if args.memory_budget_gb is None else int(args.memory_budget_gb * 2**30)
    run.state.histories = []  # rows of history.csv
    run.state.refined = {}  # stage name -> refined predictor, for predictions.npz and the figure
    run.metrics.update(n_params=ParamSpec.of(model).numel, n_points={k: int(v.shape[0]) for k, v in points.items()},
                       threads=torch.get_num_threads())


def write_run_files(run: Run, metrics: dict) -> None:
    """config.json, model.pt, history.csv and predictions.npz (see :func:`write_outputs`)."""
    if run.out is None:
        return
    d = run.state.lsr.diagnostics
    run.state.histories.extend(history_rows("lsr", [HistoryEntry(0, d["seconds"]["total"], residual=d["after"].residual,
                                                                 errors=d["after"].errors)]))
    write_outputs(run.state.problem, run.args, run.state.model, run.state.lsr, metrics, run.state.histories,
                  extra_predictors=run.state.refined)


def write_report(run: Run, metrics: dict) -> None:
    """The figures and summary.md, rebuilt from the run folder (summary.md alone with --no-plot)."""
    if not run.args.no_plot:
        from .plotting import draw_safely

        draw_safely(lambda: rebuild_report(run.out))
    else:
        atomic_write_text(run.out / "summary.md", summary_markdown(metrics, run_config(run.state.problem, run.args), []))


#: the stages of a problem run, in order (each leaves no stage in metrics.json when not asked for)
STAGES = (Stage("pretrain", pretrain_stage), Stage("lbfgs", lbfgs_stage), Stage("lsr", lsr_stage),
          Stage("gauss_newton", gauss_newton_stage), Stage("ilsr", ilsr_stage))


def pipeline(problem: PDEProblem) -> Pipeline:
    """The pipeline of a problem run: pretrain (or load), L-BFGS, one-shot LSR, Gauss–Newton, ILSR."""

    def setup(run: Run) -> None:
        run.state.problem = problem
        prepare(run)

    return Pipeline(problem, STAGES, prepare=setup, finish=write_run_files, report=write_report)


def run(problem: PDEProblem, args: argparse.Namespace) -> dict:
    """Run the pipeline described by ``args``; returns the metrics dict (also written with --out)."""
    return run_pipeline(pipeline(problem), args)


def write_outputs(problem: PDEProblem, args, model, result, metrics: dict, histories: list[dict] | None = None,
                  predictors: dict | None = None, extra_predictors: dict | None = None) -> None:
    """The run folder (see :mod:`pinnlsr.report`): config.json, model.pt, history.csv and
    predictions.npz (metrics.json, figures and summary.md follow: :func:`run_pipeline`).

    ``predictors`` maps stage names to models evaluated on the reference points (default: the
    pretrained network and the LSR predictor); ``extra_predictors`` are added after them (the
    Gauss–Newton and ILSR predictors; the figure shows the last one)."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", run_config(problem, args))
    ckpt.save_state_dict(model, out / "model.pt")
    write_history_csv(out / "history.csv", histories or [])
    ref = reference_on(problem, result.model.theta0.dtype, result.model.theta0.device)
    if ref is not None:
        x, u = ref
        names = [s["name"] for s in metrics["stages"]]
        pretrained = names[names.index("lsr") - 1]  # the stage that produced ``model`` (adam, lbfgs, checkpoint)
        predictors = {**(predictors or {pretrained: model, "lsr": result.model}), **(extra_predictors or {})}
        preds = {name: predict(m.to(x), x).cpu().numpy() for name, m in predictors.items()}
        write_predictions(out / "predictions.npz", x.cpu().numpy(), u.cpu().numpy(), preds)


def parse_run_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """The options of a problem run. With ``--checkpoint`` the loaded network is refined as it is:
    the problem's default L-BFGS steps (``DEFAULTS``) run only when ``--lbfgs-steps`` is given."""
    not_given = object()
    args = parser.parse_args(argv, namespace=argparse.Namespace(lbfgs_steps=not_given))
    if args.lbfgs_steps is not_given:
        args.lbfgs_steps = 0 if args.checkpoint is not None else parser.get_default("lbfgs_steps")
    return args


def main(problem_factory: Callable[[], PDEProblem], argv: list[str] | None = None,
         defaults: RunSettings | dict | None = None, prog: str | None = None) -> int:
    """Entry point of ``python -m problems.NAME``: parse, run, exit code 0 on success."""
    problem = problem_factory()
    code, parser = run_guarded(build_parser, problem, defaults, prog)  # DEFAULTS with unknown settings: exit 2
    if code:
        return code
    code, metrics = run_guarded(run, problem, parse_run_args(parser, argv))
    if code:
        return code
    last = metrics["stages"][-1]
    if last.get("residual") is not None and not math.isfinite(last["residual"]):
        print("error: the refined residual is not finite", file=sys.stderr)
        return 3
    return 0

