"The package's shape: small functions, no import cycle, no private name imported across modules, notebooks in import order."
import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG, NBS = ROOT / "invnb", ROOT / "nbs"
MAX_LINES = 80
LONGER = {}   # "module.function": the reason it may be longer than MAX_LINES (none today)


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(encoding="utf-8")) for p in PKG.glob("*.py") if p.stem != "_modidx"}


def _imports(tree: ast.Module) -> list[tuple[str, str]]:
    "(module, name) of every relative import of the package, at any depth (function-level ones too)."
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module: out += [(node.module.split(".")[0], a.name) for a in node.names]
            else: out += [(a.name, "*") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("invnb."):
            out += [(node.module.split(".")[1], a.name) for a in node.names]     # `from invnb.x import y` in a function
        elif isinstance(node, ast.ImportFrom) and node.module == "invnb":
            out += [(a.name, "*") for a in node.names]
    return out


def test_no_function_is_longer_than_80_lines():
    long = {f"{m}.{n.name}": n.end_lineno - n.lineno + 1 for m, tree in _modules().items() for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_LINES}
    assert not {k: v for k, v in long.items() if k not in LONGER}, long


def _cycle(graph: dict[str, set]) -> list[str] | None:
    "One import cycle of `graph` ({module: modules it imports}) as a path, or None."
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in graph.get(m, ()):
            if state.get(d) == "open": return (path + [m])[(path + [m]).index(d):] + [d]   # the cycle alone, d to d
            if d not in state and (found := visit(d, path + [m])): return found
        state[m] = "done"
    for m in graph:
        if m not in state and (found := visit(m, [])): return found
    return None


def test_no_import_cycle_and_no_private_import():
    mods = _modules()
    graph = {m: {d for d, _ in _imports(t) if d in mods} for m, t in mods.items()}
    private = [(m, d, n) for m, t in mods.items() for d, n in _imports(t) if n.startswith("_") and d in mods]
    assert not private, private
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_no_notebook_imports_a_later_one():
    "Read in file order, every notebook's module imports only modules of earlier notebooks."
    order = {}
    for p in sorted(NBS.glob("*.ipynb")):
        for c in json.loads(p.read_text(encoding="utf-8"))["cells"][:3]:
            if m := re.search(r"#\|\s*default_exp\s+(\S+)", "".join(c["source"])): order[m.group(1)] = p.stem
    assert {"train", "flows", "utils", "cli"} <= set(order)
    later = [(order[m], d) for m, t in _modules().items() if m in order and m != "__init__"
             for d, _ in _imports(t) if d in order and order[d] > order[m]]
    assert not later, later


def test_the_checks_can_fail():
    "The same walkers find a long function, a cycle (also through function-level imports) and a private import."
    a = ast.parse("from .b import _x\n" + "def f():\n    from .c import g\n    from invnb.d import h\n" + "    pass\n" * 90)
    b = ast.parse("from .a import f\n")
    assert ("b", "_x") in _imports(a) and ("c", "g") in _imports(a) and ("d", "h") in _imports(a) and ("a", "f") in _imports(b)
    fn = next(n for n in ast.walk(a) if isinstance(n, ast.FunctionDef))
    assert fn.end_lineno - fn.lineno + 1 > MAX_LINES
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _cycle({"s": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]          # the cycle, not the path to it
