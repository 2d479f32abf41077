"""A run as a pipeline of named stages, and what every run shares.

A problem declares its pipeline as a :class:`Pipeline`: ``prepare`` checks the inputs and builds
what the stages need before any file is touched, each :class:`Stage` does one step and returns
its :class:`~pinnlsr.records.StageRecord` (None when it had nothing to do), and ``finish`` adds
the pipeline's own top-level metrics.json keys and writes its own files. :func:`run_pipeline`
runs it with the parts every run shares:

- the options: ranges checked (:func:`check_options`), device and dtype resolved, ``--threads``
  set, one generator seeded with ``--seed``;
- the run folder (``--out``): refused when it holds another run unless ``--overwrite``, or
  ``--resume`` for pipelines with checkpoints (:mod:`pinnlsr.runfolder`), then cleared and
  ``config.json`` written, all before the first stage;
- metrics.json: ``problem``, ``seed``, ``device``, ``dtype``, the pipeline's keys and the
  ``stages`` (each record's :meth:`~pinnlsr.records.StageRecord.to_json`), written atomically
  after the stage table is printed.

:func:`run_guarded` turns bad input into one line on stderr and exit code 2. The runner's own
pipeline (:mod:`pinnlsr.runner`) and the problems with pipelines of their own (fit2d,
heat_inverse, deeponet_antiderivative_data) all run through here.

    pipeline = Pipeline(MyProblem, stages=[Stage("adam", train), Stage("lsr", refine)], prepare=build)
    raise SystemExit(run_guarded(run_pipeline, pipeline, parser.parse_args())[0])
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch

from . import runfolder
from .allocator import tune_allocator
from .io import atomic_write_json
from .jet_plans import residual_norm
from .metrics import model_errors
from .records import Evaluation, StageRecord
from .settings import add_device_options, device_and_dtype

#: options that must be >= 0, > 0 (and finite), or >= 1 when given
NON_NEGATIVE = ("adam_steps", "lbfgs_steps", "oversampling", "power_iterations", "gn_iters", "ilsr_outer",
                "ilsr_gn_iters", "align_iterations", "rcond", "tikhonov", "gn_damping", "validation_functions",
                "gn_chord_steps")
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


def add_run_options(parser: argparse.ArgumentParser, *, seed_help: str, out_help: str, resume: bool = False,
                    plot_help: str = "skip the figure") -> None:
    """The options every run has: ``--seed``, ``--device``, ``--dtype``, ``--threads``, ``--out``,
    ``--overwrite`` (``--resume`` with ``resume``) and ``--no-plot``."""
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    add_device_options(parser)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice, recorded in config.json); the last "
                             "digits of a result can depend on it")
    runfolder.add_options(parser, resume=resume, help_out=out_help)
    parser.add_argument("--no-plot", action="store_true", help=plot_help)


def run_config(problem, args: argparse.Namespace) -> dict:
    """config.json: the options of the run, the problem's name, inputs and outputs (``problem``:
    a problem or its class), the library version and the thread count."""
    from . import __version__

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["problem"] = problem.name
    config["input_names"], config["output_names"] = list(problem.input_names), list(problem.output_names)
    config["pinnlsr"], config["threads"] = __version__, torch.get_num_threads()
    return config


def evaluate(problem, model: torch.nn.Module, points: dict[str, torch.Tensor], dtype: torch.dtype,
             device: torch.device) -> Evaluation:
    """``model``'s errors against the problem's reference and its residual norm at ``points``
    (a non-finite residual is an error naming the term)."""
    return Evaluation(model_errors(problem, model, dtype, device), residual_norm(problem, model, points, check=True))


def print_table(stages: Sequence[StageRecord], file=None) -> None:
    """The stage table: name, relative L2, max error, residual, seconds."""
    file = sys.stdout if file is None else file  # resolved per call: sys.stdout can be replaced
    fmt = lambda v: "—" if v is None else (f"{v:.3e}" if isinstance(v, float) else str(v))
    print(f"{'stage':<12}{'rel_l2':>12}{'max_err':>12}{'residual':>12}{'seconds':>10}", file=file)
    for s in stages:
        print(f"{s.name:<12}{fmt(s.rel_l2):>12}{fmt(s.max_abs_err):>12}{fmt(s.residual):>12}"
              f"{s.seconds:>10.2f}", file=file)


@dataclass
class Run:
    """What the stages of one run share: the options, device, dtype, the generator seeded with
    ``--seed``, the records of the stages so far, the top-level metrics.json keys the stages add
    (``metrics``: n_params, n_points, ...) and whatever a stage leaves for later ones (``state``)."""

    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    generator: torch.Generator
    stages: list[StageRecord] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    state: SimpleNamespace = field(default_factory=SimpleNamespace)

    @property
    def out(self) -> Path | None:
        """The run folder (``--out``), or None."""
        return self.args.out


@dataclass
class Stage:
    """A named step of a pipeline: ``run(run)`` returns the record of what it did, or None when it
    had nothing to do (it then leaves no stage in metrics.json)."""

    name: str
    run: Callable[[Run], StageRecord | None]


@dataclass
class Pipeline:
    """A problem's pipeline (see the module docstring).

    ``problem``: the problem (or its class) whose name, input names and output names the run
    records; ``stages``: the stages, or a function of the :class:`Run` giving them (e.g. one
    group per noise level); ``prepare(run)``: checks and builds before any file is touched;
    ``finish(run, metrics)``: adds top-level keys to ``metrics``, prints what the stage table
    leaves out and writes the pipeline's files into ``run.out``; ``report(run, metrics)``:
    files built from the written metrics.json (figures, summary)."""

    problem: Any
    stages: Sequence[Stage] | Callable[[Run], Sequence[Stage]]
    prepare: Callable[[Run], None] | None = None
    finish: Callable[[Run, dict], None] | None = None
    report: Callable[[Run, dict], None] | None = None


def run_pipeline(pipeline: Pipeline, args: argparse.Namespace) -> dict:
    """Run ``pipeline`` with the options ``args`` (see the module docstring); returns the metrics
    dict, also written to ``--out``/metrics.json."""
    check_options(args)
    device, dtype = device_and_dtype(args)
    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)
    run = Run(args, device, dtype, torch.Generator().manual_seed(args.seed))
    resume = bool(getattr(args, "resume", False))
    runfolder.check(args.out, args.overwrite, resume)
    if pipeline.prepare is not None:
        pipeline.prepare(run)
    if args.out is not None:
        runfolder.clear(args.out, keep_checkpoints=resume)
        atomic_write_json(args.out / "config.json", run_config(pipeline.problem, args))
    stages = pipeline.stages(run) if callable(pipeline.stages) else pipeline.stages
    for stage in stages:
        record = stage.run(run)
        if record is not None:
            run.stages.append(record)
    metrics = {"problem": pipeline.problem.name, "seed": args.seed, "device": str(device), "dtype": args.dtype,
               **run.metrics, "stages": [s.to_json() for s in run.stages]}
    print_table(run.stages)
    if pipeline.finish is not None:
        pipeline.finish(run, metrics)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out / "metrics.json", metrics)
        if pipeline.report is not None:
            pipeline.report(run, metrics)
        print(f"wrote {args.out / 'metrics.json'}")
    return metrics


#: errors that mean bad input (a file, an option, a model that does not fit): exit code 2
INPUT_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def run_guarded(run_fn: Callable, *args) -> tuple[int, object]:
    """Call ``run_fn(*args)``: bad input becomes one line on stderr and exit code 2, Ctrl-C the
    line "interrupted" and exit code 130; any other exception (a bug) keeps its traceback.
    Sets the process's malloc for tensor passes first (:func:`pinnlsr.allocator.tune_allocator`)
    and imports ``torch._dynamo``, which torch would otherwise import (a second or so) the first time a
    transform (vmap, jacrev) runs one of its Python decompositions: a Ctrl-C landing inside that
    import left torch half-imported, and the process then died by SIGINT (exit -2, not 130)."""
    tune_allocator()
    import torch._dynamo  # noqa: F401
    try:
        return 0, run_fn(*args)
    except INPUT_ERRORS as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2, None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130, None


__all__ = ["Pipeline", "Stage", "Run", "run_pipeline", "run_guarded", "check_options", "add_run_options",
           "run_config", "evaluate", "print_table", "INPUT_ERRORS"]
