"""Calibrations of the identifiable share with answers known in advance, on a finished `invnb colormnist` run
(its autoencoder codes, its trained e and its unconditional flow), and the spread of t's seeds.

- oracle: a t conditioned on the true one-hot digit stands in for a perfect, colour-blind softmax: the digit's
  share should be large, fg's and bg's ≈ 0 (targets: digit ≥ 0.5, fg and bg ≤ 0.05);
- colour oracle: a t conditioned on the one-hot background colour: bg large, digit ≈ 0.
  The two oracle t's learn p(z̄ | label), a mixture over every colour pair and handwriting: they train on the run's
  training digits in `--colourings` independent random colourings (encoded with the run's autoencoder) for
  `--oracle-steps`, so that they model it, not the 4,500 codes they saw (with the run's 4,500 codes alone a t
  overfits after ~400 steps, and its digit share stops at ≈ 0.3);
- null: a t conditioned on z shuffled across images: every share ≈ 0;
- seeds: the run's t at (final checkpoint, checkpoint layer) trained again with seeds 1 and 2: the spread of Eq. 19
  and of the shares across seeds, next to their jackknife standard errors.

Every other t is trained as the run trains its t's (the profile's size, steps, warm start at the run's unconditional flow,
best held-out NLL kept). Prints one JSON object per line.

    python benchmarks/share_calibration.py runs/colormnist [--steps 150] [--seeds 3] [--colourings 4] [--oracle-steps 1500]
"""
import argparse
import json
import time
import warnings

import torch
import torch.nn.functional as F

from invnb import diagnostics, fitting
from invnb.checkpoint import load_model, load_tensors
from invnb.colormnist import PROFILES, load_data
from invnb.data import ColorMNIST
from invnb.inn import FactorINN, InvarianceINN
from invnb.train import encode_dataset


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a finished `invnb colormnist` run folder")
    ap.add_argument("--steps", type=int, default=None, help="t steps (default: the run's profile)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n-eval", type=int, default=100)
    ap.add_argument("--colourings", type=int, default=4, help="random colourings of the training digits for the oracles")
    ap.add_argument("--oracle-steps", type=int, default=1500)
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    state = json.loads(open(f"{a.run}/state.json").read())
    prof = PROFILES[state["profile"]]
    steps = a.steps or prof.t_steps
    data = load_data(prof, state.get("seed", 0))
    ld = lambda f: (lambda t: {"mean": t[0]["mean"], "logvar": t[0]["logvar"]})(load_tensors(f))
    codes, codes_val = ld(f"{a.run}/cache/codes_train.safetensors"), ld(f"{a.run}/cache/codes_val.safetensors")
    e = FactorINN.load(f"{a.run}/study/e.safetensors").eval()
    base = InvarianceINN.load(f"{a.run}/study/t/unconditional.safetensors").eval()
    kw = dict(n_outer=a.n_eval, n_inner=a.n_eval)

    def train(feats, val_feats, seed=0, codes=codes, steps=steps, warm=True):
        t = InvarianceINN(codes["mean"].shape[1], tuple(feats.shape[1:]), seed=seed, **prof.t_size)
        if warm: fitting.warm_start(t, base)
        t0 = time.perf_counter()
        t, h = fitting.fit_invariances(codes, feats, t=t, steps=steps, batch_size=prof.batch_size, lr=prof.t_lr,
                                        device="cpu", progress=False, seed=seed, val_every=prof.t_val_every,
                                        val_fn=lambda m: diagnostics.nll_of(m, codes_val, val_feats, seed=0))
        return t.eval(), {"steps": steps, "n_train": len(feats), "best_step": h.best_step, "val_nll": round(h.best_val, 3), "seconds": round(time.perf_counter() - t0, 1)}

    fmt = lambda d: {k: [round(v.value, 4), round(v.se, 4)] for k, v in d.items()}
    onehot = lambda lab, f: F.one_hot(lab[f], int(max(data.train.labels[f].max(), data.val.labels[f].max())) + 1).float()
    base_nll = diagnostics.nll_of(base, codes_val, torch.zeros(len(data.xv), 1), seed=0)
    # the oracles' training set: the run's training digits in several independent colourings (the first is the run's)
    ae = load_model(f"{a.run}/study/ae.safetensors").eval()
    sets = [data.train] + [ColorMNIST(data.train.ink, data.train.labels["digit"], seed=10_000 + k)
                           for k in range(1, a.colourings)]
    with torch.no_grad():
        many = [codes] + [encode_dataset(ae.encode, s.images(), device="cpu") for s in sets[1:]]
    codes_many = {k: torch.cat([c[k] for c in many]) for k in ("mean", "logvar")}
    for name, f in {"oracle_digit": "digit", "oracle_bg": "bg"}.items():
        tr, va = torch.cat([onehot(s.labels, f) for s in sets]), onehot(data.val.labels, f)
        t, info = train(tr, va, codes=codes_many, steps=a.oracle_steps, warm=False)
        share = analysis.identifiable_share(t, e, va, **kw, generator=torch.Generator().manual_seed(1))
        print(json.dumps({"calibration": name, **info, "info_nats": round(base_nll - info["val_nll"], 3),
                          "share": fmt(share)}), flush=True)
    # null: z shuffled across images (the t sees real features, but not those of its own image)
    final = json.loads(open(f"{a.run}/metrics.json").read())["final_model"]
    layer = prof.checkpoint_layer
    probe = load_model(f"{a.run}/study/models/{final}.safetensors").eval().probe(layer)
    with torch.no_grad():
        ft, fv = fitting.layer_features(probe, data.xt), fitting.layer_features(probe, data.xv)
    perm = torch.randperm(len(ft), generator=torch.Generator().manual_seed(0))
    t, info = train(ft[perm], fv)
    share = analysis.identifiable_share(t, e, fv, **kw, generator=torch.Generator().manual_seed(1))
    print(json.dumps({"calibration": f"shuffled z at {final} {layer}", **info, "info_nats": round(base_nll - info["val_nll"], 3),
                      "share": fmt(share)}), flush=True)
    # seeds
    rows = []
    for seed in range(a.seeds):
        t, info = train(ft, fv, seed)
        g = torch.Generator().manual_seed(1)
        e19 = analysis.eq19(t, fv, **kw, generator=g)
        share = analysis.identifiable_share(t, e, fv, **kw, generator=torch.Generator().manual_seed(1))
        rows.append((e19, share))
        print(json.dumps({"seed": seed, "layer": f"{final} {layer}", **info, "eq19": [round(e19.value, 4), round(e19.se, 4)],
                          "share": fmt(share)}), flush=True)
    sd = lambda xs: float(torch.tensor(xs).std()) if len(xs) > 1 else 0.0
    spread = {"eq19": {"seed_sd": round(sd([r[0].value for r in rows]), 4), "mean_se": round(sum(r[0].se for r in rows) / len(rows), 4)}}
    for f in rows[0][1]:
        spread[f] = {"seed_sd": round(sd([r[1][f].value for r in rows]), 4),
                     "mean_se": round(sum(r[1][f].se for r in rows) / len(rows), 4)}
    print(json.dumps({"seed_spread": spread, "seeds": a.seeds, "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
