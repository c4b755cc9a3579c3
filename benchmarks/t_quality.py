"""Which flow makes a t whose samples keep what z keeps? invnb's t beside zuko's conditional NSF and a RealNVP-style
affine flow, on the codes of a finished `invnb colormnist` run, at equal steps and at equal seconds.

Every flow models p(z̄ | z) for one layer of the run's final classifier, on the training digits in K colourings
(`--colourings`, as the profiles' `t_colourings`), behind the same embedder H of z (`invnb.inn.Embedder`), trained
from scratch by the same loop (Adam, batch 128, gradient norm clipped at 10). Per flow the JSON gives:

- `val_nll` / `train_nll` / `gap`: nats of the 64-d code (one fixed posterior draw), on the held-out images and on
  500 training images; `gap` = held-out − training;
- `agreement` ± `agreement_se`: how often f predicts on D(z̄), z̄ ~ t(·|Φ(x)), what it predicts on D(E(x))
  (`diagnostics.sample_fidelity`'s count), for 100 held-out x and 4 draws each;
- `ceiling` ± `ceiling_se`: the same count for the oracle t (`diagnostics.agreement_ceiling`, 4 neighbours);
- `seconds` of training, and `params`.

`at_steps`: every flow after `--steps` steps; `at_seconds`: every flow after the seconds invnb's t took for them.
`--grid`: invnb's t only, agreement against steps × colourings × width (how far the quick profile is from its ceiling).
`--data`: invnb's t at equal seconds on one colouring, a pool of 8 colourings, and colourings drawn fresh at
every step with E and Φ applied on the fly (which data source is faster per nat of held-out NLL).

zuko is not a dependency of invnb (it lost to invnb's t at equal seconds here): `pip install zuko` to run its
column.

    python benchmarks/t_quality.py runs/colormnist --layer softmax --colourings 8 --steps 1500
    python benchmarks/t_quality.py runs/colormnist --grid
    python benchmarks/t_quality.py runs/colormnist --grid --layer features.11 --lr 2e-3 --grid-colourings 4 \
        --grid-widths 128,256 --grid-steps 250,500,1000,2000,4000 --out benchmarks/measured/t_quality_grid.json
    python benchmarks/t_quality.py runs/colormnist --data --seconds 60 --lr 3e-3
"""
import argparse
import json
import math
import sys
import time
import warnings

import torch
from torch import nn

from invnb.checkpoint import load_model
from invnb.colormnist import PROFILES, TARGET, load_data
from invnb.invariances import SEED_OFFSETS
from invnb.data import ColorMNIST
from invnb.diagnostics import _agreement, agreement_ceiling
from invnb.inn import Embedder, InvarianceINN
from invnb.probe import Probe
from invnb.train import encode_dataset


class RealNVP(nn.Module):
    "A RealNVP-style conditional flow: alternating half masks, one affine coupling each, tanh-bounded log-scales."
    def __init__(self, dim, cond_shape, n_blocks=6, hidden=128, embed_dim=64, seed=0, **_):
        super().__init__()
        torch.manual_seed(seed)
        self.dim, self.embedder = dim, Embedder(cond_shape, embed_dim)
        self.masks = [torch.arange(dim) % 2 == (k % 2) for k in range(2 * n_blocks)]
        self.nets = nn.ModuleList(nn.Sequential(nn.Linear(dim // 2 + embed_dim, hidden), nn.ReLU(),
                                                nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim))
                                  for _ in self.masks)
        for n in self.nets: nn.init.zeros_(n[-1].weight); nn.init.zeros_(n[-1].bias)

    def _st(self, net, keep, h):
        s, t = net(torch.cat([keep, h], 1)).chunk(2, 1)
        return 2 * torch.tanh(s / 2), t

    def nll(self, zbar, z):
        h, x, logdet = self.embedder(z), zbar, 0
        for m, net in zip(self.masks, self.nets):
            s, t = self._st(net, x[:, m], h)
            x = x.clone(); x[:, ~m] = x[:, ~m] * s.exp() + t; logdet = logdet + s.sum(1)
        return 0.5 * x.pow(2).sum(1) + 0.5 * self.dim * math.log(2 * math.pi) - logdet

    @torch.no_grad()
    def sample(self, z, v):
        h, x = self.embedder(z), v
        for m, net in reversed(list(zip(self.masks, self.nets))):
            s, t = self._st(net, x[:, m], h)
            x = x.clone(); x[:, ~m] = (x[:, ~m] - t) * (-s).exp()
        return x


class ZukoNSF(nn.Module):
    "zuko's conditional neural spline flow, as couplings (passes=2; rational-quadratic splines), behind invnb's embedder."
    def __init__(self, dim, cond_shape, n_blocks=6, hidden=128, embed_dim=64, seed=0, **_):
        super().__init__()
        import zuko
        torch.manual_seed(seed)
        self.embedder = Embedder(cond_shape, embed_dim)
        self.flow = zuko.flows.NSF(dim, embed_dim, transforms=n_blocks, hidden_features=(hidden, hidden), passes=2)  # couplings

    def nll(self, zbar, z): return -self.flow(self.embedder(z)).log_prob(zbar)

    @torch.no_grad()
    def sample(self, z, v):
        t = self.flow(self.embedder(z))
        return t.transform.inv(v * t.base.scale + t.base.loc) if hasattr(t.base, "loc") else t.transform.inv(v)


class Invnb(nn.Module):
    "invnb's t (`InvarianceINN`)."
    def __init__(self, dim, cond_shape, seed=0, **size):
        super().__init__()
        self.t = InvarianceINN(dim, cond_shape, seed=seed, **size)

    def nll(self, zbar, z): return self.t.nll(zbar, z)

    @torch.no_grad()
    def sample(self, z, v): return self.t.inverse(v, z)


FLOWS = {"invnb": Invnb, "realnvp": RealNVP, "zuko_nsf": ZukoNSF}


def draw(codes, g):
    return codes["mean"] + torch.randn(codes["mean"].shape, generator=g) * (0.5 * codes["logvar"]).exp()


@torch.no_grad()
def evaluate(model, ctx) -> dict:
    model.eval()
    nll = lambda z, f: torch.cat([model.nll(a, b) for a, b in zip(z.split(500), f.split(500))]).mean().item()
    val, train = nll(ctx["val_zbar"], ctx["val_feats"]), nll(ctx["check_zbar"], ctx["check_feats"])
    x, f, ae, n = ctx["x"], ctx["f"], ctx["ae"], 4
    g = torch.Generator().manual_seed(0)
    v = torch.randn(len(x) * n, ctx["dim"], generator=g)
    zb = model.sample(ctx["x_feats"].repeat_interleave(n, 0), v)
    pred = f(ae.decode(zb)).argmax(1).reshape(len(x), n)
    model.train()
    return {"val_nll": round(val, 2), "train_nll": round(train, 2), "gap": round(val - train, 2),
            **{k: round(v, 3) for k, v in _agreement(pred == ctx["target"][:, None]).items()}}


@torch.no_grad()
def fresh_batch(ctx, batch_size, g):
    """A batch of the training digits in colours drawn now (ColorMNIST's rule: fg uniform, bg uniform over the others),
    encoded by E and seen by Φ on the fly: (z̄, z)."""
    cm, P = ctx["train"], len(ctx["train"].colours)
    idx = torch.randint(len(cm), (batch_size,), generator=g)
    fg = torch.randint(P, (batch_size,), generator=g)
    bg = torch.randint(P - 1, (batch_size,), generator=g); bg = bg + (bg >= fg).long()
    m = cm.ink[idx].float().div(cm._ink_scale)[:, None]
    x = ((1 - m) * cm.colours[bg][:, :, None, None] + m * cm.colours[fg][:, :, None, None]) * 2 - 1
    mean, logvar = ctx["ae"].encode(x)
    return mean + torch.randn(mean.shape, generator=g) * (0.5 * logvar).exp(), ctx["probe"].phi(x).float()


def train(model, ctx, steps=None, seconds=None, batch_size=128, lr=1e-3, seed=0, fresh=False):
    """Adam, clipped at 10, for `steps` steps or until `seconds` have passed (whichever is given); on the cached pool of
    codes and features, or (`fresh`) on colourings drawn as training goes (`fresh_batch`)."""
    opt, g = torch.optim.Adam(model.parameters(), lr=lr), torch.Generator().manual_seed(seed)
    codes, feats, n = ctx["codes"], ctx["feats"], len(ctx["feats"])
    t0, step = time.perf_counter(), 0
    while (steps is None or step < steps) and (seconds is None or time.perf_counter() - t0 < seconds):
        if fresh: zbar, z = fresh_batch(ctx, batch_size, g)
        else:
            idx = torch.randint(n, (batch_size,), generator=g)
            zbar = codes["mean"][idx] + torch.randn(batch_size, ctx["dim"], generator=g) * (0.5 * codes["logvar"][idx]).exp()
            z = feats[idx]
        loss = model.nll(zbar, z).mean()
        opt.zero_grad(); loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0); opt.step(); step += 1
    return step, time.perf_counter() - t0


@torch.no_grad()
def context(run: str, layer: str, colourings: int) -> dict:
    state, m = (json.loads(open(f"{run}/{f}").read()) for f in ("state.json", "metrics.json"))
    prof, seed = PROFILES[state["profile"]], state.get("seed", 0)
    data = load_data(prof, seed)
    ae = load_model(f"{run}/study/ae.safetensors").eval()
    f = load_model(f"{run}/study/models/{m['final_model']}.safetensors").eval()
    probe = f.probe(layer) if hasattr(f, "probe") else Probe(f, layer)   # the classifier names its layers as the run does
    xs = [data.xt] + [ColorMNIST(data.train.ink, data.train.labels[TARGET], seed=seed + SEED_OFFSETS["t_colourings"] + k).images()
                      for k in range(1, colourings)]
    x = torch.cat(xs)
    phi = lambda imgs: torch.cat([probe.phi(b).float() for b in imgs.split(500)])
    codes, vcodes = encode_dataset(ae.encode, x, device="cpu"), encode_dataset(ae.encode, data.xv, device="cpu")
    g = torch.Generator().manual_seed(seed)
    xe = data.xv[:100]
    return {"prof": prof, "dim": codes["mean"].shape[1], "codes": codes, "feats": phi(x), "ae": ae, "f": f,
            "train": data.train, "probe": probe,
            "val_zbar": draw(vcodes, g), "val_feats": phi(data.xv),
            "check_zbar": draw({k: v[:500] for k, v in codes.items()}, g), "check_feats": phi(data.xt[:500]),
            "x": xe, "x_feats": phi(xe), "target": f(ae.decode(ae.encode(xe)[0])).argmax(1),
            "ceiling": agreement_ceiling(ae, probe, f, xe, data.xt, k=4, generator=torch.Generator().manual_seed(1)),
            "cond_shape": tuple(phi(xe[:1]).shape[1:]), "colourings": colourings, "layer": layer,
            "run": {"profile": prof.name, "seed": seed, "final_model": m["final_model"]}}


def compare(ctx, steps, flows):
    size = dict(ctx["prof"].t_size)
    out = {"layer": ctx["layer"], "colourings": ctx["colourings"], "steps": steps, "size": size,
           "ceiling": {k: round(v, 3) for k, v in ctx["ceiling"].items()}, "at_steps": {}, "at_seconds": {}}
    budget = None
    for name in flows:
        model = FLOWS[name](ctx["dim"], ctx["cond_shape"], seed=0, **size)
        n, secs = train(model, ctx, steps=steps)
        budget = budget or secs                                  # invnb's seconds (the first flow)
        out["at_steps"][name] = {**evaluate(model, ctx), "seconds": round(secs, 1),
                                 "params": sum(p.numel() for p in model.parameters())}
        print(name, "at steps", out["at_steps"][name], flush=True)
        if name != flows[0]:
            model = FLOWS[name](ctx["dim"], ctx["cond_shape"], seed=0, **size)
            n, secs = train(model, ctx, seconds=budget)
            out["at_seconds"][name] = {**evaluate(model, ctx), "steps": n, "seconds": round(secs, 1)}
            print(name, "at seconds", out["at_seconds"][name], flush=True)
    out["at_seconds"][flows[0]] = {**out["at_steps"][flows[0]], "steps": steps}
    return out


def grid(ctx_of, steps_list, colourings_list, widths, lr=1e-3):
    rows = []
    for K in colourings_list:
        ctx = ctx_of(K)
        for w in widths:
            size = {**ctx["prof"].t_size, "hidden": w}
            model, done, secs = Invnb(ctx["dim"], ctx["cond_shape"], seed=0, **size), 0, 0.0
            for s in sorted(steps_list):                         # one run per (K, width), evaluated on the way
                n, dt = train(model, ctx, steps=s - done, seed=done, lr=lr); done, secs = s, secs + dt
                rows.append({"colourings": K, "hidden": w, "steps": s, **evaluate(model, ctx), "seconds": round(secs, 1)})
                print(rows[-1], flush=True)
    return {"layer": ctx["layer"], "lr": lr, "size": dict(ctx["prof"].t_size), "run": ctx["run"],
            "ceiling": {k: round(v, 3) for k, v in ctx["ceiling"].items()}, "grid": rows}


def data_sources(ctx_of, seconds, lr):
    """invnb's t at equal seconds on: the training digits in their one colouring, in a pool of K colourings (codes and
    features cached), and in colourings drawn fresh at every step (E and Φ on the fly): which is faster per nat."""
    rows = []
    for name, K, fresh in (("one colouring", 1, False), ("pool of 8", 8, False),
                           ("fresh every step", 1, True)):
        t0 = time.perf_counter()
        ctx = ctx_of(K)
        prep = time.perf_counter() - t0
        model = Invnb(ctx["dim"], ctx["cond_shape"], seed=0, **ctx["prof"].t_size)
        n, secs = train(model, ctx, seconds=seconds, lr=lr, fresh=fresh)
        rows.append({"data": name, **evaluate(model, ctx), "steps": n, "seconds": round(secs, 1),
                     "setup_seconds": round(prep, 1)})
        print(rows[-1], flush=True)
    return {"layer": ctx["layer"], "lr": lr, "ceiling": {k: round(v, 3) for k, v in ctx["ceiling"].items()}, "data": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a finished `invnb colormnist` run folder")
    ap.add_argument("--layer", default="softmax")
    ap.add_argument("--colourings", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--flows", default="invnb,realnvp,zuko_nsf")
    ap.add_argument("--grid", action="store_true", help="invnb's t: agreement over steps × colourings × width")
    ap.add_argument("--data", action="store_true", help="invnb's t at equal seconds (--seconds) on one colouring, "
                    "a pool of 8 colourings, and fresh colourings at every step")
    ap.add_argument("--grid-steps", default="500,1500,3000", help="--grid: the steps at which t is evaluated")
    ap.add_argument("--grid-colourings", default="1,8", help="--grid: the pools' colourings K")
    ap.add_argument("--grid-widths", default="128,256", help="--grid: the coupling networks' hidden widths")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    if a.data:
        res = data_sources(lambda K: context(a.run, a.layer, K), a.seconds, a.lr)
    elif a.grid:
        ints = lambda t: [int(x) for x in t.split(",")]
        res = grid(lambda K: context(a.run, a.layer, K), ints(a.grid_steps), ints(a.grid_colourings),
                   ints(a.grid_widths), a.lr)
    else:
        res = compare(context(a.run, a.layer, a.colourings), a.steps, a.flows.split(","))
    print(json.dumps(res))
    if a.out:                                    # the command, with the run folder as RUN (it names a local path)
        res["command"] = " ".join(["python", "benchmarks/t_quality.py", "RUN", *sys.argv[2:]])
        open(a.out, "w").write(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
