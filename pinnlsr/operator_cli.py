"""Command-line pipeline of the operator problems (``python -m problems.deeponet_*``).

Pretrain a physics-informed DeepONet (or load ``--checkpoint``), evaluate it on ``--n-test`` fresh
input functions, choose the LSR rank by a scan on a few other functions (unless ``--rank``), refine
every test function by LSR, print the table and, with ``--out DIR``, write ``metrics.json`` (stages
``pretrained`` and ``lsr`` with rel_l2_mean, rel_l2_std, max_abs_err over all test functions, the mean
residual, n_instances, seconds_per_instance),
``model.pt`` and figures. The network, sensors and points live in ``--dtype`` on ``--device`` (input
functions are sampled and their references computed on the CPU); metrics.json names both. The test
functions are refined in blocks of instances at once (``--refine batched``, block size from the
memory budget or ``--instance-block``) or one at a time (``--refine loop``); the refinement stages
record which (``refine_path``, ``instances_per_block``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import checkpoint as ckpt
from . import runfolder
from .io import atomic_write_json
from .metrics import predict
from .runner import run_guarded
from .settings import (OperatorSettings, Parser, add_alias, add_device_options, add_settings, device_and_dtype, option,
                       parse_counts)
from .operator_learning import (OperatorProblem, predict_operator, rank_scan, refine_instances,
                                relative_errors, summarize, train_pideeponet)


def build_parser(problem: OperatorProblem, defaults: OperatorSettings | dict | None = None,
                 prog: str | None = None) -> argparse.ArgumentParser:
    """Command-line options of an operator problem: run options and the settings
    (:class:`~pinnlsr.settings.OperatorSettings`) with ``defaults`` (the problem's DEFAULTS)."""
    p = Parser(
        prog=prog or f"python -m problems.{problem.name}",
        description=f"{problem.name}: {problem.description}",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, functions, points and sketches")
    add_device_options(p)
    runfolder.add_options(p, help_out="output folder for metrics.json, model.pt, figures")
    p.add_argument("--checkpoint", type=Path, default=None, help="load this DeepONet state_dict instead of pretraining")
    p.add_argument("--scan-ranks", type=int, nargs="+", default=list(problem.scan_ranks), help="ranks of the scan")
    p.add_argument("--verbose", action="store_true", help="print every instance")
    p.add_argument("--no-plot", action="store_true", help="skip figures")
    terms = ", ".join(f"{t.name}={t.n_lsr}" for t in problem.terms())
    add_settings(p.add_argument_group("settings"), OperatorSettings.of(defaults), notes={"points": f"terms: {terms}"})
    add_alias(p, "--steps", "--adam-steps", type=int)
    add_alias(p, "--gauss-newton", "--gn-iters", type=int)
    add_alias(p, "--lsr-points", "--points", nargs="*")
    return p


def _counts(items: list[str], problem: OperatorProblem) -> dict[str, int]:
    """{term: n} of ``--points``; a ValueError names a malformed item or an unknown term."""
    counts = parse_counts(items)
    names = [t.name for t in problem.terms()]
    unknown = sorted(set(counts) - set(names))
    if unknown:
        raise ValueError(f"--points names unknown terms {unknown}; the terms are {names}")
    return counts


def check_options(args) -> None:
    """Ranges of the numeric options: a ValueError names the option and what it accepts."""
    for name in ("latent", "n_train", "batch_size", "n_test", "scan_instances", "rank", "instance_block"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"{option(name)} must be >= 1, got {v}")
    for name in ("adam_steps", "power_iterations", "gn_iters"):
        if getattr(args, name) < 0:
            raise ValueError(f"{option(name)} must be >= 0, got {getattr(args, name)}")
    for name in ("lr", "final_lr"):
        if not 0 < getattr(args, name) < float("inf"):
            raise ValueError(f"{option(name)} must be a finite number > 0, got {getattr(args, name)}")
    if min(args.widths) < 1 or min(args.scan_ranks) < 1:
        raise ValueError("--widths and --scan-ranks must be positive integers")


def run(problem: OperatorProblem, args) -> dict:
    check_options(args)
    device, dtype = device_and_dtype(args)
    counts = _counts(args.points, problem)
    runfolder.check(args.out, args.overwrite)
    runfolder.clear(args.out, keep_checkpoints=False)
    torch.manual_seed(args.seed)
    net = problem.default_deeponet(torch.Generator().manual_seed(args.seed), dtype, device, widths=tuple(args.widths),
                                   latent=args.latent)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"{problem.name}: DeepONet branch/trunk {list(args.widths)}, latent {args.latent}, {n_params} parameters")
    stages = []
    if args.checkpoint is not None:
        ckpt.load_into(net, args.checkpoint)
        print(f"loaded {args.checkpoint}")
        train_seconds = 0.0
    else:
        train_fns = problem.sample_functions(args.n_train, torch.Generator().manual_seed(args.seed + 1))
        print(f"pretraining: {args.adam_steps} Adam steps, {args.batch_size} of {args.n_train} functions per step")
        t = time.perf_counter()
        train_pideeponet(problem, net, train_fns, args.adam_steps, args.batch_size, args.lr, args.final_lr,
                         torch.Generator().manual_seed(args.seed + 2), log_every=max(1, args.adam_steps // 10))
        train_seconds = time.perf_counter() - t
        if args.out:
            ckpt.save_state_dict(net, Path(args.out) / "model.pt")
    test = problem.sample_functions(args.n_test, torch.Generator().manual_seed(args.seed + 3))
    t = time.perf_counter()
    refs = problem.references(test)
    ref_seconds = (time.perf_counter() - t) / len(test)
    sensors = problem.check_sensors(problem.sensors(test))
    points = problem.test_points()
    t = time.perf_counter()
    pred0 = predict_operator(net, sensors, points).cpu()
    eval_seconds = (time.perf_counter() - t) / len(test)
    err0 = relative_errors(pred0, refs).numpy()
    m0, s0 = summarize(err0)
    stages.append({"name": "pretrained", "rel_l2": m0, "rel_l2_mean": m0, "rel_l2_std": s0,
                   "max_abs_err": float((pred0 - refs).abs().max()), "n_instances": len(test),
                   "seconds": train_seconds, "seconds_per_instance": eval_seconds})
    print(f"pretrained: rel L2 {m0:.3e} ± {s0:.2e} over {len(test)} test functions "
          f"(reference solver {ref_seconds:.3f}s per function)")

    scan = None
    rank = args.rank
    if rank is None:
        scan_fns = problem.sample_functions(args.scan_instances, torch.Generator().manual_seed(args.seed + 4))
        rank, scan = rank_scan(problem, net, scan_fns, args.scan_ranks, args.seed, counts=counts,
                               power_iterations=args.power_iterations, dtype=dtype, mode=args.refine,
                               block_size=args.instance_block)
    gn = args.gn_iters
    print(f"LSR: rank {rank}, randomized subspace, {len(test)} instances"
          + (f", then up to {gn} tangent Gauss–Newton iterations each" if gn else ""))
    out = refine_instances(problem, net, test, refs, rank, args.seed, counts, keep_models=3,
                           printer=print if args.verbose else None, gauss_newton=gn,
                           power_iterations=args.power_iterations, dtype=dtype, mode=args.refine,
                           block_size=args.instance_block)
    inst = out["instances"]
    path = {"refine_path": out["path"], "instances_per_block": out["block_size"]}
    if "path_reason" in out:
        path["refine_path_reason"] = out["path_reason"]
    how = (f"in blocks of {out['block_size']} instances" if out["path"] == "batched" else
           "one instance at a time" + (f" ({out['path_reason']})" if "path_reason" in out else ""))
    print(f"refined {how}")
    mean = lambda value: float(np.mean([value(r) for r in inst]))  # of a quantity of each instance row
    def worst_abs(tag: str) -> float | None:
        """The largest max_abs_err of the instances' ``tag`` evaluations (None where not measured)."""
        values = [r[tag].max_abs_err for r in inst if r[tag].max_abs_err is not None]
        return float(max(values)) if values else None

    stages[0]["residual"] = mean(lambda r: r["before"].residual)
    peak = float(max(r["peak_memory_gb"] for r in inst))
    if gn:  # the first Gauss–Newton step is the one-shot LSR stage
        err_lsr = np.array([r["lsr"].rel_l2 for r in inst])
        ml, sl = summarize(err_lsr)
        stages.append({"name": "lsr", "rank": rank, "rel_l2": ml, "rel_l2_mean": ml, "rel_l2_std": sl,
                       "max_abs_err": worst_abs("lsr"), "residual": mean(lambda r: r["lsr"].residual),
                       "n_instances": len(test), "seconds": float(np.sum([r["seconds_lsr"] for r in inst])),
                       "seconds_per_instance": mean(lambda r: r["seconds_lsr"]),
                       "residual_before_mean": mean(lambda r: r["before"].residual),
                       "residual_after_mean": mean(lambda r: r["lsr"].residual),
                       "linearized_residual_mean": mean(lambda r: r["linearized_residual"]), "peak_memory_gb": peak,
                       "reduction_of_mean": m0 / ml, "reduction_median": float(np.median(err0 / err_lsr)),
                       "note": "first step of the tangent Gauss–Newton run (one-shot LSR)", **path})
    err1 = np.array([r["after"].rel_l2 for r in inst])
    m1, s1 = summarize(err1)
    secs = [r["seconds"] for r in inst]
    final = {"name": "gauss_newton" if gn else "lsr", "rank": rank, "rel_l2": m1, "rel_l2_mean": m1,
             "rel_l2_std": s1, "max_abs_err": worst_abs("after"), "residual": mean(lambda r: r["after"].residual),
             "n_instances": len(test), "seconds": float(np.sum(secs)),
             "seconds_per_instance": float(np.mean(secs)), "residual_before_mean": mean(lambda r: r["before"].residual),
             "residual_after_mean": mean(lambda r: r["after"].residual), "peak_memory_gb": peak,
             "reduction_of_mean": m0 / m1, "reduction_median": float(np.median(err0 / err1)), **path}
    if gn:
        final.update(max_iterations=gn, iterations_mean=mean(lambda r: r["iterations"]),
                     best_iteration_mean=mean(lambda r: r["best_iteration"]))
    else:
        final["linearized_residual_mean"] = mean(lambda r: r["linearized_residual"])
    stages.append(final)
    print()
    print(f"{'stage':<12}{'rel L2 mean':>14}{'± std':>11}{'median':>11}{'s/instance':>12}")
    print(f"{'pretrained':<12}{m0:>14.3e}{s0:>11.2e}{np.median(err0):>11.2e}{eval_seconds:>12.4f}")
    for st in stages[1:]:
        label = ("lsr r=" + str(rank)) if st["name"] == "lsr" else f"GN x{gn}"
        errs = err1 if st is final else err_lsr
        print(f"{label:<12}{st['rel_l2_mean']:>14.3e}{st['rel_l2_std']:>11.2e}{np.median(errs):>11.2e}"
              f"{st['seconds_per_instance']:>12.3f}")
    print(f"reduction: mean {m0 / m1:.1f}x, median per instance {np.median(err0 / err1):.1f}x; "
          f"peak memory {stages[-1]['peak_memory_gb']:.2f} GB")
    like = next(net.parameters())  # where the network ran
    metrics = {"problem": problem.name, "seed": args.seed, "device": str(like.device),
               "dtype": str(like.dtype).removeprefix("torch."),
               "n_params": n_params, "sizes": {"widths": list(args.widths), "latent": args.latent,
                                               "n_train": args.n_train, "steps": args.adam_steps,
                                               "batch_size": args.batch_size, "n_sensors": problem.n_sensors,
                                               "lsr_points": {t.name: counts.get(t.name, t.n_lsr) for t in problem.terms()},
                                               "test_points": int(points.shape[0])},
               "checkpoint": str(args.checkpoint) if args.checkpoint else None,
               "stages": stages, "rank_scan": scan,
               "per_instance": {"rel_l2_before": err0.tolist(), "rel_l2_after": err1.tolist()}}
    if args.out:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        if not args.no_plot:
            from .plotting import draw_safely

            figures = draw_safely(lambda: plot_instances(problem, test, sensors, refs, net, out["models"], err0, err1,
                                                         out_dir, "LSR + Gauss–Newton" if gn else "LSR"))
            if figures is not None:
                metrics["figures"] = figures
        atomic_write_json(out_dir / "metrics.json", metrics)
        print(f"wrote {out_dir / 'metrics.json'}")
    return metrics


def plot_instances(problem, test, sensors, refs, net, models, err0, err1, out: Path, label: str = "LSR") -> list[str]:
    """Prediction / reference / error before and after LSR for the first instances, and the
    per-instance error scatter."""
    from . import plotting

    files = [plotting.plot_error_per_instance(err0, err1, out / "error_per_instance.png",
                                              title=f"{problem.name}: rel. L2 per instance",
                                              xlabel="pretrained", ylabel=f"after {label}").name]
    points = problem.test_points()
    axes = problem.test_axes()
    names = problem.input_names
    pred0 = predict_operator(net, sensors[:len(models)], points).cpu()
    for i, model in enumerate(models):
        before = pred0[i].numpy()
        like = next(iter(model.state_dict().values()))  # the refined predictor's dtype and device
        after = predict(model, points.to(dtype=like.dtype, device=like.device))[:, 0].cpu().numpy()
        ref = refs[i].numpy()
        if len(axes) == 1:
            x = axes[0]
            files.append(plotting.plot_curves_1d(x, {"reference": ref, "pretrained": before, label: after},
                                                 out / f"instance_{i}.png", xlabel=names[0],
                                                 title=f"instance {i}").name)
            files.append(plotting.plot_curves_1d(x, {"pretrained": np.abs(before - ref), label: np.abs(after - ref)},
                                                 out / f"instance_{i}_error.png", xlabel=names[0], ylabel="|error|",
                                                 logy=True, title=f"instance {i}: |error|").name)
        else:
            x, t = axes
            shape = (len(t), len(x))
            for tag, pred in (("pretrained", before), ("lsr", after)):
                files.append(plotting.plot_spacetime_comparison(
                    x, t, pred.reshape(shape), ref.reshape(shape), out / f"instance_{i}_{tag}.png",
                    titles=(f"{tag} prediction", "reference", "|error|"), suptitle=f"{problem.name} instance {i}",
                    log_error=True, xlabel=names[0], tlabel=names[-1]).name)
    return files


def run_operator_cli(problem_factory: Callable[[], OperatorProblem], argv=None, prog=None,
                     defaults: OperatorSettings | dict | None = None) -> int:
    """Entry point of an operator problem module; exit code 0 on success, 2 on bad input, 130 on Ctrl-C."""
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    problem = problem_factory()
    code, parser = run_guarded(build_parser, problem, defaults, prog)
    return code or run_guarded(run, problem, parser.parse_args(argv))[0]
