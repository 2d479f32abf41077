"""Per-instance LSR of physics-informed DeepONets on the four operator problems: the README table.

For each problem: pretrain (or reuse ``OUT/NAME/model.pt`` with ``--reuse``), evaluate on
``--n-test`` test functions, choose the rank by a scan (or ``--rank``), refine each function by LSR
(then by tangent Gauss–Newton steps where the problem's defaults ask for them: Burgers, 4 steps)
and collect ``metrics.json``. Prints a Markdown table with the sizes used, and writes it to
``OUT/table.md``. CPU-sized defaults (single thread):

    python scripts/benchmark_deeponet.py --out runs/benchmark_deeponet
    python scripts/benchmark_deeponet.py --problems antiderivative --adam-steps 500 --n-test 10   # quick
    python scripts/benchmark_deeponet.py --out runs/benchmark_deeponet --table-only          # table again

``--compare-refinement`` times instead the per-instance refinement of deeponet_burgers (LSR and its
default Gauss–Newton steps) one instance at a time (``refine_instances(mode="loop")``, on the first
``--loop-instances``) and in blocks of instances at once (the default path, on all ``--n-test``), and
writes both times, their ratio per instance, the largest difference of the instance records and the
mean errors of both paths on the instances both refined to ``OUT/refinement.json`` (at rank 400 the
records move with rounding: the loop's own two Jacobian backends can differ by tens of percent after
four Gauss–Newton steps, so compare the means); the network is ``OUT/burgers/model.pt`` with ``--reuse``, else pretrained
with the problem's defaults and saved there:

    python scripts/benchmark_deeponet.py --compare-refinement --reuse --rank 400 --out runs/benchmark_deeponet
"""
from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import torch

from pinnlsr.allocator import tune_allocator
from pinnlsr.settings import Parser, add_alias, add_device_options

PROBLEMS = ("antiderivative", "diffusion_reaction", "advection", "burgers")
# LSR paper (Cao & Zhang), GPU, PI-DeepONets trained with Wang et al.'s code: before, after, rank, seconds.
PAPER = {
    "antiderivative": (3.69e-3, 1.53e-5, 40, 0.04),
    "diffusion_reaction": (5.58e-3, 5.71e-4, 200, 0.37),
    "advection": (2.15e-2, 3.10e-3, 1000, 6.1),
    "burgers": (1.25e-2, 3.96e-4, 800, 6.9),
}


def run_problem(name: str, args) -> dict:
    module = importlib.import_module(f"problems.deeponet_{name}")
    out = Path(args.out) / name
    argv = ["--seed", str(args.seed), "--out", str(out), "--n-test", str(args.n_test), "--device", args.device,
            "--dtype", args.dtype]
    if args.adam_steps is not None:
        argv += ["--adam-steps", str(args.adam_steps)]
    if args.rank is not None:
        argv += ["--rank", str(args.rank)]
    if args.reuse and (out / "model.pt").is_file():
        argv += ["--checkpoint", str(out / "model.pt")]
    argv += args.extra
    print(f"\n=== {name}: {' '.join(argv)}", flush=True)
    code = module.run_cli(argv, prog=f"deeponet_{name}")
    if code != 0:
        raise SystemExit(f"{name} failed with exit code {code}")
    return json.loads((out / "metrics.json").read_text())


def table(results: dict[str, dict]) -> str:
    lines = [
        "| problem | network (params) | pretraining | rank | pretrained rel. L2 (mean ± std) | after LSR | "
        "reduction | after LSR + Gauss–Newton | reduction | s / instance | peak mem. | paper: before → after (r, GPU s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in results.items():
        stages = {st["name"]: st for st in m["stages"]}
        pre, post, gn = stages["pretrained"], stages["lsr"], stages.get("gauss_newton")
        s = m["sizes"]
        paper = PAPER[name]
        pretraining = f"{s['steps']} Adam × {s['batch_size']} fns" + (" (reloaded)" if m.get("checkpoint") else "")
        if gn:
            gn_cells = (f"{gn['rel_l2_mean']:.2e} ± {gn['rel_l2_std']:.1e} (≤ {gn['max_iterations']} it.) | "
                        f"{pre['rel_l2_mean'] / gn['rel_l2_mean']:.0f}× | "
                        f"{post['seconds_per_instance']:.2f} / {gn['seconds_per_instance']:.2f}")
        else:
            gn_cells = f"— | — | {post['seconds_per_instance']:.2f}"
        last = gn or post
        lines.append(
            f"| {name} | {s['widths']} p={s['latent']} ({m['n_params']}) | {pretraining} | "
            f"{post['rank']} | {pre['rel_l2_mean']:.2e} ± {pre['rel_l2_std']:.1e} | "
            f"{post['rel_l2_mean']:.2e} ± {post['rel_l2_std']:.1e} | {pre['rel_l2_mean'] / post['rel_l2_mean']:.0f}× | "
            f"{gn_cells} | {last['peak_memory_gb']:.2f} GB | "
            f"{paper[0]:.2e} → {paper[1]:.2e} ({paper[2]}, {paper[3]}) |")
    n = {m["stages"][1]["n_instances"] for m in results.values()}
    lines.append("")
    where = ", ".join(sorted({f"{m['device']}, {m['dtype']}" for m in results.values()}))
    lines.append(f"{'/'.join(map(str, sorted(n)))} test functions per problem; {where}, "
                 f"{torch.get_num_threads()} thread(s); s / instance: LSR / LSR + Gauss–Newton; LSR points per term: "
                 + "; ".join(f"{k}: {m['sizes']['lsr_points']}" for k, m in results.items()) + ".")
    return "\n".join(lines)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def compare_refinement(args, settings=None, counts: dict | None = None, problem=None) -> dict:
    """Time deeponet_burgers' per-instance refinement one instance at a time and in blocks, and
    write ``OUT/refinement.json`` (``settings``, ``counts`` and ``problem`` override the problem's
    defaults: network size, Gauss–Newton steps, LSR points, test grid)."""
    from pinnlsr import checkpoint as ckpt
    from pinnlsr.io import atomic_write_json
    from pinnlsr.operator_learning import refine_instances, train_pideeponet
    from pinnlsr.settings import device_and_dtype

    module = importlib.import_module("problems.deeponet_burgers")
    problem, settings = problem or module.PROBLEM(), settings or module.DEFAULTS
    device, dtype = device_and_dtype(args)
    gen = torch.Generator().manual_seed(args.seed)
    net = problem.default_deeponet(gen, dtype, device, widths=tuple(settings.widths), latent=settings.latent)
    path = Path(args.out) / "burgers" / "model.pt"
    if args.reuse and path.is_file():
        ckpt.load_into(net, path)
    else:
        steps = settings.adam_steps if args.adam_steps is None else args.adam_steps
        train = problem.sample_functions(settings.n_train, torch.Generator().manual_seed(args.seed + 1))
        train_pideeponet(problem, net, train, steps, settings.batch_size, settings.lr, settings.final_lr,
                         torch.Generator().manual_seed(args.seed + 2), log_every=max(1, steps // 10))
        ckpt.save_state_dict(net, path)
    test = problem.sample_functions(args.n_test, torch.Generator().manual_seed(args.seed + 3))
    refs = problem.references(test)
    n_loop = min(args.n_test, args.loop_instances)
    kw = dict(rank=args.rank or 400, seed=args.seed, counts=counts, gauss_newton=settings.gn_iters, dtype=dtype)
    timed = {}
    for mode, n in (("loop", n_loop), ("batched", args.n_test)):
        t = _clock(device)
        out = refine_instances(problem, net, test[:n], refs[:n], mode=mode, **kw)
        seconds = _clock(device) - t
        timed[mode] = dict(out, seconds=seconds)
        print(f"{mode}: {n} instances in {seconds:.1f} s ({seconds / n:.2f} s per instance, "
              f"{out['block_size']} per block)", flush=True)
    value = lambda row, key: getattr(row[key.split("_")[-1]], key.rsplit("_", 1)[0])  # "rel_l2_after" -> after.rel_l2
    diff = {key: max(abs(value(a, key) - value(b, key)) / abs(value(a, key))
                     for a, b in zip(timed["loop"]["instances"], timed["batched"]["instances"]))
            for key in ("rel_l2_after", "residual_after")}
    per = {mode: timed[mode]["seconds"] / len(timed[mode]["instances"]) for mode in timed}
    common = {mode: timed[mode]["instances"][:n_loop] for mode in timed}
    means = {f"{key}_mean": {mode: sum(value(r, key) for r in rows) / n_loop for mode, rows in common.items()}
             for key in ("rel_l2_before", "rel_l2_after", "residual_after")}
    result = {"problem": problem.name, "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
              "rank": kw["rank"], "gauss_newton": settings.gn_iters, "n_params": sum(p.numel() for p in net.parameters()),
              **{mode: {"path": timed[mode]["path"], "instances": len(timed[mode]["instances"]),
                        "instances_per_block": timed[mode]["block_size"], "seconds": timed[mode]["seconds"],
                        "seconds_per_instance": per[mode]} for mode in timed},
              "speedup_per_instance": per["loop"] / per["batched"], "max_relative_difference": diff,
              "on_the_loop_instances": means}
    if n_loop < args.n_test:
        result["note"] = f"the loop was timed on the first {n_loop} of the {args.n_test} instances"
    atomic_write_json(Path(args.out) / "refinement.json", result)
    print(f"speedup per instance {result['speedup_per_instance']:.1f}x; largest relative difference of the "
          f"records {max(diff.values()):.1e}; wrote {Path(args.out) / 'refinement.json'}")
    return result


def build_parser() -> Parser:
    p = Parser(prog="python scripts/benchmark_deeponet.py", description=__doc__.split("\n")[0])
    p.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS), help="problems to run")
    p.add_argument("--out", type=Path, default=Path("runs/benchmark_deeponet"), help="folder of the runs and table.md")
    p.add_argument("--seed", type=int, default=0, help="seed of every run")
    add_device_options(p)
    p.add_argument("--n-test", type=int, default=100, help="test functions per problem")
    p.add_argument("--adam-steps", type=int, default=None, help="Adam steps (default: each problem's)")
    p.add_argument("--rank", type=int, default=None, help="fixed LSR rank (default: rank scan)")
    p.add_argument("--reuse", action="store_true", help="load OUT/NAME/model.pt when present instead of pretraining")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from OUT/NAME/metrics.json")
    p.add_argument("--compare-refinement", action="store_true",
                   help="time deeponet_burgers' refinement one instance at a time and in blocks (OUT/refinement.json)")
    p.add_argument("--loop-instances", type=int, default=100,
                   help="with --compare-refinement: instances the one-at-a-time loop is timed on")
    p.add_argument("extra", nargs="*", help="more options passed to every problem (after --)")
    add_alias(p, "--steps", "--adam-steps", type=int)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()  # malloc kept for repeated tensor passes (pinnlsr.allocator)
    torch.set_num_threads(args.threads)
    if args.compare_refinement:
        if args.n_test < 1 or args.loop_instances < 1:
            raise SystemExit("--n-test and --loop-instances must be >= 1")
        compare_refinement(args)
        return 0
    results = {}
    for name in args.problems:
        if args.table_only:
            path = args.out / name / "metrics.json"
            if not path.is_file():
                print(f"skipping {name}: {path} not found")
                continue
            results[name] = json.loads(path.read_text())
        else:
            results[name] = run_problem(name, args)
        text = table(results)
        (args.out / "table.md").write_text(text + "\n")
    if not results:
        raise SystemExit("no results")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
