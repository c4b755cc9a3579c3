"The two INNs: inverse, NLL as a change of variables, conditioning, pair loss against the joint Gaussian, learning."
import math

import pytest
import torch
from conftest import randomize_

from invnb.demo import TOY_SIGMA, toy_conditional
from invnb.inn import Embedder, FactorINN, InvarianceINN

FACTORS = {"digit": 3, "fg": 2, "bg": 2}


def make_t(**kw):
    return InvarianceINN(in_dim=8, cond_shape=(4, 3, 3), n_blocks=6, hidden=32, depth=2, embed_dim=16, **kw)


def make_e(**kw):
    return FactorINN(in_dim=10, factors=FACTORS, n_blocks=6, hidden=32, depth=2, **kw)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_t_and_e_invert_random_weights(dtype, tol):
    g = torch.Generator().manual_seed(0)
    t, e = randomize_(make_t()).to(dtype), randomize_(make_e()).to(dtype)
    zbar = ((torch.rand(32, 8, generator=g) * 2 - 1) * 10).to(dtype)
    z = torch.randn(32, 4, 3, 3, generator=g).to(dtype)
    v, _ = t(zbar, z)
    assert (t.inverse(v, z) - zbar).abs().max() < tol
    x = ((torch.rand(32, 10, generator=g) * 2 - 1) * 10).to(dtype)
    codes, _ = e(x)
    assert (e.inverse(codes) - x).abs().max() < tol
    assert (e.inverse(e.merge(e.split(codes))) - x).abs().max() < tol


def test_invertible_after_training_steps():
    t = make_t()
    opt = torch.optim.Adam(t.parameters(), 3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        z = torch.randn(64, 4, 3, 3, generator=g)
        zbar = 3 * z.mean((2, 3)).repeat(1, 2) + torch.randn(64, 8, generator=g)
        opt.zero_grad(); t.nll(zbar, z).mean().backward(); opt.step()
    assert sum(p.grad.abs().sum() for p in t.parameters()) > 0
    zbar = (torch.rand(16, 8, generator=g) * 2 - 1) * 10
    z = torch.randn(16, 4, 3, 3, generator=g)
    assert (t.inverse(t(zbar, z)[0], z) - zbar).abs().max() < 1e-4


def test_nll_is_change_of_variables_with_half_log_2pi():
    t = randomize_(make_t()).double()
    zbar, z = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 4, 3, 3, dtype=torch.float64)
    nll = t.nll(zbar, z)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda x: t(x[None], z[i:i + 1])[0][0], zbar[i])
        v = t(zbar[i:i + 1], z[i:i + 1])[0][0]
        expected = 0.5 * v.pow(2).sum() + 0.5 * 8 * math.log(2 * math.pi) - torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(nll[i], expected, atol=1e-8, rtol=0)
    torch.testing.assert_close(t.bits_per_dim(zbar, z), nll / (8 * math.log(2)))


def test_conditioning_matters():
    t = make_t()
    zbar = torch.randn(1, 8).repeat(2, 1)
    z = torch.randn(2, 4, 3, 3)
    v, logdet = t(zbar, z)
    assert (v[0] - v[1]).abs().max() > 1e-4


def test_sample_shape_seed_temperature():
    t = make_t()
    z = torch.randn(3, 4, 3, 3)
    s1 = t.sample(z, n=5, generator=torch.Generator().manual_seed(0))
    s2 = t.sample(z, n=5, generator=torch.Generator().manual_seed(0))
    s3 = t.sample(z, n=5, generator=torch.Generator().manual_seed(1))
    assert s1.shape == (3, 5, 8) and torch.equal(s1, s2) and not torch.equal(s1, s3)
    cold = t.sample(z, n=5, generator=torch.Generator().manual_seed(0), temperature=0.0)
    assert torch.allclose(cold, cold[:, :1].expand_as(cold))  # T=0: every draw is t^-1(0|z)
    torch.testing.assert_close(cold[:, 0], t.inverse(torch.zeros(3, 8), z).detach(), atol=1e-5, rtol=0)


def test_embedder_accepts_vectors_maps_and_flattened_maps():
    for shape in [(7,), (4, 1, 1), (4, 3, 3), (2, 13, 13), (3, 64, 64), (5, 2, 7)]:
        emb = Embedder(shape, embed_dim=12)
        z = torch.randn(2, *shape)
        torch.testing.assert_close(emb(z), emb(z.flatten(1)))
        assert emb(z).shape == (2, 12)
    with pytest.raises(ValueError, match=r"\(B, 4, 3, 3\) or the flattened \(B, 36\)"):
        Embedder((4, 3, 3))(torch.randn(2, 4, 4, 4))


def test_t_input_errors_are_clear():
    t = make_t()
    with pytest.raises(ValueError, match="same batch size"):
        t(torch.randn(4, 8), torch.randn(3, 4, 3, 3))
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        t(torch.randn(4, 9), torch.randn(4, 4, 3, 3))


def reference_pair_loss(e, za, zb, shared_idx):
    "Eq. 12 from the joint Gaussian of (e^a, e^b): covariance [[I, S], [S, I]], S = rho * diag(mask), plus log-dets by autograd."
    D, rho = za.shape[1], e.rho
    total = []
    for i in range(za.shape[0]):
        ea, eb = e(za[i:i + 1])[0][0], e(zb[i:i + 1])[0][0]
        mask = e.masks[shared_idx[i]].to(za.dtype)
        cov = torch.eye(2 * D, dtype=za.dtype)
        cov[:D, D:] = cov[D:, :D] = torch.diag(rho * mask)
        nlp = -torch.distributions.MultivariateNormal(torch.zeros(2 * D, dtype=za.dtype), cov).log_prob(torch.cat([ea, eb]))
        lda = torch.linalg.slogdet(torch.autograd.functional.jacobian(lambda x: e(x[None])[0][0], za[i]))[1]
        ldb = torch.linalg.slogdet(torch.autograd.functional.jacobian(lambda x: e(x[None])[0][0], zb[i]))[1]
        # the constant that pair_loss drops: D log 2pi + 1/2 * |I_i| * log(1 - rho^2)
        const = D * math.log(2 * math.pi) + 0.5 * mask.sum() * math.log(1 - rho ** 2)
        total.append(nlp - lda - ldb - const)
    return torch.stack(total).mean()


@pytest.mark.parametrize("factor", ["fg", 1, 0, "mixed"])
@pytest.mark.parametrize("rho", [0.9, 0.975])
def test_pair_loss_matches_joint_gaussian(factor, rho):
    e = randomize_(make_e(rho=rho)).double()
    g = torch.Generator().manual_seed(3)
    za, zb = torch.randn(5, 10, generator=g, dtype=torch.float64), torch.randn(5, 10, generator=g, dtype=torch.float64)
    if factor == "mixed":
        factor = torch.tensor([1, 2, 3, 0, 2])
        idx = factor.tolist()
    else:
        idx = [e.factor_index(factor)] * 5
    torch.testing.assert_close(e.pair_loss(za, zb, factor), reference_pair_loss(e, za, zb, idx), atol=1e-8, rtol=0)


def test_factor_layout_and_errors():
    e = make_e()
    assert e.names == ["residual", "digit", "fg", "bg"]
    parts = e.split(torch.arange(10.)[None])
    assert parts["residual"].tolist() == [[0., 1, 2]] and parts["digit"].tolist() == [[3., 4, 5]]
    assert parts["bg"].tolist() == [[8., 9]]
    with pytest.raises(ValueError, match="unknown factor 'colour'"):
        e.pair_loss(torch.randn(2, 10), torch.randn(2, 10), "colour")
    with pytest.raises(ValueError, match="0..3"):
        e.pair_loss(torch.randn(2, 10), torch.randn(2, 10), torch.tensor([1, 4]))
    with pytest.raises(ValueError, match="one index per pair"):
        e.pair_loss(torch.randn(2, 10), torch.randn(2, 10), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="add up to 12"):
        FactorINN(10, {"a": 6, "b": 6})
    with pytest.raises(ValueError, match="reserved"):
        FactorINN(10, {"residual": 2})


# --- learning ------------------------------------------------------------------------------------

SIGMA = torch.tensor(TOY_SIGMA)


def test_t_learns_a_conditional_density_to_its_entropy():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    t = InvarianceINN(in_dim=4, cond_shape=2, n_blocks=6, hidden=64, depth=1, embed_dim=32)
    opt = torch.optim.Adam(t.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 2500)
    for _ in range(2500):
        zbar, z = toy_conditional(256, g)
        opt.zero_grad(); t.nll(zbar, z).mean().backward(); opt.step(); sched.step()
    zbar, z = toy_conditional(20000, torch.Generator().manual_seed(99))
    with torch.no_grad():
        nll = t.nll(zbar, z).mean().item()
    entropy = (0.5 * math.log(2 * math.pi * math.e) + SIGMA.log()).sum().item()  # h(zbar | z), Gaussian noise
    assert abs(nll - entropy) < 0.1, (nll, entropy)


def test_e_puts_shared_information_into_the_named_factor():
    g = torch.Generator().manual_seed(0)
    mix = torch.linalg.qr(torch.randn(6, 6, generator=g))[0] * torch.tensor([1., 2, 0.5, 1.5, 1, 3])

    def pairs(n):
        s = torch.randn(n, 2, generator=g)  # shared by both images of a pair
        a = torch.cat([s + 0.05 * torch.randn(n, 2, generator=g), torch.randn(n, 4, generator=g)], 1)
        b = torch.cat([s + 0.05 * torch.randn(n, 2, generator=g), torch.randn(n, 4, generator=g)], 1)
        return a @ mix.T, b @ mix.T, s

    e = FactorINN(in_dim=6, factors={"shared": 2}, n_blocks=4, hidden=32, depth=1)
    opt = torch.optim.Adam(e.parameters(), 2e-3)
    for _ in range(1500):
        za, zb, _ = pairs(256)
        opt.zero_grad(); e.pair_loss(za, zb, "shared").backward(); opt.step()
    za, _, s = pairs(5000)
    with torch.no_grad():
        parts = e.split(e(za)[0])

    def r2(x, y):  # share of y's variance a linear regression on x explains
        x = torch.cat([x, torch.ones(len(x), 1)], 1)
        resid = y - x @ torch.linalg.lstsq(x, y).solution
        return 1 - resid.var(0).sum() / y.var(0).sum()

    assert r2(parts["shared"], s) > 0.9
    assert r2(parts["residual"], s) < 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float32 on CPU takes the packed path
def test_sample_shares_each_condition_exactly(dtype):
    "sample() passes each z's condition once; it must equal inverting the same v with z repeated."
    t = randomize_(make_t()).to(dtype)
    z = torch.randn(3, 4, 3, 3, dtype=dtype)
    s = t.sample(z, n=4, generator=torch.Generator().manual_seed(5))
    v = torch.randn(12, 8, generator=torch.Generator().manual_seed(5), dtype=dtype)
    with torch.enable_grad():
        ref = t.inverse(v, z.repeat_interleave(4, 0)).detach()
    torch.testing.assert_close(s.reshape(12, 8), ref, atol=1e-4 if dtype == torch.float32 else 1e-10, rtol=0)


def test_empty_batch_does_not_poison_a_fresh_t_or_e():
    t, e = make_t(), make_e()
    zbar, z = torch.randn(16, 8), torch.randn(16, 4, 3, 3)
    with pytest.raises(ValueError, match="empty batch"):
        t(zbar[:0], z[:0])
    with pytest.raises(ValueError, match="empty batch"):
        t.inverse(zbar[:0], z[:0])
    with pytest.raises(ValueError, match="empty batch"):
        t.sample(z[:0], 4)
    with pytest.raises(ValueError, match="empty batch"):
        t.inverse_grid(zbar[:0], z)
    with pytest.raises(ValueError, match="empty batch"):
        e(torch.randn(0, 10))
    v, logdet = t(zbar, z)
    codes, ld = e(torch.randn(16, 10))
    assert all(torch.isfinite(a).all() for a in (v, logdet, codes, ld))
    assert torch.isfinite(t.sample(z[:2], 3, torch.Generator().manual_seed(0))).all()


def test_pair_loss_refuses_a_bool_factor_and_an_empty_batch():
    e = randomize_(make_e())
    za, zb = torch.randn(4, 10), torch.randn(4, 10)
    for bad in (True, False, torch.tensor([True, False, True, True])):
        with pytest.raises(ValueError, match="not a bool"):
            e.pair_loss(za, zb, bad)
    with pytest.raises(ValueError, match="empty batch"):
        e.pair_loss(za[:0], zb[:0], "digit")
    with pytest.raises(ValueError, match="empty batch"):
        e.pair_loss(za[:0], zb[:0], torch.zeros(0, dtype=torch.long))
    assert torch.isfinite(e.pair_loss(za, zb, 1))


def test_inverse_grid_is_an_ordinary_method():
    assert "inverse_grid" in InvarianceINN.__dict__
    assert InvarianceINN.inverse_grid.__qualname__ == "InvarianceINN.inverse_grid"


def test_constructors_and_main_methods_document_every_parameter():
    from fastcore.docments import docments
    for fn in (InvarianceINN.__init__, InvarianceINN.forward, InvarianceINN.inverse, InvarianceINN.nll,
               InvarianceINN.sample, InvarianceINN.inverse_grid, FactorINN.__init__, FactorINN.pair_loss,
               FactorINN.factor_index, FactorINN.split, FactorINN.merge):
        docs = docments(fn)
        missing = [k for k, v in docs.items() if k not in ("self", "return") and not v]
        assert not missing, (fn.__qualname__, missing)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_inputs_of_another_dtype_are_named_not_a_torch_error(dtype):
    t, e = make_t(), make_e()
    zbar, z, codes = torch.randn(4, 8), torch.randn(4, 4, 3, 3), torch.randn(4, 10)
    want = rf"{{}} must have the dtype of {{}}'s parameters, torch.float32; got {dtype}\. Convert with x\.to\(torch\.float32\)"
    for call, name in [(lambda: t(zbar.to(dtype), z), "zbar"), (lambda: t(zbar, z.to(dtype)), "z"),
                       (lambda: t.inverse(zbar.to(dtype), z), "v"), (lambda: t.sample(z.to(dtype), n=2), "z"),
                       (lambda: t.inverse_grid(zbar.to(dtype), z), "v")]:
        with pytest.raises(ValueError, match=want.format(name, "InvarianceINN")):
            call()
    for call, name in [(lambda: e(codes.to(dtype)), "zbar"), (lambda: e.inverse(codes.to(dtype)), "codes"),
                       (lambda: e.pair_loss(codes.to(dtype), codes.to(dtype), "fg"), "zbar")]:
        with pytest.raises(ValueError, match=want.format(name, "FactorINN")):
            call()
