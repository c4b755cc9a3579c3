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


# -- what load_image_folder reads: PIL modes by their nominal range, folder links once, a pixel limit ----------------

def test_a_16_bit_image_maps_by_its_nominal_range_and_8_bit_as_before(tmp_path):
    "A 16-bit grey PNG (values 1000 and 40000) must not load as white: v / 65535 * 2 - 1, never min/max per image."
    from PIL import Image
    root = tmp_path / "imgs"; (root / "a").mkdir(parents=True)
    grey = np.full((96, 128), 1000, np.uint16); grey[:, 64:] = 40000
    Image.fromarray(grey).save(root / "a" / "grey16.png")
    assert Image.open(root / "a" / "grey16.png").mode == "I;16"
    rgb = np.zeros((96, 128, 3), np.uint8); rgb[:, 64:] = (200, 100, 30)
    Image.fromarray(rgb).save(root / "a" / "rgb8.png")
    lo, hi = 1000 / 65535 * 2 - 1, 40000 / 65535 * 2 - 1
    for size, tol in ((96, 1e-4), (32, 1e-3)):                 # at its own size (exact), and resized
        ds = load_image_folder(root, size=size)
        assert [Path(p).name for p, _ in ds.samples] == ["grey16.png", "rgb8.png"]
        x, x8 = ds[0][0], ds[1][0]
        m = size // 4                                          # left and right of the edge, clear of the resize's blur
        assert x.shape == (3, size, size) and torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
        torch.testing.assert_close(x[:, :, :size // 2 - m], torch.full((3, size, size // 2 - m), lo), atol=tol, rtol=0)
        torch.testing.assert_close(x[:, :, size // 2 + m:], torch.full((3, size, size // 2 - m), hi), atol=tol, rtol=0)
        right = torch.tensor([200, 100, 30]) / 255 * 2 - 1
        torch.testing.assert_close(x8[:, :, :size // 2 - m], torch.full((3, size, size // 2 - m), -1.0))
        torch.testing.assert_close(x8[:, :, size // 2 + m:], right[:, None, None].expand(3, size, size // 2 - m))
    # 8-bit exactly as before: PIL's RGB image through the same resize, centre-crop and scaling
    from invnb.data import image_transform
    ref = image_transform(32)(Image.open(root / "a" / "rgb8.png").convert("RGB"))
    assert torch.equal(load_image_folder(root, size=32)[1][0], ref)


def _mode_files(root):
    "One small file per PIL mode a file can hold: {name: (mode opened as, expected grey/colour in [-1, 1] or None)}."
    from PIL import Image
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
    files = {}
    for mode, ext in (("1", "png"), ("L", "png"), ("LA", "png"), ("P", "png"), ("PA", "tif"), ("RGBA", "png"),
                      ("CMYK", "jpg"), ("CMYK", "tif"), ("YCbCr", "tif"), ("LAB", "tif")):
        name = f"{mode}.{ext}"
        rgb.convert(mode).save(root / name)
        files[name] = None                                      # expected: PIL's own convert('RGB')
    u16 = np.full((24, 24), 1000, np.uint16); u16[:, 12:] = 40000
    Image.fromarray(u16.astype(">u2")).save(root / "I16B.tif")
    Image.fromarray(u16.astype(np.int32)).save(root / "I.tif")
    for name in ("I16B.tif", "I.tif"): files[name] = u16 / 65535 * 2 - 1
    return files


def test_every_pil_mode_a_file_can_hold_loads_by_its_nominal_range_or_is_refused_by_name(tmp_path):
    from PIL import Image
    from invnb.data import image_transform
    root = tmp_path / "modes"; root.mkdir()
    files = _mode_files(root)
    assert {Image.open(root / n).mode for n in files} >= {"1", "L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "LAB",
                                                          "I;16B", "I"}
    ds = load_image_folder(root, size=24)
    got = {Path(p).name: ds[i][0] for i, (p, _) in enumerate(ds.samples)}
    assert set(got) == set(files)
    for name, want in files.items():
        if want is None:
            want = image_transform(24)(Image.open(root / name).convert("RGB"))
        else:
            want = torch.from_numpy(want).float().expand(3, -1, -1)
        torch.testing.assert_close(got[name], want, atol=1e-4, rtol=0, msg=name)
    # modes without a nominal range: refused when the dataset is built, naming the file, the mode and the fix
    bad = tmp_path / "bad"; bad.mkdir()
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(bad / "float.tif")
    with pytest.raises(ValueError, match=r"float\.tif.*mode 'F'.*(8-bit|16-bit) PNG"):
        load_image_folder(bad, size=8)
    (bad / "float.tif").unlink()
    Image.fromarray(np.array([[-5, 70000]] * 4, np.int32)).save(bad / "int32.tif")
    with pytest.raises(ValueError, match=r"int32\.tif.*mode 'I'.*-5\.\.70000.*16-bit PNG"):
        load_image_folder(bad, size=8)


def _small_pngs(folder, n, start=0):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(folder / f"{i:02d}.png")


def _load_warned(root):
    "(dataset, the warnings' text) of load_image_folder(root)."
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = load_image_folder(root, size=8)
    return ds, " | ".join(str(w.message) for w in rec)


def test_a_folder_link_back_into_the_tree_is_not_followed_and_each_file_counts_once(tmp_path):
    import os
    import re
    root = tmp_path / "F"
    _small_pngs(root / "a", 12); _small_pngs(root / "b", 12, start=12)
    os.symlink(".", root / "a" / "loop")                       # a cycle inside a class folder: 24 files, not 344
    ds, msg = _load_warned(root)
    assert len(ds) == 24 and re.search(r"1 folder link.*F/a/loop", msg), (len(ds), msg)
    assert len(ds.samples) == len(ds.imgs) == len(ds.targets) == 24
    assert ds.classes == ["a", "b"] and ds.class_to_idx == {"a": 0, "b": 1} and ds.targets == [0] * 12 + [1] * 12
    assert [Path(p).name for p, _ in ds.samples] == [f"{i:02d}.png" for i in range(24)]
    x, y = ds[13]
    assert x.shape == (3, 8, 8) and y == 1
    # a flat folder (no class subfolders) with a loop: the loop is no class, its files count once
    flat = tmp_path / "photos"; _small_pngs(flat, 5)
    os.symlink(".", flat / "loop")
    ds, msg = _load_warned(flat)
    assert len(ds) == 5 and re.search(r"1 folder link.*photos/loop", msg), (len(ds), msg)
    assert ds.classes == ["photos"] and ds.targets == [0] * 5
    # links to the root and above it (cycles that a walk following links would multiply without end)
    os.symlink(root, root / "b" / "top")
    os.symlink(tmp_path, root / "b" / "above")
    ds, msg = _load_warned(root)
    assert len(ds) == 24 and "3 folder link" in msg and all(l in msg for l in ("F/a/loop", "F/b/top", "F/b/above")), msg
    assert ds.targets == [0] * 12 + [1] * 12
    # a link to a folder outside the tree is read (linked datasets), once, however many links lead to it
    _small_pngs(tmp_path / "extra", 3, start=24)
    os.symlink(tmp_path / "extra", root / "a" / "more"); os.symlink(tmp_path / "extra", root / "b" / "same")
    os.link(root / "a" / "00.png", root / "a" / "00_again.png")  # a hard link: the same file
    ds, msg = _load_warned(root)
    assert len(ds) == 27 and re.search(r"F/b/same.*1 file", msg), (len(ds), msg)
    assert ds.targets == [0] * 15 + [1] * 12
    assert sum("/more/" in p for p, _ in ds.samples) == 3 and not any("00_again" in p for p, _ in ds.samples)


def test_a_large_image_is_read_at_a_reduced_scale_and_still_matches_a_full_resolution_resize(tmp_path):
    "JPEG draft / integer reduce before the resize must keep the picture: close to resizing the full decode."
    from PIL import Image
    from invnb.data import _decode, image_transform
    root = tmp_path / "big"; (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    tex = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).resize((1600, 1200), Image.BICUBIC)
    tex.save(root / "a" / "t.png"); tex.save(root / "a" / "t.jpg", quality=95)
    Image.fromarray(np.asarray(tex.convert("L")).astype(np.uint16) * 257).save(root / "a" / "t16.png")
    for size, tol in ((32, 0.03), (128, 0.01)):
        ds = load_image_folder(root, size=size)
        assert [Path(p).name for p, _ in ds.samples] == ["t.jpg", "t.png", "t16.png"]
        for i, (p, _) in enumerate(ds.samples):
            x, ref = ds[i][0], image_transform(size)(_decode(p))          # `_decode` without a size: the full image
            assert x.shape == ref.shape == (3, size, size)
            assert (x - ref).abs().mean() < tol and (x - ref).abs().max() < 5 * tol, (p, size, (x - ref).abs().max())


def _child(code: str):
    "Run `code` in a fresh python (one thread for torch)."
    import os
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _big_png(path, w, h, value=128, rows=None):
    """A real w×h 8-bit grey PNG of one value, written row by row (a few hundred kB, nothing big in memory); `rows`
    cuts its data short (a header that claims the size)."""
    import struct, zlib
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    z, row = zlib.compressobj(1), b"\x00" + bytes([value]) * w
    data = b"".join(z.compress(row) for _ in range(h if rows is None else rows)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


_HUGE = r"""
import resource, warnings
from pathlib import Path
import torch
from PIL import Image
from invnb.data import load_image_folder
root = Path(ROOT)
ds = load_image_folder(root / "small", size=32)               # what a normal small folder needs (torch included) ...
assert len([ds[i] for i in range(len(ds))]) == 2
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmPeak")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (peak + (300 << 20), peak + (300 << 20)))   # ... and 300 MB more, no more
def refused(folder, pattern, **kw):
    import re
    try: load_image_folder(folder, size=32, **kw)
    except ValueError as e:
        assert re.search(pattern, str(e)), str(e)
        assert "\n" not in str(e), str(e)
        return
    raise AssertionError(f"{folder} was read")
with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter("always")
    refused(root / "png", r"png/a/big\.png is 13000×13000 .*169 megapixels.*max_pixels=")
    refused(root / "jpg", r"jpg/a/big\.jpg is 12000×12000 .*144 megapixels.*max_pixels=")
    refused(root / "bomb", r"bomb/a/bomb\.png is 20000×20000 .*400 megapixels.*max_pixels=")
    ds = load_image_folder(root / "png", size=32, on_error="skip")
    assert len(ds) == 1 and ds[0][0].shape == (3, 32, 32)
    assert any("big.png" in str(w.message) for w in rec)
    ds = load_image_folder(root / "jpg", size=32, max_pixels=150_000_000)   # a raised limit: read at a reduced scale
    x = ds[[Path(p).name for p, _ in ds.samples].index("big.jpg")][0]
    assert x.shape == (3, 32, 32) and (x - x.mean((1, 2), keepdim=True)).abs().max() < 0.02, x.mean((1, 2))
    assert (x.mean((1, 2)) - (torch.tensor([200, 30, 90]) / 255 * 2 - 1)).abs().max() < 0.03, x.mean((1, 2))
assert not [w for w in rec if issubclass(w.category, Image.DecompressionBombWarning)], [str(w.message) for w in rec]
print("OK")
"""


def test_a_huge_image_is_refused_by_a_stated_limit_and_a_raised_limit_decodes_it_small(tmp_path):
    """A 169-megapixel PNG must not cost 1.6 GB: refused (file, size, how to raise the limit); with the limit raised a
    144-megapixel JPEG is decoded at 1/8 scale. Under a memory limit (300 MB above a small folder's needs; the JPEG
    alone would take 432 MB decoded whole), so that a regression fails here instead of exhausting the machine."""
    from PIL import Image
    _small_pngs(tmp_path / "small" / "a", 2)
    Image.open(tmp_path / "small" / "a" / "01.png").save(tmp_path / "small" / "a" / "01.jpg")
    (tmp_path / "small" / "a" / "01.png").unlink()
    for name in ("png", "jpg", "bomb"): _small_pngs(tmp_path / name / "a", 1)
    _big_png(tmp_path / "png" / "a" / "big.png", 13000, 13000)
    Image.new("RGB", (12000, 12000), (200, 30, 90)).save(tmp_path / "jpg" / "a" / "big.jpg", quality=90)
    _big_png(tmp_path / "bomb" / "a" / "bomb.png", 20000, 20000, rows=2)   # above Pillow's own bomb error
    r = _child(f"ROOT = {str(tmp_path)!r}\n" + _HUGE)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), (r.stdout[-2000:], r.stderr[-3000:])
