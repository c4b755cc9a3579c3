"""How much data and training a t at the softmax needs before its samples keep f's prediction (issue: sample grids
that read like Fig. S7 need ≥ 80% agreement), on a finished `invnb colormnist` run.

The t (the run's profile size) is trained on the run's training digits in `--colourings` independent random
colourings (the first is the run's own), conditioned on the final classifier's softmax, for `--steps`, keeping its
best held-out NLL; then the sample fidelity of `diagnostics.sample_fidelity` on 100 validation images (4 draws each).
Prints one JSON object.

    python benchmarks/softmax_agreement.py runs/colormnist [--colourings 4] [--steps 1500]
"""
import argparse
import json
import time
import warnings

import torch

from invnb import diagnostics, fitting
from invnb.checkpoint import load_model
from invnb.colormnist import PROFILES, load_data
from invnb.data import ColorMNIST
from invnb.inn import InvarianceINN
from invnb.train import encode_dataset


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a finished `invnb colormnist` run folder")
    ap.add_argument("--colourings", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1500)
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    state = json.loads(open(f"{a.run}/state.json").read())
    metrics = json.loads(open(f"{a.run}/metrics.json").read())
    prof = PROFILES[state["profile"]]
    data = load_data(prof, state.get("seed", 0))
    ae = load_model(f"{a.run}/study/ae.safetensors").eval()
    f = load_model(f"{a.run}/study/models/{metrics['final_model']}.safetensors").eval()
    probe = f.probe("softmax")
    sets = [data.train] + [ColorMNIST(data.train.ink, data.train.labels["digit"], seed=10_000 + k)
                           for k in range(1, a.colourings)]
    t0 = time.perf_counter()
    with torch.no_grad():
        many = [encode_dataset(ae.encode, s.images(), device="cpu") for s in sets]
        feats = torch.cat([fitting.layer_features(probe, s.images(), device="cpu") for s in sets])
        codes_val = encode_dataset(ae.encode, data.xv, device="cpu")
        val_feats = fitting.layer_features(probe, data.xv, device="cpu")
    codes = {k: torch.cat([c[k] for c in many]) for k in ("mean", "logvar")}
    prep = time.perf_counter() - t0
    t = InvarianceINN(codes["mean"].shape[1], tuple(feats.shape[1:]), seed=0, **prof.t_size)
    t0 = time.perf_counter()
    t, h = fitting.fit_invariances(codes, feats, t=t, steps=a.steps, batch_size=prof.batch_size, lr=prof.t_lr,
                                    device="cpu", progress=False, seed=0, val_every=max(25, a.steps // 10),
                                    val_fn=lambda m: diagnostics.nll_of(m, codes_val, val_feats, seed=0))
    fidelity = diagnostics.sample_fidelity(ae, probe, t.eval(), f, data.xv[:100], n=4,
                                           generator=torch.Generator().manual_seed(0))
    print(json.dumps({"colourings": a.colourings, "n_train": len(feats), "steps": a.steps, "best_step": h.best_step,
                      "val_nll": round(h.best_val, 2), "prepare_s": round(prep, 1),
                      "train_s": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
                      **{k: round(v, 3) for k, v in fidelity.items()}}))


if __name__ == "__main__":
    main()
