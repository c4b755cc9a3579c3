"""invnb on a GPU in one command (issue 38): the device tests, the ColorMNIST run, the paper-size t step, the BigAE
step, a study of ResNet-18, and from these the `paper` profile's wall time on this device, stage by stage.

Prints one JSON line per result on stdout, each with its "section" and "device" (everything else the sections and
their subprocesses print goes to stderr or to a log under --out), and writes its artefacts under --out: the logs,
the run folders, unit_tests.xml and gpu_check.jsonl (the same lines). Sections, in order:

  device          the accelerator (or CPU), torch's version, how CUDA runs float32 matmuls (ieee or tf32)
  unit_tests      pytest on the tests that touch devices, with `--device DEVICE` (needs the conftest option)
  colormnist      `invnb colormnist --profile quick` (--tiny: smoke): stage seconds, peak GPU memory, the report's
                  checks; with --cpu-run, a part "vs_cpu": the checks and every estimate against that CPU run's
  t_step          the paper-size t (d 128, 20 blocks, hidden 1024) training step at batch 64 and 256, 16 samples,
                  its share of the bf16/tf32/fp32 matmul peaks measured in the same process
  big_ae          the BigAE at 128 px (ResNet-101 + BigGAN; L1 + LPIPS + PatchGAN): seconds per step, peak memory
  study           `invnb study` with torchvision's ResNet-18 (random weights) on a generated 128-px folder
  paper_estimate  PROFILES['paper'] step counts × seconds per step measured here
  summary         which sections failed

A section that fails prints {"section", "device", "error"} and the next one runs; the exit code is 1 if any failed,
2 for bad input (--device cuda without a GPU, a --cpu-run without metrics.json), printed as one JSON line.
Peak memory is torch.cuda.max_memory_allocated in MiB (null on the CPU). --sections runs some of them (the device
line always); paper_estimate takes t's step from t_step and the unstepped stages from colormnist when they ran.

    python benchmarks/gpu_check.py --device cuda --out runs/gpu_check [--cpu-run runs/colormnist_quick_cpu]
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check     # tiny sizes, < 5 min (a CI test)
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))              # invnb from this checkout, installed or not

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from invnb.autoencoder import AELoss, BigAE, PatchDiscriminator, SmallAE, train_autoencoder  # noqa: E402
from invnb.classifier import ColorMNISTClassifier  # noqa: E402
from invnb.colormnist import invariance_jobs  # noqa: E402
from invnb.invariances import t_fits  # noqa: E402
from invnb.inn import FactorINN, InvarianceINN  # noqa: E402
from invnb.profiles import PROFILES, STAGES  # noqa: E402

# the tests that touch devices; the last is the study smoke test (a whole `invnb study` run)
UNIT_TESTS = ["tests/test_flows.py", "tests/test_inn.py", "tests/test_autoencoder.py", "tests/test_probe.py",
              "tests/test_train.py",
              "tests/test_studyrun.py::test_invnb_check_passes_a_healthy_study_run_and_finds_its_damage"]
TINY_TESTS = ["tests/test_inn.py", "-k", "not learns_a_conditional_density and not puts_shared_information"]
PAPER_T = dict(dim=128, size=PROFILES["paper"].t_size)          # d 128, 20 blocks, hidden 1024 (Tab. S10)
TINY_T = dict(dim=16, size=dict(n_blocks=2, hidden=32, depth=1, embed_dim=16))
TINY_BIG = dict(zdim=16, layers=(1, 1, 1, 1), width_per_group=16, ch=4, n_classes=10, embed_dim=8, attention_res=16)
T_BATCHES = (64, 256)
SE_K = 2.0     # two runs' estimates agree when |a − b| ≤ SE_K · √(se_a² + se_b²)
VGG16_FILE = "vgg16-397923af.pth"   # LPIPS's pretrained backbone, from torchvision, cached by torch.hub

# `invnb ARGS` as a subprocess that also writes its peak GPU memory: python -c _CLI PEAK_FILE ARGS...
_CLI = ("import json, sys, torch\n"
        "from invnb.cli import main\n"
        "code = main(sys.argv[2:])\n"
        "peak = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else None\n"
        "open(sys.argv[1], 'w').write(json.dumps({'peak_bytes': peak}))\n"
        "sys.exit(code)\n")


@dataclass
class Ctx:
    "What every section gets: the device, the output folder, the sizes, and what earlier sections measured."
    device: str                    # 'cuda' or 'cpu', as given
    out: Path                      # every artefact goes under it
    tiny: bool                     # tiny sizes (the CPU's CI run)
    seed: int                      # every random draw derives from it
    cpu_run: Path | None           # an earlier CPU run of the same colormnist profile, to compare with
    timeout: float                 # seconds each subprocess may take
    stdout: object = None          # the JSON lines' own handle on the real stdout
    measured: dict = field(default_factory=dict)   # {what: value} for later sections (paper_estimate)

    @property
    def dev(self) -> torch.device: return torch.device(self.device)

    @property
    def steps(self) -> int: return 2 if self.tiny else 20     # timed steps of each in-process measurement


# ---- output, timing, memory ----------------------------------------------------------------------------------
def _finite(x):
    "`x` with every NaN/inf float made None and tuples made lists: strict JSON."
    if isinstance(x, float): return x if math.isfinite(x) else None
    if isinstance(x, dict): return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)): return [_finite(v) for v in x]
    return x


def emit(ctx: Ctx, section: str, line: dict) -> None:
    "Print one JSON line naming `section` and the device, and append it to OUT/gpu_check.jsonl."
    text = json.dumps(_finite({"section": section, "device": ctx.device, **line}), default=str)
    print(text, file=ctx.stdout, flush=True)
    with open(ctx.out / "gpu_check.jsonl", "a") as f: f.write(text + "\n")


@contextlib.contextmanager
def _json_stdout():
    "Meanwhile anything written to stdout (Python or C code) goes to stderr; yields a handle on the real stdout."
    sys.stdout.flush()
    saved = os.dup(1)
    real = os.fdopen(os.dup(saved), "w", buffering=1)
    os.dup2(2, 1)
    try: yield real
    finally:
        sys.stdout.flush(); real.close()
        os.dup2(saved, 1); os.close(saved)


def _sync(dev: torch.device) -> None:
    "Wait for the device's queued work (CUDA); nothing on the CPU."
    if dev.type == "cuda": torch.cuda.synchronize(dev)


def _reset_peak(dev: torch.device) -> None:
    "Start a new peak-memory count on `dev` (nothing on the CPU)."
    if dev.type == "cuda":
        gc.collect()                                                  # models of an earlier measurement: gone
        torch.cuda.synchronize(dev); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(dev)


def _peak_mib(dev: torch.device) -> float | None:
    "Peak memory allocated on `dev` since `_reset_peak`, in MiB; None on the CPU."
    if dev.type != "cuda": return None
    torch.cuda.synchronize(dev)
    return round(torch.cuda.max_memory_allocated(dev) / 2 ** 20, 1)


def _seconds_per_call(fn, dev: torch.device, reps: int, warmup: int = 2) -> float:
    "Mean seconds of `fn()` over `reps` calls after `warmup` calls, the device synchronised at both ends."
    for _ in range(warmup): fn()
    _sync(dev); t0 = time.perf_counter()
    for _ in range(reps): fn()
    _sync(dev)
    return (time.perf_counter() - t0) / reps


def _share(x: float | None, of: float | None) -> float | None:
    "x / of to 4 significant digits; None where either is missing."
    return None if x is None or not of else _sig(x / of)


def _sig(x: float) -> float:
    "`x` to 4 significant digits."
    return float(f"{x:.4g}")


# ---- subprocesses ----------------------------------------------------------------------------------------------
def _env() -> dict:
    "This environment, with the checkout first on PYTHONPATH (invnb need not be installed) and unbuffered output."
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _tail(path: Path) -> str:
    "The last non-empty line of `path` (at most 300 characters), for an error message."
    lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()] if path.is_file() else []
    return lines[-1][-300:] if lines else "(no output)"


def _run_logged(ctx: Ctx, name: str, cmd: list[str]) -> tuple[int, float]:
    "(exit code, wall seconds) of `cmd`, run in the repository root with its output in OUT/<name>.log."
    t0 = time.perf_counter()
    with open(ctx.out / f"{name}.log", "w") as log:
        r = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, timeout=ctx.timeout)
    return r.returncode, round(time.perf_counter() - t0, 1)


def _invnb(ctx: Ctx, name: str, args: list[str]) -> tuple[float, float | None]:
    "(wall seconds, peak GPU MiB or None) of `invnb ARGS` in a subprocess; an exit code other than 0 raises."
    peak_file = ctx.out / f"{name}.peak.json"
    peak_file.unlink(missing_ok=True)
    code, wall = _run_logged(ctx, name, [sys.executable, "-c", _CLI, str(peak_file), *args])
    if code != 0:
        log = ctx.out / f"{name}.log"
        raise RuntimeError(f"invnb {args[0]} exited with {code} after {wall} s ({log}): {_tail(log)}")
    peak = json.loads(peak_file.read_text())["peak_bytes"] if peak_file.is_file() else None
    return wall, None if peak is None else round(peak / 2 ** 20, 1)


# ---- comparing two runs ----------------------------------------------------------------------------------------
def estimates(tree, path: str = "") -> dict:
    "{path: (value, se)} of every {'value', 'se'} estimate in a metrics.json `results` tree."
    if isinstance(tree, dict):
        if {"value", "se"} <= set(tree) and not isinstance(tree["value"], (dict, list)):
            return {path: (tree["value"], tree["se"])}
        join = lambda key: f"{path}.{key}" if path else str(key)
        return {k: v for key, sub in tree.items() for k, v in estimates(sub, join(key)).items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in estimates(sub, f"{path}[{i}]").items()}
    return {}


def compare_estimates(results: dict, reference: dict, k: float = SE_K) -> dict:
    "The estimates both `results` trees hold: within `k` combined SEs of each other, |a − b| ≤ k·√(se_a² + se_b²)?"
    a, b = estimates(results), estimates(reference)
    both = [p for p in a if p in b]
    missing = [p for p in both if None in (*a[p], *b[p])]          # a NaN value or SE: nothing to compare
    outside = []
    for p in both:
        if p in missing: continue
        (va, sa), (vb, sb) = a[p], b[p]
        se = math.hypot(sa, sb)
        if abs(va - vb) > k * se:
            outside.append({"estimate": p, "this": va, "cpu": vb, "combined_se": round(se, 5)})
    return {"k": k, "compared": len(both) - len(missing), "within": len(both) - len(missing) - len(outside),
            "outside": outside, "not_compared": missing, "only_one_run": sorted(set(a) ^ set(b))}


def compare_checks(m: dict, reference: dict) -> dict:
    "The report's checks (`invnb.report.checks`) of two colormnist runs: which pass in one and fail in the other."
    from invnb.report import checks
    a = {what: ok for what, _, ok in checks(m)}
    b = {what: ok for what, _, ok in checks(reference)}
    return {"checks": len(a), "passed": sum(a.values()), "cpu_checks": len(b), "cpu_passed": sum(b.values()),
            "differ": [w for w in a if w in b and a[w] != b[w]], "only_one_run": sorted(set(a) ^ set(b))}


# ---- sections --------------------------------------------------------------------------------------------------
def device_info(ctx: Ctx):
    "The device, torch's version and (CUDA) how float32 matmuls run: what every later number depends on."
    d = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
         "tiny": ctx.tiny, "seed": ctx.seed,
         "out": str(ctx.out)}
    if ctx.dev.type == "cuda":
        p = torch.cuda.get_device_properties(ctx.dev)
        d |= {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_GiB": round(p.total_memory / 2 ** 30, 1),
              "multiprocessors": p.multi_processor_count, "cuda": torch.version.cuda,
              "bf16": torch.cuda.is_bf16_supported(), "fp32_matmul": _fp32_precision()}
    else:
        d["name"] = platform.processor() or platform.machine()
    yield d


def _junit(xml: Path) -> dict:
    "Counts and failed test ids of a pytest --junitxml file."
    root = ET.parse(xml).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed": n["failures"],
            "errors": n["errors"], "skipped": n["skipped"], "failed_tests": failed[:20]}


def unit_tests(ctx: Ctx):
    "pytest on the tests that touch devices, with --device DEVICE (left out for cpu, conftest's default)."
    xml, tests = ctx.out / "unit_tests.xml", TINY_TESTS if ctx.tiny else UNIT_TESTS
    xml.unlink(missing_ok=True)
    device = [] if ctx.device == "cpu" else ["--device", ctx.device]
    code, wall = _run_logged(ctx, "unit_tests", [sys.executable, "-m", "pytest", *tests, *device, "-q",
                                                 "-p", "no:cacheprovider", f"--junitxml={xml}"])
    line = {"tests": tests, "exit_code": code, "wall_s": wall, **(_junit(xml) if xml.is_file() else {})}
    if code != 0:
        line["error"] = f"pytest exited with {code} ({ctx.out / 'unit_tests.log'}): {_tail(ctx.out / 'unit_tests.log')}"
    yield line


def _metrics(folder: Path) -> dict:
    "A run folder's metrics.json."
    return json.loads((Path(folder) / "metrics.json").read_text())


def colormnist(ctx: Ctx):
    "`invnb colormnist --profile quick` (--tiny: smoke) on the device; with --cpu-run, its numbers against that run's."
    from invnb.report import checks
    profile, out = ("smoke" if ctx.tiny else "quick"), ctx.out / "colormnist"
    wall, peak = _invnb(ctx, "colormnist", ["colormnist", "--profile", profile, "--device", ctx.device, "--out",
                                            str(out), "--seed", str(ctx.seed), "--force", "--no-progress"])
    m = _metrics(out)
    ctx.measured["colormnist"] = {"profile": profile, "seconds": m["seconds"]}
    results = checks(m)
    yield {"profile": profile, "run": str(out), "wall_s": wall, "seconds": m["seconds"], "peak_mem_MiB": peak,
           "checks": len(results), "checks_failing": [what for what, _, ok in results if not ok]}
    if ctx.cpu_run is None: return
    ref = _metrics(ctx.cpu_run)
    if ref["run"]["profile"] != profile:
        raise ValueError(f"--cpu-run {ctx.cpu_run} is a {ref['run']['profile']!r} run; compare with a {profile!r} run.")
    est = compare_estimates(m["results"], ref["results"])
    same = compare_checks(m, ref)
    yield {"part": "vs_cpu", "cpu_run": str(ctx.cpu_run), "cpu_run_device": ref["run"]["environment"].get("device"),
           "checks": same, "estimates": est, "agree": not same["differ"] and not est["outside"]}


@contextlib.contextmanager
def _tf32(on: bool | None):
    "CUDA float32 matmuls in TF32 (True) or IEEE (False) meanwhile; None: as they are. torch >= 2.9's API if it has it."
    if on is None:                                  # nothing set, nothing restored
        yield; return
    m = torch.backends.cuda.matmul
    new = hasattr(m, "fp32_precision")              # torch >= 2.9, where mixing it with allow_tf32 is an error
    name = "fp32_precision" if new else "allow_tf32"
    old = getattr(m, name)
    setattr(m, name, ("tf32" if on else "ieee") if new else on)
    try: yield
    finally: setattr(m, name, old)


def _fp32_precision() -> str:
    "How CUDA runs float32 matmuls in this process (ieee: no TF32)."
    m = torch.backends.cuda.matmul
    if hasattr(m, "fp32_precision"):                                    # 'none': torch.backends.fp32_precision's
        return m.fp32_precision if m.fp32_precision != "none" else getattr(torch.backends, "fp32_precision", "none")
    return "tf32" if m.allow_tf32 else "ieee"


def _matmul_tflops(dev: torch.device, n: int, dtype: torch.dtype, tf32: bool | None = None) -> float:
    "TFLOP/s of an n×n @ n×n torch.matmul in `dtype` (float32: TF32 on, off, or None: the process's default), mean of 10."
    g = torch.Generator(device=dev).manual_seed(0)
    a, b = (torch.randn(n, n, generator=g, device=dev, dtype=dtype) for _ in range(2))
    with _tf32(tf32 if dev.type == "cuda" else None):
        secs = _seconds_per_call(lambda: torch.matmul(a, b), dev, reps=10, warmup=3)
    return 2 * n ** 3 / secs / 1e12


def matmul_peaks(ctx: Ctx) -> dict:
    """The matmul peaks of this process on a large square product: bf16, tf32 (CUDA only) and float32 at the process's
    default precision, the one t trains in (`_fp32_precision`)."""
    n = 256 if ctx.tiny else 8192
    tf32 = _matmul_tflops(ctx.dev, n, torch.float32, tf32=True) if ctx.dev.type == "cuda" else None
    return {"n": n, "bf16_tflops": _matmul_tflops(ctx.dev, n, torch.bfloat16), "tf32_tflops": tf32,
            "fp32_tflops": _matmul_tflops(ctx.dev, n, torch.float32)}


def _t_step(ctx: Ctx, spec: dict, batch: int) -> tuple:
    "(t, seconds per training step, FLOP of its forward + backward, peak MiB) of a t of `spec` at `batch`."
    g, d = torch.Generator().manual_seed(ctx.seed), spec["dim"]
    t = InvarianceINN(d, d, seed=ctx.seed, **spec["size"]).to(ctx.dev)
    opt = torch.optim.Adam(t.parameters(), lr=1e-4, fused=True)       # as `fit` trains it on cuda and cpu
    zbar, z = (torch.randn(batch, d, generator=g).to(ctx.dev) for _ in range(2))

    def step():
        loss = t.nll(zbar, z).mean()
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    _reset_peak(ctx.dev)
    secs = _seconds_per_call(step, ctx.dev, ctx.steps)                # the first warm-up step sets ActNorm
    peak = _peak_mib(ctx.dev)
    with FlopCounterMode(display=False) as fc:
        t.nll(zbar, z).mean().backward()
    t.zero_grad(set_to_none=True)
    return t, secs, fc.get_total_flops(), peak


def t_step(ctx: Ctx):
    "The paper-size t's training step at batch 64 and 256 against the matmul peaks, and 16 samples of one z."
    spec = TINY_T if ctx.tiny else PAPER_T
    peaks = matmul_peaks(ctx)
    yield {"part": "matmul_peak", **{k: _sig(v) if isinstance(v, float) else v for k, v in peaks.items()}}
    for batch in T_BATCHES:
        t = None                                                      # the last t freed first: each peak is its own
        t, secs, flops, peak = _t_step(ctx, spec, batch)
        ctx.measured.setdefault("t_step_s", {})[batch] = secs
        tflops = flops / secs / 1e12
        yield {"part": "train", "dim": spec["dim"], **spec["size"], "batch": batch, "ms_per_step": round(secs * 1e3, 3),
               "samples_per_s": round(batch / secs, 1), "tflop_per_step": _sig(flops / 1e12), "tflops": _sig(tflops),
               **{f"share_of_{k}_peak": _share(tflops, peaks[f"{k}_tflops"]) for k in ("bf16", "tf32", "fp32")},
               "peak_mem_MiB": peak, "params_M": round(sum(p.numel() for p in t.parameters()) / 1e6, 2)}
    t.eval()
    z = torch.randn(1, spec["dim"], generator=torch.Generator().manual_seed(ctx.seed)).to(ctx.dev)
    gen = torch.Generator(device=ctx.dev)                             # t.sample draws v on z's device
    _reset_peak(ctx.dev)
    secs = _seconds_per_call(lambda: t.sample(z, 16, gen.manual_seed(ctx.seed)), ctx.dev, 5 * ctx.steps)
    yield {"part": "sample16", "ms": round(secs * 1e3, 3), "samples_per_s": round(16 / secs, 1),
           "peak_mem_MiB": _peak_mib(ctx.dev)}


def _ae_seconds_per_step(ctx: Ctx, make, x: torch.Tensor, loss, batch: int, lr: float) -> tuple[float, float | None]:
    """(seconds per steady step, peak MiB) through `train_autoencoder`, as the study and colormnist train: (a run of
    1 + steps − a run of 1 step) / steps, without the setup and the first step (benchmarks/big_ae_step.py)."""
    def run(n):
        model, l = make(), loss()
        _reset_peak(ctx.dev)
        t0 = time.perf_counter()
        train_autoencoder(model, x, n, batch_size=batch, lr=lr, loss=l, device=ctx.device, seed=ctx.seed,
                          progress=False)
        _sync(ctx.dev)
        return time.perf_counter() - t0
    one = run(1)
    return (run(1 + ctx.steps) - one) / ctx.steps, _peak_mib(ctx.dev)


def _disc_down(size: int) -> int:
    "The PatchGAN's stride-2 convs at `size` px, as the study picks them (invnb.studyrun._disc_down)."
    return min(4, size.bit_length() - 3)


def lpips_pretrained() -> bool:
    "Are LPIPS's VGG-16 weights in torch.hub's cache? (Else the random backbone: the cost is the same.)"
    return (Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE).is_file()


def big_ae(ctx: Ctx):
    "The BigAE at 128 px (--tiny: a small one at 32 px), L1 + LPIPS + PatchGAN, before and after the PatchGAN starts."
    size, batch, config, width = (32, 4, TINY_BIG, 8) if ctx.tiny else (128, 8, {}, 64)   # width: the PatchGAN's
    pretrained = lpips_pretrained()
    x = torch.rand(8 * batch, 3, size, size, generator=torch.Generator().manual_seed(ctx.seed)) * 2 - 1
    make = lambda: BigAE(size=size, seed=ctx.seed, **config)
    params = sum(p.numel() for p in make().parameters())
    for phase, start in (("before_disc", 10 ** 9), ("with_disc", 0)):
        loss = lambda: AELoss("l1+lpips", lpips_pretrained=pretrained, disc_start=start,
                              disc=PatchDiscriminator(width=width, n_down=_disc_down(size), seed=ctx.seed + 2))
        secs, peak = _ae_seconds_per_step(ctx, make, x, loss, batch, lr=1e-4)
        yield {"part": phase, "size": size, "batch": batch, "config": config or "Tab. S7 (ResNet-101, BigGAN ch 96)",
               "params_M": round(params / 1e6, 2), "lpips": "pretrained" if pretrained else "random",
               "s_per_step": round(secs, 4), "peak_mem_MiB": peak}


def make_image_folder(root: Path, n: int, px: int, seed: int) -> Path:
    "`n` PNGs of random coloured squares and discs, `px` px, in the ImageFolder layout (two classes), from `seed`."
    import numpy as np
    from PIL import Image, ImageDraw
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    colour = lambda: tuple(int(c) for c in rng.integers(0, 256, 3))
    for i in range(n):
        kind = ("squares", "discs")[i % 2]
        (root / kind).mkdir(parents=True, exist_ok=True)
        im = Image.new("RGB", (px, px), colour())
        (a, b), (c, d) = sorted(rng.integers(2, px - 2, 2)), sorted(rng.integers(2, px - 2, 2))
        box = (int(a), int(c), int(max(b, a + px // 5)), int(max(d, c + px // 5)))
        draw = ImageDraw.Draw(im)
        (draw.rectangle if kind == "squares" else draw.ellipse)(box, fill=colour())
        im.save(root / kind / f"{i:04d}.png")
    return root


def study(ctx: Ctx):
    "`invnb study` of torchvision's ResNet-18 (random weights) on a generated folder, its autoencoder trained first."
    if ctx.tiny:   # 24 images: a study needs 16 to train on after holding out 2
        n, px, layers = 24, 32, "layer2"
        extra = ["--size", "32", "--train-ae", "10", "--steps", "20", "--t-blocks", "1", "--t-hidden", "8",
                 "--t-embed", "8", "--n-eval", "4", "--batch-size", "16"]
    else:
        n, px, layers = 256, 128, "layer2,layer4"
        extra = ["--size", "128", "--ae-arch", "big", "--lpips", "pretrained" if lpips_pretrained() else "random",
                 "--train-ae", "100", "--steps", "300"]
    images, out = make_image_folder(ctx.out / "study_images", n, px, ctx.seed), ctx.out / "study"
    wall, peak = _invnb(ctx, "study", ["study", "--model", "torchvision:resnet18", "--images", str(images), "--layers",
                                       layers, "--out", str(out), "--device", ctx.device, "--seed", str(ctx.seed),
                                       "--force", "--no-progress", *extra])
    m = _metrics(out)
    yield {"run": str(out), "images": n, "px": px, "layers": layers.split(","), "args": extra, "wall_s": wall,
           "seconds": m["seconds"], "peak_mem_MiB": peak}


def _paper_steps(p) -> tuple[dict, int]:
    """({stage: training steps} of profile `p`, the number of t's): stage 5 trains the unconditional t, one t per
    (model, layer) job, the null control and the other seeds (`invnb.invariances.t_fits`), each for t_steps."""
    jobs = invariance_jobs(p, [f"checkpoint{i}" for i in range(p.n_checkpoints)])
    n_t = 1 + len(t_fits(jobs, (jobs[0][0], p.checkpoint_layer), p.t_seeds))
    return {"autoencoder": p.ae_steps, "classifier": p.clf_steps, "factors": p.e_steps,
            "invariances": n_t * p.t_steps}, n_t


def _adam_step_seconds(ctx: Ctx, model: torch.nn.Module, loss_fn) -> float:
    "Seconds per steady Adam step (fused, as `fit` on cuda and cpu) of `loss_fn(model, generator)` on the device."
    model.to(ctx.dev).train()
    opt, g = torch.optim.Adam(model.parameters(), 1e-4, fused=True), torch.Generator().manual_seed(ctx.seed)

    def step():
        opt.zero_grad(set_to_none=True); loss_fn(model, g).backward(); opt.step()
    return _seconds_per_call(step, ctx.dev, ctx.steps)


def _paper_step_seconds(ctx: Ctx, p) -> dict:
    "{stage: seconds per step} at profile `p`'s sizes and batches (--tiny: tiny models, so only the plumbing counts)."
    g, dev, tiny = torch.Generator().manual_seed(ctx.seed), ctx.dev, ctx.tiny
    x = torch.rand(256, 3, 28, 28, generator=g) * 2 - 1                   # ColorMNIST-sized images, on the CPU
    y = torch.randint(0, 10, (256,), generator=g)
    batch = lambda gen, b: torch.randint(0, 256, (b,), generator=gen)
    ae, _ = _ae_seconds_per_step(ctx, lambda: SmallAE(width=8 if tiny else p.ae_width, seed=ctx.seed), x,
                                 lambda: None, p.ae_batch_size, lr=p.ae_lr)
    def clf_loss(m, gen):                                                 # a batch moved to the device, as in training
        i = batch(gen, p.clf_batch_size)
        return F.cross_entropy(m(x[i].to(dev)), y[i].to(dev))
    clf = _adam_step_seconds(ctx, ColorMNISTClassifier(size=32 if tiny else 64, seed=ctx.seed), clf_loss)
    e = FactorINN(64, {"digit": 22, "fg": 11, "bg": 11}, seed=ctx.seed,
                  **(dict(n_blocks=2, hidden=32, depth=1) if tiny else p.e_size))
    codes = torch.randn(2, p.batch_size, 64, generator=g).to(dev)
    factor = torch.randint(0, 4, (p.batch_size,), generator=g).to(dev)
    fac = _adam_step_seconds(ctx, e, lambda m, gen: m.pair_loss(codes[0], codes[1], factor))
    t = ctx.measured.get("t_step_s", {}).get(p.batch_size)
    if t is None: t = _t_step(ctx, TINY_T if tiny else PAPER_T, p.batch_size)[1]   # the t_step section did not run
    return {"autoencoder": ae, "classifier": clf, "factors": fac, "invariances": t}


def paper_estimate(ctx: Ctx):
    "The `paper` profile's wall time here, stage by stage: its step counts × the seconds per step measured here."
    p = PROFILES["paper"]
    steps, n_t = _paper_steps(p)
    per_step = _paper_step_seconds(ctx, p)
    run = ctx.measured.get("colormnist")                 # the stages without steps: as the colormnist run took them
    stages = {}
    for s in STAGES:
        if s in steps: stages[s] = {"steps": steps[s], "s_per_step": per_step[s], "seconds": steps[s] * per_step[s]}
        else: stages[s] = {"seconds": run and run["seconds"].get(s), "from": run and f"{run['profile']} run, unscaled"}
    total = sum(v["seconds"] or 0 for v in stages.values())
    yield {"profile": "paper", "sizes": "tiny (not the paper's)" if ctx.tiny else "the paper's", "n_t": n_t,
           "stages": stages, "total_s": round(total, 1), "total_h": round(total / 3600, 2),
           "cpu_estimate_s": sum(p.est_seconds.values()),
           "assumptions": ["t: the d-128 vector-conditioned t of t_step at the profile's batch; the run's t's have "
                           "the code size 64 and condition on feature maps", "t's are timed one at a time; the run "
                           "trains them in stacks of t_stack, which can be faster", "validation, checkpoints, the "
                           "classifier's accuracy per checkpoint and e's guide are not timed: a lower bound",
                           "Adam's update is in every step; FLOP shares in t_step count forward + backward only"]}


SECTIONS = {"device": device_info, "unit_tests": unit_tests, "colormnist": colormnist, "t_step": t_step,
            "big_ae": big_ae, "study": study, "paper_estimate": paper_estimate}


def run_section(ctx: Ctx, name: str) -> bool:
    "Emit the section's lines; an exception (or a line with 'error') fails it, with one error line. True if it passed."
    torch.manual_seed(ctx.seed)
    print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
    ok = True
    try:
        for line in SECTIONS[name](ctx):
            emit(ctx, name, line)
            ok = ok and "error" not in line
    except Exception as e:
        traceback.print_exc()                               # to stderr (stdout is the JSON lines')
        emit(ctx, name, {"error": f"{type(e).__name__}: {str(e)[:1000]}"})
        ok = False
    finally:
        if ctx.dev.type == "cuda": torch.cuda.empty_cache()
    return ok


# ---- the command -----------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    "The command's arguments (see the module's docstring)."
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), required=True, help="where every section runs")
    ap.add_argument("--out", type=Path, required=True, help="folder of the logs, run folders and gpu_check.jsonl")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes and the smoke profile (a CPU check, < 5 min)")
    ap.add_argument("--cpu-run", type=Path, default=None,
                    help="a finished CPU `invnb colormnist` run of the same profile (quick; --tiny: smoke) to compare")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated, from: {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="every random draw derives from it")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds each subprocess (pytest, invnb) may take")
    return ap.parse_args(argv)


def _bad_input(a: argparse.Namespace) -> str | None:
    "What is wrong with the arguments, in one sentence with the fix; None if nothing."
    if a.device == "cuda" and not torch.cuda.is_available():
        return ("--device cuda: torch sees no CUDA device on this machine (torch.cuda.is_available() is False); "
                "run with --device cpu (add --tiny for the quick CPU check).")
    if a.cpu_run is not None and not (a.cpu_run / "metrics.json").is_file():
        return f"--cpu-run {a.cpu_run}: no metrics.json there; pass the folder of a finished invnb colormnist CPU run."
    if unknown := [s for s in a.sections.split(",") if s not in SECTIONS]:
        return f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}."
    return None


def main(argv=None) -> int:
    "Run the sections; 0 if all passed, 1 if any failed, 2 for bad input."
    a = parse_args(argv)
    if problem := _bad_input(a):
        print(json.dumps({"section": "device", "device": a.device, "error": problem}), flush=True)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "gpu_check.jsonl").write_text("")
    ctx, t0, failed = Ctx(a.device, a.out.resolve(), a.tiny, a.seed, a.cpu_run, a.timeout), time.perf_counter(), []
    chosen = ["device", *[s for s in SECTIONS if s != "device" and s in a.sections.split(",")]]
    with _json_stdout() as real:          # the JSON lines alone on stdout
        ctx.stdout = real
        for name in chosen:
            if not run_section(ctx, name): failed.append(name)
        emit(ctx, "summary", {"sections": chosen, "failed": failed, "wall_s": round(time.perf_counter() - t0, 1),
                              "out": str(ctx.out)})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
