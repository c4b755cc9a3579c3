"""Would training the t's that share an architecture as one stacked model (torch.func.stack_module_state-style
stacked weights + vmap) make the ColorMNIST t stage faster at equal steps?

Measures, in one process, for M t's of the quick profile's size (6 blocks, hidden 128, embed 64) at the
checkpoint layer's shape (512, 3, 3) with batch 128 on a 64-d code, the milliseconds per training step
(forward, backward, fused Adam) of

- `sequential`: M separate t's, one after the other (the baseline, what the study does);
- `stacked`: one vmapped stack of the M t's (every parameter with a leading model axis);
- the same two for the coupling flow alone (the embedder H run outside) and for the embedder alone;

and checks that the stacked step gives the same losses as the sequential one (same seed and batches).
Prints one JSON object; ratios are sequential / stacked (> 1: stacking is faster).

    python benchmarks/stacked_t.py [--models 10] [--steps 10]
"""
import argparse
import copy
import json
import time

import torch
from torch import nn
from torch.func import functional_call, vmap

from invnb.analysis import _draw_zbar
from invnb.flows import Flow
from invnb.inn import Embedder, InvarianceINN


class _Call(nn.Module):
    "forward = one method of the wrapped module (functional_call calls forward)."
    def __init__(self, module, method):
        super().__init__(); self.m, self.method = module, method

    def forward(self, *args): return getattr(self.m, self.method)(*args)


class Stack(nn.Module):
    "M models of one architecture as one: stacked parameters and buffers, every call vmapped over the model axis."
    def __init__(self, models):
        super().__init__()
        ref = models[0]
        for m in models:   # drop oneDNN weight caches (they cannot be copied to the meta device)
            for mod in m.modules():
                if hasattr(mod, "_packed"): mod._packed, mod._packed_key = None, None
        self.names = [n for n, _ in ref.named_parameters()], [n for n, _ in ref.named_buffers()]
        self.p = nn.ParameterList(nn.Parameter(torch.stack([m.get_parameter(n).detach() for m in models]))
                                  for n in self.names[0])
        self.b = [torch.stack([m.get_buffer(n) for m in models]) for n in self.names[1]]
        self.skeleton = [copy.deepcopy(ref).to("meta")]

    def call(self, method, *args, in_dims=0):
        state = {f"m.{n}": t for n, t in zip(self.names[0], self.p)} | {f"m.{n}": t for n, t in zip(self.names[1], self.b)}
        fn = _Call(self.skeleton[0], method)
        return vmap(lambda s, *a: functional_call(fn, s, a), in_dims=(0, *in_dims))(state, *args)


def per_step(fn, steps):
    fn()                                            # warm-up (and ActNorm is initialised before)
    t0 = time.perf_counter()
    for _ in range(steps): fn()
    return (time.perf_counter() - t0) / steps * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=10, help="t's in the stack (quick: 9 checkpoints + features.12)")
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    M, N, D, B = a.models, 4500, 64, 128
    size = dict(n_blocks=6, hidden=128, depth=2, embed_dim=64)
    g0 = torch.Generator().manual_seed(0)
    codes = {"mean": torch.randn(N, D, generator=g0), "logvar": torch.full((N, D), -6.0)}
    feats = torch.randn(M, N, 512, 3, 3, generator=g0)

    def make():
        ts = [InvarianceINN(D, (512, 3, 3), seed=i, **size).train() for i in range(M)]
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(N, (B,), generator=g); zb = _draw_zbar(codes, idx, g)
        with torch.no_grad():
            for i, t in enumerate(ts): t(zb, feats[i][idx])     # ActNorm's data-dependent init, as fit's step 0
        return ts

    out = {"models": M, "batch": B, "threads": torch.get_num_threads(), "torch": torch.__version__}
    # whole t: sequential vs stacked, with the same draws
    seq, st = make(), Stack(make())
    opts = [torch.optim.Adam(t.parameters(), 1e-3, fused=True) for t in seq]
    opt = torch.optim.Adam(st.parameters(), 1e-3, fused=True)
    gs, gt, ls, lt = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1), [], []

    def seq_step():
        idx = torch.randint(N, (B,), generator=gs); zb = _draw_zbar(codes, idx, gs)
        row = []
        for i, (t, o) in enumerate(zip(seq, opts)):
            loss = t.nll(zb, feats[i][idx]).mean(); loss.backward(); o.step(); o.zero_grad(); row.append(loss.item())
        ls.append(row)

    def stack_step():
        idx = torch.randint(N, (B,), generator=gt); zb = _draw_zbar(codes, idx, gt)
        loss = st.call("nll", zb, feats[:, idx], in_dims=(None, 0)).mean(1)
        loss.sum().backward(); opt.step(); opt.zero_grad(); lt.append(loss.tolist())

    out["t_ms_sequential"], out["t_ms_stacked"] = per_step(seq_step, a.steps), per_step(stack_step, a.steps)
    out["t_ratio"] = out["t_ms_sequential"] / out["t_ms_stacked"]
    out["max_loss_difference"] = max(abs(x - y) for r, q in zip(ls, lt) for x, y in zip(r, q))
    # the flow alone (conditions given) and the embedder alone, forward + backward
    fl = [Flow(D, 6, 128, 2, cond_dim=64, seed=i).train() for i in range(M)]
    x, h = torch.randn(B, D, generator=g0), torch.randn(M, B, 64, generator=g0)
    with torch.no_grad():
        for f in fl: f(x, h[0])
    sf = Stack(fl)

    def flow_seq():
        for i, f in enumerate(fl):
            v, ld = f(x, h[i]); (v.pow(2).sum() - ld.sum()).backward()

    def flow_stack():
        v, ld = sf.call("forward", x, h, in_dims=(None, 0)); (v.pow(2).sum() - ld.sum()).backward()
    out["flow_ms_sequential"], out["flow_ms_stacked"] = per_step(flow_seq, a.steps), per_step(flow_stack, a.steps)
    out["flow_ratio"] = out["flow_ms_sequential"] / out["flow_ms_stacked"]
    em = [Embedder((512, 3, 3), 64, generator=torch.Generator().manual_seed(i)) for i in range(M)]
    se, z = Stack(em), feats[:, :B]

    def emb_seq():
        for i, e in enumerate(em): e(z[i]).sum().backward()

    def emb_stack(): se.call("forward", z, in_dims=(0,)).sum().backward()
    out["embedder_ms_sequential"], out["embedder_ms_stacked"] = per_step(emb_seq, a.steps), per_step(emb_stack, a.steps)
    out["embedder_ratio"] = out["embedder_ms_sequential"] / out["embedder_ms_stacked"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
