"""How high can the sample agreement of a t at the softmax be? Oracles for `diagnostics.sample_fidelity` on a finished
`invnb colormnist` run.

For 100 validation images x (4 draws each), f's prediction on D(z̄) is compared with its prediction on D(E(x)), as the
sample fidelity does, with z̄ drawn not from a t but from:

- `neighbours`: the study's own ceiling (`diagnostics.agreement_ceiling`): the codes of the 4 training images nearest
  to x in the softmax's Φ-space, the per-layer oracle that `invnb colormnist` reports beside every agreement;
- `empirical`: the codes (one posterior draw) of training images to which f gives the same class as to x. This pools
  by f's argmax only: it is p(z̄ | class), the ceiling of a t that keeps f's class and nothing else, not of a t at the
  softmax (whose z also keeps f's confidence), and it does not apply to any other layer;
- `gaussian_class_cov` / `gaussian_pooled_cov`: a Gaussian per class (f's class), with that class's covariance of
  the codes or one shared covariance, at temperatures 1.0, 0.8 and 0.6.

- `neighbours_noise{s}`: the `neighbours` codes with Gaussian noise of s × each code dimension's spread added: how
  far off the data the decoder still gives f's prediction back (if it does, a weak t is what limits the agreement).

Also `self`: how often f agrees on x and on D(E(x)). Prints one JSON object.

    python benchmarks/agreement_oracle.py runs/colormnist
"""
import argparse
import json
import warnings

import torch

from invnb.checkpoint import load_model
from invnb.colormnist import PROFILES, load_data
from invnb.diagnostics import agreement_ceiling
from invnb.probe import Probe
from invnb.train import encode_dataset


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a finished `invnb colormnist` run folder")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    state, m = (json.loads(open(f"{a.run}/{f}").read()) for f in ("state.json", "metrics.json"))
    data = load_data(PROFILES[state["profile"]], state.get("seed", 0))
    ae = load_model(f"{a.run}/study/ae.safetensors").eval()
    f = load_model(f"{a.run}/study/models/{m['final_model']}.safetensors").eval()
    g = torch.Generator().manual_seed(0)
    c = encode_dataset(ae.encode, data.xt, device="cpu")
    zt = c["mean"] + torch.randn(c["mean"].shape, generator=g) * (0.5 * c["logvar"]).exp()
    pt = torch.cat([f(x).argmax(1) for x in data.xt.split(500)])
    x = data.xv[:100]
    px, target = f(x).argmax(1), f(ae.decode(ae.encode(x)[0])).argmax(1)
    agree = lambda s: (f(ae.decode(s.reshape(-1, s.shape[-1]))).argmax(1).reshape(100, -1) == target[:, None]).float().mean().item()
    D, K = zt.shape[1], int(pt.max()) + 1
    out = {"self": (px == target).float().mean().item()}
    probe = f.probe("softmax") if hasattr(f, "probe") else Probe(f, "softmax")
    out["neighbours"] = agreement_ceiling(ae, probe, f, x, data.xt, k=4, generator=g)["ceiling"]
    near = torch.cdist(probe.phi(x).flatten(1), torch.cat([probe.phi(b).flatten(1) for b in data.xt.split(500)]))
    near = near.topk(4, largest=False).indices                               # the ceiling's neighbours, (100, 4)
    for s in (0.1, 0.25, 0.5, 1.0):      # is it the decoder? the oracle's codes moved off the data by s × their spread
        out[f"neighbours_noise{s}"] = agree(zt[near] + s * zt.std(0) * torch.randn(zt[near].shape, generator=g))
    idx = torch.stack([torch.nonzero(pt == k).squeeze(1)[torch.randint(int((pt == k).sum()), (4,), generator=g)]
                       for k in px.tolist()])
    out["empirical"] = agree(zt[idx])
    mu = torch.stack([zt[pt == k].mean(0) for k in range(K)])
    cov = torch.stack([torch.cov(zt[pt == k].T) + 1e-4 * torch.eye(D) for k in range(K)])
    pooled = sum(torch.cov((zt[pt == k] - mu[k]).T) * (pt == k).sum() for k in range(K)) / len(zt) + 1e-4 * torch.eye(D)
    for name, C in (("gaussian_class_cov", cov[px]), ("gaussian_pooled_cov", pooled.expand(100, D, D))):
        L = torch.linalg.cholesky(C)
        for tau in (1.0, 0.8, 0.6):
            eps = torch.randn(100, 4, D, generator=g) * tau
            out[f"{name}_t{tau}"] = agree(mu[px][:, None] + torch.einsum("bij,bnj->bni", L, eps))
    print(json.dumps({k: round(v, 3) for k, v in out.items()}))


if __name__ == "__main__":
    main()
