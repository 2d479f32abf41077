"""Batched per-instance refinement of PI-DeepONets: the stacked rows, products and dense algebra
against dense per-instance oracles, and the whole refinement against the one-instance loop."""
import math

import pytest
import torch

from pinnlsr import jacobian as jac
from pinnlsr.deeponet import InstanceModel
from pinnlsr.gauss_newton import ValidationStop
from pinnlsr.instance_batch import BatchOperator, InstanceBatch
from pinnlsr.models import LinearizedModel, ShiftedNetwork
from pinnlsr.operator_batched import BlockRefiner, Config, instances_per_block
from pinnlsr.operator_learning import refine_instances, train_pideeponet
from pinnlsr.residual import residual_rows
from pinnlsr.records import Evaluation
from pinnlsr.solvers import DampedLeastSquares, DampingSearch, gain_ratio
from pinnlsr.subspace import scaled_directions, sketch_svd
from problems.deeponet_antiderivative import DeepONetAntiderivative
from problems.deeponet_burgers import DeepONetBurgers
from scripts_helper import load_script

COUNTS = {"pde": 150, "ic": 20, "bc": 20}


def tiny(problem, steps=20, widths=(12, 12), latent=10):
    """(problem, a DeepONet after a few Adam steps, 4 test functions, their references)."""
    net = problem.default_deeponet(torch.Generator().manual_seed(0), widths=widths, latent=latent)
    train = problem.sample_functions(20, torch.Generator().manual_seed(1))
    train_pideeponet(problem, net, train, steps, batch_size=4, lr=2e-3, generator=torch.Generator().manual_seed(2),
                     printer=None)
    test = problem.sample_functions(4, torch.Generator().manual_seed(3))
    return problem, net, test, problem.references(test)


@pytest.fixture(scope="module")
def burgers():
    return tiny(DeepONetBurgers(n_test_x=16, n_test_t=6))


def assert_same_records(loop, batched, tol=1e-9):
    assert len(loop) == len(batched)
    for a, b in zip(loop, batched):
        assert set(a) == set(b)
        for key, value in a.items():
            if key.startswith("seconds") or key == "peak_memory_gb":
                continue
            if isinstance(value, Evaluation):  # the batched path measures rel_l2, max_abs_err and the residual
                assert value.max_abs_err is not None or value.rel_l2 is None, key
                for field in ("rel_l2", "max_abs_err", "residual"):
                    assert getattr(b[key], field) == pytest.approx(getattr(value, field), rel=tol, abs=1e-300), (key, field)
            elif isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=tol, abs=1e-300), key
            else:
                assert b[key] == value, key


# ---------------------------------------------------------------------------------------------
# Stacked rows and products against dense per-instance Jacobians
# ---------------------------------------------------------------------------------------------
def test_stacked_rows_values_and_shifted_rows_match_each_instance(burgers):
    """Rows (B, n, m) of three Burgers instances (periodic term: u at shifted points) in small
    chunks equal vmap(jacrev) rows of each instance's own residual; with a step δ_i, the rows
    and values of its shifted network and the values and outputs of its predictor."""
    problem, net, test, _ = burgers
    counts = {"pde": 5, "ic": 3, "bc": 4}
    refiner = BlockRefiner(problem, net, test, problem.sensors(test), None, 6, 0, counts, Config())
    index = [0, 2, 3]
    instances = [refiner.instance(i) for i in index]
    blocks = refiner.blocks(instances)
    batch = InstanceBatch(refiner.model, refiner.sensors[index], refiner.theta)
    theta, m = refiner.theta, refiner.m
    delta = 1e-2 * torch.randn(len(index), m, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    budget = 3 * len(index) * 2 * (2 * batch.rest_theta.shape[0] + 1) * 8  # a few points per chunk
    dense = {}
    for shifted in (False, True):
        op = BatchOperator(batch, blocks, budget, delta if shifted else None)
        assert len(list(op.chunks())) > len(blocks)
        chunks = [rows for _, rows in op.chunks()]
        dense[shifted] = (torch.cat([batch.dense(c) for c in chunks], 1), torch.cat([c.values for c in chunks], 1))
    x = problem.test_points()
    for j, (i, inst) in enumerate(zip(index, instances)):
        model = InstanceModel(refiner.model.deeponet, refiner.sensors[i])
        points = {t.name: t.points for t in inst.terms()}
        rows = residual_rows(inst, model, points)
        assert torch.allclose(dense[False][0][j], jac.jacobian(rows, theta), rtol=1e-12, atol=1e-12)
        assert torch.allclose(dense[False][1][j], rows.values(theta), rtol=1e-12, atol=1e-13)
        predictor = LinearizedModel(model, torch.eye(m, dtype=torch.float64), delta[j])
        shifted = ShiftedNetwork(predictor)
        rows_s = residual_rows(inst, shifted, points)
        assert torch.allclose(dense[True][0][j], jac.jacobian(rows_s, theta), rtol=1e-12, atol=1e-12)
        assert torch.allclose(dense[True][1][j], rows_s.values(theta), rtol=1e-12, atol=1e-13)
        assert torch.allclose(batch.outputs(x, delta)[j], predictor(x), rtol=1e-12, atol=1e-13)
    assert torch.allclose(BatchOperator(batch, blocks, budget, delta).values(), dense[True][1], rtol=1e-12, atol=1e-13)
    # the products are the dense ones
    op = BatchOperator(batch, blocks, budget)
    v = torch.randn(len(index), m, 3, dtype=torch.float64)
    w = torch.randn(len(index), op.shape[0], 2, dtype=torch.float64)
    assert torch.allclose(op.matmul(v), dense[False][0] @ v, rtol=1e-12, atol=1e-12)
    assert torch.allclose(op.rmatmul(w), dense[False][0].mT @ w, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Stacked dense algebra against one system at a time
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [40, 12])  # tall (through the R factor) and not
def test_stacked_damped_least_squares_match_each_system(n):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, n, 8, generator=gen, dtype=torch.float64)
    a[1, :, 5] = 0.0  # a rank-deficient system: its own count of singular values
    b = torch.randn(3, n, generator=gen, dtype=torch.float64)
    mu = torch.tensor([0.0, 1e-3, 0.5], dtype=torch.float64)
    stack = DampedLeastSquares(a, b, rcond=1e-10)
    z = stack.solve(mu)
    for i in range(3):
        one = DampedLeastSquares(a[i], b[i], rcond=1e-10)
        assert int(stack.rank_used[i]) == one.rank_used
        assert float(stack.sigma_max[i]) == pytest.approx(one.sigma_max, rel=1e-13)
        assert float(stack.cond[i]) == pytest.approx(one.cond, rel=1e-12)
        assert torch.allclose(z[i], one.solve(float(mu[i])), rtol=1e-11, atol=1e-12)
        assert float(stack.residual_norm(z)[i]) == pytest.approx(one.residual_norm(z[i]), rel=1e-12)
    assert int(stack.rank_used[1]) == 7 and int(stack.rank_used[0]) == 8
    # from the R factors of [A | b]: the same steps
    r_aug = torch.linalg.qr(torch.cat([a, b.unsqueeze(-1)], -1), mode="r")[1][:, :9]
    if n >= 9:
        factor = DampedLeastSquares.from_factor(r_aug, n, rcond=1e-10)
        assert torch.allclose(factor.solve(mu), z, rtol=1e-10, atol=1e-11)
        assert torch.allclose(factor.residual_norm(z), stack.residual_norm(z), rtol=1e-12)
    with pytest.raises(ValueError, match=r"b must have shape \(3, "):
        DampedLeastSquares(a, b[:, :-1])


def test_stacked_damping_search_and_validation_stop_follow_the_scalar_ones():
    """Each system of a stack runs its own damping search under masks: the kept steps, dampings
    and next centres equal those of the scalar search on each system; an inactive system keeps
    none; the masked validation stop records each system's best."""
    gen = torch.Generator().manual_seed(3)
    u, _ = torch.linalg.qr(torch.randn(3, 40, 6, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(3, 6, 6, generator=gen, dtype=torch.float64))
    a = u @ torch.diag_embed(torch.logspace(0, -10, 6, dtype=torch.float64).expand(3, 6)) @ v.mT
    b = torch.randn(3, 40, generator=gen, dtype=torch.float64)
    target = torch.randn(3, 6, generator=gen, dtype=torch.float64)  # a held-out score per system
    limits = torch.tensor([math.inf, 30.0, math.inf], dtype=torch.float64)  # system 1: long steps overflow
    norms = lambda d: torch.where(d.norm(dim=-1) < limits, ((a @ d.unsqueeze(-1)).squeeze(-1) - b).norm(dim=-1), math.inf)
    scores = lambda d: (d - target).norm(dim=-1)
    stack = DampedLeastSquares(a, b, rcond=1e-14)
    active = torch.tensor([True, True, False])
    search = DampingSearch(1e-6)
    kept, found = search.choose_stack(stack, b.norm(dim=-1), active, lambda d: (norms(d), d), lambda d, _: scores(d))
    assert found.tolist() == [True, True, False]
    for i in range(2):
        one = DampedLeastSquares(a[i], b[i], rcond=1e-14)
        lone = DampingSearch(1e-6)
        trial, _, _ = lone.choose(one, float(b[i].norm()), lambda d: (float(norms(d.expand(3, 6))[i]), None),
                                  lambda d, _: float(scores(d.expand(3, 6))[i]))
        assert float(kept["mu"][i]) == pytest.approx(trial.mu, rel=1e-12)
        assert torch.allclose(kept["delta"][i], trial.delta, rtol=1e-9, atol=1e-12)
        assert float(search.mu[i]) == pytest.approx(lone.mu, rel=1e-12)
    assert bool((kept["delta"][2] == 0).all()) and float(search.mu[2]) == pytest.approx(1e-6 * float(stack.sigma_max[2]) ** 2)
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    assert gain_ratio(t(2.0, 2.0), t(1.0, 1.0), t(2.0, 0.5)).tolist() == [gain_ratio(2.0, 1.0, 2.0), gain_ratio(2.0, 1.0, 0.5)]
    # validation: run 0 improves then stalls (patience 2), run 1 converges, run 2 is not updated
    z = torch.zeros(3, 2, dtype=torch.float64)
    best = ValidationStop(z, torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), patience=2, tol=1e-3)
    where = torch.tensor([True, True, False])
    out = best.update_masked(1, z + 1, torch.tensor([0.5, 0.7, 0.1]), torch.ones(3), torch.tensor([0.1, 1e-6, 0.1]), where)
    assert [m.tolist() for m in out] == [[False, True, False], [False, False, False]]
    out = best.update_masked(2, z + 2, torch.tensor([0.6, 0.7, 0.1]), torch.ones(3), torch.full((3,), 0.1), where)
    out = best.update_masked(3, z + 3, torch.tensor([0.6, 0.7, 0.1]), torch.ones(3), torch.full((3,), 0.1), where)
    assert out[1].tolist() == [True, True, False] and best.iteration.tolist() == [1, 1, 0]
    assert best.z[:, 0].tolist() == [1.0, 1.0, 0.0]


class DenseStack:
    """Stacked dense Jacobians G (B, n, m) as a sketch operator."""

    def __init__(self, g):
        self.g, self.theta, self.shape = g, g[0, 0], tuple(g.shape[1:])

    def matmul(self, v):
        return self.g @ v

    def rmatmul(self, w):
        return self.g.mT @ w


class Dense:
    def __init__(self, g):
        self.g, self.theta, self.shape = g, g[0], tuple(g.shape)

    def matmul(self, v):
        return self.g @ v

    def rmatmul(self, w):
        return self.g.T @ w


@pytest.mark.parametrize("power_iterations", [0, 1])
def test_stacked_sketch_and_scaled_directions_match_each_instance(power_iterations):
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(3, 30, 20, generator=gen, dtype=torch.float64)
    omega = torch.randn(3, 30, 9, generator=gen, dtype=torch.float64)
    w, s, _ = sketch_svd(DenseStack(g), 6, 3, power_iterations, omega=omega)
    v, r = scaled_directions(w, s, 6, True, 0.0)
    for i in range(3):
        wi, si, _ = sketch_svd(Dense(g[i]), 6, 3, power_iterations, omega=omega[i])
        vi, ri = scaled_directions(wi, si, 6, True, 0.0)
        assert torch.allclose(s[i], si, rtol=1e-12) and int(r[i]) == ri == 6
        assert torch.allclose(v[i] @ v[i].T, vi @ vi.T, rtol=1e-9, atol=1e-12)  # the same scaled subspace
    # a system with fewer directions than the rank keeps its own count; the rest are zero columns
    s2 = s.clone()
    s2[2, 4:] = 0.0
    v2, r2 = scaled_directions(w, s2, 6, True, 0.0)
    assert r2.tolist() == [6, 6, 4] and bool((v2[2, :, 4:] == 0).all()) and torch.equal(v2[:2], v[:2])


def test_block_size_follows_the_memory_budget():
    args = dict(n_rows=1150, n_out=1050, m=20000, width=410, q_max=2, itemsize=8)
    assert instances_per_block(100, budget=2**50, **args) == 100
    assert instances_per_block(100, budget=2**20, **args) == 1
    per = instances_per_block(100, budget=2 * 2**30, **args)
    assert 1 < per < 100 and instances_per_block(100, budget=4 * 2**30, **args) >= 2 * per - 1


# ---------------------------------------------------------------------------------------------
# The whole refinement: the batched path gives the loop's records
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gauss_newton", [0, 5])
def test_batched_burgers_refinement_matches_the_loop(burgers, gauss_newton):
    """Burgers (nonlinear, periodic) with LSR and with Gauss–Newton (validation stops and best
    iterates that differ between instances), in blocks of 3 and 1: every record equals the
    loop's to 1e-9, and the kept predictors predict alike."""
    problem, net, test, refs = burgers
    kw = dict(rank=10, seed=0, counts=COUNTS, gauss_newton=gauss_newton, keep_models=2)
    loop = refine_instances(problem, net, test, refs, mode="loop", **kw)
    batched = refine_instances(problem, net, test, refs, block_size=3, **kw)
    assert (loop["path"], batched["path"], batched["block_size"]) == ("loop", "batched", 3)
    assert_same_records(loop["instances"], batched["instances"])
    if gauss_newton:
        rows = loop["instances"]
        assert len({r["best_iteration"] for r in rows}) > 1 and len({r["stop_reason"] for r in rows}) > 1
        assert max(r["best_iteration"] for r in rows) > 1
    x = problem.test_points()
    for a, b in zip(loop["models"], batched["models"]):
        assert torch.allclose(a(x), b(x), rtol=1e-9, atol=1e-12)


def test_batched_steps_refused_everywhere_stop_like_the_loop(burgers):
    """rcond = 1 drops every direction: each trial step is zero and refused, so every instance
    stops at its first iteration ("no_decrease") with the pretrained prediction, as in the loop."""
    problem, net, test, refs = burgers
    kw = dict(rank=6, counts={"pde": 40, "ic": 10, "bc": 10}, gauss_newton=3, max_tries=2, rcond=1.0)
    loop = refine_instances(problem, net, test[:3], refs[:3], mode="loop", **kw)["instances"]
    batched = refine_instances(problem, net, test[:3], refs[:3], **kw)["instances"]
    assert_same_records(loop, batched)
    assert {(r["stop_reason"], r["iterations"], r["best_iteration"], r["linearized_residual"]) for r in batched} == {
        ("no_decrease", 1, 0, None)}


def test_batched_antiderivative_refinement_matches_the_loop():
    """A linear problem solved to a 1e-5 error: its rel_l2_after moves by up to 3e-7 between the
    loop's own two Jacobian backends (jets and vmap(jacrev)), so the batched path is held to 1e-6."""
    problem, net, test, refs = tiny(DeepONetAntiderivative(n_test_points=50), steps=10)
    loop = refine_instances(problem, net, test, refs, rank=12, seed=3, mode="loop")["instances"]
    batched = refine_instances(problem, net, test, refs, rank=12, seed=3, block_size=4)["instances"]
    assert_same_records(loop, batched, tol=1e-6)
    assert all(row["after"].rel_l2 < 1e-3 * row["before"].rel_l2 for row in batched)


def test_float32_and_budget_sized_blocks(burgers):
    problem, net, test, refs = burgers
    kw = dict(rank=10, counts=COUNTS, dtype=torch.float32)
    loop = refine_instances(problem, net, test, refs, mode="loop", **kw)["instances"]
    out = refine_instances(problem, net, test, refs, memory_budget=4 * 2**20, **kw)
    assert out["path"] == "batched" and 1 <= out["block_size"] < 4
    for a, b in zip(loop, out["instances"]):
        assert b["after"].residual == pytest.approx(a["after"].residual, rel=1e-3)
        assert b["after"].rel_l2 == pytest.approx(a["after"].rel_l2, rel=1e-3)


def test_settings_the_batched_path_does_not_cover_run_the_loop(burgers):
    problem, _, test, refs = burgers
    gelu = problem.default_deeponet(torch.Generator().manual_seed(0), widths=(8, 8), latent=6)
    gelu.trunk.net[1] = torch.nn.GELU()
    gelu.trunk.net[3] = torch.nn.GELU()
    counts = {"pde": 30, "ic": 10, "bc": 10}
    out = refine_instances(problem, gelu, test[:2], refs[:2], rank=5, counts=counts)
    assert out["path"] == "loop" and "generic" in out["path_reason"]
    out = refine_instances(problem, gelu, test[:1], None, rank=5, counts=counts, solver="qr")
    assert out["path"] == "loop" and "solver='qr'" in out["path_reason"]
    with pytest.raises(ValueError, match="mode must be"):
        refine_instances(problem, gelu, test[:1], None, rank=5, mode="vmap")
    with pytest.raises(ValueError, match="block_size"):
        refine_instances(problem, gelu, test[:1], None, rank=5, block_size=0)


def test_benchmark_compares_the_two_paths(tmp_path):
    """scripts/benchmark_deeponet.py --compare-refinement on a tiny network: both paths run on the
    same instances, the records agree and refinement.json has the times and their ratio."""
    import json

    from pinnlsr.settings import OperatorSettings

    bench = load_script("benchmark_deeponet")
    args = bench.build_parser().parse_args(["--compare-refinement", "--n-test", "2", "--loop-instances", "1",
                                            "--adam-steps", "3", "--rank", "8", "--out", str(tmp_path)])
    settings = OperatorSettings(widths=(8, 8), latent=6, n_train=10, batch_size=2, gn_iters=2)
    out = bench.compare_refinement(args, settings, {"pde": 40, "ic": 10, "bc": 10}, DeepONetBurgers(8, 4))
    written = json.loads((tmp_path / "refinement.json").read_text())
    assert written["loop"]["instances"] == 1 and written["batched"]["instances"] == 2
    assert (written["loop"]["path"], written["batched"]["path"]) == ("loop", "batched")
    assert written["speedup_per_instance"] == pytest.approx(
        written["loop"]["seconds_per_instance"] / written["batched"]["seconds_per_instance"])
    assert max(out["max_relative_difference"].values()) < 1e-9 and "first 1 of the 2" in written["note"]
    means = written["on_the_loop_instances"]["rel_l2_after_mean"]
    assert means["batched"] == pytest.approx(means["loop"], rel=1e-9)
    assert (tmp_path / "burgers" / "model.pt").is_file()
