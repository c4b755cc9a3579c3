"The `invnb` command."
import subprocess
import sys

import pytest

from invnb.cli import main


def test_demo_runs_and_reloads(tmp_path, capsys):
    assert main(["demo", "--steps", "60", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "held-out NLL" in out and "identical NLLs: True" in out
    assert (tmp_path / "t.safetensors").is_file()


def test_bad_arguments_exit_with_a_message():
    r = subprocess.run([sys.executable, "-c", "from invnb.cli import main; main(['demo', '--steps', '0'])"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--steps must be at least 1" in r.stderr
    r = subprocess.run([sys.executable, "-c", "from invnb.cli import main; main(['nosuch'])"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr


# -- invnb colormnist --------------------------------------------------------------------------------------------
import dataclasses
import errno
import json
import re
import shutil

import torch

from invnb import cli
from invnb.cli import PROFILES, RunError, run_colormnist, validate_metrics
from invnb.study import Study


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("colormnist") / "run"
    lines = []
    report = run_colormnist(out, "smoke", device="cpu", progress=False, log=lines.append)
    return out, report, lines


def test_smoke_run_writes_a_well_formed_report_and_metrics(smoke_run):
    out, report, lines = smoke_run
    m = json.loads((out / "metrics.json").read_text())
    assert validate_metrics(m) == []
    prof = PROFILES["smoke"]
    assert [c["step"] for c in m["checkpoints"]] == [0, 15, 30]
    assert list(m["eq19"]) == list(prof.layers)
    assert all(0 <= d["value"] <= 1 and d["se"] >= 0 for d in m["eq19"].values())
    page = report.read_text()
    assert page.count("<script type='text/javascript'>") == 1          # plotly.js embedded once
    assert page.count('class="plotly-graph-div"') == 3                   # the three interactive curves
    outside_js = re.sub(r"<script type='text/javascript'>.*?</script>", "", page, count=1, flags=re.S)
    assert not re.search(r"<(script|img|link|iframe)[^>]*(src|href)=['\"]?https?://", outside_js)  # nothing fetched
    assert outside_js.count("data:image/png;base64,") == len(m["figures"]) == len(prof.layers) + prof.n_checkpoints - 1
    for stage in cli.STAGES[:-1]:
        assert f"<td>{stage}</td>" in page
    assert any("[stage 7/7] report" in l for l in lines) and any("left" in l for l in lines)


def test_smoke_run_saves_a_study_that_loads(smoke_run):
    out, _, _ = smoke_run
    study = Study.load(out / "study")
    m = json.loads((out / "metrics.json").read_text())
    final = m["final_model"]
    assert study.default_model == final and study.layers(final) == list(PROFILES["smoke"].layers)
    assert study.results["eq19"][final]["softmax"] == [m["eq19"]["softmax"]["value"], m["eq19"]["softmax"]["se"]]
    assert set(study.results["accuracy"]) == set(study.models)
    x = torch.zeros(2, 3, 28, 28)
    assert study.sample(x, "softmax", n=3, generator=torch.Generator().manual_seed(0)).shape == (2, 3, 3, 28, 28)


def test_validate_metrics_finds_problems(smoke_run):
    good = json.loads((smoke_run[0] / "metrics.json").read_text())
    m = json.loads(json.dumps(good)); m["eq19"]["softmax"]["se"] = -0.1
    assert validate_metrics(m) == ["eq19[softmax]: se -0.1 is not >= 0"]
    m = json.loads(json.dumps(good)); m["checkpoints"].pop()
    assert "2 checkpoints, the profile has 3" in validate_metrics(m)
    m = json.loads(json.dumps(good)); m["eq20_over_layers"]["softmax"]["bg"]["value"] = float("nan")
    assert validate_metrics(m) == ["eq20_over_layers[softmax][bg]: value nan not in [0, 1]"]
    m = json.loads(json.dumps(good)); del m["image_variance"]
    assert validate_metrics(m) == ["missing or malformed entry: KeyError: 'image_variance'"]


def test_interrupted_run_resumes_to_the_same_numbers(smoke_run, tmp_path):
    out = tmp_path / "run"
    assert run_colormnist(out, "smoke", device="cpu", progress=False, until="classifier", log=lambda s: None) is None
    state = json.loads((out / "state.json").read_text())
    assert list(state["stages"]) == ["data", "autoencoder", "classifier"] and not state["finished"]
    lines = []
    run_colormnist(out, "smoke", device="cpu", progress=False, log=lines.append)
    assert any("resuming the smoke run" in l for l in lines)
    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((smoke_run[0] / "metrics.json").read_text())
    assert a["eq19"] == b["eq19"] and a["eq20_over_checkpoints"] == b["eq20_over_checkpoints"]
    assert a["checkpoints"] == b["checkpoints"]


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


def test_bad_input_gives_clear_messages(tmp_path, monkeypatch, capsys):
    assert main(["colormnist", "--profile", "medium", "--out", str(tmp_path / "a")]) == 2
    assert "unknown profile 'medium'; choose one of smoke, quick, paper" in capsys.readouterr().err
    (tmp_path / "b").mkdir(); (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="is not empty and holds no invnb run"):
        run_colormnist(tmp_path / "b", "smoke", log=lambda s: None)
    with pytest.raises(RunError, match="unknown stage 'train'"):
        run_colormnist(tmp_path / "c", "smoke", until="train", log=lambda s: None)
    Usage = type("Usage", (), {"free": 10 * 2 ** 20})
    monkeypatch.setattr(cli.shutil, "disk_usage", lambda p: Usage)
    with pytest.raises(RunError, match="not enough disk space .* 10 MB free, the smoke profile needs about 50 MB"):
        run_colormnist(tmp_path / "d", "smoke", log=lambda s: None)


def test_disk_full_during_a_stage_says_so(tmp_path, monkeypatch):
    def full(self): raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(cli.ColorMNISTRun, "autoencoder", full)
    with pytest.raises(RunError, match="no space left on the device while writing to .* in stage 'autoencoder'"):
        run_colormnist(tmp_path / "e", "smoke", device="cpu", progress=False, log=lambda s: None)


def test_check_command(smoke_run, tmp_path, capsys):
    assert main(["check", str(smoke_run[0])]) == 0
    assert main(["check", str(tmp_path)]) == 1
    assert "lacks metrics.json" in capsys.readouterr().err


def test_curve_explorer_reads_a_run(smoke_run):
    from invnb.widgets import CurveExplorer
    study = Study.load(smoke_run[0] / "study")
    m = json.loads((smoke_run[0] / "metrics.json").read_text())
    ce = CurveExplorer(study)
    ce.view_pick.value = CurveExplorer.VIEWS[1]
    assert ce.checkpoint_layer == "features.12" and list(ce.data) == [0, 15, 30]
    assert ce.data[30]["bg"][0] == m["eq20_over_checkpoints"]["values"]["step000030"]["bg"]["value"]
    assert ce.figure.data[-1].name == "accuracy" and list(ce.figure.data[-1].y) == [c["val_accuracy"] for c in m["checkpoints"]]
    ce.view_pick.value = CurveExplorer.VIEWS[2]
    assert list(ce.data) == list(PROFILES["smoke"].layers) and ce.error is None
