"""Fused operators against their plain-PyTorch references and torch.optim.AdamW."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossgap_qdrant import ops

HYPER = dict(lr=2e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
TOL = {torch.float32: (1e-6, 1e-6), torch.float64: (1e-12, 1e-12),
       torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


def _unit(b, e, gen, dtype=torch.float32):
    return torch.nn.functional.normalize(torch.randn(b, e, generator=gen, dtype=torch.float64), dim=-1).to(dtype)


# ------------------------------------------------------------------------------------------ cosine_loss
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b,e", [(1, 3), (7, 32), (130, 512)])
def test_cosine_loss_matches_reference(dtype, b, e):
    gen = torch.Generator().manual_seed(b * 1000 + e)
    y = (torch.randn(b, e, generator=gen) * 3).to(dtype)
    t = _unit(b, e, gen)
    got = ops.cosine_loss(y, t)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want = ops.cosine_loss_reference(y, t)
    rtol, atol = TOL[dtype] if dtype in (torch.float32, torch.float64) else (1e-5, 1e-5)
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    # and against torch's own cosine similarity, computed in float64
    plain = 1 - torch.nn.functional.cosine_similarity(y.double(), t.double())
    torch.testing.assert_close(got.double(), plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cosine_loss_backward_matches_autograd_of_reference(dtype):
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(33, 64, generator=gen).to(dtype)
    t = _unit(33, 64, gen)
    w = torch.rand(33, generator=gen)
    y1 = y.clone().requires_grad_(True)
    (ops.cosine_loss(y1, t) * w).sum().backward()
    y2 = y.float().clone().requires_grad_(True)
    (ops.cosine_loss_reference(y2, t) * w).sum().backward()
    assert y1.grad.dtype == dtype
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y1.grad.float(), y2.grad, rtol=rtol, atol=atol)


def test_cosine_loss_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(5, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: ops.cosine_loss(a, t), (y,))


def test_cosine_loss_opcheck():
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(6, 10, generator=gen, requires_grad=True)
    t = _unit(6, 10, gen)
    torch.library.opcheck(torch.ops.crossgap.cosine_loss.default, (y, t))
    g = torch.rand(6, generator=gen)
    torch.library.opcheck(torch.ops.crossgap.cosine_loss_backward.default, (g, y.detach(), t))


def test_cosine_loss_empty_batch_and_noncontiguous():
    assert ops.cosine_loss(torch.empty(0, 8), torch.empty(0, 8)).shape == (0,)
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(16, 10, generator=gen)[::2]  # strided rows
    t = torch.randn(10, 8, generator=gen).t()  # transposed
    assert not y.is_contiguous() and not t.is_contiguous()
    torch.testing.assert_close(ops.cosine_loss(y, t), ops.cosine_loss_reference(y, t))


def test_cosine_loss_zero_vector_is_finite():
    y = torch.zeros(2, 4, requires_grad=True)
    t = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    loss = ops.cosine_loss(y, t)
    loss.sum().backward()
    torch.testing.assert_close(loss, torch.ones(2))
    assert torch.isfinite(y.grad).all()


@pytest.mark.parametrize(
    "y,t,match",
    [
        (torch.randn(3, 4, 5), torch.randn(3, 4, 5), "y must be 2-D"),
        (torch.randn(3, 4), torch.randn(3, 5), "target shape"),
        (torch.randint(0, 3, (3, 4)), torch.randn(3, 4), "y must be float"),
        (torch.randn(3, 4), torch.randint(0, 3, (3, 4)), "target must be a floating"),
    ],
)
def test_cosine_loss_bad_arguments_name_the_argument(y, t, match):
    with pytest.raises(RuntimeError, match=match):
        ops.cosine_loss(y, t)


def test_cosine_loss_backward_bad_grad_loss_names_the_argument():
    ops.require_library()
    y, t = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(RuntimeError, match=r"cosine_loss_backward: grad_loss must have shape \[3\], got \[2\]"):
        torch.ops.crossgap.cosine_loss_backward(torch.ones(2), y, t)
    with pytest.raises(RuntimeError, match="cosine_loss: y must be 2-D"):
        torch.ops.crossgap.cosine_loss_backward(torch.ones(3), y[None], t[None])


# ------------------------------------------------------------------------------------------- adamw_step
def _state(b, shape, gen, dtype=torch.float32):
    p = torch.randn(b, *shape, generator=gen, dtype=dtype)
    return p, torch.zeros_like(p), torch.zeros_like(p), torch.zeros(b, dtype=torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 512), (2, 768), (3, 5)])
def test_adamw_step_sequence_equals_torch_adamw(dtype, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    b = 9
    p, m, v, step = _state(b, shape, gen, dtype)
    q = torch.nn.Parameter(p.clone())
    opt = torch.optim.AdamW([q], lr=HYPER["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    active = torch.ones(b, dtype=torch.bool)
    for i in range(60):
        # gradient scales from 1 down to 1e-9 exercise eps and the bias corrections
        g = torch.randn(b, *shape, generator=gen, dtype=dtype) * 10.0 ** -(i % 10)
        q.grad = g.clone()
        opt.step()
        ops.adamw_step(p, g, m, v, step, active, **HYPER)
    state = opt.state[q]
    # PyTorch's CPU sqrt (MKL VML) may round a few elements 1 ulp differently from IEEE sqrt.
    rtol, atol = (2e-6, 1e-7) if dtype == torch.float32 else (1e-13, 1e-15)
    torch.testing.assert_close(p, q.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(m, state["exp_avg"], rtol=rtol, atol=atol)
    torch.testing.assert_close(v, state["exp_avg_sq"], rtol=rtol, atol=atol)
    assert (step == 60).all()


@pytest.mark.parametrize("beta1", [0.0, 0.3, 0.5, 0.9])
def test_adamw_first_moment_is_pytorchs_lerp_on_both_sides_of_one_half(beta1):
    # PyTorch's lerp starts from the end point for weights of 0.5 and more; with beta1 = 0 that makes the first
    # moment the gradient exactly, even after a large one (from the start point it would round at that size).
    gen = torch.Generator().manual_seed(3)
    p, _, v, step = _state(4, (3, 40), gen)
    m = torch.randn(4, 3, 40, generator=gen) * 30
    g = torch.randn(4, 3, 40, generator=gen) * 1e-5
    want = m.lerp(g, 1 - beta1)
    ops.adamw_step(p, g, m, v, step, torch.ones(4, dtype=torch.bool), lr=1e-2, beta1=beta1)
    assert torch.equal(m, want)


def test_adamw_step_matches_reference_with_mixed_steps_and_inactive_rows():
    gen = torch.Generator().manual_seed(7)
    b = 12
    p, m, v, step = _state(b, (2, 16), gen)
    step = torch.randint(0, 5, (b,), generator=gen)  # rows at different points of their optimisation
    m = torch.randn(b, 2, 16, generator=gen) * 1e-2
    v = torch.rand(b, 2, 16, generator=gen) * 1e-3
    refs = [t.clone() for t in (p, m, v, step)]
    for i in range(10):
        active = torch.rand(b, generator=gen) > 0.3
        g = torch.randn(b, 2, 16, generator=gen)
        before = [t.clone() for t in (p, m, v, step)]
        ops.adamw_step(p, g, m, v, step, active, **HYPER)
        ops.adamw_step_reference(
            refs[0], g, refs[1], refs[2], refs[3], active, lr=HYPER["lr"], beta1=0.9, beta2=0.999, eps=1e-8,
            weight_decay=0.01)
        for now, was in zip((p, m, v, step), before):
            assert torch.equal(now[~active], was[~active])  # inactive rows bit-identical
        assert torch.equal(step, refs[3])
    for got, want in zip((p, m, v), refs[:3]):
        torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-7)


def test_adamw_step_parallel_batch_matches_reference():
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(11)
    p, m, v, step = _state(2048, (1, 64), gen)
    refs = [t.clone() for t in (p, m, v, step)]
    active = torch.rand(2048, generator=gen) > 0.5
    g = torch.randn(2048, 1, 64, generator=gen)
    ops.adamw_step(p, g, m, v, step, active, **HYPER)
    ops.adamw_step_reference(refs[0], g, refs[1], refs[2], refs[3], active, lr=HYPER["lr"])
    torch.testing.assert_close(p, refs[0], rtol=2e-6, atol=1e-7)
    assert torch.equal(step, refs[3])


def test_adamw_step_empty_batch_and_noncontiguous_state():
    empty = torch.empty(0, 1, 4)
    ops.adamw_step(empty, empty, empty.clone(), empty.clone(), torch.empty(0, dtype=torch.int64),
                   torch.empty(0, dtype=torch.bool), **HYPER)
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(6, 8, 4, generator=gen)
    p = base.transpose(1, 2)  # [6, 4, 8], non-contiguous, written in place
    m = torch.zeros(6, 8, 4).transpose(1, 2)
    v = torch.zeros(6, 8, 4).transpose(1, 2)
    step = torch.zeros(12, dtype=torch.int64)[::2]
    g = torch.randn(6, 4, 8, generator=gen)
    active = torch.ones(6, dtype=torch.bool)
    ref = [p.contiguous().clone(), m.contiguous().clone(), v.contiguous().clone(), step.clone()]
    ops.adamw_step(p, g, m, v, step, active, **HYPER)
    ops.adamw_step_reference(ref[0], g, ref[1], ref[2], ref[3], active, lr=HYPER["lr"])
    torch.testing.assert_close(base.transpose(1, 2), ref[0], rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(m, ref[1])
    assert torch.equal(step, ref[3])


def test_adamw_step_opcheck():
    gen = torch.Generator().manual_seed(9)
    p, m, v, step = _state(4, (1, 8), gen)
    g = torch.randn(4, 1, 8, generator=gen)
    active = torch.tensor([True, False, True, True])
    torch.library.opcheck(torch.ops.crossgap.adamw_step.default,
                          (p, g, m, v, step, active, 2e-2, 0.9, 0.999, 1e-8, 0.01))


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(param=torch.zeros(4, 1, 8, dtype=torch.float16)), "param must be float32"),
        (dict(grad=torch.zeros(4, 1, 7)), "grad shape"),
        (dict(exp_avg=torch.zeros(4, 1, 8, dtype=torch.float64)), "exp_avg dtype"),
        (dict(exp_avg_sq=torch.zeros(3, 1, 8)), "exp_avg_sq shape"),
        (dict(step=torch.zeros(4, dtype=torch.int32)), "step must be int64"),
        (dict(step=torch.zeros(5, dtype=torch.int64)), "step must have shape"),
        (dict(active=torch.ones(4, dtype=torch.uint8)), "active must be bool"),
    ],
)
def test_adamw_step_bad_arguments_name_the_argument(change, match):
    args = dict(param=torch.zeros(4, 1, 8), grad=torch.zeros(4, 1, 8), exp_avg=torch.zeros(4, 1, 8),
                exp_avg_sq=torch.zeros(4, 1, 8), step=torch.zeros(4, dtype=torch.int64),
                active=torch.ones(4, dtype=torch.bool))
    args.update(change)
    with pytest.raises(RuntimeError, match=match):
        ops.adamw_step(**args, **HYPER)


def test_adamw_step_bad_hyperparameter():
    z = torch.zeros(2, 1, 3)
    with pytest.raises(RuntimeError, match="beta1"):
        ops.adamw_step(z, z, z.clone(), z.clone(), torch.zeros(2, dtype=torch.int64),
                       torch.ones(2, dtype=torch.bool), lr=1e-2, beta1=1.5)


# --------------------------------------------------------------------------------------- torch.compile
def test_torch_compile_smoke():
    def step(p, target, m, v, s, active):
        p_var = p.detach().requires_grad_(True)
        loss = ops.cosine_loss(p_var.flatten(1), target)
        (g,) = torch.autograd.grad(loss.sum(), p_var)
        ops.adamw_step(p, g, m, v, s, active, **HYPER)
        return loss

    gen = torch.Generator().manual_seed(4)
    target = _unit(5, 6, gen)
    p0, m0, v0, s0 = _state(5, (1, 6), gen)
    state_eager = [t.clone() for t in (p0, m0, v0, s0)]
    state_comp = [t.clone() for t in (p0, m0, v0, s0)]
    active = torch.ones(5, dtype=torch.bool)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=False)
    for _ in range(3):
        want = step(state_eager[0], target, *state_eager[1:], active)
        got = compiled(state_comp[0], target, *state_comp[1:], active)
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(state_comp[0], state_eager[0])


# ------------------------------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cosine_loss_cpu_equals_cuda(dtype):
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(300, 768, generator=gen).to(dtype)
    t = _unit(300, 768, gen)
    g = torch.rand(300, generator=gen)
    torch.testing.assert_close(ops.cosine_loss(y.cuda(), t.cuda()).cpu(), ops.cosine_loss(y, t),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        torch.ops.crossgap.cosine_loss_backward(g.cuda(), y.cuda(), t.cuda()).cpu().float(),
        torch.ops.crossgap.cosine_loss_backward(g, y, t).float(), rtol=TOL[dtype][0], atol=TOL[dtype][1])


@cuda
@pytest.mark.cuda
def test_adamw_step_cpu_equals_cuda():
    gen = torch.Generator().manual_seed(1)
    cpu = list(_state(257, (2, 512), gen))
    gpu = [t.cuda() for t in cpu]
    for _ in range(20):
        active = torch.rand(257, generator=gen) > 0.2
        g = torch.randn(257, 2, 512, generator=gen)
        ops.adamw_step(cpu[0], g, cpu[1], cpu[2], cpu[3], active, **HYPER)
        ops.adamw_step(gpu[0], g.cuda(), gpu[1], gpu[2], gpu[3], active.cuda(), **HYPER)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=2e-6, atol=1e-7)


# ------------------------------------------------------------------------ inputs the tests did not choose
@settings(max_examples=40, deadline=None)
@given(b=st.integers(0, 40), e=st.integers(1, 300), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_cosine_loss_random_inputs(b, e, scale, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    y = (torch.randn(b, e, generator=gen) * scale).to(dtype)
    t = torch.randn(b, e, generator=gen)
    y_grad = y.clone().requires_grad_(True)
    loss = ops.cosine_loss(y_grad, t)
    want = ops.cosine_loss_reference(y, t)
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-5)
    if b:
        loss.sum().backward()
        y_ref = y.float().clone().requires_grad_(True)
        ops.cosine_loss_reference(y_ref, t).sum().backward()
        rtol, atol = TOL[dtype]
        # Both terms of the gradient, t / (|y| |t|) and cos * y / |y|^2, are of size 1 / |y| per row: their
        # difference (all cancellation when e == 1) carries rounding relative to that size.
        inv_norm = 1 / y.float().norm(dim=1, keepdim=True).clamp_min(1e-30)
        bound = rtol * y_ref.grad.abs() + atol * (1 + 1 / scale + 4 * inv_norm)
        assert ((y_grad.grad.float() - y_ref.grad).abs() <= bound).all()


@settings(max_examples=30, deadline=None)
@given(b=st.integers(0, 20), r=st.integers(1, 4), d=st.integers(1, 70), steps=st.integers(1, 6),
       seed=st.integers(0, 2**31 - 1), lr=st.floats(1e-4, 1e-1), wd=st.floats(0, 0.1),
       beta1=st.floats(0, 0.99), beta2=st.floats(0.5, 0.9999))
def test_adamw_step_random_inputs(b, r, d, steps, seed, lr, wd, beta1, beta2):
    gen = torch.Generator().manual_seed(seed)
    p, m, v, step = _state(b, (r, d), gen)
    step = torch.randint(0, 100, (b,), generator=gen)
    ref = [p.clone(), m.clone(), v.clone(), step.clone()]
    hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=1e-8, weight_decay=wd)
    for _ in range(steps):
        g = torch.randn(b, r, d, generator=gen) * 10.0 ** float(torch.randint(-5, 2, (1,), generator=gen))
        active = torch.rand(b, generator=gen) > 0.25
        ops.adamw_step(p, g, m, v, step, active, **hyper)
        ops.adamw_step_reference(ref[0], g, ref[1], ref[2], ref[3], active, **hyper)
    assert torch.equal(step, ref[3])
    for got, want in zip((p, m, v), ref[:3]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
