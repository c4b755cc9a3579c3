"""torchrun with real process groups (gloo, 2 processes on the CPU): a data-parallel `fit` against one process with
the doubled batch, the sharded ColorMNIST smoke run against a single-process one, and a rank killed mid-stage."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from invnb.train import batch_indices, fit

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"): env.pop(k, None)
    return env


def _torchrun(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    p = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, env=_env(), cwd=cwd, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


# ---------------------------------------------------------------- data-parallel fit
TOY = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from safetensors.torch import save_file
    from invnb.distributed import init_distributed, is_main, rank
    from invnb.train import batch_indices, fit

    def make(bn=False):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16) if bn else nn.Identity(), nn.Tanh(), nn.Linear(16, 1))

    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    Y = X.sum(1, keepdim=True).sin()

    def step_fn(batch):
        def f(m, g, step):
            idx = batch_indices(len(X), batch, g)
            return (m(X[idx]) - Y[idx]).pow(2).mean()
        return f

    if __name__ == "__main__":
        batch, out, ckpt, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
        init_distributed(torch.device("cpu"))
        torch.set_num_threads(1)
        m = make(bn=len(sys.argv) > 5)
        h = fit(m, step_fn(batch), steps=40, lr=1e-2, device="cpu", progress=False, ckpt_dir=ckpt, ckpt_every=10,
                resume=True, stop_after=int(stop) if stop != "none" else None)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, out if is_main() else f"{out}.rank{rank()}")
        if is_main(): open(out + ".loss", "w").write(repr(h["model"]))
""")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    (d / "toy.py").write_text(TOY)
    return d


def test_data_parallel_equals_doubled_batch(toy):
    "2 ranks with batch 8 = 1 process with batch 16 (same examples, averaged gradients), to float tolerance."
    _torchrun(str(toy / "toy.py"), "8", str(toy / "dp.safetensors"), str(toy / "ckpt_dp"), "none")
    sys.path.insert(0, str(toy))
    try:
        import toy as t
    finally:
        sys.path.remove(str(toy))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                # as each rank: CPU sums are bit-identical only at the same thread count
    try:
        one = t.make()
        h = fit(one, t.step_fn(16), steps=40, lr=1e-2, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)      # the other tests compare runs made at this process's thread count
    two = load_file(toy / "dp.safetensors")
    for k, v in one.state_dict().items():
        torch.testing.assert_close(two[k], v, rtol=1e-5, atol=1e-6)
    losses = eval((toy / "dp.safetensors.loss").read_text())       # logged: the mean over ranks of each rank's loss
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(h["model"]), rtol=1e-5, atol=1e-6)
    assert one.state_dict()["0.weight"].abs().sum() > 0 and h["model"][-1] < h["model"][0]   # it learned something


def test_data_parallel_fit_resumes_exactly(toy):
    "Killed after 15 steps and resumed under torchrun (rank 0's checkpoint, every rank's RNG): the same weights."
    ck = toy / "ckpt_resume"
    _torchrun(str(toy / "toy.py"), "8", str(toy / "part.safetensors"), str(ck), "15")
    meta = json.loads(__import__("safetensors").safe_open(str(ck / "last.safetensors"), "pt").metadata()["invnb"])
    assert meta["step"] == 15 and meta["world_size"] == 2
    _torchrun(str(toy / "toy.py"), "8", str(toy / "resumed.safetensors"), str(ck), "none")
    if not (toy / "dp.safetensors").exists():
        _torchrun(str(toy / "toy.py"), "8", str(toy / "dp.safetensors"), str(toy / "ckpt_dp"), "none")
    straight, resumed = load_file(toy / "dp.safetensors"), load_file(toy / "resumed.safetensors")
    for k in straight: assert torch.equal(straight[k], resumed[k]), k


def test_batch_indices_in_one_process_is_todays_draw():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(batch_indices(100, 9, g1), torch.randint(100, (9,), generator=g2))


# ---------------------------------------------------------------- the sharded ColorMNIST run
def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _rank_of(pid: int) -> int | None:
    try: env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError: return None
    ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


def _t_files(run: Path) -> dict[str, tuple[int, int]]:
    """{name: (inode, mtime_ns)} of the training records of a run's finished t's: stage 5 writes a t's record only
    when it trains that t (the analysis stage rewrites the weights themselves into the saved Study)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run / "study" / "t").glob("*.training.json")
            if p.with_name(p.name.replace(".training.json", ".safetensors")).exists()}


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    """A 2-rank smoke run whose rank 1 is SIGKILLed in stage 5 once the first t's are written, then rerun to the end.
    Returns (run folder, t files finished before the kill, t files after the rerun, the rerun's output)."""
    run = tmp_path_factory.mktemp("sharded") / "run"
    cmd = [*TORCHRUN, "-m", "invnb", "colormnist", "--profile", "smoke", "--no-progress", "--out", str(run)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(_t_files(run) if (run / "study" / "t").exists() else {}) < 2:   # the unconditional t and one more
            assert p.poll() is None, f"the run ended before stage 5: {p.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "no t was written within 300 s"
            time.sleep(0.05)
        victim = [c for c in _children(p.pid) if _rank_of(c) == 1]
        assert victim, "rank 1's process was not found"
        os.kill(victim[0], signal.SIGKILL)
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL); p.wait()
    assert p.returncode != 0, "torchrun should report the killed rank"
    before = _t_files(run)
    n_fits = 1 + 3 + 1 + 2   # unconditional, the 3 layers of the final model + 2 checkpoints, null control, 2nd seed
    assert 2 <= len(before) < n_fits + 1, f"the kill came too late to test a rerun: {sorted(before)}"
    again = _torchrun("-m", "invnb", "colormnist", "--profile", "smoke", "--no-progress", "--out", str(run))
    return run, before, _t_files(run), again.stdout + again.stderr


def test_rerun_after_a_killed_rank_keeps_finished_fits(sharded_run):
    run, before, after, out = sharded_run
    assert "resuming the smoke run" in out
    for name, ident in before.items():                 # not trained again: the very same record (inode and mtime)
        assert after[name] == ident, f"{name} was made again"
    assert len(after) == 8 and set(before) < set(after)
    assert subprocess.run([sys.executable, "-m", "invnb", "check", str(run)], env=_env()).returncode == 0


def test_sharded_t_files_equal_a_single_process_run(sharded_run, tmp_path):
    """The same autoencoder, classifier and e (copied from the 2-rank run); its t's deleted and trained again by one
    process at the same thread count: every t file is bit-identical, whichever rank trained it."""
    run = sharded_run[0]
    single = tmp_path / "single"
    shutil.copytree(run, single)
    shutil.rmtree(single / "study" / "t")                  # the finished run then makes its missing t's again
    p = subprocess.run([sys.executable, "-m", "invnb", "colormnist", "--profile", "smoke", "--no-progress", "--out",
                        str(single)], capture_output=True, text=True, env=_env(), timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    names = sorted(q.name for q in (run / "study" / "t").iterdir())
    assert len(names) == 16                                # 8 t's and their training records
    for n in names:
        assert (single / "study" / "t" / n).read_bytes() == (run / "study" / "t" / n).read_bytes(), n
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (run, single))
    m1.pop("seconds", None); m2.pop("seconds", None)
    assert m1["results"] == m2["results"]


# ---------------------------------------------------------------- bf16 feature extraction
def test_mixed_precision_runs_phi_in_bf16_and_keeps_the_encoder_in_float32(monkeypatch):
    "With MIXED_PRECISION on (CUDA's default, forced here on the CPU): Φ in bf16, returned as float32; z̄ unchanged."
    import invnb.utils as utils
    from invnb.fitting import layer_features
    from invnb.autoencoder import SmallAE
    from invnb.classifier import ColorMNISTClassifier
    from invnb.features import features_of_layers
    from invnb.train import encode_dataset
    x = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    clf, ae = ColorMNISTClassifier(seed=0).eval(), SmallAE(size=64, width=16, seed=0).eval()
    probe = clf.probe("features.8")
    full, codes = layer_features(probe, x, device="cpu"), encode_dataset(ae.encode, x, device="cpu")
    monkeypatch.setattr(utils, "MIXED_PRECISION", True)
    half, codes_half = layer_features(probe, x, device="cpu"), encode_dataset(ae.encode, x, device="cpu")
    one_pass = features_of_layers(clf, ["features.8"], x, device="cpu")["features.8"]
    assert half.dtype == one_pass.dtype == torch.float32 and not torch.equal(half, full)        # bf16 did run
    assert torch.equal(one_pass, half)                       # the one-pass extraction sees the same Φ as Probe.phi
    assert ((half - full).norm() / full.norm()).item() < 0.03
    assert torch.equal(codes_half["mean"], codes["mean"])    # the encoder stays in float32


def test_data_parallel_replicas_stay_equal_with_per_rank_statistics(toy):
    "BatchNorm's running statistics come from each rank's own batch: rank 0's are copied, so both ranks end equal."
    _torchrun(str(toy / "toy.py"), "8", str(toy / "bn.safetensors"), str(toy / "ckpt_bn"), "none", "bn")
    a, b = load_file(toy / "bn.safetensors"), load_file(toy / "bn.safetensors.rank1")
    assert "1.running_mean" in a and a["1.running_mean"].abs().sum() > 0
    for k in a: assert torch.equal(a[k], b[k]), k
