"""pinnlsr: Linearized Subspace Refinement (LSR) of trained physics-informed networks.

The main entry points: :class:`PDEProblem` and :class:`Term` to state a problem, :func:`lsr` to
refine any ``torch.nn.Module`` on it, :func:`train_adam` / :func:`train_lbfgs` for baselines.
"""
from . import operators
from .allocator import tune_allocator
from .lsr import LSRResult, lsr
from .models import MLP, LinearizedModel, ParamSpec
from .problem import PDEProblem, Term
from .train import train_adam, train_lbfgs

__version__ = "0.1.0"
__all__ = ["operators", "lsr", "LSRResult", "MLP", "LinearizedModel", "ParamSpec", "PDEProblem", "Term",
           "train_adam", "train_lbfgs", "tune_allocator"]
