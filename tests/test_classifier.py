"The ColorMNIST classifier and its resumable checkpoints."
import json

import pytest
import torch

from invnb.classifier import ColorMNISTClassifier, train_classifier


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


def test_records_are_relative_and_a_damaged_index_is_named(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 3, 28, 28, generator=g) * 2 - 1, torch.randint(10, (16,), generator=g)
    kw = dict(steps=2, n_checkpoints=2, batch_size=4, progress=False, device="cpu")
    recs = train_classifier(ColorMNISTClassifier(size=32), x, y, x, y, out_dir=tmp_path / "a", **kw)
    assert [r["file"] for r in recs] == ["classifier_step000000.safetensors", "classifier_step000002.safetensors"]
    (tmp_path / "a" / "records.json").write_text("[{")
    with pytest.raises(ValueError, match=r"records.json is damaged .* delete the folder"):
        train_classifier(ColorMNISTClassifier(size=32), x, y, x, y, out_dir=tmp_path / "a", **kw)
