"""Speed of invnb's flows against a plain reference implementation of the same architecture, in one process.

Prints one JSON object. For each configuration:
  train_samples_per_s    forward + backward + Adam step on batches of 64 (and of 256), NLL loss
  sample16_ms            time for 16 draws z̄ ~ p(z̄|z) for one z (`t.sample(z, n=16)`)
and the ratios invnb / plain. The plain reference: separate s and t networks per coupling half, each one
`nn.Linear` chain, concatenation of [x_half, h], default (foreach) Adam. invnb: `InvarianceINN` with a vector
condition (its embedder H adds a small MLP the plain version does not have), fused Adam where available.

    python benchmarks/flows.py [--quick] [--compile]
"""
import argparse
import json
import math
import platform
import statistics
import time

import torch
from torch import nn

from invnb.inn import InvarianceINN

CONFIGS = {
    "paper": dict(in_dim=128, cond_dim=128, n_blocks=20, hidden=1024, depth=2),  # Tab. S10, Sec. 4.1
    "cpu": dict(in_dim=64, cond_dim=128, n_blocks=12, hidden=512, depth=2),
}


# ---- the plain reference ---------------------------------------------------------------------------
def mlp(i, o, hidden, depth):
    layers = [nn.Linear(i, hidden), nn.LeakyReLU()]
    for _ in range(depth): layers += [nn.Linear(hidden, hidden), nn.LeakyReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, o))


class PlainBlock(nn.Module):
    def __init__(self, dim, cond, hidden, depth, g):
        super().__init__()
        self.h = dim // 2
        self.loc, self.log_scale = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.s1, self.t1 = mlp(dim - self.h + cond, self.h, hidden, depth), mlp(dim - self.h + cond, self.h, hidden, depth)
        self.s2, self.t2 = mlp(self.h + cond, dim - self.h, hidden, depth), mlp(self.h + cond, dim - self.h, hidden, depth)
        self.register_buffer("perm", torch.randperm(dim, generator=g))

    def forward(self, x, c):
        x = (x + self.loc) * self.log_scale.exp()
        x1, x2 = x[:, :self.h], x[:, self.h:]
        u = torch.cat([x2, c], 1); a = 2 * torch.tanh(self.s1(u) / 2); x1 = x1 * a.exp() + self.t1(u)
        u = torch.cat([x1, c], 1); b = 2 * torch.tanh(self.s2(u) / 2); x2 = x2 * b.exp() + self.t2(u)
        return torch.cat([x1, x2], 1)[:, self.perm], self.log_scale.sum() + a.sum(1) + b.sum(1)

    def inverse(self, y, c):
        x = torch.empty_like(y); x[:, self.perm] = y
        x1, x2 = x[:, :self.h], x[:, self.h:]
        u = torch.cat([x1, c], 1); x2 = (x2 - self.t2(u)) * (-2 * torch.tanh(self.s2(u) / 2)).exp()
        u = torch.cat([x2, c], 1); x1 = (x1 - self.t1(u)) * (-2 * torch.tanh(self.s1(u) / 2)).exp()
        return torch.cat([x1, x2], 1) * (-self.log_scale).exp() - self.loc


class PlainFlow(nn.Module):
    def __init__(self, in_dim, cond_dim, n_blocks, hidden, depth):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.blocks = nn.ModuleList(PlainBlock(in_dim, cond_dim, hidden, depth, g) for _ in range(n_blocks))

    def nll(self, x, c):
        logdet = 0
        for b in self.blocks: x, ld = b(x, c); logdet = logdet + ld
        return 0.5 * x.pow(2).sum(1) - logdet

    @torch.no_grad()
    def sample(self, c, n, generator=None):
        c = c.repeat_interleave(n, 0)
        y = torch.randn(c.shape[0], self.blocks[0].loc.shape[0], generator=generator)
        for b in reversed(self.blocks): y = b.inverse(y, c)
        return y


# ---- timing ----------------------------------------------------------------------------------------
def median_time(fn, reps, warmup=2):
    for _ in range(warmup): fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_rate(nll, params, batch, dims, reps, fused):
    opt = torch.optim.Adam(params, 1e-5, fused=True) if fused else torch.optim.Adam(params, 1e-5)
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(batch, dims[0], generator=g), torch.randn(batch, dims[1], generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        nll(x, c).mean().backward()
        opt.step()
    return batch / median_time(step, reps)


def bench_config(name, cfg, reps, batches):
    plain = PlainFlow(**cfg)
    t = InvarianceINN(cfg["in_dim"], cfg["cond_dim"], cfg["n_blocks"], cfg["hidden"], cfg["depth"], embed_dim=cfg["cond_dim"])
    dims = (cfg["in_dim"], cfg["cond_dim"])
    with torch.no_grad():  # initialise ActNorm layers from a batch, as training would
        plain.nll(torch.randn(64, dims[0]), torch.randn(64, dims[1])); t.nll(torch.randn(64, dims[0]), torch.randn(64, dims[1]))
    out = {"flow_parameters": {"plain": sum(p.numel() for p in plain.parameters()),
                               "invnb": sum(p.numel() for p in t.flow.parameters()),
                               "invnb_embedder": sum(p.numel() for p in t.embedder.parameters())}}
    for batch in batches:
        p = train_rate(plain.nll, plain.parameters(), batch, dims, reps, fused=False)
        i = train_rate(t.nll, t.parameters(), batch, dims, reps, fused=True)
        out[f"train_samples_per_s_batch{batch}"] = {"plain": round(p, 1), "invnb": round(i, 1), "ratio": round(i / p, 2)}
    z = torch.randn(1, dims[1])
    g = lambda: torch.Generator().manual_seed(0)
    p = median_time(lambda: plain.sample(z, 16, g()), reps * 3)
    i = median_time(lambda: t.sample(z, 16, g()), reps * 3)
    out["sample16_ms"] = {"plain": round(p * 1e3, 1), "invnb": round(i * 1e3, 1), "speedup": round(p / i, 2)}
    return out


def bench_compile(cfg, reps):
    "Does torch.compile(fullgraph=True) trace t without graph breaks, and does it speed up a training step?"
    t = InvarianceINN(cfg["in_dim"], cfg["cond_dim"], cfg["n_blocks"], cfg["hidden"], cfg["depth"], embed_dim=cfg["cond_dim"])
    x, c = torch.randn(64, cfg["in_dim"]), torch.randn(64, cfg["cond_dim"])
    with torch.no_grad(): t.nll(x, c)
    eager = train_rate(t.nll, t.parameters(), 64, (cfg["in_dim"], cfg["cond_dim"]), reps, fused=True)
    try:
        t0 = time.perf_counter()
        compiled = torch.compile(t.nll, fullgraph=True)
        compiled(x, c).mean().backward()
        compile_s = time.perf_counter() - t0
        fast = train_rate(compiled, t.parameters(), 64, (cfg["in_dim"], cfg["cond_dim"]), reps, fused=True)
        return {"fullgraph": True, "compile_s": round(compile_s, 1), "eager_samples_per_s": round(eager, 1),
                "compiled_samples_per_s": round(fast, 1), "ratio": round(fast / eager, 2)}
    except Exception as e:  # report, do not hide
        return {"fullgraph": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, CPU config only")
    ap.add_argument("--compile", action="store_true", help="also check torch.compile(fullgraph=True) on the CPU config")
    a = ap.parse_args()
    torch.manual_seed(0)
    reps = 3 if a.quick else 7
    res = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                       "threads": torch.get_num_threads(), "torch": torch.__version__},
           "configs": {}}
    for name, cfg in CONFIGS.items():
        if a.quick and name == "paper": continue
        res["configs"][name] = {"config": cfg, **bench_config(name, cfg, reps, (64, 256))}
    if a.compile:
        res["compile_cpu_config"] = bench_compile(CONFIGS["cpu"], reps)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
