"""Per-instance LSR of physics-informed DeepONets on the four operator problems: the README table.

For each problem: pretrain (or reuse ``OUT/NAME/model.pt`` with ``--reuse``), evaluate on
``--n-test`` test functions, choose the rank by a scan (or ``--rank``), refine each function by LSR
(then by tangent Gauss–Newton steps where the problem's defaults ask for them: Burgers, 4 steps)
and collect ``metrics.json``. Prints a Markdown table with the sizes used, and writes it to
``OUT/table.md``. CPU-sized defaults (single thread):

    python scripts/benchmark_deeponet.py --out runs/benchmark_deeponet
    python scripts/benchmark_deeponet.py --problems antiderivative --adam-steps 500 --n-test 10   # quick
    python scripts/benchmark_deeponet.py --out runs/benchmark_deeponet --table-only          # table again
"""
from __future__ import annotations

import importlib
import json
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
    p.add_argument("extra", nargs="*", help="more options passed to every problem (after --)")
    add_alias(p, "--steps", "--adam-steps", type=int)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()  # malloc kept for repeated tensor passes (pinnlsr.allocator)
    torch.set_num_threads(args.threads)
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
