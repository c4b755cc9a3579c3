"Checkpoints: bit-exact round trips, atomic writes, clear errors for bad files, no pickle."
import json
import os

import pytest
import torch
from conftest import randomize_
from safetensors.torch import save_file

from invnb.checkpoint import CheckpointError, load_model, read_meta, save_tensors
from invnb.flows import ActNorm, Flow
from invnb.inn import FactorINN, InvarianceINN


@pytest.fixture
def t():
    t = InvarianceINN(in_dim=8, cond_shape=(4, 3, 3), n_blocks=3, hidden=16, embed_dim=8, seed=7)
    t(torch.randn(32, 8), torch.randn(32, 4, 3, 3))  # initialise ActNorm from data
    return t


def test_round_trip_is_bit_exact(t, tmp_path):
    path = t.save(tmp_path / "t.safetensors")
    t2 = InvarianceINN.load(path)
    sd, sd2 = t.state_dict(), t2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    zbar, z = torch.randn(5, 8), torch.randn(5, 4, 3, 3)
    assert torch.equal(t(zbar, z)[0], t2(zbar, z)[0])
    g = lambda: torch.Generator().manual_seed(0)
    assert torch.equal(t.sample(z, 4, g()), t2.sample(z, 4, g()))
    assert read_meta(path)["config"]["cond_shape"] == [4, 3, 3]


def test_factor_inn_and_plain_flow_round_trip(tmp_path):
    e = randomize_(FactorINN(12, {"a": 3, "b": 4}, n_blocks=2, hidden=8, rho=0.8))
    e2 = FactorINN.load(e.save(tmp_path / "e.safetensors"))
    x = torch.randn(3, 12)
    assert torch.equal(e(x)[0], e2(x)[0]) and e2.rho == 0.8 and e2.factors == {"a": 3, "b": 4}
    f = randomize_(Flow(6, 2, 8, cond_dim=2))
    f2 = Flow.load(f.save(tmp_path / "f.safetensors"))
    h = torch.randn(3, 2)
    assert torch.equal(f(x[:, :6], h)[0], f2(x[:, :6], h)[0])


def test_actnorm_stays_initialised_after_load(tmp_path):
    a = ActNorm(4)
    a(torch.randn(50, 4) * 3)
    a2 = ActNorm.load(a.save(tmp_path / "a.safetensors"))
    x = torch.randn(7, 4) * 50
    assert a2._initialized and torch.equal(a2(x)[0], a(x)[0])


def test_write_is_atomic(t, tmp_path, monkeypatch):
    path = t.save(tmp_path / "t.safetensors")
    before = path.read_bytes()
    import invnb.checkpoint as ck

    def crash(*a, **k):
        raise KeyboardInterrupt("killed mid-write")
    monkeypatch.setattr(ck, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        t.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temp file left behind


def test_truncated_file(t, tmp_path):
    path = t.save(tmp_path / "t.safetensors")
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            InvarianceINN.load(bad)


def test_wrong_model_type(t, tmp_path):
    path = t.save(tmp_path / "t.safetensors")
    with pytest.raises(CheckpointError, match="holds a InvarianceINN, not a FactorINN"):
        FactorINN.load(path)


def test_config_weights_mismatch(t, tmp_path):
    path = t.save(tmp_path / "t.safetensors")
    from safetensors.torch import load_file
    tensors, meta = load_file(path), read_meta(path)
    meta["config"]["hidden"] = 32
    save_tensors(tmp_path / "edited.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="do not match its config"):
        InvarianceINN.load(tmp_path / "edited.safetensors")


def test_not_an_invnb_file(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not an invnb checkpoint"):
        load_model(tmp_path / "other.safetensors")
    (tmp_path / "model.pth").write_bytes(b"\x80\x04pickle-like bytes")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path / "model.pth")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.safetensors")


def test_unknown_class_is_not_imported(tmp_path):
    save_tensors(tmp_path / "x.safetensors", {"w": torch.zeros(1)},
                 dict(format=1, kind="model", version="0", config={}, **{"class": "os.system"}))
    with pytest.raises(CheckpointError, match="not a model class"):
        load_model(tmp_path / "x.safetensors")


def test_no_pickle_in_the_package():
    import invnb
    root = os.path.dirname(invnb.__file__)
    for name in os.listdir(root):
        if name.endswith(".py"):
            lines = open(os.path.join(root, name)).read().splitlines()
            assert not any("import pickle" in line for line in lines), name
            assert all("weights_only=True" in line for line in lines if "torch.load(" in line), name
