"""The inversion baselines against answers known in closed form: an invertible linear Φ is inverted exactly, a Φ that
discards a subspace leaves the starts free there and only there; the D&B decoder learns; bad input is named."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from invnb.checkpoint import load_model
from invnb.inversion import FeatureDecoder, fit_feature_decoder, invert_features, total_variation
from invnb.probe import Probe


def conv1x1(weight: torch.Tensor) -> Probe:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=False)
    with torch.no_grad(): conv.weight.copy_(weight[:, :, None, None])
    return Probe(nn.Sequential(conv).eval(), "0")


def test_an_invertible_linear_phi_is_inverted_to_x_from_every_start():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 6, 6, generator=g) * 1.6 - 0.8
    q = torch.linalg.qr(torch.randn(3, 3, generator=g))[0]
    found, loss = invert_features(conv1x1(q), x, n_starts=4, steps=300, lambda_alpha=0, lambda_tv=0,
                                  generator=torch.Generator().manual_seed(0))
    assert found.shape == (3, 4, 3, 6, 6) and loss.shape == (3, 4)
    assert (found - x[:, None]).abs().max() < 1e-3 and loss.max() < 1e-6


def test_where_phi_discards_a_subspace_the_starts_differ_there_only():
    "Φ keeps the projection of each pixel's colour onto a 2-d subspace: the starts agree on it and keep their own rest."
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 5, 5, generator=g) * 0.6 - 0.3          # inside the box with every start: no clamping
    basis = torch.linalg.qr(torch.randn(3, 3, generator=g))[0]       # orthonormal columns: kept, kept, discarded
    kept, free = basis[:, :2], basis[:, 2]
    found, _ = invert_features(conv1x1(kept.T), x, n_starts=5, steps=300, lambda_alpha=0, lambda_tv=0, init_scale=0.2,
                               generator=torch.Generator().manual_seed(0))
    along = lambda v, d: torch.einsum("bscij,c->bsij", v, d)
    on_kept = torch.stack([along(found, kept[:, k]) for k in range(2)], 2)      # (B, S, 2, H, W)
    target = torch.stack([torch.einsum("bcij,c->bij", x, kept[:, k]) for k in range(2)], 1)[:, None]
    assert (on_kept - target).abs().max() < 1e-3                      # every start recovers the kept part of x
    assert along(found, free).std(1).mean() > 0.05                    # the discarded direction is left to each start


def test_the_priors_and_the_feature_loss_pull_as_they_should():
    img = torch.zeros(1, 1, 4, 4); img[..., 2:] = 1.0
    assert total_variation(img, 2.0).item() == pytest.approx(3 / 9)   # of the 3×3 cells, those of column 1 cross the edge
    assert total_variation(torch.ones(2, 3, 4, 4)).abs().max() < 1e-5
    x = torch.rand(1, 3, 6, 6) * 2 - 1
    smooth, _ = invert_features(conv1x1(torch.eye(3)), x, n_starts=2, steps=200, lambda_alpha=0, lambda_tv=10.0)
    rough, _ = invert_features(conv1x1(torch.eye(3)), x, n_starts=2, steps=200, lambda_alpha=0, lambda_tv=0)
    assert total_variation(smooth[0]).mean() < 0.5 * total_variation(rough[0]).mean()
    with pytest.raises(ValueError, match="n_starts must be ≥ 1"): invert_features(conv1x1(torch.eye(3)), x, n_starts=0)
    with pytest.raises(ValueError, match=r"images \(B, C, H, W\)"): invert_features(conv1x1(torch.eye(3)), x[0])


def test_the_dosovitskiy_brox_decoder_lowers_its_held_out_loss_and_saves(tmp_path):
    "z = Φ(x) of a fixed random convolution on images with structure: the trained decoder beats an untrained one."
    g = torch.Generator().manual_seed(0)
    base = torch.rand(8, 3, 1, 1, generator=g) * 2 - 1            # 8 flat colours with a bar: images that z determines
    x = base.expand(8, 3, 28, 28).clone()
    x[:, :, 10:18] = -x[:, :, 10:18]
    x = x.repeat(40, 1, 1, 1) + 0.02 * torch.randn(320, 3, 28, 28, generator=g)
    x = x.clamp(-1, 1)
    phi = Probe(nn.Sequential(nn.Conv2d(3, 8, 7, 7), nn.ReLU()).eval(), "1")
    with torch.no_grad(): z = phi.phi(x)
    untrained = FeatureDecoder(z.shape[1:], size=28, width=8).eval()
    held = lambda d: F.mse_loss(d(z[280:]), x[280:]).item()
    dec, hist = fit_feature_decoder(z[:280], x[:280], FeatureDecoder(z.shape[1:], size=28, width=8), steps=200,
                                    progress=False, device="cpu")
    assert held(dec) < 0.3 * held(untrained) and len(hist["model"]) == 200
    again = load_model(dec.save(tmp_path / "dec.safetensors"), FeatureDecoder)
    assert torch.equal(again(z[:4]), dec(z[:4]))
    with pytest.raises(ValueError, match="280 feature rows for 279 images"):
        fit_feature_decoder(z[:280], x[:279], steps=1, progress=False)
