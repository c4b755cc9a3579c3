"Widgets, headless: construct on a trained study, click / set values, check what they display."
import pytest
import torch

from invnb.study import Study
from invnb.widgets import CurveExplorer, FactorEditor, LayerExplorer, png


@pytest.fixture
def parts(colormnist_study):
    study, ds = colormnist_study
    x, labels = ds.batch(range(200))
    return study, ds, x, labels


def test_layer_explorer_resample_and_layer_switch(parts):
    study, _, x, _ = parts
    lx = LayerExplorer(study, x, n=8, seed=0)
    assert lx.layer == "softmax" and lx.samples.shape == (8, 3, 28, 28) and lx.view.value == lx.png
    assert int(lx.view.width) == (2 + 8 * 30) * 3                            # natural size: 8 columns of 28 px + pads, ×3
    shown, recon, samples = lx.view.value, lx.reconstruction.clone(), lx.samples.clone()
    lx.resample_button.click()
    assert not torch.equal(lx.samples, samples) and lx.view.value != shown     # new v, new picture
    assert torch.equal(lx.reconstruction, recon)                               # the reconstruction does not move
    v, at_softmax = lx.v.clone(), lx.samples.clone()
    lx.layer_pick.value = "features.8"
    assert torch.equal(lx.v, v) and not torch.equal(lx.samples, at_softmax)      # same v, other layer's t
    same = study.sample(x[:1], "features.8", v=v)[0]
    torch.testing.assert_close(lx.samples, same)                               # exactly Study.sample with that v
    lx.temp_slider.value = 0.0                                                 # temperature 0: every v decodes alike
    assert lx.samples.var(0).max() < 1e-8
    lx.n_slider.value = 3
    assert lx.v.shape[0] == 3 and lx.samples.shape[0] == 3
    lx.image_pick.value = 5
    assert torch.equal(lx.x, x[5:6]) and lx.error is None


def test_layer_explorer_draws_the_baselines_rows_of_the_same_input_and_layer_once_each(parts):
    "baselines=: one row per baseline under t's samples, computed for the picked input and layer, kept on resampling."
    from PIL import Image
    import io
    from invnb.inversion import baseline_rows
    study, _, x, _ = parts
    calls = []

    def row(xi, layer):
        calls.append((xi.clone(), layer))
        return xi.expand(3, -1, -1, -1) * 0.5
    plain = LayerExplorer(study, x, n=8, seed=0)
    lx = LayerExplorer(study, x, n=8, seed=0, baselines={"halved x": row, "M&V": baseline_rows(study, steps=5)[
        "M&V optimisation (3 starts)"]})
    height = lambda w: Image.open(io.BytesIO(w.png)).size[1]
    assert height(lx) == height(plain) + 2 * 28 * 3 + 2 * 2 * 3      # two more rows of 28 px (and their pads), ×3
    assert "halved x" in lx.children[2].value and "M&amp;V" in lx.children[2].value
    assert len(calls) == 1 and torch.equal(calls[0][0], x[:1]) and calls[0][1] == "softmax"
    lx.resample_button.click(); lx.temp_slider.value = 0.5
    assert len(calls) == 1                                               # same input and layer: kept
    lx.layer_pick.value = "features.8"; lx.image_pick.value = 3
    assert [c[1] for c in calls] == ["softmax", "features.8", "features.8"] and torch.equal(calls[2][0], x[3:4])
    mv = lx._rows[(3, "features.8", "M&V")]
    assert mv.shape == (3, 3, 28, 28) and not torch.equal(mv[0], mv[1])   # its starts differ
    with pytest.raises(ValueError, match="no D&B decoder for layer 'features.8'; the run trained ones for softmax"):
        baseline_rows(study, decoders={"softmax": None}, n_starts=0)["D&B decoder"](x[:1], "features.8")


def test_layer_explorer_shows_errors_in_the_widget(parts):
    study, _, x, _ = parts
    lx = LayerExplorer(study, x)
    lx.images = torch.rand(2, 5, 28, 28)
    lx.image_pick.value = 1
    assert lx.error and "⚠" in lx.status.value and "Traceback" not in lx.status.value
    with pytest.raises(ValueError, match=r"images must be a tensor \(B, C, H, W\)"):
        LayerExplorer(study, x[0])


def _change_by_region(study, ds, x, labels, factor, n=8):
    "Mean per-pixel change (background, digit) when `factor`'s slider goes 0 → 1 towards a partner that differs in it."
    other = "fg" if factor == "bg" else "bg"
    bg, fg = [], []
    for i in range(n):
        partner = next(j for j in range(len(x)) if labels[factor][j] != labels[factor][i] and labels[other][j] == labels[other][i])
        fe = FactorEditor(study, x[i], x, seed=0)
        fe.set_partner(partner)
        start = fe.edited.clone()
        fe.sliders[factor].value = 1.0
        assert fe.distance >= 0 and 0 <= fe.prediction < 10 and fe.error is None
        change = (fe.edited - start).abs().sum(1)[0]                            # (28, 28)
        ink = ds.ink[i].float() / 255
        bg.append(change[ink < 0.05].mean()); fg.append(change[ink > 0.8].mean())
    return torch.stack(bg).mean().item(), torch.stack(fg).mean().item()


def test_factor_editor_bg_slider_moves_background_pixels(parts):
    study, ds, x, labels = parts
    bg, fg = _change_by_region(study, ds, x, labels, "bg")
    assert bg > 1.2 * fg                     # the bg slider changes background pixels more than the digit's
    bg2, fg2 = _change_by_region(study, ds, x, labels, "fg")
    assert fg2 > 3 * bg2                     # and the fg slider the digit's pixels more than the background


def test_factor_editor_partner_reset_and_swap(parts):
    study, _, x, _ = parts
    fe = FactorEditor(study, x[0], x, seed=0)
    own = fe.edited.clone()
    for s in fe.sliders.values(): s.value = 1.0                                # every factor from the partner
    fe.partner_pick.value = 0                                                 # partner = the image itself
    torch.testing.assert_close(fe.edited, own, atol=1e-4, rtol=0)
    fe.random_button.click()
    k = fe.partner_pick.value
    assert torch.equal(fe.partner, x[k:k + 1])                                 # the picker shows the drawn partner
    fe.reset()
    assert all(v == 0 for v in fe.alphas.values())
    torch.testing.assert_close(fe.edited, own, atol=1e-4, rtol=0)


def test_curve_explorer_follows_the_selection(parts):
    study, _, x, _ = parts
    ce = CurveExplorer(study, images=x, backend="plotly")
    assert list(ce.data) == ["features.8", "softmax"] and len(ce.figure.data) == 1
    ce.layer_pick.value = ("softmax",)
    assert list(ce.data) == ["softmax"] and list(ce.figure.data[0].y) == [0.9]
    del study.results.eq19["final"]["features.8"]
    ce.layer_pick.value = ("features.8", "softmax")
    assert list(ce.data) == ["softmax"]
    ce.compute_button.click()                                                  # fills the missing layer
    assert list(ce.data) == ["features.8", "softmax"] and 0 <= ce.data["features.8"][0] <= 1
    assert ce.bar.value == ce.bar.max == 1


def test_curve_explorer_draws_a_png_by_default(parts):
    "The default backend works wherever ipywidgets do: a PNG in an Image widget, redrawn on every change."
    study = parts[0]
    ce = CurveExplorer(study)
    assert ce.backend == "image" and ce.image in ce.children and ce.out not in ce.children
    first = ce.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    ce.layer_pick.value = ("softmax",)
    assert ce.image.value[:8] == b"\x89PNG\r\n\x1a\n" and ce.image.value != first


def test_png_is_a_png():
    data = png([[torch.zeros(3, 4, 4)]], scale=2)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_names_are_escaped_in_widget_html(parts):
    study, _, x, _ = parts
    evil = "<img src=x onerror=alert(1)>"
    hostile = Study(study.ae, {evil: study.models[study.default_model]},
                    {(evil, l): study.t(l) for l in study.layers()})
    lx = LayerExplorer(hostile, x)
    assert lx.error is None and "<img src=x" not in lx.status.value and "&lt;img" in lx.status.value


def test_class_and_factor_names_are_escaped_in_factor_editor_html(parts):
    from invnb.inn import FactorINN
    study, _, x, _ = parts
    evil = "<img src=x onerror=alert(1)>"
    e = FactorINN(study.ae.zdim, {evil: 4, "fg": 2}, n_blocks=2, hidden=16)
    hostile = Study(study.ae, {evil: study.models[study.default_model]}, {}, e)
    fe = FactorEditor(hostile, x[0], x, model=evil, class_names=[evil] * 10)
    assert fe.error is None and "<img src=x" not in fe.status.value and "&lt;img" in fe.status.value
    assert evil in fe.sliders and fe.sliders[evil].description == evil
    assert not any(s.description_allow_html for s in fe.sliders.values())   # slider labels are shown as text


# --- empty or malformed inputs: a clear ValueError that names the argument, not ipywidgets' "setting min > max" ---

def test_layer_explorer_rejects_an_empty_batch(parts):
    study, _, x, _ = parts
    with pytest.raises(ValueError, match=r"images must hold at least one image.*N ≥ 1.*got \(0, 3, 28, 28\)"):
        LayerExplorer(study, x[:0])


def test_factor_editor_rejects_empty_partners(parts):
    study, _, x, _ = parts
    with pytest.raises(ValueError, match=r"partners must hold at least one image.*N ≥ 1.*got \(0, 3, 28, 28\)"):
        FactorEditor(study, x[0], x[:0])


def test_factor_editor_rejects_an_empty_image(parts):
    "A batch of 0 as `image` used to build a widget whose status line showed a torch error ('only one element tensors…')."
    study, _, x, _ = parts
    with pytest.raises(ValueError, match=r"image must hold at least one image.*got \(0, 3, 28, 28\)"):
        FactorEditor(study, x[:0], x)


def test_factor_editor_image_must_be_one_image_or_a_batch(parts):
    study, _, x, _ = parts
    need = r"image must be one image \(C, H, W\) or a batch \(N, C, H, W\) with N ≥ 1; got "
    with pytest.raises(ValueError, match=need + r"\(28, 28\)"):          # was: "got (1, 28, 28)", a shape never passed
        FactorEditor(study, x[0, 0], x)
    with pytest.raises(ValueError, match=need + "list"):                  # was: AttributeError 'list' ... 'dim'
        FactorEditor(study, [x[0]], x)
    fe = FactorEditor(study, x[:3], x)                                     # a batch: its first image
    assert torch.equal(fe.x, x[:1]) and fe.error is None


def test_factor_editor_partners_must_be_shaped_like_the_image(parts):
    "Partners of another size or channel count used to build a widget that only showed the AE's error, naming `images`."
    study, _, x, _ = parts
    with pytest.raises(ValueError, match=r"partners must be images shaped like image, \(N, 3, 28, 28\); got \(4, 3, 32, 32\)"):
        FactorEditor(study, x[0], torch.rand(4, 3, 32, 32))
    with pytest.raises(ValueError, match=r"partners must be images shaped like image.*got \(4, 1, 28, 28\)"):
        FactorEditor(study, x[0], x[:4, :1])


def test_curve_explorer_checks_its_images(parts):
    "Its images are only used by “Compute Eq. 19”: a bad batch used to construct fine and fail on the first click."
    study, _, x, _ = parts
    with pytest.raises(ValueError, match=r"images must hold at least one image.*got \(0, 3, 28, 28\)"):
        CurveExplorer(study, images=x[:0])
    with pytest.raises(ValueError, match=r"images must be a tensor \(B, C, H, W\); got \(3, 28, 28\)"):
        CurveExplorer(study, images=x[0])


def test_curve_explorer_on_a_study_without_ts_or_results_says_so(parts):
    "No t and no results: the widget still builds, with empty pickers and a plain 'no results' line (no traceback)."
    study = parts[0]
    bare = Study(study.ae, {"final": study.models["final"]}, {})
    ce = CurveExplorer(bare)
    assert ce.error is None and ce.layer_pick.options == () and ce.figure is None
    assert "no results for Eq. 19 per layer" in ce.status.value
    for view in CurveExplorer.VIEWS:
        ce.view_pick.value = view
        assert ce.error is None and "no results" in ce.status.value
