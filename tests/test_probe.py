"Probe: Φ and Ψ recompose f for every preset (random weights), layer errors, determinism."
import pytest
import torch
from torch import nn

from invnb.probe import PRESETS, ColorMNISTClassifier, InputAdapter, Probe, list_layers, preset


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
            torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4, msg=f"{name} {layer}")
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


def test_colormnist_classifier_shapes_and_save(tmp_path):
    clf = ColorMNISTClassifier()
    x = torch.rand(3, 3, 28, 28) * 2 - 1
    assert clf(x).shape == (3, 10)
    assert clf.probe("features.11").feature_shape((3, 28, 28)) == (512, 3, 3)
    clf2 = ColorMNISTClassifier.load(clf.save(tmp_path / "c.safetensors"))
    assert torch.equal(clf2.eval()(x), clf.eval()(x))


def test_train_classifier_resumes_and_keeps_finished_checkpoints(tmp_path, monkeypatch):
    import json
    import torch.nn.functional as F
    from invnb.probe import train_classifier
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 3, 28, 28, generator=g) * 2 - 1, torch.randint(10, (32,), generator=g)
    kw = dict(steps=6, n_checkpoints=3, batch_size=8, progress=False, device="cpu")
    full = ColorMNISTClassifier(size=32)
    ref = train_classifier(full, x, y, x, y, out_dir=tmp_path / "a", **kw)

    real, calls = F.cross_entropy, []
    def crash_at_step_5(*a, **k):                                   # dies inside the fit towards the last checkpoint
        calls.append(1)
        if len(calls) == 5: raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(F, "cross_entropy", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(ColorMNISTClassifier(size=32), x, y, x, y, out_dir=tmp_path / "b", **kw)
    monkeypatch.setattr(F, "cross_entropy", real)
    assert [r["step"] for r in json.loads((tmp_path / "b" / "records.json").read_text())] == [0, 3]

    again = ColorMNISTClassifier(size=32)
    out = train_classifier(again, x, y, x, y, out_dir=tmp_path / "b", **kw)
    assert [r["step"] for r in out] == [0, 3, 6]
    assert [r["val_accuracy"] for r in out] == [r["val_accuracy"] for r in ref]
    for p, q in zip(again.state_dict().values(), full.state_dict().values()):
        assert torch.equal(p, q)                                    # resumed training = uninterrupted training
    idle = ColorMNISTClassifier(size=32, seed=5)                      # all on disk: nothing trains, final weights loaded
    train_classifier(idle, x, y, x, y, out_dir=tmp_path / "b", **kw)
    for p, q in zip(idle.state_dict().values(), full.state_dict().values()):
        assert torch.equal(p, q)
