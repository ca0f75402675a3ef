"""OTI/OVI engines against the published algorithm (the *_reference functions), on tiny random models.

Exactness is checked on well-conditioned problems: targets that the tower can reach (features of hidden
tokens), as real CLIP features nearly are. Once the loss reaches float noise, AdamW keeps taking lr-sized
steps driven by rounding, and the published algorithm itself then moves by ~1e-3 under a 1e-7 change of its
initial tokens; the tests check that the chosen cases are not in that regime before comparing.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from crossgap_qdrant import (
    OTIConfig,
    OVIConfig,
    StoppingRule,
    load_model,
    oti_invert,
    oti_invert_reference,
    ovi_invert,
    ovi_invert_reference,
)
from crossgap_qdrant.inversion import initial_tokens
from crossgap_qdrant.models import register_model_config
from crossgap_qdrant.towers import (
    UnsupportedModelError,
    encode_image_with_pseudo_tokens,
    encode_text_with_pseudo_tokens,
    template_token_ids,
)
from crossgap_qdrant.text_cache import CachedTemplateTextEncoder


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models run fastest, and reproducibly, on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reachable_text_targets(model, tokenizer, template, r, n, seed):
    ids, pos = template_token_ids(tokenizer, template, r)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        hidden = torch.randn(n, r, model.token_embedding.embedding_dim if hasattr(model, "token_embedding")
                             else model.text.token_embedding.embedding_dim, generator=gen) * 0.5
        return F.normalize(encode_text_with_pseudo_tokens(model, ids, pos, hidden), dim=-1)


def reachable_image_targets(model, r, n, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        hidden = torch.randn(n, r, model.visual.class_embedding.shape[-1], generator=gen) * 0.5
        return F.normalize(encode_image_with_pseudo_tokens(model, hidden), dim=-1)


def _assert_stable_reference(run, init, targets, cfg, scale=1e-7, tol=1e-5):
    a = run(targets, cfg, init)
    b = run(targets, cfg, init * (1 + scale))
    assert (a.features - b.features).abs().max() < tol, "test case is ill-conditioned"
    return a


# ------------------------------------------------------------------------------------------------- OTI
@pytest.mark.parametrize("template", ["a photo of {}", "a photo of {}."])
@pytest.mark.parametrize("r", [1, 2])
def test_cached_text_encoder_equals_full_forward(tiny_clip, template, r):
    model, _, tok = tiny_clip
    ids, pos = template_token_ids(tok, template, r)
    enc = CachedTemplateTextEncoder(model, tok, template, r, torch.float32)
    p = torch.randn(5, r, 48) * 0.3
    torch.testing.assert_close(enc(p), encode_text_with_pseudo_tokens(model, ids, pos, p), rtol=1e-5, atol=2e-6)
    # only placeholder..EOT positions are run
    assert enc.suffix_len == int(ids.argmax()) - int(pos[0]) + 1


def test_cached_text_encoder_gradient_equals_full(tiny_clip):
    model, _, tok = tiny_clip
    ids, pos = template_token_ids(tok, "a photo of {}", 1)
    enc = CachedTemplateTextEncoder(model, tok, "a photo of {}", 1, torch.float32)
    p1 = (torch.randn(4, 1, 48) * 0.3).requires_grad_(True)
    p2 = p1.detach().clone().requires_grad_(True)
    enc(p1).square().sum().backward()
    encode_text_with_pseudo_tokens(model, ids, pos, p2).square().sum().backward()
    # The two forwards order their sums differently: rounding is relative to the gradient's scale.
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=2e-6 * p2.grad.abs().max().item())


@pytest.mark.parametrize("template,r", [("a photo of {}", 1), ("a photo of {}", 2), ("a photo of {}.", 1),
                                        ("a photo of {}.", 2)])
def test_oti_equals_published_algorithm_after_full_budget(tiny_clip, template, r):
    model, _, tok = tiny_clip
    targets = reachable_text_targets(model, tok, template, r, n=6, seed=r)
    cfg = OTIConfig(template=template, num_tokens=r, batch_size=4)  # 150 steps; a partial last batch
    init = initial_tokens(6, r, 48, cfg.init_std, cfg.seed)
    ref = _assert_stable_reference(
        lambda t, c, i: oti_invert_reference(model, tok, t, c, init_tokens=i), init, targets, cfg)
    ours = oti_invert(model, tok, targets, cfg, progress=False)
    assert (ours.features - ref.features).abs().max() <= 1e-4
    assert (ours.tokens - ref.tokens).abs().max() <= 1e-3
    torch.testing.assert_close(ours.loss, ref.loss, rtol=0, atol=1e-5)
    assert torch.equal(ours.steps, torch.full((6,), 150))
    torch.testing.assert_close(ours.features.norm(dim=1), torch.ones(6))


def test_oti_short_run_equals_reference_on_random_targets(tiny_clip):
    model, _, tok = tiny_clip
    targets = F.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    cfg = OTIConfig(steps=30, batch_size=5, num_tokens=2)
    ref = oti_invert_reference(model, tok, targets, cfg)
    ours = oti_invert(model, tok, targets, cfg, progress=False)
    assert (ours.features - ref.features).abs().max() <= 1e-5


def test_oti_bidirectional_tower_takes_full_sequence(tiny_bidir):
    model, _, tok = tiny_bidir
    targets = reachable_text_targets(model, tok, "a photo of {}", 1, n=4, seed=3)
    cfg = OTIConfig(steps=60, batch_size=4)
    ref = oti_invert_reference(model, tok, targets, cfg)
    ours = oti_invert(model, tok, targets, cfg, progress=False)
    assert (ours.features - ref.features).abs().max() <= 1e-4
    with pytest.raises(UnsupportedModelError, match="not causal"):
        CachedTemplateTextEncoder(model, tok, "a photo of {}", 1, torch.float32)


def test_oti_result_does_not_depend_on_prefix_cache_or_explicit_init(tiny_clip):
    model, _, tok = tiny_clip
    targets = reachable_text_targets(model, tok, "a photo of {}", 1, n=3, seed=5)
    cfg = OTIConfig(steps=40, batch_size=3)
    init = initial_tokens(3, 1, 48, cfg.init_std, cfg.seed)
    a = oti_invert(model, tok, targets, cfg, progress=False)
    b = oti_invert(model, tok, targets, dataclasses.replace(cfg, prefix_cache=False), init_tokens=init,
                   progress=False)
    assert (a.features - b.features).abs().max() <= 1e-5
    c = oti_invert(model, tok, targets, dataclasses.replace(cfg, seed=1), progress=False)
    assert (a.tokens - c.tokens).abs().max() > 1e-3  # another seed, another start


def test_oti_bf16_close_to_fp32(tiny_clip):
    model, _, tok = tiny_clip
    targets = reachable_text_targets(model, tok, "a photo of {}", 1, n=8, seed=7)
    fp32 = oti_invert(model, tok, targets, OTIConfig(batch_size=8), progress=False)
    bf16 = oti_invert(model, tok, targets, OTIConfig(batch_size=8, precision="bf16"), progress=False)
    cos32 = 1 - fp32.loss
    cos16 = 1 - bf16.loss
    assert (cos32 - cos16).abs().max() < 0.02
    assert bf16.features.dtype == torch.float32


def test_oti_continuous_batching_without_early_stop_equals_fixed_batches(tiny_clip):
    model, _, tok = tiny_clip
    targets = reachable_text_targets(model, tok, "a photo of {}", 1, n=8, seed=2)
    fixed = oti_invert(model, tok, targets, OTIConfig(steps=50, batch_size=4), progress=False)
    slots = oti_invert(model, tok, targets,
                       OTIConfig(steps=50, batch_size=4, stopping=StoppingRule(min_steps=50)), progress=False)
    assert (fixed.features - slots.features).abs().max() <= 1e-6
    assert torch.equal(slots.steps, torch.full((8,), 50))


def test_oti_early_stopping_saves_steps_and_meets_target(tiny_clip):
    model, _, tok = tiny_clip
    targets = reachable_text_targets(model, tok, "a photo of {}", 1, n=10, seed=4)
    rule = StoppingRule(target_loss=0.05)
    res = oti_invert(model, tok, targets, OTIConfig(batch_size=4, stopping=rule), progress=False)
    stopped = res.steps < 150
    assert stopped.sum() >= 5
    # a stopped sample met the target at its last measured step; its final tokens had one more update
    assert (res.loss[stopped] < 0.06).all()
    assert torch.isfinite(res.features).all() and res.features.shape == (10, 32)


def test_oti_rejects_bad_input(tiny_clip):
    model, _, tok = tiny_clip
    with pytest.raises(ValueError, match=r"shape \[N, 32\]"):
        oti_invert(model, tok, torch.randn(3, 31), OTIConfig(steps=1), progress=False)
    bad = torch.randn(3, 32)
    bad[1, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        oti_invert(model, tok, bad, OTIConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        oti_invert(model, tok, torch.randn(3, 32), OTIConfig(steps=1, template="a photo"), progress=False)
    with pytest.raises(ValueError, match="init_tokens must have shape"):
        oti_invert(model, tok, torch.randn(3, 32), OTIConfig(steps=1), init_tokens=torch.zeros(3, 2, 48),
                   progress=False)
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        oti_invert(model, tok, torch.randn(3, 32), OTIConfig(steps=1, precision="fp16"), progress=False)


def test_oti_and_ovi_take_the_handle_and_features_of_any_finite_scale(tiny_clip):
    model, _, tok = tiny_clip
    feats = F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(4)), dim=-1)
    cfg = OTIConfig(steps=4)
    plain = oti_invert(model, tok, feats, cfg, progress=False)
    by_handle = oti_invert(tiny_clip, feats * 1e38, cfg, progress=False)  # the norm of such rows overflows
    torch.testing.assert_close(by_handle.features, plain.features, atol=1e-6, rtol=1e-5)
    assert (by_handle.loss < 1).all()
    torch.testing.assert_close(oti_invert_reference(tiny_clip, feats, cfg).features, plain.features, atol=1e-5,
                               rtol=1e-5)
    ovi_cfg = OVIConfig(steps=3)
    torch.testing.assert_close(ovi_invert(tiny_clip, feats * 1e-30, ovi_cfg, progress=False).features,
                               ovi_invert(model, feats, ovi_cfg, progress=False).features, atol=1e-6, rtol=1e-5)


def test_progress_moves_with_every_step(tiny_clip, capsys):
    model, _, tok = tiny_clip
    oti_invert(model, tok, torch.randn(3, 32), OTIConfig(steps=4, batch_size=2), progress=True)
    err = capsys.readouterr().err
    assert "OTI (3 samples x 4 steps)" in err and "12/12" in err
    oti_invert(model, tok, torch.randn(3, 32), OTIConfig(steps=4, stopping=StoppingRule(target_loss=2.0)),
               progress=True)
    assert "12/12" in capsys.readouterr().err  # samples that stop early complete the bar


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_items_result_depends_on_its_batch_only_within_the_bounds(tiny_clip, seed):
    from crossgap_qdrant.inversion import (BATCH_COSINE_BOUND, BATCH_INVARIANCE_BOUND, HANDWRITTEN_MAX_BATCH,
                                           seeded_initial_tokens)

    model, _, tok = tiny_clip
    n = HANDWRITTEN_MAX_BATCH + 2
    start = torch.randn(n, 32, generator=torch.Generator().manual_seed(seed))
    targets = oti_invert(model, tok, start, OTIConfig(steps=60), progress=False).features  # reachable
    init = seeded_initial_tokens([str(i) for i in range(n)], 1, 48, 0.02, seed)
    for steps, check in ((3, lambda a, b: (a - b).abs().max() <= BATCH_INVARIANCE_BOUND),
                         (150, lambda a, b: F.cosine_similarity(a, b).min() >= BATCH_COSINE_BOUND)):
        runs = [oti_invert(model, tok, targets, OTIConfig(steps=steps, batch_size=b), init_tokens=init,
                           progress=False).features for b in (2, 7, n)]  # the last runs the autograd step
        assert all(check(other, runs[0]) for other in runs[1:]), steps


def test_bf16_without_bf16_hardware_warns(tiny_clip, monkeypatch):
    import warnings

    from crossgap_qdrant import inversion_config

    model, _, tok = tiny_clip
    cfg = OTIConfig(steps=1, precision="bf16")
    monkeypatch.setattr(inversion_config, "cpu_has_bf16", lambda: False)
    with pytest.warns(inversion_config.SlowPrecisionWarning, match="fp32"):
        oti_invert(model, tok, torch.randn(2, 32), cfg, progress=False)
    monkeypatch.setattr(inversion_config, "cpu_has_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", inversion_config.SlowPrecisionWarning)
        oti_invert(model, tok, torch.randn(2, 32), cfg, progress=False)


def test_oti_empty_input(tiny_clip):
    model, _, tok = tiny_clip
    res = oti_invert(model, tok, torch.empty(0, 32), OTIConfig(steps=2), progress=False)
    assert res.features.shape == (0, 32) and res.tokens.shape == (0, 1, 48)


# ------------------------------------------------------------------------------------------------- OVI
@pytest.mark.parametrize("r", [1, 2, 4])
def test_ovi_equals_published_algorithm_after_full_budget(tiny_clip, r):
    model, _, _ = tiny_clip
    targets = reachable_image_targets(model, r, n=6, seed=1)
    cfg = OVIConfig(num_tokens=r, batch_size=4)  # 1000 steps
    init = initial_tokens(6, r, 64, cfg.init_std, cfg.seed)
    ref = _assert_stable_reference(lambda t, c, i: ovi_invert_reference(model, t, c, init_tokens=i),
                                   init, targets, cfg)
    ours = ovi_invert(model, targets, cfg, progress=False)
    assert (ours.features - ref.features).abs().max() <= 1e-4
    assert ours.tokens.shape == (6, r, 64)


def test_ovi_bf16_and_stopping(tiny_clip):
    model, _, _ = tiny_clip
    targets = reachable_image_targets(model, 1, n=6, seed=2)
    cfg = OVIConfig(steps=150, num_tokens=1, batch_size=3)
    fp32 = ovi_invert(model, targets, cfg, progress=False)
    bf16 = ovi_invert(model, targets, dataclasses.replace(cfg, precision="bf16"), progress=False)
    assert ((1 - fp32.loss) - (1 - bf16.loss)).abs().max() < 0.02
    early = ovi_invert(model, targets, dataclasses.replace(cfg, stopping=StoppingRule(target_loss=0.01)),
                       progress=False)
    assert (early.steps < 150).any() and (early.loss < 0.02).all()


def test_ovi_default_token_count_and_unsupported_tower():
    from crossgap_qdrant.inversion import ovi_num_tokens

    assert ovi_num_tokens(None, OVIConfig(), "ViT-L-14", "openai") == 4
    assert ovi_num_tokens(None, OVIConfig(), "ViT-L-14", "laion2b_s32b_b82k") == 2
    assert ovi_num_tokens(None, OVIConfig(), "ViT-B-16-SigLIP", "webli") == 4
    assert ovi_num_tokens(None, OVIConfig(), "ViT-B-32") == 1
    assert ovi_num_tokens(None, OVIConfig(num_tokens=3), "ViT-L-14") == 3
    register_model_config("test-tiny-resnet", {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 1},
    })
    model, _, _ = load_model("test-tiny-resnet", device="cpu", allow_random=True)
    assert model.crossgap_model_name == "test-tiny-resnet" and ovi_num_tokens(model, OVIConfig()) == 1
    with pytest.raises(UnsupportedModelError, match="OVI supports open_clip VisionTransformer"):
        ovi_invert(model, torch.randn(2, 32), OVIConfig(steps=1), progress=False)


# ---------------------------------------------------------------------------------------------- loading
def test_load_model_from_local_checkpoint(tmp_path, tiny_clip):
    model, _, tok = tiny_clip
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    loaded, preprocess, tok2 = load_model("test-tiny-clip", pretrained=str(path), device="cpu")
    assert not any(p.requires_grad for p in loaded.parameters())
    ids = tok2(["a photo of a cat"])
    torch.testing.assert_close(loaded.encode_text(ids), model.encode_text(ids))
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_model("test-tiny-clip", pretrained=str(tmp_path / "missing.pt"), device="cpu")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_model("no-such-model", device="cpu")


@pytest.mark.parametrize("r", [1, 3])
def test_patch_encoder_equals_tower_forward(tiny_clip, r):
    from crossgap_qdrant.patch_encoder import PseudoPatchImageEncoder

    model, _, _ = tiny_clip
    p1 = (torch.randn(5, r, 64) * 0.3).requires_grad_(True)
    p2 = p1.detach().clone().requires_grad_(True)
    a = PseudoPatchImageEncoder(model, torch.float32)(p1)
    b = encode_image_with_pseudo_tokens(model, p2)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)
    a.square().sum().backward()
    b.square().sum().backward()
    # The two forwards order their sums differently: rounding is relative to the gradient's scale.
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=2e-6 * p2.grad.abs().max().item())
    low = PseudoPatchImageEncoder(model, torch.bfloat16)(p1.detach())
    assert low.dtype == torch.bfloat16
    assert F.cosine_similarity(low.float(), b.detach()).min() > 0.99


def test_stopping_rule_keeps_slow_but_steady_improvement():
    from crossgap_qdrant.inversion import stopping_update

    rule = StoppingRule(min_delta=1e-2, patience=4)
    best = torch.full((2,), float("inf"))
    since = torch.zeros(2, dtype=torch.int64)
    # sample 0 improves by 0.004 a step (0.016 over the patience window); sample 1 is flat
    stopped_at = [None, None]
    for t in range(1, 30):
        loss = torch.tensor([1.0 - 0.004 * t, 0.5])
        done, best, since = stopping_update(rule, loss, best, since, torch.full((2,), t), budget=30)
        for i in range(2):
            if done[i] and stopped_at[i] is None:
                stopped_at[i] = t
    assert stopped_at[1] == 5  # improved at step 1, then 4 flat steps
    assert stopped_at[0] is None  # never stopped: improves by >= min_delta within every 4 steps
    done, _, _ = stopping_update(StoppingRule(target_loss=0.1, min_steps=3), torch.tensor([0.05, 0.05]),
                                 best, since, torch.tensor([2, 3]), budget=30)
    assert done.tolist() == [False, True]


# ------------------------------------------------------------------------------------------------ CUDA
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.cuda
def test_engine_on_cuda_equals_cpu_with_and_without_cuda_graphs(tiny_clip):
    import copy

    model, _, tok = tiny_clip
    gpu = copy.deepcopy(model).cuda()
    feats = F.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(2)), dim=-1)
    cfg = OTIConfig(steps=20, batch_size=4)
    cpu = oti_invert(model, tok, feats, cfg, progress=False).features
    graph = oti_invert(gpu, tok, feats, cfg, progress=False).features
    eager = oti_invert(gpu, tok, feats, dataclasses.replace(cfg, cuda_graph=False), progress=False).features
    torch.testing.assert_close(graph, eager, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(graph, cpu, atol=1e-4, rtol=1e-4)
    ovi = OVIConfig(steps=10, batch_size=4)
    torch.testing.assert_close(ovi_invert(gpu, feats, ovi, progress=False).features,
                               ovi_invert(model, feats, ovi, progress=False).features, atol=1e-4, rtol=1e-4)
    bf16 = oti_invert(gpu, tok, feats, dataclasses.replace(cfg, precision="bf16"), progress=False).features
    assert ((bf16 * cpu).sum(-1) > 0.98).all()


# --------------------------------------------------------------------------------- the hand-written step
@pytest.mark.parametrize("quick_gelu", [False, True])
@pytest.mark.parametrize("r, template", [(1, "a photo of {}"), (2, "a photo of {}.")])
def test_handwritten_step_equals_the_published_forward_and_its_gradient(tiny_clip, quick_gelu, r, template):
    from conftest import TINY_CLIP

    from crossgap_qdrant.models import load_model
    from crossgap_qdrant.oti_step import SuffixStep

    if quick_gelu:
        register_model_config("test-tiny-quickgelu", {**TINY_CLIP, "quick_gelu": True})
        torch.manual_seed(3)
        model, _, tok = load_model("test-tiny-quickgelu", device="cpu", allow_random=True)
        assert type(model.transformer.resblocks[0].mlp[1]).__name__ == "QuickGELU"
    else:
        model, _, tok = tiny_clip
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randn(5, r, 48, generator=gen) * 0.3
    targets = F.normalize(torch.randn(5, 32, generator=gen), dim=-1)
    loss, grad = SuffixStep(CachedTemplateTextEncoder(model, tok, template, r, torch.float32))(tokens, targets, 0.2)
    ids, positions = template_token_ids(tok, template, r)
    p = tokens.clone().requires_grad_(True)
    published = 1 - F.cosine_similarity(encode_text_with_pseudo_tokens(model, ids, positions, p), targets)
    (published.sum() * 0.2).backward()
    torch.testing.assert_close(loss, published.detach(), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(grad, p.grad, rtol=1e-4, atol=2e-6 * p.grad.abs().max().item())


@pytest.mark.parametrize("bad", [
    {"betas": (0.9,)}, {"betas": (0.9, 1.5)}, {"num_tokens": 2.0}, {"num_tokens": 0}, {"lr": "0.02"},
    {"lr": -1.0}, {"eps": float("nan")}, {"warm_start": "w.pt"}, {"stopping": {"patience": 3}},
])
def test_bad_settings_are_refused_when_the_config_is_made(bad):
    with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
        OTIConfig(**bad)


@pytest.mark.parametrize("bad", [{"patience": 0}, {"min_steps": -1}, {"min_delta": -0.1}, {"target_loss": "0.1"}])
def test_bad_stopping_rules_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        StoppingRule(**bad)


def test_a_config_of_the_other_inversion_is_refused(tiny_clip):
    features = torch.randn(2, 32)
    with pytest.raises(TypeError, match="OTIConfig"):
        oti_invert(tiny_clip, features, OVIConfig(steps=1), progress=False)
    with pytest.raises(TypeError, match="OVIConfig"):
        ovi_invert(tiny_clip, features, OTIConfig(steps=1), progress=False)


def test_the_handle_takes_features_by_keyword(tiny_clip):
    features = torch.randn(2, 32)
    by_keyword = oti_invert(tiny_clip, image_features=features, config=OTIConfig(steps=2), progress=False)
    by_position = oti_invert(tiny_clip, features, OTIConfig(steps=2), progress=False)
    assert torch.equal(by_keyword.features, by_position.features)


def test_a_model_loaded_in_mixed_bf16_inverts_on_a_float32_copy():
    mixed = load_model("test-tiny-clip", device="cpu", allow_random=True, precision="bf16")
    assert {p.dtype for p in mixed.model.parameters()} == {torch.float32, torch.bfloat16}  # what makes it mixed
    features = torch.randn(3, 32)
    for invert, config in ((oti_invert, OTIConfig(steps=3)), (ovi_invert, OVIConfig(steps=3))):
        result = invert(mixed, features, config, progress=False)
        assert result.features.dtype == torch.float32 and torch.isfinite(result.features).all()
        assert torch.allclose(result.features.norm(dim=-1), torch.ones(3), atol=1e-5)
