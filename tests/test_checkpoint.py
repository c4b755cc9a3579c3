"Checkpoints: bit-exact round trips, atomic writes, clear errors for bad files, no pickle."
import json
import os
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import randomize_
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.modules.module import register_module_buffer_registration_hook, register_module_parameter_registration_hook

from invnb.checkpoint import CheckpointError, Checkpointable, load_model, read_meta, save_model, save_tensors
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


def _tamper(path, out, **config):
    "A copy of the checkpoint at `path` with `config` entries changed (and the tensors untouched)."
    meta = read_meta(path)
    meta["config"].update(config)
    return save_tensors(out, load_file(path), meta)


class _RunAway(BaseException):
    "Raised by the watcher below; a BaseException, so no `except Exception` in load_model can hide it."


@contextmanager
def _watch_tensors(stop_after: int | None = None):
    "Record (device type, numel) of every parameter and buffer registered; stop a build that registers too many."
    seen = []

    def hook(module, name, value):
        if value is not None:
            seen.append((value.device.type, value.numel()))
            if stop_after is not None and len(seen) > stop_after: raise _RunAway(f"{len(seen)} tensors registered")
    handles = [register_module_parameter_registration_hook(hook), register_module_buffer_registration_hook(hook)]
    try: yield seen
    finally:
        for h in handles: h.remove()


def test_tampered_width_is_refused_before_allocating(t, tmp_path):
    path = _tamper(t.save(tmp_path / "t.safetensors"), tmp_path / "wide.safetensors", hidden=512)
    with _watch_tensors() as seen, pytest.raises(CheckpointError, match="do not match its config"):
        load_model(path)
    # the (2, 512, 512) layers the config asks for exist only on the meta device, never in real memory
    assert max((n for dev, n in seen if dev != "meta"), default=0) < 512 * 512
    assert any(dev == "meta" and n == 2 * 512 * 512 for dev, n in seen)


def test_tampered_block_count_is_refused_quickly(t, tmp_path):
    path = _tamper(t.save(tmp_path / "t.safetensors"), tmp_path / "deep.safetensors", n_blocks=10**5)
    n_file = len(load_file(path))
    with _watch_tensors(stop_after=50 * n_file), pytest.raises(CheckpointError, match="far more tensors"):
        load_model(path)     # without the budget: 2.3 million tensors built, minutes


def test_tampered_config_of_an_autoencoder_is_refused(tmp_path):
    from invnb.autoencoder import SmallAE
    path = _tamper(SmallAE(width=8).save(tmp_path / "ae.safetensors"), tmp_path / "bad.safetensors", width=4096)
    with _watch_tensors() as seen, pytest.raises(CheckpointError, match="do not match its config"):
        load_model(path)
    assert all(dev == "meta" for dev, n in seen)
    bad = _tamper(path, tmp_path / "bad2.safetensors", width=8, size=30)
    with pytest.raises(CheckpointError, match="cannot rebuild SmallAE"):
        load_model(bad)


@pytest.mark.parametrize("raw", ["[1, 2, 3]", "\"a string\"", "42", "null", "{not json", ""])
def test_metadata_that_is_not_a_json_object_is_a_one_line_error(tmp_path, raw):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(1)}, path, metadata={"invnb": raw})
    for fn in (read_meta, load_model):
        with pytest.raises(CheckpointError) as info:
            fn(path)
        msg = str(info.value)
        assert str(path) in msg and "\n" not in msg and ("not valid JSON" in msg or "not an object" in msg), msg


def test_damaged_model_metadata_is_a_clear_error(t, tmp_path):
    path = t.save(tmp_path / "t.safetensors")
    for change, pattern in [(dict(config=[1, 2]), "config must be a JSON object"),
                            (dict(module=7), "module a string"), ({"class": ["x"]}, "not a saved model")]:
        meta = {**read_meta(path), **change}
        save_tensors(tmp_path / "d.safetensors", load_file(path), meta)
        with pytest.raises(CheckpointError, match=pattern):
            load_model(tmp_path / "d.safetensors")


class Toy(Checkpointable, nn.Module):
    "A model defined outside invnb: registered by being defined."
    def __init__(self, n: int = 3):
        super().__init__()
        self.config = dict(n=n)
        self.w = nn.Parameter(torch.arange(float(n)))


def test_registry_finds_user_classes_and_keeps_same_names_apart(tmp_path):
    import invnb.flows

    class Flow(Checkpointable, nn.Module):
        "A user class that shares a name with invnb's Flow; it must not shadow it."
        def __init__(self):
            super().__init__()
            self.config = {}
    toy = Toy(4)
    path = toy.save(tmp_path / "toy.safetensors")
    assert read_meta(path)["module"] == Toy.__module__
    toy2 = load_model(path)
    assert type(toy2) is Toy and torch.equal(toy2.w, toy.w)
    f = randomize_(invnb.flows.Flow(4, 2, 8))
    f2 = load_model(f.save(tmp_path / "f.safetensors"))
    assert type(f2) is invnb.flows.Flow and torch.equal(f2.blocks[0].norm.loc, f.blocks[0].norm.loc)
    assert type(load_model(Flow().save(tmp_path / "mine.safetensors"))) is Flow


def test_files_without_a_recorded_module_still_load(t, tmp_path):
    path = t.save(tmp_path / "t.safetensors")
    meta = read_meta(path)
    del meta["module"]
    save_tensors(tmp_path / "old.safetensors", load_file(path), meta)
    t2 = InvarianceINN.load(tmp_path / "old.safetensors")
    zbar, z = torch.randn(3, 8), torch.randn(3, 4, 3, 3)
    assert torch.equal(t2(zbar, z)[0], t(zbar, z)[0])
    meta["module"] = "invnb.flows"                       # an invnb class that has moved: found by name in invnb
    save_tensors(tmp_path / "moved.safetensors", load_file(path), meta)
    assert torch.equal(load_model(tmp_path / "moved.safetensors")(zbar, z)[0], t(zbar, z)[0])
    toy = Toy()
    meta = dict(read_meta(toy.save(tmp_path / "toy.safetensors")))
    del meta["module"]                                   # an old file names only invnb's own classes
    save_tensors(tmp_path / "old_toy.safetensors", toy.state_dict(), meta)
    with pytest.raises(CheckpointError, match="not a model class"):
        load_model(tmp_path / "old_toy.safetensors")


def test_only_invnb_modules_are_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_mod.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nclass Evil: pass\n")
    (tmp_path / "invnb_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("evil_mod", "invnb_evil", "os"):
        save_tensors(tmp_path / "x.safetensors", {"w": torch.zeros(1)},
                     dict(format=1, kind="model", version="0", config={}, module=module, **{"class": "Evil"}))
        with pytest.raises(CheckpointError, match="imports only invnb's own modules"):
            load_model(tmp_path / "x.safetensors")
    assert not marker.exists() and "evil_mod" not in sys.modules and "invnb_evil" not in sys.modules
    save_tensors(tmp_path / "y.safetensors", {"w": torch.zeros(1)},
                 dict(format=1, kind="model", version="0", config={}, module="invnb.nonexistent", **{"class": "X"}))
    with pytest.raises(CheckpointError, match="not a model class"):
        load_model(tmp_path / "y.safetensors")


def _fresh_python(code: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_fresh_process_loads_any_invnb_model_without_importing_its_module(tmp_path):
    from invnb.autoencoder import SmallAE
    ae = SmallAE(width=8, seed=3)
    ae_path = ae.save(tmp_path / "ae.safetensors")
    meta = read_meta(ae_path)
    del meta["module"]
    save_tensors(tmp_path / "ae_old.safetensors", load_file(ae_path), meta)
    out = _fresh_python(f"""
        from invnb.checkpoint import load_model
        for name in ("ae.safetensors", "ae_old.safetensors"):
            m = load_model({str(tmp_path)!r} + "/" + name)
            print(type(m).__module__, type(m).__name__, float(m.log_gamma), m.config["seed"])
    """)
    assert out.split("\n")[:2] == ["invnb.autoencoder SmallAE 0.0 3", "invnb.autoencoder SmallAE 0.0 3"], out


def test_checkpoint_does_not_import_the_models():
    import invnb.checkpoint
    src = Path(invnb.checkpoint.__file__).read_text()
    assert "from .flows" not in src and "from .inn" not in src and "InvertibleModule.save" not in src
