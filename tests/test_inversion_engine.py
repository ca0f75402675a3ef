"""The batched optimisation (crossgap_qdrant.inversion.engine): continuous batching, early stopping, progress,
batch composition, CUDA graphs."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from crossgap_qdrant import progress
from crossgap_qdrant.inversion import (
    BATCH_COSINE_BOUND,
    BATCH_INVARIANCE_BOUND,
    OTIConfig,
    OVIConfig,
    StoppingRule,
    engine,
    oti_invert,
    ovi_invert,
    seeded_initial_tokens,
    stopping_update,
)
from crossgap_qdrant.inversion.invert import HANDWRITTEN_MAX_BATCH
from crossgap_qdrant.models import ClipModel
from tests.support.inversion_targets import reachable_text_targets

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_oti_continuous_batching_without_early_stop_equals_fixed_batches(tiny_clip):
    model, _, tok = tiny_clip
    targets = reachable_text_targets(model, tok, "a photo of {}", 1, n=8, seed=2)
    fixed = oti_invert(tiny_clip, targets, OTIConfig(steps=50, batch_size=4), progress=False)
    slots = oti_invert(tiny_clip, targets,
                       OTIConfig(steps=50, batch_size=4, stopping=StoppingRule(min_steps=50)), progress=False)
    assert (fixed.features - slots.features).abs().max() <= 1e-6
    assert torch.equal(slots.steps, torch.full((8,), 50))


def test_oti_early_stopping_saves_steps_and_meets_target(tiny_clip):
    model, _, tok = tiny_clip
    targets = reachable_text_targets(model, tok, "a photo of {}", 1, n=10, seed=4)
    rule = StoppingRule(target_loss=0.05)
    res = oti_invert(tiny_clip, targets, OTIConfig(batch_size=4, stopping=rule), progress=False)
    stopped = res.steps < 150
    assert stopped.sum() >= 5
    # a stopped sample met the target at its last measured step; its final tokens had one more update
    assert (res.loss[stopped] < 0.06).all()
    assert torch.isfinite(res.features).all() and res.features.shape == (10, 32)


def test_progress_moves_with_every_step(tiny_clip, monkeypatch):
    bars = []

    def recording_bar(total, desc, unit="it", enabled=True, stream=None):
        bar = progress.SilentProgress(total)
        bar.desc, updates = desc, []
        bar.update = lambda n=1: (updates.append(n), setattr(bar, "n", bar.n + n))
        bar.updates = updates
        bars.append(bar)
        return bar

    monkeypatch.setattr(engine, "progress_bar", recording_bar)
    oti_invert(tiny_clip, torch.randn(3, 32), OTIConfig(steps=4, batch_size=2), progress=True)
    assert bars[-1].desc == "OTI (3 samples x 4 steps)" and bars[-1].n == bars[-1].total == 12
    assert len(bars[-1].updates) >= 8  # moved on every step of both batches, not once per batch
    oti_invert(tiny_clip, torch.randn(3, 32), OTIConfig(steps=4, stopping=StoppingRule(target_loss=2.0)),
               progress=True)
    assert bars[-1].n == 12  # samples that stop early complete the bar


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_items_result_depends_on_its_batch_only_within_the_bounds(tiny_clip, seed):
    model, _, tok = tiny_clip
    n = HANDWRITTEN_MAX_BATCH + 2
    start = torch.randn(n, 32, generator=torch.Generator().manual_seed(seed))
    targets = oti_invert(tiny_clip, start, OTIConfig(steps=60), progress=False).features  # reachable
    init = seeded_initial_tokens([str(i) for i in range(n)], 1, 48, 0.02, seed)
    for steps, check in ((3, lambda a, b: (a - b).abs().max() <= BATCH_INVARIANCE_BOUND),
                         (150, lambda a, b: F.cosine_similarity(a, b).min() >= BATCH_COSINE_BOUND)):
        runs = [oti_invert(tiny_clip, targets, OTIConfig(steps=steps, batch_size=b), init_tokens=init,
                           progress=False).features for b in (2, 7, n)]  # the last runs the autograd step
        assert all(check(other, runs[0]) for other in runs[1:]), steps


def test_stopping_rule_keeps_slow_but_steady_improvement():
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


@needs_cuda
@pytest.mark.cuda
def test_engine_on_cuda_equals_cpu_with_and_without_cuda_graphs(tiny_clip):
    model, _, tok = tiny_clip
    gpu = ClipModel.from_parts(copy.deepcopy(model).cuda(), None, tok)
    feats = F.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(2)), dim=-1)
    cfg = OTIConfig(steps=20, batch_size=4)
    cpu = oti_invert(tiny_clip, feats, cfg, progress=False).features
    graph = oti_invert(gpu, feats, cfg, progress=False).features
    eager = oti_invert(gpu, feats, dataclasses.replace(cfg, cuda_graph=False), progress=False).features
    torch.testing.assert_close(graph, eager, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(graph, cpu, atol=1e-4, rtol=1e-4)
    ovi = OVIConfig(steps=10, batch_size=4)
    torch.testing.assert_close(ovi_invert(gpu, feats, ovi, progress=False).features,
                               ovi_invert(tiny_clip, feats, ovi, progress=False).features, atol=1e-4, rtol=1e-4)
    bf16 = oti_invert(gpu, feats, dataclasses.replace(cfg, precision="bf16"), progress=False).features
    assert ((bf16 * cpu).sum(-1) > 0.98).all()
