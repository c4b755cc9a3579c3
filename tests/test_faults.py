"""Fault injection: SIGKILL a smoke run at random points of its stages; every resume must end with the same numbers.
And damaged or tampered run folders: found and made again, or refused, never silently used."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from invnb import train
from invnb.checkpoint import CheckpointError, read_meta
from invnb.cli import main
from invnb.colormnist import run_colormnist
from invnb.runs import RunError, artifacts, prepare_run, run_lock

RUN = "import sys; from invnb.cli import main; sys.exit(main())"
# the smoke profile with training-state checkpoints every 10 steps, below every training length (40-60 steps)
RUN_CKPT = ("import dataclasses, sys; from invnb.colormnist import PROFILES, run_colormnist; "
            "run_colormnist(sys.argv[1], dataclasses.replace(PROFILES['smoke'], ckpt_every=10), device='cpu', "
            "progress=False, log=print)")   # progress=False alone is silent: the stage lines are read from stdout


def _start(code: str, *args) -> subprocess.Popen:
    # CPU sums are bit-identical only at the same thread count: the killed run uses this process's
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen([sys.executable, "-u", "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for_stage(p: subprocess.Popen, stage: int):
    for line in p.stdout:
        if line.startswith(f"[stage {stage}/7]"): return
    raise AssertionError(f"the run ended before stage {stage}")


def kill_during(stage: int, out, delay: float) -> bool:
    "Start a smoke run in a subprocess, SIGKILL it `delay` s after stage `stage` starts; True if it was still running."
    p = _start(RUN, "colormnist", "--profile", "smoke", "--device", "cpu", "--no-progress", "--out", str(out))
    try:
        _wait_for_stage(p, stage)
        time.sleep(delay)
        alive = p.poll() is None
        p.send_signal(signal.SIGKILL)
        return alive
    finally:
        p.wait(timeout=60)
        p.stdout.close()


def results(out) -> dict:
    return json.loads((out / "metrics.json").read_text())["results"]


# CI kills the stages that resume a training state of their own (autoencoder, t's); --slow adds the others
@pytest.mark.parametrize("stage", [2, pytest.param(3, marks=pytest.mark.slow), pytest.param(4, marks=pytest.mark.slow),
                                   5, pytest.param(6, marks=pytest.mark.slow)])
def test_sigkill_then_resume_gives_identical_numbers(smoke_run, tmp_path, stage):
    delay = random.Random(stage).uniform(0.0, 1.5)                  # a random point, the same on every test run
    out = tmp_path / "run"
    assert kill_during(stage, out, delay), "the run finished before it could be killed"
    assert not json.loads((out / "state.json").read_text())["finished"]
    run_colormnist(out, "smoke", device="cpu", progress=False, log=lambda s: None)
    assert main(["check", str(out)]) == 0
    assert results(out) == results(smoke_run[0])


def test_sigkill_mid_training_resumes_from_the_training_state(smoke_run, tmp_path, monkeypatch):
    "ckpt_every below the training lengths: a t killed mid-training goes on from its saved step, to the same numbers."
    import dataclasses
    from invnb.colormnist import PROFILES
    out = tmp_path / "run"
    p = _start(RUN_CKPT, str(out))
    try:
        _wait_for_stage(p, 5)                                        # the t's: 40 steps each, a state every 10
        deadline, states = time.monotonic() + 120, []
        while not states and time.monotonic() < deadline and p.poll() is None:
            states = sorted((out / "train" / "t").glob("*/last.safetensors"))
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=60)
        p.stdout.close()
    assert states and states[0].is_file(), "no training state was written before the kill"
    step = read_meta(states[0])["step"]
    assert 0 < step < PROFILES["smoke"].t_steps
    loaded, load_tensors = [], train.load_tensors
    monkeypatch.setattr(train, "load_tensors", lambda path, *a: loaded.append(path) or load_tensors(path, *a))
    run_colormnist(out, dataclasses.replace(PROFILES["smoke"], ckpt_every=10), device="cpu", progress=False,
                   log=lambda s: None)
    assert states[0] in loaded                                       # fit went on from the killed t's state
    assert main(["check", str(out)]) == 0
    assert results(out) == results(smoke_run[0])


def _finished_fake_run(out):
    "A finished run folder of prepare_run's own kind (no training), with its artifacts recorded."
    with run_lock(out):
        state = prepare_run(out, "demo", 0, {}, {}, force=False, log=lambda s: None)
    (out / "metrics.json").write_text("{}"); (out / "report.html").write_text("<html></html>")
    state.update(finished=True, artifacts=artifacts(out))
    (out / "state.json").write_text(json.dumps(state))
    return state


@pytest.mark.parametrize("where", ["../victim.txt", "absolute", "study/link"])
def test_a_state_naming_a_file_outside_the_run_is_refused_and_deletes_nothing(tmp_path, capsys, where):
    out, victim = tmp_path / "run", tmp_path / "victim.txt"
    victim.write_text("not the run's")
    state = _finished_fake_run(out)
    key = {"../victim.txt": "../victim.txt", "absolute": str(victim), "study/link": "study/link"}[where]
    if where == "study/link":                                         # inside by name, outside by a symlink
        (out / "study").mkdir(); (out / "study" / "link").symlink_to(victim)
    state["artifacts"] = {**state["artifacts"], key: "0" * 64}           # a wrong hash: the old code deleted it
    (out / "state.json").write_text(json.dumps(state))
    with run_lock(out), pytest.raises(RunError, match=rf"state\.json names the file '{key}', which lies outside the "
                                                      rf"run folder .*`force`"):
        prepare_run(out, "demo", 0, {}, {}, force=False, log=lambda s: None)
    assert victim.read_text() == "not the run's"
    assert main(["check", str(out)]) == 1                                 # invnb check: a line per problem, no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert any("lies outside the run folder" in l for l in err) and all(l.startswith("invnb check: ") for l in err)
    with run_lock(out):                                                   # --force clears only the folder itself
        prepare_run(out, "demo", 0, {}, {}, force=True, log=lambda s: None)
    assert victim.read_text() == "not the run's"


@pytest.mark.parametrize("file", ["../victim.safetensors", "/tmp/victim.safetensors"])
def test_classifier_records_naming_a_file_outside_their_folder_are_refused(tmp_path, file):
    from invnb.classifier import ColorMNISTClassifier, train_classifier
    folder = tmp_path / "clf"; folder.mkdir()
    (folder / "records.json").write_text(json.dumps([{"step": 0, "file": file, "val_accuracy": 0.1}]))
    x, y = torch.zeros(4, 3, 28, 28), torch.zeros(4, dtype=torch.long)
    with pytest.raises(CheckpointError, match=rf"records\.json names the file '{file}', which lies outside .*delete "
                                              rf"the folder {folder}"):
        train_classifier(ColorMNISTClassifier(size=32), x, y, x, y, steps=2, n_checkpoints=2, out_dir=folder,
                         progress=False, device="cpu")


def test_damaged_json_and_figures_of_a_finished_run_are_found_and_made_again(smoke_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out)
    record = sorted(p for p in (out / "study" / "t").glob("*.training.json")
                    if not p.name.startswith(("unconditional", "shuffled_z")))[0]   # t's record: made only with t
    good = record.read_text()
    for f in (out / "study" / "study.json", record):
        f.write_text(f.read_text()[:len(f.read_text()) // 2])                    # truncated
    (out / "figures" / "summary.png").unlink()
    assert main(["check", str(out)]) == 1
    err = capsys.readouterr().err
    assert all(n in err for n in ("study/study.json", f"study/t/{record.name}", "figures/summary.png"))
    lines = []
    run_colormnist(out, "smoke", device="cpu", progress=False, log=lines.append)
    assert not any("Nothing to do" in l for l in lines) and any("making them again" in l for l in lines)
    assert main(["check", str(out)]) == 0
    assert record.read_text() == good and results(out) == results(smoke_run[0])
