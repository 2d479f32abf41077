"""The hand-written batched-autograd losses of scripts/bench_training.py are the problems' own losses,
so its side-by-side timings compare the same computation."""
import pytest
import torch

from pinnlsr.train import Objective
from scripts_helper import load_script

SMALL = {
    "burgers1d": dict(n_interior=12, n_boundary=6, n_initial=6, widths=(8, 8)),
    "allen_cahn1d": dict(n_interior=12, n_initial=6, widths=(8, 8)),
    "kovasznay": dict(n_interior=12, n_boundary=6, widths=(8, 8)),
    "lid_driven": dict(n_interior=12, n_boundary=6, widths=(8, 8)),
}


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_training")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_autograd_loss_equals_the_problem_loss(bench, name):
    problem = bench.PROBLEMS[name](**SMALL[name])
    gen = torch.Generator().manual_seed(0)
    model = problem.default_model(gen)
    points = problem.sample_points(gen)
    objective = Objective(problem, model, points)
    theta = objective.spec.flatten(model)
    ours = objective.value(theta)
    theirs = float(bench.autograd_loss(name, problem, model, points)())
    assert abs(theirs - ours) <= 1e-12 * ours


def test_lid_driven_autograd_loss_follows_the_gauge(bench):
    """With the one-point gauge the hand-written loss reads p(0,0), with the default its mean."""
    from problems.lid_driven import LidDriven

    for gauge_size in (0.0, 0.05):
        problem = LidDriven(gauge_size=gauge_size, **SMALL["lid_driven"])
        gen = torch.Generator().manual_seed(1)
        model = problem.default_model(gen)
        points = problem.sample_points(gen)
        objective = Objective(problem, model, points)
        ours = objective.value(objective.spec.flatten(model))
        assert abs(float(bench.autograd_loss("lid_driven", problem, model, points)()) - ours) <= 1e-12 * ours


def test_sketch_timing_compares_the_same_decomposition(bench):
    out = bench.sketch_seconds(points=300, rank=40, seed=0)
    assert out["points"] == 300 and out["rank"] == 40
    assert out["sketch_s_with_u"] > 0 and out["sketch_s_through_r"] > 0
    assert out["max_singular_value_difference"] <= 1e-12
