"""The code's shape: imports point one way (no cycles, deferred imports included), one short training loop that
never probes its components."""
import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "lmforge"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every lmforge module `path` imports, at module level or inside functions, except under TYPE_CHECKING
    (annotations only) and the package root (`lmforge/__init__.py`'s lazy API, which imports everything)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
               for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found - {"lmforge"}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _imports(p, set(files)) - {m} for m, p in files.items()}
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]  # the checker finds one


def test_components_never_import_the_preset_schema():
    """Models, objectives, data, quantization and the training components are what `lmforge.config` validates
    against; the arrow points from config to them."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    leaves = [m for m in files if m.split(".")[1:2] and m.split(".")[1] in ("models", "objectives", "data", "quant")]
    for m in leaves + ["lmforge.training.optim", "lmforge.training.grad_filters", "lmforge.training.schedules"]:
        assert "lmforge.config" not in _imports(files[m], set(files)), m


def test_trainer_is_short_and_never_probes_components():
    source = (PACKAGE / "training" / "trainer.py").read_text()
    assert len(source.splitlines()) <= 400
    calls = {n.func.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not calls & {"getattr", "hasattr"}
