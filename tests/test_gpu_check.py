"""benchmarks/gpu_check.py: its tiny CPU run (every stdout line is strict JSON naming the device, every section is
there and passes), its bad input (one line naming the fix, exit code 2), and how it compares two runs' estimates."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from invnb.profiles import PROFILES, STAGES

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ["device", "unit_tests", "colormnist", "t_step", "big_ae", "study", "paper_estimate", "summary"]


def gpu_check(*args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def json_lines(stdout: str) -> list[dict]:
    "Every line of `stdout` as strict JSON (NaN or Infinity fail the test)."
    strict = lambda c: pytest.fail(f"{c} in a JSON line of gpu_check")
    return [json.loads(line, parse_constant=strict) for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    "(completed process, its JSON lines, its --out folder) of `gpu_check.py --device cpu --tiny`."
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    r = gpu_check("--device", "cpu", "--tiny", "--out", out)
    return r, json_lines(r.stdout), out


def test_the_tiny_cpu_run_prints_json_lines_naming_the_device_for_every_section(tiny_run):
    r, lines, out = tiny_run
    errors = [l for l in lines if "error" in l]
    assert r.returncode == 0 and not errors, (errors, r.stderr[-4000:])
    assert all(l["device"] == "cpu" for l in lines)
    seen = [l["section"] for l in lines]
    assert sorted(set(seen), key=SECTIONS.index) == SECTIONS and seen[0] == "device" and seen[-1] == "summary"
    assert (out / "gpu_check.jsonl").read_text().splitlines() == r.stdout.splitlines()


def test_the_tiny_run_measures_what_the_issue_asks(tiny_run):
    _, lines, out = tiny_run
    by = lambda section: [l for l in lines if l["section"] == section]
    tests, = by("unit_tests")
    assert tests["passed"] > 0 and tests["failed"] == tests["errors"] == 0
    cm, = by("colormnist")
    assert cm["profile"] == "smoke" and cm["seconds"]["total"] > 0 and cm["peak_mem_MiB"] is None
    train = [l for l in by("t_step") if l.get("part") == "train"]
    assert [l["batch"] for l in train] == [64, 256] and all(l["samples_per_s"] > 0 for l in train)
    assert all(l["peak_mem_MiB"] is None and 0 < l["share_of_fp32_peak"] for l in train)
    assert {l.get("part") for l in by("t_step")} == {"matmul_peak", "train", "sample16"}
    assert {l["part"] for l in by("big_ae")} == {"before_disc", "with_disc"}
    assert all(l["s_per_step"] > 0 for l in by("big_ae"))
    st, = by("study")
    assert st["images"] == 24 and (out / "study" / "report.html").is_file()
    est, = by("paper_estimate")
    assert list(est["stages"]) == list(STAGES) and est["total_s"] > 0
    assert est["stages"]["invariances"]["steps"] == est["n_t"] * PROFILES["paper"].t_steps
    assert by("summary")[0]["failed"] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_device_cuda_without_a_gpu_is_one_line_naming_the_fix_and_exit_code_2(tmp_path):
    r = gpu_check("--device", "cuda", "--out", tmp_path / "out", timeout=300)
    line, = json_lines(r.stdout)
    assert r.returncode == 2 and line["device"] == "cuda" and "--device cpu" in line["error"], (r.stdout, r.stderr)
    assert "CUDA" in line["error"] and not (tmp_path / "out").exists()      # nothing started


def test_a_cpu_run_without_metrics_is_refused_up_front(tmp_path):
    r = gpu_check("--device", "cpu", "--tiny", "--cpu-run", tmp_path / "nothing", "--out", tmp_path / "out",
                  timeout=300)
    line, = json_lines(r.stdout)
    assert r.returncode == 2 and "metrics.json" in line["error"] and not (tmp_path / "out").exists()


def test_estimates_are_compared_within_their_standard_errors():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod                                             # its dataclass looks its module up
    spec.loader.exec_module(mod)
    est = lambda v, se: {"value": v, "se": se}
    a = {"eq19": {"final": {"l1": est(0.50, 0.01), "l2": est(0.90, 0.01), "l3": est(0.2, None)}}, "n": [1, 2]}
    b = {"eq19": {"final": {"l1": est(0.52, 0.01), "l2": est(0.50, 0.01), "l3": est(0.2, 0.1)}},
         "eq20": [est(0.1, 0.0)]}
    c = mod.compare_estimates(a, b)
    assert c["compared"] == 2 and c["within"] == 1 and [o["estimate"] for o in c["outside"]] == ["eq19.final.l2"]
    assert c["not_compared"] == ["eq19.final.l3"] and c["only_one_run"] == ["eq20[0]"]
    assert mod.compare_estimates(a, b, k=100)["outside"] == []
