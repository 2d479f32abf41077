"""One name per setting in every entry point, typed settings, and --device/--dtype where a run computes."""
import argparse
import dataclasses
import importlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from pinnlsr import cli, operator_cli, runner
from pinnlsr.settings import OperatorSettings, RunSettings, option, resolve_device
from scripts_helper import load_script

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

#: setting -> every spelling it has had; only the first (the field's option) may be visible
SYNONYMS = {
    "adam_steps": ("--adam-steps", "--steps", "--adam"),
    "lbfgs_steps": ("--lbfgs-steps", "--lbfgs"),
    "gn_iters": ("--gn-iters", "--gn-iterations", "--gauss-newton", "--max-iters"),
    "ilsr_outer": ("--ilsr-outer", "--outer", "--outer-iterations"),
    "gn_damping": ("--gn-damping", "--damping"),
    "points": ("--points", "--lsr-points", "--n-pde", "--n-bc"),
}
#: scripts without --device/--dtype, and why
NO_DEVICE = {
    "bench_interpolation": "NumPy/SciPy interpolation timings on the CPU",
    "bench_training": "CPU float64 timings side by side with hand-written autograd and DeepXDE",
    "bench_shifted_points": "CPU float64 timing of lid_driven's two pressure gauges side by side",
    "check_burgers_reference": "NumPy quadrature against a data file",
    "deepxde_finetune": "DeepXDE trains on its own device and dtype",
    "error_by_region": "reads a run folder",
    "error_by_time": "reads a run folder",
    "figure_burgers1d": "draws a saved network",
    "fit_capacity": "CPU float64 supervised fit: a diagnostic of the network, not a pipeline",
    "gpu_check": "its --device is the device compared with the CPU, in float64 as the pipelines' defaults",
    "results_poisson2d": "the README table (CPU, float64)",
}
RUNNER_PROBLEMS = ("poisson2d", "burgers1d", "allen_cahn1d", "kovasznay")
OPERATOR_PROBLEMS = ("deeponet_antiderivative", "deeponet_burgers")


def entry_points() -> dict[str, tuple[argparse.ArgumentParser, bool]]:
    """{name: (parser, computes)} of every command-line entry point."""
    out = {}
    for name in RUNNER_PROBLEMS:
        module = importlib.import_module(f"problems.{name}")
        out[f"problems.{name}"] = (runner.build_parser(module.PROBLEM(), getattr(module, "DEFAULTS", None)), True)
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        out[f"pinnlsr {name}"] = (parser, name == "compare")  # `run` parses the runner's options
    for name in OPERATOR_PROBLEMS:
        module = importlib.import_module(f"problems.{name}")
        out[f"problems.{name}"] = (operator_cli.build_parser(module.PROBLEM(), module.DEFAULTS), True)
    for name in ("fit2d", "heat_inverse", "deeponet_antiderivative_data"):
        out[f"problems.{name}"] = (importlib.import_module(f"problems.{name}").build_parser(), True)
    for path in sorted(SCRIPTS.glob("*.py")):
        out[f"scripts/{path.name}"] = (load_script(path.stem).build_parser(), path.stem not in NO_DEVICE)
    return out


def visible_options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions if a.help is not argparse.SUPPRESS for s in a.option_strings}


@pytest.fixture(scope="module")
def parsers():
    return entry_points()


def test_every_setting_has_one_visible_name_across_entry_points(parsers):
    seen: dict[str, dict[str, list[str]]] = {s: {} for s in SYNONYMS}
    for entry, (parser, _) in parsers.items():
        for opt in visible_options(parser):
            for setting, names in SYNONYMS.items():
                if opt in names:
                    seen[setting].setdefault(opt, []).append(entry)
    clashes = {s: found for s, found in seen.items() if set(found) - {SYNONYMS[s][0]}}
    assert not clashes, f"settings under another name than their own (setting: {{option: entry points}}): {clashes}"
    assert set(seen["gn_iters"]) == {"--gn-iters"} and set(seen["points"]) == {"--points"}  # the table is used


def test_every_entry_point_that_computes_takes_device_and_dtype(parsers):
    missing = [e for e, (parser, computes) in parsers.items()
               if computes and not {"--device", "--dtype"} <= visible_options(parser)]
    assert not missing, f"entry points without --device/--dtype: {missing}"
    assert {"scripts/benchmark_pinns.py", "scripts/benchmark_deeponet.py", "pinnlsr compare"} <= {
        e for e, (_, computes) in parsers.items() if computes}


def _unavailable_devices() -> list[str]:
    names = ["tpu", "cudax", "mps"]
    if not torch.cuda.is_available():
        names.append("cuda")
    if torch.cuda.device_count() <= 7:
        names.append("cuda:7")
    return names


@pytest.mark.parametrize("device", _unavailable_devices())
@pytest.mark.parametrize("entry", ["runner", "pinnlsr run", "pinnlsr compare", "operator", "fit2d", "benchmark_pinns"])
def test_a_bad_device_is_an_input_error(entry, device, capsys):
    from problems.deeponet_antiderivative import run_cli as operator_main
    from problems.fit2d import run_cli as fit2d_main
    from problems.poisson2d import Poisson2D

    calls = {"runner": lambda argv: runner.main(Poisson2D, argv),
             "pinnlsr run": lambda argv: cli.main(["run", "poisson2d"] + argv),
             "pinnlsr compare": lambda argv: cli.main(["compare", "poisson2d"] + argv),
             "operator": operator_main, "fit2d": fit2d_main,
             "benchmark_pinns": lambda argv: load_script("benchmark_pinns").main(["--out", "unused"] + argv)}
    try:
        code = calls[entry](["--device", device])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and f"device {device!r}" in err and "use " in err, err


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").index is not None  # metrics.json names the actual device, e.g. cuda:0
    for name in _unavailable_devices():
        with pytest.raises(ValueError, match="use "):
            resolve_device(name)


def test_deprecated_spellings_still_work_with_a_note(parsers, capsys):
    operator = parsers["problems.deeponet_antiderivative"][0]
    args = operator.parse_args(["--steps", "7", "--gauss-newton", "2", "--lsr-points", "pde=10", "ic=3"])
    assert (args.adam_steps, args.gn_iters, args.points) == (7, 2, ["pde=10", "ic=3"])
    notes = capsys.readouterr().err.splitlines()
    assert notes == ["note: --steps is deprecated; use --adam-steps", "note: --gauss-newton is deprecated; use --gn-iters",
                     "note: --lsr-points is deprecated; use --points"]
    heat = parsers["problems.heat_inverse"][0]
    args = heat.parse_args(["--n-pde", "200", "--n-bc", "50", "--gn-iterations", "3"])
    assert (args.points, args.gn_iters) == (["pde=200", "bc_a=50"], 3)
    assert "use --points pde=N" in capsys.readouterr().err
    assert parsers["scripts/benchmark_deeponet.py"][0].parse_args(["--steps", "5"]).adam_steps == 5
    assert not {"--steps", "--gauss-newton", "--lsr-points"} & set(operator.format_help().split())  # hidden


def test_a_deprecated_spelling_runs(tmp_path, capsys):
    from problems.deeponet_antiderivative import run_cli

    argv = ["--steps", "2", "--n-train", "4", "--n-test", "1", "--rank", "4", "--widths", "6", "--latent", "4",
            "--lsr-points", "ode=30", "--dtype", "float32", "--no-plot", "--out", str(tmp_path)]
    assert run_cli(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["sizes"]["steps"], metrics["sizes"]["lsr_points"]["ode"]) == (2, 30)
    assert (metrics["device"], metrics["dtype"]) == ("cpu", "float32")  # where the network really ran
    assert "note: --steps is deprecated" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["poisson2d", "burgers1d", "allen_cahn1d", "kovasznay", "lid_driven", "helmholtz2d",
                                  "poisson2d_hard"])
def test_problem_defaults_are_settings_and_the_parser_defaults(name):
    module = importlib.import_module(f"problems.{name}")
    defaults = getattr(module, "DEFAULTS", RunSettings())
    assert isinstance(defaults, RunSettings)
    args = runner.build_parser(module.PROBLEM(), defaults).parse_args([])
    for f in dataclasses.fields(RunSettings):
        value, parsed = getattr(defaults, f.name), getattr(args, f.name)
        if f.metadata["type"] == "counts":
            parsed = runner.parse_counts(parsed) or None
        elif isinstance(value, tuple):
            parsed = tuple(parsed)
        assert parsed == value, f"{option(f.name)}: parser default {parsed!r}, DEFAULTS {value!r}"


def test_operator_defaults_are_settings():
    for name in ("deeponet_antiderivative", "deeponet_diffusion_reaction", "deeponet_advection", "deeponet_burgers"):
        module = importlib.import_module(f"problems.{name}")
        assert isinstance(module.DEFAULTS, OperatorSettings)
        args = operator_cli.build_parser(module.PROBLEM(), module.DEFAULTS).parse_args([])
        assert (args.adam_steps, args.gn_iters) == (module.DEFAULTS.adam_steps, module.DEFAULTS.gn_iters)


def test_unknown_settings_in_a_defaults_dict_are_named(capsys):
    from problems.poisson2d import Poisson2D

    with pytest.raises(ValueError, match="unknown settings \\['outer'\\]"):
        RunSettings.of({"adam_steps": 5, "outer": 2})
    assert runner.main(Poisson2D, [], defaults={"gauss_newton": 3}) == 2
    assert "unknown settings ['gauss_newton']" in capsys.readouterr().err


def test_benchmark_pinns_reads_the_problems_defaults():
    bench = load_script("benchmark_pinns")
    from problems import burgers1d, helmholtz2d

    assert bench.settings("burgers1d", quick=False) == burgers1d.DEFAULTS
    helmholtz = bench.settings("helmholtz2d", quick=False)
    assert helmholtz == dataclasses.replace(helmholtz2d.DEFAULTS, ilsr_outer=1, ilsr_gn_iters=2, align_iterations=100)


def test_a_run_from_before_a_new_setting_resumes_with_its_default(tmp_path):
    from problems.poisson2d import Poisson2D

    problem = Poisson2D()
    args = runner.build_parser(problem).parse_args(["--ilsr-outer", "1", "--resume", "--out", str(tmp_path)])
    config = runner.run_config(problem, args)
    del config["ilsr_gn_iters"]  # config.json of a run made before the setting existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    runner.check_resume(problem, args)
    args.ilsr_gn_iters = 3
    with pytest.raises(ValueError, match="ilsr_gn_iters: 10 then, 3 now"):
        runner.check_resume(problem, args)
