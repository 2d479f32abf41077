"""scripts/gpu_check.py on the CPU: every prepared command parses, and the comparison of a CPU run
with a device run flags what differs by more than rounding."""
import json

from scripts_helper import load_script


def load():
    return load_script("gpu_check")


def test_every_prepared_command_parses(tmp_path):
    gc = load()
    assert gc.main(["--dry-run", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "gpu_check.json").read_text())["ok"] is True


def test_comparison_flags_differences_beyond_rounding():
    gc = load()
    cpu = {"stages": [{"name": "adam", "rel_l2": 1e-2}, {"name": "lsr", "rel_l2": 1e-8},
                      {"name": "instances", "rel_l2_mean": 3e-5}, {"name": "report"}]}
    same = {"stages": [{"name": "adam", "rel_l2": 1e-2 * (1 + 1e-9)}, {"name": "lsr", "rel_l2": 1.0001e-8},
                       {"name": "instances", "rel_l2_mean": 3e-5}]}
    assert all(c["ok"] for c in gc.compare_runs("p", cpu, same))
    off = {"stages": [{"name": "adam", "rel_l2": 1.001e-2}, {"name": "lsr", "rel_l2": 2e-8}]}
    checks = {c["stage"]: c for c in gc.compare_runs("p", cpu, off)}
    assert not checks["adam"]["ok"] and not checks["lsr"]["ok"] and not checks["instances"]["ok"]
    assert gc.compare_runs("p", {"stages": []}, {"stages": []})[0]["ok"] is False
