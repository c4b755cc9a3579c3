"""Time of Eq. 19 and Eq. 20 with 10,000 samples (100 x 100 grids) for the t and e sizes of the ColorMNIST study.

    python benchmarks/estimators.py
Prints JSON: seconds per estimate (median of 3) and, as the in-process reference, the time of one plain
`t.inverse` + `e` pass over the same 10,000 samples done as a Python loop over 100 batches.
"""
import json
import statistics
import time

import torch

from invnb.analysis import eq19, eq20
from invnb.inn import FactorINN, InvarianceINN

T_SIZE = dict(n_blocks=8, hidden=256, depth=2, embed_dim=64)     # as in benchmarks/colormnist_study.py
E_SIZE = dict(n_blocks=8, hidden=256, depth=2)


def timed(fn, reps=3):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    torch.manual_seed(0)
    t = InvarianceINN(64, (512, 3, 3), **T_SIZE).eval()
    e = FactorINN(64, {"digit": 22, "fg": 11, "bg": 11}, **E_SIZE).eval()
    z = torch.relu(torch.randn(500, 512, 3, 3))
    with torch.no_grad():
        t(torch.randn(256, 64), z[:256]); e(torch.randn(256, 64))
    g = lambda: torch.Generator().manual_seed(0)
    s19 = timed(lambda: eq19(t, z, 100, 100, g()))
    s20 = timed(lambda: eq20(t, e, z, 100, 100, g()))

    @torch.no_grad()
    def loop():  # reference: per-outer-sample loop, 100 calls of t.inverse and e
        gg = g()
        for i in range(100):
            v = torch.randn(100, 64, generator=gg)
            e(t.inverse(v, z[i].expand(100, 512, 3, 3)))
    ref = timed(loop)
    print(json.dumps({"threads": torch.get_num_threads(), "eq19_10k_s": round(s19, 2), "eq20_10k_s": round(s20, 2),
                      "reference_loop_t_and_e_10k_s": round(ref, 2), "eq20_speedup_vs_loop": round(ref / s20, 2)}))


if __name__ == "__main__":
    main()
