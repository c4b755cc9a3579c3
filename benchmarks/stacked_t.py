"""Training the t's of one size as one stack (`invnb.stacked`) against one by one, at equal steps.

M t's of the quick profile's size (6 blocks, hidden 128, depth 2, embed 64) at the checkpoint layer's shape
(512, 3, 3), batch 128, on a 64-d code of 4,500 examples, each with its own features and the seeds stage 5 uses
(most share the run's seed, one has its own), started from one unconditional t as stage 5 starts them:

- `sequential`: `fitting.fit_invariances` for each t in turn (what stage 5 did before);
- `stacked`: one `stacked.fit_invariances_stacked` for all M.

Both go through `invnb.train.fit` with validation every `--val-every` steps on 500 held-out examples. Prints one
JSON object: seconds of each, their ratio (sequential / stacked, > 1: stacking is faster), the milliseconds per
t-step, and the largest differences of the loss curves, the held-out curves and the final weights (the same seed
gives the same run, to float tolerance). The float tolerance is measured too: t 0 trained alone again from weights
moved by one part in 10⁷ (`float_sensitivity`: the largest difference of its loss curve from the unmoved run's).

    python benchmarks/stacked_t.py [--models 9] [--steps 100]
"""
import argparse
import json
import time

import torch

from invnb.fitting import fit_invariances, warm_start
from invnb.diagnostics import nll_of
from invnb.inn import InvarianceINN
from invnb.stacked import fit_invariances_stacked, stacked_nll_of


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=9, help="t's in the stack (quick: 7 checkpoints, null control, seed 2)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--val-every", type=int, default=25)
    a = ap.parse_args()
    M, N, NV, D, B = a.models, 4500, 500, 64, 128
    size = dict(n_blocks=6, hidden=128, depth=2, embed_dim=64)
    g = torch.Generator().manual_seed(0)
    codes = {"mean": torch.randn(N, D, generator=g), "logvar": torch.full((N, D), -4.0)}
    val = {"mean": torch.randn(NV, D, generator=g), "logvar": torch.full((NV, D), -4.0)}
    feats = [torch.randn(N, 512, 3, 3, generator=g).relu() for _ in range(M)]
    vfeats = [torch.randn(NV, 512, 3, 3, generator=g).relu() for _ in range(M)]
    seeds = [0] * (M - 1) + [1000]
    base = InvarianceINN(D, 1, seed=0, **size)
    fit_invariances(codes, torch.zeros(N, 1), t=base, steps=20, batch_size=B, progress=False)
    make = lambda: [warm_start(InvarianceINN(D, (512, 3, 3), seed=s, **size), base) for s in seeds]
    kw = dict(steps=a.steps, batch_size=B, lr=1e-3, progress=False, val_every=a.val_every, device="cpu")

    t0 = time.perf_counter()
    alone = [fit_invariances(codes, f, t=t, seed=s, val_fn=lambda m, v=v: nll_of(m, val, v), **kw)
             for t, f, v, s in zip(make(), feats, vfeats, seeds)]
    seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    ts, h = fit_invariances_stacked(codes, feats, make(), seed=seeds, val_fn=lambda m: stacked_nll_of(m, val, vfeats), **kw)
    st = time.perf_counter() - t0

    loss = max(abs(x - y[i]) for i, (_, hi) in enumerate(alone) for x, y in zip(hi["model"], h["model"]))
    vloss = max(abs(x[1] - y[1][i]) for i, (_, hi) in enumerate(alone) for x, y in zip(hi["val"], h["val"]))
    weight = max((p - q).abs().max().item() for (t, _), u in zip(alone, ts)
                 for p, q in zip(t.state_dict().values(), u.state_dict().values()) if p.is_floating_point())
    t = make()[0]
    with torch.no_grad():
        for p in t.parameters(): p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    _, hp = fit_invariances(codes, feats[0], t=t, seed=seeds[0], val_fn=lambda m: nll_of(m, val, vfeats[0]), **kw)
    sensitivity = max(abs(x - y) for x, y in zip(alone[0][1]["model"], hp["model"]))
    print(json.dumps({"models": M, "steps": a.steps, "batch": B, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "seconds_sequential": round(seq, 2), "seconds_stacked": round(st, 2),
                      "ratio": round(seq / st, 3), "ms_per_t_step_sequential": round(seq / (M * a.steps) * 1e3, 2),
                      "ms_per_t_step_stacked": round(st / (M * a.steps) * 1e3, 2),
                      "max_loss_difference": loss, "max_val_difference": vloss, "max_weight_difference": weight,
                      "float_sensitivity": sensitivity,
                      "same_best_steps": [hi.best_step for _, hi in alone] == h.best_step}))


if __name__ == "__main__":
    main()
