"""The ColorMNIST experiment of Sec. 4.2 / B.4 on the bundled digits, stage by stage, with wall times.
(The pseudo-layer `input` is left out: its t would condition on the 3×64×64 resized image, and the embedder
at that size costs ~1 s per training step on a 2-core CPU.)

    python benchmarks/colormnist_study.py [--out runs/colormnist_bench] [--steps-scale 1.0]
Prints one JSON object: stage times, classifier accuracy per checkpoint, Eq. 19 per SqueezeNet layer (final
classifier), Eq. 20 per factor per checkpoint (layer features.11). Stages whose files exist in --out are reused.
"""
import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from invnb.analysis import eq19, eq20, fit_factors, fit_invariances, layer_features
from invnb.autoencoder import SmallAE, reconstruction_metrics, train_autoencoder
from invnb.data import ColorMNIST, FactorPairs
from invnb.inn import FactorINN, InvarianceINN
from invnb.probe import ColorMNISTClassifier, train_classifier
from invnb.train import encode_dataset

LAYERS = ["features.2", "features.5", "features.8", "features.10", "features.11", "features.12", "classifier", "softmax"]
T_SIZE = dict(n_blocks=8, hidden=256, depth=2, embed_dim=64)
E_SIZE = dict(n_blocks=8, hidden=256, depth=2)
FACTORS = {"digit": 22, "fg": 11, "bg": 11}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/colormnist_bench")
    ap.add_argument("--steps-scale", type=float, default=1.0)
    a = ap.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    S = lambda n: max(1, int(n * a.steps_scale))
    times, res = {}, {"t_size": T_SIZE, "e_size": E_SIZE, "factors": FACTORS}
    t0 = time.perf_counter()
    train, val = ColorMNIST.from_mnist("train"), ColorMNIST.from_mnist("val")
    xt, xv = train.images(), val.images()

    s = time.perf_counter()
    if (out / "ae.safetensors").exists(): ae = SmallAE.load(out / "ae.safetensors")
    else:
        ae = SmallAE(); train_autoencoder(ae, xt, steps=S(3000), batch_size=64, lr=1e-3, device="cpu", progress=False)
        ae.save(out / "ae.safetensors")
    ae.eval()
    res["autoencoder"] = reconstruction_metrics(ae, xv)
    codes_t = encode_dataset(ae.encode, xt, device="cpu", cache=out / "codes_train.safetensors")
    codes_v = encode_dataset(ae.encode, xv, device="cpu", cache=out / "codes_val.safetensors")
    times["autoencoder+encode"] = time.perf_counter() - s

    s = time.perf_counter()
    recs_path = out / "classifier.json"
    if recs_path.exists(): recs = json.loads(recs_path.read_text())
    else:
        clf = ColorMNISTClassifier()
        recs = train_classifier(clf, xt, train.labels["digit"], xv, val.labels["digit"], steps=S(1600), n_checkpoints=9,
                                out_dir=out / "classifier", batch_size=64, lr=1e-4, device="cpu", progress=False)
        recs_path.write_text(json.dumps(recs))
    res["classifier"] = recs
    times["classifier"] = time.perf_counter() - s

    s = time.perf_counter()
    if (out / "e.safetensors").exists(): e = FactorINN.load(out / "e.safetensors")
    else:
        e, _ = fit_factors(codes_t, FactorPairs(train.labels, list(FACTORS)), FACTORS, steps=S(2000), batch_size=128,
                           lr=1e-3, device="cpu", progress=False, **E_SIZE)
        e.save(out / "e.safetensors")
    e.eval()
    times["e"] = time.perf_counter() - s

    def t_for(clf, layer, name):
        probe = clf.probe(layer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ft, fv = layer_features(probe, xt), layer_features(probe, xv)
        path = out / f"t_{name}.safetensors"
        if path.exists(): t = InvarianceINN.load(path)
        else:
            t, _ = fit_invariances(codes_t, ft, steps=S(1000), batch_size=128, lr=1e-3, device="cpu", progress=False, **T_SIZE)
            t.save(path)
        return t.eval(), fv

    s = time.perf_counter()
    final = ColorMNISTClassifier.load(recs[-1]["path"]).eval()
    res["eq19_per_layer"] = {}
    for layer in LAYERS:
        t, fv = t_for(final, layer, f"final_{layer}")
        res["eq19_per_layer"][layer] = eq19(t, fv, 100, 100, torch.Generator().manual_seed(0))
    times["t_per_layer+eq19"] = time.perf_counter() - s

    s = time.perf_counter()
    res["eq20_per_checkpoint"] = {}
    for r in recs:
        clf = ColorMNISTClassifier.load(r["path"]).eval()
        t, fv = t_for(clf, "features.11", f"step{r['step']:06d}_features.11")
        res["eq20_per_checkpoint"][r["step"]] = eq20(t, e, fv, 100, 100, torch.Generator().manual_seed(0))
    times["t_per_checkpoint+eq20"] = time.perf_counter() - s
    times["total"] = time.perf_counter() - t0
    res["seconds"] = {k: round(v, 1) for k, v in times.items()}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
