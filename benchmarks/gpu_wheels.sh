#!/usr/bin/env bash
# The wheels a lent GPU machine needs beside its own torch (no network there): invnb's pure-Python dependencies that
# its image lacks, at the versions installed here (the ones the tests ran with), into .whl/ (git-ignored; < 64 MiB).
# Never torch, torchvision or nvidia-* wheels: the machine's CUDA builds must stay. On the machine:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site && python3 benchmarks/gpu_check.py --device cuda --out /tmp/gc
set -euo pipefail
cd "$(dirname "$0")/.."
pins=$(python - <<'PY'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("fastcore", "lpips", "plotly")))
PY
)
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl $pins
du -sh .whl && ls .whl
