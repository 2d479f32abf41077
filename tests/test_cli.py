"""The `pinnlsr` command: list, run (a built-in problem, `module:Class` or `file.py:Class`), report."""
import json

from pinnlsr import cli

USER_PROBLEM = '''
import math
import torch
from pinnlsr import operators as op
from pinnlsr.geometry import Interval
from pinnlsr.problem import PDEProblem, Term


class MyPoisson(PDEProblem):
    name = "my_poisson"
    input_names = ("x",)

    def terms(self):
        domain = Interval(0.0, 1.0)
        return [Term("pde", lambda u, x: op.partial(u, x, 0, 0) + math.pi ** 2 * torch.sin(math.pi * x[0]),
                     domain.sample_interior, 30),
                Term("bc", lambda u, x: u(x), torch.tensor([[0.0], [1.0]], dtype=torch.float64))]

    def exact(self, x):
        return torch.sin(math.pi * x)

    def test_points(self):
        return torch.linspace(0, 1, 51, dtype=torch.float64).unsqueeze(1)


DEFAULTS = {"adam_steps": 50}
'''


def test_run_a_problem_class_from_a_file_and_from_a_module(tmp_path):
    file = tmp_path / "my_pde.py"
    file.write_text(USER_PROBLEM)
    out = tmp_path / "run"
    assert cli.main(["run", f"{file}:MyPoisson", "--quiet", "--no-plot", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["problem"] == "my_poisson"
    assert [s["name"] for s in metrics["stages"]] == ["adam", "lsr"] and metrics["stages"][0]["steps"] == 50
    assert metrics["stages"][1]["rel_l2"] < 1e-3 * metrics["stages"][0]["rel_l2"]
    assert cli.main(["run", "problems.poisson2d:Poisson2D", "--adam-steps", "2", "--points", "pde=20", "bc=8",
                     "--quiet", "--no-plot"]) == 0


def test_a_name_that_is_not_a_problem_class_is_a_clear_error(tmp_path, capsys):
    file = tmp_path / "my_pde.py"
    file.write_text(USER_PROBLEM)
    for spec, fragment in [(f"{file}:DEFAULTS", "is not callable"), (f"{file}:op", "is not callable"),
                           (f"{file}:Term", "is not a PDEProblem subclass"),
                           (f"{file}:Missing", "has no attribute 'Missing'"),
                           (f"{tmp_path / 'none.py'}:MyPoisson", "problem class file"),
                           ("no_such_module:Thing", "module 'no_such_module' not found")]:
        assert cli.main(["run", spec]) == 2
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1, err


def test_list_names_every_problem_module(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("poisson2d", "burgers1d", "kovasznay", "deeponet_burgers"):
        assert name in out


def test_unknown_problem_and_command_are_input_errors(capsys):
    assert cli.main(["run", "no_such_problem"]) == 2
    assert "no_such_problem" in capsys.readouterr().err
    try:
        cli.main(["frobnicate"])
    except SystemExit as exc:  # argparse's own usage error
        assert exc.code == 2
