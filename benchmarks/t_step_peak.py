"""How well a t training step uses this machine: its achieved FLOP rate against the matmul peak measured in the same
process.

For a t of a given size (`--size quick|paper`, or both) conditioned on the checkpoint layer's shape (512, 3, 3), one
training step (forward, NLL, backward, Adam) at batch `--batch` is timed over `--steps` steps after a warm-up. Its
floating-point operations are counted once by torch's own `torch.utils.flop_counter.FlopCounterMode` (forward and
backward; Adam's elementwise update is not counted, so the share is a lower bound). The peak is the best rate of
float32 matrix products in the same process: the step's own largest product shape (batch × hidden @ hidden × hidden)
and a square 1024 product, each timed the same way. Prints one JSON object per size: GFLOP per step, ms per step,
achieved GFLOP/s, both peaks, and the step's share of each.

    python benchmarks/t_step_peak.py --size paper --batch 64
    python benchmarks/t_step_peak.py --size quick --batch 128
"""
import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from invnb.inn import InvarianceINN

SIZES = {"quick": dict(n_blocks=6, hidden=128, depth=2, embed_dim=64),
         "paper": dict(n_blocks=20, hidden=1024, depth=2, embed_dim=128)}


def best_rate(fn, flops: float, reps: int, rounds: int = 5) -> tuple[float, float]:
    "(best seconds per call, GFLOP/s) of `fn` over `rounds` rounds of `reps` calls, after one warm-up round."
    for _ in range(reps): fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps): fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best, flops / best / 1e9


def matmul_peak(m: int, k: int, n: int, reps: int) -> float:
    "GFLOP/s of float32 (m×k) @ (k×n) products, at their best."
    a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    return best_rate(lambda: torch.mm(a, b, out=out), 2 * m * k * n, reps)[1]


def step_rate(size: dict, batch: int, steps: int) -> dict:
    D, cond = 64, (512, 3, 3)
    g = torch.Generator().manual_seed(0)
    t = InvarianceINN(D, cond, seed=0, **size)
    opt = torch.optim.Adam(t.parameters(), lr=1e-4)
    zbar, z = torch.randn(batch, D, generator=g), torch.randn(batch, *cond, generator=g).relu()

    def step():
        loss = t.nll(zbar, z).mean()
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    step()                                                            # ActNorm's data-dependent start
    with FlopCounterMode(display=False) as fc:
        loss = t.nll(zbar, z).mean(); loss.backward()
    flops = fc.get_total_flops()
    secs, rate = best_rate(step, flops, steps)
    h = size["hidden"]
    own, square = matmul_peak(batch, h, h, max(20, steps * 4)), matmul_peak(1024, 1024, 1024, 10)
    return {"size": size, "batch": batch, "gflop_per_step": round(flops / 1e9, 3), "ms_per_step": round(secs * 1e3, 2),
            "gflops": round(rate, 1), "peak_gflops_step_shape": round(own, 1), "peak_gflops_square_1024": round(square, 1),
            "share_of_step_shape_peak": round(rate / own, 3), "share_of_square_peak": round(rate / square, 3),
            "params": sum(p.numel() for p in t.parameters())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="quick,paper", help="comma-separated: quick, paper")
    ap.add_argument("--batch", type=int, default=None, help="default: 128 (quick), 64 (paper: Tab. S10's batch)")
    ap.add_argument("--steps", type=int, default=10, help="steps per timing round (5 rounds, the best is kept)")
    a = ap.parse_args()
    for name in a.size.split(","):
        batch = a.batch or (64 if name == "paper" else 128)
        print(json.dumps({"name": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
                          **step_rate(SIZES[name], batch, a.steps)}), flush=True)


if __name__ == "__main__":
    main()
