"""Φ of many images (`invnb.features.features_of_layers`, the path stage 5 and `invnb study` take) in the
channels-last layout that `invnb.probe.run_channels_last` gives the forward pass, against the usual layout, in one
process: the ColorMNIST classifier (SqueezeNet 1.1 at 64 px; weights do not change the cost, so random ones), at the
quick profile's layers, 28-px images in [-1, 1]. Best of 3 alternating rounds. Prints one JSON object: milliseconds
per image of each, their ratio (usual / channels-last, > 1: faster), and the largest difference of the features
(relative to the layer's largest value: float rounding).

    python benchmarks/features.py [--images 2048] [--layers features.5,features.8,features.10,features.11,softmax]
"""
import argparse
import json
import time

import torch

from invnb import probe as probe_module
from invnb.classifier import ColorMNISTClassifier
from invnb.features import features_of_layers


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--layers", default="features.5,features.8,features.10,features.11,softmax")
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    clf = ColorMNISTClassifier().eval()
    x = torch.rand(a.images, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    usual_only = probe_module._USUAL_LAYOUT_ONLY

    def run(layout):
        (usual_only.add if layout == "usual" else usual_only.discard)(clf.net)
        t0 = time.perf_counter()
        f = features_of_layers(clf, a.layers, x, batch_size=a.batch, device="cpu")
        return time.perf_counter() - t0, f

    best, feats = {"usual": float("inf"), "channels_last": float("inf")}, {}
    for _ in range(3):
        for layout in best:
            s, feats[layout] = run(layout)
            best[layout] = min(best[layout], s)
    usual_only.discard(clf.net)
    diff = max(((feats["usual"][l] - feats["channels_last"][l]).abs().max() / feats["usual"][l].abs().max()).item()
               for l in feats["usual"])
    print(json.dumps({"images": a.images, "layers": a.layers, "batch": a.batch, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "ms_per_image_usual": round(best["usual"] / a.images * 1e3, 3),
                      "ms_per_image_channels_last": round(best["channels_last"] / a.images * 1e3, 3),
                      "ratio": round(best["usual"] / best["channels_last"], 3), "max_relative_difference": diff}))


if __name__ == "__main__":
    main()
