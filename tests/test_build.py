"Study.build and `invnb study`: your own model on your own images — one pass, memory or disk, resumable t's, recipes."
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from invnb import fitting
from invnb.build import BuildError, torchvision_recipe
from invnb.recipes import model_from_recipe
from invnb.recipes import load_state_dict_file, model_from_spec
from invnb.features import features_of_layers
from invnb.cli import main
from invnb.data import load_image_folder
from invnb.probe import Probe
from invnb.study import Study

T = dict(n_blocks=1, hidden=8, embed_dim=8)                              # tiny t's: the mechanics, not the numbers
CLI_T = ["--t-blocks", "1", "--t-hidden", "8", "--t-embed", "8", "--steps", "5", "--n-eval", "6", "--device", "cpu",
         "--no-progress"]


# `folder` (24 PNGs in two class subfolders) and `ae` (a SmallAE of them, its file): fixtures in conftest.py


def build(folder, ae, **kw):
    model = kw.pop("model", None)
    return Study.build(resnet18() if model is None else model, kw.pop("layers", ["layer2", "layer3"]), folder, ae=ae,
                       steps=5, t_size=T, device="cpu", progress=False, **kw)


def test_features_of_layers_one_pass_equals_probe():
    torch.manual_seed(0)
    net = resnet18(num_classes=7).eval()
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    calls = {"conv1": 0, "layer4": 0}
    def count(k):   # real calls only (tracing the model for a Probe calls hooks with proxies)
        return lambda m, a, o: calls.__setitem__(k, calls[k] + isinstance(a[0], torch.Tensor))
    for k in calls: getattr(net, k).register_forward_hook(count(k))
    layers = ["layer1", "layer2.0.bn2", "layer3"]            # bn2's output is changed in place later (out += identity)
    f = features_of_layers(net, layers, x, batch_size=4, device="cpu")
    assert calls == {"conv1": 2, "layer4": 0}                # one pass per batch for all layers, stopped after layer3
    for l in layers + ["layer4.1.add", "softmax"]:
        ref = Probe(net, l).phi(x)
        got = f[l] if l in f else features_of_layers(net, [l], x, device="cpu")[l]
        torch.testing.assert_close(got, ref, msg=l)


def test_build_from_a_folder_saves_and_reloads_from_its_recipe(folder, ae, tmp_path):
    study = build(folder, ae[0])
    assert sorted(study.ts) == [("model", "layer2"), ("model", "layer3")]
    assert study.meta["recipe"] == {"torchvision": "resnet18"} and study.meta["images"]["n"] == 22 and study.meta["held_out"]["n_val"] == 2
    again = Study.load(study.save(tmp_path / "s"))                         # no models=: rebuilt from the recipe
    x = torch.stack([load_image_folder(folder, size=32)[i][0] for i in range(3)])
    g = lambda: torch.Generator().manual_seed(0)
    s = again.sample(x, "layer3", 4, g())
    assert s.shape == (3, 4, 3, 32, 32) and torch.equal(s, study.sample(x, "layer3", 4, g()))


def test_the_disk_path_gives_the_same_t_as_memory(folder, ae, tmp_path):
    net = resnet18()
    mem = build(folder, ae[0], model=net, layers=["layer3"])
    disk = build(folder, ae[0], model=net, layers=["layer3"], out=tmp_path / "run", budget_mb=0.01)
    assert disk.meta["images"]["storage"].startswith("memory-mapped .npy files")
    assert mem.meta["images"]["storage"] == "memory"
    z = np.load(tmp_path / "run" / "cache" / "features" / "layer3.npy", mmap_mode="r")
    assert z.shape == (22, 256, 2, 2) and np.load(tmp_path / "run" / "cache" / "codes" / "mean.npy").shape == (22, 64)
    torch.testing.assert_close(disk.t("layer3").state_dict(), mem.t("layer3").state_dict())
    tmp = build(folder, ae[0], model=net, layers=["layer3"], budget_mb=0.01)   # without out: in a temporary folder
    assert tmp.meta["images"]["storage"].startswith("memory-mapped .npy files")
    torch.testing.assert_close(tmp.t("layer3").state_dict(), mem.t("layer3").state_dict())


def test_a_rebuild_loads_finished_ts_and_refuses_another_model(folder, ae, tmp_path, monkeypatch):
    net = resnet18()
    first = build(folder, ae[0], model=net, out=tmp_path / "run")
    monkeypatch.setattr(fitting, "fit_invariances", lambda *a, **k: pytest.fail("a finished t was trained again"))
    again = build(folder, ae[0], model=net, out=tmp_path / "run")
    assert again.meta["images"]["reused"] == ["layer2", "layer3"]
    torch.testing.assert_close(again.t("layer2").state_dict(), first.t("layer2").state_dict())
    with pytest.raises(BuildError, match="trained on another model"):
        build(folder, ae[0], out=tmp_path / "run")


def test_bad_inputs_fail_before_training(folder, ae, tmp_path, monkeypatch):
    monkeypatch.setattr(fitting, "fit_invariances", lambda *a, **k: pytest.fail("trained despite a bad input"))
    with pytest.raises(ValueError, match=r"unknown layer 'layr3'.*Closest: \['layer3'"):
        build(folder, ae[0], layers=["layer2", "layr3"])
    with pytest.raises(BuildError, match="train_autoencoder"):
        Study.build(resnet18(), ["layer2"], folder)
    with pytest.raises(BuildError, match=r"it takes 3×32×32 images, got 3×64×64"):
        build(torch.rand(20, 3, 64, 64) * 2 - 1, ae[0])
    with pytest.raises(BuildError, match=r"must lie in \[-1, 1\]"):
        build(torch.rand(20, 3, 32, 32) * 255, ae[0])
    with pytest.raises(TypeError, match=r"build_study got unknown keyword\(s\): 'step' \(did you mean 'steps'\?\)"):
        Study.build(resnet18(), ["layer2"], folder, ae=ae[0], step=3)
    with pytest.raises(TypeError, match=r"'bogus'; it takes ae, "):
        Study.build(resnet18(), ["layer2"], folder, ae=ae[0], bogus=1)


def test_study_feature_cache_is_the_parts_setting():
    "Study.FEATURE_CACHE reads and sets the cache size of its parts (where `features` keeps its results)."
    s = Study(nn.Identity(), {"final": nn.Identity()})
    assert s.FEATURE_CACHE == s.parts.FEATURE_CACHE == 48
    s.FEATURE_CACHE = 0
    assert s.parts.FEATURE_CACHE == 0


def test_a_folder_without_class_subfolders_is_one_class(folder, ae, tmp_path):
    "Your own photos in one folder: the images directly inside it are read, as ImageFolder reads one class."
    from invnb.features import image_batches
    flat = tmp_path / "photos"; flat.mkdir()
    for p in sorted(folder.glob("*/*.png")): (flat / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    n, batches, _ = image_batches(flat, batch_size=64, size=32)
    x = torch.cat(list(batches))
    assert n == len(x) == len(list(folder.glob("*/*.png"))) and x.shape[1:] == (3, 32, 32)
    ref = torch.stack([im for im, _ in load_image_folder(folder, size=32)])    # the same images, in another order
    assert torch.allclose(x.sum(), ref.sum(), rtol=1e-4)


def test_tensor_dataset_and_loader_give_the_same_codes(folder, ae):
    from torch.utils.data import DataLoader, TensorDataset
    from invnb.features import encode_and_features, probes_of
    x = torch.stack([im for im, _ in load_image_folder(folder, size=32)])
    probes = probes_of(resnet18(), ["layer2"])
    ref = encode_and_features(ae[0], probes, x, device="cpu")
    for images in (TensorDataset(x, torch.zeros(len(x))), DataLoader(TensorDataset(x), batch_size=5), folder):
        codes, feats, _, info = encode_and_features(ae[0], probes, images, device="cpu")
        assert info["n"] == 24
        torch.testing.assert_close(codes["mean"], ref[0]["mean"]); torch.testing.assert_close(feats["layer2"], ref[1]["layer2"])


def test_factors_train_e(folder, ae):
    labels = torch.tensor([t for _, t in load_image_folder(folder, size=32).samples])
    study = build(folder, ae[0], layers=["layer3"], factors={"shape": labels})
    assert study.e is not None and list(study.e.factors) == ["shape"]
    x = torch.stack([load_image_folder(folder, size=32)[i][0] for i in range(6)])
    assert set(study.share(x, "layer3", n_outer=4, n_inner=3)) == {"residual", "shape"}


# -- recipes and loading ------------------------------------------------------------------------------------------

def test_recipes(tmp_path):
    assert torchvision_recipe(resnet18()) == {"torchvision": "resnet18"}
    assert torchvision_recipe(resnet18(num_classes=3)) is None and torchvision_recipe(nn.Linear(2, 2)) is None
    # a study folder never makes invnb call a function it names, imported or not, whatever its arguments
    for spec, kwargs in (("no_such_pkg.models:make", {}), ("torchvision.models:resnet18", {}),
                         ("subprocess:getoutput", {"cmd": f"touch {tmp_path / 'ran'}"})):
        with pytest.raises(BuildError, match="does not call functions named in a study folder"):
            model_from_recipe({"builder": spec, "kwargs": kwargs})
    assert not (tmp_path / "ran").exists()
    from torchvision.models import inception_v3, resnet50
    assert torchvision_recipe(resnet50(replace_stride_with_dilation=[False, True, True])) is None   # same shapes
    assert torchvision_recipe(inception_v3(init_weights=False, transform_input=True)) is None        # no weights differ
    with pytest.raises(BuildError, match="builds a torchvision.models.resnet.ResNet, but the study saved a x.Y"):
        model_from_recipe({"torchvision": "resnet18"}, expect="x.Y")


def test_load_without_a_recipe_asks_for_the_model(folder, ae, tmp_path):
    study = build(folder, ae[0], layers=["layer3"], model=resnet18(num_classes=3))   # no builder matches: no recipe
    assert "recipe" not in study.meta
    study.save(tmp_path / "s")
    with pytest.raises(ValueError, match=r"pass them back, e.g. Study.load\(.*models=\{'model': model\}"):
        Study.load(tmp_path / "s")
    assert Study.load(tmp_path / "s", models={"model": resnet18(num_classes=3)}).layers() == ["layer3"]


def test_model_specs_and_checkpoints(tmp_path, monkeypatch):
    import torchvision
    net = resnet18()
    torch.save(net.state_dict(), tmp_path / "ok.pt")
    m, recipe = model_from_spec("torchvision:resnet18", checkpoint=tmp_path / "ok.pt")
    assert torch.equal(m.model.fc.weight, net.fc.weight) and recipe["weights"] is None and recipe["adapter"]["size"] is None
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "wrapped.pt")
    assert load_state_dict_file(tmp_path / "wrapped.pt").keys() == net.state_dict().keys()
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(BuildError, match="holds a list, not a state dict"):
        model_from_spec("torchvision:resnet18", checkpoint=tmp_path / "list.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pt")                    # a whole pickled module: refused
    with pytest.raises(BuildError, match=r"cannot be read with torch.load\(weights_only=True\)"):
        load_state_dict_file(tmp_path / "pickled.pt")
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "other.pt")
    with pytest.raises(BuildError, match="does not fit torchvision's resnet18"):
        model_from_spec("torchvision:resnet18", checkpoint=tmp_path / "other.pt")
    with pytest.raises(BuildError, match=r"no classification model 'resnet19'; closest: \['resnet18'"):
        model_from_spec("torchvision:resnet19")
    with pytest.raises(BuildError, match=r"no weights 'IMAGENET9'; choose one of \['IMAGENET1K_V1'"):
        model_from_spec("torchvision:resnet18", weights="IMAGENET9")
    def offline(*a, **k):
        if k.get("weights") is not None: raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
        return resnet18()
    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(BuildError, match="could not download the IMAGENET1K_V1 weights of resnet18.*pass `checkpoint`, a file"):
        model_from_spec("torchvision:resnet18", weights="IMAGENET1K_V1")


# -- the command --------------------------------------------------------------------------------------------------

def test_cli_study_report_reload_and_rerun(folder, ae, tmp_path, monkeypatch, capsys, caplog):
    out = tmp_path / "run"
    args = ["study", "--model", "torchvision:resnet18", "--images", str(folder), "--layers", "layer2,layer3",
            "--ae", str(ae[1]), "--out", str(out), *CLI_T]
    assert main(args) == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["kind"] == "study" and m["layers"] == ["layer2", "layer3"]
    assert set(m["results"]["eq19"]["model"]) == {"layer2", "layer3"} and set(m["results"]["image_variance"]["model"]) == {"layer2", "layer3"}
    page = (out / "report.html").read_text()
    assert "Eq. 19" in page and page.count("data:image/png;base64") >= 3 and "layer3" in page
    study = Study.load(out / "study")                                       # the recipe: torchvision + ImageNet adapter
    assert study.meta["recipe"]["torchvision"] == "resnet18" and type(study.models["model"]).__name__ == "Adapted"
    x = torch.stack([load_image_folder(folder, size=32)[i][0] for i in range(2)])
    assert study.sample(x, "layer2", 3).shape == (2, 3, 3, 32, 32)
    saved = {p: p.read_bytes() for p in (out / "study" / "t").glob("*.safetensors")}   # every t once, in study/t
    assert sorted(p.name for p in saved) == ["model__layer2.safetensors", "model__layer3.safetensors",
                                             "model__layer3__seed1.safetensors", "shuffled_z.safetensors",
                                             "unconditional.safetensors"]
    import invnb.invariances
    for m, fn in ((fitting, "fit_invariances"), (invnb.invariances, "fit_invariances_stacked")):
        monkeypatch.setattr(m, fn, lambda *a, **k: pytest.fail("a finished t was trained again"))
    assert main(args) == 0, capsys.readouterr().err                         # the rerun loads every t
    assert {p: p.read_bytes() for p in (out / "study" / "t").glob("*.safetensors")} == saved
    said = capsys.readouterr().out + caplog.text       # the `invnb` logger: stdout, or pytest's handler when it has one
    assert "loaded the finished t's of ['layer2', 'layer3']" in said
    secs = json.loads((out / "metrics.json").read_text())["seconds"]         # the rerun's report: no earlier 'report' time
    assert "report" not in secs and secs["total"] == round(sum(v for k, v in secs.items() if k != "total"), 1), secs


def test_cli_bad_inputs_are_one_line_errors(folder, ae, tmp_path, capsys):
    base = ["study", "--model", "torchvision:resnet18", "--images", str(folder), *CLI_T]
    def run(*extra):
        code = main([*base, *extra]); return code, capsys.readouterr().err
    code, err = run("--layers", "layer2,layr3", "--ae", str(ae[1]), "--out", str(tmp_path / "a"))
    assert code == 2 and "unknown layer 'layr3'" in err and "Closest: ['layer3'" in err and not (tmp_path / "a").exists()
    code, err = run("--layers", "layer2", "--out", str(tmp_path / "b"))
    assert code == 2 and "--ae is missing" in err and "--train-ae" in err and "train_autoencoder" in err
    torch.save({"weights": [1, 2]}, tmp_path / "bad.pt")
    code, err = run("--layers", "layer2", "--ae", str(ae[1]), "--checkpoint", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "c"))
    assert code == 2 and "not a state dict" in err and err.count("\n") == 1
    code, err = run("--layers", "layer2", "--ae", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "d"))
    assert code == 2 and "does not exist" in err


def test_invnb_study_under_torchrun_shares_the_t_s_out_and_equals_one_process(folder, tmp_path):
    """2 ranks (gloo): the autoencoder trained data-parallel, one t per layer on each rank, rank 0's report. The same
    autoencoder and layers in one process at the same thread count give bit-identical t's."""
    import os, subprocess, sys
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"): env.pop(k, None)
    base = ["-m", "invnb", "study", "--model", "torchvision:resnet18", "--images", str(folder), "--layers",
            "layer2,layer3", "--t-seeds", "3", *[a for a in CLI_T if a != "--no-progress"]]   # 5 t's: 2 stacks
    two, one = tmp_path / "two", tmp_path / "one"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *base,
                        "--train-ae", "10", "--size", "32", "--out", str(two)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "rank 0/2: 1 of 2 fits to run here" in p.stdout + p.stderr
    assert (two / "report.html").is_file() and not (two / ".rank1" / "cache").exists()   # in memory: no disk cache
    q = subprocess.run([sys.executable, *base, "--ae", str(two / "ae.safetensors"), "--out", str(one)],   # the same ae
                       capture_output=True, text=True, env=env, timeout=600)
    assert q.returncode == 0, q.stdout[-3000:] + q.stderr[-3000:]
    files = sorted(p.name for p in (two / "study" / "t").glob("*.safetensors"))
    assert len(files) == 6 and files == sorted(p.name for p in (one / "study" / "t").glob("*.safetensors"))
    for f in files: assert (one / "study" / "t" / f).read_bytes() == (two / "study" / "t" / f).read_bytes(), f


def test_study_build_threads_its_device_through_every_step(folder, ae, monkeypatch):
    "Every device choice inside Study.build (features, codes, each t's fit) gets the caller's device, never 'auto'."
    import invnb.features, invnb.train
    seen, real = [], invnb.train.pick_device
    def spy(device="auto"):
        seen.append(str(device)); return real("cpu")
    for m in (fitting, invnb.build, invnb.features, invnb.train): monkeypatch.setattr(m, "pick_device", spy)
    Study.build(resnet18(), ["layer2", "layer3"], folder, ae=ae[0], steps=3, t_size=T, device="cpu:0", progress=False)
    assert len(seen) >= 3 and set(seen) == {"cpu:0"}, seen      # one pass of features and codes, one fit per layer


def test_a_damaged_finished_t_is_trained_again(folder, ae, tmp_path):
    out = tmp_path / "run"
    build(folder, ae[0], out=out)
    (out / "study" / "t" / "model__layer2.safetensors").write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="cannot be loaded.*making it again"):
        study = build(folder, ae[0], out=out)
    assert study.meta["images"]["reused"] == ["layer3"] and study.meta["images"]["trained"] == ["layer2"]
    x = torch.stack([load_image_folder(folder, size=32)[i][0] for i in range(2)])
    assert study.sample(x, "layer2", 2).shape == (2, 2, 3, 32, 32)


def test_a_builder_beside_the_user_is_found_by_the_console_script(tmp_path, monkeypatch):
    # `invnb study --model my_nets:build` with my_nets.py in the current folder: the console script has no '' on sys.path
    import sys
    from invnb.recipes import import_builder
    (tmp_path / "beside_me_nets.py").write_text("def build():\n    return 'built'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "beside_me_nets", raising=False)
    assert import_builder("beside_me_nets:build", may_import=True)() == "built"
    with pytest.raises(BuildError, match="put no_such_nets.py in the current folder or its folder on PYTHONPATH"):
        import_builder("no_such_nets:build", may_import=True)


def test_study_build_checks_its_factors_and_its_settings_before_training(folder, ae, tmp_path, monkeypatch):
    "Factors of the wrong length are named before the split; a rebuild into the same out with other t settings is refused."
    monkeypatch.setattr(fitting, "fit_invariances", lambda *a, **k: pytest.fail("trained despite a bad input"))
    with pytest.raises(BuildError, match=r"`factors` must give one label per image \(24\); got lengths \{'a': 23\}"):
        build(folder, ae[0], factors={"a": torch.zeros(23, dtype=torch.long)})
    monkeypatch.undo()
    net = resnet18()
    build(folder, ae[0], model=net, out=tmp_path / "run", layers=["layer2"])
    with pytest.raises(BuildError, match=r"other settings or images \(seed, split.held_out differ\)"):
        build(folder, ae[0], model=net, out=tmp_path / "run", layers=["layer2"], seed=1)
