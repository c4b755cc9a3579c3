"The identifiable share Var_x(E_v e_i) / Var e_i: closed forms, the rotation example, and null calibrations with trained models."
import math

import pytest
import torch

from invnb.analysis import eq20, identifiable_share
from invnb.fitting import fit_invariances, layer_features
from invnb.train import encode_dataset

SIGMA = 0.5


class AnalyticT:
    "Exact t⁻¹ for x ~ N(0, I_8), z̄ = x + σε, z = x[:3]."
    dim = 8
    def inverse(self, v, z):
        out = v * math.sqrt(1 + SIGMA ** 2)
        out[:, :3] = z + SIGMA * v[:, :3]
        return out
    def sample(self, z, n, generator=None):
        v = torch.randn(len(z) * n, self.dim, generator=generator)
        return self.inverse(v, z.repeat_interleave(n, 0)).reshape(len(z), n, self.dim)


class RotatingT:
    "t⁻¹(v|z) = R(z) v: p(z̄|z) = N(0, I) for every z, so z determines nothing."
    dim = 2
    def sample(self, z, n, generator=None):
        v = torch.randn(len(z) * n, 2, generator=generator)
        a = z.repeat_interleave(n, 0)[:, 0]
        out = torch.stack([a.cos() * v[:, 0] - a.sin() * v[:, 1], a.sin() * v[:, 0] + a.cos() * v[:, 1]], 1)
        return out.reshape(len(z), n, 2)
    def inverse(self, v, z):
        a = z[:, 0]
        return torch.stack([a.cos() * v[:, 0] - a.sin() * v[:, 1], a.sin() * v[:, 0] + a.cos() * v[:, 1]], 1)


class Slices:
    def __init__(self, slices): self.slices = slices
    def __call__(self, zbar): return zbar, None


def test_closed_form_of_the_linear_gaussian_case():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 3, generator=g)
    r = identifiable_share(AnalyticT(), Slices({"kept": slice(0, 3), "dropped": slice(3, 8)}), z, n_outer=300,
                           n_inner=100, generator=g)
    assert abs(r["kept"].value - 1 / (1 + SIGMA ** 2)) < 3 * r["kept"].se + 0.005
    assert abs(r["dropped"].value) < 3 * r["dropped"].se + 0.002 and r["dropped"].se < 0.01


def test_rotation_gives_no_identifiable_share_but_a_large_eq20():
    g = torch.Generator().manual_seed(0)
    z = torch.rand(1000, 1, generator=g) * 2 * math.pi
    e = Slices({"both": slice(0, 2)})
    assert abs(identifiable_share(RotatingT(), e, z, generator=g)["both"].value) < 0.02
    assert eq20(RotatingT(), e, z, generator=g)["both"].value > 0.8


def test_the_standard_error_covers_the_spread_over_repeats():
    z = torch.randn(3000, 3, generator=torch.Generator().manual_seed(1))
    e = Slices({"kept": slice(0, 3)})
    runs = [identifiable_share(AnalyticT(), e, z, n_outer=100, n_inner=50, generator=torch.Generator().manual_seed(s))["kept"]
            for s in range(12)]
    spread = torch.tensor([r.value for r in runs]).std().item()
    se = sum(r.se for r in runs) / len(runs)
    assert 0.5 * spread < se < 2 * spread


@pytest.fixture(scope="module")
def trained(colormnist_study):
    "Codes and features (train / validation) of the small trained study's autoencoder and an untrained SqueezeNet."
    study, ds = colormnist_study
    x = ds.images()
    xt, xv = x[:1200], x[1200:]
    codes = encode_dataset(study.ae.encode, xt, device="cpu")
    probe = study.probe("features.8")
    return study, codes, layer_features(probe, xt), layer_features(probe, xv)


@pytest.mark.parametrize("condition", ["constant", "shuffled"])
def test_a_t_that_cannot_know_the_image_gives_a_share_of_about_zero(trained, condition):
    "Null calibrations with trained models: t conditioned on a constant, or on z shuffled across images."
    study, codes, ft, fv = trained
    if condition == "constant":
        ft, fv = torch.zeros(len(ft), 1), torch.zeros(len(fv), 1)
    else:
        ft = ft[torch.randperm(len(ft), generator=torch.Generator().manual_seed(0))]
    t, _ = fit_invariances(codes, ft, steps=200, batch_size=128, n_blocks=2, hidden=64, embed_dim=16, device="cpu",
                           progress=False, seed=0)
    r = identifiable_share(t, study.e, fv, n_outer=200, n_inner=50, generator=torch.Generator().manual_seed(0))
    assert all(abs(v.value) <= 0.02 for v in r.values()), r
