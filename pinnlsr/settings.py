"""Typed settings of the pipelines, one name each, and the command-line options built from them.

:class:`RunSettings` holds the settings of a problem run (pretraining, LSR, Gauss–Newton, Iterative
LSR, time marching) with their defaults and one-line help; a problem module's ``DEFAULTS`` is an
instance, e.g. ``RunSettings(adam_steps=3000, ilsr_outer=10)``. :class:`OperatorSettings` does the
same for the physics-informed DeepONet problems. :func:`add_settings` turns either into options: the
field ``adam_steps`` is the option ``--adam-steps`` in every entry point, and :func:`settings_parser`
builds the argparse parent parser of ``python -m problems.NAME`` and ``pinnlsr run``. An old
spelling stays as a hidden alias that prints a deprecation note (:func:`add_alias`).

:func:`add_device_options` gives every entry point that computes ``--device`` and ``--dtype``; a
device that is malformed or not available here is an input error (:func:`resolve_device`).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field

import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (exit code 2), without the long usage text."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


# ---------------------------------------------------------------------------------------------
# Device and precision
# ---------------------------------------------------------------------------------------------

def resolve_device(name: str | torch.device) -> torch.device:
    """The torch device ``name`` ("cuda" becomes the current CUDA device, e.g. cuda:0); a
    ValueError names the problem and the fix when it is malformed or not available here."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device {str(name)!r} is not a torch device; use --device cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(name)!r}: pinnlsr runs on cpu or cuda; use --device cpu or --device cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(name)!r}: CUDA is not available here (torch {torch.__version__}); "
                             "use --device cpu, or install the CUDA build of torch")
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= count:
            raise ValueError(f"device {str(name)!r}: this machine has {count} CUDA device(s); use cuda:0 to "
                             f"cuda:{count - 1}")
        device = torch.device("cuda", index)
    return device


def _device_option(text: str) -> str:
    """argparse type of ``--device``: the resolved device's name (e.g. cpu, cuda:0)."""
    try:
        return str(resolve_device(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` (checked while parsing: a bad one is an input error, exit code 2) and ``--dtype``."""
    parser.add_argument("--device", type=_device_option, default="cpu", help="torch device: cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float64",
                        help="precision of training and refinement")


def device_and_dtype(args) -> tuple[torch.device, torch.dtype]:
    """The torch device and dtype named by ``args.device`` and ``args.dtype``."""
    if args.dtype not in DTYPES:
        raise ValueError(f"--dtype {args.dtype!r}: use one of {', '.join(sorted(DTYPES))}")
    return resolve_device(args.device), DTYPES[args.dtype]


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------

def setting(default, help: str, type=None, **cli):
    """A settings field: its default, one-line help and how its option parses: ``type`` (int,
    float, str, bool: ``--x/--no-x``, or "counts": ``TERM=N ...`` read as {term: n}) and further
    argparse keywords (``choices``, ``nargs``, ``metavar``)."""
    return field(default=default, metadata={"help": help, "type": type, **cli})


@dataclass(frozen=True)
class RunSettings:
    """The settings of a problem run (``python -m problems.NAME``, ``pinnlsr run NAME``)."""

    adam_steps: int = setting(5000, "Adam pretraining steps", int)
    lr: float = setting(1e-3, "initial Adam learning rate", float)
    final_lr: float = setting(1e-4, "Adam learning rate at the last step (exponential decay)", float)
    lbfgs_steps: int = setting(0, "L-BFGS iterations after Adam, each up to 20 loss evaluations (0: none)", int)
    points: dict | None = setting(None, "collocation points per term, e.g. pde=2000 bc=400", "counts")
    rank: int | None = setting(None, "LSR subspace rank r (default: whole parameter space when small)", int)
    subspace: str = setting("auto", "how the subspace is chosen", str,
                            choices=("auto", "full", "svd", "randomized"))
    oversampling: int = setting(10, "extra sketch columns of the randomized range finder", int)
    power_iterations: int = setting(0, "power iterations of the range finder", int)
    solver: str = setting("svd", "reduced least-squares solver", str, choices=("svd", "qr"))
    rcond: float = setting(1e-14, "relative singular value cut of the SVD solver", float)
    tikhonov: float = setting(0.0, "Tikhonov regularisation λ of the reduced solve", float)
    memory_budget_gb: float | None = setting(None, "memory for Jacobian chunks (default: from free memory)", float)
    gn_iters: int = setting(0, "tangent Gauss–Newton iterations after LSR, a 'gauss_newton' stage (0: none)", int)
    gn_damping: float = setting(1e-20, "Levenberg–Marquardt damping the first Gauss–Newton step's search centres "
                                       "on, relative to σ_max² (each step tries 100× it down to 1e-12× it and 0)",
                                float)
    gn_chord_steps: int = setting(0, "after each Gauss–Newton step (of --gn-iters, of each ILSR outer iteration, "
                                     "of --final-gn-iters), up to this many chord steps: further steps from the "
                                     "same factorization with the updated residual, kept while the validation residual falls "
                                     "(cheap where rounding, not nonlinearity, limits a step)", int)
    ilsr_outer: int = setting(0, "Iterative LSR outer iterations, an 'ilsr' stage (0: none); checkpointed to "
                                 "OUT/ilsr.pt (see --resume)", int)
    ilsr_gn_iters: int = setting(10, "tangent Gauss–Newton iterations inside each ILSR outer iteration", int)
    align_iterations: int = setting(200, "L-BFGS iterations aligning the network to the predictor in each ILSR "
                                         "iteration", int)
    dtau: float = setting(1e-3, "pseudo-time step Δτ of the ILSR alignment (weight 1/Δτ on |u - u_lin|²)", float)
    align_warm_start: bool = setting(False, "start each ILSR alignment from θ0 + s·Vz (s in 1, 1/2, 1/4, 0: "
                                            "lowest alignment loss)", bool)
    align_accept: str = setting("closer", "when an ILSR alignment replaces the network: 'closer' (its validation "
                                          "residual is not worse, or it is closer to a predictor that validates "
                                          "better) or 'residual' (only the first)", str,
                                choices=("closer", "residual"))
    time_windows: tuple | None = setting(None, "march the ILSR stage over windows [t0, T] (increasing, the last "
                                               "= t1), --ilsr-outer iterations each; checkpointed to "
                                               "OUT/ilsr_window*.pt (time-dependent problems)", float,
                                         nargs="+", metavar="T")
    last_window_rank: int | None = setting(None, "rank of the last time window's ILSR (default: --rank)", int)
    last_window_outer: int | None = setting(None, "ILSR outer iterations of the last time window (default: "
                                                  "--ilsr-outer)", int)
    last_window_points: dict | None = setting(None, "points per term of the last time window (default: as "
                                                    "--points)", "counts")
    final_gn_iters: int = setting(0, "Gauss–Newton iterations of the ILSR's final refinement in a larger "
                                     "subspace on more points, after its outer iterations (of the last time "
                                     "window); without ILSR, of the Gauss–Newton stage continued on "
                                     "--final-points (0: none)", int)
    final_rank: int | None = setting(None, "rank of the final refinement (the parameter count: the whole space; "
                                           "default: the whole space of a network up to 6,000 parameters, else "
                                           "--rank)", int)
    final_points: dict | None = setting(None, "points per term of the final refinement (default: as --points)",
                                        "counts")

    @classmethod
    def of(cls, values) -> "RunSettings":
        """``values`` as settings: an instance, None (the defaults) or a dict of field names (a user
        module's DEFAULTS); a ValueError names unknown keys."""
        return _settings_of(cls, values)


@dataclass(frozen=True)
class OperatorSettings:
    """The settings of a physics-informed DeepONet problem (``python -m problems.deeponet_*``)."""

    widths: tuple = setting((50, 50, 50), "hidden widths of branch and trunk", int, nargs="+")
    latent: int = setting(50, "latent size p of the dot-product head", int)
    n_train: int = setting(1000, "training input functions", int)
    adam_steps: int = setting(3000, "Adam steps of physics-informed pretraining", int)
    batch_size: int = setting(16, "input functions per Adam step", int)
    lr: float = setting(1e-3, "initial Adam learning rate", float)
    final_lr: float = setting(1e-5, "Adam learning rate at the last step (exponential decay)", float)
    n_test: int = setting(100, "test input functions refined by LSR", int)
    rank: int | None = setting(None, "LSR rank (default: chosen by a rank scan)", int)
    scan_instances: int = setting(3, "input functions of the rank scan", int)
    points: dict | None = setting(None, "LSR points per term, e.g. pde=2000", "counts")
    power_iterations: int = setting(0, "power iterations of the randomized range finder", int)
    gn_iters: int = setting(0, "after one-shot LSR, up to this many tangent Gauss–Newton iterations per "
                               "instance (nonlinear PDEs), a 'gauss_newton' stage (0: one-shot LSR only)", int)
    refine: str = setting("batched", "how the test functions are refined: 'batched' (blocks of instances at once, "
                                     "sized from free memory) or 'loop' (one at a time; the same numbers)", str,
                          choices=("batched", "loop"))
    instance_block: int | None = setting(None, "instances per block of the batched refinement (default: as many as "
                                               "the memory budget allows)", int)

    @classmethod
    def of(cls, values) -> "OperatorSettings":
        """As :meth:`RunSettings.of`."""
        return _settings_of(cls, values)


def _settings_of(cls, values):
    if values is None:
        return cls()
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise ValueError(f"DEFAULTS must be a {cls.__name__} or a dict of its fields, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"DEFAULTS: unknown settings {unknown}; the settings are {', '.join(names)}")
    return cls(**values)


def option(name: str) -> str:
    """The command-line option of a settings field: ``adam_steps`` -> ``--adam-steps``."""
    return "--" + name.replace("_", "-")


def add_settings(parser, settings, names=None, notes: dict | None = None) -> None:
    """Add the options of the fields of ``settings`` (those in ``names``, default all) to ``parser``
    (or an argument group) with the field values as defaults; ``notes`` adds text to a field's help
    ({name: text})."""
    for f in dataclasses.fields(settings):
        if names is not None and f.name not in names:
            continue
        meta = dict(f.metadata)
        help, kind = meta.pop("help"), meta.pop("type")
        if notes and f.name in notes:
            help = f"{help}; {notes[f.name]}"
        value = getattr(settings, f.name)
        if kind is bool:
            parser.add_argument(option(f.name), action=argparse.BooleanOptionalAction, default=value, help=help)
        elif kind == "counts":
            parser.add_argument(option(f.name), nargs="*", metavar="TERM=N", help=help,
                                default=[f"{k}={v}" for k, v in (value or {}).items()])
        else:
            parser.add_argument(option(f.name), type=kind, help=help,
                                default=list(value) if isinstance(value, tuple) else value, **meta)


def settings_parser(settings: RunSettings | OperatorSettings, notes: dict | None = None) -> argparse.ArgumentParser:
    """The parent parser (``parents=[...]``) with one option per field of ``settings``."""
    parser = argparse.ArgumentParser(add_help=False)
    add_settings(parser.add_argument_group("settings"), settings, notes=notes)
    return parser


class _Alias(argparse.Action):
    """A deprecated spelling: stores into the option's own dest and prints a one-line note."""

    def __init__(self, option_strings, dest, new: str, term: str | None = None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new, self.term = new, term

    def __call__(self, parser, namespace, values, option_string=None):
        use = f"{self.new} {self.term}=N" if self.term else self.new
        print(f"note: {option_string} is deprecated; use {use}", file=sys.stderr)
        if self.term is not None:  # one term's count of a TERM=N list
            values = [*getattr(namespace, self.dest, []), f"{self.term}={values}"]
        setattr(namespace, self.dest, values)


def add_alias(parser: argparse.ArgumentParser, old: str, new: str, term: str | None = None, **kwargs) -> None:
    """``old`` as a hidden, deprecated spelling of the option ``new`` (``kwargs``: its type, nargs);
    with ``term``, ``old N`` means ``new TERM=N``."""
    parser.add_argument(old, dest=new.removeprefix("--").replace("-", "_"), action=_Alias, new=new, term=term,
                        help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def parse_counts(items: list[str], option: str = "--points") -> dict[str, int]:
    """{term: n} from ["TERM=N", ...]; a ValueError names a malformed or repeated item."""
    counts = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name or not value.strip().isdigit() or int(value) <= 0:
            raise ValueError(f"{option} expects TERM=N with N a positive integer, got {item!r}")
        if name in counts:
            raise ValueError(f"{option} names term {name!r} twice; give each term once")
        counts[name] = int(value)
    return counts


def final_options(settings) -> dict | None:
    """The ILSR final refinement's options (see :func:`~pinnlsr.ilsr.iterative_lsr`) from
    ``final_gn_iters``, ``final_rank`` and ``final_points`` ({term: n} or ["TERM=N", ...]) of
    ``settings`` (parsed CLI arguments, :class:`RunSettings` or a dict); None without a final one."""
    get = settings.get if isinstance(settings, dict) else lambda key: getattr(settings, key, None)
    iterations = get("final_gn_iters") or 0
    points = get("final_points") or {}
    counts = dict(points) if isinstance(points, dict) else parse_counts(points, "--final-points")
    if iterations <= 0:
        if get("final_rank") is not None or counts:
            raise ValueError("final_rank/final_points set the final refinement: give it iterations "
                             "(final_gn_iters, on the command line --final-gn-iters N)")
        return None
    return {"final_gn_iterations": int(iterations), "final_rank": get("final_rank"), "final_counts": counts or None}


def last_window_options(settings) -> dict | None:
    """The last time window's own ILSR settings (see :func:`~pinnlsr.marching.time_marching_lsr`)
    from ``last_window_rank``, ``last_window_outer`` and ``last_window_points`` ({term: n} or
    ["TERM=N", ...]) of ``settings``: parsed CLI arguments, :class:`RunSettings` or a dict. None
    when none is set."""
    get = settings.get if isinstance(settings, dict) else lambda key: getattr(settings, key, None)
    points = get("last_window_points") or {}
    counts = dict(points) if isinstance(points, dict) else parse_counts(points, "--last-window-points")
    given = {"rank": get("last_window_rank"), "outer_iterations": get("last_window_outer"), "counts": counts or None}
    overrides = {k: v for k, v in given.items() if v is not None}
    if overrides and not get("time_windows"):
        raise ValueError("last_window_rank/outer/points set the last time window's ILSR: they need time_windows")
    return overrides or None
