"""DeepONet model: evaluation modes, the instance model, residuals vs finite differences, checkpoints."""
import pytest
import torch

from pinnlsr import checkpoint as ckpt
from pinnlsr.deeponet import DeepONet, InstanceModel
from pinnlsr.operator_learning import _point_residual
from pinnlsr.residual import residual_rows
from problems.deeponet_diffusion_reaction import DeepONetDiffusionReaction, D, K


def small_net(n_outputs=1, seed=0, widths=(16, 16)):
    return DeepONet(12, 2, widths, widths, 8, n_outputs, generator=torch.Generator().manual_seed(seed))


def test_forward_is_the_cartesian_product_of_pointwise():
    gen = torch.Generator().manual_seed(1)
    for k in (1, 3):
        net = small_net(k)
        v = torch.randn(4, 12, generator=gen, dtype=torch.float64)
        x = torch.rand(7, 2, generator=gen, dtype=torch.float64)
        out = net(v, x)
        assert out.shape == ((4, 7) if k == 1 else (4, 7, k))
        paired = net.pointwise(v.repeat_interleave(7, 0), x.repeat(4, 1))
        assert torch.allclose(paired.reshape(out.shape), out, atol=1e-14)
        # the dot-product head: explicit sum of branch × trunk features plus the bias
        b, t = net.branch(v).reshape(4, 8, k), net.trunk(x).reshape(7, 8, k)
        manual = (b[:, None] * t[None]).sum(2) + net.bias
        assert torch.allclose(manual.reshape(out.shape), out, atol=1e-14)


def test_bias_is_trainable_and_shifts_output():
    net = small_net()
    assert net.bias.requires_grad
    v, x = torch.randn(2, 12, dtype=torch.float64), torch.rand(3, 2, dtype=torch.float64)
    before = net(v, x)
    with torch.no_grad():
        net.bias += 0.5
    assert torch.allclose(net(v, x), before + 0.5)


def test_instance_model_shares_the_deeponet_parameters():
    net = small_net()
    v = torch.randn(12, dtype=torch.float64)
    model = InstanceModel(net, v)
    x = torch.rand(5, 2, dtype=torch.float64)
    assert torch.allclose(model(x)[:, 0], net(v[None], x)[0], atol=1e-14)
    assert {id(p) for p in model.parameters()} == {id(p) for p in net.parameters()}
    assert [n for n, _ in model.named_buffers()] == ["branch_input"]


def test_wrong_sensor_grid_is_a_clear_error():
    net = small_net()
    with pytest.raises(ValueError, match="12 sensors"):
        InstanceModel(net, torch.randn(10, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(B, 12\)"):
        net(torch.randn(2, 10, dtype=torch.float64), torch.rand(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        InstanceModel(net, torch.full((12,), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="pair them"):
        net.pointwise(torch.randn(2, 12, dtype=torch.float64), torch.rand(3, 2, dtype=torch.float64))


def _fd_residual(net, v, x, f_val, h=1e-4):
    """Diffusion–reaction residual of the DeepONet by central finite differences."""
    def s(p):
        return net.pointwise(v[None], p[None])[0]

    ex, et = torch.tensor([h, 0.0], dtype=torch.float64), torch.tensor([0.0, h], dtype=torch.float64)
    s_t = (s(x + et) - s(x - et)) / (2 * h)
    s_xx = (s(x + ex) - 2 * s(x) + s(x - ex)) / h**2
    return s_t - D * s_xx - K * s(x) ** 2 - f_val


def test_physics_residual_matches_finite_differences():
    problem = DeepONetDiffusionReaction()
    net = DeepONet(100, 2, (20, 20), (20, 20), 10, generator=torch.Generator().manual_seed(3))
    fns = problem.sample_functions(2, torch.Generator().manual_seed(4))
    sensors = problem.sensors(fns)
    pde = next(t for t in problem.terms() if t.name == "pde")
    fn = _point_residual(net, pde.residual)
    x = torch.tensor([[0.3, 0.4], [0.71, 0.25]], dtype=torch.float64)
    for i in range(2):
        b = net.branch_features(sensors[i:i + 1])[0]
        for p in x:
            y = fns[i](p[:1])[0]
            auto = fn(b, p, y)[0]
            fd = _fd_residual(net, sensors[i], p, y[0])
            err = float((auto - fd).detach())
            assert abs(err) < 1e-5 * (1 + abs(float(fd.detach())))
    # the same residual through the instance problem (the rows LSR refines)
    inst = problem.instance(fns, 1, torch.Generator().manual_seed(0), counts={"pde": 5, "ic": 2, "bc": 2})
    model = InstanceModel(net, sensors[1])
    rows = residual_rows(inst, model, {t.name: t.points for t in inst.terms()})
    vals = rows.block_values(rows.spec.flatten(model))["pde"][:, 0]
    pts = inst.terms()[0].points
    b = net.branch_features(sensors[1:2])[0]
    direct = torch.stack([fn(b, p, fns[1](p[:1])[0])[0] for p in pts])
    assert torch.allclose(vals, direct, atol=1e-12)


def test_checkpoint_round_trip_and_wrong_architecture(tmp_path):
    net = small_net(seed=5)
    path = ckpt.save_state_dict(net, tmp_path / "net.pt")
    other = small_net(seed=6)
    ckpt.load_into(other, path)
    v, x = torch.randn(3, 12, dtype=torch.float64), torch.rand(4, 2, dtype=torch.float64)
    assert torch.equal(other(v, x), net(v, x))
    with pytest.raises(ValueError, match="does not match the model"):
        ckpt.load_into(small_net(widths=(16, 16, 16)), path)
    with pytest.raises(ValueError, match="does not match the model"):
        ckpt.load_into(DeepONet(13, 2, (16, 16), (16, 16), 8), path)
