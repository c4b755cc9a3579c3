"""Every benchmark of invnb in one JSON object:

- t training samples/s at the paper and CPU configurations, with the ratio against the plain reference
  implementation run in the same process, and the latency of 16 samples (benchmarks/flows.py);
- Eq. 19 / Eq. 20 time for 10k samples (benchmarks/estimators.py);
- widget redraw latency (benchmarks/widgets.py);
- the stage times of `invnb colormnist --profile quick`, run now in a fresh folder (about 10 minutes on a 2-core
  CPU), or read from a finished run with --colormnist-run.

    python benchmarks/run_all.py [--quick] [--colormnist-run runs/colormnist]
"""
import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import estimators  # noqa: E402
import flows  # noqa: E402
import widgets  # noqa: E402


def colormnist_stages(run: str | None) -> dict:
    if run is None:
        out = Path(tempfile.mkdtemp()) / "run"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from invnb.cli import main; raise SystemExit(main())", "colormnist", "--profile", "quick", "--out", str(out),
                        "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
    else:
        out, wall = Path(run), None
    m = json.loads((out / "metrics.json").read_text())
    return {"run": str(out), "profile": m["profile"], "seconds": m["seconds"], "wall_s": wall and round(wall, 1),
            "final_accuracy": m["checkpoints"][-1]["val_accuracy"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions of the flow benchmark")
    ap.add_argument("--colormnist-run", default=None, help="read the stage times of this finished run instead of running one")
    a = ap.parse_args()
    reps = 3 if a.quick else 7
    res = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                       "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "date": time.strftime("%Y-%m-%d")}}
    torch.manual_seed(0)
    res["t_training_and_sampling"] = {name: {"config": cfg, **flows.bench_config(name, cfg, reps, (64,))}
                                      for name, cfg in flows.CONFIGS.items()}
    res["estimators"] = estimators.measure()
    res["widgets"] = widgets.measure()
    res["colormnist_quick"] = colormnist_stages(a.colormnist_run)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
