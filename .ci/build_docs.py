"""Offline HTML documentation: every notebook with its stored outputs (as Quarto renders them; with `--execute`,
executed again first, skipping cells flagged `slow`, `online`, `notest` or `eval: false`, as nbdev_test does), exported with nbconvert to _docs/html/ (index.html is the home page, contents.html lists all), with working plotly figures
(plotly.js embedded once per page). `nbdev_docs` needs Quarto, which cannot be installed offline; this is the
offline build, and CI runs it so that broken docs are caught.

    python .ci/build_docs.py [--execute] [notebooks ...]     # default: every notebook under nbs/, as stored
Exits 1 when a notebook fails, an error shows in an output, or a page with figures lacks plotly.js.
"""
import os
import shutil
import sys
import time
from pathlib import Path

os.environ["PLOTLY_RENDERER"] = "plotly_mimetype"   # figures as JSON bundles; turned into offline HTML below
os.environ["IN_TEST"] = "1"                          # tutorials then run their seconds-long profile

import nbformat
import plotly.io as pio
from execnb.nbio import nb2dict
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbconvert import HTMLExporter
from nbdev.frontmatter import FrontmatterProc
from nbdev.process import NBProcessor

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "_docs" / "html"
SKIP = {"slow", "online", "notest"}
PLOTLY = "application/vnd.plotly.v1+json"


def skip(cell) -> bool:
    if cell.cell_type != "code": return True
    d = getattr(cell, "directives_", {}) or {}
    return d.get("eval:", [""])[0].lower() == "false" or bool(SKIP & d.keys())


def plotly_to_html(nb: dict) -> int:
    "Replace plotly JSON outputs by HTML; the first figure of the page carries plotly.js. Returns the figure count."
    n = 0
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if PLOTLY in data:
                fig = pio.from_json(__import__("json").dumps(data[PLOTLY]))
                data.clear()
                data["text/html"] = fig.to_html(full_html=False, include_plotlyjs=(n == 0))
                n += 1
    return n


def build(path: Path, execute: bool = False) -> list[str]:
    problems = []
    nb = NBProcessor(path, procs=FrontmatterProc, process=True).nb
    t0 = time.perf_counter()
    if execute:                      # CI does not: nbdev_test has just executed every notebook
        shell = CaptureShell(path)
        with working_directory(path.parent):
            shell.run_all(nb, exc_stop=True, preproc=skip)
        if shell.exc: problems.append(f"{path}: {type(shell.exc).__name__}: {shell.exc}")
    d = nb2dict(nb)
    for c in d["cells"]:
        c.pop("directives_", None)
        if isinstance(c.get("source"), list): c["source"] = "".join(c["source"])
        for o in c.get("outputs", []):
            if o.get("output_type") == "error": problems.append(f"{path}: error output {o.get('ename')}")
            for k, v in (o.get("data") or {}).items():      # multi-line text as stored on disk (a list): one string
                if isinstance(v, list) and all(isinstance(x, str) for x in v): o["data"][k] = "".join(v)
    n_figs = plotly_to_html(d)
    d.pop("frontmatter_", None)
    node = nbformat.from_dict(d)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(node)
    if n_figs and (body.count("Plotly.newPlot") < n_figs or "plotly.js v" not in body):
        problems.append(f"{path}: {n_figs} plotly figures but plotly.js or newPlot calls missing in the page")
    dest = OUT / path.relative_to(ROOT / "nbs").with_suffix(".html")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(body, encoding="utf-8")
    print(f"{dest.relative_to(ROOT)}: {n_figs} interactive figures, {time.perf_counter() - t0:.0f} s", flush=True)
    return problems


def main(args):
    execute = "--execute" in args
    paths = [Path(a).resolve() for a in args if a != "--execute"] or sorted((ROOT / "nbs").rglob("*.ipynb"))
    paths = [p for p in paths if ".ipynb_checkpoints" not in p.parts]
    problems = [p for path in paths for p in build(path, execute)]
    if (ROOT / "nbs" / "images").is_dir():                 # pictures the notebooks link to
        shutil.copytree(ROOT / "nbs" / "images", OUT / "images", dirs_exist_ok=True)
    index = "".join(f"<li><a href='{p.relative_to(ROOT / 'nbs').with_suffix('.html')}'>{p.stem}</a></li>" for p in paths)
    (OUT / "contents.html").write_text(f"<!DOCTYPE html><meta charset=utf-8><title>invnb docs</title><h1>invnb</h1><ul>{index}</ul>")
    for p in problems: print("PROBLEM:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
