"""FID and KID (`invnb.quality`, through torchmetrics) against answers known in advance: a set against itself gives
0, pixels shuffled within each image are far above two halves of the same data; bad input is named."""
import warnings

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from invnb.data import ColorMNIST, load_mnist
from invnb.probe import IMAGENET, Adapted, InputAdapter
from invnb.quality import FeatureNet, sample_quality
from invnb.baselines import fid_calibration, shuffle_pixels


@pytest.fixture(scope="module")
def digits():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); xs, ys = load_mnist()["train"]
    pick = torch.randperm(len(ys), generator=torch.Generator().manual_seed(0))[:400]
    return ColorMNIST(torch.as_tensor(xs)[pick], torch.as_tensor(ys)[pick], seed=0).images()


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return FeatureNet(Adapted(resnet18().eval(), InputAdapter(64, **IMAGENET)))


def test_fid_of_a_set_with_itself_is_zero_and_shuffled_pixels_are_far(digits, net):
    perm = torch.randperm(28 * 28, generator=torch.Generator().manual_seed(1))
    shuffled = digits.flatten(2)[:, :, perm].view_as(digits)
    same, half, noise = (sample_quality(digits[:200], b, net) for b in (digits[:200], digits[200:], shuffled[:200]))
    assert abs(same["fid"]) < 1e-3 and same["images"] == 200
    assert noise["fid"] > 2 * half["fid"] > 0 and noise["kid"] > 10 * half["kid"]      # measured: 25.6 / 9.9; 2.5 / 0.10
    assert noise["kid"] - 3 * noise["kid_se"] > half["kid"] + 3 * half["kid_se"]        # beyond both SEs


def test_bad_input_is_named(digits, net, tmp_path):
    with pytest.raises(ValueError, match="the same number of the same shape"): sample_quality(digits[:10], digits[:9], net)
    with pytest.raises(ValueError, match="at least 4 images"): sample_quality(digits[:3], digits[:3], net)
    with pytest.raises(ValueError, match="one of net="): sample_quality(digits[:8], digits[:8])
    with pytest.raises(FileNotFoundError, match="no Inception weights at .*pt_inception"):
        sample_quality(digits[:8], digits[:8], inception=tmp_path / "none.pth")
    with pytest.raises(ValueError, match="no nn.Linear layer"): FeatureNet(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_shuffled_pixels_keep_each_images_colours_and_lose_its_layout(digits):
    x = digits[:8]
    s = shuffle_pixels(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.flatten(2).sort(-1).values, x.flatten(2).sort(-1).values)    # the same pixels per image
    assert (s != x).flatten(1).float().mean(1).min() > 0.05                                   # in other places
    assert not torch.equal(s[0], shuffle_pixels(x, torch.Generator().manual_seed(1))[0])       # the seed decides


def test_the_fid_calibration_flags_a_network_blind_to_structure(digits, net):
    # a network that sees only each image's mean colour cannot tell shuffled pixels from the images themselves
    torch.manual_seed(0)
    blind = FeatureNet(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)))
    good = fid_calibration(digits[:100], digits[100:300], {"net": net}, seed=0)
    bad = fid_calibration(digits[:100], digits[100:300], {"net": blind}, seed=0)
    assert good["discriminates"] and good["shuffled pixels"]["fid"] > 2 * good["training images"]["fid"]
    assert not bad["discriminates"]
    assert bad["shuffled pixels"]["fid"] == pytest.approx(bad["training images"]["fid"], rel=1e-3, abs=1e-4)
