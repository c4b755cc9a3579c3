"Plots: both backends, the numbers the figures carry, the tiled layout, bad input."
import matplotlib.figure
import numpy as np
import pytest
import torch

from invnb.results import Estimate
from invnb import plots

E = Estimate
EQ19 = {"features.5": E(0.41, 0.011), "features.11": E(0.56, 0.02), "softmax": E(0.98, 0.001)}
EQ20 = {0: {"digit": E(0.45, 0.01), "fg": E(0.55, 0.02)}, 600: {"digit": E(0.66, 0.03), "fg": E(0.76, 0.01)}}


@pytest.mark.parametrize("backend", plots.BACKENDS)
def test_every_plot_returns_a_figure_of_its_backend(backend):
    kind = matplotlib.figure.Figure if backend == "matplotlib" else __import__("plotly.graph_objects").graph_objects.Figure
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    figs = [plots.invariance_curve(EQ19, {"features.5": .1, "features.11": .2, "softmax": .3}, backend=backend),
            plots.factor_curves(EQ20, accuracy={0: 0.1, 600: 0.9}, backend=backend),
            plots.factor_curves({"a": {"digit": E(0.2, 0.1)}, "b": {"digit": E(0.3, 0.1)}}, backend=backend),
            plots.samples_grid(x, torch.rand(2, 4, 3, 8, 8), reconstruction=x, backend=backend),
            plots.fgsm_grid(x, x, {"l1": x, "l2": x}, shares={"l1": E(0.3, 0.1), "l2": None}, backend=backend),
            plots.swap_grid(x, x, {"fg": x}, sensitivity={"fg": 0.5}, backend=backend)]
    for f in figs:
        assert isinstance(f, kind)
        html = plots.to_html(f)
        assert ("plotly-graph-div" in html) if backend == "plotly" else html.startswith("<img")


def test_curves_carry_values_and_standard_errors():
    fig = plots.invariance_curve(EQ19)
    assert list(fig.data[0].y) == [0.41, 0.56, 0.98] and list(fig.data[0].error_y.array) == [0.011, 0.02, 0.001]
    assert "%{error_y.array" in fig.data[0].hovertemplate           # hover shows value ± SE
    fig = plots.factor_curves(EQ20, accuracy={0: 0.1, 600: 0.9})
    band, line = fig.data[0], fig.data[1]
    np.testing.assert_allclose(band.y, [0.46, 0.69, 0.63, 0.44])     # value + se forward, value - se back
    assert list(line.customdata) == [0.01, 0.03] and fig.data[-1].yaxis == "y2"
    ax = plots.factor_curves(EQ20, backend="matplotlib").axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.45, 0.66])


def test_tile_places_images_where_the_layout_says():
    rows = [[torch.full((3, 5, 5), -1.0), torch.full((3, 5, 5), 1.0)], [torch.zeros(3, 5, 5)]]
    pic = plots.tile(rows, pad=1)
    assert pic.shape == (2 * 6 + 1, 2 * 6 + 1, 3)
    assert (pic[1:6, 1:6] == 0).all() and (pic[1:6, 7:12] == 255).all()
    assert (pic[7:12, 1:6] == 128).all()                             # 0 in [-1, 1] → mid grey
    assert (pic[7:12, 7:12] == 255).all()                            # a missing cell stays background
    with pytest.raises(ValueError, match="one size"):
        plots.tile([[torch.zeros(3, 4, 4), torch.zeros(3, 5, 5)]])
    with pytest.raises(ValueError, match=r"\(rows, cols, C, H, W\)"):
        plots.image_grid(torch.zeros(3, 4, 4))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown backend 'svg'"):
        plots.invariance_curve(EQ19, backend="svg")
    with pytest.raises(ValueError, match="col_labels has 1 entries for 2 columns"):
        plots.image_grid(torch.zeros(1, 2, 3, 4, 4), col_labels=["a"])
