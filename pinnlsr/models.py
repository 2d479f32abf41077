"""Networks and parameter plumbing: MLP, flat parameter vectors, and the refined linear predictor.

Shapes: a model maps points ``(N, d)`` to outputs ``(N, k)``. The trainable parameters of a model
(those with ``requires_grad``) are addressed as one flat vector ``theta`` of length ``m``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "sin": lambda: Sine(),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}


class Sine(nn.Module):
    """sin(x) activation (SIREN-style networks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


class MLP(nn.Module):
    """Fully connected network ``in_dim -> widths... -> out_dim``.

    Args:
        in_dim, out_dim: input dimension d and output count k.
        widths: hidden layer widths, e.g. ``(30, 30, 30)`` for 2-[30]x3-1.
        activation: one of ``ACTIVATIONS`` or an ``nn.Module`` factory.
        input_lower, input_upper: optional box of the inputs; if given, inputs are mapped affinely
            to [-1, 1]^d before the first layer (a fixed buffer, not a parameter).
        generator: seeds the Xavier-normal initialisation (biases start at zero).
        first_layer_scale: multiplies the first layer's initial weights (the frequency scale ω0
            of SIREN-style sine networks): > 1 starts the network with finer features, which
            multiscale solutions need (see problems/poisson2d_hard.py).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        widths: Sequence[int] = (30, 30, 30),
        activation: str | Callable[[], nn.Module] = "tanh",
        input_lower: Sequence[float] | None = None,
        input_upper: Sequence[float] | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        first_layer_scale: float = 1.0,
    ):
        super().__init__()
        if in_dim < 1 or out_dim < 1 or any(w < 1 for w in widths):
            raise ValueError(f"MLP: dimensions must be positive, got in={in_dim}, out={out_dim}, widths={widths}")
        if not first_layer_scale > 0:
            raise ValueError(f"MLP: first_layer_scale must be positive, got {first_layer_scale}")
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(f"MLP: unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
            make_activation = ACTIVATIONS[activation]
        else:
            make_activation = activation
        sizes = [in_dim, *widths, out_dim]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            # drawn on the CPU with the (CPU) generator, then moved: the same seed gives the same
            # weights on every device
            linear = nn.Linear(sizes[i], sizes[i + 1], dtype=dtype)
            nn.init.xavier_normal_(linear.weight, generator=generator)
            nn.init.zeros_(linear.bias)
            if i == 0 and first_layer_scale != 1.0:
                with torch.no_grad():
                    linear.weight.mul_(first_layer_scale)
            layers.append(linear.to(device))
            if i < len(sizes) - 2:
                layers.append(make_activation())
        self.net = nn.Sequential(*layers)
        if (input_lower is None) != (input_upper is None):
            raise ValueError("MLP: give both input_lower and input_upper, or neither")
        if input_lower is not None:
            lower = torch.as_tensor(input_lower, dtype=dtype, device=device).reshape(-1)
            upper = torch.as_tensor(input_upper, dtype=dtype, device=device).reshape(-1)
            if lower.numel() != in_dim or upper.numel() != in_dim or bool((upper <= lower).any()):
                raise ValueError("MLP: input bounds need in_dim entries each, with upper > lower")
            self.register_buffer("input_shift", (upper + lower) / 2)
            self.register_buffer("input_scale", 2 / (upper - lower))
        else:
            self.input_shift = None
            self.input_scale = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_shift is not None:
            x = (x - self.input_shift) * self.input_scale
        return self.net(x)


class FeatureMLP(nn.Module):
    """An MLP on fixed input features: x -> mlp(φ(x)), with φ a per-point function (d,) -> (in,)
    without parameters (e.g. a periodic embedding (cos πx, sin πx, t)). The jets of
    :mod:`pinnlsr.jets` see through φ (:meth:`jet_parts`), so training and refinement keep their
    fast path.

    Args:
        features: φ for one point; applied to a batch (N, d) with ``torch.func.vmap``.
        mlp: the :class:`MLP` on the features (its ``in_dim`` is φ's output size).
    """

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], mlp: nn.Module):
        super().__init__()
        self.features = features
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(vmap(self.features)(x))

    def jet_parts(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module]:
        """(φ, the inner MLP)."""
        return self.features, self.mlp


@dataclass(frozen=True)
class ParamSpec:
    """Names and shapes of a module's trainable parameters, in ``named_parameters`` order.

    Converts between the module's parameters and a flat vector ``theta`` of length ``numel``.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, module: nn.Module) -> "ParamSpec":
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(
                f"{type(module).__name__} has no trainable parameters (requires_grad=True): nothing to refine"
            )
        return cls(tuple(n for n, _ in named), tuple(p.shape for _, p in named))

    @property
    def sizes(self) -> list[int]:
        return [s.numel() for s in self.shapes]

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """The module's trainable parameters as one detached vector, shape (m,)."""
        params = dict(module.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``theta`` (m,) shaped like the parameters, keyed by name (for functional_call)."""
        chunks = torch.split(theta, self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def assign(self, module: nn.Module, theta: torch.Tensor) -> None:
        """Copy ``theta`` (m,) into the module's parameters in place."""
        params = dict(module.named_parameters())
        with torch.no_grad():
            for n, value in self.unflatten(theta).items():
                params[n].copy_(value)


def functional_model(model: nn.Module, spec: ParamSpec | None = None) -> Callable:
    """``f(theta, x)``: the model evaluated with flat parameters theta (m,) on points x (N, d)."""
    spec = spec or ParamSpec.of(model)

    def f(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, spec.unflatten(theta), (x,))

    return f


class LinearizedModel(nn.Module):
    """The refined linear predictor u_lin(x) = u(θ0, x) + J(x) · V · z.

    ``J(x)`` is the Jacobian of the base network's outputs with respect to its trainable
    parameters at θ0, ``V`` (m, r) the subspace basis and ``z`` (r,) the coefficients (the only
    trainable parameter of this module). ``forward`` costs one JVP of the base network, is
    differentiable in x (so PDE residuals, plots and errors work on it unchanged) and in z (so the
    same Jacobian machinery linearizes it again: tangent-space Gauss–Newton).
    """

    def __init__(self, base: nn.Module, basis: torch.Tensor, coefficients: torch.Tensor):
        super().__init__()
        self.base = copy.deepcopy(base)
        self.spec = ParamSpec.of(self.base)
        self.register_buffer("theta0", self.spec.flatten(self.base).clone())
        for p in self.base.parameters():
            p.requires_grad_(False)
        if basis.ndim != 2 or basis.shape[0] != self.spec.numel:
            raise ValueError(
                f"LinearizedModel: basis must have shape (m, r) with m = {self.spec.numel} parameters, "
                f"got {tuple(basis.shape)}"
            )
        if coefficients.shape != (basis.shape[1],):
            raise ValueError(
                f"LinearizedModel: coefficients must have shape ({basis.shape[1]},), got {tuple(coefficients.shape)}"
            )
        self.register_buffer("basis", basis.detach().to(self.theta0))
        self.z = nn.Parameter(coefficients.detach().to(self.theta0).clone())

    @property
    def delta(self) -> torch.Tensor:
        """The parameter step V z, shape (m,)."""
        return self.basis @ self.z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base, spec = self.base, self.spec

        def u(theta: torch.Tensor) -> torch.Tensor:
            return functional_call(base, spec.unflatten(theta), (x,))

        u0, du = jvp(u, (self.theta0,), (self.delta,))
        return u0 + du

    def correction(self, x: torch.Tensor) -> torch.Tensor:
        """J(x) · V · z alone, shape (N, k), with z detached (a fixed function of x)."""
        base, spec = self.base, self.spec

        def u(theta: torch.Tensor) -> torch.Tensor:
            return functional_call(base, spec.unflatten(theta), (x,))

        return jvp(u, (self.theta0,), (self.delta.detach(),))[1]

    def network_at(self, step: float = 1.0) -> nn.Module:
        """A copy of the base network at θ0 + step·V z (the nonlinear model the step points to)."""
        net = copy.deepcopy(self.base)
        params = dict(net.named_parameters())
        for name in self.spec.names:
            params[name].requires_grad_(True)
        self.spec.assign(net, self.theta0 + step * self.delta.detach())
        return net


class ShiftedNetwork(nn.Module):
    """The base network plus the predictor's fixed correction: x -> u(θ, x) + J(x)·V·z.

    J, V and z stay frozen at θ0 while θ (the base network's parameters) varies, so at θ = θ0 this
    *is* the refined predictor u_lin(·; z), and the residual's Jacobian in θ there, times V, is
    df/dz of the predictor's residual: the PDE linearized around u_lin applied to the columns of
    J·V. That is the same row computation as one LSR step, far cheaper than differentiating
    through the JVP inside the predictor."""

    def __init__(self, predictor: LinearizedModel):
        super().__init__()
        self.net = copy.deepcopy(predictor.base)
        for p in self.net.parameters():
            p.requires_grad_(True)
        object.__setattr__(self, "_predictor", predictor)  # not a submodule: its z is not a parameter here

    @property
    def predictor(self) -> LinearizedModel:
        """The refined predictor whose correction J(x)·V·z this network adds."""
        return self._predictor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self._predictor.correction(x)
