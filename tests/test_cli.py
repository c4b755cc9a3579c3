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


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_a_diverged_training_is_one_line_naming_the_model_and_its_checkpoint(tmp_path, monkeypatch, capsys):
    import torch
    from invnb import colormnist
    from invnb.train import fit

    def diverging_stage(run, data):   # the real fit, with a loss that turns NaN at step 3 (a checkpoint at step 2)
        step_fn = lambda m, g, s: m(torch.ones(1, 2)).pow(2).sum() * (float("nan") if s == 3 else 1.0)
        fit(torch.nn.Linear(2, 1), step_fn, steps=10, ckpt_dir=run.out / "train" / "ae", ckpt_every=2, device="cpu",
            progress=False, desc="autoencoder")
    monkeypatch.setattr(colormnist, "autoencoder_stage", diverging_stage)
    out = tmp_path / "run"
    assert main(["colormnist", "--profile", "smoke", "--device", "cpu", "--no-progress", "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert "training diverged: stage 'autoencoder': autoencoder: loss 'model' became nan at step 3" in line
    assert f"last good checkpoint: {out / 'train' / 'ae' / 'last.safetensors'} (step 2" in line and "--seed" in line


def test_ctrl_c_before_the_first_stage_is_one_line(tmp_path, monkeypatch, capsys):
    from invnb import colormnist
    def interrupted(*args): raise KeyboardInterrupt
    monkeypatch.setattr(colormnist, "load_data", interrupted)
    try:
        code = main(["colormnist", "--profile", "smoke", "--no-progress", "--out", str(tmp_path / "run")])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C before the first stage escaped main() as a traceback")
    assert code == 130
    line = _one_line(capsys)
    assert "interrupted before the first stage" in line and "run the same command to continue" in line


def test_a_state_without_stages_names_the_file_and_the_fix(tmp_path, capsys):
    import json
    out = tmp_path / "run"
    args = ["colormnist", "--profile", "smoke", "--device", "cpu", "--no-progress", "--out", str(out)]
    assert main(args + ["--until", "data"]) == 0
    state = json.loads((out / "state.json").read_text())
    del state["stages"]                                          # a JSON object that matches the run, without stages
    (out / "state.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert main(args) == 2
    line = _one_line(capsys)
    assert f"{out / 'state.json'} is damaged" in line and "'stages'" in line and "--force" in line


def test_an_mnist_root_without_mnist_is_an_error_not_the_bundled_digits(tmp_path, capsys):
    typo = tmp_path / "typo"
    assert main(["colormnist", "--profile", "smoke", "--no-progress", "--until", "data", "--mnist-root", str(typo),
                 "--out", str(tmp_path / "run")]) == 2
    line = _one_line(capsys)
    assert f"no MNIST under {typo.resolve()}" in line and "--mnist-root" in line
