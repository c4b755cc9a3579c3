"Study: the analyses as methods, save/load of the whole folder, clear errors."
import pytest
import torch

from invnb.autoencoder import SmallAE
from invnb.inn import FactorINN, InvarianceINN
from invnb.classifier import ColorMNISTClassifier
from invnb.study import Study


@pytest.fixture(scope="module")
def study():
    torch.manual_seed(0)
    ts = {(m, "features.11"): InvarianceINN(64, (512, 3, 3), n_blocks=2, hidden=16, seed=i) for i, m in enumerate(["step0", "final"])}
    ts[("final", "classifier")] = InvarianceINN(64, (10, 1, 1), n_blocks=2, hidden=16)
    e = FactorINN(64, {"digit": 22, "fg": 11, "bg": 11}, n_blocks=2, hidden=16)
    s = Study(SmallAE(width=8), {"step0": ColorMNISTClassifier(seed=1), "final": ColorMNISTClassifier(seed=2)}, ts, e,
              results={"accuracy": {"final": 0.5}}, meta={"seed": 0, "note": "made by the test"})
    x = torch.rand(8, 3, 28, 28) * 2 - 1
    for (m, l) in ts: s.t(l, m)(torch.randn(16, 64), s.probe(l, m).phi(x[:4].repeat(4, 1, 1, 1)))  # initialise ActNorm
    e(torch.randn(16, 64))
    return s


def test_methods(study):
    x = torch.rand(6, 3, 28, 28) * 2 - 1
    assert study.layers() == ["features.11", "classifier"] and study.layers("step0") == ["features.11"]
    assert study.sample(x, "features.11", 3, torch.Generator().manual_seed(0)).shape == (6, 3, 3, 28, 28)
    v, se = study.eq19(x, "features.11", n_inner=5, n_outer=6, generator=torch.Generator().manual_seed(0))
    assert 0 <= v <= 1.5 and se >= 0
    r = study.eq20(x, "classifier", n_outer=4, n_inner=5, generator=torch.Generator().manual_seed(0))
    assert set(r) == {"residual", "digit", "fg", "bg"}
    x_adv, per_layer, shares = study.fgsm(x, eps=0.02)
    assert set(per_layer) == {"features.11", "classifier"} and (x_adv - x).abs().max() <= 0.02 + 1e-6
    assert shares == {"features.11": None, "classifier": None}
    study.compute_eq19(x, n_inner=4, n_outer=3, seed=0)
    assert all(v is not None for v in study.fgsm(x, eps=0.02)[2].values())
    assert study.swap(x, x.flip(0), "bg").shape == x.shape
    assert set(study.sensitivity(x, x.flip(0))) == {"reconstruction", "digit", "fg", "bg"}


def test_save_load_round_trip(study, tmp_path):
    again = Study.load(study.save(tmp_path / "s"))
    x = torch.rand(3, 3, 28, 28) * 2 - 1
    g = lambda: torch.Generator().manual_seed(1)
    for m, l in study.ts:
        assert torch.equal(again.sample(x, l, 2, g(), model=m), study.sample(x, l, 2, g(), model=m))
    assert again.results == study.results and again.meta == study.meta
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["ae.safetensors", "e.safetensors", "models", "study.json", "t"]


def test_diagnostics_are_typed_and_keep_their_json_keys(study, tmp_path):
    "t checks, the autoencoder's numbers and each t's training are records; study.json keeps their field names as keys."
    import json
    from invnb.results import AEDiagnostics, TCheck, TTraining
    x = torch.rand(8, 3, 28, 28, generator=torch.Generator().manual_seed(2)) * 2 - 1
    labels = torch.randint(10, (8,), generator=torch.Generator().manual_seed(3))
    checks = study.compute_t_checks(x[:4], x[4:], layers=["classifier"], n_samples=2, baseline_nll=50.0)
    assert isinstance(checks["classifier"], TCheck) and checks["classifier"].info_nats == 50.0 - checks["classifier"].val_nll
    ae = study.compute_reconstruction(x, labels, "final")
    assert isinstance(ae, AEDiagnostics) and ae.mse >= 0 and 0 <= ae.accuracy_reconstruction <= 1
    study.record_t_training(("final", "classifier"), best_step=20, best_val_nll=70.5, steps=40)
    saved = json.loads((study.save(tmp_path / "s") / "study.json").read_text())["results"]
    assert list(saved["t_checks"]["final"]["classifier"]) == ["train_nll", "val_nll", "nll_gap", "agreement",
                                                               "phi_distance", "info_nats", "agreement_se"]
    ceiling = saved["diagnostics"]["ceiling"]["final__classifier"]              # the oracle t's agreement, ± its SE
    assert set(ceiling) == {"value", "se"} and 0 <= ceiling["value"] <= 1
    assert list(saved["diagnostics"]["autoencoder"]) == ["mse", "psnr", "mse_sampled", "gamma", "accuracy_x",
                                                         "accuracy_reconstruction"]
    assert saved["diagnostics"]["t_training"] == {"final__classifier": {"best_step": 20, "best_val_nll": 70.5, "steps": 40}}
    again = Study.load(tmp_path / "s")
    assert again.results.diagnostics.training_of("final", "classifier") == TTraining(20, 70.5, 40)
    assert again.results.t_checks == study.results.t_checks


def test_load_in_a_fresh_process(study, tmp_path):
    "Study.load must know every model class without the caller importing their modules first."
    import subprocess, sys
    folder = study.save(tmp_path / "s")
    code = f"from invnb.study import Study; s = Study.load({str(folder)!r}); print(type(s.ae).__name__, s.layers())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "SmallAE ['features.11', 'classifier']" in r.stdout


def test_errors(study, tmp_path):
    with pytest.raises(KeyError, match="no t for model 'final' at layer 'features.2'"):
        study.t("features.2")
    with pytest.raises(KeyError, match="unknown model 'step9'"):
        study.probe("features.11", "step9")
    with pytest.raises(FileNotFoundError, match="study.json"):
        Study.load(tmp_path)
    with pytest.raises(ValueError, match="at least one model"):
        Study(SmallAE(width=8), {})


def test_names_cannot_leave_the_folder_and_the_index_cannot_point_outside(study, tmp_path):
    import json
    from invnb.checkpoint import CheckpointError
    hostile = Study(study.ae, {"../../m": study.models["final"]}, {("../../m", "../x"): study.t("features.11")})
    folder = hostile.save(tmp_path / "a" / "s")
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.safetensors"))
    assert written == ["a/s/ae.safetensors", "a/s/models/m.safetensors", "a/s/t/m__x.safetensors"]
    assert list(Study.load(folder).ts) == [("../../m", "../x")]
    idx = json.loads((folder / "study.json").read_text())
    idx["ts"][0]["file"] = "../outside.safetensors"
    (folder / "study.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="outside the study folder"):
        Study.load(folder)
    (folder / "study.json").write_text('{"format": 2, "models": [')
    with pytest.raises(CheckpointError, match="study.json is damaged"):
        Study.load(folder)


def test_repr_says_what_the_study_holds(study):
    r = repr(study)
    assert "2 model(s)" in r and "features.11" in r and "'digit'" in r and "results:" in r


def test_compute_factor_report_stores_e_s_held_out_table(colormnist_study):
    study, ds = colormnist_study
    x, labels = ds.images()[:300], {k: v[:300] for k, v in ds.labels.items()}
    rep = study.compute_factor_report(x, labels, n_pairs=500)
    got = study.results.diagnostics.factors
    assert got.to_json() == rep.to_dict() and list(got.correlation) == ["digit", "fg", "bg"]
    assert all(-1 <= v <= 1 for row in got.correlation.values() for v in row.values())
    bare = Study(study.ae, study.models, study.ts, None)
    with pytest.raises(ValueError, match="no semantic INN e"):
        bare.compute_factor_report(x, labels)


def test_features_are_remembered_only_while_images_and_model_are_unchanged(colormnist_study):
    study, ds = colormnist_study
    x = ds.images()[:40].clone()
    a = study.features(x, "features.8")
    assert study.features(x, "features.8") is a                              # the same images: one pass
    torch.testing.assert_close(a, study.probe("features.8").phi(x))
    assert study.features(x[:20], "features.8") is not a                     # other images (a view of fewer rows)
    x.mul_(0.5)                                                              # changed in place: computed again
    torch.testing.assert_close(study.features(x, "features.8"), study.probe("features.8").phi(x))
    model = study.models[study.default_model]
    p = next(model.parameters())
    with torch.no_grad(): p.add_(1.0)                                        # weights changed: computed again
    try:
        torch.testing.assert_close(study.features(x, "features.8"), study.probe("features.8").phi(x))
    finally:
        with torch.no_grad(): p.sub_(1.0)


def test_a_study_of_a_user_model_saves_its_weights_and_takes_the_model_back(tmp_path):
    "Models that are not invnb models (torchvision, `Adapted`) are saved as weights; `load` asks for the model back."
    import torchvision
    from invnb.autoencoder import SmallAE
    from invnb.probe import Adapted, InputAdapter
    make = lambda seed: (torch.manual_seed(seed), Adapted(torchvision.models.squeezenet1_1(num_classes=10), InputAdapter(64)))[1]
    study = Study(SmallAE(width=8), {"final": make(0), "plain": torchvision.models.squeezenet1_1(num_classes=3)})
    study.save(tmp_path / "s")
    with pytest.raises(ValueError, match=r"saved as weights only .*invnb.probe.Adapted.*models=\{'final': model\}"):
        Study.load(tmp_path / "s")
    back = Study.load(tmp_path / "s", models={"final": make(1), "plain": torchvision.models.squeezenet1_1(num_classes=3)})
    for name in ("final", "plain"):
        for (k, a), b in zip(study.models[name].state_dict().items(), back.models[name].state_dict().values()):
            assert torch.equal(a, b), (name, k)
    x = torch.rand(2, 3, 28, 28) * 2 - 1
    torch.testing.assert_close(back.models["final"](x), study.models["final"](x))
    with pytest.raises(ValueError, match="does not fit its saved weights"):
        Study.load(tmp_path / "s", models={"final": make(0), "plain": torchvision.models.squeezenet1_1(num_classes=5)})
    with pytest.raises(ValueError, match=r"models \['other'\] are not in this study"):
        Study.load(tmp_path / "s", models={"other": make(0)})


def test_study_to_moves_every_part_and_forgets_cached_features():
    from invnb.autoencoder import SmallAE
    from invnb.classifier import ColorMNISTClassifier
    from invnb.inn import FactorINN, InvarianceINN
    ae = SmallAE(width=8)
    study = Study(ae, {"final": ColorMNISTClassifier(size=32)},
                  {("final", "softmax"): InvarianceINN(ae.zdim, 10, n_blocks=2, hidden=16, embed_dim=8)},
                  FactorINN(ae.zdim, {"digit": 2}, n_blocks=2, hidden=16))
    x = torch.rand(4, 3, 28, 28) * 2 - 1
    study.features(x, "softmax")
    assert "_features" in study.parts.__dict__          # the parts hold the cache of Φ
    assert study.to("meta") is study and "_features" not in study.parts.__dict__
    parts = [study.ae, *study.models.values(), *study.ts.values(), study.e]
    assert all(p.device.type == "meta" for m in parts for p in m.parameters())
