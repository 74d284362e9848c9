"""The import graph of activeseg follows the layering written in docs/architecture.md §2.

The graph is built with ``ast`` from the source files (nothing is imported), counting
every ``import`` statement, at module level or inside a function.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "activeseg"
STRATEGIES = ROOT / "strategies"
DOC = ROOT / "docs" / "architecture.md"
HEAVY = ("torch", "torchvision", "segmentation_models_pytorch", "timm", "modAL", "skorch", "matplotlib", "sklearn", "skimage",
         "dask", "distributed", "ome_zarr", "napari", "qtpy", "magicgui", "superqt", "npe2")


def _module_name(path: Path) -> str:
    if path.is_relative_to(STRATEGIES):
        rel = path.relative_to(STRATEGIES).with_suffix("")
        parts = ["activeseg", "strategies", *rel.parts]
    else:
        parts = ["activeseg", *path.relative_to(PKG).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = sorted(PKG.rglob("*.py")) + sorted(STRATEGIES.rglob("*.py"))
    return {_module_name(p): p for p in files}


MODULES = _sources()


def _imports(path: Path, name: str):
    """``(target_module, imported_names, at_module_level, lineno)`` for every import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    # statements nested only in `if TYPE_CHECKING:` / try blocks at module level still count as module level
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((a.name, (), id(node) in top, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = tuple(a.name for a in node.names)
            # "from activeseg import io" imports the module activeseg.io
            subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES]
            if subs:
                for s in subs:
                    out.append((s, (), id(node) in top, node.lineno))
                rest = tuple(n for n in names if f"{mod}.{n}" not in MODULES)
                if rest:
                    out.append((mod, rest, id(node) in top, node.lineno))
            else:
                out.append((mod, names, id(node) in top, node.lineno))
    return out


def _internal(target: str) -> str | None:
    """The activeseg module a dotted import target names (the longest known prefix)."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in MODULES:
            return cand
    return None


def _graph(*, module_level_only: bool = False) -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for target, _names, top, _line in _imports(path, name):
            if module_level_only and not top:
                continue
            t = _internal(target)
            if t and t != name:
                g[name].add(t)
    return g


def _unit(module: str) -> str:
    """The layering unit of a module: ``activeseg.loop.steps`` -> ``loop``, ``activeseg.strategies.x`` -> ``strategies``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "activeseg"


def _allowed_table() -> dict[str, set[str]]:
    """``unit -> units it may import`` from the module table of docs/architecture.md §2."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## 2.", 1)[1].split("\n## ", 1)[0]
    allowed = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        unit = cells[0].strip("`").rstrip("/").split(".")[0]
        targets = set(re.findall(r"`([a-z_]+)`", cells[2]))
        allowed[unit] = targets
    return allowed


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(g.get(v, ())):
            if state.get(w) == 1:
                found.append(stack[stack.index(w):] + [w])
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(g):
        if v not in state:
            visit(v)
    return found


def _closure(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        for w in g.get(v, ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_graph_is_read():
    g = _graph()
    assert {"activeseg.cli", "activeseg.loop.steps", "activeseg.io", "activeseg.strategies.scored"} <= set(g)
    assert "activeseg.loop.steps" in g["activeseg.cli"] or "activeseg.loop" in g["activeseg.cli"]
    assert g["activeseg.loop.steps"]  # the steps import something: the parser sees imports


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_names_across_modules():
    bad = []
    for name, path in MODULES.items():
        for target, names, _top, line in _imports(path, name):
            t = _internal(target)
            if t is None or t == name:
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {t}.{n}")
    assert not bad, "\n".join(bad)


def test_layering_follows_the_architecture_table():
    allowed = _allowed_table()
    units = {_unit(m) for m in MODULES} - {"activeseg"}
    missing = sorted(units - set(allowed))
    assert not missing, f"docs/architecture.md §2 has no row for {missing}"
    bad = []
    for name, deps in _graph().items():
        u = _unit(name)
        if u == "activeseg":  # the package's __init__ (the version string)
            continue
        for d in deps:
            du = _unit(d)
            if du != u and du != "activeseg" and du not in allowed.get(u, set()):
                bad.append(f"{name} imports {d}, but the table lets {u} import only {sorted(allowed.get(u, ()))}")
    assert not bad, "\n".join(bad)


PRESENTATION = {"cli", "plots", "tables", "report"}
APPLICATION = {"study"}  # simulated studies produce reports: they may use presentation


def test_pinned_arrows_that_must_never_exist():
    g = _graph()
    bad = []
    for name, deps in g.items():
        u = _unit(name)
        if u in PRESENTATION | APPLICATION:
            continue
        for d in deps:
            if _unit(d) in PRESENTATION:
                bad.append(f"core module {name} imports presentation {d}")
        if u != "cli" and any(_unit(d) == "cli" for d in deps):
            bad.append(f"{name} imports the CLI")
    assert "activeseg.infer" not in _closure(g, "activeseg.model"), "model imports infer"
    assert not bad, "\n".join(bad)


def test_strategies_never_import_torch():
    g = _graph(module_level_only=True)
    torch_modules = {m for m, p in MODULES.items()
                     if any(t.split(".")[0] in ("torch", "segmentation_models_pytorch", "timm")
                            for t, _n, top, _l in _imports(p, m) if top)}
    for name in (m for m in MODULES if _unit(m) == "strategies"):
        reached = _closure(g, name) | {name}
        direct = {t.split(".")[0] for m in reached for t, _n, top, _l in _imports(MODULES[m], m) if top}
        assert "torch" not in direct and not (reached & torch_modules), f"{name} reaches torch through {reached & torch_modules}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_function_level_imports_are_heavy_or_explained(name):
    """Imports inside functions are for heavy optional modules (torch, matplotlib, ...) or
    modules that import them, each with a comment on its line or the line above."""
    path = MODULES[name]
    lines = path.read_text(encoding="utf-8").splitlines()
    g = _graph(module_level_only=True)
    heavy_internal = {m for m, p in MODULES.items()
                      if any(t.split(".")[0] in HEAVY for t, _n, top, _l in _imports(p, m) if top)}
    heavy_internal |= {m for m in MODULES if _closure(g, m) & heavy_internal}
    bad = []
    for target, _names, top, line in _imports(path, name):
        if top:
            continue
        t = _internal(target)
        heavy = target.split(".")[0] in HEAVY or (t is not None and t in heavy_internal)
        # a comment on the line, or above the block of imports it belongs to
        i = line - 2
        while i >= 0 and lines[i].strip().startswith(("from ", "import ")) and "#" not in lines[i]:
            i -= 1
        commented = "#" in lines[line - 1] or (
            i >= 0 and "#" in lines[i] and lines[i].strip().startswith(("#", "from ", "import "))
        )
        if not heavy:
            bad.append(f"{path.relative_to(ROOT)}:{line}: function-level import of light {target}")
        elif not commented:
            bad.append(f"{path.relative_to(ROOT)}:{line}: function-level import of {target} without a comment why")
    assert not bad, "\n".join(bad)
