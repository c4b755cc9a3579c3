"`invnb colormnist`: the stages, the run folder, the report and `invnb check`."
import dataclasses
import errno
import json
import re
import shutil
import pytest
import torch

from invnb import colormnist, runs
from invnb.cli import main
from invnb.colormnist import run_colormnist
from invnb.profiles import PROFILES, STAGES
from invnb.runs import RunError, RunInterrupted
from invnb.report import check_run, checks, validate_metrics
from invnb.results import Estimate
from invnb.study import Study

quiet = dict(device="cpu", progress=False, log=lambda s: None)


def numbers(out):
    return json.loads((out / "metrics.json").read_text())["results"]


def test_smoke_run_writes_a_well_formed_report_and_metrics(smoke_run):
    out, report, lines = smoke_run
    m = json.loads((out / "metrics.json").read_text())
    assert validate_metrics(m) == [] and check_run(out) == []
    prof = PROFILES["smoke"]
    r = m["results"]
    assert [r["steps"][c] for c in m["checkpoints"]] == [0, 15, 30]
    assert list(r["eq19"][m["final_model"]]) == list(prof.layers)
    assert m["run"]["environment"]["threads"] == torch.get_num_threads()
    assert m["run"]["environment"]["torch"] == torch.__version__ and m["run"]["environment"]["device"] == "cpu"
    page = report.read_text()
    assert page.count("<script type='text/javascript'>") == 1          # plotly.js embedded once
    assert page.count('class="plotly-graph-div"') == 5                   # Eq. 19; share and Eq. 20 over steps and layers
    outside_js = re.sub(r"<script type='text/javascript'>.*?</script>", "", page, count=1, flags=re.S)
    assert not re.search(r"<(script|img|link|iframe)[^>]*(src|href)=['\"]?https?://", outside_js)  # nothing fetched
    assert outside_js.count("data:image/png;base64,") == len(m["figures"]) == len(prof.layers) + prof.n_checkpoints - 1
    for stage in STAGES[:-1]:
        assert f"<td>{stage}</td>" in page
    ceilings = r["diagnostics"]["ceiling"]                                # one per t, beside its agreement
    assert set(ceilings) == {f"{mm}__{l}" for mm, ls in r["t_checks"].items() for l in ls}
    rows = [what for what, _, _ in checks(m) if "ceiling" in what]
    assert len(rows) == len(prof.layers) and not any("(≥ 80%)" in what for what, _, _ in checks(m))
    assert re.search(r"f keeps its prediction on \d\.\d\d ± \d\.\d\d of \d\.\d\d", page)
    assert any("[stage 7/7] report" in l for l in lines) and any("left" in l for l in lines)


def test_smoke_run_saves_a_study_that_loads(smoke_run):
    out, _, _ = smoke_run
    study = Study.load(out / "study")
    m = json.loads((out / "metrics.json").read_text())
    final = m["final_model"]
    assert study.default_model == final and study.layers(final) == list(PROFILES["smoke"].layers)
    assert study.results.eq19[final]["softmax"] == Estimate.from_json(m["results"]["eq19"][final]["softmax"])
    assert study.results.to_json() == m["results"]
    assert set(study.results.accuracy) == set(study.models) and study.meta["environment"]["threads"] == torch.get_num_threads()
    x = torch.zeros(2, 3, 28, 28)
    assert study.sample(x, "softmax", n=3, generator=torch.Generator().manual_seed(0)).shape == (2, 3, 3, 28, 28)


def test_smoke_run_reports_the_spread_over_seeds_of_t(smoke_run):
    "t at (final model, checkpoint layer) is trained with t_seeds seeds; seed 1 is the study's own t, on the same draws."
    out, report, _ = smoke_run
    m, prof = json.loads((out / "metrics.json").read_text()), PROFILES["smoke"]
    sp = m["results"]["diagnostics"]["seed_spread"]
    assert (sp["model"], sp["layer"]) == (m["final_model"], prof.checkpoint_layer) and len(sp["eq19"]) == prof.t_seeds
    assert sp["eq19"][0] == m["results"]["eq19"][m["final_model"]][prof.checkpoint_layer]
    assert sp["share"]["bg"][0] == m["results"]["share"][m["final_model"]][prof.checkpoint_layer]["bg"]
    assert sp["eq19"][1] != sp["eq19"][0]                                   # another seed: another t
    assert (out / "study" / "t" / f"{m['final_model']}__{prof.checkpoint_layer}__seed1.safetensors").is_file()
    assert "t's seed: how far the numbers move" in report.read_text()


def test_validate_metrics_finds_problems(smoke_run):
    good = json.loads((smoke_run[0] / "metrics.json").read_text())
    final = good["final_model"]
    copy = lambda: json.loads(json.dumps(good))
    m = copy(); m["results"]["eq19"][final]["softmax"]["se"] = -0.1
    assert validate_metrics(m) == [f"eq19[{final}][softmax]: standard error -0.1 < 0"]
    m = copy(); m["checkpoints"].pop()
    assert "2 checkpoints, the profile has 3" in validate_metrics(m)
    m = copy(); m["results"]["eq20"][final]["softmax"]["bg"]["value"] = float("nan")
    assert validate_metrics(m) == [f"eq20[{final}][softmax][bg] = nan ± 0.000 is not a share in [0, 1]".replace(
        "0.000", f"{good['results']['eq20'][final]['softmax']['bg']['se']:.3f}")]
    m = copy(); del m["results"]["image_variance"][final]
    assert any("image_variance" in p for p in validate_metrics(m))
    m = copy(); m["results"]["diagnostics"]["autoencoder"]["mse"] = -0.5
    assert validate_metrics(m) == ["autoencoder mse -0.5 is not >= 0"]
    m = copy(); del m["results"]["share"]["step000000"]
    assert any("share[step000000][features.11]" in p for p in validate_metrics(m))
    m = copy(); del m["results"]["diagnostics"]["factors"]
    assert validate_metrics(m) == ["diagnostics lack e's factor report (diagnostics['factors'])"]
    m = copy(); m["results"]["diagnostics"]["factors"]["correlation"]["bg"]["fg"] = 1.5
    assert validate_metrics(m) == ["e's pair correlations lie outside [-1, 1]"]


def test_smoke_run_sizes_e_from_the_data_and_reports_it(smoke_run):
    "e's slice sizes come from the pair statistics; its held-out table and each t's kept step reach the report."
    from invnb.factors import FactorSizes
    from invnb.report import checks
    out, report, _ = smoke_run
    sizes = FactorSizes(**json.loads((out / "study" / "factor_sizes.json").read_text()))
    study = Study.load(out / "study")
    assert dict(study.e.factors) == sizes.sizes and list(sizes.sizes) == list(colormnist.FACTORS)
    m = json.loads((out / "metrics.json").read_text())
    fac = m["results"]["diagnostics"]["factors"]
    assert list(fac["correlation"]) == list(colormnist.FACTORS) and set(fac["own"]) == set(colormnist.FACTORS)
    kept = m["results"]["diagnostics"]["t_training"]
    prof = PROFILES["smoke"]
    # one t per layer and per other checkpoint, the unconditional flow, the null control, and the other seeds of t
    assert {"unconditional", "shuffled_z"} <= set(kept)
    assert len(kept) == len(prof.layers) + prof.n_checkpoints - 1 + 2 + prof.t_seeds - 1
    assert all(0 < k["best_step"] <= prof.t_steps and k["best_step"] % prof.t_val_every == 0 for k in kept.values())
    rows = {what: ok for what, _, ok in checks(m)}
    assert all(any(w.startswith(f"e: held-out pairs sharing {f}") for w in rows) for f in colormnist.FACTORS)
    page = report.read_text()
    assert "e: does each slice hold its factor?" in page and "kept step" in page


def test_interrupted_run_resumes_to_the_same_numbers(smoke_run, tmp_path):
    out = tmp_path / "run"
    assert run_colormnist(out, "smoke", until="classifier", **quiet) is None
    state = json.loads((out / "state.json").read_text())
    assert list(state["stages"]) == ["data", "autoencoder", "classifier"] and not state["finished"]
    lines = []
    run_colormnist(out, "smoke", device="cpu", progress=False, log=lines.append)
    assert any("resuming the smoke run" in l for l in lines)
    assert numbers(out) == numbers(smoke_run[0])


def test_finished_run_is_not_redone_without_force(smoke_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out)
    before = (out / "metrics.json").read_bytes()
    lines = []
    run_colormnist(out, "smoke", device="cpu", progress=False, log=lines.append)
    assert "Nothing to do" in lines[-1] and (out / "metrics.json").read_bytes() == before
    with pytest.raises(RunError, match="holds a run with profile 'smoke' and seed 0; this run asks for profile 'smoke' and seed 1"):
        run_colormnist(out, "smoke", seed=1, log=lambda s: None)
    changed = dataclasses.replace(PROFILES["smoke"], t_steps=41)          # same name, other settings
    with pytest.raises(RunError, match=r"made with other settings \(t_steps differ"):
        run_colormnist(out, changed, log=lambda s: None)
    lines = []
    run_colormnist(out, "smoke", seed=1, device="cpu", force=True, progress=False, log=lines.append)
    assert lines[0].startswith("--force: deleting the earlier run")
    assert json.loads((out / "state.json").read_text())["seed"] == 1


def test_a_copied_run_folder_uses_its_own_checkpoints(smoke_run, tmp_path):
    "records.json holds paths relative to the folder: --force on the original does not leak into the copy."
    copy = tmp_path / "copy"
    shutil.copytree(smoke_run[0], copy)
    records = json.loads((copy / "train" / "classifier" / "records.json").read_text())
    assert all(not r["file"].startswith("/") for r in records)
    for r in records: (smoke_run[0] / "train" / "classifier" / r["file"]).rename(tmp_path / r["file"])   # the original's go away
    try:
        state = json.loads((copy / "state.json").read_text()); state["finished"] = False
        (copy / "state.json").write_text(json.dumps(state))
        run_colormnist(copy, "smoke", **quiet)
        assert numbers(copy) == numbers(smoke_run[0])
    finally:
        for r in records: (tmp_path / r["file"]).rename(smoke_run[0] / "train" / "classifier" / r["file"])


def test_other_data_is_refused(smoke_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out)
    real = colormnist.load_mnist
    def shifted(root=None):
        d = real(root)
        x, y = d["train"]
        return {**d, "train": (255 - x, y)}
    monkeypatch.setattr(colormnist, "load_mnist", shifted)
    with pytest.raises(RunError, match="holds a run on other data"):
        run_colormnist(out, "smoke", **quiet)


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    with runs.run_lock(out):
        with pytest.raises(RunError, match=r"in use by another invnb run \(pid \d+, started"):
            run_colormnist(out, "smoke", **quiet)


def test_damaged_files_are_found_and_redone(smoke_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out)
    t_file = sorted((out / "study" / "t").glob("*.safetensors"))[0]
    t_file.write_bytes(t_file.read_bytes()[:1000])                      # truncated
    (out / "report.html").write_text("")                                 # emptied
    assert main(["check", str(out)]) == 1
    err = capsys.readouterr().err
    assert t_file.name in err and "report.html" in err
    lines = []
    run_colormnist(out, "smoke", device="cpu", progress=False, log=lines.append)
    assert not any("Nothing to do" in l for l in lines)
    assert check_run(out) == [] and numbers(out) == numbers(smoke_run[0])
    (out / "metrics.json").write_text('{"format": 2, "res')                # truncated metrics: a message, no traceback
    assert main(["check", str(out)]) == 1
    assert "metrics.json is damaged" in capsys.readouterr().err


def test_a_truncated_state_is_named_and_force_still_works(smoke_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out)
    (out / "state.json").write_text('{"profile": "sm')
    with pytest.raises(RunError, match=r"state.json is damaged .* `force`"):
        run_colormnist(out, "smoke", **quiet)
    run_colormnist(out, "smoke", force=True, until="data", **quiet)
    assert list(json.loads((out / "state.json").read_text())["stages"]) == ["data"]


def test_bad_input_gives_clear_messages(tmp_path, monkeypatch, capsys):
    assert main(["colormnist", "--profile", "medium", "--out", str(tmp_path / "a")]) == 2
    assert "unknown profile 'medium'; choose one of smoke, quick, long, paper" in capsys.readouterr().err
    (tmp_path / "b").mkdir(); (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="is not empty and holds no invnb run"):
        run_colormnist(tmp_path / "b", "smoke", log=lambda s: None)
    with pytest.raises(RunError, match="unknown stage 'train'"):
        run_colormnist(tmp_path / "c", "smoke", until="train", log=lambda s: None)
    assert main(["colormnist", "--profile", "smoke", "--device", "tpu", "--out", str(tmp_path / "t")]) == 2
    assert "unknown or unavailable device 'tpu'" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["colormnist", "--profile", "smoke", "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["colormnist", "--profile", "smoke", "--out", str(tmp_path / "file" / "run")]) == 2   # not creatable
    assert "cannot write to" in capsys.readouterr().err
    Usage = type("Usage", (), {"free": 10 * 2 ** 20})
    monkeypatch.setattr(runs.shutil, "disk_usage", lambda p: Usage)
    with pytest.raises(RunError, match="not enough disk space .* 10 MB free, the smoke profile needs about 50 MB"):
        run_colormnist(tmp_path / "d", "smoke", log=lambda s: None)


def test_disk_full_during_a_stage_says_so(tmp_path, monkeypatch):
    def full(*args): raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(colormnist, "autoencoder_stage", full)
    with pytest.raises(RunError, match="no space left on the device while writing to .* in stage 'autoencoder'"):
        run_colormnist(tmp_path / "e", "smoke", **quiet)


def test_ctrl_c_says_where_and_how_to_continue(tmp_path, monkeypatch, capsys):
    def interrupted(*args): raise KeyboardInterrupt
    monkeypatch.setattr(colormnist, "factors_stage", interrupted)
    with pytest.raises(RunInterrupted, match="interrupted in stage 'factors'.*run the same command to continue"):
        run_colormnist(tmp_path / "f", "smoke", **quiet)
    assert main(["colormnist", "--profile", "smoke", "--no-progress", "--out", str(tmp_path / "f")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted in stage 'factors'" in err[0]


def test_check_command(smoke_run, tmp_path, capsys):
    assert main(["check", str(smoke_run[0])]) == 0
    assert main(["check", str(tmp_path)]) == 1
    assert "lacks metrics.json" in capsys.readouterr().err


def test_curve_explorer_reads_a_run(smoke_run):
    from invnb.widgets import CurveExplorer
    study = Study.load(smoke_run[0] / "study")
    r = numbers(smoke_run[0])
    ce = CurveExplorer(study, backend="plotly")
    ce.view_pick.value = CurveExplorer.VIEWS[1]
    assert ce.checkpoint_layer == "features.11" and list(ce.data) == [0, 15, 30]
    assert ce.kind_pick.value == "identifiable share"
    assert ce.data[30]["bg"].value == r["share"]["step000030"]["features.11"]["bg"]["value"]
    ce.kind_pick.value = "Eq. 20 (paper)"
    assert ce.data[30]["bg"].value == r["eq20"]["step000030"]["features.11"]["bg"]["value"]
    assert ce.figure.data[-1].name == "accuracy" and list(ce.figure.data[-1].y) == [r["accuracy"][c] for c in study.models]
    ce.view_pick.value = CurveExplorer.VIEWS[2]
    assert list(ce.data) == list(PROFILES["smoke"].layers) and ce.error is None


def test_fig4_claim_reads_the_crossing_from_the_numbers(smoke_run):
    from invnb.report import fig4_claim
    m = json.loads((smoke_run[0] / "metrics.json").read_text())
    first, last, cl = m["checkpoints"][0], m["checkpoints"][-1], m["checkpoint_layer"]
    def setting(d0, b0, d1, b1, se):
        x = json.loads(json.dumps(m))
        for c, (d, b) in ((first, (d0, b0)), (last, (d1, b1))):
            x["results"]["share"][c][cl]["digit"] = {"value": d, "se": se}
            x["results"]["share"][c][cl]["bg"] = {"value": b, "se": se}
        return fig4_claim(x, "share")
    got = setting(0.1, 0.6, 0.5, 0.2, 0.01)                  # the paper's picture
    assert (got["digit_rises"], got["bg_falls"], got["cross"], got["beyond_se"]) == (True, True, True, True)
    got = setting(0.1, 0.6, 0.5, 0.2, 0.15)                  # the same means, SEs that overlap at the end
    assert got["cross"] and not got["beyond_se"]
    got = setting(0.1, 0.6, 0.3, 0.4, 0.01)                  # digit rises, bg falls, no crossing
    assert got["digit_rises"] and got["bg_falls"] and not got["cross"]
    assert fig4_claim(m, "probes")["values"]["digit"] == [m["results"]["probes"][c][cl]["digit"] for c in (first, last)]
    assert "The Fig. 4 claim at" in smoke_run[1].read_text()


def test_stage_5_stacked_equals_one_by_one_and_colourings_add_data(smoke_run, tmp_path):
    "Stage 5 on the smoke run's models: the checkpoint layer's t's as a stack equal them trained one by one; with "
    "t_colourings=2 the t's train on the digits in two colourings, the second encoded and cached."
    out = smoke_run[0]
    study = Study.load(out / "study")
    data = colormnist.load_data(PROFILES["smoke"], 0)
    codes, codes_val = (colormnist.encode_dataset(study.ae.encode, x, device="cpu") for x in (data.xt, data.xv))
    jobs = colormnist.invariance_jobs(PROFILES["smoke"], list(study.models))

    def stage5(name, **changes):
        run = colormnist.RunSpec(tmp_path / name, dataclasses.replace(PROFILES["smoke"], **changes), 0, torch.device("cpu"),
                                 False, lambda s: None)
        (run.study_dir / "t").mkdir(parents=True)
        train = colormnist.t_training_set(run, data, study.ae, codes)
        colormnist.invariances_stage(run, data, codes, codes_val, study.models, jobs, train)
        return run, train

    stacked, _ = stage5("stacked")
    alone, _ = stage5("alone", t_stack=1)
    files = sorted(p.name for p in (stacked.study_dir / "t").glob("*.safetensors"))
    assert files == sorted(p.name for p in (alone.study_dir / "t").glob("*.safetensors")) and len(files) >= 6
    for f in files:
        # float rounding grows over a fit (measured here: up to 0.005 nats in a held-out NLL near 60; tests/test_stacked.py
        # checks 1e-4 where a run is not chaotic), so the records are compared, each validation of the curve
        ra, rb = (json.loads((r.study_dir / "t" / f).with_suffix(".training.json").read_text()) for r in (stacked, alone))
        assert ra["best_step"] == rb["best_step"] and max(abs(x[1] - y[1]) for x, y in zip(ra["val_nll"], rb["val_nll"])) < 2e-2
    run, (xt, c2) = stage5("colourings", t_colourings=2)
    assert len(xt) == len(c2["mean"]) == 2 * len(data.xt) and torch.equal(xt[:len(data.xt)], data.xt)
    assert not torch.equal(xt[len(data.xt):], data.xt)          # the same digits in other colours
    assert (run.out / "cache" / "codes_train_colouring1.safetensors").exists()
    assert len(list((run.study_dir / "t").glob("*.safetensors"))) == len(files)


def test_t_colourings_differ_are_fixed_by_the_seed_and_resume_from_their_cache(smoke_run, tmp_path):
    "K colourings of the training digits: each other colours than the rest, the same under a seed, reread on a rerun."
    out = smoke_run[0]
    study = Study.load(out / "study")
    data = colormnist.load_data(PROFILES["smoke"], 0)
    codes = colormnist.encode_dataset(study.ae.encode, data.xt, device="cpu")
    prof = dataclasses.replace(PROFILES["smoke"], t_colourings=3)
    spec = lambda d, seed=0: colormnist.RunSpec(tmp_path / d, prof, seed, torch.device("cpu"), False, lambda s: None)
    x1, c1 = colormnist.t_training_set(spec("a"), data, study.ae, codes)
    x2, c2 = colormnist.t_training_set(spec("b"), data, study.ae, codes)
    assert torch.equal(x1, x2) and torch.equal(c1["mean"], c2["mean"])                # fixed by the seed
    n = len(data.xt)
    parts = x1.split(n)
    assert len(parts) == 3 and all(not torch.equal(parts[i], parts[j]) for i in range(3) for j in range(i + 1, 3))
    x3, _ = colormnist.t_training_set(spec("c", seed=1), data, study.ae, codes)
    assert not torch.equal(x3[n:], x1[n:])                                            # another seed, other colours
    cache = tmp_path / "a" / "cache" / "codes_train_colouring2.safetensors"
    stamp = cache.stat().st_mtime_ns
    _, again = colormnist.t_training_set(spec("a"), data, study.ae, codes)            # a rerun reads its cache
    assert cache.stat().st_mtime_ns == stamp and torch.equal(again["mean"], c1["mean"])


def test_a_training_state_this_invnb_cannot_resume_is_deleted_and_the_t_trained_from_step_0(smoke_run, tmp_path):
    "A t's training state written for another t (as an earlier invnb's may be) is not a dead end for CLI users: "
    "the stage says so, deletes it and trains the t from step 0 (the same t as a run without that state)."
    from invnb import fitting
    from invnb.inn import InvarianceINN
    study = Study.load(smoke_run[0] / "study")
    data = colormnist.load_data(PROFILES["smoke"], 0)
    codes, codes_val = (colormnist.encode_dataset(study.ae.encode, x, device="cpu") for x in (data.xt, data.xv))
    probe = study.probe("features.11")
    feats, val_feats = (torch.cat([probe.phi(b) for b in x.split(200)]) for x in (data.xt, data.xv))
    lines = []
    spec = lambda d: colormnist.RunSpec(tmp_path / d, PROFILES["smoke"], 0, torch.device("cpu"), False, lines.append)
    stale = spec("stale")
    other = InvarianceINN(codes["mean"].shape[1], tuple(feats.shape[1:]), n_blocks=1, hidden=8, depth=1, embed_dim=4)
    fitting.fit_invariances(codes, feats, t=other, steps=2, ckpt_dir=stale.out / "train" / "t" / "x", ckpt_every=1,
                            progress=False)
    assert list((stale.out / "train" / "t" / "x").iterdir())
    (stale.study_dir / "t").mkdir(parents=True)
    from invnb.invariances import fit_one_t
    t = colormnist.t_spec(PROFILES["smoke"])
    got = fit_one_t(stale, t, "x", codes, feats, codes_val, val_feats, "t x")
    assert any("cannot resume" in l and "deleted" in l for l in lines)
    (spec("clean").study_dir / "t").mkdir(parents=True)
    want = fit_one_t(spec("clean"), t, "x", codes, feats, codes_val, val_feats, "t x")
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), want.state_dict().values()))


def test_the_preset_gets_the_inversion_baselines_of_the_study_door(smoke_run, tmp_path, capsys):
    "--baselines through `invnb colormnist`: the same function as `invnb study`'s, per layer of the final model, in "
    "metrics.json, the report and `invnb check`; a rerun of a run made without them is refused, naming the setting."
    copy = tmp_path / "copy"
    shutil.copytree(smoke_run[0], copy)
    base = ["colormnist", "--profile", "smoke", "--device", "cpu", "--no-progress"]
    assert main([*base, "--out", str(copy), "--baselines"]) == 2
    assert "baselines" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "f"), "--fid", "torchvision:mobilenet_v3_small"]) == 2
    assert "add --baselines" in capsys.readouterr().err and not (tmp_path / "f").exists()
    out = tmp_path / "bl"
    assert main([*base, "--out", str(out), "--baselines"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert sorted(m["baselines"]) == sorted(PROFILES["smoke"].layers)
    for b in m["baselines"].values():
        assert b["images"] == PROFILES["smoke"].n_fidelity and all(0 <= b[k] <= 1 for k in ("t", "decoder", "optimisation"))
        assert (out / "figures" / b["grid"]).is_file() and (out / b["decoder_file"]).is_file()
    assert "Baselines on the same layer and images" in (out / "report.html").read_text()
    assert main(["check", str(out)]) == 0
    assert json.loads((out / "state.json").read_text())["settings"]["baselines"] is True
