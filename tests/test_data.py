"Data: bundled MNIST, ColorMNIST, FactorPairs, CelebA/ImageFolder errors, image checks, package data."
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from invnb.data import (PALETTE, ColorMNIST, DatasetNotFound, FactorPairs, check_images, load_celeba,
                        load_image_folder, load_mnist)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mnist():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_mnist()


def test_bundled_mnist_split(mnist):
    (xt, yt), (xv, yv) = mnist["train"], mnist["val"]
    assert mnist["source"] == "bundled"
    assert xt.shape == (4500, 28, 28) and xv.shape == (500, 28, 28) and xt.dtype == torch.uint8
    assert torch.bincount(yv).tolist() == [50] * 10 and torch.bincount(yt).tolist() == [450] * 10
    assert int(xt.max()) == 255 and int(xt.min()) == 0
    with pytest.warns(UserWarning, match="bundled MNIST"):
        again = load_mnist()
    assert torch.equal(again["val"][0], xv)  # deterministic split


def test_an_explicit_mnist_root_without_mnist_is_an_error_not_the_bundled_digits(tmp_path):
    for root in (tmp_path, tmp_path / "typo"):
        with pytest.raises(DatasetNotFound, match=rf"no MNIST under {root} .*download=True.*leave root unset"):
            load_mnist(root=root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                       # the bundled digits ask: only without a root
        with pytest.raises(DatasetNotFound, match="no MNIST under"):
            ColorMNIST.from_mnist(root=tmp_path / "typo")
    with pytest.warns(UserWarning, match="bundled MNIST"):
        assert load_mnist()["source"] == "bundled"


@pytest.mark.parametrize("size", [28, 64])
def test_colormnist_shapes_ranges_and_exact_colours(mnist, size):
    cm = ColorMNIST(*mnist["train"], size=size, seed=0)
    x, y = cm.batch(range(32))
    assert x.shape == (32, 3, size, size) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert set(y) == {"digit", "fg", "bg"} and (y["fg"] != y["bg"]).all()
    assert y["fg"].max() < len(PALETTE) and y["digit"].max() <= 9
    colours = torch.tensor(list(PALETTE.values()), dtype=torch.float32) * 2 - 1
    for i in range(32):
        ink = cm.ink[i].float() / 255
        if size == 28:
            torch.testing.assert_close(x[i][:, ink == 0].T, colours[y["bg"][i]].expand(int((ink == 0).sum()), 3))
            torch.testing.assert_close(x[i][:, ink == 1].T, colours[y["fg"][i]].expand(int((ink == 1).sum()), 3))
        torch.testing.assert_close(x[i][:, 0, 0], colours[y["bg"][i]])  # corners are background


def test_colormnist_is_deterministic_per_seed(mnist):
    a = ColorMNIST(*mnist["train"], seed=0)
    b = ColorMNIST(*mnist["train"], seed=0)
    c = ColorMNIST(*mnist["train"], seed=1)
    assert torch.equal(a.batch([5, 7])[0], b.batch([5, 7])[0]) and torch.equal(a[5][0], b.batch([5])[0][0])
    assert not torch.equal(a.labels["fg"], c.labels["fg"])
    # colours are near-uniform and independent of the digit
    fg = torch.bincount(a.labels["fg"], minlength=8).float() / len(a)
    assert (fg - 1 / 8).abs().max() < 0.03


def test_factor_pairs_share_the_factor_and_differ_elsewhere(mnist):
    cm = ColorMNIST(*mnist["train"], seed=0)
    pairs = FactorPairs(cm.labels)
    a, b, f = pairs.sample(9000, torch.Generator().manual_seed(0))
    L = cm.labels
    assert (a != b).all() and set(f.tolist()) == {1, 2, 3}
    # expected rates of differing in the other factors, given the colour model (fg != bg, uniform otherwise)
    expected = {("digit", "fg"): 7 / 8, ("digit", "bg"): 7 / 8, ("fg", "digit"): 0.9, ("fg", "bg"): 6 / 7,
                ("bg", "digit"): 0.9, ("bg", "fg"): 6 / 7}
    for k, name in enumerate(pairs.names, 1):
        s = f == k
        assert (L[name][a[s]] == L[name][b[s]]).all()
        for other in pairs.names:
            if other == name: continue
            rate = (L[other][a[s]] != L[other][b[s]]).float().mean().item()
            assert abs(rate - expected[(name, other)]) < 0.04, (name, other, rate)
    a, b, f = pairs.sample(50, torch.Generator().manual_seed(0), factor="bg")
    assert (f == 3).all() and (L["bg"][a] == L["bg"][b]).all()


def test_factor_pairs_for_binary_attributes_and_errors():
    g = torch.Generator().manual_seed(0)
    labels = {"Smiling": torch.randint(2, (200,), generator=g), "Male": torch.randint(2, (200,), generator=g)}
    a, b, f = FactorPairs(labels).sample(100, g)
    for k, name in enumerate(["Smiling", "Male"], 1):
        assert (labels[name][a[f == k]] == labels[name][b[f == k]]).all()
    with pytest.raises(ValueError, match="no two examples share a value"):
        FactorPairs({"id": torch.arange(10)})
    with pytest.raises(ValueError, match="unknown factors"):
        FactorPairs(labels, ["Eyeglasses"])
    with pytest.raises(ValueError, match="one of"):
        FactorPairs(labels).sample(3, g, factor="Young")
    # a value with a single member is never an anchor: no endless search, no self-pairs
    a, b, f = FactorPairs({"x": torch.tensor([0, 0, 1, 2, 2, 2])}).sample(500, g)
    assert not (a == 2).any() and (a != b).all()


def test_offline_loaders_raise_the_documented_error(tmp_path):
    with pytest.raises(DatasetNotFound, match="CelebA not found.*img_align_celeba"):
        load_celeba(tmp_path)
    with pytest.raises(DatasetNotFound, match="no image folder"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(DatasetNotFound, match="holds no images"):
        load_image_folder(tmp_path)


def test_image_folder_at_128(tmp_path):
    from PIL import Image
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8)).save(tmp_path / cls / "a.png")
    ds = load_image_folder(tmp_path, size=128)
    x, y = ds[1]
    assert x.shape == (3, 128, 128) and x.min() >= -1 and x.max() <= 1 and y == 1


def test_check_images_errors():
    with pytest.raises(ValueError, match="3 channels; got 1"):
        check_images(torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="square"):
        check_images(torch.zeros(1, 3, 28, 20))
    with pytest.raises(ValueError, match="must be 28×28; got 64×64"):
        check_images(torch.zeros(1, 3, 64, 64), size=28)
    with pytest.raises(ValueError, match="float"):
        check_images(torch.zeros(1, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"MNIST digits \(N, 28, 28\)"):
        ColorMNIST(torch.zeros(4, 32, 32, dtype=torch.uint8), torch.zeros(4))


def test_bundled_data_ships_in_a_plain_wheel(tmp_path):
    "A non-editable install (Colab) must carry mnist5k.npz: build the wheel, import from it, load the digits."
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("invnb-*.whl"))
    assert "invnb/_bundled/mnist5k.npz" in zipfile.ZipFile(wheel).namelist()
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import warnings; warnings.simplefilter('ignore'); import invnb.data as d; "
            "p = d._bundled_mnist_path(); x = d.load_mnist()['train'][0]; print(p, tuple(x.shape))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert str(site) in r.stdout and "(4500, 28, 28)" in r.stdout


def test_colormnist_accepts_float_digits_in_0_1_and_refuses_other_inputs(mnist):
    x, y = mnist["val"]
    for size in (28, 64):
        u8, fl = ColorMNIST(x, y, size=size), ColorMNIST(x.float() / 255, y, size=size)
        assert torch.equal(u8.batch(range(64))[0], fl.batch(range(64))[0])
        assert torch.equal(u8.images(), fl.images())
    with pytest.raises(ValueError, match=r"float.*\[0, 1\].*0\.0\.\.255\.0.*/ 255"):
        ColorMNIST(x.float(), y)
    nan = x.float() / 255; nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ColorMNIST(nan, y)
    with pytest.raises(ValueError, match=r"uint8.*torch\.int64"):
        ColorMNIST(x.long(), y)


def test_label_lengths_must_match(mnist):
    x, y = mnist["val"]
    with pytest.raises(ValueError, match=r"digits.*499.*500 images"):
        ColorMNIST(x, y[:-1])
    with pytest.raises(ValueError, match=r"digits.*0\.\.9.*got 10"):
        ColorMNIST(x, y.clone().fill_(10))
    with pytest.raises(ValueError, match=r"digits.*\(N,\)"):
        ColorMNIST(x, y[:, None])
    assert ColorMNIST(x, y.tolist()).labels["digit"].tolist() == y.tolist()  # a plain list is fine
    with pytest.raises(ValueError, match=r"labels.*same length.*'a': 5.*'b': 4"):
        FactorPairs({"a": torch.zeros(5), "b": torch.zeros(4)})


def _folder(root):
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls, ext in (("cat", "png"), ("dog", "jpg")):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / cls / f"{i}.{ext}")
    return root


def test_image_folder_with_an_unreadable_file(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(ValueError, match=r"(?s)dog/broken\.jpg.*on_error='skip'"):
        load_image_folder(root, size=32)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable.*dog/broken\.jpg"):
        ds = load_image_folder(root, size=32, on_error="skip")
    assert len(ds) == 4 and [ds[i][1] for i in range(4)] == [0, 0, 1, 1] and ds[3][0].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="on_error"):
        load_image_folder(root, on_error="ignore")
    # a JPEG whose header is fine but whose data is cut: named when the dataset is built, and skipped with a warning
    (root / "dog" / "broken.jpg").unlink()
    good = (root / "dog" / "1.jpg").read_bytes()
    (root / "dog" / "1.jpg").write_bytes(good[:len(good) // 2])
    with pytest.raises(ValueError, match=r"(?s)dog/1\.jpg is not a readable image \(OSError: image file is truncated"):
        load_image_folder(root, size=32)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable.*dog/1\.jpg"):
        ds = load_image_folder(root, size=32, on_error="skip")
    assert len(ds) == 3 and [ds[i][1] for i in range(3)] == [0, 0, 1]


def test_check_dtype_names_the_input_the_model_and_the_fix():
    from invnb.data import check_dtype
    lin = torch.nn.Linear(3, 1)
    x = torch.zeros(2, 3)
    assert check_dtype(x, lin) is x
    with pytest.raises(ValueError, match=r"codes must have the dtype of Linear's parameters, torch.float32; got "
                                         r"torch.float64\. Convert with x\.to\(torch\.float32\) \(e\.g\. x\.float\(\)\), or "
                                         r"the model with model\.to\(torch\.float64\)"):
        check_dtype(x.double(), lin, "codes")
