"""A user's own architecture (not pinnlsr's MLP): Fourier features, a residual block and a custom
activation. Used by the --checkpoint tests through ``--model tests/user_net.py:make_net``."""
import torch
from torch import nn


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.5 * x)


class FourierResNet(nn.Module):
    def __init__(self, width: int = 16, n_freq: int = 4):
        super().__init__()
        gen = torch.Generator().manual_seed(11)
        self.register_buffer("freqs", torch.randn(2, n_freq, generator=gen, dtype=torch.float64) * 2.0)
        self.lift = nn.Linear(2 * n_freq, width, dtype=torch.float64)
        self.block = nn.Sequential(nn.Linear(width, width, dtype=torch.float64), Swish(),
                                   nn.Linear(width, width, dtype=torch.float64))
        self.act = Swish()
        self.head = nn.Linear(width, 1, dtype=torch.float64)

    def forward(self, x):
        proj = x @ self.freqs
        h = self.act(self.lift(torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)))
        h = h + self.act(self.block(h))
        return self.head(h)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return FourierResNet()
