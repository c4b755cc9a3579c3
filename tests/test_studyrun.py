"""`invnb study` as a run folder: the settings check of a rerun, `invnb check`, and what a careful user, a hostile
file and a full disk meet (NaN weights, pickles, too few images, the umask, a lone lock file)."""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from invnb.checkpoint import write_json_atomic
from invnb.cli import main
from invnb.runs import LOCK, run_lock, sha256

CLI_T = ["--t-blocks", "1", "--t-hidden", "8", "--t-embed", "8", "--steps", "5", "--n-eval", "6", "--device", "cpu",
         "--no-progress"]


def study(folder, out, *extra) -> list[str]:
    return ["study", "--model", "torchvision:resnet18", "--images", str(folder), "--layers", "layer2", "--out",
            str(out), *CLI_T, *extra]


def run(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def finished(folder, ae, tmp_path_factory):
    "A finished `invnb study` run with a given autoencoder (--ae), made under umask 022."
    out = tmp_path_factory.mktemp("finished") / "run"
    old = os.umask(0o022)
    try: assert main(study(folder, out, "--ae", str(ae[1]))) == 0
    finally: os.umask(old)
    return out


def test_invnb_check_passes_a_healthy_study_run_and_finds_its_damage(finished, tmp_path, capsys):
    code, err = run(["check", str(finished)], capsys)
    assert code == 0, err
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    t = next((out / "study" / "t").glob("*.safetensors"))
    t.write_bytes(t.read_bytes()[:-8] + b"damaged!")
    m = json.loads((out / "metrics.json").read_text())
    del m["results"]["eq19"]["model"]["layer2"]
    (out / "metrics.json").write_text(json.dumps(m))
    code, err = run(["check", str(out)], capsys)
    assert code == 1 and f"study/t/{t.name}" in err and "eq19[model] lacks layers ['layer2']" in err, err
    assert "KeyError" not in err


def test_a_study_run_records_only_the_settings_it_used(finished, ae):
    m = json.loads((finished / "metrics.json").read_text())
    s = m["run"]["settings"]
    assert s["autoencoder"] == {"sha256": sha256(ae[1])[:16], "size": 32}      # by its content, and its own size
    assert m["run"]["data"]["ae"] == str(ae[1])                                 # where it was, for the reader
    assert not {"train_ae", "size", "device"} & set(s) and s["layers"] == ["layer2"]
    assert json.loads((finished / "state.json").read_text())["settings"] == s


def test_a_rerun_with_the_same_autoencoder_by_another_path_goes_on(finished, ae, folder, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shutil.copy(ae[1], tmp_path / "same.safetensors")
    code, err = run(study(folder, out, "--ae", str(tmp_path / "same.safetensors")), capsys)
    assert code == 0, err
    with pytest.raises(SystemExit):                                        # one sample has no SE: refused up front
        main(study(folder, out, "--ae", str(ae[1]), "--n-eval", "1"))
    assert "--n-eval must be at least 2" in capsys.readouterr().err


def test_metrics_json_is_strict_json_and_nan_is_refused_by_name(finished, tmp_path):
    json.loads((finished / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    from invnb.results import Estimate
    assert Estimate.from_json(Estimate(0.5, float("nan")).to_json()).se != Estimate(0.5, 0.0).se   # NaN → null → NaN
    assert Estimate(0.5, float("nan")).to_json() == {"value": 0.5, "se": None}
    with pytest.raises(ValueError, match=r"a\.b\[1\] is nan.*JSON has no NaN"):
        write_json_atomic(tmp_path / "m.json", {"a": {"b": [1.0, float("nan")]}})
    assert not (tmp_path / "m.json").exists()


def test_files_keep_the_umask_s_mode(finished, tmp_path):
    modes = {p.relative_to(finished).as_posix(): p.stat().st_mode & 0o777 for p in finished.rglob("*") if p.is_file()}
    assert modes["report.html"] == modes["metrics.json"] == 0o644, modes
    assert set(modes.values()) == {0o644}, modes               # the t's, the study, the figures, the lock alike
    old = os.umask(0o027)
    try: assert (write_json_atomic(tmp_path / "a.json", {}).stat().st_mode & 0o777) == 0o640
    finally: os.umask(old)


def test_a_rerun_with_other_settings_is_refused_naming_what_differs(folder, ae, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    base = study(folder, out, "--train-ae", "3", "--size", "32")
    code, err = run(base, capsys)
    assert code == 0, err
    trained = sha256(out / "ae.safetensors")
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    im = next(other.rglob("*.png"))
    from PIL import Image
    Image.new("RGB", (32, 32), (1, 2, 3)).save(im)
    for extra, named in ((["--size", "64"], "autoencoder.size: 32 recorded, 64 asked"),
                         (["--train-ae", "4"], "autoencoder.train_steps: 3 recorded, 4 asked"),
                         (["--steps", "6"], "steps: 5 recorded, 6 asked"),
                         (["--layers", "layer2,layer3"], 'layers: ["layer2"] recorded, ["layer2", "layer3"] asked'),
                         (["--n-eval", "7"], "n_eval: 6 recorded, 7 asked"),
                         (["--t-hidden", "9"], "t_size.hidden: 8 recorded, 9 asked"),
                         (["--images", str(other)], "other data (sha256 differ"),
                         (["--baselines"], "baselines: null recorded, true asked"),
                         (["--baselines", "--fid", "torchvision:alexnet"], 'fid: null recorded, "torchvision:alexnet" asked')):
        code, err = run(base + extra, capsys)
        assert code == 2 and named in err and err.count("\n") == 1 and "--force" in err, (extra, err)
    code, err = run(study(folder, out, "--ae", str(ae[1])), capsys)        # another autoencoder: a given one
    assert code == 2 and "autoencoder.sha256" in err and "autoencoder.train_steps" in err, err
    monkeypatch.chdir(folder.parent)                                         # the same images by another path: the same run
    code, err = run(study(os.path.relpath(folder), out, "--train-ae", "3", "--size", "32"), capsys)
    assert code == 0, err
    assert sha256(out / "ae.safetensors") == trained                       # nothing of the first run was touched
    code, err = run(base + ["--size", "64", "--force"], capsys)             # --force replaces the run
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["run"]["settings"]["autoencoder"]["size"] == 64


def test_too_few_images_are_refused_naming_the_minimum(folder, ae, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(next(folder.rglob("*.png")), one / "a.png")
    code, err = run(study(one, tmp_path / "run", "--ae", str(ae[1])), capsys)
    assert code == 2 and "holds 1 image; a study needs at least 16" in err and not (tmp_path / "run").exists(), err


def test_nan_weights_in_a_checkpoint_are_named_as_such(folder, ae, tmp_path, capsys):
    state = resnet18().state_dict()
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    code, err = run(study(folder, tmp_path / "run", "--ae", str(ae[1]), "--checkpoint", str(tmp_path / "nan.pt")), capsys)
    assert code == 2 and "holds NaN or infinite weights (layer1.0.conv1.weight" in err and "lower lr" not in err, err


def test_a_pickle_refusal_is_whole_and_runs_nothing(folder, ae, tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, torch
        class Evil:
            def __reduce__(self): return (os.system, ("touch {tmp_path / 'pwned'}",))
        torch.save({{"w": Evil()}}, {str(evil)!r})""")], check=True)
    code, err = run(study(folder, tmp_path / "run", "--ae", str(ae[1]), "--checkpoint", str(evil)), capsys)
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "pwned").exists(), err
    assert "posix.system" in err and "(UnpicklingError: Weights only load failed" not in err, err   # the reason, whole
    assert err.rstrip().endswith("torch.save(model.state_dict(), path).")


def test_a_failed_run_leaves_no_lone_lock(tmp_path, capsys):
    code, err = run(["colormnist", "--profile", "smoke", "--out", str(tmp_path / "new"), "--mnist-root",
                     str(tmp_path / "nothing"), "--no-progress"], capsys)
    assert code == 2 and not (tmp_path / "new").exists(), err            # the folder it made goes with the lock
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZeroDivisionError), run_lock(tmp_path / "empty"): 1 / 0
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())   # a folder it found stays
    with run_lock(tmp_path / "kept"): (tmp_path / "kept" / "state.json").write_text("{}")
    assert (tmp_path / "kept" / LOCK).is_file()                           # a folder with a run keeps its lock


def test_a_damaged_t_record_is_made_again_with_its_t(finished, folder, ae, tmp_path, capsys):
    "A t's training record emptied in a finished run: the rerun names it, trains that t again (the same bytes), and finishes."
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    record, t = (out / "study" / "t" / f"model__layer2{x}" for x in (".training.json", ".safetensors"))
    record.write_text("")
    code = main(study(folder, out, "--ae", str(ae[1])))
    assert code == 0
    assert json.loads(record.read_text())["steps"] == 5
    assert t.read_bytes() == (finished / "study" / "t" / t.name).read_bytes()


UNSHARE = shutil.which("unshare")


def _mount_namespace_works() -> bool:
    if UNSHARE is None: return False
    return subprocess.run([UNSHARE, "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _mount_namespace_works(), reason="needs unshare -rm (a private mount namespace) for a tmpfs")
def test_a_full_disk_is_one_line_and_a_rerun_after_freeing_space_resumes(folder, ae, tmp_path):
    """A run into a 400 kB tmpfs (in a private mount namespace) stops with one line naming the file and the free
    space; after the tmpfs is enlarged, the same command finishes, and its t equals the t of a run with room."""
    disk, saved, roomy = tmp_path / "disk", tmp_path / "saved", tmp_path / "roomy"
    disk.mkdir(); saved.mkdir()
    args = " ".join(f"'{a}'" for a in study(folder, disk / "run", "--ae", str(ae[1])))
    script = textwrap.dedent(f"""
        mount -t tmpfs -o size=400k tmpfs {disk}
        {sys.executable} -m invnb {args} > {saved}/out1 2> {saved}/err1; echo $? > {saved}/rc1
        mount -o remount,size=256m tmpfs {disk}
        {sys.executable} -m invnb {args} > {saved}/out2 2> {saved}/err2; echo $? > {saved}/rc2
        cp {disk}/run/study/t/model__layer2.safetensors {saved}/t.safetensors 2>/dev/null
        true""")
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    subprocess.run([UNSHARE, "-rm", "bash", "-c", script], check=True, env=env, timeout=600)
    err1 = (saved / "err1").read_text()
    assert (saved / "rc1").read_text().strip() == "2", err1
    assert err1.count("\n") == 1 and "no space left on the device while writing" in err1 and "MB free there" in err1, err1
    assert "Traceback" not in err1
    assert (saved / "rc2").read_text().strip() == "0", (saved / "err2").read_text()
    assert main(study(folder, roomy, "--ae", str(ae[1]))) == 0
    assert (saved / "t.safetensors").read_bytes() == (roomy / "study" / "t" / "model__layer2.safetensors").read_bytes()


def test_errors_a_cli_user_meets_offer_what_the_cli_can_do(folder, ae, tmp_path, capsys):
    "An unreadable image: delete or move it (the skip option is Python's, and said so); a t of other arguments: --out."
    bad = tmp_path / "images"
    shutil.copytree(folder, bad)
    (bad / "discs" / "broken.png").write_bytes(b"not a png" * 10)
    code, err = run(study(bad, tmp_path / "run", "--ae", str(ae[1])), capsys)
    assert code == 2 and "broken.png" in err and "move it out of the folder" in err, err
    assert "from Python, load_image_folder(..., on_error='skip')" in err and err.count("\n") == 1
    from invnb.fitting import fit_invariances_over
    from invnb.probe import Probe
    model, x = resnet18().eval(), torch.randn(4, 3, 32, 32)
    codes = {"mean": torch.randn(4, 8), "logvar": torch.zeros(4, 8)}
    kw = dict(ckpt_dir=tmp_path / "t", n_blocks=1, hidden=8, embed_dim=8, batch_size=4, device="cpu", progress=False)
    fit_invariances_over({"layer4": Probe(model, "layer4")}, x, codes, steps=1, **kw)
    with pytest.raises(ValueError, match=r"write the t's to another folder \(`ckpt_dir`; invnb study: `out`\)"):
        fit_invariances_over({"layer4": Probe(model, "layer4")}, x, codes, steps=2, **kw)


def test_augmentation_reaches_the_autoencoder_and_the_t_s_alike_and_is_recorded(folder, tmp_path, capsys, monkeypatch):
    "--augment: the SmallAE and the t's train on the same augmented copies; a rerun with other transforms is refused."
    import invnb.build, invnb.images, invnb.studyrun
    seen = {}
    train_ae, features = invnb.studyrun.train_autoencoder, invnb.build.encode_and_features

    def ae_spy(ae, images, *a, **k):
        seen["ae"] = images.clone()
        return train_ae(ae, images, *a, **k)

    def t_spy(ae, probes, images, *a, **k):
        seen["t"] = torch.stack([images[i] if not isinstance(images[i], tuple) else images[i][0] for i in range(len(images))])
        return features(ae, probes, images, *a, **k)

    monkeypatch.setattr(invnb.studyrun, "train_autoencoder", ae_spy)
    monkeypatch.setattr(invnb.build, "encode_and_features", t_spy)
    out = tmp_path / "run"
    base = study(folder, out, "--train-ae", "2", "--size", "32", "--augment", "flip,crop", "--augment-copies", "3")
    code, err = run(base, capsys)
    assert code == 0, err
    assert len(seen["ae"]) == len(seen["t"]) == 3 * 22 and torch.equal(seen["ae"], seen["t"])     # the same images
    assert not torch.equal(seen["ae"][22:44], seen["ae"][:22])                                   # copies are augmented
    _, held, _, _ = invnb.images.split_images(folder, 32, 0.1, seed=0)       # the run's held-out 2: trained on by none
    assert not any(torch.equal(h, x) for h in held for x in seen["ae"][:22])
    s = json.loads((out / "state.json").read_text())["settings"]
    assert s["augment"] == {"transforms": ["flip", "crop"], "copies": 3}
    code, err = run(study(folder, out, "--train-ae", "2", "--size", "32", "--augment", "flip", "--augment-copies", "3"), capsys)
    assert code == 2 and 'augment.transforms: ["flip", "crop"] recorded, ["flip"] asked' in err, err
    code, err = run(study(folder, out, "--train-ae", "2", "--size", "32"), capsys)               # none: also other settings
    assert code == 2 and "augment" in err, err
    code, err = run(study(folder, tmp_path / "r2", "--train-ae", "2", "--augment", "flip,blur"), capsys)
    assert code == 2 and "unknown augmentation 'blur'; choose from flip, crop, jitter, rotate" in err, err
    with pytest.raises(SystemExit):
        main(study(folder, tmp_path / "r3", "--train-ae", "2", "--augment", "flip", "--augment-copies", "0"))
    assert "--augment-copies must be at least 1" in capsys.readouterr().err


def test_the_held_out_split_is_disjoint_seeded_and_refuses_what_cannot_split(folder):
    from invnb.build import BuildError
    from invnb.images import split_images
    train, x, y, rec = split_images(folder, 32, 0.25, seed=3)
    n = len(train) + len(x)
    assert (rec["n_train"], rec["n_val"], n) == (18, 6, 24) and x.shape == (6, 3, 32, 32) and y.shape == (6,)
    held = set(range(n)) - set(train.indices)
    assert len(held) == 6 and not held & set(train.indices)                     # disjoint, and together all images
    full = train.dataset
    assert all(torch.equal(full[i][0], xi) for i, xi in zip(sorted(held), x))  # the held-out images, in order
    again = split_images(folder, 32, 0.25, seed=3)
    assert again[0].indices == train.indices and torch.equal(again[1], x)      # the same seed, the same split
    assert split_images(folder, 32, 0.25, seed=4)[0].indices != train.indices   # another seed, another split
    t_train, t_val, t_y, _ = split_images(torch.rand(20, 3, 8, 8), 8, 0.2, seed=0)
    assert t_train.shape == (16, 3, 8, 8) and t_val.shape == (4, 3, 8, 8) and t_y is None
    for bad in (0, 1, 1.5, -0.1, True):
        with pytest.raises(BuildError, match="`val_fraction` must lie strictly between 0 and 1"):
            split_images(folder, 32, bad)
    with pytest.raises(BuildError, match=r"holding out 10 .* leaves 14 to train on, fewer than the 16"):
        split_images(folder, 32, 0.4)


def test_a_study_report_is_computed_on_held_out_images_with_relative_verdicts(finished):
    m = json.loads((finished / "metrics.json").read_text())
    split, r = m["run"]["data"]["split"], m["results"]
    assert (split["n_val"], split["n_train"]) == (2, 22) and m["run"]["settings"]["val_fraction"] == 0.1
    c = r["t_checks"]["model"]["layer2"]
    assert {"train_nll", "val_nll", "nll_gap", "agreement", "agreement_se", "info_nats", "phi_distance"} <= set(c)
    assert len(r["diagnostics"]["ceiling"]) == 1                        # the layer's ceiling, beside its agreement
    assert 0 <= r["diagnostics"]["autoencoder"]["agreement"] <= 1
    page = (finished / "report.html").read_text()
    assert "Held-out diagnostics" in page and "computed on the 2 held-out images" in page
    assert ">pass<" not in page and ">FAIL<" not in page                  # no threshold set: readings, no verdicts
    assert "images t was trained on" not in page


def test_thresholds_the_user_sets_pass_or_fail_and_bad_ones_are_named(finished, folder, ae, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    code, err = run(study(folder, out, "--ae", str(ae[1]), "--threshold", "psnr=1000",
                          "--threshold", "gap=1e9"), capsys)
    assert code == 0, err
    page, m = (out / "report.html").read_text(), json.loads((out / "metrics.json").read_text())
    assert m["thresholds"] == {"psnr": 1000.0, "gap": 1e9}
    assert ">FAIL<" in page and ">pass<" in page                         # psnr fails, the gap passes
    code, err = run(study(folder, out, "--ae", str(ae[1]), "--threshold", "psnrr=2"), capsys)
    assert code != 0 and "no study check 'psnrr' (did you mean 'psnr'?)" in err, err
    code, err = run(study(folder, out, "--ae", str(ae[1]), "--threshold", "gap=lots"), capsys)
    assert code != 0 and "the threshold of 'gap' must be a finite number; got 'lots'" in err, err


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    "(a flat folder of 400 bundled MNIST digits in ColorMNIST colours, its attrs.csv (file, digit, fg, bg), labels)."
    from PIL import Image
    from invnb.data import ColorMNIST, load_mnist
    root = tmp_path_factory.mktemp("colour")
    with pytest.warns(UserWarning, match="bundled"): x, y = load_mnist()["train"]
    pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:400]     # the bundled digits are in order
    cm = ColorMNIST(torch.as_tensor(x)[pick], torch.as_tensor(y)[pick], seed=0)
    images, rows = cm.images(), ["file,digit,fg,bg"]
    (root / "images").mkdir()
    for i, im in enumerate(images):
        Image.fromarray(((im.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()).save(root / "images" / f"{i:04d}.png")
        rows.append(f"{i:04d}.png," + ",".join(str(int(cm.labels[k][i])) for k in ("digit", "fg", "bg")))
    (root / "attrs.csv").write_text("\n".join(rows) + "\n")
    return root / "images", root / "attrs.csv", cm.labels


def test_factors_are_read_from_a_table_or_the_class_folders_and_bad_tables_are_named(colour_folder, folder, tmp_path):
    from invnb.build import BuildError
    from invnb.data import load_image_folder
    from invnb.images import read_factors
    images, table, labels = colour_folder
    ds = load_image_folder(images, size=28)
    got = read_factors(f"{table}:bg,fg", ds)
    order = [int(Path(p).stem) for p, _ in ds.samples]                  # the dataset's order, by file name
    assert list(got) == ["bg", "fg"] and all(torch.equal(got[k], labels[k][order]) for k in got)
    assert list(read_factors(str(table), ds)) == ["digit", "fg", "bg"]   # no columns named: all of them
    assert torch.equal(read_factors("class", load_image_folder(folder, size=32))["class"], torch.tensor([0, 1] * 12).sort().values)
    celeba = tmp_path / "list_attr_celeba.txt"                          # CelebA's layout: count, names, rows of ±1
    celeba.write_text(f"{len(ds)}\nSmiling Young\n" + "".join(f"{Path(p).name} {1 if i % 2 else -1} 1\n"
                                                             if i else f"{Path(p).name} 1 -1\n" for i, (p, _) in enumerate(ds.samples)))
    smile = read_factors(f"{celeba}:Smiling", ds)["Smiling"]
    assert smile[0] == 1 and smile[1] == 1 and smile[2] == 0 and set(smile.tolist()) == {0, 1}
    lines = table.read_text().splitlines()
    cases = {"missing": (lines[:-1], "has no row for 1 of the 400 images, e.g. ['0399.png']"),
             "one value": ([lines[0]] + [l.rsplit(",", 1)[0] + ",3" for l in lines[1:]], "column 'bg' has the one value 3"),
             "text": ([lines[0], lines[1].rsplit(",", 1)[0] + ",red"] + lines[2:], "column 'bg' holds 'red', not an integer")}
    for name, (rows, message) in cases.items():
        bad = tmp_path / f"{name.replace(' ', '_')}.csv"
        bad.write_text("\n".join(rows) + "\n")
        with pytest.raises(BuildError, match=message.replace("[", r"\[").replace("]", r"\]")):
            read_factors(f"{bad}:bg", ds)
    with pytest.raises(BuildError, match=r"no column 'colour'; its columns: digit, fg, bg"):
        read_factors(f"{table}:colour", ds)
    with pytest.raises(BuildError, match=r"no column 'bgg' \(did you mean 'bg'\?\)"):
        read_factors(f"{table}:bgg", ds)
    with pytest.raises(BuildError, match="no such file"):
        read_factors(str(tmp_path / "none.csv"), ds)


def test_a_table_of_known_factors_is_recovered_by_e_and_shuffled_labels_are_not(colour_folder, tmp_path, capsys):
    "--factors attrs.csv:fg,bg: e's held-out pairs sharing a colour correlate in its slice; the same with the labels shuffled do not."
    images, table, _ = colour_folder
    lines = table.read_text().splitlines()
    g = torch.Generator().manual_seed(0)
    shuffled = tmp_path / "shuffled.csv"        # every row keeps its file, the labels come from another row
    perm = torch.randperm(len(lines) - 1, generator=g).tolist()
    shuffled.write_text("\n".join([lines[0]] + [lines[1 + i].split(",", 1)[0] + "," + lines[1 + j].split(",", 1)[1]
                                                for i, j in enumerate(perm)]) + "\n")
    own = {}
    for name, t in (("known", table), ("shuffled", shuffled)):
        out = tmp_path / name
        args = ["study", "--model", "torchvision:resnet18", "--images", str(images), "--layers", "layer1", "--out", str(out),
                "--train-ae", "300", "--size", "28", "--steps", "150", "--t-blocks", "2", "--t-hidden", "32", "--t-embed",
                "16", "--n-eval", "10", "--device", "cpu", "--no-progress", "--factors", f"{t}:fg,bg"]
        code, err = run(args, capsys)
        assert code == 0, err
        m = json.loads((out / "metrics.json").read_text())
        own[name] = m["results"]["diagnostics"]["factors"]["own"]
        assert set(m["results"]["share"]["model"]["layer1"]) == {"residual", "fg", "bg"} and m["results"]["eq20"]["model"]
        assert "Named factors: what each layer keeps of them" in (out / "report.html").read_text()
    assert own["known"]["fg"] > 0.6 and own["known"]["bg"] > 0.6, own          # measured: 0.75 and 0.86
    assert abs(own["shuffled"]["fg"]) < 0.3 and abs(own["shuffled"]["bg"]) < 0.3, own   # measured: −0.05, −0.01


def finished_plain(folder, ae, out_root) -> Path:
    "A finished run without --baselines."
    out = out_root / "plain"
    assert main(study(folder, out, "--ae", str(ae[1]))) == 0
    return out


def test_baselines_put_the_decoder_and_the_optimisation_beside_t_on_the_same_images(folder, ae, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run(study(folder, out, "--ae", str(ae[1]), "--baselines"), capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    b = m["baselines"]["layer2"]
    assert b["images"] == 2 and all(0 <= b[k] <= 1 for k in ("t", "decoder", "optimisation"))
    assert b["optimisation_feature_loss"] < 0.5              # M&V matched the features (from random starts: ~1)
    assert (out / "figures" / b["grid"]).is_file()
    page = (out / "report.html").read_text()
    assert "Baselines on the same layer and images" in page and "M&amp;V optimisation" in page
    from invnb.inversion import FeatureDecoder, baseline_rows
    from invnb.study import Study
    from invnb.baselines import BuildError, load_baseline_decoders
    from invnb.widgets import LayerExplorer
    decoders = load_baseline_decoders(out)                     # the decoders the run trained, for the explorer's rows
    assert set(decoders) == {"layer2"} and isinstance(decoders["layer2"], FeatureDecoder)
    st = Study.load(out / "study")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lx = LayerExplorer(st, x, baselines=baseline_rows(st, decoders, n_starts=2, steps=3))
    db = lx._rows[(0, "layer2", "D&B decoder")]
    with torch.no_grad(): torch.testing.assert_close(db, decoders["layer2"](st.probe("layer2").phi(x[:1])))
    assert lx._rows[(0, "layer2", "M&V optimisation (2 starts)")].shape == (2, 3, 32, 32) and lx.error is None
    with pytest.raises(BuildError, match="was run without `baselines`"):
        load_baseline_decoders(finished_plain(folder, ae, tmp_path))


def test_fid_scores_every_method_on_the_same_images_in_another_network(folder, ae, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run(study(folder, out, "--ae", str(ae[1]), "--baselines", "--fid", "torchvision:alexnet",
                          "--val-fraction", "0.2"), capsys)
    assert code == 0, err
    q = json.loads((out / "metrics.json").read_text())["baselines"]["layer2"]["fid"]
    assert set(q) == {"t", "decoder", "optimisation", "network", "calibration"} and "random weights" in q["network"]
    assert q["t"]["fid_se"] is not None and q["decoder"]["fid_se"] is None      # SE over draws of v; one decoder image
    cal = q["calibration"]
    assert set(cal) == {"training images", "shuffled pixels", "discriminates"}
    assert cal["discriminates"] == (cal["shuffled pixels"]["fid"] > 2 * cal["training images"]["fid"])
    page = (out / "report.html").read_text()
    assert "FID and KID against the same held-out images" in page and "reference" in page
    assert ("it does not tell structure from noise" in page) == (not cal["discriminates"])
    for extra, message in ((["--fid", "torchvision:alexnet"], "add --baselines"),
                           (["--baselines", "--fid", "torchvision:resnet18"], "is the model under study"),
                           (["--baselines", "--fid", "torchvision:squeezenet1_1"], "no nn.Linear layer"),
                           (["--baselines", "--fid", "inception:/no/such.pth"], "no file /no/such.pth"),
                           (["--baselines", "--fid", "alexnet"], "takes torchvision:NAME")):
        code, err = run(study(folder, tmp_path / "bad", "--ae", str(ae[1]), *extra), capsys)
        assert code != 0 and message in err, (extra, err)


TINY_BIG = dict(zdim=8, layers=[1, 1, 1, 1], width_per_group=8, ch=4, n_classes=4, embed_dim=4, attention_res=16)


def test_the_big_autoencoder_trains_from_the_study_with_its_loss_recorded_and_resumes(folder, tmp_path, monkeypatch):
    "--ae-arch big: a BigAE trained with L1 + LPIPS + PatchGAN (discriminator from half-way), recorded, reused on a rerun."
    import invnb.studyrun
    from invnb.autoencoder import BigAE
    from invnb.studyrun import run_study
    seen = []
    train_ae = invnb.studyrun.train_autoencoder

    def spy(ae, images, steps, *a, **k):
        seen.append((type(ae).__name__, steps, k["loss"], k["batch_size"]))
        return train_ae(ae, images, steps, *a, **k)

    monkeypatch.setattr(invnb.studyrun, "train_autoencoder", spy)
    kw = dict(train_ae=4, size=16, ae_arch="big", lpips="random", big_ae=TINY_BIG, steps=3, device="cpu", n_eval=4,
              progress=False, log=lambda *_: None, t_size=dict(n_blocks=1, hidden=8, depth=1, embed_dim=8))
    out = tmp_path / "run"
    run_study(out, "torchvision:resnet18", "layer2", folder, **kw)
    (arch, steps, loss, batch), = seen
    assert arch == "BigAE" and steps == 4 and batch == 8
    assert loss.metric == "l1+lpips" and loss.disc is not None and loss.disc_start == 2
    saved = invnb.studyrun.load_model(out / "ae.safetensors", invnb.studyrun.Autoencoder)
    assert isinstance(saved, BigAE) and saved.size == 16 and saved.zdim == 8
    s = json.loads((out / "state.json").read_text())["settings"]["autoencoder"]
    assert s == {"arch": "BigAE", "train_steps": 4, "size": 16, "config": TINY_BIG, "loss": "l1+lpips+patchgan",
                 "disc_start": 2, "disc_n_down": 2, "lpips": "random"}
    assert "RANDOM VGG backbone" in (out / "report.html").read_text()
    run_study(out, "torchvision:resnet18", "layer2", folder, **kw)          # a rerun reuses it: nothing trains again
    assert len(seen) == 1
    from invnb.runs import RunError
    with pytest.raises(RunError, match='autoencoder.lpips: "random" recorded, "pretrained" asked'):
        run_study(out, "torchvision:resnet18", "layer2", folder, **dict(kw, lpips="pretrained"))


def test_the_big_autoencoder_s_bad_options_and_an_offline_lpips_are_named(folder, tmp_path, capsys, monkeypatch):
    import lpips
    code, err = run(study(folder, tmp_path / "a", "--train-ae", "2", "--ae-arch", "big", "--size", "28"), capsys)
    assert code == 2 and "--size=28: a BigAE trains at 16, 32, 64 or 128 px" in err, err
    with pytest.raises(SystemExit):
        main(study(folder, tmp_path / "b", "--train-ae", "2", "--ae-arch", "huge"))
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(study(folder, tmp_path / "b", "--train-ae", "2", "--ae-arch", "big", "--lpips", "imagenet"))
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err

    def offline(*a, pnet_rand=False, **k):        # what lpips meets without its VGG weights and no network
        if not pnet_rand: raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")
        return real(*a, pnet_rand=pnet_rand, **k)
    real = lpips.LPIPS
    monkeypatch.setattr(lpips, "LPIPS", offline)
    code, err = run(study(folder, tmp_path / "c", "--train-ae", "2", "--ae-arch", "big", "--size", "16"), capsys)
    assert code == 2 and "vgg16-397923af.pth" in err and "--lpips=random" in err, err
    assert not (tmp_path / "c" / "ae.safetensors").exists()



def test_a_stratified_split_holds_out_every_value_it_can_in_proportion():
    from invnb.images import split_images
    x = torch.arange(120.).view(120, 1, 1, 1).expand(120, 3, 2, 2)          # image i is filled with i: its index
    held = lambda val: val[:, 0, 0, 0].long()
    strata = torch.tensor([0] * 60 + [1] * 30 + [2] * 30)
    _, val, _, rec = split_images(x, 2, 0.25, seed=0, strata=strata)
    assert sorted(torch.bincount(strata[held(val)]).tolist()) == [7, 8, 15] and rec["stratified"] and rec["n_val"] == 30
    small = torch.tensor([0] * 8 + [1] * 8 + [2] * 8)                        # 2 held out of 24 (a tenth): 2 values
    _, val, _, _ = split_images(x[:24], 2, 0.1, seed=0, strata=small)
    assert len(val) == 2 and small[held(val)].unique().numel() == 2
    seen = {v for s in range(12) for v in small[held(split_images(x[:24], 2, 0.1, seed=s, strata=small)[1])].tolist()}
    assert seen == {0, 1, 2}                                                 # which values a tie favours: the seed's
    singles = torch.tensor(list(range(10)) + [10] * 30)                      # ten values of one image: never held out
    _, val, _, rec = split_images(x[:40], 2, 0.1, seed=0, strata=singles)
    assert rec["n_val"] == 4 and singles[held(val)].tolist() == [10] * 4    # their slots go to the value that can spare them
    skewed = torch.tensor([0] * 22 + [1] * 2)                                # the rare value still gets one
    _, val, _, _ = split_images(x[:24], 2, 0.1, seed=3, strata=skewed)
    assert sorted(skewed[held(val)].tolist()) == [0, 1]
    lone = torch.tensor([0] * 23 + [1])                                      # one image of a value stays in training
    assert 23 not in held(split_images(x[:24], 2, 0.3, seed=0, strata=lone)[1]).tolist()
    a, b = (split_images(x[:24], 2, 0.1, seed=s, strata=small)[1] for s in (0, 0))
    assert torch.equal(a, b)                                                  # seeded
    with pytest.raises(Exception, match="`strata` holds 3 labels for 24 images"):
        split_images(x[:24], 2, 0.1, strata=torch.tensor([0, 1, 2]))


def test_factors_class_on_a_small_folder_holds_out_every_class(tmp_path, capsys):
    # three class folders of 8 images: a tenth held out at random could be of one class, and e's table needs two
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for c, kind in enumerate(("a", "b", "c")):
        (tmp_path / "im" / kind).mkdir(parents=True)
        for i in range(8):
            px = (torch.rand(32, 32, 3, generator=g) * 80 + 60 * c).byte().numpy()
            Image.fromarray(px).save(tmp_path / "im" / kind / f"{i}.png")
    out = tmp_path / "run"
    code, err = run(study(tmp_path / "im", out, "--train-ae", "3", "--size", "32", "--factors", "class"), capsys)
    assert code == 2 and re.search(r"factor 'class' has the values \{\d: 1, \d: 1\} among the 2 held-out images", err), err
    assert "a larger --val-fraction" in err and "{0: 8, 1: 8, 2: 8}" in err and not out.exists()   # before training
    code, err = run(study(tmp_path / "im", out, "--train-ae", "3", "--size", "32", "--factors", "class",
                          "--val-fraction", "0.25"), capsys)                   # 6 held out: two of each class
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["run"]["settings"]["factors"]["split"] == "stratified" and m["run"]["data"]["split"]["stratified"]
    assert set(m["results"]["diagnostics"]["factors"]["own"]) == {"class"}
    (tmp_path / "one.csv").write_text("path,kind\n" + "".join(f"{k}/{i}.png,{int(k == 'a' and i == 0)}\n"
                                                              for k in "abc" for i in range(8)))
    code, err = run(study(tmp_path / "im", tmp_path / "bad", "--train-ae", "3", "--size", "32", "--factors",
                          str(tmp_path / "one.csv")), capsys)                  # one image of its value 1: none held out
    assert code == 2 and "factor 'kind' has the values {0: 2} among the 2 held-out images" in err, err
