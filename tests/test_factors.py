"""Factor sizes from pair CCA, the held-out factor report and the validation loss of e (invnb.factors)."""
import warnings

import pytest
import torch

from invnb.data import FactorPairs
from invnb.factors import (FactorReport, FactorSizes, check_factor_sizes, estimate_factor_sizes, factor_report,
                           guided_pair_loss, pair_targets, pair_val_fn, pair_val_loss)
from invnb.inn import FactorINN
from invnb.train import fit

CUBE = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=torch.float64) * 2 - 1


def synthetic(n: int = 3000, noise: int = 10, seed: int = 0, rotate: bool = True):
    """Codes [residual noise (noise dims) | colour: cube corner of 8 values (3) | shape: 6 values in 3 dims],
    with small within-class noise; `rotate` mixes every dimension by a random rotation."""
    g = torch.Generator().manual_seed(seed)
    col, shp = torch.randint(8, (n,), generator=g), torch.randint(6, (n,), generator=g)
    shapes = torch.randn(6, 3, generator=g, dtype=torch.float64)
    z = torch.cat([torch.randn(n, noise, generator=g, dtype=torch.float64),
                   CUBE[col] + 0.2 * torch.randn(n, 3, generator=g, dtype=torch.float64),
                   shapes[shp] + 0.2 * torch.randn(n, 3, generator=g, dtype=torch.float64)], 1)
    if rotate: z = z @ torch.linalg.qr(torch.randn(z.shape[1], z.shape[1], generator=g, dtype=torch.float64))[0]
    return {"mean": z.float(), "logvar": torch.full(z.shape, -6.0)}, {"colour": col, "shape": shp}


def modulated(n: int = 3000, seed: int = 0):
    """Codes whose 'shape' (6 centred values in 3 dims) is multiplied by a sign set by the colour's parity, as the
    digit of ColorMNIST is by the colour contrast: no linear signal between shape pairs, a quadratic one."""
    codes, labels = synthetic(n, seed=seed, rotate=False)
    g = torch.Generator().manual_seed(seed + 1)
    shapes = torch.randn(6, 3, generator=g); shapes -= shapes.mean(0)
    sign = CUBE.prod(1).float()[labels["colour"], None]
    z = torch.cat([codes["mean"][:, :13], sign * (shapes[labels["shape"]] + 0.2 * torch.randn(n, 3, generator=g))], 1)
    return z, labels


def oracle(dim: int = 16) -> FactorINN:
    "e = identity (no blocks): its slices are the true factors' coordinates of unrotated synthetic codes."
    return FactorINN(dim, {"colour": 3, "shape": 3}, n_blocks=0).eval()


def test_sizes_found_in_rotated_codes():
    codes, labels = synthetic()
    est = estimate_factor_sizes(codes, labels, n_pairs=5000)
    assert isinstance(est, FactorSizes)
    assert est.sizes == {"colour": 3, "shape": 3}
    for f in est.sizes:  # three strong directions, then noise
        assert min(est.correlations[f][:3]) > 0.7 and est.correlations[f][3] < 0.05
    assert "colour" in repr(est)


def test_cap_no_signal_and_at_least_one():
    codes, labels = synthetic()
    g = torch.Generator().manual_seed(1)
    labels = {**labels, "three": torch.randint(3, (3000,), generator=g), "coin": torch.randint(2, (3000,), generator=g)}
    low = estimate_factor_sizes(codes, labels, n_pairs=5000, threshold=-1.0)   # every correlation counts
    assert low.sizes == {"colour": 7, "shape": 5, "three": 2, "coin": 1}     # capped at K - 1
    with pytest.warns(UserWarning, match="may not hold"):                  # random labels: no signal at all
        est = estimate_factor_sizes(codes, labels, n_pairs=5000)
    assert est.sizes["three"] == 2 and "no linear signal" in est.rule["three"]   # default: K - 1
    with pytest.warns(UserWarning, match="may not hold"):
        assert estimate_factor_sizes(codes, labels, ["three"], no_signal=1).sizes == {"three": 1}


def test_nonlinear_factor_found_by_the_quadratic_check():
    z, labels = modulated()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                   # found: no warning
        est = estimate_factor_sizes(z, labels, n_pairs=5000)
    assert est.correlations["shape"][0] < 0.05 and est.nonlinear["shape"][0] > 0.8
    k = sum(c > 0.5 for c in est.nonlinear["shape"])                   # size = held-out quadratic count
    assert est.sizes == {"colour": 3, "shape": k} and 3 <= k <= 5 and "quadratic" in est.rule["shape"]
    assert estimate_factor_sizes(z, labels, no_signal="values").sizes["shape"] == 5   # K - 1
    assert estimate_factor_sizes(z, labels, no_signal=2).sizes["shape"] == 2


def test_estimator_is_reproducible_and_names_select():
    codes, labels = synthetic()
    a = estimate_factor_sizes(codes, labels, ["shape"], n_pairs=2000, seed=3)
    b = estimate_factor_sizes(codes["mean"], labels, ["shape"], n_pairs=2000, seed=3)
    assert a.correlations == b.correlations and list(a.sizes) == ["shape"]


def test_estimator_errors():
    codes, labels = synthetic()
    with pytest.raises(ValueError, match="another dataset"):
        estimate_factor_sizes(codes, {k: v[:100] for k, v in labels.items()})
    with pytest.raises(ValueError, match="one value"):
        estimate_factor_sizes(codes, {**labels, "const": torch.zeros(3000, dtype=torch.long)})
    with pytest.raises(ValueError, match="no labels"):
        estimate_factor_sizes(codes, labels, ["colour", "age"])
    many = torch.arange(3000) % 40                                      # no signal, K - 1 = 39 > 16 dims
    with pytest.raises(ValueError, match="add up to"), pytest.warns(UserWarning, match="may not hold"):
        estimate_factor_sizes(codes, {"many": many})


def test_check_factor_sizes_warns_on_disagreement():
    codes, labels = synthetic()
    est = estimate_factor_sizes(codes, labels, n_pairs=5000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_factor_sizes({"colour": 3, "shape": 3}, est, dim=16) == []
    with pytest.warns(UserWarning, match="cannot hold"):
        check_factor_sizes({"colour": 1, "shape": 3}, est)
    with pytest.warns(UserWarning, match="nothing shared"):
        check_factor_sizes({"colour": 5, "shape": 3}, est)
    with pytest.warns(UserWarning, match="8 values"):
        check_factor_sizes({"colour": 9, "shape": 3}, est)
    with pytest.raises(ValueError, match="add up to"):
        check_factor_sizes({"colour": 10, "shape": 10}, est, dim=16)


def test_report_of_oracle_e():
    codes, labels = synthetic(rotate=False)
    rep = factor_report(oracle(), codes, labels, n_pairs=4000)
    assert isinstance(rep, FactorReport)
    assert rep.columns == ["residual", "colour", "shape"] and rep.rows == ["colour", "shape"]
    assert min(rep.own.values()) > 0.8 and rep.max_off_diagonal < 0.05
    assert min(rep.class_share.values()) > 0.8 and rep.warnings == []
    d = rep.to_dict()
    assert set(d["correlation"]["colour"]) == {"residual", "colour", "shape"} and "digit" not in repr(rep)


def test_report_warns_for_misaligned_e():
    codes, labels = synthetic(rotate=False)
    swapped = {"mean": codes["mean"][:, [*range(10), 13, 14, 15, 10, 11, 12]]}   # colour <-> shape slices
    rep = factor_report(oracle(), swapped, labels, n_pairs=4000)
    assert max(rep.own.values()) < 0.1 and rep.max_off_diagonal > 0.8
    assert any("has not learned" in w for w in rep.warnings) and any("leaks" in w for w in rep.warnings)
    rnd_e = FactorINN(16, {"colour": 3, "shape": 3}, n_blocks=2, seed=1)
    rnd_e(codes["mean"][:256])                                          # its first batch initialises it; no training
    rnd = factor_report(rnd_e, codes, labels, n_pairs=4000)
    assert rnd.warnings                                                 # an untrained e: shuffled, mixed slices


def test_report_refuses_mismatches():
    codes, labels = synthetic(rotate=False)
    with pytest.raises(ValueError, match="must all be in the labels"):
        factor_report(oracle(), codes, {"colour": labels["colour"]})
    with pytest.raises(ValueError, match="in e's order"):
        factor_report(oracle(), codes, labels, ["shape", "colour"])
    with pytest.raises(ValueError, match="another autoencoder"):
        factor_report(oracle(), {"mean": codes["mean"][:, :12]}, labels)
    with pytest.raises(ValueError, match="another dataset"):
        factor_report(oracle(), codes, {k: v[:10] for k, v in labels.items()})


def test_pair_val_fn_is_fixed_and_ranks_oracle_first():
    codes, labels = synthetic(rotate=False)
    val = pair_val_fn(codes, labels, n=1000, seed=0)
    state = torch.get_rng_state()
    a, b = val(oracle()), val(oracle())
    assert a == b and torch.equal(state, torch.get_rng_state())        # no draw from the global generator
    swapped = {"mean": codes["mean"][:, [*range(10), 13, 14, 15, 10, 11, 12]], "logvar": codes["logvar"]}
    assert a < pair_val_loss(oracle(), swapped, labels, n=1000)
    sampled = pair_val_fn(codes, labels, n=1000, sample=True)
    assert sampled(oracle()) == sampled(oracle())
    with pytest.raises(ValueError, match="in e's order"):
        pair_val_fn(codes, labels, ["shape", "colour"], n=100)(oracle())


def test_pair_val_fn_as_fit_val_fn():
    codes, labels = synthetic(n=600, rotate=False)
    e, pairs = FactorINN(16, {"colour": 3, "shape": 3}, n_blocks=2, hidden=32, depth=1), FactorPairs(labels)

    def step(model, g, _):
        a, b, f = pairs.sample(64, g)
        return model.pair_loss(codes["mean"][a], codes["mean"][b], f)
    hist = fit(e, step, 40, 1e-3, device="cpu", progress=False, val_fn=pair_val_fn(codes, labels, n=256), val_every=20)
    assert [s for s, _ in hist["val"]] == [20, 40] and hist.best_step in (20, 40)


def test_pair_targets_correlate_within_pairs_and_guide_e():
    z, labels = modulated()
    targets = pair_targets(z, labels, {"colour": 3, "shape": 3})
    t = targets(z[:2000])
    assert {f: tuple(v.shape) for f, v in t.items()} == {"colour": (2000, 3), "shape": (2000, 3)}
    assert torch.allclose(t["colour"].std(0), torch.ones(3), atol=0.1)
    a, b, _ = FactorPairs(labels).sample(4000, torch.Generator().manual_seed(5), factor="shape")
    ta, tb = targets(z[a])["shape"], targets(z[b])["shape"]
    corr = ((ta - ta.mean(0)) * (tb - tb.mean(0))).mean(0) / (ta.std(0) * tb.std(0))
    assert corr.min() > 0.6                                              # the quadratic targets hold the shape
    e = FactorINN(16, {"colour": 3, "shape": 3}, n_blocks=2, hidden=32, depth=1)
    a, b, f = FactorPairs(labels).sample(256, torch.Generator().manual_seed(0))
    plain = e.pair_loss(z[a], z[b], f)
    assert guided_pair_loss(e, z[a], z[b], f, targets, 0.0).item() == plain.item()
    assert guided_pair_loss(e, z[a], z[b], f, targets, 1.0).item() > plain.item()


def test_diagnostics_refuse_an_untrained_model():
    "A factor report of an e that never saw data is refused with the fix (t: see 08_study's hidden checks)."
    codes, labels = synthetic(rotate=False)
    e = FactorINN(codes["mean"].shape[1], {"shape": 2, "colour": 2}, n_blocks=1, hidden=8)
    with pytest.raises(ValueError, match="e has not been trained.*fit_factors"):
        factor_report(e, codes, labels)
