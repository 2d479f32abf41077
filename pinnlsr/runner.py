"""The run pipeline shared by every runnable problem: pretrain (or load), refine, report.

``python -m problems.NAME [options]`` and ``pinnlsr run NAME [options]`` both end here. A run
prints a table (stage, relative L2, max error, residual, seconds) and, with ``--out DIR``, writes
``DIR/metrics.json`` following the run output contract (docs/run_output.md), ``DIR/config.json``, the
pretrained network ``DIR/model.pt`` (reusable with ``--checkpoint``) and a comparison figure.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import checkpoint as ckpt
from . import runfolder
from .allocator import tune_allocator
from .gauss_newton import tangent_gauss_newton
from .io import atomic_write_json, atomic_write_text
from .jet_plans import residual_norm
from .lsr import lsr, resolve_subspace
from .marching import check_windows, refine_from_points
from .metrics import model_errors, predict, reference_on
from .models import ParamSpec
from .problem import PDEProblem
from .report import history_rows, rebuild_report, summary_markdown, write_history_csv, write_predictions
from .residual import check_model
from .settings import (DTYPES, Parser, RunSettings, add_device_options, device_and_dtype,  # noqa: F401
                       last_window_options, parse_counts, resolve_device, settings_parser)
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
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, points and sketches")
    add_device_options(p)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, recorded in metrics.json); the last "
                        "digits of a result can depend on it")
    runfolder.add_options(p, resume=True, help_out="output folder for metrics.json, figures, checkpoints")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="refine the network in this state_dict file instead of pretraining one")
    p.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                   help="the network: 'package.module:function' or 'file.py:function', called without arguments, "
                        "returning the nn.Module (default: the problem's MLP)")
    p.add_argument("--no-plot", action="store_true", help="skip the figure")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


#: options that must be >= 0, > 0 (and finite), or >= 1 when given (of the runner and the
#: problems with their own pipeline)
NON_NEGATIVE = ("adam_steps", "lbfgs_steps", "oversampling", "power_iterations", "gn_iters", "ilsr_outer",
                "ilsr_gn_iters", "align_iterations", "rcond", "tikhonov", "gn_damping", "validation_functions")
POSITIVE = ("lr", "final_lr", "dtau", "memory_budget_gb")
AT_LEAST_ONE = ("threads", "rank", "last_window_rank", "last_window_outer", "samples", "max_rank", "n_ranks", "latent")


def check_options(args: argparse.Namespace) -> None:
    """Ranges of the numeric options in ``args`` (those it has): a ValueError names the option
    and what it accepts."""
    flag = lambda name: "--" + name.replace("_", "-")
    for name in NON_NEGATIVE:
        v = getattr(args, name, None)
        if v is not None and not (0 <= v < math.inf):
            raise ValueError(f"{flag(name)} must be a finite number >= 0, got {v}")
    for name in POSITIVE:
        v = getattr(args, name, None)
        if v is not None and not (0 < v < math.inf):
            raise ValueError(f"{flag(name)} must be a finite number > 0, got {v}")
    for name in AT_LEAST_ONE:
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise ValueError(f"{flag(name)} must be >= 1, got {v}")
    if getattr(args, "resume", False) and not args.ilsr_outer:
        raise ValueError("--resume continues a checkpointed ILSR stage: give --ilsr-outer N as in the interrupted run")


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


def run_config(problem: PDEProblem, args) -> dict:
    """config.json: the options of the run, the problem, its inputs and outputs, library version
    and thread count."""
    from . import __version__

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["problem"] = problem.name
    config["input_names"], config["output_names"] = list(problem.input_names), list(problem.output_names)
    config["pinnlsr"], config["threads"] = __version__, torch.get_num_threads()
    return config


def _stage(name: str, seconds: float, errors: dict, residual: float, **extra) -> dict:
    row = {"name": name, "rel_l2": errors.get("rel_l2"), "max_abs_err": errors.get("max_abs_err"),
           "residual": residual, "seconds": seconds}
    row.update({k: v for k, v in errors.items() if k not in row})
    row.update(extra)
    return row


def print_table(stages: list[dict], file=None) -> None:
    """The stage table: name, relative L2, max error, residual, seconds."""
    file = sys.stdout if file is None else file  # resolved per call: sys.stdout can be replaced
    fmt = lambda v: "—" if v is None else (f"{v:.3e}" if isinstance(v, float) else str(v))
    print(f"{'stage':<12}{'rel_l2':>12}{'max_err':>12}{'residual':>12}{'seconds':>10}", file=file)
    for s in stages:
        print(f"{s['name']:<12}{fmt(s['rel_l2']):>12}{fmt(s['max_abs_err']):>12}{fmt(s['residual']):>12}"
              f"{s['seconds']:>10.2f}", file=file)


def checked_inputs(problem: PDEProblem, args, generator: torch.Generator, dtype: torch.dtype,
                   device: torch.device):
    """Check the inputs of a run before any computing (output folder, model, points, reference
    data, time windows, subspace, checkpoints; options and device are checked by the caller);
    returns the model (with ``--checkpoint`` loaded), the points and (checkpoint notes, load seconds)."""
    runfolder.check(args.out, args.overwrite, args.resume)
    model = build_model(problem, args, generator, dtype, device)
    points = problem.sample_points(generator, dtype, device, parse_counts(args.points))
    check_model(problem, model, next(iter(points.values()))[:2])
    reference_on(problem, dtype, device)  # a missing or malformed reference file fails here, not after training
    if args.time_windows:
        check_windows(problem, args.time_windows)
    last_window_options(args)
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


def run(problem: PDEProblem, args: argparse.Namespace) -> dict:
    """Run the pipeline described by ``args``; returns the metrics dict (also written with --out)."""
    progress = False if args.quiet else None
    generator = torch.Generator().manual_seed(args.seed)
    check_options(args)
    device, dtype = device_and_dtype(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, points, load = checked_inputs(problem, args, generator, dtype, device)
    if args.out is not None:
        runfolder.clear(args.out, keep_checkpoints=args.resume)
        atomic_write_json(args.out / "config.json", run_config(problem, args))
    stages: list[dict] = []
    histories: list[dict] = []  # rows of history.csv
    if args.checkpoint is not None:
        notes, t_load = load
        for note in notes:
            print(f"checkpoint: {note}", file=sys.stderr)
        stages.append(_stage("checkpoint", t_load, model_errors(problem, model, dtype, device),
                             residual_norm(problem, model, points, check=True), path=str(args.checkpoint)))
    elif args.adam_steps > 0:
        t = time.perf_counter()
        hist = train_adam(problem, model, points, args.adam_steps, args.lr, args.final_lr, progress)
        histories.extend(history_rows("adam", hist))
        stages.append(_stage("adam", time.perf_counter() - t, model_errors(problem, model, dtype, device),
                             residual_norm(problem, model, points, check=True), steps=args.adam_steps,
                             diverged=hist.diverged, backends=hist.backends))
    else:
        stages.append(_stage("init", 0.0, model_errors(problem, model, dtype, device),
                             residual_norm(problem, model, points, check=True)))
    if args.lbfgs_steps > 0:
        t = time.perf_counter()
        hist = train_lbfgs(problem, model, points, args.lbfgs_steps, progress=progress)
        histories.extend(history_rows("lbfgs", hist))
        stages.append(_stage("lbfgs", time.perf_counter() - t, model_errors(problem, model, dtype, device),
                             residual_norm(problem, model, points, check=True), steps=args.lbfgs_steps,
                             diverged=hist.diverged, backends=hist.backends))
    budget = None if args.memory_budget_gb is None else int(args.memory_budget_gb * 2**30)
    result = lsr(problem, model, points=points, rank=args.rank, subspace=args.subspace,
                 oversampling=args.oversampling, power_iterations=args.power_iterations,
                 solver=args.solver, rcond=args.rcond, tikhonov=args.tikhonov, seed=args.seed,
                 dtype=dtype, device=device, memory_budget=budget)
    d = result.diagnostics
    if d["rank_used"] == ParamSpec.of(model).numel:
        print(f"warning: LSR used all {d['rank_used']} parameter directions (rank_used == n_params): the network "
              "is probably too small for the problem; a larger one (--model) can reach a lower error", file=sys.stderr)
    stages.append(_stage("lsr", d["seconds"]["total"], d.get("errors_after", {}), d["residual_after"], rank=d["rank"],
                         rank_used=d["rank_used"], subspace=d["subspace"], cond=d["cond"],
                         linearized_residual=d["linearized_residual"], seconds_by_phase=d["seconds"],
                         peak_memory_gb=d["peak_memory_gb"], backends=d["jacobian_backends"]))
    refined: dict = {}  # stage name -> refined predictor, for predictions.npz and the figure
    if args.gn_iters > 0 or args.ilsr_outer > 0:
        stages.extend(nonlinear_stages(problem, model, points, args, dtype, device, budget, refined))
    metrics = {"problem": problem.name, "seed": args.seed, "device": str(device), "dtype": args.dtype,
               "n_params": ParamSpec.of(model).numel,
               "n_points": {k: int(v.shape[0]) for k, v in points.items()}, "threads": torch.get_num_threads(),
               "stages": stages}
    print_table(stages)
    if args.out is not None:
        histories.extend(history_rows("lsr", {"iteration": [0], "seconds": [d["seconds"]["total"]],
                                               "residual": [d["residual_after"]], "rel_l2": [d.get("rel_l2_after")]}))
        write_outputs(problem, args, model, result, metrics, histories, extra_predictors=refined)
    return metrics


def nonlinear_stages(problem: PDEProblem, model: nn.Module, points: dict[str, torch.Tensor], args,
                     dtype: torch.dtype, device, memory_budget: int | None,
                     predictors: dict | None = None) -> list[dict]:
    """The 'gauss_newton' and 'ilsr' stages of a problem run (``--gn-iters``, ``--ilsr-outer``):
    metrics.json rows with rel_l2, max_abs_err, residual (on the collocation points), seconds and
    the per-iteration history. The best predictor of each stage goes into ``predictors`` by name."""
    predictors = {} if predictors is None else predictors
    stages = []
    keep = ("iteration", "residual", "validation_residual", "linearized_residual", "rel_l2", "seconds")
    if args.gn_iters > 0:
        gn = tangent_gauss_newton(problem, model, points=points, rank=args.rank, subspace=args.subspace,
                                  oversampling=args.oversampling, power_iterations=args.power_iterations,
                                  max_iters=args.gn_iters, damping=args.gn_damping, rcond=args.rcond,
                                  seed=args.seed, dtype=dtype,
                                  device=device, memory_budget=memory_budget)
        best = gn.history[gn.best_iteration]
        predictors["gauss_newton"] = gn.model
        stages.append(_stage("gauss_newton", gn.diagnostics["seconds"], gn.diagnostics.get("errors_after", {}),
                             best["residual"], rank=gn.basis.rank, validation_residual=best["validation_residual"],
                             stop_reason=gn.stop_reason, backends=gn.diagnostics["jacobian_backends"],
                             history=[{k: h.get(k) for k in keep} for h in gn.history]))
    if args.ilsr_outer > 0:
        options = dict(outer_iterations=args.ilsr_outer, rank=args.rank, subspace=args.subspace,
                       oversampling=args.oversampling, power_iterations=args.power_iterations, rcond=args.rcond,
                       gn_iterations=args.ilsr_gn_iters, damping=args.gn_damping,
                       align_iterations=args.align_iterations, dtau=args.dtau,
                       warm_start=args.align_warm_start, seed=args.seed, dtype=dtype, device=device,
                       memory_budget=memory_budget, resume=bool(getattr(args, "resume", False)))
        windows = getattr(args, "time_windows", None)
        res = refine_from_points(problem, model, points, time_windows=windows, last_window=last_window_options(args),
                                 out_dir=args.out, **options)
        best = res.history[res.best_iteration]
        predictors["ilsr"] = res.model
        errors = model_errors(problem, res.model, dtype, device)  # every metric, as the lsr stage has
        stages.append(_stage("ilsr", res.diagnostics["seconds"], errors, best["residual"], rank=best.get("rank"),
                             validation_residual=res.diagnostics["validation_residual"],
                             best_iteration=res.best_iteration,
                             backends=res.diagnostics["backends"].get("gauss_newton", {}),
                             alignment_backends=res.diagnostics["backends"].get("alignment", {}),
                             history=[{k: h.get(k) for k in keep + ("accepted", "network_rel_l2")
                                       + (("window",) if windows else ())} for h in res.history]))
        if windows:
            stages[-1]["windows"] = res.diagnostics["windows"]
    return stages


def write_outputs(problem: PDEProblem, args, model, result, metrics: dict, histories: list[dict] | None = None,
                  predictors: dict | None = None, extra_predictors: dict | None = None) -> None:
    """The run folder (see :mod:`pinnlsr.report`): config.json, model.pt, history.csv,
    predictions.npz, metrics.json, then figures and summary.md rebuilt from those files.

    ``predictors`` maps stage names to models evaluated on the reference points (default: the
    pretrained network and the LSR predictor); ``extra_predictors`` are added after them (the
    Gauss–Newton and ILSR predictors; the figure shows the last one)."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    config = run_config(problem, args)
    atomic_write_json(out / "config.json", config)
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
    atomic_write_json(out / "metrics.json", metrics)
    if not args.no_plot:
        from .plotting import draw_safely

        draw_safely(lambda: rebuild_report(out))
    else:
        atomic_write_text(out / "summary.md", summary_markdown(metrics, config, []))
    print(f"wrote {out / 'metrics.json'}")


#: errors that mean bad input (a file, an option, a model that does not fit): exit code 2
INPUT_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def run_guarded(run_fn: Callable, *args) -> tuple[int, object]:
    """Call ``run_fn(*args)``: bad input becomes one line on stderr and exit code 2, Ctrl-C the
    line "interrupted" and exit code 130; any other exception (a bug) keeps its traceback.
    Sets the process's malloc for tensor passes first (:func:`pinnlsr.allocator.tune_allocator`)."""
    tune_allocator()
    try:
        return 0, run_fn(*args)
    except INPUT_ERRORS as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2, None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130, None


def main(problem_factory: Callable[[], PDEProblem], argv: list[str] | None = None,
         defaults: RunSettings | dict | None = None, prog: str | None = None) -> int:
    """Entry point of ``python -m problems.NAME``: parse, run, exit code 0 on success."""
    problem = problem_factory()
    code, parser = run_guarded(build_parser, problem, defaults, prog)  # DEFAULTS with unknown settings: exit 2
    if code:
        return code
    code, metrics = run_guarded(run, problem, parser.parse_args(argv))
    if code:
        return code
    last = metrics["stages"][-1]
    if last.get("residual") is not None and not math.isfinite(last["residual"]):
        print("error: the refined residual is not finite", file=sys.stderr)
        return 3
    return 0

