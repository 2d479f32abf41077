"""Every bad input is a clear error before any computing: exit code 2 and one line naming the
problem (command line), or a named exception (API). Each case runs in-process and stops at the
checks, so the table stays fast."""
import json

import pytest
import torch
from torch import nn

from pinnlsr import cli, runner
from pinnlsr.ilsr import CHECKPOINT_VERSION, iterative_lsr, read_checkpoint
from pinnlsr.lsr import lsr
from pinnlsr.models import MLP
from pinnlsr.problem import Term
from problems.deeponet_antiderivative import run_cli as operator_cli
from problems.deeponet_antiderivative_data import run_cli as data_operator_cli
from problems.allen_cahn1d import AllenCahn1D
from problems.fit2d import run_cli as fit2d_cli
from problems.heat_inverse import run_cli as heat_cli
from problems.poisson2d import Poisson2D

NETS = '''
import torch
from torch import nn

def needs_args(width):
    return nn.Linear(2, width)

def not_module():
    return 3

def three_inputs():
    return nn.Linear(3, 1, dtype=torch.float64)

def two_outputs():
    return nn.Linear(2, 2, dtype=torch.float64)

not_callable = 5
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad files referred to by the cases as {name}."""
    d = tmp_path_factory.mktemp("bad")
    (d / "nets.py").write_text(NETS)
    (d / "afile").write_text("not a folder")
    (d / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated")
    torch.save({"model": {"w": torch.zeros(2)}, "obj": nn.Linear(1, 1)}, d / "pickled.pt")
    torch.save(MLP(2, 1, (7,)).state_dict(), d / "wrong.pt")
    state = Poisson2D().default_model().state_dict()
    state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    torch.save(state, d / "nan.pt")
    (d / "oldrun").mkdir()
    (d / "oldrun" / "metrics.json").write_text("{}")
    (d / "badckpt").mkdir()
    (d / "badckpt" / "ilsr.pt").write_bytes(b"\x80\x04 not a checkpoint")
    (d / "oldckpt").mkdir()
    torch.save({"version": 1, "model": {}}, d / "oldckpt" / "ilsr.pt")
    (d / "otherseed").mkdir()
    torch.save({"version": CHECKPOINT_VERSION, "model": {}}, d / "otherseed" / "ilsr.pt")
    args = runner.build_parser(Poisson2D()).parse_args(["--seed", "7", "--ilsr-outer", "1"])
    (d / "otherseed" / "config.json").write_text(json.dumps(runner.run_config(Poisson2D(), args)))
    return d


def poisson(argv):
    return runner.main(Poisson2D, argv)


def allen_cahn(argv):
    return runner.main(lambda: AllenCahn1D(widths=(6,)), argv)


BASE = ["--adam-steps", "0", "--quiet", "--no-plot", "--points", "pde=20", "bc=8"]

#: (id, entry point, argv after BASE (runner) or alone, message fragment); all exit with code 2
CLI_CASES = [
    ("rank-not-int", poisson, ["--rank", "abc"], "invalid int value"),
    ("dtype-choice", poisson, ["--dtype", "float16"], "invalid choice"),
    ("subspace-choice", poisson, ["--subspace", "tiny"], "invalid choice"),
    ("unknown-flag", poisson, ["--ranks", "3"], "unrecognized arguments"),
    ("out-empty", poisson, ["--out", ""], "--out is empty"),
    ("adam-negative", poisson, ["--adam-steps", "-1"], "--adam-steps must be"),
    ("lbfgs-negative", poisson, ["--lbfgs-steps", "-5"], "--lbfgs-steps must be"),
    ("ilsr-negative", poisson, ["--ilsr-outer", "-1"], "--ilsr-outer must be"),
    ("power-negative", poisson, ["--power-iterations", "-1"], "--power-iterations must be"),
    ("oversampling-negative", poisson, ["--oversampling", "-3"], "--oversampling must be"),
    ("rcond-negative", poisson, ["--rcond", "-1"], "--rcond must be"),
    ("rcond-nan", poisson, ["--rcond", "nan"], "--rcond must be"),
    ("tikhonov-negative", poisson, ["--tikhonov=-1e-3"], "--tikhonov must be"),
    ("gn-negative", poisson, ["--gn-iters", "-2"], "--gn-iters must be"),
    ("align-negative", poisson, ["--align-iterations", "-1"], "--align-iterations must be"),
    ("damping-negative", poisson, ["--gn-damping", "-1"], "--gn-damping must be"),
    ("dtau-zero", poisson, ["--dtau", "0"], "--dtau must be"),
    ("lr-zero", poisson, ["--lr", "0"], "--lr must be"),
    ("lr-inf", poisson, ["--lr", "inf"], "--lr must be"),
    ("final-lr-negative", poisson, ["--final-lr=-1e-4"], "--final-lr must be"),
    ("memory-zero", poisson, ["--memory-budget-gb", "0"], "--memory-budget-gb must be"),
    ("rank-zero", poisson, ["--rank", "0"], "--rank must be >= 1"),
    ("threads-zero", poisson, ["--threads", "0"], "--threads must be >= 1"),
    ("last-rank-zero", poisson, ["--last-window-rank", "0"], "--last-window-rank must be"),
    ("device-typo", poisson, ["--device", "cpux"], "not a torch device"),
    ("device-missing-gpu", poisson, ["--device", "cuda:99"], "cuda"),
    ("points-zero", poisson, ["--points", "pde=0"], "positive integer"),
    ("points-no-count", poisson, ["--points", "pde"], "positive integer"),
    ("points-unknown-term", poisson, ["--points", "pdf=10"], "unknown terms"),
    ("points-twice", poisson, ["--points", "pde=10", "pde=20"], "twice"),
    ("out-is-file", poisson, ["--out", "{afile}"], "is not a folder"),
    ("out-under-file", poisson, ["--out", "{afile}/run"], "not writable"),
    ("out-holds-run", poisson, ["--out", "{oldrun}"], "holds an earlier run"),
    ("resume-no-out", poisson, ["--resume", "--ilsr-outer", "1"], "give --out"),
    ("resume-no-ilsr", poisson, ["--resume", "--out", "{oldrun}"], "--resume continues"),
    ("resume-nothing", poisson, ["--resume", "--ilsr-outer", "1", "--out", "{oldrun}"], "holds no checkpoint"),
    ("resume-and-overwrite", poisson, ["--resume", "--overwrite", "--ilsr-outer", "1", "--out", "{oldrun}"],
     "give one of them"),
    ("overwrite-no-out", poisson, ["--overwrite"], "give --out"),
    ("resume-corrupt-checkpoint", poisson, ["--resume", "--ilsr-outer", "1", "--out", "{badckpt}"],
     "not a readable Iterative LSR checkpoint"),
    ("resume-old-checkpoint", poisson, ["--resume", "--ilsr-outer", "1", "--out", "{oldckpt}"], "version 1"),
    ("resume-other-seed", poisson, ["--resume", "--ilsr-outer", "1", "--out", "{otherseed}"], "seed: 7 then, 0 now"),
    ("model-no-colon", poisson, ["--model", "nets"], "must look like"),
    ("model-missing-module", poisson, ["--model", "no_such_package.nets:make"], "not found"),
    ("model-missing-file", poisson, ["--model", "{afile}.py:make"], "does not exist"),
    ("model-missing-attr", poisson, ["--model", "{nets.py}:make"], "has no attribute"),
    ("model-not-callable", poisson, ["--model", "{nets.py}:not_callable"], "not callable"),
    ("model-needs-args", poisson, ["--model", "{nets.py}:needs_args"], "takes no arguments"),
    ("model-not-module", poisson, ["--model", "{nets.py}:not_module"], "not a torch.nn.Module"),
    ("model-three-inputs", poisson, ["--model", "{nets.py}:three_inputs"], "model failed on points"),
    ("model-three-inputs-checkpoint", poisson, ["--model", "{nets.py}:three_inputs", "--checkpoint", "{wrong.pt}"],
     "model failed on points"),
    ("model-two-outputs", poisson, ["--model", "{nets.py}:two_outputs"], "expects (N, 1)"),
    ("checkpoint-missing", poisson, ["--checkpoint", "{afile}.pt"], "does not exist"),
    ("checkpoint-corrupt", poisson, ["--checkpoint", "{corrupt.pt}"], "not a readable torch file"),
    ("checkpoint-pickled", poisson, ["--checkpoint", "{pickled.pt}"], "refuses to execute"),
    ("checkpoint-other-net", poisson, ["--checkpoint", "{wrong.pt}"], "does not match the model"),
    ("checkpoint-nan", poisson, ["--checkpoint", "{nan.pt}"], "NaN or Inf"),
    ("windows-no-time", poisson, ["--time-windows", "0.5", "1"], "TimeDomain"),
    ("last-window-no-windows", poisson, ["--last-window-outer", "2"], "need time_windows"),
    ("final-rank-no-iterations", poisson, ["--final-rank", "20"], "give it iterations"),
    ("final-points-bad", poisson, ["--final-gn-iters", "1", "--final-points", "pde=x"], "--final-points expects"),
    ("final-without-stage", poisson, ["--final-gn-iters", "1"], "continues an ilsr stage"),
    ("final-rank-gauss-newton", poisson, ["--gn-iters", "1", "--final-gn-iters", "1", "--final-rank", "20"],
     "drop --final-rank"),
    ("subspace-rank", poisson, ["--subspace", "randomized"], "--rank R"),
    ("cli-unknown-problem", cli.main, ["run", "no_such_problem"], "unknown problem"),
    ("cli-unknown-command", cli.main, ["bogus"], "invalid choice"),
    ("cli-run-bad-rank", cli.main, ["run", "poisson2d", "--rank", "-1"], "--rank must be >= 1"),
    ("cli-compare-out-empty", cli.main, ["compare", "poisson2d", "--out", ""], "--out is empty"),
    ("cli-report-missing", cli.main, ["report", "{afile}/none"], "does not exist"),
    ("operator-steps-negative", operator_cli, ["--adam-steps", "-1"], "--adam-steps must be >= 0"),
    ("operator-n-test-zero", operator_cli, ["--n-test", "0"], "--n-test must be >= 1"),
    ("operator-out-holds-run", operator_cli, ["--out", "{oldrun}"], "holds an earlier run"),
    ("operator-points", operator_cli, ["--points", "pde=x"], "--points expects TERM=N"),
    ("operator-points-unknown-term", operator_cli, ["--points", "pdf=10"], "unknown terms"),
    ("operator-device", operator_cli, ["--device", "tpu"], "not a torch device"),
    ("operator-device-missing-gpu", operator_cli, ["--device", "cuda:7"], "cuda"),
    ("fit2d-device", fit2d_cli, ["--device", "cpux"], "not a torch device"),
    ("fit2d-samples-zero", fit2d_cli, ["--samples", "0"], "--samples must be >= 1"),
    ("fit2d-adam-negative", fit2d_cli, ["--adam-steps", "-3"], "--adam-steps must be"),
    ("data-operator-latent-zero", data_operator_cli, ["--latent", "0"], "--latent must be >= 1"),
    ("data-operator-lr-zero", data_operator_cli, ["--lr", "0"], "--lr must be"),
    ("heat-points-file", heat_cli, ["--points-file", "{afile}.npz"], "not found"),
    ("heat-noise-negative", heat_cli, ["--noise", "-1"], "need noise >= 0"),
    ("windows-not-increasing", allen_cahn, ["--time-windows", "0.5", "0.2", "1"], "increasing"),
    ("windows-past-t1", allen_cahn, ["--time-windows", "0.5", "2"], "must end at t1"),
]


@pytest.mark.parametrize("entry,argv,fragment", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_command_line_exits_2_with_one_line(entry, argv, fragment, files, capsys):
    argv = [_fill(a, files) for a in (BASE + argv if entry is poisson else argv)]
    try:
        code = entry(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert fragment in err
    assert len(err.splitlines()) == 1, err  # one line, no traceback, no usage text


def _fill(arg: str, files) -> str:
    """'{name}' -> the path of that file in the fixture folder."""
    if "{" not in arg:
        return arg
    head, _, rest = arg.partition("{")
    name, _, tail = rest.partition("}")
    return f"{head}{files / name}{tail}"


class TwoPDE(Poisson2D):
    def terms(self):
        return super().terms() + [Term("pde", self.pde, self.domain.sample_interior, 10)]


def _positional_sampler():
    problem = Poisson2D()
    problem.terms = lambda: [Term("pde", problem.pde, lambda n, g: torch.rand(n, 2, generator=g), 5)]
    return problem.sample_points(torch.Generator())


def _points(nan=False):
    pts = Poisson2D(n_interior=20, n_boundary=8).sample_points(torch.Generator().manual_seed(0))
    if nan:
        pts["pde"][3, 0] = float("nan")
    return pts


def _small():
    problem = Poisson2D(n_interior=20, n_boundary=8)
    return problem, problem.default_model(torch.Generator().manual_seed(0))


#: (id, call, exception type, message fragment)
API_CASES = [
    ("duplicate-terms", lambda f: lsr(TwoPDE(), _small()[1], points=_points()), ValueError, "must be unique"),
    ("nan-points", lambda f: lsr(_small()[0], _small()[1], points=_points(nan=True)), ValueError,
     "given points contain NaN"),
    ("positional-sampler", lambda f: _positional_sampler(), TypeError, "generator=g"),
    ("ilsr-corrupt-checkpoint", lambda f: iterative_lsr(*_small(), outer_iterations=1,
                                                        checkpoint=f / "badckpt" / "ilsr.pt"),
     ValueError, "not a readable Iterative LSR checkpoint"),
    ("ilsr-foreign-file", lambda f: read_checkpoint(f / "wrong.pt"), ValueError, "not an Iterative LSR checkpoint"),
    ("ilsr-old-version", lambda f: read_checkpoint(f / "oldckpt" / "ilsr.pt"), ValueError, "version 1"),
    ("ilsr-resample", lambda f: iterative_lsr(*_small(), resample="random"), ValueError, "resample must be"),
    ("ilsr-accept", lambda f: iterative_lsr(*_small(), accept="always"), ValueError, "accept must be"),
    ("lsr-points-missing-term", lambda f: lsr(*_small(), points={"pde": _points()["pde"]}), ValueError,
     "missing ['bc']"),
]


@pytest.mark.parametrize("call,exc,fragment", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_bad_api_input_raises_a_named_error(call, exc, fragment, files):
    with pytest.raises(exc) as info:
        call(files)
    assert fragment in str(info.value)

