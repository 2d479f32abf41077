"""Benchmark of universal LSR: supervised fit, data-driven DeepONet, noisy inverse problem.

Runs the three problems (each writes its own metrics.json under OUT/<problem>/), then writes the
markdown table for README.md to OUT/universal.md and prints it.

    python scripts/benchmark_universal.py --out runs/universal            # defaults of each problem
    python scripts/benchmark_universal.py --out runs/universal --quick    # reduced sizes (minutes)
    python scripts/benchmark_universal.py --out runs/universal --table-only   # rebuild the table
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import torch

from pinnlsr.allocator import tune_allocator
from pinnlsr.records import StageRecord
from pinnlsr.settings import Parser, add_device_options

QUICK = {
    "fit2d": ["--samples", "2000", "--adam-steps", "500", "--widths", "20", "20"],
    "deeponet_antiderivative_data": ["--adam-steps", "2000", "--max-rank", "600"],
    "heat_inverse": ["--points", "pde=800", "bc_a=200", "--adam-steps", "1500", "--widths", "30", "30", "30"],
}


def run_problem(name: str, out: Path, extra: list[str]) -> int:
    module = importlib.import_module(f"problems.{name}")
    argv = ["--out", str(out / name)] + extra
    if name != "deeponet_antiderivative_data":
        argv.append("--quiet")
    print(f"== {name} {' '.join(argv)}", flush=True)
    return module.run_cli(argv, prog=name)


def table(out: Path) -> str:
    """Markdown table from the metrics.json files under ``out``."""
    lines = ["| problem | setting | trained | LSR | improvement | rank (criterion) | LSR seconds |",
             "|---|---|---|---|---|---|---|"]
    f = out / "fit2d" / "metrics.json"
    if f.exists():
        m = json.loads(f.read_text())
        a, l = m["stages"]
        lines.append(f"| fit2d | test rel. L2, {m['n_points']['train']} train samples, m = {m['n_params']} | "
                     f"{a['rel_l2']:.2e} | {l['rel_l2']:.2e} | {a['rel_l2'] / l['rel_l2']:.1e}x | "
                     f"{l['rank']} ({l['criterion']}) | {l['seconds']:.0f} |")
    f = out / "deeponet_antiderivative_data" / "metrics.json"
    if f.exists():
        m = json.loads(f.read_text())
        a, l = m["stages"]
        lines.append(f"| deeponet_antiderivative_data | mean test rel. L2 over {l['n_instances']} functions, "
                     f"m = {m['n_params']} | {a['rel_l2_mean']:.2e} | {l['rel_l2_mean']:.2e} | "
                     f"{a['rel_l2_mean'] / l['rel_l2_mean']:.1f}x | {l['rank']} ({l['criterion']}) | {l['seconds']:.0f} |")
    f = out / "heat_inverse" / "metrics.json"
    if f.exists():
        m = json.loads(f.read_text())
        stages = [StageRecord.from_json(s) for s in m["stages"]]
        for r in m["summary"]:
            level = [s for s in stages if s.extras.get("noise") == r["noise"]]  # adam, lsr (, gauss_newton)
            trained, final = level[0].evaluation.errors, level[-1].evaluation.errors  # outputs 0: u, 1: a
            lines.append(f"| heat_inverse | σ = {r['noise']:g}: rel. L2 of a (of u) | {trained['rel_l2_1']:.2e} "
                         f"({trained['rel_l2_0']:.2e}) | {final['rel_l2_1']:.2e} ({final['rel_l2_0']:.2e}) | "
                         f"{trained['rel_l2_1'] / final['rel_l2_1']:.1f}x | {r['rank']} of {r['max_rank']} "
                         f"(validation) | {r['seconds_lsr']:.0f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> Parser:
    p = Parser(prog="python scripts/benchmark_universal.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/universal"), help="folder of the runs and universal.md")
    add_device_options(p)
    p.add_argument("--quick", action="store_true", help="reduced sizes")
    p.add_argument("--only", nargs="+", choices=sorted(QUICK), default=sorted(QUICK), help="problems to run")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from existing runs")
    p.add_argument("--overwrite", action="store_true", help="replace earlier runs in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()  # malloc kept for repeated tensor passes (pinnlsr.allocator)
    torch.set_num_threads(args.threads)
    if not args.table_only:
        for name in args.only:
            extra = ((QUICK[name] if args.quick else []) + ["--device", args.device, "--dtype", args.dtype]
                     + (["--overwrite"] if args.overwrite else []))
            code = run_problem(name, args.out, extra)
            if code != 0:
                print(f"error: {name} failed with exit code {code}", file=sys.stderr)
                return code
    text = table(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "universal.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
