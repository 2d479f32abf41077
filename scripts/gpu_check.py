"""GPU check: every pipeline on a CUDA device at reduced size against the same run on the CPU, then
the timings that matter on a GPU. One prepared run, at most about 8 minutes on one H100/H200.

1. Reduced runs, each on the CPU and on the device with the same seed (``python -m problems.NAME``
   with ``--device``): poisson2d (Adam, LSR), burgers1d with Iterative LSR, allen_cahn1d time
   marching, kovasznay with Gauss–Newton, the Burgers PI-DeepONet with per-instance Gauss–Newton,
   and DeepXDE's 1-D Poisson example refined by :func:`pinnlsr.interop.deepxde.refine`. Every
   stage's relative L2 error must agree to rounding: 1e-6 relative for training stages, 1e-3 for
   the refinements (iterations amplify rounding differences), else the check fails.
2. Timings on the device: the paper-setting LSR step (``scripts/bench_lsr.py --size paper``, 83,073
   parameters, n = 23,000, r = 1000) in float64 and float32, and the full default burgers1d pipeline.

Writes OUT/gpu_check.json (checks, timings, device) and prints a summary; exit code 1 when a check
fails. On a machine without a GPU, ``--device cpu`` runs the same script against itself (a smoke
test of every command); ``--dry-run`` only checks that every command parses.

    python scripts/gpu_check.py --out gpu_check            # on the GPU machine
    python scripts/gpu_check.py --device cpu --only poisson2d --no-timings --out /tmp/g
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

#: reduced runs: problem module -> options (the defaults of everything else)
CASES = {
    "poisson2d": ["--adam-steps", "300"],
    "burgers1d": ["--adam-steps", "300", "--lbfgs-steps", "20", "--points", "pde=1000", "bc=100", "ic=100",
                  "--rank", "300", "--ilsr-outer", "1", "--ilsr-gn-iters", "3", "--align-iterations", "10"],
    "allen_cahn1d": ["--adam-steps", "200", "--lbfgs-steps", "10", "--points", "pde=1000", "ic=200",
                     "--time-windows", "0.5", "1.0", "--rank", "200", "--last-window-rank", "200",
                     "--last-window-points", "pde=1000", "ic=200", "--ilsr-gn-iters", "2",
                     "--align-iterations", "5"],
    "kovasznay": ["--adam-steps", "200", "--points", "pde=600", "bc=200", "--rank", "400", "--gn-iters", "2"],
    "deeponet_burgers": ["--n-train", "40", "--adam-steps", "60", "--n-test", "3", "--rank", "80",
                         "--gn-iters", "1", "--points", "pde=300", "ic=60", "bc=40"],
}
TRAINING_STAGES = ("adam", "lbfgs", "checkpoint", "pretrained")
TOL_TRAINING, TOL_REFINEMENT = 1e-6, 1e-3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and the runs")
    p.add_argument("--device", default="cuda", help="the device checked against the CPU (default: cuda)")
    p.add_argument("--threads", type=int, default=8, help="CPU threads of the CPU runs")
    p.add_argument("--only", nargs="*", choices=[*CASES, "deepxde"], default=None, help="run only these checks")
    p.add_argument("--no-timings", action="store_true", help="skip the LSR step and full-pipeline timings")
    p.add_argument("--dry-run", action="store_true", help="parse every command, run nothing")
    p.add_argument("--seed", type=int, default=0)
    return p


def stage_errors(metrics: dict) -> dict[str, float]:
    """{stage name: its relative L2 error} of a run's metrics.json (stages without one skipped)."""
    out = {}
    for stage in metrics.get("stages", []):
        value = stage.get("rel_l2", stage.get("rel_l2_mean"))
        if isinstance(value, (int, float)) and value is not None:
            out[stage["name"]] = float(value)
    return out


def compare_runs(name: str, cpu: dict, dev: dict) -> list[dict]:
    """One check per stage: the CPU and device errors agree to rounding."""
    checks = []
    for stage, a in stage_errors(cpu).items():
        b = stage_errors(dev).get(stage)
        tol = TOL_TRAINING if stage in TRAINING_STAGES else TOL_REFINEMENT
        rel = math.inf if b is None else abs(a - b) / max(abs(a), 1e-300)
        checks.append({"check": name, "stage": stage, "cpu": a, "device": b, "rel_diff": rel, "tol": tol,
                       "ok": rel <= tol})
    if not checks:
        checks.append({"check": name, "stage": None, "ok": False, "note": "no stage with an error to compare"})
    return checks


def run_command(cmd: list[str], log: Path, timeout: float) -> tuple[int, float]:
    """Run ``cmd`` with its output in ``log``; (exit code, seconds)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        try:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.perf_counter() - start


def run_together(cmds: dict[str, list[str]], logs: dict[str, Path], timeout: float) -> dict[str, tuple[int, float]]:
    """Run the commands at the same time (the CPU run and the device run use different hardware);
    {label: (exit code, seconds)}."""
    start, procs, files, out = time.perf_counter(), {}, {}, {}
    for label, cmd in cmds.items():
        files[label] = open(logs[label], "w")
        procs[label] = subprocess.Popen(cmd, stdout=files[label], stderr=subprocess.STDOUT)
    for label, proc in procs.items():
        try:
            code = proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = 124
        out[label] = (code, time.perf_counter() - start)
        files[label].close()
    return out


def problem_command(name: str, options: list[str], device: str, out: Path, threads: int, seed: int) -> list[str]:
    cmd = [sys.executable, "-m", f"problems.{name}", *options, "--device", device, "--seed", str(seed),
           "--out", str(out), "--overwrite", "--no-plot"]
    if not name.startswith("deeponet_"):  # the operator problems' CLI keeps torch's threads and is quiet
        cmd += ["--threads", str(threads), "--quiet"]
    return cmd


def check_parses(cmd: list[str]) -> None:
    """Parse a problem command with its module's parser (nothing runs)."""
    from pinnlsr import operator_cli, runner
    from pinnlsr.operator_learning import OperatorProblem
    from pinnlsr.problem import PDEProblem

    name = cmd[2].split(".", 1)[1]
    module = importlib.import_module(f"problems.{name}")
    cls = next(v for v in vars(module).values() if isinstance(v, type) and getattr(v, "name", None) == name
               and v.__module__ == module.__name__)
    defaults = getattr(module, "DEFAULTS", None)
    if issubclass(cls, OperatorProblem):
        parser = operator_cli.build_parser(cls(), defaults)
    elif issubclass(cls, PDEProblem):
        parser = runner.build_parser(cls(), defaults)
    else:
        raise SystemExit(f"gpu_check: {name} is neither a PDE nor an operator problem")
    try:
        parser.parse_args(cmd[3:])
    except SystemExit as exc:
        raise SystemExit(f"gpu_check: the command for {name} does not parse: {' '.join(cmd[3:])}") from exc


def deepxde_check(device: str) -> list[dict]:
    """DeepXDE's 1-D Poisson example (-u'' = π² sin πx, Dirichlet), 200 Adam steps on the CPU, then
    one-shot LSR on the CPU and on the device."""
    os.environ.setdefault("DDE_BACKEND", "pytorch")
    import deepxde as dde
    import numpy as np
    import torch

    from pinnlsr.interop import deepxde as px

    dde.config.set_default_float("float64")
    dde.config.set_random_seed(0)
    geom = dde.geometry.Interval(-1, 1)
    bc = dde.icbc.DirichletBC(geom, lambda x: np.sin(np.pi * x), lambda x, on: on)
    data = dde.data.PDE(geom, lambda x, y: -dde.grad.hessian(y, x) - np.pi**2 * torch.sin(np.pi * x), bc, 64, 2,
                        solution=lambda x: np.sin(np.pi * x), num_test=200)
    model = dde.Model(data, dde.nn.FNN([1, 20, 20, 1], "tanh", "Glorot uniform"))
    model.compile("adam", lr=1e-3)
    model.train(iterations=200, display_every=1000)
    cpu = px.refine(model, device="cpu").diagnostics
    dev = px.refine(model, device=device).diagnostics
    checks = []
    for tag in ("before", "after"):
        a, b = cpu[tag].rel_l2, dev[tag].rel_l2
        rel = abs(a - b) / max(abs(a), 1e-300)
        tol = TOL_TRAINING if tag == "before" else TOL_REFINEMENT
        checks.append({"check": "deepxde_poisson", "stage": f"rel_l2_{tag}", "cpu": a, "device": b, "rel_diff": rel,
                       "tol": tol, "ok": rel <= tol})
    return checks


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    selected = args.only if args.only is not None else [*CASES, "deepxde"]
    result = {"device": args.device, "seed": args.seed, "checks": [], "timings": {}, "errors": []}
    if args.device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            result["device_name"] = torch.cuda.get_device_name()
    for name in (n for n in selected if n in CASES):
        cmds = {label: problem_command(name, CASES[name], device, args.out / f"{name}-{label}", threads, args.seed)
                for label, device, threads in (("cpu", "cpu", args.threads), ("device", args.device, 1))}
        if args.dry_run:
            for cmd in cmds.values():
                check_parses(cmd)
            print(f"{name}: parsed", flush=True)
            continue
        done = run_together(cmds, {label: args.out / f"{name}-{label}.log" for label in cmds}, timeout=300)
        runs = {}
        for label, (code, seconds) in done.items():
            result["timings"][f"{name}_{label}_s"] = seconds
            metrics = args.out / f"{name}-{label}" / "metrics.json"
            if code != 0 or not metrics.is_file():
                result["errors"].append(f"{name} on {label}: exit code {code} (see {name}-{label}.log)")
            else:
                runs[label] = json.loads(metrics.read_text())
        if len(runs) == 2:
            result["checks"] += compare_runs(name, runs["cpu"], runs["device"])
        print(f"{name}: done", flush=True)
    if "deepxde" in selected and not args.dry_run:
        try:
            result["checks"] += deepxde_check(args.device)
        except Exception as exc:  # a missing DeepXDE or a device failure: reported, the rest still runs
            result["errors"].append(f"deepxde_poisson: {type(exc).__name__}: {exc}")
    if not args.no_timings and not args.dry_run:
        for dtype in ("float64", "float32"):
            cmd = [sys.executable, str(Path(__file__).with_name("bench_lsr.py")), "--size", "paper", "--device",
                   args.device, "--dtype", dtype, "--processes", "0", "--no-scan", "--out",
                   str(args.out / f"lsr_paper_{dtype}")]
            code, seconds = run_command(cmd, args.out / f"lsr_paper_{dtype}.log", timeout=150)
            bench = args.out / f"lsr_paper_{dtype}" / "bench.json"
            if code == 0 and bench.is_file():
                result["timings"][f"lsr_step_paper_{dtype}"] = json.loads(bench.read_text())
            else:
                result["errors"].append(f"paper LSR step {dtype}: exit code {code}")
        cmd = problem_command("burgers1d", [], args.device, args.out / "burgers1d-full", 1, args.seed)
        code, seconds = run_command(cmd, args.out / "burgers1d-full.log", timeout=420)
        metrics = args.out / "burgers1d-full" / "metrics.json"
        if code == 0 and metrics.is_file():
            stages = json.loads(metrics.read_text())["stages"]
            result["timings"]["burgers1d_full"] = {"seconds": seconds, "rel_l2": stage_errors({"stages": stages}),
                                                   "stage_seconds": {s["name"]: s.get("seconds") for s in stages}}
        else:
            result["errors"].append(f"full burgers1d on {args.device}: exit code {code}")
    failed = [c for c in result["checks"] if not c["ok"]]
    result["ok"] = not failed and not result["errors"]
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    for c in result["checks"]:
        print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']:18s} {str(c['stage']):14s} cpu {c.get('cpu')} "
              f"device {c.get('device')} rel diff {c.get('rel_diff', float('nan')):.1e}")
    for e in result["errors"]:
        print("error:", e)
    print(f"wrote {args.out / 'gpu_check.json'}: {'all checks passed' if result['ok'] else 'FAILED'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
