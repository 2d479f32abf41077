import json

import pytest
import torch
from torch import nn

from pinnlsr.lsr import lsr
from pinnlsr.models import MLP, LinearizedModel, ParamSpec
from pinnlsr.problem import Term
from pinnlsr.records import Evaluation
from pinnlsr.residual import residual_rows
from pinnlsr.runner import main
from pinnlsr.train import train_adam
from problems.poisson2d import Poisson2D

from oracles import TinyPoisson, dense_output_jacobian, dense_residual_jacobian, tiny_mlp
from user_net import make_net


def small_poisson():
    problem = Poisson2D(n_interior=400, n_boundary=100)
    gen = torch.Generator().manual_seed(0)
    model = MLP(2, 1, (20, 20), generator=gen, input_lower=(0, 0), input_upper=(1, 1))
    points = problem.sample_points(gen)
    return problem, model, points


@pytest.fixture(scope="module")
def trained():
    problem, model, points = small_poisson()
    train_adam(problem, model, points, 300, lr=3e-3, progress=False)
    return problem, model, points


def test_linearized_model_equals_dense_first_order_expansion():
    model = tiny_mlp()
    spec = ParamSpec.of(model)
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(spec.numel, 5, generator=gen, dtype=torch.float64)
    z = torch.randn(5, generator=gen, dtype=torch.float64)
    lin = LinearizedModel(model, v, z)
    x = torch.rand(11, 2, generator=gen, dtype=torch.float64)
    expected = model(x).detach().reshape(-1) + dense_output_jacobian(model, x) @ (v @ z)
    assert (lin(x).reshape(-1) - expected).abs().max() <= 1e-12
    # only z is trainable; the base network is frozen
    assert [n for n, p in lin.named_parameters() if p.requires_grad] == ["z"]
    # network_at(0) is the base network, network_at(1) moves by V z
    assert torch.allclose(lin.network_at(0.0)(x), model(x))
    assert torch.allclose(ParamSpec.of(model).flatten(lin.network_at(1.0)), spec.flatten(model) + v @ z)


def test_linearized_residual_is_the_residual_of_the_predictor_for_a_linear_pde():
    """For a linear PDE, f(u_lin) = f0 + G V z exactly: checks the x-derivatives of the predictor."""
    problem = TinyPoisson()
    model = tiny_mlp()
    points = problem.sample_points(torch.Generator().manual_seed(3))
    f0, g = dense_residual_jacobian(problem, model, points)
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(g.shape[1], 4, generator=gen, dtype=torch.float64)
    z = torch.randn(4, generator=gen, dtype=torch.float64)
    lin = LinearizedModel(model, v, z)
    rows = residual_rows(problem, lin, points)
    assert (rows.values(ParamSpec.of(lin).flatten(lin)) - (f0 + g @ v @ z)).abs().max() <= 1e-10


@pytest.mark.parametrize("subspace,rank", [("full", None), ("svd", 30), ("randomized", 30)])
def test_lsr_solution_matches_dense_least_squares(subspace, rank):
    problem = TinyPoisson(n_pde=150, n_bc=50)  # 200 rows > 105 parameters: a unique minimizer
    model = tiny_mlp(widths=(8, 8))
    points = problem.sample_points(torch.Generator().manual_seed(4))
    res = lsr(problem, model, points=points, rank=rank, subspace=subspace, rcond=None)
    f0, g = dense_residual_jacobian(problem, model, points)
    a = g @ res.V
    ref = torch.linalg.lstsq(a, -f0.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    assert res.diagnostics["subspace"] == subspace
    # the whole space has cond(a) ~ 3e12 here: rounding (thread count, kernels) moves the minimal
    # residual in its sixth digit on every path, the oracle's included
    lin_res = res.diagnostics["linearized_residual"]
    assert lin_res == pytest.approx(float((a @ ref + f0).norm()), rel=1e-5, abs=1e-12)
    assert subspace != "full" or lin_res < 1e-5 * float(f0.norm())
    assert res.diagnostics["after"].residual == pytest.approx(lin_res, rel=1e-5, abs=1e-12)


def test_reduced_poisson_refines_by_orders_of_magnitude(trained):
    problem, model, points = trained
    before = ParamSpec.of(model).flatten(model).clone()
    res = lsr(problem, model, points=points)
    d = res.diagnostics
    assert d["after"].rel_l2 <= d["before"].rel_l2 / 100
    assert d["after"].rel_l2 < 1e-5
    assert d["after"].residual < d["before"].residual / 100
    assert set(d["seconds"]) >= {"residual", "basis", "jacobian", "solve", "total"}
    assert torch.equal(ParamSpec.of(model).flatten(model), before), "the caller's model must be untouched"
    # randomized subspace of moderate rank also refines strongly
    res_r = lsr(problem, model, points=points, rank=200, subspace="randomized", seed=1)
    assert res_r.diagnostics["after"].rel_l2 <= d["before"].rel_l2 / 100
    assert res_r.diagnostics["subspace"] == "randomized"


def test_matrix_free_and_explicit_give_the_same_refinement(trained):
    problem, model, points = trained
    kw = dict(points=points, rank=60, subspace="randomized", seed=3)
    a = lsr(problem, model, jacobian_mode="explicit", **kw)
    b = lsr(problem, model, jacobian_mode="matrix_free", **kw)
    assert torch.allclose(a.z, b.z, rtol=1e-6, atol=1e-8)


def test_user_module_refined_through_checkpoint(tmp_path, monkeypatch):
    problem = Poisson2D(n_interior=300, n_boundary=80)
    net = make_net()
    points = problem.sample_points(torch.Generator().manual_seed(0))
    train_adam(problem, net, points, 200, lr=3e-3, progress=False)
    path = tmp_path / "user.pt"
    torch.save(net.state_dict(), path)
    out = tmp_path / "run"
    code = main(Poisson2D, ["--checkpoint", str(path), "--model", "tests/user_net.py:make_net",
                            "--points", "pde=300", "bc=80", "--out", str(out), "--quiet", "--no-plot"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    names = [s["name"] for s in metrics["stages"]]
    assert names == ["checkpoint", "lsr"]
    start, end = metrics["stages"][0]["rel_l2"], metrics["stages"][1]["rel_l2"]
    assert end <= start / 100
    assert metrics["n_params"] == ParamSpec.of(net).numel
    for key in ("problem", "seed", "device", "dtype"):
        assert key in metrics
    for stage in metrics["stages"]:
        assert {"name", "rel_l2", "max_abs_err", "residual", "seconds"} <= set(stage)


# ---------------------------------------------------------------- bad input

class LogProblem(TinyPoisson):
    def pde(self, u, x):
        return torch.log(u(x)[0] - 1e6)  # negative argument: NaN


def test_nan_in_model_names_the_parameter():
    problem, model, points = small_poisson()
    with torch.no_grad():
        model.net[0].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="net.0.weight"):
        lsr(problem, model, points=points)


def test_nan_in_residual_names_the_term():
    problem = LogProblem()
    with pytest.raises(FloatingPointError, match="'pde'"):
        lsr(problem, tiny_mlp())


def test_rank_above_parameter_count_is_clipped_with_warning():
    problem = TinyPoisson(n_pde=40, n_bc=20)
    model = tiny_mlp()
    m = ParamSpec.of(model).numel
    with pytest.warns(UserWarning, match="clipped"):
        res = lsr(problem, model, rank=m + 50, subspace="svd")
    assert res.diagnostics["rank"] <= m
    with pytest.raises(ValueError, match="rank must be >= 1"):
        lsr(problem, model, rank=0, subspace="svd")


def test_empty_points_and_unknown_terms():
    problem = TinyPoisson()
    pts = problem.sample_points(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="empty"):
        lsr(problem, tiny_mlp(), points={"pde": torch.zeros(0, 2), "bc": pts["bc"]})
    with pytest.raises(ValueError, match="missing"):
        lsr(problem, tiny_mlp(), points={"pde": pts["pde"]})
    with pytest.raises(ValueError, match="empty point set"):
        problem.sample_points(torch.Generator(), counts={"pde": 0})
    with pytest.raises(ValueError, match="unknown terms"):
        problem.sample_points(torch.Generator(), counts={"interior": 10})


def test_dimension_mismatch_between_problem_and_model():
    problem = TinyPoisson()
    with pytest.raises(ValueError, match="model failed on points of shape"):
        lsr(problem, MLP(3, 1, (5,)))
    with pytest.raises(ValueError, match=r"expects \(N, 1\)"):
        lsr(problem, MLP(2, 2, (5,)))


def test_dtype_and_device_errors():
    problem = TinyPoisson()
    model = tiny_mlp()
    pts = problem.sample_points(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="float32"):
        residual_rows(problem, model.float(), pts)
    with pytest.raises(ValueError, match="dtype must be"):
        lsr(problem, tiny_mlp(), dtype=torch.float16)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            lsr(problem, tiny_mlp(), device="cuda")
    # a float32 model is refined in float64 on a copy
    res = lsr(problem, tiny_mlp().float(), points=pts)
    assert res.model.theta0.dtype == torch.float64


class BadReference(TinyPoisson):
    def exact(self, x):
        return torch.zeros(x.shape[0], 2, dtype=x.dtype)


def test_reference_with_wrong_shape():
    with pytest.raises(ValueError, match="reference values"):
        lsr(BadReference(), tiny_mlp())


def test_checkpoint_errors(tmp_path):
    problem = Poisson2D(n_interior=50, n_boundary=20)
    bad = tmp_path / "pickled.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "obj": nn.Linear(1, 1)}, bad)
    assert main(Poisson2D, ["--checkpoint", str(bad), "--quiet", "--no-plot"]) == 2
    wrong = tmp_path / "wrong.pt"
    torch.save(MLP(2, 1, (7,)).state_dict(), wrong)
    assert main(Poisson2D, ["--checkpoint", str(wrong), "--quiet", "--no-plot"]) == 2
    assert main(Poisson2D, ["--checkpoint", str(tmp_path / "missing.pt"), "--quiet"]) == 2

    from pinnlsr import checkpoint as ckpt
    with pytest.raises(ValueError, match="refuses to execute"):
        ckpt.load_state_dict(bad)
    with pytest.raises(ValueError, match="does not match the model"):
        ckpt.load_into(problem.default_model(), wrong)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.load_state_dict(tmp_path / "missing.pt")


class Cubic(TinyPoisson):
    """u³ = 8 everywhere: strongly nonlinear around a network with outputs near zero."""

    def terms(self):
        pts = torch.rand(30, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return [Term("cubic", lambda u, x: u(x)[0] ** 3 - 8.0, pts)]


def test_lsr_warns_when_the_predictor_residual_grows():
    model = tiny_mlp()
    with torch.no_grad():
        model.net[-1].bias.fill_(0.05)
    with pytest.warns(RuntimeWarning, match="raised the residual of the predictor"):
        res = lsr(Cubic(), model, compute_errors=False)
    assert res.diagnostics["after"].residual > res.diagnostics["before"].residual


def test_mlp_first_layer_scale_multiplies_only_the_first_weights():
    plain = MLP(2, 1, (7, 5), "sin", generator=torch.Generator().manual_seed(3))
    scaled = MLP(2, 1, (7, 5), "sin", generator=torch.Generator().manual_seed(3), first_layer_scale=4.0)
    a, b = dict(plain.named_parameters()), dict(scaled.named_parameters())
    assert torch.equal(b["net.0.weight"], 4.0 * a["net.0.weight"])
    for name in a:
        if name != "net.0.weight":
            assert torch.equal(a[name], b[name])
    with pytest.raises(ValueError, match="first_layer_scale"):
        MLP(2, 1, (7,), first_layer_scale=0.0)


def test_trainers_call_back_at_logged_steps_and_stop_at_max_seconds():
    from pinnlsr.train import train_lbfgs

    problem = Poisson2D(n_interior=64, n_boundary=32)
    gen = torch.Generator().manual_seed(0)
    model = MLP(2, 1, (8,), generator=gen, input_lower=(0, 0), input_upper=(1, 1))
    points = problem.sample_points(gen)
    seen = []
    hist = train_adam(problem, model, points, 12, lr=1e-3, progress=False, log_every=5,
                      callback=lambda step, loss: seen.append((step, loss)))
    assert [s for s, _ in seen] == [0, 5, 10, 11] == hist.step
    # max_seconds = 0 stops at the first logged step, however many steps were asked for
    seen.clear()
    hist = train_adam(problem, model, points, 10**6, progress=False, log_every=3, max_seconds=0.0,
                      callback=lambda step, loss: seen.append(step))
    assert seen == [0] and hist.step == [0]
    before = float(residual_rows(problem, model, points).values(ParamSpec.of(model).flatten(model)).norm())
    hist = train_lbfgs(problem, model, points, 10**6, progress=False, log_every=1, max_seconds=0.0,
                       callback=lambda it, loss: seen.append(("lbfgs", it)))
    assert seen[-1] == ("lbfgs", 0) and hist.step == [0]
    after = float(residual_rows(problem, model, points).values(ParamSpec.of(model).flatten(model)).norm())
    assert after < before


def test_before_and_after_are_one_record_each():
    problem = TinyPoisson(n_pde=40, n_bc=16)
    d = lsr(problem, tiny_mlp(), points=problem.sample_points(torch.Generator().manual_seed(0))).diagnostics
    before, after = d["before"], d["after"]
    assert isinstance(before, Evaluation) and isinstance(after, Evaluation)
    assert set(after.errors) == {"rel_l2", "max_abs_err"} and set(before.errors) == set(after.errors)
    assert after.residual < before.residual and set(after.terms) == set(before.terms) == {"pde", "bc"}
    # the flat keys users print are written from the records, one for each quantity
    flat = {**before.flat("before"), **after.flat("after")}
    assert {k: d[k] for k in flat} == flat and "errors_after" not in d
    assert (d["rel_l2_after"], d["residual_before"]) == (after.rel_l2, before.residual)
