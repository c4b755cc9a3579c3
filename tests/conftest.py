import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (the full SIGKILL matrix)")
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda"),
                     help="where the device tests run: cpu (CI) or cuda (benchmarks/gpu_check.py on a GPU)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: more of what CI already covers, too slow for CI; run with --slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"): return
    for item in items:
        if "slow" in item.keywords: item.add_marker(pytest.mark.skip(reason="slow: run with pytest --slow"))


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Give every parameter random, non-trivial values (not the near-identity initialisation),
    and mark ActNorm layers initialised so the values stay as drawn."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("w_out", "b_out")):   # coupling outputs: full-size, so blocks are far from identity
                p.copy_(torch.randn(p.shape, generator=g) * (scale / p.shape[-1] ** 0.5 if p.ndim > 1 else scale))
            elif name.endswith(("loc", "log_scale")):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    for m in module.modules():
        if hasattr(m, "_initialized"):
            m.initialized.fill_(True)
            m._initialized = True
    return module


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    "The device of `pytest --device` (cpu unless asked); --device cuda without a GPU fails rather than skips."
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.fail("pytest --device cuda was given, but torch sees no CUDA device; run with --device cpu.")
    return torch.device(name)


@pytest.fixture
def cuda(request):
    if not torch.cuda.is_available():
        if request.config.getoption("--device") == "cuda":
            pytest.fail("pytest --device cuda was given, but torch sees no CUDA device; run with --device cpu.")
        pytest.skip("no CUDA device on this machine")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def colormnist_study():
    """A small Study trained on 1,500 bundled ColorMNIST digits in about 20 s: an autoencoder good enough to
    show colours, t at two layers of an (untrained) SqueezeNet, and e with the factors digit / fg / bg."""
    import warnings
    from invnb.fitting import fit_factors, fit_invariances, layer_features
    from invnb.autoencoder import SmallAE, train_autoencoder
    from invnb.data import ColorMNIST, FactorPairs, load_mnist
    from invnb.classifier import ColorMNISTClassifier
    from invnb.study import Study
    from invnb.train import encode_dataset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (x, y) = load_mnist()["train"]
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:1500]   # the split is sorted by digit
    ds = ColorMNIST(x[idx], y[idx], seed=0)
    xt = ds.images()
    ae = SmallAE(width=32, seed=0)
    train_autoencoder(ae, xt, steps=300, batch_size=64, lr=2e-3, device="cpu", progress=False)
    codes = encode_dataset(ae.encode, xt, device="cpu")
    clf = ColorMNISTClassifier(size=32).eval()
    ts = {}
    for layer in ("features.8", "softmax"):
        ts[("final", layer)], _ = fit_invariances(codes, layer_features(clf.probe(layer), xt), steps=150, batch_size=128,
                                                  n_blocks=2, hidden=64, embed_dim=16, device="cpu", progress=False)
    e, _ = fit_factors(codes, FactorPairs(ds.labels, ["digit", "fg", "bg"]), {"digit": 22, "fg": 11, "bg": 11},
                       steps=1200, batch_size=128, n_blocks=2, hidden=64, device="cpu", progress=False)
    results = {"eq19": {"final": {"features.8": [0.3, 0.01], "softmax": [0.9, 0.01]}}}
    return Study(ae, {"final": clf}, ts, e, results), ds


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    "(run folder, report path, log lines) of one `invnb colormnist --profile smoke` run, shared by the tests that read it."
    from invnb.colormnist import run_colormnist
    out = tmp_path_factory.mktemp("colormnist") / "run"
    lines = []
    report = run_colormnist(out, "smoke", device="cpu", progress=False, log=lines.append)
    return out, report, lines


# -- a small image folder and an autoencoder of it: `Study.build` and `invnb study` (test_build, test_studyrun) -----

@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    "24 PNGs of random coloured shapes (32 px) in the ImageFolder layout: two class subfolders."
    import numpy as np
    from PIL import Image, ImageDraw
    root = tmp_path_factory.mktemp("shapes") / "images"
    rng = np.random.default_rng(0)
    colour = lambda: tuple(int(c) for c in rng.integers(0, 256, 3))
    for i in range(24):
        kind = ("squares", "discs")[i % 2]
        (root / kind).mkdir(parents=True, exist_ok=True)
        im = Image.new("RGB", (32, 32), colour())
        a, b = sorted(rng.integers(2, 30, 2)); c, d = sorted(rng.integers(2, 30, 2))
        box = (int(a), int(c), int(max(b, a + 6)), int(max(d, c + 6)))
        (ImageDraw.Draw(im).rectangle if kind == "squares" else ImageDraw.Draw(im).ellipse)(box, fill=colour())
        im.save(root / kind / f"{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def ae(folder, tmp_path_factory):
    "(a SmallAE trained for a few steps on the folder, its file)."
    from invnb.autoencoder import SmallAE, train_autoencoder
    from invnb.data import load_image_folder
    x = torch.stack([im for im, _ in load_image_folder(folder, size=32)])
    ae = SmallAE(size=32, width=8)
    train_autoencoder(ae, x, steps=20, batch_size=8, device="cpu", progress=False)
    return ae.eval(), ae.save(tmp_path_factory.mktemp("ae") / "ae.safetensors")
