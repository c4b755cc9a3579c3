"""M t's trained as one stack: the same runs as one by one (independent truth: each t's own fit), exact resume,
per-model best steps and clipping, clear errors."""
import pytest
import torch

from invnb.fitting import fit_invariances
from invnb.diagnostics import nll_of
from invnb.inn import InvarianceINN
from invnb.stacked import StackedINN, fit_invariances_stacked, stacked_nll_of
from invnb.train import TrainingDiverged, fit

N, D, SIZE = 240, 6, dict(n_blocks=2, hidden=16, depth=1, embed_dim=8)


MIXED = [(5, 3, 3), (7,), (5, 3, 3)]   # t's of two layers in one stack: each embedder holds its own t's rows only


def shapes_of(cond_shape, m):
    "m condition shapes: `cond_shape` for every t, or a list of one shape per t."
    return list(cond_shape) if isinstance(cond_shape, list) else [cond_shape] * m


def data(cond_shape, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = {"mean": torch.randn(N, D, generator=g), "logvar": torch.full((N, D), -3.0)}
    feats = [torch.randn(N, *c, generator=g) for c in shapes_of(cond_shape, m)]
    return codes, feats


@pytest.mark.parametrize("cond_shape", [(5, 3, 3), (5, 7, 7), (7,), MIXED])   # dense, grouped-conv, vector H; mixed
def test_a_stack_follows_each_t_s_own_fit(cond_shape):
    codes, feats = data(cond_shape, 3)
    shapes = shapes_of(cond_shape, 3)
    val, vfeats = {k: v[:60] for k, v in codes.items()}, [f[:60] for f in feats]
    seeds = [0, 0, 4]
    # clip=0.05 is active on every step (the per-model clipping is tested); a lr at which a run is not chaotic: a
    # perturbation of the initial weights by 1e-7 (relative) moves the loss curve by ~1e-6, like stacking (at 5e-3,
    # the 7×7 case is chaotic: that perturbation alone moves it by 0.16)
    kw = dict(steps=40, batch_size=16, lr=2e-3, clip=0.05, progress=False, val_every=5, device="cpu")
    alone = [fit_invariances(codes, f, t=InvarianceINN(D, c, seed=s, **SIZE), seed=s,
                             val_fn=lambda m, v=v: nll_of(m, val, v), **kw) for f, v, s, c in zip(feats, vfeats, seeds, shapes)]
    ts, h = fit_invariances_stacked(codes, feats, [InvarianceINN(D, c, seed=s, **SIZE) for s, c in zip(seeds, shapes)],
                                    seed=seeds, val_fn=lambda m: stacked_nll_of(m, val, vfeats), **kw)
    for i, (t, hi) in enumerate(alone):
        assert max(abs(a - b[i]) for a, b in zip(hi["model"], h["model"])) < 1e-4
        assert max(abs(a[1] - b[1][i]) for a, b in zip(hi["val"], h["val"])) < 1e-4
        assert hi.best_step == h.best_step[i]
        # the trained functions agree (a weight whose gradient is ~0 may differ: Adam scales float noise up to ~lr)
        assert abs(nll_of(t, codes, feats[i]) - nll_of(ts[i], codes, feats[i])) < 1e-4


@pytest.mark.parametrize("cond_shape", [(7,), [(7,), (5, 3, 3)]])     # one embedder; an embedder per t
def test_each_stacked_model_ends_at_its_own_best_step(cond_shape):
    codes, feats = data(cond_shape, 2)
    make = lambda: [InvarianceINN(D, c, seed=s, **SIZE) for s, c in zip((0, 1), shapes_of(cond_shape, 2))]
    kw = dict(steps=30, batch_size=16, progress=False, device="cpu", seed=[0, 1])
    # held-out losses made up so that model 0 is best at step 20 and model 1 at the end (validations at 10, 20, 30)
    losses = iter([[3.0, 9.0], [0.0, 8.0], [5.0, 7.0]])
    fake = lambda m: torch.tensor(next(losses))
    ts, h = fit_invariances_stacked(codes, feats, make(), val_fn=fake, val_every=10, **kw)
    assert h.best_step == [20, 30] and h.best_val == [0.0, 7.0]
    at20, _ = fit_invariances_stacked(codes, feats, make(), **{**kw, "steps": 20})
    end, _ = fit_invariances_stacked(codes, feats, make(), **kw)
    for got, want in ((ts[0], at20[0]), (ts[1], end[1])):
        for (k, p), q in zip(got.state_dict().items(), want.state_dict().values()): assert torch.equal(p, q), k


@pytest.mark.parametrize("cond_shape", [(7,), [(7,), (5, 3, 3)]])
def test_a_killed_stack_resumes_exactly(tmp_path, cond_shape):
    codes, feats = data(cond_shape, 2)
    make = lambda: [InvarianceINN(D, c, seed=s, **SIZE) for s, c in zip((1, 2), shapes_of(cond_shape, 2))]
    kw = dict(steps=30, batch_size=16, progress=False, device="cpu", seed=[1, 2], ckpt_every=10)
    full, hf = fit_invariances_stacked(codes, feats, make(), **kw)
    fit_invariances_stacked(codes, feats, make(), ckpt_dir=tmp_path, stop_after=20, **kw)
    again, ha = fit_invariances_stacked(codes, feats, make(), ckpt_dir=tmp_path, resume=True, **kw)
    assert ha["model"] == hf["model"]
    for a, b in zip(full, again):
        for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()): assert torch.equal(p, q), k


def test_one_diverging_t_stops_the_stack_with_its_index():
    codes, feats = data((7,), 2)
    feats[1][0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"nan.*in stacked model\(s\) \[1\]"):
        fit_invariances_stacked(codes, feats, [InvarianceINN(D, 7, seed=s, **SIZE) for s in (0, 1)], steps=400,
                                batch_size=64, progress=False, device="cpu")


def test_bad_stacks_are_refused_with_what_differs():
    with pytest.raises(ValueError, match="hidden"):
        StackedINN([InvarianceINN(D, 7, seed=0, **SIZE), InvarianceINN(D, 7, seed=0, **{**SIZE, "hidden": 8})])
    with pytest.raises(ValueError, match="at least one"): StackedINN([])
    codes, feats = data((7,), 2)
    ts = [InvarianceINN(D, 7, seed=s, **SIZE) for s in (0, 1)]
    with pytest.raises(ValueError, match="2 models needs 2 seeds; got 3"):
        fit_invariances_stacked(codes, feats, ts, steps=2, seed=[0, 1, 2], progress=False, device="cpu")
    with pytest.raises(ValueError, match="2 t's need 2 feature tensors"):
        fit_invariances_stacked(codes, feats[:1], ts, steps=2, progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"z must have shape \(M=2, B, 7\)"):
        StackedINN(ts).nll(torch.zeros(2, 3, D), torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match="a list of seeds is for a stack"):
        fit(ts[0], lambda m, g, s: m.nll(torch.zeros(2, D), torch.zeros(2, 7)).mean(), 1, seed=[0, 1], progress=False)


def test_unstack_gives_the_t_s_back():
    ts = [InvarianceINN(D, (5, 3, 3), seed=s, **SIZE) for s in (0, 3)]
    z, zb = torch.randn(2, 4, 5, 3, 3), torch.randn(2, 4, D)
    for t, i in zip(ts, range(2)): t(zb[i], z[i])                   # ActNorm's data initialisation
    back = StackedINN(ts).unstack()
    for t, u in zip(ts, back):
        for (k, p), q in zip(t.state_dict().items(), u.state_dict().values()): assert torch.equal(p, q), k
    assert torch.allclose(StackedINN(ts).nll(zb, z), torch.stack([t.nll(zb[i], z[i]) for i, t in enumerate(ts)]), atol=1e-5)


def test_t_s_of_other_layers_stack_with_their_embedders_apart():
    "t's of three condition shapes in one stack: each equals its t alone; a wrong shape names the t's it belongs to."
    shapes = [(5, 3, 3), (7,), (5, 3, 3), (4, 6, 6)]
    ts = [InvarianceINN(D, c, seed=s, **SIZE) for s, c in enumerate(shapes)]
    z, zb = [torch.randn(4, *c) for c in shapes], torch.randn(4, 4, D)
    for i, t in enumerate(ts): t(zb[i], z[i])                      # ActNorm's data initialisation
    stack = StackedINN(ts)
    assert stack.cond_shape is None and len(stack._groups) == 3
    assert torch.allclose(stack.nll(zb, z), torch.stack([t.nll(zb[i], z[i]) for i, t in enumerate(ts)]), atol=1e-5)
    for t, u in zip(ts, stack.unstack()):
        for (k, p), q in zip(t.state_dict().items(), u.state_dict().values()): assert torch.equal(p, q), k
    rows = stack.stack_rows()          # fit's rule: the model axis first; an embedder's rows are its own t's only
    assert sorted({tuple(r) for r in rows.values()}) == [(0, 2), (1,), (3,)]
    assert all(v.shape[0] == len(rows.get(k, range(4))) for k, v in stack.state_dict().items())
    assert sum(p.numel() for p in stack.parameters()) == sum(p.numel() for t in ts for p in t.parameters())
    with pytest.raises(ValueError, match=r"z of the stacked t's \[1\] must have shape \(B, 7\) each; got \(4, 8\)"):
        stack.nll(zb, [z[0], torch.zeros(4, 8), z[2], z[3]])
    with pytest.raises(ValueError, match="only t's of one flow size stack"):
        StackedINN([ts[0], InvarianceINN(D, 7, seed=0, **{**SIZE, "n_blocks": SIZE["n_blocks"] + 1})])


def test_a_stack_runs_the_flows_of_invnb_flows_even_for_one_t():
    "The stack's flow is `invnb.flows`' own Flow with a model axis (`stack_layers`), not a second implementation."
    from invnb.flows import Flow
    t = InvarianceINN(D, 7, seed=3, **SIZE)
    z, zb = torch.randn(5, 7), torch.randn(5, D)
    t(zb, z)                                                        # ActNorm's data initialisation
    stack = StackedINN([t])
    assert type(stack.flow) is Flow and stack.flow.n_stacked == 1 and stack.flow.blocks[0].norm.n_stacked == 1
    assert torch.allclose(stack.nll(zb[None], z[None])[0], t.nll(zb, z), atol=1e-5)
    for (k, p), q in zip(t.state_dict().items(), stack.unstack()[0].state_dict().values()): assert torch.equal(p, q), k


class _Rows(torch.nn.Module):
    "A toy stack of 3 models: `w` holds all three, `u` the rows `rows` gives (e.g. of models 0 and 2)."
    n_stacked = 3

    def __init__(self, rows, n_u=None):
        super().__init__()
        self.rows = rows
        self.w, self.u = torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(n_u or len(rows), 2))

    def stack_rows(self): return {"u": self.rows}


def test_a_stack_s_rows_of_some_models_are_checked_and_clipped_per_model():
    "Per-model clipping over a tensor that holds only some models, against the norm computed by hand."
    m = _Rows([0, 2])
    grads = lambda: (torch.tensor([[3.0, 0], [0, 1], [2, 0]]), torch.tensor([[4.0, 0], [0, 2]]))
    step = lambda model, g, s: (model.w * grads()[0]).sum(1) + torch.stack([(model.u[0] * grads()[1][0]).sum(),
                                                                           torch.zeros(()), (model.u[1] * grads()[1][1]).sum()])
    norms = {0: 5.0, 1: 1.0, 2: (2 ** 2 + 2 ** 2) ** 0.5}     # model 0: (3, 4); model 1: w only; model 2: (2, 2)
    opt = lambda ps, lr: torch.optim.SGD(ps, lr)
    fit(m, step, 1, lr=1.0, clip=1.0, optimizer=opt, progress=False, device="cpu")
    for i in range(3):                 # SGD with lr 1: each model moved by its gradient scaled to norm ≤ 1
        moved = torch.cat([1 - m.w[i]] + ([1 - m.u[[0, 2].index(i)]] if i in (0, 2) else []))
        assert abs(moved.norm().item() - min(1.0, norms[i])) < 1e-5, i
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        fit(_Rows([0, 3]), step, 1, progress=False, device="cpu")
    with pytest.raises(ValueError, match="model axis first"):
        fit(_Rows([0, 2], n_u=3), step, 1, progress=False, device="cpu")
