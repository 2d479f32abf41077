"""The README's example runs as written and refines by orders of magnitude."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "class Poisson1D" in b)
    namespace: dict = {}
    exec(compile(example, "README example", "exec"), namespace)
    d = namespace["result"].diagnostics
    assert d["after"].rel_l2 < d["before"].rel_l2 / 1000
    assert "->" in capsys.readouterr().out


def test_readme_gives_the_two_commands():
    text = README.read_text()
    assert "python -m problems.poisson2d --out runs/poisson2d" in text
    assert "python -m pytest -q tests" in text


def test_readme_is_a_short_guide():
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move results and details to docs/"
