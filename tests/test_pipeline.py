"""pinnlsr.pipeline: a problem's own pipeline of named stages runs with the shared parts (options,
run folder, config.json, metrics.json through the stage records), and problem modules use only
the public runner and pipeline API."""
import ast
import json
from pathlib import Path

import pytest

from pinnlsr.pipeline import Pipeline, Stage, add_run_options, run_guarded, run_pipeline
from pinnlsr.records import Evaluation, StageRecord
from pinnlsr.settings import Parser

PROBLEMS = Path(__file__).resolve().parents[1] / "problems"


class Toy:
    name, input_names, output_names = "toy", ("x",), ("u",)


def toy_pipeline(fail_in_prepare: bool = False) -> Pipeline:
    def prepare(run):
        if fail_in_prepare:
            raise ValueError("toy: bad input")
        run.state.value = float(run.generator.initial_seed())
        run.metrics["n_params"] = 3

    def fit(run):
        return StageRecord("fit", 0.5, Evaluation({"rel_l2": 0.25}, run.state.value), {"steps": 2})

    def skipped(run):
        return None

    def refine(run):
        previous = run.stages[-1]
        return StageRecord("refine", 0.1, Evaluation({"rel_l2": previous.rel_l2 / 10}, 1.0))

    def finish(run, metrics):
        metrics["improvement"] = run.stages[0].rel_l2 / run.stages[-1].rel_l2

    return Pipeline(Toy, [Stage("fit", fit), Stage("skipped", skipped), Stage("refine", refine)],
                    prepare=prepare, finish=finish)


def parse(argv):
    p = Parser(prog="toy")
    add_run_options(p, seed_help="seed", out_help="folder")
    return p.parse_args(argv)


def test_a_declared_pipeline_runs_its_stages_with_the_shared_parts(tmp_path, capsys):
    metrics = run_pipeline(toy_pipeline(), parse(["--seed", "7", "--out", str(tmp_path)]))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics
    assert list(saved) == ["problem", "seed", "device", "dtype", "n_params", "stages", "improvement"]
    assert (saved["problem"], saved["seed"], saved["n_params"]) == ("toy", 7, 3)
    assert [s["name"] for s in saved["stages"]] == ["fit", "refine"]  # a stage returning None leaves none
    assert saved["stages"][0] == {"name": "fit", "rel_l2": 0.25, "max_abs_err": None, "residual": 7.0,
                                  "seconds": 0.5, "steps": 2}
    assert saved["improvement"] == pytest.approx(10.0)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["problem"], config["input_names"], config["seed"]) == ("toy", ["x"], 7)
    out = capsys.readouterr().out
    assert "refine" in out.splitlines()[2] and f"wrote {tmp_path / 'metrics.json'}" in out


def test_the_run_folder_is_refused_or_replaced_as_for_every_run(tmp_path, capsys):
    assert run_guarded(run_pipeline, toy_pipeline(), parse(["--out", str(tmp_path)]))[0] == 0
    code, _ = run_guarded(run_pipeline, toy_pipeline(), parse(["--out", str(tmp_path)]))
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    (tmp_path / "metrics.json").write_text("{}")
    code, _ = run_guarded(run_pipeline, toy_pipeline(fail_in_prepare=True), parse(["--out", str(tmp_path),
                                                                                    "--overwrite"]))
    assert code == 2 and "toy: bad input" in capsys.readouterr().err
    assert (tmp_path / "metrics.json").read_text() == "{}"  # bad input fails before any file is touched
    assert run_guarded(run_pipeline, toy_pipeline(), parse(["--out", str(tmp_path), "--overwrite"]))[0] == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["stages"]


def private_pinnlsr_names(path: Path) -> list[str]:
    """``module.name`` of every private (underscore) name of the pinnlsr package that ``path``
    imports or reaches as an attribute of an imported pinnlsr module."""
    tree = ast.parse(path.read_text())
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pinnlsr"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{node.module}.{alias.name}")
                else:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pinnlsr"):
                    if any(part.startswith("_") for part in alias.name.split(".")):
                        found.append(alias.name)
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_problem_modules_use_no_private_runner_or_library_name(tmp_path):
    found = {p.name: names for p in sorted(PROBLEMS.glob("*.py")) if (names := private_pinnlsr_names(p))}
    assert not found, f"problem modules importing private pinnlsr names (use pinnlsr.pipeline instead): {found}"
    probe = tmp_path / "probe.py"
    probe.write_text("from pinnlsr.runner import _stage, check_options\nfrom pinnlsr import runner\nrunner._stage('a')\n")
    assert private_pinnlsr_names(probe) == ["pinnlsr.runner._stage", "runner._stage"]  # the scan sees both forms
