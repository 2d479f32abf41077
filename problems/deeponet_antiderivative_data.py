"""Data-driven DeepONet for the antiderivative operator v ↦ u = ∫₀ˣ v, refined by LSR on its training data.

Data: ../shared/data/deeponet/antiderivative_aligned_{train,test}.npz (DeepXDE's example: 150
training and 1,000 test functions at 100 sensors, outputs at the same 100 points of [0, 1]).
A DeepONet (linear branch 100-40, trunk 1-[40]x2-40 tanh) is trained by full-batch Adam on the
mean squared error over (function, point) pairs. The branch is linear because the operator is: with
a tanh branch 100-[40]x2-40 Adam reaches the same test error (2.4e-2) but overfits the 120 training
functions (training error 4e-3), and LSR on the training data can then only gain 1.3x. LSR then refines it with a data term whose rows
are those pairs: :class:`PairModel` maps the concatenated input [sensor values, x] (N, 101) to
(N, 1), so the ordinary :func:`~pinnlsr.rank.lsr_rank_scan` applies. The rank is chosen on
held-out training functions (rank 0 = keep the trained network); the error is measured on the
1,000 test functions (generalization, not training fit): mean and std of the per-function
relative L2 error, before and after.

    python -m problems.deeponet_antiderivative_data --out runs/deeponet_antiderivative_data
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pinnlsr import checkpoint as ckpt
from pinnlsr.deeponet import DeepONet
from pinnlsr.datasets import load_antiderivative
from pinnlsr.metrics import predict
from pinnlsr.models import ParamSpec
from pinnlsr.pipeline import Pipeline, Run, Stage, add_run_options, run_guarded, run_pipeline
from pinnlsr.problem import PDEProblem, Term
from pinnlsr.plotting import draw_safely, plot_error_per_instance, plot_rank_scan
from pinnlsr.rank import TermsProblem, default_ranks, lsr_rank_scan
from pinnlsr.records import Evaluation, StageRecord
from pinnlsr.settings import Parser, RunSettings, add_settings

N_SENSORS = 100


class PairModel(nn.Module):
    """A DeepONet as a pointwise model of (function, point) pairs: z = [v(sensors), x] (N, s+d) -> (N, 1).

    Holds the DeepONet (not a copy) as ``self.deeponet``; its parameters are the trainable ones."""

    def __init__(self, deeponet: DeepONet):
        super().__init__()
        if deeponet.n_outputs != 1:
            raise ValueError(f"PairModel: a single-output DeepONet is expected, got n_outputs = {deeponet.n_outputs}")
        self.deeponet = deeponet

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = self.deeponet.n_sensors
        return self.deeponet.pointwise(z[:, :s], z[:, s:]).unsqueeze(1)


def pairs(x_branch: torch.Tensor, x_trunk: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All (function, point) pairs: inputs (B·N, s+d) function-major, targets (B·N, 1)."""
    b, n = x_branch.shape[0], x_trunk.shape[0]
    z = torch.cat([x_branch.repeat_interleave(n, 0), x_trunk.repeat(b, 1)], 1)
    return z, y.reshape(b * n, 1)


def data_residual(u, z, y):
    """Prediction minus target at one (function, point) pair."""
    return u(z) - y


class DeepONetAntiderivativeData(PDEProblem):
    name = "deeponet_antiderivative_data"
    description = ("Data-driven DeepONet for u = ∫v on DeepXDE's aligned data (150 train / 1,000 test functions); "
                   "LSR on the training pairs.")
    input_names = tuple(f"v{i}" for i in range(N_SENSORS)) + ("x",)
    output_names = ("u",)

    def __init__(self, n_validation: int = 30, seed: int = 0, train_path=None, test_path=None):
        train = load_antiderivative("train", train_path)
        test = load_antiderivative("test", test_path)
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)
        xb, xt, y = as_t(train.X_branch), as_t(train.X_trunk), as_t(train.y)
        if xb.shape[1] != N_SENSORS:
            raise ValueError(f"{train.source}: expected {N_SENSORS} sensors, got {xb.shape[1]}")
        if not 0 <= n_validation < xb.shape[0]:
            raise ValueError(f"n_validation must be in [0, {xb.shape[0]}), got {n_validation}")
        perm = torch.randperm(xb.shape[0], generator=torch.Generator().manual_seed(seed))
        val, tr = perm[:n_validation], perm[n_validation:]
        self.x_trunk = xt
        self.train_branch, self.train_y = xb[tr], y[tr]
        self.val_branch, self.val_y = xb[val], y[val]
        self.test_branch, self.test_trunk, self.test_y = as_t(test.X_branch), as_t(test.X_trunk), as_t(test.y)

    def terms(self) -> list[Term]:
        z, y = pairs(self.train_branch, self.x_trunk, self.train_y)
        return [Term("data", data_residual, z, targets=y)]

    def validation(self) -> PDEProblem | None:
        """Held-out training functions as a data term, or None without any."""
        if self.val_branch.shape[0] == 0:
            return None
        z, y = pairs(self.val_branch, self.x_trunk, self.val_y)
        return TermsProblem([Term("data", data_residual, z, targets=y)], self.input_names, self.output_names,
                            name=f"{self.name}_validation")

    def reference(self):
        return pairs(self.test_branch, self.test_trunk, self.test_y)

    def default_model(self, generator=None, dtype=torch.float64, device="cpu"):
        return PairModel(make_deeponet((), (40, 40), 40, generator, dtype, device))


def make_deeponet(branch_widths, trunk_widths, latent, generator=None, dtype=torch.float64, device="cpu") -> DeepONet:
    return DeepONet(N_SENSORS, 1, tuple(branch_widths), tuple(trunk_widths), latent, 1, "tanh", generator, dtype,
                    device, trunk_lower=(0.0,), trunk_upper=(1.0,))


def train_adam_grid(net: DeepONet, x_branch: torch.Tensor, x_trunk: torch.Tensor, y: torch.Tensor, steps: int,
                    lr: float = 1e-3, final_lr: float = 1e-5) -> list[float]:
    """Full-batch Adam on mean (G(v)(x) - y)² over all (function, point) pairs, in place; the same loss
    as the data term, evaluated on the function × point grid (one branch pass per function).
    Keeps the best state. Returns the loss every 100 steps."""
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, (final_lr / lr) ** (1.0 / max(steps, 1)))
    best, best_state, history = math.inf, copy.deepcopy(net.state_dict()), []
    for step in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = (net(x_branch, x_trunk) - y).square().mean()
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        if value < best:
            best, best_state = value, copy.deepcopy(net.state_dict())
        if step % 100 == 0:
            history.append(value)
        if step == steps:
            break
        loss.backward()
        opt.step()
        sched.step()
    net.load_state_dict(best_state)
    return history


def per_function_errors(model: nn.Module, problem: DeepONetAntiderivativeData) -> torch.Tensor:
    """Relative L2 error of each test function (1000,)."""
    like = next(iter(model.state_dict().values()))  # dtype/device of the model
    z, y = (a.to(dtype=like.dtype, device=like.device) for a in problem.reference())
    pred = predict(model, z).reshape(problem.test_y.shape)
    ref = y.reshape(problem.test_y.shape)
    return (pred - ref).norm(dim=1) / ref.norm(dim=1)


def _stats(errors: torch.Tensor) -> dict:
    return {"rel_l2_mean": float(errors.mean()), "rel_l2_std": float(errors.std()),
            "rel_l2_median": float(errors.median()), "rel_l2_max": float(errors.max()),
            "n_instances": int(errors.numel())}


#: the settings of the run (Adam, then the rank scan; the other options are this problem's own)
DEFAULTS = RunSettings(adam_steps=10000, lr=1e-3, final_lr=1e-5, oversampling=20, power_iterations=1)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = Parser(prog=prog or "python -m problems.deeponet_antiderivative_data",
               description=DeepONetAntiderivativeData.description,
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_options(p, seed_help="seed of the split, initialisation and sketch",
                    out_help="folder for metrics.json, model.pt, figures", plot_help="skip the figures")
    p.add_argument("--validation-functions", type=int, default=30,
                   help="training functions held out to choose the rank (0: choose by training residual)")
    p.add_argument("--branch-widths", type=int, nargs="*", default=[],
                   help="hidden widths of the branch; none (the default) makes it one linear layer, which "
                        "suits this linear operator (a tanh branch [40, 40] overfits the 120 training functions)")
    p.add_argument("--trunk-widths", type=int, nargs="+", default=[40, 40], help="hidden widths of the trunk")
    p.add_argument("--latent", type=int, default=40, help="latent size p of the dot-product head")
    add_settings(p, DEFAULTS, ("adam_steps", "lr", "final_lr"))
    p.add_argument("--max-rank", type=int, default=800, help="columns of the randomized basis")
    p.add_argument("--n-ranks", type=int, default=30, help="about this many ranks scanned")
    add_settings(p, DEFAULTS, ("oversampling", "power_iterations"))
    p.add_argument("--least-squares", choices=["dense", "streaming"], default="streaming",
                   help="reduced solve: dense QR or streamed TSQR")
    p.add_argument("--checkpoint", type=Path, default=None, help="refine this DeepONet state_dict instead of training")
    return p


def prepare(run: Run) -> None:
    """The data split and the DeepONet."""
    args, s = run.args, run.state
    s.problem = problem = DeepONetAntiderivativeData(args.validation_functions, args.seed)
    s.net = make_deeponet(args.branch_widths, args.trunk_widths, args.latent, run.generator, run.dtype, run.device)
    s.model = PairModel(s.net)
    run.metrics.update(n_params=ParamSpec.of(s.model).numel,
                       n_points={"train_pairs": int(problem.train_branch.shape[0] * problem.x_trunk.shape[0]),
                                 "validation_functions": int(problem.val_branch.shape[0]),
                                 "test_functions": int(problem.test_branch.shape[0])})


def on_test_functions(errors: torch.Tensor, residual: float | None = None) -> Evaluation:
    """The evaluation on the test functions: the mean of the per-function relative L2 errors
    ``errors`` (no max error over all points) and the residual on the training pairs."""
    return Evaluation({"rel_l2": float(errors.mean())}, residual)


def pretrain(run: Run) -> StageRecord:
    """Full-batch Adam on the training pairs, or the DeepONet of ``--checkpoint``."""
    args, s = run.args, run.state
    t = time.perf_counter()
    if args.checkpoint is not None:
        ckpt.load_into(s.net, args.checkpoint)
        name = "checkpoint"
    else:
        to = lambda a: a.to(dtype=run.dtype, device=run.device)
        train_adam_grid(s.net, to(s.problem.train_branch), to(s.problem.x_trunk), to(s.problem.train_y),
                        args.adam_steps, args.lr, args.final_lr)
        name = "adam"
    s.before = per_function_errors(s.model, s.problem)
    return StageRecord(name, time.perf_counter() - t, on_test_functions(s.before),
                       {"steps": args.adam_steps, **_stats(s.before)})


def rank_scan(run: Run) -> StageRecord:
    """LSR on the training pairs with a randomized basis, the rank chosen on the held-out functions."""
    args, s = run.args, run.state
    validation = s.problem.validation()
    max_rank = min(args.max_rank, ParamSpec.of(s.model).numel)
    s.result = result = lsr_rank_scan(
        s.problem, s.model, validation=validation, ranks=default_ranks(max_rank, args.n_ranks), max_rank=max_rank,
        criterion="validation" if validation is not None else "residual", subspace="randomized",
        oversampling=args.oversampling, power_iterations=args.power_iterations, seed=args.seed, dtype=run.dtype,
        device=run.device, least_squares=args.least_squares, rank_errors=False, compute_errors=False)
    s.after = per_function_errors(result.model, s.problem)
    d = result.diagnostics
    trained = run.stages[0]  # its residual on the training pairs is the scan's ||f0||
    trained.evaluation = on_test_functions(s.before, d["before"].residual)
    return StageRecord("lsr", d["seconds"]["total"], on_test_functions(s.after, d["after"].residual), {
        "rank": result.rank, "max_rank": d["max_rank"], "criterion": d["criterion"], "subspace": d["subspace"],
        "least_squares": d["least_squares"], "linearized_residual": d["linearized_residual"],
        "seconds_by_phase": d["seconds"], "peak_memory_gb": d["peak_memory_gb"],
        "validation_before": d["before"].validation, "validation_after": d["after"].validation,
        "scan": result.scan.as_dict(), **_stats(s.after)})


def finish(run: Run, metrics: dict) -> None:
    """The test-error table and improvement; model.pt and the figures."""
    s, stages = run.state, metrics["stages"]
    metrics["improvement"] = stages[0]["rel_l2_mean"] / stages[1]["rel_l2_mean"]
    print(f"{'stage':<8}{'mean rel_l2':>13}{'std':>11}{'max':>11}{'seconds':>10}")
    for st in stages:
        print(f"{st['name']:<8}{st['rel_l2_mean']:>13.3e}{st['rel_l2_std']:>11.3e}{st['rel_l2_max']:>11.3e}"
              f"{st['seconds']:>10.1f}")
    d = s.result.diagnostics
    print(f"chosen rank {s.result.rank} of {d['max_rank']} ({d['criterion']}), m = {metrics['n_params']}; mean test "
          f"error {stages[0]['rel_l2_mean']:.3e} -> {stages[1]['rel_l2_mean']:.3e} ({metrics['improvement']:.1f}x)")
    out = run.out
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.save_state_dict(s.net, out / "model.pt")
        if not run.args.no_plot:
            path = draw_safely(lambda: plot_rank_scan(s.result.scan, out / "rank_scan.png", title=s.problem.name))
            if path is not None:
                metrics["figure"] = path.name
            draw_safely(lambda: plot_error_per_instance(s.before.cpu().numpy(), s.after.cpu().numpy(),
                                                        out / "error_per_instance.png",
                                                        title=f"{s.problem.name}: test functions"))


#: the pipeline: train (or load), then the validated rank scan
PIPELINE = Pipeline(DeepONetAntiderivativeData, [Stage("pretrain", pretrain), Stage("lsr", rank_scan)],
                    prepare=prepare, finish=finish)


def run(args: argparse.Namespace) -> dict:
    return run_pipeline(PIPELINE, args)


def run_cli(argv: list[str] | None = None, prog: str | None = None) -> int:
    return run_guarded(run, build_parser(prog).parse_args(argv))[0]


PROBLEM = DeepONetAntiderivativeData

if __name__ == "__main__":
    raise SystemExit(run_cli())
