"""DeepONet (Lu et al. 2021): branch net on sensor values, trunk net on coordinates, dot-product head.

G(v)(x)_j = Σ_i b_{i,j}(v) · t_{i,j}(x) + bias_j, with b = branch(v(sensors)) and t = trunk(x), each of
``latent`` features per output j. Two evaluation modes:

- ``forward(branch_input (B, n_sensors), trunk_input (N, d))``: Cartesian product -> (B, N) [(B, N, k)];
- ``pointwise(branch_input (N, n_sensors), trunk_input (N, d))``: paired rows -> (N,) [(N, k)].

:class:`InstanceModel` fixes one input function and is an ordinary ``(N, d) -> (N, k)`` module whose
trainable parameters are the DeepONet's, so :func:`pinnlsr.lsr.lsr` refines the operator network for
that instance. Weights save and load as a plain ``state_dict`` (:mod:`pinnlsr.checkpoint`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .models import MLP


class DeepONet(nn.Module):
    """Unstacked DeepONet with a trainable output bias.

    Args:
        n_sensors: number of sensor values of the input function (branch input size).
        coord_dim: number of coordinates d of the output function (trunk input size).
        branch_widths, trunk_widths: hidden widths of the two MLPs.
        latent: p, the number of basis features per output.
        n_outputs: k.
        activation: hidden activation of both nets (see :data:`pinnlsr.models.ACTIVATIONS`).
        generator: seeds the initialisation (branch first, then trunk).
        trunk_lower, trunk_upper: optional box of the trunk inputs, mapped to [-1, 1]^d.
    """

    def __init__(
        self,
        n_sensors: int,
        coord_dim: int,
        branch_widths: Sequence[int] = (100, 100, 100),
        trunk_widths: Sequence[int] = (100, 100, 100),
        latent: int = 100,
        n_outputs: int = 1,
        activation: str | Callable[[], nn.Module] = "tanh",
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        *,
        trunk_lower: Sequence[float] | None = None,
        trunk_upper: Sequence[float] | None = None,
    ):
        super().__init__()
        if n_sensors < 1 or coord_dim < 1 or latent < 1 or n_outputs < 1:
            raise ValueError(
                f"DeepONet: n_sensors, coord_dim, latent and n_outputs must be positive, got "
                f"{n_sensors}, {coord_dim}, {latent}, {n_outputs}"
            )
        self.n_sensors, self.coord_dim = int(n_sensors), int(coord_dim)
        self.latent, self.n_outputs = int(latent), int(n_outputs)
        out = self.latent * self.n_outputs
        self.branch = MLP(n_sensors, out, tuple(branch_widths), activation, generator=generator,
                          dtype=dtype, device=device)
        self.trunk = MLP(coord_dim, out, tuple(trunk_widths), activation, trunk_lower, trunk_upper,
                         generator=generator, dtype=dtype, device=device)
        self.bias = nn.Parameter(torch.zeros(self.n_outputs, dtype=dtype, device=device))

    def _check(self, branch_input: torch.Tensor, trunk_input: torch.Tensor) -> None:
        if branch_input.ndim != 2 or branch_input.shape[1] != self.n_sensors:
            raise ValueError(
                f"DeepONet: branch input must have shape (B, {self.n_sensors}) (the input function at "
                f"{self.n_sensors} sensors), got {tuple(branch_input.shape)}: sample the function on "
                "the sensor grid the network was built for"
            )
        if trunk_input.ndim != 2 or trunk_input.shape[1] != self.coord_dim:
            raise ValueError(
                f"DeepONet: trunk input must have shape (N, {self.coord_dim}), got {tuple(trunk_input.shape)}"
            )

    def branch_features(self, branch_input: torch.Tensor) -> torch.Tensor:
        """b(v): (B, n_sensors) -> (B, latent, k)."""
        return self.branch(branch_input).reshape(-1, self.latent, self.n_outputs)

    def trunk_features(self, trunk_input: torch.Tensor) -> torch.Tensor:
        """t(x): (N, d) -> (N, latent, k)."""
        return self.trunk(trunk_input).reshape(-1, self.latent, self.n_outputs)

    def forward(self, branch_input: torch.Tensor, trunk_input: torch.Tensor) -> torch.Tensor:
        """Every function at every point: (B, n_sensors), (N, d) -> (B, N) or (B, N, k)."""
        self._check(branch_input, trunk_input)
        out = torch.einsum("bpk,npk->bnk", self.branch_features(branch_input),
                           self.trunk_features(trunk_input)) + self.bias
        return out[..., 0] if self.n_outputs == 1 else out

    def pointwise(self, branch_input: torch.Tensor, trunk_input: torch.Tensor) -> torch.Tensor:
        """Row i of the branch input at row i of the trunk input: (N, n_sensors), (N, d) -> (N,) or (N, k)."""
        self._check(branch_input, trunk_input)
        if branch_input.shape[0] != trunk_input.shape[0]:
            raise ValueError(
                f"DeepONet.pointwise: {branch_input.shape[0]} branch rows but {trunk_input.shape[0]} "
                "trunk rows; pair them one to one (use forward for all functions × all points)"
            )
        out = (self.branch_features(branch_input) * self.trunk_features(trunk_input)).sum(1) + self.bias
        return out[:, 0] if self.n_outputs == 1 else out


class InstanceModel(nn.Module):
    """The DeepONet restricted to one input function: x (N, d) -> (N, k).

    ``branch_input`` (n_sensors,) is a fixed buffer; the trainable parameters are the DeepONet's
    (the module holds it as ``self.deeponet``, not a copy), so refining this model refines the
    operator network for this instance.
    """

    def __init__(self, deeponet: DeepONet, branch_input: torch.Tensor):
        super().__init__()
        if not isinstance(deeponet, DeepONet):
            raise TypeError(f"InstanceModel needs a DeepONet, got {type(deeponet).__name__}")
        v = torch.as_tensor(branch_input)
        if v.ndim == 2 and v.shape[0] == 1:
            v = v[0]
        if v.ndim != 1 or v.shape[0] != deeponet.n_sensors:
            raise ValueError(
                f"InstanceModel: the input function must be given at the {deeponet.n_sensors} sensors "
                f"of the DeepONet, shape ({deeponet.n_sensors},), got {tuple(v.shape)}"
            )
        if not torch.isfinite(v).all():
            raise ValueError("InstanceModel: the input function's sensor values contain NaN or Inf")
        ref = next(deeponet.parameters())
        self.deeponet = deeponet
        self.register_buffer("branch_input", v.detach().to(dtype=ref.dtype, device=ref.device).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.deeponet
        b = net.branch_features(self.branch_input.unsqueeze(0))  # (1, p, k)
        return (net.trunk_features(x) * b).sum(1) + net.bias  # (N, k)
