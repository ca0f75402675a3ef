"""The fused suffix-block ops against their plain-PyTorch reference, and the OTI step that uses them."""

import pytest
import torch
import torch.nn.functional as F

from crossgap_qdrant import ops
from crossgap_qdrant.inversion.text_suffix import CachedTemplateTextEncoder
from crossgap_qdrant.inversion.text_suffix_step import SuffixStep
from crossgap_qdrant.models import load_model, register_model_config
from crossgap_qdrant.models.towers import UnsupportedModelError
from crossgap_qdrant.suffix_block import (
    ACTIVATIONS,
    suffix_block_backward_reference,
    suffix_block_forward_reference,
)
from tests.support.tiny_models import TINY_CLIP

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10),
       torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}
OUTPUTS = ("out", "x1", "qkv", "probs", "u", "stats")


def _case(dtype=torch.float64, b=2, s=2, p=3, heads=2, d=4, f=24, seed=0):
    """Random block inputs: x [B, S, W], prefix [H, P, D], a causal mask [S, P+S] and the 12 params."""
    gen = torch.Generator().manual_seed(seed)
    w = heads * d

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    params = [1 + rand(w, scale=0.1), rand(w, scale=0.1), rand(3 * w, w, scale=w**-0.5), rand(3 * w, scale=0.1),
              rand(w, w, scale=w**-0.5), rand(w, scale=0.1), 1 + rand(w, scale=0.1), rand(w, scale=0.1),
              rand(f, w, scale=w**-0.5), rand(f, scale=0.1), rand(w, f, scale=f**-0.5), rand(w, scale=0.1)]
    allowed = torch.cat([torch.ones(s, p, dtype=torch.bool), torch.ones(s, s, dtype=torch.bool).tril()], 1)
    mask = torch.zeros(s, p + s).masked_fill(~allowed, float("-inf"))
    return rand(b, s, w), rand(heads, p, d), rand(heads, p, d), mask, params


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("b,s,p", [(1, 2, 4), (2, 3, 1), (6, 2, 5), (3, 1, 0)])
def test_forward_matches_reference(activation, dtype, b, s, p):
    x, pk, pv, mask, params = _case(dtype, b, s, p, seed=b * 10 + s)
    got = ops.suffix_block_forward(x, pk, pv, mask, params, 1e-5, 1e-6, activation)
    want = suffix_block_forward_reference(x, pk, pv, mask, params, 1e-5, 1e-6, activation)
    for name, g, r in zip(OUTPUTS, got, want):
        assert g.dtype == r.dtype and g.shape == r.shape and g.is_contiguous(), name
        torch.testing.assert_close(g.double(), r.double(), **TOL[dtype], msg=name)
    # keys after the query get no probability; each query's probabilities sum to one
    assert (got[3][..., p:][..., torch.ones(s, s).triu(1).bool()] == 0).all()
    torch.testing.assert_close(got[3].sum(-1).double(), torch.ones(b, 2, s, dtype=torch.float64))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("b,s,p", [(1, 2, 4), (2, 3, 1), (6, 2, 5)])
def test_backward_matches_autograd_of_reference(activation, dtype, b, s, p):
    x, pk, pv, mask, params = _case(dtype, b, s, p, seed=b + s + p)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(dtype)
    saved = ops.suffix_block_forward(x, pk, pv, mask, params, 1e-5, 1e-5, activation)
    got = ops.suffix_block_backward(grad_out, x, *saved[1:], pk, pv, params, activation)
    want = suffix_block_backward_reference(grad_out, x, pk, pv, mask, params, 1e-5, 1e-5, activation)
    assert got.dtype == dtype and got.shape == x.shape
    tol = TOL[dtype] if dtype != torch.bfloat16 else dict(rtol=5e-2, atol=5e-2 * want.abs().max().item())
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_float64(activation):
    x, pk, pv, mask, params = _case(torch.float64, b=2, s=3, p=2, seed=4)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: ops.suffix_block_forward(t, pk, pv, mask, params, 1e-5, 1e-5, activation)[0], (x,))
    # the reference the op is tested against is itself the block's gradient
    assert torch.autograd.gradcheck(
        lambda t: suffix_block_forward_reference(t, pk, pv, mask, params, 1e-5, 1e-5, activation)[0], (x,))


def test_opcheck():
    x, pk, pv, mask, params = _case(torch.float32, b=2, s=2, p=3, seed=1)
    torch.library.opcheck(torch.ops.crossgap.suffix_block_forward.default,
                          (x.requires_grad_(True), pk, pv, mask, params, 1e-5, 1e-5, "gelu"))
    saved = ops.suffix_block_forward(x.detach(), pk, pv, mask, params, 1e-5, 1e-5, "quick_gelu")
    torch.library.opcheck(torch.ops.crossgap.suffix_block_backward.default,
                          (torch.randn(x.shape), x.detach(), *saved[1:], pk, pv, params, "quick_gelu"))


def test_gradients_reach_x_only():
    x, pk, pv, mask, params = _case(torch.float64, seed=2)
    params[2] = params[2].clone().requires_grad_(True)
    out = ops.suffix_block_forward(x.requires_grad_(True), pk, pv, mask, params, 1e-5, 1e-5, "gelu")[0]
    with pytest.raises(RuntimeError, match="gradients in x only"):
        out.sum().backward()


def test_empty_batch():
    x, pk, pv, mask, params = _case(torch.float32, b=0, s=2, p=3)
    out = ops.suffix_block_forward(x, pk, pv, mask, params, 1e-5, 1e-5, "gelu")
    assert [tuple(t.shape) for t in out] == [(0, 2, 8), (0, 2, 8), (0, 2, 24), (0, 2, 2, 5), (0, 2, 24), (0, 2, 4)]
    assert ops.suffix_block_backward(x, x, *out[1:], pk, pv, params, "gelu").shape == (0, 2, 8)


@pytest.mark.parametrize("change,match", [
    (dict(x=torch.zeros(2, 8)), "x must be 3-D"),
    (dict(x=torch.zeros(2, 2, 8, dtype=torch.float16)), "x must be float32, float64 or bfloat16"),
    (dict(prefix_v=torch.zeros(2, 4, 4)), "prefix_v shape"),
    (dict(prefix_k=torch.zeros(2, 3, 4, dtype=torch.float64), prefix_v=torch.zeros(2, 3, 4, dtype=torch.float64)),
     "prefix_k dtype"),
    (dict(prefix_v=torch.zeros(2, 3, 4, dtype=torch.float64)), "prefix_v dtype"),
    (dict(prefix_k=torch.zeros(2, 3, 5), prefix_v=torch.zeros(2, 3, 5)), "heads x head width"),
    (dict(mask_bias=torch.zeros(2, 4)), "mask_bias must have shape"),
    (dict(params=[torch.zeros(8)] * 11), "params must hold 12"),
    (dict(fc_weight=torch.zeros(24, 7)), "fc_weight must have shape"),
    (dict(in_proj_bias=torch.zeros(24, dtype=torch.float64)), "in_proj_bias dtype"),
    (dict(activation="relu"), "activation must be"),
])
def test_bad_arguments_name_the_argument(change, match):
    x, pk, pv, mask, params = _case(torch.float32)
    args = dict(x=x, prefix_k=pk, prefix_v=pv, mask_bias=mask, params=params, activation="gelu")
    if "fc_weight" in change:
        params[8] = change.pop("fc_weight")
    if "in_proj_bias" in change:
        params[3] = change.pop("in_proj_bias")
    args.update(change)
    with pytest.raises(RuntimeError, match=match):
        ops.suffix_block_forward(args["x"], args["prefix_k"], args["prefix_v"], args["mask_bias"], args["params"],
                                 1e-5, 1e-5, args["activation"])


def test_backward_refuses_saved_tensors_of_another_shape():
    x, pk, pv, mask, params = _case(torch.float32)
    saved = list(ops.suffix_block_forward(x, pk, pv, mask, params, 1e-5, 1e-5, "gelu"))
    saved[3] = saved[3][:, :, :1]
    with pytest.raises(RuntimeError, match="probs must have shape"):
        ops.suffix_block_backward(x, x, *saved[1:], pk, pv, params, "gelu")


# ------------------------------------------------------------------------------ the OTI step that uses them
@pytest.fixture
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(tiny_clip, quick_gelu):
    if not quick_gelu:
        return tiny_clip.model, tiny_clip.tokenizer
    register_model_config("test-tiny-quickgelu", {**TINY_CLIP, "quick_gelu": True})
    torch.manual_seed(3)
    model, _, tok = load_model("test-tiny-quickgelu", device="cpu", allow_random=True)
    assert type(model.transformer.resblocks[0].mlp[1]).__name__ == "QuickGELU"
    return model, tok


@pytest.mark.usefixtures("_one_thread")
@pytest.mark.parametrize("quick_gelu", [False, True])
@pytest.mark.parametrize("r, template, b", [(1, "a photo of {}", 5), (2, "a photo of {}.", 3), (1, "a {}", 7)])
def test_fused_step_equals_the_aten_step_and_autograd_of_the_encoder(tiny_clip, quick_gelu, r, template, b):
    assert ops.has_suffix_block("cpu"), "the compiled library lacks the suffix-block ops: rebuild it"
    model, tok = _tiny(tiny_clip, quick_gelu)
    encoder = CachedTemplateTextEncoder(model, tok, template, r, torch.float32)
    fused, aten = SuffixStep(encoder), SuffixStep(encoder, fused=False)
    assert fused.fused_blocks is not None and aten.fused_blocks is None
    gen = torch.Generator().manual_seed(5 + r)
    tokens = torch.randn(b, r, 48, generator=gen) * 0.3
    targets = F.normalize(torch.randn(b, 32, generator=gen), dim=-1)
    loss, grad = fused(tokens, targets, 0.2)
    loss_aten, grad_aten = aten(tokens, targets, 0.2)
    p = tokens.clone().requires_grad_(True)
    loss_auto = ops.cosine_loss(encoder(p), targets)
    (loss_auto.sum() * 0.2).backward()
    scale = grad_aten.abs().max().item()
    torch.testing.assert_close(loss, loss_aten, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(grad, grad_aten, rtol=1e-4, atol=2e-6 * scale)
    torch.testing.assert_close(loss, loss_auto.detach(), rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(grad, p.grad, rtol=1e-4, atol=2e-6 * scale)


@pytest.mark.usefixtures("_one_thread")
def test_fused_step_in_float64_equals_autograd_of_the_encoder(tiny_clip):
    model, tok = tiny_clip.model, tiny_clip.tokenizer
    encoder = CachedTemplateTextEncoder(model, tok, "a photo of {}.", 2, torch.float64)
    step = SuffixStep(encoder, fused=True)
    gen = torch.Generator().manual_seed(8)
    tokens = torch.randn(4, 2, 48, generator=gen, dtype=torch.float64) * 0.3
    targets = F.normalize(torch.randn(4, 32, generator=gen, dtype=torch.float64), dim=-1)
    loss, grad = step(tokens, targets, 0.25)
    p = tokens.clone().requires_grad_(True)
    # the encoder's softmax runs in float32 (the op's in float64): float32-sized differences remain
    loss_auto = ops.cosine_loss_reference(encoder(p), targets)
    (loss_auto.sum() * 0.25).backward()
    torch.testing.assert_close(loss.double(), loss_auto.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad.double(), p.grad, rtol=1e-5, atol=1e-7)


def test_fused_true_without_a_fitting_model_is_refused(tiny_clip):
    encoder = CachedTemplateTextEncoder(tiny_clip.model, tiny_clip.tokenizer, "a photo of {}", 1, torch.float16)
    with pytest.raises(UnsupportedModelError, match="fused suffix-block ops cannot run"):
        SuffixStep(encoder, fused=True)


# ------------------------------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cpu_equals_cuda(activation, dtype):
    assert ops.has_suffix_block("cuda"), "the library was built without the CUDA suffix-block kernels"
    for b, s, p in [(1, 2, 4), (9, 3, 70), (3, 1, 0)]:
        x, pk, pv, mask, params = _case(dtype, b, s, p, heads=8, d=64, f=2048, seed=b)
        cpu = ops.suffix_block_forward(x, pk, pv, mask, params, 1e-5, 1e-5, activation)
        gpu = ops.suffix_block_forward(x.cuda(), pk.cuda(), pv.cuda(), mask.cuda(), [t.cuda() for t in params],
                                       1e-5, 1e-5, activation)
        tol = TOL[dtype] if dtype != torch.bfloat16 else dict(rtol=5e-2, atol=5e-2)
        if dtype == torch.float32:
            tol = dict(rtol=1e-4, atol=1e-4)
        for name, c, g in zip(OUTPUTS, cpu, gpu):
            torch.testing.assert_close(g.cpu().double(), c.double(), **tol, msg=name)
        grad_out = torch.randn(x.shape, dtype=torch.float64).to(dtype)
        back_cpu = ops.suffix_block_backward(grad_out, x, *cpu[1:], pk, pv, params, activation)
        back_gpu = ops.suffix_block_backward(grad_out.cuda(), x.cuda(), *gpu[1:], pk.cuda(), pv.cuda(),
                                             [t.cuda() for t in params], activation)
        scale = back_cpu.abs().max().item()
        torch.testing.assert_close(back_gpu.cpu().double(), back_cpu.double(), rtol=tol["rtol"],
                                   atol=tol["atol"] * scale)
