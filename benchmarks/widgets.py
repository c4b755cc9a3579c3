"""Redraw latency of the widgets with the t/e sizes of the `quick` profile of `invnb colormnist` (weights do not
change the cost, so random ones are used unless --study points at a saved Study). Medians over 20 redraws of the
time from the action to the new picture (the callback's own clock, `.last_ms`, and the wall time around it).

    python benchmarks/widgets.py [--study runs/colormnist/study]   # prints one JSON object
"""
import argparse
import json
import statistics
import time

import torch

from invnb.autoencoder import SmallAE
from invnb.colormnist import FACTORS, PROFILES
from invnb.inn import FactorINN, InvarianceINN
from invnb.classifier import ColorMNISTClassifier
from invnb.study import Study
from invnb.widgets import CurveExplorer, FactorEditor, LayerExplorer


def quick_sized_study() -> Study:
    p = PROFILES["quick"]
    clf = ColorMNISTClassifier().eval()
    ts = {("final", l): InvarianceINN(64, clf.probe(l).feature_shape((3, 28, 28)), **p.t_size, seed=i).eval()
          for i, l in enumerate(p.layers)}
    x = torch.rand(64, 3, 28, 28) * 2 - 1
    ae, e = SmallAE(width=p.ae_width).eval(), FactorINN(64, FACTORS, **p.e_size).eval()
    with torch.no_grad():                                       # initialise ActNorm as training would
        mu = ae.encode(x)[0]; e(mu)
        for (m, l), t in ts.items(): t(mu, clf.probe(l).phi(x))
    res = {"eq19": {"final": {l: [0.5, 0.01] for l in p.layers}},
           "eq20": {"final": {l: {f: [0.5, 0.01] for f in [*FACTORS, "residual"]} for l in p.layers}}}
    return Study(ae, {"final": clf}, ts, e, res)


def median_ms(action, widget, reps=20):
    wall, own = [], []
    for k in range(reps + 2):
        t0 = time.perf_counter(); action(k); dt = (time.perf_counter() - t0) * 1e3
        if k >= 2: wall.append(dt); own.append(widget.last_ms)
    return {"wall_ms": round(statistics.median(wall), 1), "redraw_ms": round(statistics.median(own), 1),
            "max_wall_ms": round(max(wall), 1)}


def measure(study_dir=None) -> dict:
    torch.manual_seed(0)
    study = Study.load(study_dir) if study_dir else quick_sized_study()
    x = torch.rand(16, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lx = LayerExplorer(study, x, n=8)
    layers = study.layers()
    out = {"study": str(study_dir or "quick-profile sizes, random weights"), "threads": torch.get_num_threads(),
           "layer_explorer_resample_8": median_ms(lambda k: lx.resample_button.click(), lx),
           "layer_explorer_switch_layer": median_ms(lambda k: setattr(lx.layer_pick, "value", layers[k % len(layers)]), lx)}
    lx.n_slider.value = 32
    out["layer_explorer_resample_32"] = median_ms(lambda k: lx.resample_button.click(), lx)
    fe = FactorEditor(study, x[0], x[1:])
    name = list(study.e.factors)[-1]
    out["factor_editor_slider"] = median_ms(lambda k: setattr(fe.sliders[name], "value", (k % 20) / 20 + 0.025), fe)
    ce = CurveExplorer(study)
    out["curve_explorer_view"] = median_ms(lambda k: setattr(ce.view_pick, "value", ce.VIEWS[k % 3]), ce)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", default=None)
    print(json.dumps(measure(ap.parse_args().study), indent=1))
