"""What lets e (the semantic INN) capture the factors of ColorMNIST within the quick profile's CPU budget.

Trains an autoencoder once, SmallAE(width=64), 1,200 steps, batch 64, lr 1e-3 (the quick profile's before commit
e985efc), or loads it with --ae; encodes the 4,500 training and 500
validation digits, estimates the factor sizes (`invnb.factors.estimate_factor_sizes`), then trains e for each
try and reports it on held-out pairs (`factor_report`): one JSON row per try with the sizes, e's size, steps,
wall and CPU seconds, the own-factor correlation per factor, the largest off-diagonal correlation and the
class-mean share of each slice. The 500 validation digits are split: the first 250 choose the kept weights
(`pair_val_fn` as `fit`'s `val_fn`), the last 250 are reported on.

    OMP_NUM_THREADS=1 python benchmarks/factors.py --ae /tmp/ae_quick.safetensors            # baseline + best (≈4 min)
    OMP_NUM_THREADS=1 python benchmarks/factors.py --ae /tmp/ae_quick.safetensors --tries all
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from invnb.autoencoder import SmallAE, sample_gaussian, train_autoencoder
from invnb.colormnist import PROFILES, load_data
from invnb.data import FactorPairs
from invnb.factors import estimate_factor_sizes, factor_report, guided_pair_loss, pair_targets, pair_val_fn
from invnb.inn import FactorINN
from invnb.train import encode_dataset, fit

E_QUICK = dict(n_blocks=6, hidden=192, depth=2)        # PROFILES["quick"].e_size
E_SMALL = dict(n_blocks=6, hidden=128, depth=2)
S933, S633 = {"digit": 9, "fg": 3, "bg": 3}, {"digit": 6, "fg": 3, "bg": 3}
BASE = dict(sizes=S933, e=E_QUICK, steps=1200, lr=1e-3, batch_size=128)
GUIDED = dict(BASE, e=E_SMALL, lr=2e-3, schedule="cos", val=True)
# name -> try: slice sizes, e's size, steps, lr and its schedule ('const' | 'cos'), `val` (keep the best held-out
# pair loss), guide weight w of `guided_pair_loss` (annealed linearly to 0 at the last step), seed of e and fit;
# optional `weights` (pair factor i drawn in proportion to weights[i]) and `draw` ('sample' z̄ ~ N(μ, σ²) | 'mean')
TRIES = {
    "baseline": dict(BASE),
    "guide30": dict(GUIDED, steps=1500, guide=30.0),
    "guide30_800": dict(GUIDED, steps=800, guide=30.0),
    "guide300_800": dict(GUIDED, steps=800, guide=300.0),
    "guide30_digit6": dict(GUIDED, sizes=S633, steps=1500, guide=30.0),
    "guide30_digit6_800": dict(GUIDED, sizes=S633, steps=800, guide=30.0),
    "guide30_digit6_800_h192": dict(GUIDED, sizes=S633, e=E_QUICK, steps=800, guide=30.0),
    "guide100_digit6_800": dict(GUIDED, sizes=S633, steps=800, guide=100.0),
    "guide300_digit6_800": dict(GUIDED, sizes=S633, steps=800, guide=300.0),
    "guide300_digit6_800_seed1": dict(GUIDED, sizes=S633, steps=800, guide=300.0, seed=1),
    "guide1000_digit6_800": dict(GUIDED, sizes=S633, steps=800, guide=1000.0),
}
DEFAULT = ["baseline", "guide300_digit6_800"]


def codes_and_labels(ae_path: str | None) -> tuple[dict, dict, dict, dict, dict]:
    "Training/validation codes and labels of ColorMNIST quick, and where the autoencoder came from."
    data = load_data(PROFILES["quick"], seed=0)
    src = Path(__file__).resolve().parents[1] / "invnb" / "autoencoder.py"
    info = {"autoencoder_py_md5": hashlib.md5(src.read_bytes()).hexdigest()}
    if ae_path and Path(ae_path).exists():
        ae, info["ae"] = SmallAE.load(ae_path), f"loaded {ae_path}"
    else:
        ae, t0 = SmallAE(width=64, seed=0), time.perf_counter()
        train_autoencoder(ae, data.xt, steps=1200, batch_size=64, lr=1e-3, device="cpu", seed=0, progress=False)
        info["ae"] = f"trained, {time.perf_counter() - t0:.0f} s"
        if ae_path: ae.save(ae_path)
    ct, cv = (encode_dataset(ae.encode, x, device="cpu") for x in (data.xt, data.xv))
    return ct, cv, data.train.labels, data.val.labels, info


def train_e(cfg: dict, sizes: dict, ct: dict, lt: dict, cv_fit: dict, lv_fit: dict):
    "e trained on pairs of the training codes for one try; returns e and fit's History."
    names, steps, lr = list(sizes), cfg["steps"], cfg["lr"]
    e = FactorINN(64, sizes, seed=cfg.get("seed", 0), **cfg["e"])
    pairs, w = FactorPairs(lt, names), torch.tensor([cfg.get("weights", {}).get(f, 1.0) for f in names])
    targets = pair_targets(ct, lt, sizes) if cfg.get("guide") else None
    opt = {}

    def step_fn(model, g, step):
        t = step / max(1, steps)
        for pg in opt["adam"].param_groups:
            pg["lr"] = lr * 0.5 * (1 + math.cos(math.pi * t)) if cfg.get("schedule") == "cos" else lr
        if "weights" in cfg:   # factor i in proportion to weights[i], else uniformly (FactorPairs.sample)
            k = torch.multinomial(w, cfg["batch_size"], replacement=True, generator=g)
            a, b, f = (torch.cat(x) for x in zip(*[pairs.sample(int((k == i).sum()), g, factor=n)
                                                   for i, n in enumerate(names) if (k == i).any()]))
        else:
            a, b, f = pairs.sample(cfg["batch_size"], g)
        if cfg.get("draw", "sample") == "sample":
            za, zb = (sample_gaussian(ct["mean"][i], ct["logvar"][i], g) for i in (a, b))
        else:
            za, zb = ct["mean"][a], ct["mean"][b]
        return guided_pair_loss(model, za, zb, f, targets, cfg.get("guide", 0.0) * (1 - t))

    val = pair_val_fn(cv_fit, lv_fit, names, n=2048, seed=1) if cfg.get("val") else None
    hist = fit(e, step_fn, steps, lr, optimizer=lambda ps, lr_: opt.setdefault("adam", torch.optim.Adam(ps, lr_)),
               device="cpu", seed=cfg.get("seed", 0), progress=False, val_fn=val, val_every=100)
    return e, hist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ae", help="autoencoder file: loaded if it exists, else trained (≈1-4 min) and saved there")
    ap.add_argument("--tries", default=",".join(DEFAULT), help=f"comma-separated names of {list(TRIES)}, or 'all'")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = list(TRIES) if args.tries == "all" else args.tries.split(",")
    unknown = [n for n in names if n not in TRIES]
    if unknown: sys.exit(f"unknown tries {unknown}; choose from {list(TRIES)}")
    ct, cv, lt, lv, info = codes_and_labels(args.ae)
    half = lambda d, s: {k: v[s] for k, v in d.items()}
    cv_fit, lv_fit, cv_rep, lv_rep = half(cv, slice(0, 250)), half(lv, slice(0, 250)), half(cv, slice(250, None)), half(lv, slice(250, None))
    t0 = time.perf_counter()
    est = estimate_factor_sizes(ct, lt, ["digit", "fg", "bg"])
    print(json.dumps({"sizes": est.sizes, "rule": est.rule, "seconds": round(time.perf_counter() - t0, 1),
                      "linear": {f: c[:10] for f, c in est.correlations.items()},
                      "quadratic": {f: c[:10] for f, c in est.nonlinear.items()}, "threads": torch.get_num_threads(),
                      "load_average": os.getloadavg()[0], **info}), flush=True)
    for name in names:
        cfg = dict(TRIES[name]); sizes = cfg.pop("sizes")
        t0, c0 = time.perf_counter(), time.process_time()
        e, hist = train_e(cfg, sizes, ct, lt, cv_fit, lv_fit)        # the guide's targets included
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        rep = factor_report(e, cv_rep, lv_rep, n_pairs=5000, seed=0).to_dict()
        print(json.dumps({"try": name, "sizes": sizes, **cfg, "seconds": round(secs, 1), "cpu_seconds": round(cpu, 1),
                          "best_step": getattr(hist, "best_step", None), "own": rep["own"],
                          "max_off_diagonal": rep["max_off_diagonal"], "class_share": rep["class_share"],
                          "warnings": len(rep["warnings"]), "load_average": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    main()
