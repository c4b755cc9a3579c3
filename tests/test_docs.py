"Every public name is documented: a docstring, and a docment (an inline comment) on each of its parameters."
import dataclasses
import importlib
import inspect
import io
import json
import pkgutil
import tokenize
from pathlib import Path

import pytest
from fastcore.docments import docments

import invnb

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"_modidx", "__main__"}
# notebooks of plumbing, not of a concept of the method: no figure is asked of them
PLUMBING = {"00_checkpoint", "00a_distributed", "00b_utils", "07e_recipes", "09a_runs", "11_profiles", "14_cli",
            "14a_main",  # 07e_recipes: how a saved study rebuilds its model (JSON recipes), nothing to draw
            "index"}   # index: the landing page; its figures are a measured run's images, embedded in its prose


def _field_comments(cls) -> dict[str, str]:
    "{field: its inline comment} of a dataclass, read from its source (fastcore's docments skips dataclass fields)."
    out, lines = {}, inspect.getsource(cls)
    toks = list(tokenize.generate_tokens(io.StringIO(lines).readline))
    for i, t in enumerate(toks):
        if t.type == tokenize.COMMENT:
            line = [u for u in toks[:i] if u.start[0] == t.start[0] and u.type == tokenize.NAME]
            if line and toks[[j for j, u in enumerate(toks) if u is line[0]][0] + 1].string == ":":
                out[line[0].string] = t.string.lstrip("# ").strip()
    return out


def param_docs(obj) -> dict[str, str | None]:
    "{parameter: its docment or None} of a public function or class (its constructor's parameters)."
    if dataclasses.is_dataclass(obj) and isinstance(obj, type):
        got = _field_comments(obj)
        return {f.name: got.get(f.name) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields"):   # a typing.NamedTuple
        got = _field_comments(obj)
        return {f: got.get(f) for f in obj._fields}
    try: sig = inspect.signature(obj)
    except (TypeError, ValueError): return {}                      # e.g. an exception class without its own __init__
    params = [p.name for p in sig.parameters.values()
              if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    try: got = docments(obj, full=False)
    except (OSError, TypeError): got = {}
    return {p: got.get(p) for p in params}


def public_names():
    for m in sorted(p.name for p in pkgutil.iter_modules(invnb.__path__) if p.name not in SKIP):
        mod = importlib.import_module(f"invnb.{m}")
        for n in getattr(mod, "__all__", []):
            if callable(obj := getattr(mod, n)) and getattr(obj, "__module__", None) == mod.__name__:
                yield f"{m}.{n}", obj


def undocumented() -> dict[str, list[str]]:
    "{module.name: what it lacks ('docstring', parameter names)} over the package's `__all__`."
    out = {}
    for name, obj in public_names():
        lacks = ([] if inspect.getdoc(obj) else ["docstring"]) + [p for p, d in param_docs(obj).items() if not d]
        if lacks: out[name] = lacks
    return out


def test_every_public_name_has_a_docstring_and_docments():
    missing = undocumented()
    assert not missing, f"{len(missing)} public names lack docs: " + "; ".join(f"{k}: {v}" for k, v in missing.items())


def test_the_docs_check_can_fail(tmp_path, monkeypatch):
    "The same reader finds the missing comment of a function, a class and a dataclass (of a module on disk)."
    (tmp_path / "docs_probe.py").write_text(
        "from dataclasses import dataclass\n"
        "def f(a, # the a\n      b): 'f'\n"
        "class C:\n    'c'\n    def __init__(self, x: int): pass\n"
        "from typing import NamedTuple\nclass N(NamedTuple):\n    'n'\n    u: int # the u\n    w: int\n"
        "@dataclass\nclass D:\n    'd'\n    p: int # the p\n    q: int = 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("docs_probe")
    assert param_docs(mod.f) == {"a": "the a", "b": None}
    assert param_docs(mod.C) == {"x": None}
    assert param_docs(mod.N) == {"u": "the u", "w": None}
    assert param_docs(mod.D) == {"p": "the p", "q": None}


def _notebooks():
    return sorted([*(ROOT / "nbs").glob("*.ipynb"), *(ROOT / "nbs" / "tutorials").glob("*.ipynb")])


def test_every_concept_notebook_and_tutorial_holds_a_figure():
    "A stored PNG output in every notebook but the plumbing ones (checkpoints, ranks, utilities, run folders, CLI)."
    without = []
    for p in _notebooks():
        if p.stem in PLUMBING: continue
        cells = json.loads(p.read_text(encoding="utf-8"))["cells"]
        if not any("image/png" in o.get("data", {}) for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])):
            without.append(p.relative_to(ROOT).as_posix())
    assert not without, f"{len(without)} notebooks hold no figure: {without}"


def network_scripts(nb: dict) -> list[str]:
    "The ids of the code cells whose stored outputs load a script from the network (a CDN): the docs must work offline."
    found = []
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            text = json.dumps(o.get("data", {})) + json.dumps(o.get("text", ""))
            if "<script" in text and any(s in text for s in ('src=\\"http', "import \\\"http", 'src="http', 'import "http')):
                found.append(c.get("id")); break
    return found


def test_no_stored_output_loads_a_script_from_the_network():
    "Stored outputs are the docs: a plotly figure stored as HTML that imports plotly.js from a CDN breaks offline (store "
    "figures with PLOTLY_RENDERER=plotly_mimetype; .ci/build_docs.py embeds plotly.js once per page)."
    assert network_scripts({"cells": [{"outputs": [{"data": {"text/html": ['<script type="module">import "https://cdn.plot.ly/p.js"']}}]}]})
    assert not network_scripts({"cells": [{"outputs": [{"data": {"text/html": ["<div>no script</div>"]}}]}]})
    bad = {p.relative_to(ROOT).as_posix(): ids for p in _notebooks() if (ids := network_scripts(json.loads(p.read_text(encoding="utf-8"))))}
    assert not bad, f"outputs that load scripts from the network (store them again with PLOTLY_RENDERER=plotly_mimetype): {bad}"
