"Analyses against closed forms (linear-Gaussian case), caching of E and Φ, sampling, FGSM, swaps."
import math
import warnings

import pytest
import torch
from invnb import fitting
from torch import nn

from invnb.analysis import eq19, eq20, explained_by_invariances, pixel_mean_var, sample_images
from invnb.fitting import OnTheFly, fit_factors, fit_invariances, fit_invariances_over, layer_features
from invnb.autoencoder import SmallAE
from invnb.data import FactorPairs
from invnb.edits import attack_through_layers, factor_sensitivity, fgsm, swap_factor
from invnb.inn import FactorINN, InvarianceINN
from invnb.probe import Probe
from invnb.train import encode_dataset

D, KEEP, SIGMA = 8, [0, 1, 2], 0.5
CLOSED19 = (len(KEEP) * SIGMA ** 2 + (D - len(KEEP)) * (1 + SIGMA ** 2)) / (D * (1 + SIGMA ** 2))
CLOSED20 = {"kept": 1 / (1 + SIGMA ** 2), "dropped": 0.0}


class AnalyticT:
    "Exact t⁻¹ for x ~ N(0, I), z̄ = x + σε, Φ(x) = x_KEEP."
    dim = D
    def inverse(self, v, z):
        out = v * math.sqrt(1 + SIGMA ** 2)
        out[:, KEEP] = z + SIGMA * v[:, KEEP]
        return out
    def sample(self, z, n, generator=None):
        v = torch.randn(len(z) * n, D, generator=generator)
        return self.inverse(v, z.repeat_interleave(n, 0)).reshape(len(z), n, D)


class IdentityE:
    slices = {"kept": slice(0, 3), "dropped": slice(3, D)}
    def __call__(self, zbar): return zbar, None


def linear_gaussian(n, g):
    x = torch.randn(n, D, generator=g)
    return {"mean": x, "logvar": torch.full((n, D), 2 * math.log(SIGMA))}, x[:, KEEP]


def closed_forms(z):
    """Eq. 19 and Eq. 20 of the exact t for the validation pool z = x_KEEP: the expectations over p_valid use the
    pool's own variances of x_KEEP (the other dims come from v alone)."""
    s2, kept_v, drop_v = z.var(0, correction=0).sum().item(), len(KEEP) * SIGMA ** 2, (D - len(KEEP)) * (1 + SIGMA ** 2)
    return (kept_v + drop_v) / (s2 + kept_v + drop_v), {"kept": s2 / (s2 + kept_v), "dropped": 0.0}


def estimates(seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(500, D, generator=g)[:, KEEP]
    c19, c20 = closed_forms(z)
    r20 = eq20(AnalyticT(), IdentityE(), z, n_outer=100, n_inner=100, generator=g)
    # ddof=0 inner variances: the estimators' expectation is the closed form times (1 - 1/n_inner)
    return [(eq19(AnalyticT(), z, n_outer=100, n_inner=100, generator=g), c19 * 0.99), (r20["kept"], c20["kept"] * 0.99)], r20["dropped"][0]


def test_estimators_reproduce_the_closed_form():
    "With the exact t, 100 x 100 grids give Eq. 19 and Eq. 20 within 2 standard errors of the closed forms."
    pairs, dropped = estimates(0)
    for (v, se), closed in pairs:
        assert se > 0 and abs(v - closed) < 2 * se, (v, se, closed)
    assert dropped < 1e-10                                              # z carries none of it: exactly 0


def test_standard_errors_are_calibrated():
    "Over 20 seeds, about 95 % of the estimates lie within 2 standard errors, and none beyond 4."
    z_scores = [abs(v - closed) / se for seed in range(20) for (v, se), closed in estimates(seed)[0]]
    assert sum(z < 2 for z in z_scores) >= 0.85 * len(z_scores) and max(z_scores) < 4, z_scores


def test_grid_estimator_conventions():
    "sum of per-dimension population variances; jackknife standard error over the outer samples."
    g = torch.Generator().manual_seed(0)
    grid = torch.randn(5, 4, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5]) + torch.randn(5, 1, 3, generator=g)
    total = grid.reshape(-1, 3).var(0, correction=0).sum()
    inner = grid.var(1, correction=0).sum(-1)
    v, se = explained_by_invariances(grid)
    assert v == pytest.approx((inner.mean() / total).item(), rel=1e-6)
    loo = []
    for i in range(5):                                                  # the jackknife, written out
        rest = torch.cat([grid[:i], grid[i + 1:]])
        loo.append(rest.var(1, correction=0).sum(-1).mean() / rest.reshape(-1, 3).var(0, correction=0).sum())
    loo = torch.stack(loo)
    assert se == pytest.approx(math.sqrt(4 / 5 * ((loo - loo.mean()) ** 2).sum().item()), rel=1e-5)


def test_fit_invariances_recovers_the_closed_form():
    """A t trained by fit_invariances on 50k cached codes gives Eq. 19/20 within 0.03 of the closed forms.
    (With only a few thousand examples a larger t memorises them — z identifies each training image — and
    leaks z into the dropped dims on held-out data: 0.04-0.06 instead of 0.)"""
    g = torch.Generator().manual_seed(0)
    codes, feats = linear_gaussian(50_000, g)
    t, hist = fit_invariances(codes, feats, steps=1500, batch_size=256, lr=3e-3, n_blocks=2, hidden=64, depth=1,
                              embed_dim=8, progress=False, device="cpu")
    _, zval = linear_gaussian(2000, torch.Generator().manual_seed(1))
    c19, c20 = closed_forms(zval)
    v19, _ = eq19(t, zval, n_outer=200, n_inner=200, generator=torch.Generator().manual_seed(2))
    assert abs(v19 - c19) < 0.03, (v19, c19)
    r20 = eq20(t, IdentityE(), zval, n_outer=200, n_inner=200, generator=torch.Generator().manual_seed(3))
    for k, closed in c20.items():
        assert abs(r20[k][0] - closed) < 0.03, (k, r20[k], closed)


def test_fit_factors_trains_on_pairs():
    g = torch.Generator().manual_seed(0)
    labels = {"a": torch.randint(4, (500,), generator=g), "b": torch.randint(4, (500,), generator=g)}
    mean = torch.randn(500, 6, generator=g) * 0.1
    mean[:, 0] += labels["a"].float(); mean[:, 1] += labels["b"].float()
    codes = {"mean": mean, "logvar": torch.full((500, 6), -4.0)}
    e, hist = fit_factors(codes, FactorPairs(labels), {"a": 1, "b": 1}, steps=300, n_blocks=2, hidden=16,
                          progress=False, device="cpu")
    assert hist["model"][-1] < hist["model"][0]
    with pytest.raises(ValueError, match="same, in order"):
        fit_factors(codes, FactorPairs(labels, ["b", "a"]), {"a": 1, "b": 1}, steps=1)


def test_fit_factors_guide_adds_the_annealed_target_term():
    "guide=w adds w·Σ‖eᵢ(z̄ᵃ) − Tᵢ(z̄ᵃ)‖² at step 0 (T: the closed-form canonical variates), and nothing at the end."
    from invnb.factors import pair_targets
    from invnb.inn import FactorINN
    g = torch.Generator().manual_seed(0)
    labels = {"a": torch.randint(4, (500,), generator=g), "b": torch.randint(4, (500,), generator=g)}
    mean = torch.randn(500, 6, generator=g) * 0.1
    mean[:, 0] += labels["a"].float(); mean[:, 1] += labels["b"].float()
    codes = {"mean": mean, "logvar": torch.full((500, 6), -4.0)}
    kw = dict(steps=3, lr=0.0, n_blocks=2, hidden=16, progress=False, device="cpu", seed=1)
    _, plain = fit_factors(codes, FactorPairs(labels), {"a": 1, "b": 1}, **kw)
    _, guided = fit_factors(codes, FactorPairs(labels), {"a": 1, "b": 1}, guide=10.0, **kw)
    # redo step 0 by hand: the same draws (the loop's generator), the same untrained e (lr = 0)
    e = FactorINN(6, {"a": 1, "b": 1}, n_blocks=2, hidden=16)
    gen = torch.Generator().manual_seed(1)
    a, b, f = FactorPairs(labels).sample(128, gen)
    za, zb = (codes["mean"][i] + torch.randn(128, 6, generator=gen) * codes["logvar"][i].mul(0.5).exp() for i in (a, b))
    e.train(); e(torch.cat([za, zb])); e.eval()              # ActNorm initialises on the first batch, as in fit
    targets = pair_targets(codes, labels, {"a": 1, "b": 1})(za)
    extra = sum((e(za)[0][:, e.slices[k]] - v).pow(2).sum(1).mean() for k, v in targets.items()).item()
    assert guided["model"][0] == pytest.approx(plain["model"][0] + 10.0 * extra, rel=1e-4)
    assert guided["model"][0] > plain["model"][0]
    with pytest.raises(ValueError, match="guide must be >= 0"):
        fit_factors(codes, FactorPairs(labels), {"a": 1, "b": 1}, guide=-1.0, **kw)


def test_features_are_computed_once_per_example():
    calls = []
    class Counting(nn.Module):
        def __init__(self):
            super().__init__(); self.conv = nn.Conv2d(3, 2, 3, 2, 1); self.head = nn.Linear(2 * 14 * 14, 3)
        def forward(self, x):
            calls.append(len(x)); return self.head(self.conv(x).flatten(1))
    model = Counting()
    images = torch.rand(300, 3, 28, 28) * 2 - 1
    feats = layer_features(Probe(model, "conv"), images, batch_size=64)
    n_feature_calls = sum(calls) - 1                                   # one probe for the shape (batch of 1)
    assert n_feature_calls == 300 and feats.shape == (300, 2, 14, 14)
    ae = SmallAE(width=8)
    seen = []
    enc = ae.encode
    codes = encode_dataset(lambda x: (seen.append(len(x)), enc(x))[1], images, batch_size=128, device="cpu")
    assert sum(seen) == 300
    calls.clear()
    t, _ = fit_invariances(codes, feats, steps=5, batch_size=32, n_blocks=2, hidden=16, progress=False, device="cpu")
    assert calls == []                                                 # Φ never runs inside training steps


def test_fit_invariances_over_layers_and_checkpoints():
    models = {f"step{i}": nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 3)) for i in range(2)}
    probes = {(name, layer): Probe(m, layer) for name, m in models.items() for layer in ("1", "3")}
    images = torch.rand(40, 3, 28, 28) * 2 - 1
    codes = {"mean": torch.randn(40, 6), "logvar": torch.zeros(40, 6)}
    ts = fit_invariances_over(probes, images, codes, steps=2, batch_size=8, n_blocks=1, hidden=8, progress=False, device="cpu")
    assert set(ts) == set(probes) and ts[("step0", "1")].cond_shape == (4, 14, 14) and ts[("step1", "3")].cond_shape == (3,)


def test_over_budget_features_fall_back_to_on_the_fly():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 28 * 28, 2))
    images = torch.rand(20, 3, 28, 28)
    with pytest.warns(UserWarning, match="on the fly"):
        feats = layer_features(Probe(model, "0"), images, budget_mb=0.01)
    assert isinstance(feats, OnTheFly) and feats[torch.tensor([0, 3])].shape == (2, 4, 28, 28)
    codes = {"mean": torch.randn(20, 4), "logvar": torch.zeros(20, 4)}
    fit_invariances(codes, feats, steps=2, batch_size=4, n_blocks=1, hidden=8, progress=False, device="cpu")


def test_sampling_maps_fgsm_and_swaps_are_consistent():
    torch.manual_seed(0)
    ae = SmallAE(width=8).eval()
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 10)).eval()
    probe = Probe(model, "1")
    t = InvarianceINN(64, (4, 14, 14), n_blocks=2, hidden=16).eval()
    x = torch.rand(3, 3, 28, 28) * 2 - 1
    s = sample_images(ae, probe, t, x, n=5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 5, 3, 28, 28)
    mean, var = pixel_mean_var(s)
    assert mean.shape == (3, 3, 28, 28) and var.shape == (3, 1, 28, 28) and (var >= 0).all()
    v = torch.randn(5, 64)
    assert torch.equal(sample_images(ae, probe, t, x, v=v), sample_images(ae, probe, t, x, v=v))
    x_adv = fgsm(model, x, eps=0.02)
    assert (x_adv - x).abs().max() <= 0.02 + 1e-6 and x_adv.abs().max() <= 1
    y = model(x).argmax(1)
    loss = lambda xx: nn.functional.cross_entropy(model(xx), y).item()
    assert loss(x_adv) > loss(x)
    out = attack_through_layers(ae, {"1": (probe, t)}, x, x)          # no attack: the clean reconstruction D(μ(x))
    torch.testing.assert_close(out["1"], ae.decode(ae.encode(x)[0]), atol=1e-4, rtol=0)
    e = FactorINN(64, {"digit": 22, "fg": 11, "bg": 11}, n_blocks=2, hidden=16).eval()
    e(torch.randn(16, 64))
    same = swap_factor(ae, e, x, x, "fg")                               # swapping with itself changes nothing
    torch.testing.assert_close(same, ae.decode(ae.encode(x)[0]), atol=1e-4, rtol=0)
    sens = factor_sensitivity(ae, e, model, x, x.flip(0))
    assert set(sens) == {"reconstruction", "digit", "fg", "bg"} and all(v >= 0 for v in sens.values())


def test_fit_invariances_over_gives_each_key_its_own_state_and_skips_finished(tmp_path, monkeypatch):
    "Two models at one layer with one ckpt_dir: each t trains on its own features, and a rerun loads them."
    from invnb import analysis
    from invnb.classifier import ColorMNISTClassifier
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(32, 3, 28, 28, generator=g) * 2 - 1
    codes = {"mean": torch.randn(32, 8, generator=g), "logvar": torch.full((32, 8), -2.0)}
    probes = {"A": ColorMNISTClassifier(size=32, seed=1).probe("features.12"),
              ("B", "features.12"): ColorMNISTClassifier(size=32, seed=2).probe("features.12")}
    kw = dict(steps=3, batch_size=8, n_blocks=1, hidden=8, embed_dim=4, progress=False, device="cpu", resume=True)
    ts = fitting.fit_invariances_over(probes, imgs, codes, ckpt_dir=tmp_path, **kw)
    a, b = ts["A"].state_dict(), ts[("B", "features.12")].state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)                  # not one state shared by both
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "B__features.12"]
    def no_training(*args, **kwargs): raise AssertionError("a finished t was trained again")
    monkeypatch.setattr(fitting, "fit_invariances", no_training)
    again = fitting.fit_invariances_over(probes, imgs, codes, ckpt_dir=tmp_path, **kw)
    for key in ts:
        for k, v in ts[key].state_dict().items(): assert torch.equal(again[key].state_dict()[k], v)
    # a finished t is not reused for another call: other steps, other codes, another layer are refused
    with pytest.raises(ValueError, match="holds a t trained from other arguments, data or model weights.*delete"):
        fitting.fit_invariances_over(probes, imgs, codes, ckpt_dir=tmp_path, **{**kw, "steps": 4})
    with pytest.raises(ValueError, match="holds a t trained from other arguments, data or model weights"):
        fitting.fit_invariances_over(probes, imgs, {**codes, "mean": codes["mean"] + 1}, ckpt_dir=tmp_path, **kw)
    with pytest.raises(ValueError, match="holds a t trained from other arguments, data or model weights"):
        fitting.fit_invariances_over({"A": ColorMNISTClassifier(size=32, seed=1).probe("features.11")}, imgs, codes,
                                      ckpt_dir=tmp_path, **kw)
    fitting.fit_invariances_over(probes, imgs, codes, ckpt_dir=tmp_path, **{**kw, "progress": True})  # how, not what


def test_fit_invariances_over_takes_precomputed_features(tmp_path, monkeypatch):
    "Features given (here a memory-mapped table) train the same t as the probe's; the record holds their fingerprint."
    import json
    import numpy as np
    from invnb import analysis
    from invnb.utils import fingerprint
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 3)).eval()
    probe = Probe(model, "1")
    imgs = torch.rand(24, 3, 28, 28, generator=g) * 2 - 1
    codes = {"mean": torch.randn(24, 6, generator=g), "logvar": torch.full((24, 6), -2.0)}
    kw = dict(steps=3, batch_size=8, n_blocks=1, hidden=8, embed_dim=4, progress=False, device="cpu")
    ref = fitting.fit_invariances_over({"1": probe}, imgs, codes, ckpt_dir=tmp_path / "probe", **kw)["1"]
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=(24, 4, 14, 14))
    mm[:] = layer_features(probe, imgs, device="cpu").numpy(); mm.flush()
    table = torch.from_numpy(np.load(tmp_path / "f.npy", mmap_mode="r+"))
    got = fitting.fit_invariances_over({"1": probe}, None, codes, ckpt_dir=tmp_path / "given", features={"1": table}, **kw)["1"]
    for k, v in ref.state_dict().items(): assert torch.equal(got.state_dict()[k], v), k
    record = json.loads((tmp_path / "given" / "1" / "t.args.json").read_text())
    assert record["features"] == fingerprint(table) and "images" not in record
    old = json.loads((tmp_path / "probe" / "1" / "t.args.json").read_text())      # the images path: as before
    assert sorted(old) == ["codes", "images", "kwargs", "layer", "model", "n"] and old["images"] == fingerprint(imgs)
    def no_training(*args, **kwargs): raise AssertionError("a finished t was trained again")
    monkeypatch.setattr(fitting, "fit_invariances", no_training)
    again = fitting.fit_invariances_over({"1": probe}, None, codes, ckpt_dir=tmp_path / "given", features={"1": table}, **kw)
    assert torch.equal(again["1"].state_dict()["flow.blocks.0.norm.loc"], got.state_dict()["flow.blocks.0.norm.loc"])
    with pytest.raises(ValueError, match="holds a t trained from other arguments, data or model weights"):
        fitting.fit_invariances_over({"1": probe}, None, codes, ckpt_dir=tmp_path / "given",
                                      features={"1": table.flip(0).clone()}, **kw)
    with pytest.raises(ValueError, match="missing"):
        fitting.fit_invariances_over({"1": probe, "3": Probe(model, "3")}, None, codes, features={"1": table}, **kw)


def test_a_finished_or_interrupted_t_is_not_reused_for_another_model_or_other_data(tmp_path):
    "The record holds the probed model's weights, and it is checked before an interrupted t resumes too."
    from invnb import analysis
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(16, 3, 8, 8, generator=g) * 2 - 1
    codes = {"mean": torch.randn(16, 4, generator=g), "logvar": torch.full((16, 4), -2.0)}
    net = lambda seed: (torch.manual_seed(seed), nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()))[1]
    kw = dict(batch_size=8, n_blocks=1, hidden=8, embed_dim=4, progress=False, device="cpu", ckpt_every=1)
    fitting.fit_invariances_over({"a": Probe(net(1), "0")}, imgs, codes, ckpt_dir=tmp_path, steps=3, **kw)
    with pytest.raises(ValueError, match="other arguments, data or model weights"):    # same layer name, other weights
        fitting.fit_invariances_over({"a": Probe(net(2), "0")}, imgs, codes, ckpt_dir=tmp_path, steps=3, **kw)
    # interrupted after 2 of 4 steps: no t.safetensors, a train state; a rerun on other codes is refused, not resumed
    fitting.fit_invariances_over({"b": Probe(net(1), "0")}, imgs, codes, ckpt_dir=tmp_path, steps=4, stop_after=2, **kw)
    assert not (tmp_path / "b" / "t.safetensors").exists() and (tmp_path / "b" / "train").is_dir()
    with pytest.raises(ValueError, match="other arguments, data or model weights"):
        fitting.fit_invariances_over({"b": Probe(net(1), "0")}, imgs, {**codes, "mean": codes["mean"] * 2},
                                      ckpt_dir=tmp_path, steps=4, **kw)
    done = fitting.fit_invariances_over({"b": Probe(net(1), "0")}, imgs, codes, ckpt_dir=tmp_path, steps=4, **kw)
    assert (tmp_path / "b" / "t.safetensors").is_file() and set(done) == {"b"}


def test_warm_start_begins_at_the_unconditional_flow():
    "With cond_scale=0, a warm-started t gives base's NLL for any z (base: its constant condition); else it is near it."
    from invnb.fitting import warm_start
    from conftest import randomize_
    base = randomize_(InvarianceINN(6, 1, n_blocks=3, hidden=16, embed_dim=8), seed=1).eval()
    zbar, z = torch.randn(50, 6), torch.randn(50, 4, 3, 3) * 5
    want = base.nll(zbar, torch.zeros(50, 1))
    t = warm_start(InvarianceINN(6, (4, 3, 3), n_blocks=3, hidden=16, embed_dim=8, seed=3).eval(), base, cond_scale=0.0)
    torch.testing.assert_close(t.nll(zbar, z), want, rtol=1e-5, atol=1e-4)
    cold = InvarianceINN(6, (4, 3, 3), n_blocks=3, hidden=16, embed_dim=8, seed=3).eval()
    assert (cold.nll(zbar, z) - want).abs().mean() > 1.0               # without it, t starts elsewhere
    near = warm_start(InvarianceINN(6, (4, 3, 3), n_blocks=3, hidden=16, embed_dim=8, seed=3).eval(), base)
    assert (near.nll(zbar, z) - want).abs().mean() < 0.5 and not torch.equal(near.nll(zbar, z), want)
    with pytest.raises(ValueError, match="same flow"):
        warm_start(InvarianceINN(6, (4, 3, 3), n_blocks=2, hidden=16, embed_dim=8), base)


def test_variance_sums_use_float64_except_where_the_device_has_none():
    from invnb.analysis import _wide
    assert _wide(torch.zeros(2, 3, 4)).dtype == torch.float64
    meta_mps = torch.empty(2, 3, 4, device="meta")
    assert _wide(meta_mps).dtype == torch.float64
    # MPS has no float64: the rule keys on the device type (checked without an Apple GPU via a stand-in)
    class FakeMPS:
        device = torch.device("mps")
        def to(self, dtype): return dtype
    assert _wide(FakeMPS()) == torch.float32
