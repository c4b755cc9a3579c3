"""`StackedINN` of this tree against the one of an earlier git revision, in one process, on the setup of
`benchmarks/stacked_t.py` (9 t's of the quick profile's size at the shape (512, 3, 3), batch 128): the seconds of
`fit_invariances_stacked` for each (alternating, best of R rounds), their steps per second and ratio, and the
largest differences of the loss curves and final weights (0 and bitwise equal when the two compute the same).
The default revision, f3790ae, is the stack with its own ActNorm and coupling code, before it used invnb.flows'.

    python benchmarks/stacked_vs_rev.py [STEPS=100] [ROUNDS=3] [REV=f3790ae]     # prints one JSON object
"""
import importlib.util, json, subprocess, sys, tempfile, time
from pathlib import Path
import torch
import invnb
rev = sys.argv[3] if len(sys.argv) > 3 else "f3790ae"
src = subprocess.run(["git", "show", f"{rev}:invnb/stacked.py"], capture_output=True, text=True, check=True,
                     cwd=Path(__file__).resolve().parents[1]).stdout
old_file = Path(tempfile.mkdtemp()) / "stacked_before.py"; old_file.write_text(src)
spec = importlib.util.spec_from_file_location("invnb._stacked_before", old_file)
old = importlib.util.module_from_spec(spec); sys.modules["invnb._stacked_before"] = old; spec.loader.exec_module(old)
from invnb import stacked as new
from invnb.fitting import fit_invariances, warm_start
from invnb.inn import InvarianceINN
M, N, D, B = 9, 4500, 64, 128
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 100
R = int(sys.argv[2]) if len(sys.argv) > 2 else 3
size = dict(n_blocks=6, hidden=128, depth=2, embed_dim=64)
g = torch.Generator().manual_seed(0)
codes = {"mean": torch.randn(N, D, generator=g), "logvar": torch.full((N, D), -4.0)}
feats = [torch.randn(N, 512, 3, 3, generator=g).relu() for _ in range(M)]
seeds = [0] * (M - 1) + [1000]
base = InvarianceINN(D, 1, seed=0, **size)
fit_invariances(codes, torch.zeros(N, 1), t=base, steps=20, batch_size=B, progress=False)
make = lambda: [warm_start(InvarianceINN(D, (512, 3, 3), seed=s, **size), base) for s in seeds]
kw = dict(steps=steps, batch_size=B, lr=1e-3, progress=False, device="cpu", seed=seeds)
res, secs = {}, {"old": [], "new": []}
for r in range(R):
    for name, mod in (("old", old), ("new", new)):
        ts = make(); t0 = time.perf_counter()
        out = mod.fit_invariances_stacked(codes, feats, ts, **kw)
        secs[name].append(time.perf_counter() - t0); res[name] = out
(to, ho), (tn, hn) = res["old"], res["new"]
loss = max(abs(a - b) for x, y in zip(ho["model"], hn["model"]) for a, b in zip(x, y))
weight = max((p - q).abs().max().item() for a, b in zip(to, tn) for p, q in zip(a.state_dict().values(), b.state_dict().values())
             if p.is_floating_point())
bitwise = all(torch.equal(p, q) for a, b in zip(to, tn) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
best = {k: min(v) for k, v in secs.items()}
print(json.dumps({"revision": rev, "models": M, "steps": steps, "threads": torch.get_num_threads(), "seconds_old": secs["old"],
                  "seconds_new": secs["new"], "steps_per_s_old": round(steps / best["old"], 2),
                  "steps_per_s_new": round(steps / best["new"], 2), "new_over_old": round(best["old"] / best["new"], 3),
                  "max_loss_diff": loss, "max_weight_diff": weight, "bitwise_equal": bitwise}, indent=1))
