"""Time of the Eq. 19 / Eq. 20 estimators for 10,000 samples (100 z's × 100 v's), with the t/e sizes of the
`quick` profile of `invnb colormnist`, against a per-z loop over t.inverse and e (the obvious implementation),
in the same process.

    python benchmarks/estimators.py        # prints one JSON object
"""
import json
import statistics
import time

import torch

from invnb.analysis import eq19, eq20
from invnb.colormnist import FACTORS, PROFILES
from invnb.inn import FactorINN, InvarianceINN


def timed(fn, reps=3):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def measure(profile: str = "quick") -> dict:
    torch.manual_seed(0)
    p = PROFILES[profile]
    t = InvarianceINN(64, (512, 3, 3), **p.t_size).eval()              # features.12 of SqueezeNet at 64 px
    e = FactorINN(64, FACTORS, **p.e_size).eval()
    z = torch.relu(torch.randn(500, 512, 3, 3))
    with torch.no_grad():
        t(torch.randn(256, 64), z[:256]); e(torch.randn(256, 64))
    g = lambda: torch.Generator().manual_seed(0)
    s19 = timed(lambda: eq19(t, z, n_outer=100, n_inner=100, generator=g()))
    s20 = timed(lambda: eq20(t, e, z, n_outer=100, n_inner=100, generator=g()))

    @torch.no_grad()
    def loop():  # reference: per-outer-sample loop, 100 calls of t.inverse and e
        gg = g()
        for i in range(100):
            v = torch.randn(100, 64, generator=gg)
            e(t.inverse(v, z[i].expand(100, 512, 3, 3)))
    ref = timed(loop)
    return {"profile": profile, "t_size": p.t_size, "e_size": p.e_size, "threads": torch.get_num_threads(),
            "eq19_10k_s": round(s19, 3), "eq20_10k_s": round(s20, 3), "reference_loop_t_and_e_10k_s": round(ref, 3),
            "eq20_speedup_vs_loop": round(ref / s20, 2)}


if __name__ == "__main__":
    print(json.dumps(measure()))
