"""pinnlsr.models: parameter vectors, MLPs, the refined predictor and the shifted network (float64,
against torch.func oracles on tiny networks)."""
import pytest
import torch
from torch.func import functional_call, jvp

from pinnlsr.models import MLP, FeatureMLP, LinearizedModel, ParamSpec, ShiftedNetwork


def tiny(seed=0, **kw):
    return MLP(2, 1, (5, 4), "tanh", generator=torch.Generator().manual_seed(seed), **kw)


def test_param_spec_round_trips_the_parameters():
    model = tiny()
    spec = ParamSpec.of(model)
    theta = spec.flatten(model)
    assert theta.shape == (spec.numel,) and spec.numel == sum(p.numel() for p in model.parameters())
    params = spec.unflatten(2 * theta)
    assert set(params) == {n for n, _ in model.named_parameters()}
    other = tiny(seed=1)
    spec.assign(other, theta)
    x = torch.rand(7, 2, dtype=torch.float64)
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(functional_call(model, params, (x,)), 
                               functional_call(model, spec.unflatten(2 * theta), (x,)), rtol=0, atol=0)


def test_same_seed_same_weights_and_bad_shapes_are_refused():
    assert torch.equal(ParamSpec.of(tiny(3)).flatten(tiny(3)), ParamSpec.of(tiny(3)).flatten(tiny(3)))
    assert not torch.equal(ParamSpec.of(tiny(3)).flatten(tiny(3)), ParamSpec.of(tiny(4)).flatten(tiny(4)))
    with pytest.raises(ValueError, match="dimensions must be positive"):
        MLP(2, 1, (0,))
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(2, 1, (3,), "relu6")
    with pytest.raises(ValueError, match="upper > lower"):
        MLP(2, 1, (3,), input_lower=(0, 1), input_upper=(1, 1))


def test_input_box_is_mapped_to_the_unit_cube():
    scaled = tiny(input_lower=(0.0, -2.0), input_upper=(1.0, 2.0))
    plain = tiny()
    x = torch.tensor([[0.0, -2.0], [1.0, 2.0], [0.25, 1.0]], dtype=torch.float64)
    mapped = torch.stack([2 * x[:, 0] - 1, x[:, 1] / 2], 1)
    torch.testing.assert_close(scaled(x), plain(mapped), rtol=0, atol=1e-15)


def test_feature_mlp_is_the_mlp_after_its_feature_map():
    net = MLP(3, 1, (4,), "tanh", generator=torch.Generator().manual_seed(0))

    def features(x):
        return torch.stack([torch.cos(x[..., 0]), torch.sin(x[..., 0]), x[..., 1]], -1)

    model = FeatureMLP(features, net)
    x = torch.rand(5, 2, dtype=torch.float64)
    torch.testing.assert_close(model(x), net(features(x)), rtol=0, atol=0)
    phi, inner = model.jet_parts()
    assert inner is net and torch.equal(phi(x), features(x))


def test_linearized_model_is_the_first_order_expansion():
    model = tiny()
    spec = ParamSpec.of(model)
    theta0 = spec.flatten(model)
    gen = torch.Generator().manual_seed(5)
    V = torch.randn(spec.numel, 3, generator=gen, dtype=torch.float64)
    z = torch.randn(3, generator=gen, dtype=torch.float64)
    lin = LinearizedModel(model, V, z)
    x = torch.rand(6, 2, generator=gen, dtype=torch.float64)
    u0, du = jvp(lambda th: functional_call(model, spec.unflatten(th), (x,)), (theta0,), (V @ z,))
    torch.testing.assert_close(lin(x), u0 + du, rtol=0, atol=1e-14)
    torch.testing.assert_close(lin.delta, V @ z, rtol=0, atol=0)
    stepped = lin.network_at(1.0)
    torch.testing.assert_close(ParamSpec.of(stepped).flatten(stepped), theta0 + V @ z, rtol=0, atol=1e-15)
    # the caller's model is untouched; z is the only trainable parameter
    assert torch.equal(spec.flatten(model), theta0)
    assert [n for n, p in lin.named_parameters() if p.requires_grad] == ["z"]
    with pytest.raises(ValueError, match="basis must have shape"):
        LinearizedModel(model, V[:-1], z)
    with pytest.raises(ValueError, match="coefficients must have shape"):
        LinearizedModel(model, V, z[:2])


def test_shifted_network_at_theta0_is_the_predictor():
    model = tiny()
    spec = ParamSpec.of(model)
    gen = torch.Generator().manual_seed(6)
    lin = LinearizedModel(model, torch.randn(spec.numel, 2, generator=gen, dtype=torch.float64),
                          torch.randn(2, generator=gen, dtype=torch.float64))
    shifted = ShiftedNetwork(lin)
    x = torch.rand(4, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(shifted(x), lin(x), rtol=0, atol=1e-14)
    assert shifted.predictor is lin
    assert ParamSpec.of(shifted).numel == spec.numel  # its parameters are the base network's
