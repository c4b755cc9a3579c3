"""The widgets in a real browser: Voilà serves a notebook that shows a LayerExplorer and a CurveExplorer, Debian's
chromium (driven by the playwright package) clicks "Resample v", and the picture must change; the CurveExplorer's
default backend must draw its curve. Screenshots are kept in test-artifacts/.

Needs chromium (`apt-get install chromium`), voila and playwright (in the dev extra). Where one is missing the
test skips with the reason — except under CI (`CI=true`), where that is a failure.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


def _missing() -> str | None:
    if not Path(CHROMIUM).exists(): return "no chromium on this machine (Debian: apt-get install chromium)"
    for mod in ("voila", "playwright"):
        try: __import__(mod)
        except ImportError: return f"the {mod} package is not installed (pip install -e '.[dev]')"
    return None


def _skip_or_fail(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser test cannot run under CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture
def served_explorer(tmp_path):
    reason = _missing()
    if reason: _skip_or_fail(reason)
    from invnb.autoencoder import SmallAE
    from invnb.inn import InvarianceINN
    from invnb.classifier import ColorMNISTClassifier
    from invnb.study import Study
    clf = ColorMNISTClassifier(size=32)
    t = InvarianceINN(16, clf.probe("softmax").feature_shape((3, 28, 28)), n_blocks=2, hidden=32, embed_dim=16)
    from invnb.results import Estimate
    study = Study(SmallAE(zdim=16, width=8), {"final": clf}, {("final", "softmax"): t})
    study.results.eq19 = {"final": {"softmax": Estimate(0.9, 0.01)}}          # a curve for the CurveExplorer
    study.save(tmp_path / "study")
    code = ("import torch\nfrom IPython.display import display\nfrom invnb.study import Study\n"
            "from invnb.widgets import CurveExplorer, LayerExplorer\n"
            f"study = Study.load({str(tmp_path / 'study')!r})\n"
            "x = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1\n"
            "display(CurveExplorer(study))\n"               # its default backend: a PNG, shown wherever widgets are
            "LayerExplorer(study, x, n=8)")
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "explorer", "metadata": {}, "outputs": [],
                     "source": code}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "explorer.ipynb").write_text(json.dumps(nb))
    # a kernelspec for this interpreter, found through JUPYTER_PATH: nothing is written to the user's home
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                                                           "{connection_file}"], "display_name": "Python 3",
                                                  "language": "python"}))
    env = {**os.environ, "JUPYTER_PATH": str(tmp_path / "jupyter"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    port = _free_port()
    log = open(tmp_path / "voila.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "voila", "explorer.ipynb", "--no-browser", f"--port={port}",
                             "--Voila.ip=127.0.0.1", "--show_tracebacks=True"], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            if proc.poll() is not None: break
            try:
                urllib.request.urlopen(url, timeout=1); break           # the server answers: it is up
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"voila did not start in 60 s; log:\n{(tmp_path / 'voila.log').read_text()[-2000:]}")
        if proc.poll() is not None:
            pytest.fail(f"voila exited with {proc.returncode}; log:\n{(tmp_path / 'voila.log').read_text()[-2000:]}")
        yield url, tmp_path
    finally:
        os.killpg(proc.pid, 15)
        try: proc.wait(10)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, 9)
        log.close()


def test_resample_button_changes_the_picture_in_chromium(served_explorer):
    from playwright.sync_api import sync_playwright
    url, tmp = served_explorer
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        home = tmp / "browser-home"                                        # chromium writes caches under $HOME
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
                                    env={**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                                         "XDG_CACHE_HOME": str(home / ".cache")})
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            local = ("http://127.0.0.1", "data:", "blob:", "ws://127.0.0.1")
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(local) else r.abort())  # offline
            page.goto(url, timeout=120_000, wait_until="domcontentloaded")
            img = page.locator("img.invnb-samples")
            img.wait_for(state="visible", timeout=120_000)                 # the kernel ran the cell, widgets rendered
            page.wait_for_function("document.querySelector('img.invnb-samples').naturalWidth > 0", timeout=30_000)
            before, pixels_before = img.get_attribute("src"), img.screenshot()
            page.screenshot(path=str(ARTIFACTS / "browser_layer_explorer_before.png"))
            page.get_by_role("button", name="Resample v").click()
            page.wait_for_function("src => document.querySelector('img.invnb-samples').src !== src", arg=before,
                                   timeout=30_000)
            page.wait_for_function("document.querySelector('img.invnb-samples').naturalWidth > 0", timeout=30_000)
            page.wait_for_timeout(300)                                       # let the new picture paint
            after, pixels_after = img.get_attribute("src"), img.screenshot()
            page.screenshot(path=str(ARTIFACTS / "browser_layer_explorer.png"))
            assert after != before and pixels_after != pixels_before       # a new picture, and it looks different
            # the CurveExplorer's default (a PNG image widget, not plotly in an Output) draws its curve here too
            page.wait_for_function("(document.querySelector('img.invnb-curves') || {}).naturalWidth > 100",
                                   timeout=30_000)
            page.locator("img.invnb-curves").screenshot(path=str(ARTIFACTS / "browser_curve_explorer.png"))
        finally:
            browser.close()
