"""pinnlsr.runner: the stage records and table, option checks, and a whole tiny run's metrics.json
(run output contract: docs/run_output.md)."""
import io as _io
import json
import math

import pytest

from pinnlsr import runner
from pinnlsr.records import Evaluation, StageRecord
from pinnlsr.settings import parse_counts
from problems.poisson2d import Poisson2D


def test_stage_records_and_the_table():
    row = StageRecord("lsr", 1.5, Evaluation({"rel_l2": 1e-9, "max_abs_err": 2e-9, "rel_l2_0": 1e-9}, 3e-7), {"rank": 40})
    assert row.to_json() == {"name": "lsr", "rel_l2": 1e-9, "max_abs_err": 2e-9, "residual": 3e-7, "seconds": 1.5,
                             "rel_l2_0": 1e-9, "rank": 40}
    out = _io.StringIO()
    runner.print_table([row, StageRecord("adam", 0.25, Evaluation({}, 1.0))], file=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["stage", "rel_l2", "max_err", "residual", "seconds"]
    assert lines[1].split() == ["lsr", "1.000e-09", "2.000e-09", "3.000e-07", "1.50"]
    assert lines[2].split()[1] == "—"  # no reference error: a dash, not "None"


def test_point_counts_are_checked():
    assert parse_counts(["pde=30", "bc=8"]) == {"pde": 30, "bc": 8}
    for bad in (["pde"], ["pde=0"], ["pde=x"]):
        with pytest.raises((ValueError, SystemExit)):
            parse_counts(bad)


def test_a_tiny_run_writes_the_contract(tmp_path):
    problem = Poisson2D()
    args = runner.build_parser(problem).parse_args(
        ["--adam-steps", "20", "--points", "pde=60", "bc=24", "--quiet", "--no-plot", "--out", str(tmp_path)])
    metrics = runner.run(problem, args)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["problem"] == "poisson2d" and [s["name"] for s in saved["stages"]] == ["adam", "lsr"]
    for stage in saved["stages"]:
        assert {"name", "rel_l2", "max_abs_err", "residual", "seconds"} <= set(stage)
        assert math.isfinite(stage["residual"]) and stage["seconds"] >= 0
    assert saved["stages"][1]["residual"] < saved["stages"][0]["residual"]
    assert metrics["stages"][-1]["rel_l2"] == saved["stages"][-1]["rel_l2"]
    assert (tmp_path / "config.json").is_file()


def test_final_refinement_from_the_command_line(tmp_path):
    """--final-gn-iters adds the final refinement (whole space, --final-points) to the ilsr stage:
    its record is the last of the stage's history, marked final."""
    problem = Poisson2D()
    args = runner.build_parser(problem).parse_args(
        ["--adam-steps", "20", "--points", "pde=60", "bc=24", "--rank", "20", "--ilsr-outer", "1",
         "--ilsr-gn-iters", "1", "--align-iterations", "2", "--final-gn-iters", "1", "--final-points", "pde=200",
         "--quiet", "--no-plot", "--out", str(tmp_path)])
    runner.run(problem, args)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    ilsr = saved["stages"][-1]
    assert ilsr["name"] == "ilsr" and [h["final"] for h in ilsr["history"]] == [None, None, True]
    final, outer = ilsr["history"][-1], ilsr["history"][1]
    assert final["points"] == {"pde": 200, "bc": 24} and outer["points"] is None
    assert outer["rank"] == 20 and outer["gn_iterations"] == 1 and final["gn_iterations"] == 1
    assert final["rank"] == saved["n_params"]  # a small network: the whole space
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["final_gn_iters"] == 1 and config["final_points"] == ["pde=200"]


def test_gauss_newton_continued_on_more_points(tmp_path):
    """Without ILSR, --final-gn-iters continues the Gauss–Newton stage from its best z, in its subspace,
    on --final-points: the history runs on with consecutive iterations, the record names the points,
    and the continuation lowers the error the few pretraining points left."""
    problem = Poisson2D()
    args = runner.build_parser(problem).parse_args(
        ["--adam-steps", "20", "--points", "pde=40", "bc=16", "--gn-iters", "1", "--final-gn-iters", "2",
         "--final-points", "pde=300", "bc=80", "--quiet", "--no-plot", "--out", str(tmp_path)])
    runner.run(problem, args)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    gn = saved["stages"][-1]
    assert gn["name"] == "gauss_newton" and gn["final"]["points"] == {"pde": 300, "bc": 80}
    history = gn["history"]
    assert [h["iteration"] for h in history] == list(range(len(history)))
    assert len(history) == 2 + gn["final"]["iterations"] and gn["final"]["iterations"] >= 1
    assert all(a["seconds"] <= b["seconds"] for a, b in zip(history, history[1:]))
    assert gn["rel_l2"] < history[1]["rel_l2"] / 10
    assert gn["rank"] == saved["n_params"]
    # each step records the damping search: μ kept (absolute and relative to σ_max²), gain, trials
    assert history[0]["damping"] is None and history[0]["tries"] == 0
    for step in history[1:]:
        assert step["damping"] >= 0 and step["tries"] >= 1 and step["step_norm"] > 0
        assert math.isfinite(step["relative_damping"]) and (step["relative_damping"] > 0) == (step["damping"] > 0)
        assert step["gain_ratio"] is not None and step["gain_ratio"] > 0


def test_a_checkpoint_is_refined_as_it_is_unless_lbfgs_steps_are_given(tmp_path):
    """A problem whose defaults run L-BFGS after Adam: with --checkpoint the loaded network goes
    straight to the refinement, unless --lbfgs-steps asks for more training."""
    import torch

    problem = Poisson2D()
    path = tmp_path / "net.pt"
    torch.save(problem.default_model(torch.Generator().manual_seed(0)).state_dict(), path)
    defaults = {"adam_steps": 5, "lbfgs_steps": 2}
    common = ["--points", "pde=60", "bc=24", "--quiet", "--no-plot"]

    def stages(name, extra):
        out = tmp_path / name
        assert runner.main(Poisson2D, common + extra + ["--out", str(out)], defaults=defaults) == 0
        config = json.loads((out / "config.json").read_text())
        return [s["name"] for s in json.loads((out / "metrics.json").read_text())["stages"]], config["lbfgs_steps"]

    assert stages("loaded", ["--checkpoint", str(path)]) == (["checkpoint", "lsr"], 0)
    assert stages("loaded_lbfgs", ["--checkpoint", str(path), "--lbfgs-steps", "1"]) == (["checkpoint", "lbfgs", "lsr"], 1)
    assert stages("trained", []) == (["adam", "lbfgs", "lsr"], 2)
