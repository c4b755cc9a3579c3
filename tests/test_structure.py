"""The package's shape: small modules and functions, no import cycle, no import of the package root from inside it, no
private name imported across modules, notebooks in import order. The modules and functions over the limits today are
listed with the size they may not grow past: issue 36's sub-package split brings them under."""
import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG, NBS = ROOT / "invnb", ROOT / "nbs"
MAX_LINES = 60       # a function's lines, its docments included
LONGER = {"train.fit": 80, "fitting.fit_invariances_over": 80, "studyrun.run_study": 75}
MAX_MODULE = 400     # a module's lines
LARGER = {"report": 670, "colormnist": 414, "data": 598, "train": 550, "study": 514, "flows": 429,
          "runs": 414, "autoencoder": 409}   # the modules over MAX_MODULE today: no longer than this


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


def _too_long(modules: dict[str, ast.Module]) -> dict[str, int]:
    "{module.function: lines} of the functions over MAX_LINES beyond their allowance in LONGER."
    long = {f"{m}.{n.name}": n.end_lineno - n.lineno + 1 for m, tree in modules.items() for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_LINES}
    return {k: v for k, v in long.items() if v > LONGER.get(k, MAX_LINES)}


def _too_large(lines: dict[str, int]) -> dict[str, int]:
    "{module: lines} of the modules over MAX_MODULE beyond their allowance in LARGER."
    return {m: n for m, n in lines.items() if n > LARGER.get(m, MAX_MODULE)}


def _root_imports(tree: ast.Module) -> list[int]:
    "Line numbers of `import invnb` (any depth): it runs the package's __init__, and so imports every module it names."
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Import) and any(a.name.split(".")[0] == "invnb" for a in n.names)]


def test_no_function_is_longer_than_60_lines():
    assert not _too_long(_modules())


def test_no_module_is_longer_than_400_lines():
    lines = {p.stem: len(p.read_text(encoding="utf-8").splitlines()) for p in PKG.glob("*.py") if p.stem != "_modidx"}
    assert not _too_large(lines)


def test_no_module_imports_the_package_root():
    found = {m: ls for m, t in _modules().items() if (ls := _root_imports(t))}
    assert not found, f"`import invnb` inside the package (read the version with importlib.metadata): {found}"


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
    """The same walkers find a long function, a large module, `import invnb`, a cycle (also through function-level
    imports) and a private import, in made-up modules."""
    a = ast.parse("from .b import _x\n" + "def f():\n    from .c import g\n    from invnb.d import h\n" + "    pass\n" * 90)
    b = ast.parse("from .a import f\n")
    assert ("b", "_x") in _imports(a) and ("c", "g") in _imports(a) and ("d", "h") in _imports(a) and ("a", "f") in _imports(b)
    assert _too_long({"a": a}) == {"a.f": 93}
    assert _too_long({"train": ast.parse("def fit():\n" + "    pass\n" * 80)}) == {"train.fit": 81}   # one over its allowance
    assert _too_large({"new": MAX_MODULE + 1, "report": LARGER["report"] + 1, "flows": 10}) == {
        "new": MAX_MODULE + 1, "report": LARGER["report"] + 1}
    assert _root_imports(ast.parse("import os\ndef f():\n    import numpy, invnb\n")) == [3]
    assert _root_imports(ast.parse("from . import plots\nfrom importlib.metadata import version\n")) == []
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _cycle({"s": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]          # the cycle, not the path to it
