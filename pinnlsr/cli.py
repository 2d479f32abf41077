"""The ``pinnlsr`` command: list problems, run one, compare methods on one, rebuild a run's report.

Exit codes: 0 success, 2 bad input (unknown problem, bad option, unusable file or output folder:
one line on stderr naming the problem and the fix), 3 a run whose refined result is not finite,
130 an interrupted run (Ctrl-C, no traceback). A bug shows its traceback (exit code 1).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

from .runfolder import check_writable, out_path


def problem_modules() -> dict[str, ModuleType]:
    """{name: module} of every module in the ``problems`` package that defines ``PROBLEM``."""
    import problems

    found = {}
    for info in sorted(pkgutil.iter_modules(problems.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"problems.{info.name}")
        if hasattr(module, "PROBLEM"):
            found[module.PROBLEM.name] = module
    return found


def _list(_args) -> int:
    modules = problem_modules()
    width = max((len(n) for n in modules), default=0)
    for name, module in modules.items():
        print(f"{name:<{width}}  {module.PROBLEM.description}")
    return 0


def user_problem(spec: str):
    """(problem class, its module's DEFAULTS or None) named by ``module:Class`` or ``file.py:Class``:
    a user's own PDEProblem subclass, run by the same pipeline as the built-in problems."""
    from .checkpoint import resolve_factory
    from .problem import PDEProblem

    cls = resolve_factory(spec, "problem class")
    if not (isinstance(cls, type) and issubclass(cls, PDEProblem)):
        raise ValueError(f"{spec!r} is not a PDEProblem subclass: name the problem class, e.g. my_pde.py:MyProblem")
    return cls, getattr(sys.modules.get(cls.__module__), "DEFAULTS", None)


def _run(args, rest: list[str]) -> int:
    if ":" in args.name:  # a user's own problem class
        from .runner import main as run_main

        try:
            cls, defaults = user_problem(args.name)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return run_main(cls, rest, defaults, prog=f"pinnlsr run {args.name}")
    modules = problem_modules()
    if args.name not in modules:
        print(f"error: unknown problem {args.name!r}; `pinnlsr list` shows the problems: "
              f"{', '.join(modules)}", file=sys.stderr)
        return 2
    module = modules[args.name]
    custom = getattr(module, "run_cli", None)  # problems with their own pipeline (argv, prog) -> exit code
    if callable(custom):
        return custom(rest, prog=f"pinnlsr run {args.name}")
    from .runner import main as run_main

    return run_main(module.PROBLEM, rest, getattr(module, "DEFAULTS", None), prog=f"pinnlsr run {args.name}")


def _compare(args) -> int:
    from .compare import FULL, QUICK, QUICK_POINT_FRACTION, compare_methods, plot, table
    from .io import atomic_write_json, atomic_write_text
    from .settings import device_and_dtype

    modules = problem_modules()
    if args.name not in modules:
        print(f"error: unknown problem {args.name!r}; `pinnlsr list` shows the problems", file=sys.stderr)
        return 2
    problem = modules[args.name].PROBLEM()
    device, dtype = device_and_dtype(args)
    if args.out is not None:
        check_writable(args.out)
    result = compare_methods(problem, QUICK if args.quick else FULL, args.seed, dtype=dtype, device=device,
                             point_fraction=QUICK_POINT_FRACTION if args.quick else None)
    text = table([result])
    print(text)
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "compare.json", result)
        atomic_write_text(out / "compare.md", text)
        plot(result, out / "compare.png")
        print(f"wrote {out / 'compare.md'}")
    return 0


def _report(args) -> int:
    from .report import rebuild_report

    try:
        written = rebuild_report(args.run_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .settings import Parser, add_device_options

    parser = Parser(
        prog="pinnlsr",
        description="Linearized Subspace Refinement of trained physics-informed networks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the built-in problems with a one-line description")
    run = sub.add_parser("run", help="pretrain and refine one problem; `pinnlsr run NAME --help` lists its options",
                         add_help=False)
    run.add_argument("name", help="problem name (see `pinnlsr list`), or your own PDEProblem class as "
                                  "package.module:Class or path/to/file.py:Class")
    compare = sub.add_parser("compare", help="Adam, Adam+L-BFGS, LSR and Iterative LSR side by side on one problem")
    compare.add_argument("name", help="problem name (see `pinnlsr list`)")
    compare.add_argument("--out", type=out_path, default=None,
                         help="folder for compare.json, compare.md and compare.png")
    compare.add_argument("--seed", type=int, default=0, help="seed of network, points and sketches")
    add_device_options(compare)
    compare.add_argument("--quick", action="store_true", help="smoke-sized run (few steps, 3%% of the points)")
    report = sub.add_parser("report", help="rebuild figures and summary.md of a run folder from its files")
    report.add_argument("run_dir", help="folder written by a run with --out")
    return parser


def _dispatch(parser: argparse.ArgumentParser, args, rest: list[str]) -> int:
    if args.command == "list":
        return _list(args)
    if args.command == "run":
        return _run(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "compare":
        return _compare(args)
    return _report(args)


def main(argv: list[str] | None = None) -> int:
    from .runner import run_guarded

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    code, result = run_guarded(_dispatch, parser, args, rest)
    return code or result


if __name__ == "__main__":
    raise SystemExit(main())
