"""Where the time of one stack step of the quick ColorMNIST t stage goes: its 13 t's (features.5, .8, .10, nine at
features.11, the softmax; quick size: 6 blocks, hidden 128, embed 64; batch 128) as one `StackedINN`, forward,
backward and the fused Adam step `invnb.train.fit` uses, on random inputs of the layers' shapes (the cost does not
depend on the values). Prints one JSON object: milliseconds per stack step (best of 3 rounds of 20) and, from
torch's profiler over 5 steps, the share of the step's self CPU time in the batched products (bmm, baddbmm, mm), in
copies, in Adam and in the rest, with the top operations.

    python benchmarks/t_stack_profile.py
"""
import json
import time
import warnings

import torch
from torch.profiler import profile

from invnb.inn import InvarianceINN
from invnb.stacked import StackedINN

SHAPES = [(128, 7, 7), (256, 3, 3), (384, 3, 3)] + [(512, 3, 3)] * 9 + [(10,)]
PRODUCTS = {"aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm"}


def main():
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    size = dict(n_blocks=6, hidden=128, depth=2, embed_dim=64)
    stack = StackedINN([InvarianceINN(64, s, seed=i, **size) for i, s in enumerate(SHAPES)])
    zb, zs = torch.randn(len(SHAPES), 128, 64), [torch.randn(128, *s).relu() for s in SHAPES]
    opt = torch.optim.Adam(stack.parameters(), 1e-3, fused=True)

    def step():
        loss = stack.nll(zb, zs).mean(1).sum()
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    for _ in range(3): step()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(20): step()
        best = min(best, (time.perf_counter() - t0) / 20)
    with profile() as p:
        for _ in range(5): step()
    ops = {e.key: e.self_cpu_time_total for e in p.key_averages()}
    total = sum(ops.values())
    share = lambda keys: round(sum(v for k, v in ops.items() if k in keys) / total, 3)
    adam = {k for k in ops if "adam" in k.lower()}
    print(json.dumps({"ts": len(SHAPES), "parameters": sum(x.numel() for x in stack.parameters()),
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "ms_per_stack_step": round(best * 1e3, 1), "share_products": share(PRODUCTS),
                      "share_copies": share({"aten::copy_"}), "share_adam": share(adam),
                      "share_rest": round(1 - share(PRODUCTS) - share({"aten::copy_"}) - share(adam), 3),
                      "top": {k: round(v / total, 3) for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:8]}}))


if __name__ == "__main__":
    main()
