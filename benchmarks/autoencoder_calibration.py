"""Is the ColorMNIST autoencoder calibrated, and does D(E(x)) keep the digits? The data of the `quick` profile
of `invnb colormnist` (4,500 / 500 bundled digits, seed 0); SmallAE(seed=0) trained with `train_autoencoder`
(γ in closed form unless --gamma learned), evaluated on the 500 validation digits; the quick profile's final
classifier (SqueezeNet, 1,200 steps, trained once and cached in --clf) classifies x and D(μ(x)).

    python benchmarks/autoencoder_calibration.py          # recommended: width 32, batch 32, lr 3e-3, 6,000 steps
    python benchmarks/autoencoder_calibration.py --width 64 --batch-size 64 --lr 1e-3 --steps 1200   # the quick profile as it was
    python benchmarks/autoencoder_calibration.py --width 64 --batch-size 64 --lr 1e-3 --steps 1200 --gamma learned

Prints one JSON object. One CPU thread (torch.set_num_threads(1)). `seconds` is the autoencoder's training
time; training the classifier the first time adds about 2 minutes on an idle 2-core CPU. gamma, mse, mse_sampled
are on the [0, 1] pixel scale (see `reconstruction_metrics`); gamma should match train_mse_sampled.
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from invnb.diagnostics import accuracy
from invnb.autoencoder import AELoss, SmallAE, reconstruction_metrics, train_autoencoder
from invnb.classifier import ColorMNISTClassifier, train_classifier
from invnb.colormnist import PROFILES, load_data


def classifier(data, path: Path) -> ColorMNISTClassifier:
    "The quick profile's final classifier: loaded from `path`, or trained (1,200 steps) and saved there."
    if path.is_file(): return ColorMNISTClassifier.load(path)
    clf = ColorMNISTClassifier(seed=0)
    with tempfile.TemporaryDirectory() as d:
        train_classifier(clf, data.xt, data.train.labels["digit"], data.xv, data.val.labels["digit"], steps=1200,
                         n_checkpoints=2, out_dir=d, batch_size=64, lr=1e-4, device="cpu", seed=0, progress=False)
    clf.save(path)
    return clf


@torch.no_grad()
def reconstruct(ae, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    "D(μ(x)), the deterministic round trip."
    ae.eval()
    return torch.cat([ae.decode(ae.encode(b)[0]) for b in x.split(batch_size)])


def measure(steps: int = 6000, width: int = 32, lr: float = 3e-3, batch_size: int = 32, gamma: str = "optimal",
            clf_path: str = "/tmp/clf_quick.safetensors") -> dict:
    torch.set_num_threads(1)
    data = load_data(PROFILES["quick"], seed=0)
    clf = classifier(data, Path(clf_path))
    ae = SmallAE(width=width, seed=0)
    t0 = time.perf_counter()
    train_autoencoder(ae, data.xt, steps=steps, batch_size=batch_size, lr=lr, loss=AELoss("l2", gamma=gamma),
                      device="cpu", seed=0, progress=False)
    seconds = time.perf_counter() - t0
    val, train = reconstruction_metrics(ae, data.xv), reconstruction_metrics(ae, data.xt)
    y = data.val.labels["digit"]
    return {"setting": dict(steps=steps, width=width, lr=lr, batch_size=batch_size, gamma=gamma),
            "gamma": val["gamma"], "mse": val["mse"], "psnr": val["psnr"], "mse_sampled": val["mse_sampled"],
            "train_mse_sampled": train["mse_sampled"], "train_psnr": train["psnr"],
            "accuracy_x": accuracy(clf, data.xv, y), "accuracy_dex": accuracy(clf, reconstruct(ae, data.xv), y),
            "seconds": round(seconds, 1), "load_average": round(os.getloadavg()[0], 1), "torch": torch.__version__}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--gamma", choices=("optimal", "learned"), default="optimal")
    ap.add_argument("--clf", default="/tmp/clf_quick.safetensors", help="the cached classifier (trained if missing)")
    a = ap.parse_args()
    print(json.dumps(measure(a.steps, a.width, a.lr, a.batch_size, a.gamma, a.clf)))
