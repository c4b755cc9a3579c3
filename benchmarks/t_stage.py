"""Stage 5 of `invnb colormnist` (every t of the study): the stage as it is (every t in one stack, Φ in the
channels-last layout), against the stage as it was (only the checkpoint layer's t's stacked, Φ in the usual layout),
and against one by one.

On a finished run folder, with its autoencoder, classifier checkpoints and profile: the whole t stage (the
unconditional t, one t per layer and per checkpoint, the null control, the other seeds; feature extraction and
validation included) is run three times into fresh folders, at the same steps: with the profile's `t_stack` (every t
stacked); with only the checkpoint layer's t's stacked and the classifiers' forward passes in the usual layout
(`invnb.probe.run_channels_last` told to skip them); and with `t_stack=1` (one by one, Φ as now). Prints one JSON
object: the seconds of each, their ratios (one by one / stacked: what stacking buys; before / stacked: what the
stage gained), and the largest
differences between the two of each t's best held-out NLL and of its whole held-out curve (float rounding grows over
a fit; the kept steps are compared too).

    python benchmarks/t_stage.py runs/colormnist [--steps 250]
"""
import argparse
import dataclasses
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

from invnb import colormnist, invariances
from invnb import probe as probe_module
from invnb.study import Study


every_t = invariances.t_stacks


def checkpoint_layer_only(layer):
    "The grouping before every t was stacked: only `layer`'s t's in stacks, every other t alone (`t_stacks`' signature)."
    def group(fits, stack):
        at, n = [k for k, (_, l, _) in fits.items() if l == layer], max(1, stack)
        out = {k: [k] for k in fits if k not in at}
        out.update({f"stack{i // n}": at[i:i + n] for i in range(0, len(at), n)})
        return {k: v for k, v in sorted(out.items(), key=lambda kv: list(fits).index(kv[1][0]))}
    return group


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a finished `invnb colormnist` run folder")
    ap.add_argument("--steps", type=int, default=None, help="each t's steps (default: the run's profile's)")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    state = json.loads((Path(a.run) / "state.json").read_text())
    prof = colormnist.PROFILES[state["profile"]]
    if a.steps: prof = dataclasses.replace(prof, t_steps=a.steps)
    study = Study.load(Path(a.run) / "study")
    data = colormnist.load_data(prof, state.get("seed", 0))
    codes, codes_val = (colormnist.encode_dataset(study.ae.encode, x, device="cpu") for x in (data.xt, data.xv))
    jobs = colormnist.invariance_jobs(prof, list(study.models))
    out, seconds = {}, {}
    with tempfile.TemporaryDirectory() as d:
        for name, stack in (("stacked", prof.t_stack), ("checkpoint_layer_stacked", prof.t_stack), ("one_by_one", 1)):
            before = name == "checkpoint_layer_stacked"
            invariances.t_stacks = checkpoint_layer_only(prof.checkpoint_layer) if before else every_t
            for m in study.models.values():        # the stage as it was: the usual layout for Φ
                (probe_module._USUAL_LAYOUT_ONLY.add if before else probe_module._USUAL_LAYOUT_ONLY.discard)(m.net)
            run = colormnist.RunSpec(Path(d) / name, dataclasses.replace(prof, t_stack=stack), state.get("seed", 0),
                                     torch.device("cpu"), False, lambda s: None)
            (run.study_dir / "t").mkdir(parents=True)
            t0 = time.perf_counter()
            colormnist.invariances_stage(run, data, codes, codes_val, study.models, jobs,
                                         colormnist.t_training_set(run, data, study.ae, codes))
            seconds[name] = time.perf_counter() - t0
            out[name] = {f.name: json.loads(f.read_text()) for f in (run.study_dir / "t").glob("*.training.json")}
    s, o = out["stacked"], out["one_by_one"]
    print(json.dumps({"profile": prof.name, "t_steps": prof.t_steps, "t_stack": prof.t_stack, "ts": len(s),
                      "threads": torch.get_num_threads(), "seconds_stacked": round(seconds["stacked"], 1),
                      "seconds_one_by_one": round(seconds["one_by_one"], 1),
                      "seconds_as_before": round(seconds["checkpoint_layer_stacked"], 1),
                      "ratio": round(seconds["one_by_one"] / seconds["stacked"], 3),
                      "ratio_to_as_before": round(seconds["checkpoint_layer_stacked"] / seconds["stacked"], 3),
                      "max_best_val_difference": max(abs(s[k]["best_val_nll"] - o[k]["best_val_nll"]) for k in s),
                      "max_val_curve_difference": max(abs(x[1] - y[1]) for k in s for x, y in zip(s[k]["val_nll"], o[k]["val_nll"])),
                      "different_kept_steps": sorted(k for k in s if s[k]["best_step"] != o[k]["best_step"])}))


if __name__ == "__main__":
    main()
