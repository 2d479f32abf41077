"""Time marching of Iterative LSR: windows keep the problem's points inside [t0, T], marching runs
window after window from the aligned network, and an interrupted run resumes with the same history."""
import json

import numpy as np
import pytest
import torch

from pinnlsr.marching import TimeWindow, time_marching_lsr
from pinnlsr.problem import Term
from problems.allen_cahn1d import AllenCahn1D
from problems.helmholtz2d import Helmholtz2D

ILSR = dict(outer_iterations=1, rank=8, gn_iterations=2, align_iterations=2)


def small_allen_cahn():
    return AllenCahn1D(n_interior=40, n_initial=10, widths=(6,))


def test_window_squeezes_sampled_times_and_filters_fixed_points():
    problem = small_allen_cahn()
    window = TimeWindow(problem, 0.25)
    points = window.sample_points(torch.Generator().manual_seed(0))
    assert float(points["pde"][:, 1].max()) <= 0.25 and float(points["pde"][:, 1].min()) >= 0.0
    assert float(points["pde"][:, 0].max()) > 0.5  # space untouched
    assert torch.all(points["ic"][:, 1] == 0)
    # errors of a window are measured where it is fitted: the reference points with t <= 0.25
    x_ref, u_ref = problem.reference()
    x_win, u_win = window.reference()
    inside = x_ref[:, 1] <= 0.25
    assert float(x_win[:, 1].max()) == pytest.approx(0.25, abs=1e-9) and torch.equal(x_win, x_ref[inside])
    assert torch.equal(u_win, u_ref[inside])

    x = torch.tensor([[0.0, 0.1], [0.0, 0.9]], dtype=torch.float64)
    y = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    problem.terms = lambda: [Term("data", lambda u, x, y: u(x) - y, x, targets=y)]
    (term,) = TimeWindow(problem, 0.5).terms()
    assert term.points.shape == (1, 2) and float(term.targets[0, 0]) == 1.0
    assert TimeWindow(problem, 0.05).terms() == []  # no fixed point inside: the term is left out


def test_window_needs_a_time_domain_and_an_end_inside_it():
    with pytest.raises(ValueError, match="TimeDomain"):
        TimeWindow(Helmholtz2D(), 0.5)
    with pytest.raises(ValueError, match=r"window end 1.5 must lie in"):
        TimeWindow(small_allen_cahn(), 1.5)
    model = small_allen_cahn().default_model(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="increasing"):
        time_marching_lsr(small_allen_cahn(), model, [0.5, 0.25, 1.0], **ILSR)
    with pytest.raises(ValueError, match="must end at t1"):
        time_marching_lsr(small_allen_cahn(), model, [0.5], **ILSR)


def test_marching_runs_each_window_from_the_aligned_network_and_resumes(tmp_path):
    problem = small_allen_cahn()
    model = problem.default_model(torch.Generator().manual_seed(0))
    seen = []
    res = time_marching_lsr(problem, model, [0.5, 1.0], checkpoint_dir=tmp_path / "a", callback=seen.append, **ILSR)
    assert [h["window"] for h in res.history] == [0.5, 0.5, 1.0, 1.0]
    assert [h["iteration"] for h in res.history] == [0, 1, 0, 1]
    assert seen == res.history
    assert [w["window"] for w in res.diagnostics["windows"]] == [0.5, 1.0]
    assert res.history[res.best_iteration]["window"] == 1.0  # the index is into the joined history
    # Window 2 starts where window 1 left the network: its iteration-0 error is that network's
    # (saved in window 1's checkpoint) on the whole interval.
    from pinnlsr.metrics import model_errors

    left = problem.default_model(torch.Generator().manual_seed(1))
    left.load_state_dict(torch.load(tmp_path / "a" / "ilsr_window0.pt", weights_only=True)["model"])
    assert res.history[2]["rel_l2"] == pytest.approx(model_errors(problem, left, torch.float64, "cpu")["rel_l2"],
                                                     rel=1e-10)

    # Interrupted after window 1: a run with only its checkpoint resumes and matches.
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "ilsr_window0.pt").write_bytes((tmp_path / "a" / "ilsr_window0.pt").read_bytes())
    fresh = problem.default_model(torch.Generator().manual_seed(0))
    again = time_marching_lsr(problem, fresh, [0.5, 1.0], checkpoint_dir=tmp_path / "b", **ILSR)
    keys = ("window", "iteration", "residual", "validation_residual", "rel_l2")
    assert [[h[k] for k in keys] for h in again.history] == [[h[k] for k in keys] for h in res.history]


def test_runner_time_windows_stage(tmp_path):
    from pinnlsr.runner import main

    out = tmp_path / "run"
    argv = ["--points", "pde=40", "ic=10", "--adam-steps", "5", "--lbfgs-steps", "0", "--rank", "8",
            "--ilsr-outer", "1", "--align-iterations", "2", "--time-windows", "0.5", "1", "--quiet", "--no-plot",
            "--out", str(out)]
    assert main(lambda: AllenCahn1D(widths=(6,)), argv=argv) == 0
    stage = json.loads((out / "metrics.json").read_text())["stages"][-1]
    assert stage["name"] == "ilsr" and [w["window"] for w in stage["windows"]] == [0.5, 1.0]
    assert [h["window"] for h in stage["history"]] == [0.5, 0.5, 1.0, 1.0]
    assert (out / "ilsr_window1.pt").is_file()
    # the ILSR predictor is saved with the others, and its error is the stage's
    with np.load(out / "predictions.npz", allow_pickle=False) as data:
        assert [k for k in data.files if k.startswith("pred_")] == ["pred_adam", "pred_lsr", "pred_ilsr"]
        ref, pred = data["reference"], data["pred_ilsr"]
    assert np.linalg.norm(pred - ref) / np.linalg.norm(ref) == pytest.approx(stage["rel_l2"], rel=1e-6)


def test_last_window_has_its_own_rank_outer_iterations_and_points(tmp_path):
    from pinnlsr.marching import refine_from_points

    problem = small_allen_cahn()
    model = problem.default_model(torch.Generator().manual_seed(0))
    last = {"rank": 12, "outer_iterations": 2, "counts": {"pde": 60}}
    res = time_marching_lsr(problem, model, [0.5, 1.0], checkpoint_dir=tmp_path, last_window=last, **ILSR)
    assert [(h["window"], h["iteration"]) for h in res.history] == [(0.5, 0), (0.5, 1), (1.0, 0), (1.0, 1), (1.0, 2)]
    assert [h.get("rank") for h in res.history if h["iteration"] > 0] == [8, 12, 12]
    first, second = (torch.load(tmp_path / f"ilsr_window{k}.pt", weights_only=True)["points"] for k in (0, 1))
    assert (first["pde"].shape[0], first["ic"].shape[0]) == (40, 10)
    assert (second["pde"].shape[0], second["ic"].shape[0]) == (60, 10)  # terms not named keep their count
    with pytest.raises(ValueError, match=r"\['ranks'\] are not arguments of iterative_lsr"):
        time_marching_lsr(problem, model, [1.0], last_window={"ranks": 3}, **ILSR)
    with pytest.raises(ValueError, match="needs time_windows"):
        refine_from_points(problem, model, problem.sample_points(torch.Generator()), last_window=last, **ILSR)


def test_runner_last_window_flags(tmp_path):
    from pinnlsr.runner import main

    out = tmp_path / "run"
    argv = ["--points", "pde=40", "ic=10", "--adam-steps", "5", "--lbfgs-steps", "0", "--rank", "8",
            "--ilsr-outer", "1", "--align-iterations", "2", "--time-windows", "0.5", "1", "--quiet", "--no-plot",
            "--last-window-rank", "12", "--last-window-outer", "2", "--last-window-points", "pde=60", "--out", str(out)]
    assert main(lambda: AllenCahn1D(widths=(6,)), argv=argv) == 0
    stage = json.loads((out / "metrics.json").read_text())["stages"][-1]
    assert [(h["window"], h["iteration"]) for h in stage["history"]][-3:] == [(1.0, 0), (1.0, 1), (1.0, 2)]
    assert torch.load(out / "ilsr_window1.pt", weights_only=True)["points"]["pde"].shape[0] == 60
    # without time windows the flags have nothing to apply to: a clear error, no run
    at = argv.index("--time-windows")
    argv_plain = argv[:at] + argv[at + 3:]
    assert main(lambda: AllenCahn1D(widths=(6,)), argv=argv_plain + ["--out", str(tmp_path / "plain")]) == 2
