"""The package's modules import each other without cycles (lazy imports inside functions count)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pinnlsr"


def module_imports() -> dict[str, set[str]]:
    """{module: pinnlsr modules it imports}, from every relative import in its source."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("pinnlsr",) + path.relative_to(PACKAGE).with_suffix("").parts
        names[path] = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    known = set(names.values())
    graph = {}
    for path, name in names.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                candidates = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
                deps |= {c for c in candidates if c in known and c != name}
        graph[name] = deps
    return graph


def test_no_import_cycles():
    graph = module_imports()
    assert "pinnlsr.engine" in graph["pinnlsr.linearize"]  # the parser sees relative imports

    def reachable(start):
        seen, stack = set(), [start]
        while stack:
            for dep in graph[stack.pop()]:
                if dep not in seen:
                    seen.add(dep)
                    stack.append(dep)
        return seen

    cycles = sorted((a, b) for a in graph for b in graph[a] if a in reachable(b))
    assert not cycles, f"import cycles (module, imported module that leads back): {cycles}"


#: The package's layers, lowest first: a module imports from its own layer and the layers below.
#: Networks sit below problems (a problem names its default network); the dense solvers and the
#: checkpoint/data readers below everything (they know nothing of PDEs or networks).
LAYERS = {
    "base": ["allocator", "io", "datafolder", "reference", "meshfiles", "readers", "datasets", "interpolation",
             "checkpoint", "solvers", "qr", "records"],
    "nn": ["models", "deeponet"],
    "problem": ["geometry", "geometry.sampling", "geometry.domain", "geometry.shapes", "geometry.spacetime",
                "operators", "problem", "grf", "reference_solvers", "metrics"],
    "linearize": ["residual", "jacobian", "jets", "jet_models", "jet_plans", "engine", "linearize", "instance_batch"],
    "linalg": ["streaming", "subspace"],
    "refine": ["lsr", "gauss_newton", "ilsr", "marching", "rank", "distributed", "train"],
    "operators and interop": ["operator_batched", "operator_learning", "interop", "interop.deepxde_problem", "interop.deepxde",
                              "interop.deepxde_operator"],
    "app": ["settings", "runfolder", "plotting_fields", "plotting", "report", "compare", "pipeline", "runner", "operator_cli", "cli", "__init__"],
}


def test_imports_go_down_the_layers_only():
    graph = module_imports()
    level = {}
    for i, modules in enumerate(LAYERS.values()):
        for m in modules:
            level["pinnlsr" if m == "__init__" else f"pinnlsr.{m}"] = i
    missing = sorted(set(graph) - set(level))
    assert not missing, f"modules without a layer (add them to LAYERS): {missing}"
    names = list(LAYERS)
    upward = sorted(f"{a} ({names[level[a]]}) imports {b} ({names[level[b]]})"
                    for a in graph for b in graph[a] if level[b] > level[a])
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_no_module_is_over_600_lines():
    long = sorted(f"{p.relative_to(PACKAGE.parent)} ({n} lines)" for p in PACKAGE.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > 600)
    assert not long, f"modules over 600 lines (split them along their concepts): {long}"
