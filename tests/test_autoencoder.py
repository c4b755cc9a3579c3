"Autoencoders: shapes, the per-pixel loss against hand computations, γ in closed form and learned, save/load, the 128 px model."
import math

import pytest
import torch

from invnb.autoencoder import (AELoss, BigAE, PatchDiscriminator, SmallAE, kl_standard_normal, optimal_log_gamma,
                               pixel_nll, reconstruction_metrics, train_autoencoder)


@pytest.mark.parametrize("size", [28, 32, 64])
def test_small_ae_shapes(size):
    ae = SmallAE(size=size, width=16)
    x = torch.rand(3, 3, size, size) * 2 - 1
    mean, logvar = ae.encode(x)
    assert mean.shape == logvar.shape == (3, 64)
    xr = ae.decode(mean)
    assert xr.shape == x.shape and xr.abs().max() <= 1


def test_sample_zbar_is_seeded_and_has_the_encoder_spread():
    ae = SmallAE(width=16)
    x = torch.rand(2, 3, 28, 28) * 2 - 1
    g = lambda s: torch.Generator().manual_seed(s)
    assert torch.equal(ae.sample_zbar(x, g(0)), ae.sample_zbar(x, g(0)))
    assert not torch.equal(ae.sample_zbar(x, g(0)), ae.sample_zbar(x, g(1)))
    draws = torch.stack([ae.sample_zbar(x[:1], g(s))[0] for s in range(400)]).detach()
    mean, logvar = ae.encode(x[:1])
    torch.testing.assert_close(draws.std(0), (0.5 * logvar[0]).exp().detach(), rtol=0.15, atol=0)


def test_loss_is_the_per_pixel_form_by_hand():
    ae = SmallAE(width=8)
    with torch.no_grad(): ae.log_gamma.fill_(-1.3)
    x = torch.rand(2, 3, 28, 28) * 2 - 1
    out = AELoss("l2", gamma="learned")(ae, x, generator=torch.Generator().manual_seed(4))
    xr, mean, logvar = ae(x, torch.Generator().manual_seed(4))
    gamma, n = math.exp(-1.3), 3 * 28 * 28
    by_hand = []
    for i in range(2):
        d = ((x[i] - xr[i]) ** 2).sum()
        kl = 0.5 * sum((mean[i, k] ** 2 + logvar[i, k].exp() - 1 - logvar[i, k]) for k in range(64))
        by_hand.append(d / gamma + n * math.log(gamma) + kl)
    torch.testing.assert_close(out["ae"], torch.stack(by_hand).mean(), rtol=1e-5, atol=1e-3)


def test_log_gamma_counts_once_per_pixel():
    "The optimum of Σ d/γ + N log γ is γ = mean(d); with log γ once per image it would be Σ d."
    d = torch.rand(2, 3, 8, 8)
    lg = torch.tensor(float(d.flatten(1).sum(1).mean() / d[0].numel())).log().requires_grad_(True)
    pixel_nll(d, lg).mean().backward()
    assert abs(lg.grad.item()) < 1e-3
    lg2 = torch.tensor(float(d.flatten(1).sum(1).mean())).log().requires_grad_(True)
    pixel_nll(d, lg2).mean().backward()
    assert lg2.grad.item() > 100


def test_kl_closed_form():
    mean, logvar = torch.tensor([[0.3, -1.0]]), torch.tensor([[0.5, -0.2]])
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(2), torch.ones(2))
    torch.testing.assert_close(kl_standard_normal(mean, logvar), torch.distributions.kl_divergence(q, p).sum(1))


def test_small_ae_learns_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(0)
    # flat-colour images: an easy target the AE must reach quickly
    imgs = torch.rand(256, 3, 1, 1, generator=g).mul(2).sub(1).expand(-1, -1, 28, 28).contiguous()
    ae = SmallAE(width=16)
    before = reconstruction_metrics(ae, imgs)["mse"]
    h = train_autoencoder(ae, imgs, steps=150, batch_size=32, lr=2e-3, progress=False, device="cpu")
    after = reconstruction_metrics(ae, imgs)["mse"]
    assert after < before / 5 and h["model"][-1] < h["model"][0]
    ae2 = SmallAE.load(ae.save(tmp_path / "ae.safetensors"))
    assert torch.equal(ae2.decode(ae2.encode(imgs[:4])[0]), ae.decode(ae.encode(imgs[:4])[0]))


def test_tiny_128px_style_ae_trains_with_lpips_and_discriminator():
    ae = BigAE(size=32, zdim=16, layers=(1, 1, 1, 1), width_per_group=16, ch=4, n_classes=10, embed_dim=8, attention_res=16)
    disc = PatchDiscriminator(width=8, n_down=2)
    loss = AELoss("l1+lpips", lpips_pretrained=False, disc=disc, disc_start=2)
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(16, 3, 32, 32, generator=g) * 2 - 1
    w0 = [p.detach().clone() for p in disc.parameters()]
    h = train_autoencoder(ae, imgs, steps=4, batch_size=4, lr=1e-4, loss=loss, progress=False, device="cpu")
    assert set(h) == {"ae", "disc"} and all(math.isfinite(v) for v in h["ae"] + h["disc"])
    assert h["disc"][:2] == [0.0, 0.0] and h["disc"][2] > 0        # switched on at disc_start
    assert any(not torch.equal(a, b) for a, b in zip(w0, disc.parameters()))
    assert "lpips" not in " ".join(ae.state_dict())                  # LPIPS is not saved with the model


def test_attention_appears_at_its_resolution():
    ae = BigAE(size=32, zdim=8, layers=(1, 1, 1, 1), width_per_group=16, ch=4, n_classes=4, embed_dim=4, attention_res=16)
    assert ae.decoder.attention is not None
    assert ae.decode(torch.zeros(2, 8)).shape == (2, 3, 32, 32)


def test_sample_gaussian_is_the_one_reparameterisation():
    from invnb.autoencoder import sample_gaussian
    g = lambda: torch.Generator().manual_seed(3)
    mean, logvar = torch.randn(5, 4), torch.randn(5, 4)
    # bit-identical to the formula the autoencoders used before (eps drawn on the CPU from the generator)
    assert torch.equal(sample_gaussian(mean, logvar, g()), mean + (0.5 * logvar).exp() * torch.randn(5, 4, generator=g()))
    ae = SmallAE(width=8)
    x = torch.rand(2, 3, 28, 28) * 2 - 1
    m, lv = ae.encode(x)
    assert torch.equal(ae.sample_zbar(x, g()), sample_gaussian(m, lv, g()))
    assert torch.equal(ae(x, g())[0], ae.decode(sample_gaussian(m, lv, g())))
    mean.requires_grad_(True)
    sample_gaussian(mean, logvar, g()).sum().backward()
    assert torch.equal(mean.grad, torch.ones_like(mean))        # reparameterised: differentiable in the mean


def _flat_colours(n=64, seed=0):
    "Flat-colour images in [-1, 1]: an easy target a small AE reaches in a few dozen steps."
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 1, 1, generator=g).mul(2).sub(1).expand(-1, -1, 28, 28).contiguous()


def test_optimal_gamma_is_the_batch_mean_distance_and_the_minimum():
    ae = SmallAE(width=8).train()
    x = torch.rand(4, 3, 28, 28) * 2 - 1
    out = AELoss("l2")(ae, x, generator=torch.Generator().manual_seed(1))
    xr = ae(x, torch.Generator().manual_seed(1))[0]
    d = (x - xr).pow(2)
    n = d[0].numel()
    torch.testing.assert_close(out["gamma"], d.mean().detach())                 # γ* = batch MSE ([-1, 1] scale)
    torch.testing.assert_close(out["rec"], n * (1 + d.mean().log()).detach())   # = N log MSE + N
    for other in (0.5, 0.9, 1.1, 2.0):                                        # and it is the minimum over γ
        assert pixel_nll(d, (d.mean() * other).log()).mean() > out["rec"]
    torch.testing.assert_close(ae.log_gamma.detach(), d.mean().log().detach())  # step 0: the batch value
    assert AELoss("l2").gamma == "optimal"                                   # the default
    with pytest.raises(ValueError, match="gamma must be"): AELoss("l2", gamma="fixed")


def test_optimal_gamma_gives_the_gradient_of_the_learned_loss_at_its_optimum():
    "The σ-VAE form is A.1's loss minimised over γ: its E/D gradient is A.1's gradient with γ = γ*."
    ae = SmallAE(width=8)
    x = torch.rand(4, 3, 28, 28) * 2 - 1
    g = lambda: torch.Generator().manual_seed(2)
    grads = {}
    for mode in ("optimal", "learned"):
        ae.zero_grad()
        if mode == "learned":
            with torch.no_grad(): ae.log_gamma.copy_(optimal_log_gamma((x - ae(x, g())[0]).pow(2)))
        AELoss("l2", gamma=mode)(ae.eval(), x, generator=g())["ae"].backward()
        grads[mode] = [p.grad.clone() for p in ae.decoder.parameters()] + [p.grad.clone() for p in ae.encoder.parameters()]
    assert ae.log_gamma.grad is not None and abs(ae.log_gamma.grad.item()) < 1e-2   # learned: at its optimum
    for a, b in zip(grads["optimal"], grads["learned"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_closed_form_gamma_matches_the_achieved_mse_after_training():
    imgs = _flat_colours()
    ae = SmallAE(width=8)
    h = train_autoencoder(ae, imgs, steps=60, batch_size=64, lr=3e-3, progress=False, device="cpu")
    assert ae.log_gamma.grad is None                                          # not trained: written by the loss
    m = reconstruction_metrics(ae, imgs)
    assert set(m) == {"mse", "psnr", "mse_sampled", "gamma"}
    assert m["gamma"] == pytest.approx(ae.log_gamma.exp().item() / 4)        # reported on the [0, 1] scale
    assert m["gamma"] == pytest.approx(m["mse_sampled"], rel=0.25)            # γ tracks the error the loss sees
    assert m["mse"] <= m["mse_sampled"]
    assert m["gamma"] < ((imgs + 1) / 2).var().item() and h["model"][-1] < h["model"][0]   # below a constant guess


def test_eval_mode_does_not_move_log_gamma():
    ae = SmallAE(width=8).eval()
    with torch.no_grad(): ae.log_gamma.fill_(-2.0)
    AELoss("l2")(ae, torch.rand(2, 3, 28, 28) * 2 - 1, step=0)
    assert ae.log_gamma.item() == -2.0


def test_learned_gamma_path_still_trains():
    imgs = _flat_colours()
    ae = SmallAE(width=8)
    h = train_autoencoder(ae, imgs, steps=40, batch_size=32, lr=1e-2, loss=AELoss("l2", gamma="learned"),
                          progress=False, device="cpu")
    assert ae.log_gamma.grad is None and ae.log_gamma.item() < -0.2            # moved down by gradient steps
    assert all(math.isfinite(v) for v in h["model"]) and h["model"][-1] < h["model"][0]
    assert reconstruction_metrics(ae, imgs)["gamma"] == pytest.approx(ae.log_gamma.exp().item() / 4)


def test_running_gamma_resumes_exactly(tmp_path):
    imgs = _flat_colours(32)
    kw = dict(batch_size=16, lr=3e-3, progress=False, device="cpu", ckpt_dir=tmp_path / "a", ckpt_every=0)
    a = SmallAE(width=8)
    train_autoencoder(a, imgs, steps=12, **kw)
    b = SmallAE(width=8)
    train_autoencoder(b, imgs, steps=12, stop_after=5, **{**kw, "ckpt_dir": tmp_path / "b"})
    b = SmallAE(width=8)
    train_autoencoder(b, imgs, steps=12, resume=True, **{**kw, "ckpt_dir": tmp_path / "b"})
    assert a.log_gamma.item() == b.log_gamma.item() != 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_inputs_of_another_dtype_are_named_not_a_torch_error(dtype):
    small = SmallAE(size=28, zdim=8, width=8)
    big = BigAE(size=32, zdim=8, layers=(1, 1, 1, 1), width_per_group=16, ch=4, n_classes=4, embed_dim=4, attention_res=16)
    for ae in (small, big):
        name = type(ae).__name__
        x = torch.zeros(2, 3, ae.size, ae.size, dtype=dtype)
        with pytest.raises(ValueError, match=rf"images must have the dtype of {name}'s parameters, torch.float32; got {dtype}\. Convert with x\.to\(torch\.float32\)"):
            ae.encode(x)
        with pytest.raises(ValueError, match=rf"z̄ must have the dtype of {name}'s parameters, torch.float32; got {dtype}"):
            ae.decode(torch.zeros(2, 8, dtype=dtype))
    with pytest.raises(ValueError, match=rf"images must have the dtype of SmallAE's parameters"):
        train_autoencoder(small, torch.zeros(4, 3, 28, 28, dtype=dtype), steps=1, progress=False, device="cpu")
    assert small.decode(small.encode(torch.zeros(2, 3, 28, 28))[0]).dtype == torch.float32   # float32 still works
