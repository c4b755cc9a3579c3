"""Seconds per training step of the autoencoder `invnb study --ae-arch big` trains (Tab. S7's BigAE: ResNet-101
encoder, BigGAN decoder, z̄ ∈ R^128; L1 + LPIPS, and the PatchGAN term after its start), beside the SmallAE step
`--ae-arch small` takes, in one process on this machine's CPU. LPIPS's VGG weights do not change the cost, so its
random backbone (offline). Each figure is the time of 1 + `--steps` steps less that of 1 step, over `--steps`, through
`train_autoencoder` as the study calls it. Prints one JSON object: seconds per step of each phase, the ratio
big / small, parameter counts, and the peak resident memory of the process.

    python benchmarks/big_ae_step.py [--size 128] [--batch 8] [--steps 3]
"""
import argparse
import json
import resource
import time

import torch

from invnb.autoencoder import AELoss, BigAE, PatchDiscriminator, SmallAE, train_autoencoder


def seconds_per_step(make, x, loss, batch, steps, lr):
    "(a run of 1 + `steps` steps − a run of 1 step) / `steps`: the steady step, without setup and the first step."
    def run(n):
        model, l = make(), loss()
        t0 = time.perf_counter()
        train_autoencoder(model, x, n, batch_size=batch, lr=lr, loss=l, device="cpu", progress=False)
        return time.perf_counter() - t0
    return (run(1 + steps) - run(1)) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    x = torch.rand(64, 3, a.size, a.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    count = lambda m: sum(p.numel() for p in m.parameters())
    out = {"size": a.size, "batch": a.batch, "threads": torch.get_num_threads()}
    small_size = min(a.size, 64)
    xs = torch.nn.functional.interpolate(x, size=small_size, mode="bilinear", align_corners=False)
    out["small_size"] = small_size
    out["small_s_per_step"] = seconds_per_step(lambda: SmallAE(size=small_size, width=32), xs, lambda: None, 64,
                                               a.steps, 1e-3)
    out["big_params_M"] = count(BigAE(size=a.size)) / 1e6
    n_down = min(4, a.size.bit_length() - 3)
    loss = lambda start: lambda: AELoss("l1+lpips", lpips_pretrained=False, disc=PatchDiscriminator(n_down=n_down),
                                        disc_start=start)
    out["big_s_per_step_before_disc"] = seconds_per_step(lambda: BigAE(size=a.size), x, loss(10 ** 9), a.batch,
                                                         a.steps, 1e-4)
    out["big_s_per_step_with_disc"] = seconds_per_step(lambda: BigAE(size=a.size), x, loss(0), a.batch, a.steps, 1e-4)
    out["big_over_small_step"] = out["big_s_per_step_with_disc"] / out["small_s_per_step"]
    out["peak_rss_GB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
