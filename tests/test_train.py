"The shared training loop: exact resume after a kill, NaN guard, parameter groups, optimizer state, encode_dataset."
import pytest
import torch
from torch import nn

from invnb.checkpoint import load_tensors
from invnb.inn import InvarianceINN
from invnb.train import TrainingDiverged, encode_dataset, fit, optimizer_from_tensors, optimizer_to_tensors, pick_device


def make_t():
    return InvarianceINN(in_dim=4, cond_shape=2, n_blocks=2, hidden=16, depth=1, embed_dim=8, seed=3)


def t_step(model, g, step):
    z = torch.randn(32, 2, generator=g)
    zbar = torch.cat([z, z.sin()], 1) + 0.1 * torch.randn(32, 4)      # global RNG too: restored on resume
    return model.nll(zbar, z).mean()


class Killed(Exception):
    pass


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    full = make_t()
    h_full = fit(full, t_step, steps=40, lr=3e-3, progress=False, device="cpu", seed=1)

    def dies_at_27(model, g, step):
        if step == 27: raise Killed()
        return t_step(model, g, step)
    run = make_t()
    with pytest.raises(Killed):
        fit(run, dies_at_27, steps=40, lr=3e-3, ckpt_dir=tmp_path, ckpt_every=10, progress=False, device="cpu", seed=1)
    assert load_tensors(tmp_path / "last.safetensors")[1]["step"] == 20
    run = make_t()  # a fresh process would start from scratch weights
    h_run = fit(run, t_step, steps=40, lr=3e-3, ckpt_dir=tmp_path, ckpt_every=10, resume=True, progress=False, device="cpu", seed=1)
    for (k, a), b in zip(full.state_dict().items(), run.state_dict().values()):
        assert torch.equal(a, b), k
    assert h_run["model"] == h_full["model"] and h_run.steps_done == 40
    # resuming a finished run does nothing and returns its history
    again = fit(run, t_step, steps=40, lr=3e-3, ckpt_dir=tmp_path, resume=True, progress=False, device="cpu", seed=1)
    assert again.steps_done == 40 and again["model"] == h_full["model"]


def test_nan_guard_keeps_the_last_good_checkpoint(tmp_path):
    def nan_at_15(model, g, step):
        loss = t_step(model, g, step)
        return loss * float("nan") if step == 15 else loss
    model = make_t()
    with pytest.raises(TrainingDiverged, match="step 15"):
        fit(model, nan_at_15, steps=30, lr=1e-3, ckpt_dir=tmp_path, ckpt_every=10, progress=False, device="cpu")
    tensors, meta = load_tensors(tmp_path / "last.safetensors")
    assert meta["step"] == 10 and all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())
    resumed = make_t()
    h = fit(resumed, t_step, steps=12, lr=1e-3, ckpt_dir=tmp_path, resume=True, progress=False, device="cpu")
    assert h.steps_done == 12 and len(h["model"]) == 12


def test_non_finite_gradient_is_caught():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__(); self.w = nn.Parameter(torch.zeros(1))
    # sqrt at 0: the loss is finite (0) but its gradient is inf
    with pytest.raises(TrainingDiverged, match="gradient of 'model' became non-finite at step 0"):
        fit(Bad(), lambda model, g, s: model.w.sqrt().sum(), steps=5, progress=False, device="cpu")


def test_groups_train_only_on_their_own_loss():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__(); self.a, self.b = nn.Linear(2, 1), nn.Linear(2, 1)
    m = Pair()
    b0 = [p.detach().clone() for p in m.b.parameters()]
    def step(model, g, s):
        x = torch.randn(8, 2, generator=g)
        out = model.a(x).pow(2).mean() + model.b(x).pow(2).mean()   # both losses see both modules...
        return {"a": out, "b": (model.a(x) * 0).sum() + 0 * model.b(x).sum()}  # ...but b's own loss is flat
    fit(m, step, steps=5, lr=0.1, groups={"a": m.a, "b": m.b}, clip=None, progress=False, device="cpu")
    assert all(torch.equal(p, q) for p, q in zip(m.b.parameters(), b0))
    with pytest.raises(ValueError, match="one per group"):
        fit(m, lambda model, g, s: {"a": model.a(torch.ones(1, 2)).sum()}, steps=1, groups={"a": m.a, "b": m.b},
            progress=False, device="cpu")


def test_optimizer_state_round_trip():
    m = nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    m(torch.randn(4, 3)).sum().backward(); opt.step()
    tensors, meta = optimizer_to_tensors(opt)
    opt2 = torch.optim.Adam(m.parameters(), 1e-2)
    optimizer_from_tensors(opt2, tensors, meta)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for pid in s1["state"]:
        for k, v in s1["state"][pid].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(s2["state"][pid][k]))


def test_encode_dataset_calls_the_encoder_once_per_example():
    seen = []
    class Enc(nn.Module):
        def encode(self, x):
            seen.append(len(x))
            return x.flatten(1)[:, :3], torch.zeros(len(x), 3)
    enc = Enc().train()
    x = torch.randn(1000, 1, 2, 2)
    out = encode_dataset(enc.encode, x, batch_size=256, device="cpu")
    assert sum(seen) == 1000 and out["mean"].shape == (1000, 3) and torch.equal(out["mean"], x.flatten(1)[:, :3])
    assert enc.training  # mode restored


def test_encode_dataset_cache_skips_the_encoder(tmp_path):
    calls = []
    def encode(x):
        calls.append(len(x))
        return x.flatten(1), torch.zeros(len(x), 4)
    x = torch.randn(10, 1, 2, 2)
    first = encode_dataset(encode, x, device="cpu", cache=tmp_path / "codes.safetensors")
    again = encode_dataset(encode, x, device="cpu", cache=tmp_path / "codes.safetensors")
    assert sum(calls) == 10 and torch.equal(first["mean"], again["mean"])
    with pytest.raises(ValueError, match="not 11"):
        encode_dataset(encode, torch.randn(11, 1, 2, 2), device="cpu", cache=tmp_path / "codes.safetensors")


def test_device_errors():
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            pick_device("cuda")


def _state(tmp_path, model=None, steps=10, lr=3e-3, **kw):
    "A run of `steps` steps with its train state in tmp_path."
    model = make_t() if model is None else model
    return fit(model, kw.pop("step", t_step), steps=steps, lr=lr, ckpt_dir=tmp_path, progress=False, device="cpu", **kw)


def test_resume_refuses_a_model_of_another_class_or_config(tmp_path):
    _state(tmp_path)
    other = InvarianceINN(in_dim=4, cond_shape=2, n_blocks=2, hidden=16, depth=1, embed_dim=8, seed=3, scale_bound=0.5)
    with pytest.raises(ValueError, match=r"(?s)last\.safetensors.*scale_bound: 2\.0 in the checkpoint, 0\.5 in this model.*resume=False"):
        fit(other, t_step, steps=20, ckpt_dir=tmp_path, resume=True, progress=False, device="cpu")

    class OtherINN(InvarianceINN):
        pass
    with pytest.raises(ValueError, match=r"(?s)last\.safetensors.*InvarianceINN.*OtherINN"):
        fit(OtherINN(**make_t().config), t_step, steps=20, ckpt_dir=tmp_path, resume=True, progress=False, device="cpu")
    h = fit(make_t(), t_step, steps=20, ckpt_dir=tmp_path, resume=True, progress=False, device="cpu", lr=3e-3)
    assert h.steps_done == 20  # the same model resumes


def test_resume_refuses_fewer_steps_than_done(tmp_path):
    _state(tmp_path, steps=10)
    with pytest.raises(ValueError, match=r"(?s)last\.safetensors.*10 steps.*steps=4"):
        fit(make_t(), t_step, steps=4, lr=3e-3, ckpt_dir=tmp_path, resume=True, progress=False, device="cpu")


def test_resume_with_a_new_lr_applies_it_to_every_group_with_a_warning(tmp_path):
    class Pair(nn.Module):
        def __init__(self):
            super().__init__(); self.a, self.b = nn.Linear(2, 1), nn.Linear(2, 1)
    def step(model, g, s):
        x = torch.randn(8, 2, generator=g)
        return {"a": model.a(x).pow(2).mean(), "b": model.b(x).pow(2).mean()}
    m = Pair()
    kw = dict(groups={"a": m.a, "b": m.b}, ckpt_dir=tmp_path, progress=False, device="cpu")
    fit(m, step, steps=3, lr=1e-3, **kw)
    with pytest.warns(UserWarning, match=r"lr=0\.01.*lr=0\.001"):
        fit(m, step, steps=6, lr=1e-2, resume=True, **kw)
    meta = load_tensors(tmp_path / "last.safetensors")[1]
    assert [pg["lr"] for k in ("a", "b") for pg in meta["optim"][k]["param_groups"]] == [1e-2, 1e-2]


def test_resume_into_tensors_of_other_shapes_names_the_file(tmp_path):
    step = lambda model, g, s: model(torch.randn(4, 3, generator=g)).pow(2).mean()
    _state(tmp_path, nn.Linear(3, 2), steps=2, step=step)
    with pytest.raises(ValueError, match=r"(?s)last\.safetensors.*weight.*\(2, 3\).*\(4, 3\)"):
        fit(nn.Linear(3, 4), step, steps=4, ckpt_dir=tmp_path, resume=True, progress=False, device="cpu")


def test_divergence_before_the_first_checkpoint_says_none_was_written(tmp_path):
    nan = lambda model, g, s: t_step(model, g, s) * float("nan")
    for ckpt_dir in (tmp_path, None):
        with pytest.raises(TrainingDiverged, match="at step 0.*no checkpoint") as e:
            fit(make_t(), nan, steps=5, ckpt_dir=ckpt_dir, ckpt_every=2, progress=False, device="cpu")
        assert "last.safetensors" not in str(e.value) and "None" not in str(e.value)

    class Bad(nn.Module):
        def __init__(self):
            super().__init__(); self.w = nn.Parameter(torch.zeros(1))
    with pytest.raises(TrainingDiverged, match="non-finite at step 0.*no checkpoint") as e:
        fit(Bad(), lambda model, g, s: model.w.sqrt().sum(), steps=5, ckpt_dir=tmp_path / "b", progress=False, device="cpu")
    assert "last.safetensors" not in str(e.value)


def test_validation_keeps_the_best_weights_and_survives_a_resume(tmp_path):
    "With val_fn the model ends with its best held-out weights; validating does not change the run; resume keeps it."
    from invnb.train import fit
    def make():
        torch.manual_seed(0)
        return torch.nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 64)[:, None]
    def step_fn(m, g, step):                     # fits y = 2x ...
        return ((m(x) - 2 * x) ** 2).mean()
    def val_fn(m):                               # ... but the held-out target is y = 0: the early weights are best
        return (m(x) ** 2).mean().item()
    plain = make(); h0 = fit(plain, step_fn, 40, lr=0.05, device="cpu", progress=False)
    m = make(); h = fit(m, step_fn, 40, lr=0.05, device="cpu", progress=False, val_fn=val_fn, val_every=10)
    assert h["model"] == h0["model"]                                        # the same training run
    assert [s for s, _ in h["val"]] == [10, 20, 30, 40] and h.best_step == 10
    assert val_fn(m) == pytest.approx(min(v for _, v in h["val"])) and val_fn(m) < val_fn(plain)
    r = make()
    fit(r, step_fn, 40, lr=0.05, device="cpu", progress=False, val_fn=val_fn, val_every=10, ckpt_dir=tmp_path,
        ckpt_every=10, stop_after=25)
    hr = fit(r, step_fn, 40, lr=0.05, device="cpu", progress=False, val_fn=val_fn, val_every=10, ckpt_dir=tmp_path,
             ckpt_every=10, resume=True)
    assert hr.best_step == 10 and hr["val"] == h["val"] and torch.equal(r.weight, m.weight)


def test_validation_sees_the_weights_of_its_step_with_a_fused_optimizer():
    """fit's default Adam is fused: it updates weights in place without bumping their version. Validation under
    no_grad (oneDNN packed weights on CPU) must still use the current weights: best_val equals a fresh evaluation
    of the weights fit kept."""
    import copy
    from invnb.fitting import fit_invariances
    from invnb.diagnostics import nll_of
    from invnb.inn import InvarianceINN
    g = torch.Generator().manual_seed(0)
    codes = {"mean": torch.randn(400, 6, generator=g), "logvar": torch.full((400, 6), -4.0)}
    z = torch.randn(400, 3, generator=g)
    val_codes = {"mean": torch.randn(200, 6, generator=g), "logvar": torch.full((200, 6), -4.0)}
    vz = torch.randn(200, 3, generator=g)
    val_fn = lambda m: nll_of(m, val_codes, vz)
    t, hist = fit_invariances(codes, z, steps=60, lr=3e-3, n_blocks=2, hidden=32, embed_dim=8, device="cpu",
                              progress=False, val_fn=val_fn, val_every=20)
    fresh = copy.deepcopy(t).eval()
    assert hist.best_val == pytest.approx(val_fn(fresh), abs=1e-4)
    assert len({round(v, 3) for _, v in hist["val"]}) == len(hist["val"])   # the weights moved between validations


def test_messages_go_to_the_invnb_logger_and_can_be_routed(capsys):
    import logging
    from invnb.utils import say
    say("stage 1: hello")
    assert capsys.readouterr().out == "stage 1: hello\n"                  # printed by the logger's own handler
    records, lg = [], logging.getLogger("invnb")
    class Keep(logging.Handler):
        def emit(self, record): records.append((record.name, record.levelname, record.getMessage()))
    own, keep = list(lg.handlers), Keep()
    lg.handlers[:] = [keep]                                                 # routed: the user's handler instead
    try: say("stage 2")
    finally: lg.handlers[:] = own
    assert records == [("invnb", "INFO", "stage 2")] and capsys.readouterr().out == ""


def test_progress_false_silences_bars_and_messages(capsys):
    "A fit per layer with progress=False writes nothing to stdout or stderr and logs nothing; with progress, bars show."
    import logging
    from invnb.fitting import fit_invariances_over
    from invnb.classifier import ColorMNISTClassifier
    x = torch.rand(64, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    codes = {"mean": torch.randn(64, 8), "logvar": torch.zeros(64, 8) - 4}
    clf = ColorMNISTClassifier(seed=0).eval()
    probes = {l: clf.probe(l) for l in ("features.3", "softmax")}
    kw = dict(steps=3, batch_size=16, n_blocks=1, hidden=8, embed_dim=4, device="cpu")
    fit_invariances_over(probes, x, codes, progress=False, **kw)
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", "")
    fit_invariances_over(probes, x, codes, progress=True, **kw)
    err = capsys.readouterr().err
    assert "t per layer" in err and "t features.3" not in err.split("t per layer")[0]   # the outer bar comes first
