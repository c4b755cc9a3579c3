"Fault injection: SIGKILL a smoke run at random points of its stages; every resume must end with the same numbers."
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from invnb.colormnist import run_colormnist
from invnb.report import check_run

RUN = "import sys; from invnb.cli import main; sys.exit(main())"


def kill_during(stage: int, out, delay: float) -> bool:
    "Start a smoke run in a subprocess, SIGKILL it `delay` s after stage `stage` starts; True if it was still running."
    # CPU sums are bit-identical only at the same thread count: the killed run uses this process's
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    p = subprocess.Popen([sys.executable, "-u", "-c", RUN, "colormnist", "--profile", "smoke", "--device", "cpu",
                          "--no-progress", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env)
    try:
        for line in p.stdout:
            if line.startswith(f"[stage {stage}/7]"): break
        time.sleep(delay)
        alive = p.poll() is None
        p.send_signal(signal.SIGKILL)
        return alive
    finally:
        p.wait(timeout=60)
        p.stdout.close()


@pytest.mark.parametrize("stage", [2, 3, 4, 5, 6])
def test_sigkill_then_resume_gives_identical_numbers(smoke_run, tmp_path, stage):
    delay = random.Random(stage).uniform(0.0, 1.5)                  # a random point, the same on every test run
    out = tmp_path / "run"
    assert kill_during(stage, out, delay), "the run finished before it could be killed"
    assert not json.loads((out / "state.json").read_text())["finished"]
    run_colormnist(out, "smoke", device="cpu", progress=False, log=lambda s: None)
    assert check_run(out) == []
    ref = json.loads((smoke_run[0] / "metrics.json").read_text())["results"]
    assert json.loads((out / "metrics.json").read_text())["results"] == ref
