"""Hostile and damaged files: a small file must never make invnb allocate gigabytes, a study folder must not reach
outside itself, and a damaged JSON file is reported by name.

The memory tests load each forged file in a forked child of one helper process under an address-space limit
(`RLIMIT_AS`): the helper imports invnb and loads a small real model, measures its peak address space (torch's import
alone reserves a few GB of it), and each child may then grow by at most `HEADROOM` before an allocation fails."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import invnb
import invnb.checkpoint as ck
from invnb.checkpoint import CheckpointError, save_tensors

for _m in ck._MODEL_MODULES: __import__(_m)      # every invnb model class is registered

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS, fork and /proc: Linux only")

HEADROOM = 2 ** 30        # what a child may allocate above the measured baseline
BIG = 10 ** 13


def _invnb_classes() -> dict[str, type]:
    "The registered model classes of invnb itself (tests register classes of their own too)."
    return {name: c for name, mods in ck._REGISTRY.items() for m, c in mods.items() if ck._INVNB_MODULE.fullmatch(m)}


# -- the forgings: per class, configs whose size arguments ask for far more than the file stores ---------------------
# (config, small config whose real tensors the file holds, or None for a file with no tensors)
FORGED = {
    "InvertibleModule": [({"dim": BIG}, None)],                                   # abstract: no size arguments
    "ActNorm": [({"dim": BIG}, None), ({"dim": 10 ** 9}, {"dim": 4})],
    "DoubleAffineCoupling": [({"dim": 10 ** 12, "hidden": 10 ** 9, "depth": 10 ** 9}, None),
                             ({"dim": 4, "hidden": 10 ** 9}, {"dim": 4, "hidden": 8})],
    "Shuffle": [({"dim": BIG}, None), ({"dim": 3 * 10 ** 9}, {"dim": 4})],
    "FlowBlock": [({"dim": 10 ** 12, "hidden": 10 ** 9, "depth": 10 ** 9}, None)],
    "Flow": [({"dim": 10 ** 12, "n_blocks": 10 ** 9, "hidden": 10 ** 9, "depth": 10 ** 9}, None),
             ({"dim": 4, "n_blocks": 10 ** 9, "hidden": 8}, {"dim": 4, "n_blocks": 2, "hidden": 8})],
    "InvarianceINN": [({"in_dim": 10 ** 12, "cond_shape": [10 ** 9, 10 ** 9, 10 ** 9], "n_blocks": 10 ** 9,
                        "hidden": 10 ** 9, "embed_dim": 10 ** 9, "embed_width": 10 ** 9}, None),
                      ({"in_dim": 8, "cond_shape": [BIG], "n_blocks": 1, "hidden": 8, "embed_dim": 8},
                       {"in_dim": 8, "cond_shape": [4], "n_blocks": 1, "hidden": 8, "embed_dim": 8})],
    # the reliability issue's file: no tensors, no blocks, and a non-persistent (in_dim × K+1) mask
    "FactorINN": [({"in_dim": 3 * 10 ** 9, "factors": {"a": 1}, "n_blocks": 0}, None),
                  ({"in_dim": BIG, "factors": {"a": 1}, "n_blocks": 0}, None),
                  ({"in_dim": BIG, "factors": {"a": 1}, "n_blocks": 10 ** 9, "hidden": 10 ** 9}, None)],
    "Autoencoder": [({}, None)],                                                  # abstract: no size arguments
    "SmallAE": [({"size": 28, "zdim": 10 ** 12, "width": 10 ** 9, "channels": 10 ** 9}, None),
                ({"size": 224, "zdim": 10 ** 9, "width": 8}, {"width": 8})],
    "BigAE": [({"size": 2 ** 40, "zdim": 10 ** 12, "layers": [10 ** 9] * 4, "width_per_group": 10 ** 9, "ch": 10 ** 9,
                "n_classes": 10 ** 12, "embed_dim": 10 ** 9}, None),
              ({"size": 16, "zdim": 8, "layers": [10 ** 9, 1, 1, 1], "width_per_group": 8, "ch": 2, "n_classes": 4,
                "embed_dim": 4}, None)],
    "ColorMNISTClassifier": [({"size": BIG}, None)],    # its tensors do not depend on size: refused as not matching
    "FeatureDecoder": [({"cond_shape": [10 ** 9, 10 ** 9, 10 ** 9], "size": 28, "width": 10 ** 9, "zdim": 10 ** 12}, None),
                       ({"cond_shape": [BIG], "size": 28, "width": 8, "zdim": 8},
                        {"cond_shape": [4], "size": 28, "width": 8, "zdim": 8})],
}

# per class, a config with huge widths but few tensors: building it on the meta device must allocate nothing real
WIDE = {
    "InvertibleModule": {}, "Autoencoder": {},
    "ActNorm": {"dim": 3 * 10 ** 9},
    "DoubleAffineCoupling": {"dim": 3 * 10 ** 9, "hidden": 10 ** 5},
    "Shuffle": {"dim": 3 * 10 ** 9},
    "FlowBlock": {"dim": 3 * 10 ** 9, "hidden": 10 ** 5},
    "Flow": {"dim": 3 * 10 ** 9, "n_blocks": 2, "hidden": 10 ** 5},
    "InvarianceINN": {"in_dim": 3 * 10 ** 9, "cond_shape": [10 ** 9, 2 ** 20, 2 ** 20], "n_blocks": 1, "hidden": 10 ** 5,
                      "embed_dim": 10 ** 5, "embed_width": 10 ** 5},
    "FactorINN": {"in_dim": 3 * 10 ** 9, "factors": {"a": 1, "b": 10 ** 9}, "n_blocks": 1, "hidden": 10 ** 5},
    "SmallAE": {"size": 224, "zdim": 10 ** 9, "width": 2 ** 16, "channels": 10 ** 4},
    "BigAE": {"size": 2 ** 20, "zdim": 10 ** 9, "layers": [1, 1, 1, 1], "width_per_group": 10 ** 5, "ch": 10 ** 4,
              "n_classes": 10 ** 9, "embed_dim": 10 ** 5},
    "ColorMNISTClassifier": {"size": BIG},
    "FeatureDecoder": {"cond_shape": [3 * 10 ** 9], "size": 28, "width": 2 ** 16, "zdim": 10 ** 9},
}


def test_every_invnb_model_class_has_a_forging():
    "A new model class must come with its hostile configs here (and its wide one)."
    assert sorted(_invnb_classes()) == sorted(FORGED) == sorted(WIDE)


# -- the helper: import once, measure, then one forked child per case under RLIMIT_AS ---------------------------------
_HELPER = r'''
import json, os, re, resource, sys, traceback
import torch
import invnb.checkpoint as ck
for m in ck._MODEL_MODULES: __import__(m)
import invnb.build, invnb.study
from invnb.checkpoint import CheckpointError, load_model
from invnb.features import BuildError

def peak(): return int(re.search(r"VmPeak:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

def meta_build(name, config):
    "Build on the meta device with no budget: every tensor must be a meta one."
    klass = ck._registered(name, None)
    with torch.device("meta"): model = klass(**config)
    real = [(n, tuple(v.shape)) for m in model.modules() for n, v in [*m._parameters.items(), *m._buffers.items(),
            *vars(m).items()] if isinstance(v, torch.Tensor) and v.device.type != "meta"]
    return {"real": real[:5]}

def run(kind, arg):
    if kind == "model": load_model(arg); return {"loaded": True}
    if kind == "study": invnb.study.Study.load(arg); return {"loaded": True}
    if kind == "meta": return meta_build(*arg)

cases, small = json.loads(sys.argv[1]), sys.argv[2]
load_model(small)                                    # the baseline: imports plus a small real model loaded
base = peak(); limit = base + int(sys.argv[3])
results = {"baseline": base, "limit": limit, "cases": {}}
for key, kind, arg in cases:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            try: out = run(kind, arg)
            except (CheckpointError, BuildError) as e: out = {"refused": type(e).__name__, "msg": str(e)}
            except BaseException as e: out = {"error": "".join(traceback.format_exception(e))[-3000:]}
            with os.fdopen(w, "w") as f: f.write(json.dumps(out))
        finally: os._exit(0)
    os.close(w)
    with os.fdopen(r) as f: data = f.read()
    _, status = os.waitpid(pid, 0)
    results["cases"][key] = {**(json.loads(data) if data else {}), "status": status}
print(json.dumps(results))
'''


def _run_helper(cases: list, tmp: Path) -> dict:
    "Run `cases` [(key, 'model' | 'study' | 'meta', argument)] in forked children under the memory limit."
    small = tmp / "small.safetensors"
    from invnb.inn import FactorINN
    FactorINN(8, {"a": 2}, n_blocks=2, hidden=8).save(small)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _HELPER, json.dumps(cases), str(small), str(HEADROOM)],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1], timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"memory limit {res['limit'] / 2 ** 30:.2f} GiB = baseline {res['baseline'] / 2 ** 30:.2f} GiB + "
          f"{HEADROOM / 2 ** 30:.0f} GiB")
    return res


def _forge(path: Path, name: str, config: dict, tensors_from: dict | None) -> Path:
    klass = _invnb_classes()[name]
    tensors = klass(**tensors_from).state_dict() if tensors_from is not None else {}
    meta = dict(format=ck.FORMAT, kind="model", version=invnb.__version__, config=config, module=klass.__module__,
                **{"class": name})
    return save_tensors(path, tensors, meta)


@pytest.fixture(scope="module")
def forged_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("forged")
    cases = [(f"{name}/{i}", "model", str(_forge(tmp / f"{name}_{i}.safetensors", name, cfg, src)))
             for name, forgings in FORGED.items() for i, (cfg, src) in enumerate(forgings)]
    cases += [(f"meta/{name}", "meta", [name, cfg]) for name, cfg in WIDE.items()]
    return _run_helper(cases, tmp)


def _assert_clean_refusal(case: dict, *patterns):
    assert case["status"] == 0, f"the child died (status {case['status']}): {case}"
    assert "error" not in case, case["error"]
    assert "refused" in case, f"loaded a forged file: {case}"
    msg = case["msg"]
    assert "memory" not in msg.lower() and "alloc" not in msg.lower(), msg
    assert any(p in msg for p in patterns), msg


@pytest.mark.parametrize("name", sorted(_invnb_classes()))
def test_a_forged_config_is_refused_before_anything_real_is_allocated(forged_results, name):
    assert name in FORGED, f"{name} is an invnb model class with no forging in FORGED: add one"
    for i, (cfg, _) in enumerate(FORGED[name]):
        case = forged_results["cases"][f"{name}/{i}"]
        _assert_clean_refusal(case, "far more", "do not match its config", "cannot rebuild")
        assert name in case["msg"] and f"{name}_{i}.safetensors" in case["msg"], case["msg"]


def test_the_issue_s_factor_inn_is_refused_for_its_size(forged_results):
    "No tensors, no blocks: nothing to compare but the (K+1) × in_dim mask, which is not saved with the weights."
    for i in (0, 1):
        msg = forged_results["cases"][f"FactorINN/{i}"]["msg"]
        assert "far more" in msg and "elements" in msg and "0 the file stores" in msg, msg


@pytest.mark.parametrize("name", sorted(_invnb_classes()))
def test_building_on_the_meta_device_allocates_nothing_real(forged_results, name):
    "Huge widths with few tensors, built on the meta device without a budget: nothing real, no memory error."
    assert name in WIDE, f"{name} is an invnb model class with no wide config in WIDE: add one"
    case = forged_results["cases"][f"meta/{name}"]
    assert case["status"] == 0 and "error" not in case, case
    if "refused" not in case: assert case["real"] == [], case


def test_the_forged_configs_are_really_hostile():
    "Each forging asks for more than a small model: its refusal is not that of a harmless file."
    for name, forgings in FORGED.items():
        for cfg, _ in forgings:
            big = [v for v in cfg.values() if isinstance(v, int) and v >= 10 ** 9] + [
                x for v in cfg.values() if isinstance(v, list) for x in v if x >= 10 ** 9] + [
                x for v in cfg.values() if isinstance(v, dict) for x in v.values() if x >= 10 ** 9]
            assert big or name in ("Autoencoder",), (name, cfg)


# -- study folders ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """A saved study: ae, an invnb model, a weights-only torchvision model (wrapped with an input adapter, as
    `invnb study` makes it) with its recipe, a t for each, e."""
    from torchvision.models import squeezenet1_1
    from invnb.autoencoder import SmallAE
    from invnb.build import torchvision_recipe
    from invnb.inn import FactorINN, InvarianceINN
    from invnb.probe import IMAGENET, Adapted, InputAdapter
    from invnb.study import Study
    torch.manual_seed(0)
    t = lambda: InvarianceINN(8, (4,), n_blocks=1, hidden=8, embed_dim=8)
    net = Adapted(squeezenet1_1(), InputAdapter(None, **IMAGENET))
    study = Study(SmallAE(width=8), {"model": net, "flow": _invnb_classes()["Flow"](8, 1, 8)},
                  {("model", "features.3"): t(), ("flow", "x"): t()}, FactorINN(64, {"a": 4}, n_blocks=1, hidden=8),
                  meta={"name": "model", "recipe": torchvision_recipe(net)})
    assert study.meta["recipe"]["torchvision"] == "squeezenet1_1"
    folder = study.save(tmp_path_factory.mktemp("study") / "s")
    assert list(Study.load(folder).models) == ["model", "flow"]
    return folder


def _copy(folder: Path, to: Path) -> Path:
    import shutil
    return Path(shutil.copytree(folder, to, symlinks=True))


def _edit_index(folder: Path, edit) -> Path:
    idx = json.loads((folder / "study.json").read_text())
    edit(idx)
    (folder / "study.json").write_text(json.dumps(idx))
    return folder


@pytest.fixture(scope="module")
def recipe_results(small_study, tmp_path_factory):
    "Study.load of folders whose study.json recipe was edited to ask for a huge model, under the memory limit."
    tmp = tmp_path_factory.mktemp("recipes")
    base = json.loads((small_study / "study.json").read_text())["meta"]["recipe"]    # squeezenet1_1 with an adapter
    adapter = base["adapter"]
    recipes = {"wide": {**base, "kwargs": {"num_classes": 1_500_000}},            # the issue's: 768 M parameters
               "other": {**base, "torchvision": "vit_h_14"},                        # the issue's: 632 M parameters
               "adapter": {**base, "adapter": {**adapter, "size": 2 ** 40, "mean": [0.5] * 3_000_000}},
               "kwargs": {**base, "torchvision": "resnet18", "kwargs": {"num_classes": 10 ** 12}},
               "class": {"torchvision": "vit_h_14"}}                                 # not the class the study saved
    cases = []
    for key, recipe in recipes.items():
        folder = _edit_index(_copy(small_study, tmp / key), lambda idx: idx["meta"].__setitem__("recipe", recipe))
        cases.append((key, "study", str(folder)))
    return _run_helper(cases, tmp)


@pytest.mark.parametrize("key", ["wide", "other", "adapter", "kwargs", "class"])
def test_an_edited_recipe_is_refused_before_the_model_is_built(recipe_results, key):
    "Built on the meta device, the recipe's model is held to the saved weights before anything real is built."
    case = recipe_results["cases"][key]
    if key == "class":      # stopped by the budget, or by its class once built (both on the meta device)
        _assert_clean_refusal(case, "but the study saved a invnb.probe.Adapted", "far more elements"); return
    _assert_clean_refusal(case, "do not match the recipe")
    assert "models/model.safetensors" in case["msg"], case["msg"]
    if key in ("adapter", "kwargs"): assert "far more elements" in case["msg"], case["msg"]


def test_a_file_of_another_class_is_refused_before_it_is_built(small_study, tmp_path):
    "The ae must hold an Autoencoder, a model the class study.json records, e a FactorINN: checked before any build."
    from invnb.study import Study
    folder = _copy(small_study, tmp_path / "s")
    e_file = folder / "e.safetensors"
    (folder / "ae.safetensors").write_bytes(e_file.read_bytes())
    with pytest.raises(CheckpointError, match="holds a FactorINN, not a Autoencoder"):
        Study.load(folder)
    folder = _copy(small_study, tmp_path / "s2")
    (folder / "models" / "flow.safetensors").write_bytes(e_file.read_bytes())
    with pytest.raises(CheckpointError, match="holds a FactorINN, not a Flow"):
        Study.load(folder)


@pytest.mark.parametrize("part", ["ae.safetensors", "e.safetensors", "models/flow.safetensors",
                                  "models/model.safetensors", "t/flow__x.safetensors"])
def test_a_symlink_out_of_the_study_folder_is_refused_for_every_file(small_study, tmp_path, part):
    from invnb.study import Study
    folder = _copy(small_study, tmp_path / "s")
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((folder / part).read_bytes())
    (folder / part).unlink(); (folder / part).symlink_to(outside)
    with pytest.raises(CheckpointError, match="outside the study folder") as info:
        Study.load(folder)
    assert part in str(info.value)


# -- damaged JSON files are named ---------------------------------------------------------------------------------------

def test_an_empty_build_json_is_named(tmp_path):
    from torch import nn
    from invnb.build import _check_same_model
    (tmp_path / "study" / "t").mkdir(parents=True)
    (tmp_path / "study" / "t" / "model__x.safetensors").write_bytes(b"")
    (tmp_path / "build.json").write_text("")
    with pytest.raises(CheckpointError, match="build.json is empty") as info:
        _check_same_model(tmp_path, nn.Linear(2, 2), "model")
    assert str(tmp_path / "build.json") in str(info.value)


def test_an_empty_record_json_of_e_is_named(tmp_path):
    from invnb.build import fit_e
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (64,), generator=g)
    codes = {"mean": torch.randn(64, 8, generator=g) + labels[:, None], "logvar": torch.zeros(64, 8)}
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "record.json").write_text("")
    with pytest.raises(CheckpointError, match="record.json is empty") as info:
        fit_e(codes, {"a": labels}, tmp_path, steps=1, batch_size=8, lr=1e-3, seed=0, device="cpu", progress=False,
               t_size={"n_blocks": 1, "hidden": 8, "depth": 1})
    assert str(tmp_path / "e" / "record.json") in str(info.value)


def test_an_empty_records_json_of_the_classifier_is_named(tmp_path):
    from invnb.classifier import _read_records
    (tmp_path / "records.json").write_text("")
    with pytest.raises(CheckpointError, match=r"records.json is damaged \(empty") as info:
        _read_records(tmp_path / "records.json")
    assert str(tmp_path / "records.json") in str(info.value) and "train the classifier again" in str(info.value)


@pytest.mark.parametrize("text", ["", "{\"format\": 2, \"models\": ["])
def test_an_empty_or_cut_study_json_is_named(small_study, tmp_path, text):
    from invnb.study import Study
    folder = _copy(small_study, tmp_path / "s")
    (folder / "study.json").write_text(text)
    with pytest.raises(CheckpointError, match="study.json is (empty|damaged)") as info:
        Study.load(folder)
    assert str(folder / "study.json") in str(info.value) and "save the study again" in str(info.value)
