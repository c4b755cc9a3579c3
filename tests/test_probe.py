"Probe: Φ and Ψ recompose f for every preset (random weights), layer errors, determinism."
import pytest
import torch
from torch import nn

from invnb.probe import PRESETS, InputAdapter, Probe, list_layers, preset


@pytest.mark.parametrize("name,size", [("squeezenet1_1", 64), ("alexnet", 64), ("resnet50", 64),
                                       ("resnet101", 64), ("facenet", 96)])
def test_presets_recompose_f_at_every_layer(name, size):
    torch.manual_seed(0)
    model, adapter, layers = preset(name, size=size)
    x = torch.rand(2, 3, 40, 40) * 2 - 1                        # the adapter resizes
    with torch.no_grad():
        ref = model(adapter(x))
        for layer in layers:
            p = Probe(model, layer, adapter)
            z = p.phi(x)
            out = p.psi(z)
            expected = torch.softmax(ref, 1) if layer == "softmax" else ref
            # Φ runs in the channels-last layout (`run_channels_last`), f in the usual one: float rounding, which a
            # deep net with random weights carries to its outputs in proportion to their size (resnet101's reach 9e3)
            tol = 1e-4 * max(1.0, expected.abs().max().item())
            torch.testing.assert_close(out, expected, atol=tol, rtol=1e-4, msg=f"{name} {layer}")
            assert torch.equal(p.phi(x), z)                       # deterministic in eval mode
    assert set(layers) <= set(list_layers(model))


def test_alexnet_layer_names_of_the_paper():
    assert PRESETS["alexnet"]["names"] == {"conv5": "features.12", "fc6": "classifier.2", "fc7": "classifier.5",
                                           "fc8": "classifier.6"}


def test_unknown_layer_lists_close_matches():
    model, _, _ = preset("squeezenet1_1")
    with pytest.raises(ValueError, match=r"unknown layer 'features.1l'.*Closest: \[.*'features.11'"):
        Probe(model, "features.1l")
    with pytest.raises(ValueError, match="not part of this model"):
        Probe(model, nn.ReLU())


def test_shared_module_is_detected():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__(); self.lin = nn.Linear(4, 4); self.act = nn.Tanh()
        def forward(self, x): return self.act(self.lin(self.act(x.flatten(1))))
    with pytest.raises(ValueError, match="called 2 times"):
        Probe(Shared(), "act").psi(torch.zeros(1, 4))


def test_untraceable_model_keeps_phi_and_explains_psi():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__(); self.a = nn.Conv2d(3, 4, 1); self.b = nn.Linear(4, 2)
        def forward(self, x):
            h = self.a(x).mean((2, 3))
            return self.b(h) if h.sum() > 0 else -self.b(h)   # data-dependent control flow: not traceable
    p = Probe(Branchy(), "a")
    x = torch.rand(2, 3, 8, 8)
    assert p.phi(x).shape == (2, 4, 8, 8)
    with pytest.raises(RuntimeError, match="torch.fx could not trace it"):
        p.psi(p.phi(x))


def test_fx_node_names_work_too():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    p = Probe(model, "2")
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(p(x), model(x))


def test_psi_does_not_modify_z():
    model, adapter, _ = preset("squeezenet1_1", size=64)
    p = Probe(model, "features.0", adapter)                       # followed by ReLU(inplace=True)
    z = p.phi(torch.rand(1, 3, 28, 28) * 2 - 1).detach()
    z0 = z.clone()
    p.psi(z)
    assert torch.equal(z, z0)


def test_input_adapter():
    a = InputAdapter(8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.zeros(1, 3, 4, 4)
    assert a(x).shape == (1, 3, 8, 8) and torch.allclose(a(x), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown preset"):
        preset("vgg99")


def test_images_of_another_dtype_are_refused_with_the_fix():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    x = torch.zeros(1, 3, 8, 8)
    for dtype in (torch.float64, torch.float16):
        with pytest.raises(ValueError, match=rf"images must have the dtype of Sequential's parameters, torch.float32; "
                                             rf"got {dtype}. Convert with x.to\(torch.float32\)"):
            Probe(model, "1").phi(x.to(dtype))


def test_torchvision_node_names_are_listed_and_probed():
    "FX node names as torchvision's feature extraction writes them: listed with nodes=True, and Probe takes them."
    from torchvision.models import resnet18
    from torchvision.models.feature_extraction import get_graph_node_names
    model = resnet18(num_classes=10).eval()
    names = list_layers(model, nodes=True)
    assert "layer4.1.add" in names and "layer4.1.relu_1" in names and "layer4.1.add" not in list_layers(model)
    assert set(get_graph_node_names(model)[1]) - {"x"} <= set(names)          # the eval-mode list, input left out
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for layer in ("layer4.1.relu_1", "layer4.1.add"):
            p = Probe(model, layer)
            torch.testing.assert_close(p.psi(p.phi(x)), model(x), msg=layer)
        torch.testing.assert_close(Probe(model, "layer4.1.relu_1").phi(x), Probe(model, "layer4").phi(x))
    with pytest.raises(ValueError, match=r"Closest: \['layer4.1.add'"):
        Probe(model, "layer4.1.ad")


class _Viewing(nn.Module):
    "A model that calls .view on a convolution's output: it fails in the channels-last layout."
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x): return self.fc(self.conv(x).view(len(x), -1))


def test_phi_runs_channels_last_to_float_rounding_and_falls_back_for_a_model_that_cannot():
    from invnb.features import features_of_layers
    from invnb.probe import _USUAL_LAYOUT_ONLY, run_channels_last
    torch.manual_seed(0)
    model, adapter, _ = preset("squeezenet1_1", size=64)
    x = torch.rand(4, 3, 28, 28) * 2 - 1
    p = Probe(model, "features.11", adapter)
    with torch.no_grad():
        z = p.phi(x)
        _USUAL_LAYOUT_ONLY.add(model)
        usual = p.phi(x)
        _USUAL_LAYOUT_ONLY.discard(model)
    assert z.is_contiguous() and not torch.equal(z, usual)        # another layout: other roundings ...
    torch.testing.assert_close(z, usual, atol=1e-5 * usual.abs().max().item(), rtol=0)   # ... and only that
    v = _Viewing()
    with pytest.raises(RuntimeError, match="view"):                # what the layout does to such a model
        v(x[:, :, :8, :8].contiguous(memory_format=torch.channels_last))
    calls = []
    out = run_channels_last(v, x[:, :, :8, :8], again=lambda: calls.append(1))
    assert torch.equal(out, v(x[:, :, :8, :8])) and calls == [1] and v in _USUAL_LAYOUT_ONLY
    run_channels_last(v, x[:, :, :8, :8], again=lambda: calls.append(1))
    assert calls == [1]                                            # remembered: no second failed try
    f = features_of_layers(_Viewing(), "conv", x[:, :, :8, :8], device="cpu")["conv"]
    assert f.shape == (4, 4, 6, 6) and f.is_contiguous()
