"Flows: inverse, log-determinant against autograd, ActNorm initialisation, dtypes and devices."
import pytest
import torch
from conftest import randomize_

from invnb.flows import ActNorm, DoubleAffineCoupling, Flow, FlowBlock, Shuffle, stack_layers

DIM, COND = 6, 3


def layers(cond_dim):
    return {
        "actnorm": ActNorm(DIM) if cond_dim == 0 else None,
        "shuffle": Shuffle(DIM, torch.Generator().manual_seed(3)) if cond_dim == 0 else None,
        "coupling": DoubleAffineCoupling(DIM, cond_dim, hidden=16, depth=2),
        "block": FlowBlock(DIM, cond_dim, hidden=16, depth=1),
        "flow": Flow(DIM, n_blocks=5, hidden=16, depth=2, cond_dim=cond_dim, seed=2),
    }


CASES = [(name, c) for c in (0, COND) for name, m in layers(c).items() if m is not None]


def build(name, cond_dim, dtype):
    return randomize_(layers(cond_dim)[name]).to(dtype)


def inputs(cond_dim, dtype, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, DIM, generator=g, dtype=dtype) * 2 - 1) * 10       # |x| up to 10
    h = torch.randn(batch, cond_dim, generator=g, dtype=dtype) if cond_dim else None
    return x, h


@pytest.mark.parametrize("name,cond_dim", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_inverse_round_trip(name, cond_dim, dtype, tol):
    m = build(name, cond_dim, dtype)
    x, h = inputs(cond_dim, dtype)
    y, logdet = m(x, h)
    assert (y - x).abs().max() > 1e-2, "the layer under test should not be the identity"
    assert (m.inverse(y, h) - x).abs().max() < tol
    assert logdet.shape == (x.shape[0],) and logdet.dtype == dtype


@pytest.mark.parametrize("name,cond_dim", CASES)
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-6), (torch.float32, 1e-3)])
def test_logdet_matches_autograd_jacobian(name, cond_dim, dtype, atol):
    m = build(name, cond_dim, dtype)
    x, h = inputs(cond_dim, dtype, batch=4, seed=1)
    x = x / 5
    _, logdet = m(x, h)
    for i in range(x.shape[0]):
        hi = None if h is None else h[i:i + 1]
        jac = torch.autograd.functional.jacobian(lambda xi: m(xi[None], hi)[0][0], x[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], atol=atol, rtol=0)
        # the inverse's Jacobian at y has the opposite log-determinant
        y = m(x[i:i + 1], hi)[0][0].detach()
        jinv = torch.autograd.functional.jacobian(lambda yi: m.inverse(yi[None], hi)[0], y)
        torch.testing.assert_close(torch.linalg.slogdet(jinv)[1], -logdet[i], atol=atol, rtol=0)


def test_gradients_reach_every_parameter():
    m = Flow(DIM, n_blocks=3, hidden=16, depth=2, cond_dim=COND)
    x, h = inputs(COND, torch.float32)
    h.requires_grad_(True)
    y, logdet = m(x, h)
    (y.pow(2).sum() - logdet.sum()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert h.grad.abs().sum() > 0


def test_fresh_block_near_but_not_identity():
    m = FlowBlock(DIM, hidden=32, depth=2)
    m.norm.initialize(torch.zeros(2, DIM))  # unit scale, zero shift: isolate the coupling
    x = torch.randn(64, DIM)
    y, _ = m.coupling(x)
    assert 0 < (y - x).abs().max() < 0.1


def test_batch_size_one_after_init():
    m = Flow(DIM, n_blocks=3, hidden=16, cond_dim=COND)
    x, h = inputs(COND, torch.float32, batch=32)
    m(x, h)
    y, logdet = m(x[:1], h[:1])
    assert y.shape == (1, DIM) and logdet.shape == (1,)
    torch.testing.assert_close(m.inverse(y, h[:1]), x[:1], atol=1e-4, rtol=0)


def test_actnorm_initialises_from_first_batch():
    x = torch.randn(500, DIM) * torch.arange(1, DIM + 1) + 3
    m = ActNorm(DIM)
    y, logdet = m(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(DIM), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(0, correction=0), torch.ones(DIM), atol=1e-5, rtol=0)
    torch.testing.assert_close(logdet, -x.std(0, correction=0).log().sum().expand(500))
    # later batches do not re-initialise
    y2, _ = m(x * 2)
    assert y2.std(0).mean() > 1.5


def test_actnorm_initialises_in_reverse():
    y = torch.randn(500, DIM) * 4 - 2
    m = ActNorm(DIM)
    x = m.inverse(y)
    torch.testing.assert_close(x.mean(0), torch.zeros(DIM), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0, correction=0), torch.ones(DIM), atol=1e-5, rtol=0)
    torch.testing.assert_close(m(x)[0], y, atol=1e-4, rtol=0)  # the forward direction agrees
    assert bool(m.initialized)


def test_actnorm_batch_of_one_is_finite():
    m = ActNorm(DIM)
    y, logdet = m(torch.randn(1, DIM) * 5)
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
    assert torch.equal(y, torch.zeros(1, DIM)) and torch.equal(logdet, torch.zeros(1))


def test_actnorm_not_reinitialised_after_load():
    m = ActNorm(DIM)
    m(torch.randn(100, DIM) * 3 + 1)
    fresh = ActNorm(DIM)
    fresh.load_state_dict(m.state_dict())
    x = torch.randn(10, DIM) * 100  # would give other statistics if it re-initialised
    torch.testing.assert_close(fresh(x)[0], m(x)[0])
    assert "initialized" in m.state_dict()


def test_shuffle_is_a_fixed_permutation():
    s = Shuffle(DIM, torch.Generator().manual_seed(5))
    x = torch.arange(DIM, dtype=torch.float32)[None]
    y, logdet = s(x)
    assert sorted(y[0].tolist()) == x[0].tolist() and not torch.equal(y, x) and logdet.item() == 0
    assert torch.equal(s(x)[0], y)


def test_seed_fixes_weights():
    a, b, c = Flow(DIM, 2, 8, seed=1), Flow(DIM, 2, 8, seed=1), Flow(DIM, 2, 8, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_packed_inference_path_matches_autograd_path():
    m = randomize_(Flow(DIM, n_blocks=3, hidden=32, depth=2, cond_dim=COND))
    x, h = inputs(COND, torch.float32)
    y_grad, ld_grad = m(x, h)
    with torch.no_grad():
        y, ld = m(x, h)
        xr = m.inverse(y, h)
        torch.nn.init.zeros_(m.blocks[0].coupling.net1.b_in)  # weights change: packed cache must refresh
        y2, _ = m(x, h)
    torch.testing.assert_close(y, y_grad.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld, ld_grad.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xr, x, atol=1e-4, rtol=0)
    torch.testing.assert_close(y2, m(x, h)[0].detach(), atol=1e-5, rtol=1e-5)


def test_shape_errors_are_clear():
    m = Flow(DIM, 2, 8, cond_dim=COND)
    with pytest.raises(ValueError, match=r"\(B, 6\)"):
        m(torch.randn(4, 5), torch.randn(4, COND))
    with pytest.raises(ValueError, match="pass h"):
        m(torch.randn(4, DIM))
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        m(torch.randn(4, DIM), torch.randn(3, COND))
    with pytest.raises(ValueError, match="unconditional"):
        Flow(DIM, 2, 8)(torch.randn(4, DIM), torch.randn(4, COND))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda(cuda, dtype):
    m = randomize_(Flow(DIM, n_blocks=3, hidden=16, cond_dim=COND)).to(cuda, dtype)
    x, h = inputs(COND, dtype)
    x, h = x.to(cuda), h.to(cuda)
    y, logdet = m(x, h)
    assert logdet.device.type == "cuda" and logdet.dtype == dtype
    torch.testing.assert_close(m.inverse(y, h), x, atol=1e-4 if dtype == torch.float32 else 1e-10, rtol=0)
    m_cpu = m.cpu()
    torch.testing.assert_close(m_cpu(x.cpu(), h.cpu())[0], y.cpu(), atol=1e-4, rtol=1e-4)


def test_empty_first_batch_is_refused_and_does_not_poison_the_layer():
    x = torch.randn(16, 4) * 3 + 1
    for call in (lambda m, x: m(x), lambda m, x: m.inverse(x), lambda m, x: m.initialize(x)):
        an = ActNorm(4)
        with pytest.raises(ValueError, match="empty batch"):
            call(an, x[:0])
        assert not an._initialized and not bool(an.initialized)
        assert torch.isfinite(an(x)[0]).all()                   # the next real batch initialises it as usual
    f = Flow(4, 3, 16, cond_dim=2)
    with pytest.raises(ValueError, match="empty batch"):
        f(x[:0], torch.randn(0, 2))
    y, logdet = f(x, torch.randn(16, 2))
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()


def test_layers_are_checkpointable_without_patching():
    from invnb.checkpoint import Checkpointable
    from invnb.flows import InvertibleModule
    assert issubclass(InvertibleModule, Checkpointable) and issubclass(Flow, Checkpointable)
    assert "save" not in InvertibleModule.__dict__ and "load" not in InvertibleModule.__dict__


# --- stacks of layers (`stack_layers`): M layers as one, the same code with a leading model axis ---

M = 3


def stacked(name, cond_dim, dtype=torch.float64):
    "M layers of one kind with different weights (and, for flows, permutations), alone and as one stack."
    alone = [randomize_(layers(cond_dim)[name] if name != "flow" else
                        Flow(DIM, n_blocks=3, hidden=16, depth=2, cond_dim=cond_dim, seed=i), seed=i).to(dtype)
             for i in range(M)]
    return alone, stack_layers(alone)


def stacked_inputs(cond_dim, dtype, batch=8):
    xs, hs = zip(*(inputs(cond_dim, dtype, batch, seed=i) for i in range(M)))
    return torch.stack(xs), None if cond_dim == 0 else torch.stack(hs)


@pytest.mark.parametrize("name,cond_dim", CASES)
def test_a_stack_computes_each_layer_alone(name, cond_dim):
    alone, stack = stacked(name, cond_dim)
    x, h = stacked_inputs(cond_dim, torch.float64)
    x.requires_grad_(True)
    y, logdet = stack(x, h)
    assert y.shape == x.shape and logdet.shape == (M, x.shape[1]) and stack.n_stacked == M
    for i, m in enumerate(alone):
        yi, li = m(x[i], None if h is None else h[i])
        torch.testing.assert_close(y[i], yi, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(logdet[i], li, atol=1e-12, rtol=1e-12)
    assert (stack.inverse(y, h) - x).abs().max() < 1e-10
    # gradients: every model's own, as if alone
    (y.pow(2).sum() - logdet.sum()).backward()
    for i, m in enumerate(alone):
        xi = x[i].detach().requires_grad_(True)
        yi, li = m(xi, None if h is None else h[i])
        (yi.pow(2).sum() - li.sum()).backward()
        torch.testing.assert_close(x.grad[i], xi.grad, atol=1e-10, rtol=1e-10)
        for (n, p), q in zip(stack.named_parameters(), m.parameters()):
            torch.testing.assert_close(p.grad[i], q.grad, atol=1e-10, rtol=1e-10, msg=n)


def test_a_stack_s_state_has_the_model_axis_first_and_its_own_copies():
    alone, stack = stacked("flow", COND)
    assert all(v.shape[0] == M for v in stack.state_dict().values())   # what `invnb.train.fit` asks of a stack
    for i, m in enumerate(alone):
        for (k, v), w in zip(stack.state_dict().items(), m.state_dict().values()): assert torch.equal(v[i], w), k
    with torch.no_grad(): stack.blocks[0].norm.loc.add_(1.0)
    assert not torch.equal(stack.blocks[0].norm.loc[0], alone[0].blocks[0].norm.loc)   # copies, not views


def test_a_stacked_actnorm_initialises_only_the_models_that_saw_no_data():
    trained, fresh = ActNorm(DIM), ActNorm(DIM)
    trained(torch.randn(50, DIM) * 3 + 2)
    stack = stack_layers([trained, fresh, ActNorm(DIM)])
    assert not stack._initialized
    x = torch.randn(M, 200, DIM) * 5 - 1
    y, logdet = stack(x)
    assert stack._initialized and bool(stack.initialized.all())
    torch.testing.assert_close(y[0], trained(x[0])[0])                          # model 0 kept its statistics
    for i in (1, 2):                                                            # the others standardise their batch
        torch.testing.assert_close(y[i].mean(0), torch.zeros(DIM), atol=1e-5, rtol=0)
        torch.testing.assert_close(y[i].std(0, correction=0), torch.ones(DIM), atol=1e-5, rtol=0)
    # in reverse, and after loading: the mirror follows the buffer, nothing re-initialises
    rev = stack_layers([ActNorm(DIM) for _ in range(M)])
    xr = rev.inverse(x)
    torch.testing.assert_close(xr.mean(1), torch.zeros(M, DIM), atol=1e-5, rtol=0)
    again = stack_layers([ActNorm(DIM) for _ in range(M)])
    again.load_state_dict(stack.state_dict())
    assert again._initialized
    torch.testing.assert_close(again(x * 10)[0], stack(x * 10)[0])


def test_a_stacked_flow_trains_as_m_independent_fits():
    from invnb.train import fit
    data = torch.randn(M, 64, DIM, generator=torch.Generator().manual_seed(4)) * torch.arange(1, DIM + 1) + 1
    nll = lambda y, ld: 0.5 * y.pow(2).sum(-1) - ld
    alone = [Flow(DIM, n_blocks=2, hidden=16, depth=1, seed=i) for i in range(M)]
    stack = stack_layers([Flow(DIM, n_blocks=2, hidden=16, depth=1, seed=i) for i in range(M)])
    kw = dict(progress=False, device="cpu", clip=1.0)
    hists = [fit(f, lambda m, g, s, i=i: nll(*m(data[i][s % 4 * 16:][:16])).mean(), 12, 1e-2, **kw)
             for i, f in enumerate(alone)]
    hs = fit(stack, lambda m, g, s: nll(*m(data[:, s % 4 * 16:][:, :16])).mean(1), 12, 1e-2, seed=[0] * M, **kw)
    for i, h in enumerate(hists):
        assert max(abs(a - b[i]) for a, b in zip(h["model"], hs["model"])) < 1e-4
        for p, q in zip(stack.parameters(), alone[i].parameters()): torch.testing.assert_close(p[i], q, atol=1e-5, rtol=0)


def test_stacks_are_refused_with_what_differs():
    with pytest.raises(ValueError, match="at least one"): stack_layers([])
    with pytest.raises(ValueError, match="one class and size"):
        stack_layers([Flow(DIM, 2, 16, seed=0), Flow(DIM, 2, 8, seed=1)])
    with pytest.raises(ValueError, match="one class and size"): stack_layers([ActNorm(DIM), Shuffle(DIM)])
    stack = stack_layers([Flow(DIM, 2, 8, cond_dim=COND, seed=s) for s in range(M)])
    with pytest.raises(ValueError, match="stack already"): stack_layers([stack, stack])
    with pytest.raises(ValueError, match=r"\(3, B, 6\), one batch per model"): stack(torch.randn(4, DIM), torch.randn(4, COND))
    with pytest.raises(ValueError, match=r"\(3, 4, 3\)"): stack(torch.randn(M, 4, DIM), torch.randn(M, 5, COND))
    with pytest.raises(ValueError, match=r"pass h of shape \(M, B, 3\)"): stack(torch.randn(M, 4, DIM))
