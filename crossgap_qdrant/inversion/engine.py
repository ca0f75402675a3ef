"""The optimisation loop shared by OTI and OVI: one pseudo-token set per target, per-sample AdamW, fixed
batches or continuous batching with per-sample early stopping.

An engine step is ``step_all(tokens, ...)``: the loss of every sample in the batch and, either through autograd
on ``encode`` or a given ``loss_and_grad``, its gradient, followed by the fused per-sample AdamW update.
Progress is counted in sample-steps, so the bar (and its ETA) moves on every step, not once per batch.
On CUDA, a fixed-budget batch captures its step once in a CUDA graph and replays it (``config.cuda_graph``).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F

from crossgap_qdrant import ops
from crossgap_qdrant.errors import InvalidArgumentError
from crossgap_qdrant.inversion.config import InversionConfig, InversionResult, StoppingRule
from crossgap_qdrant.progress import format_seconds, progress_bar

logger = logging.getLogger(__name__)

CUDA_GRAPH_MIN_STEPS = 20  # budgets from which a batch's step is captured once and replayed (CUDA)
#: An inversion estimated (from its first steps) to take longer than this many seconds is announced with a
#: warning that gives the estimate.
LONG_INVERSION_S = 60.0
ESTIMATE_STEPS = 3  # steps of the first batch timed for the estimate


def run_engine(
    encode: Callable[[torch.Tensor], torch.Tensor],
    final_encode: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    init: torch.Tensor,
    config: InversionConfig,
    progress: bool,
    desc: str,
    loss_and_grad: Callable | None = None,
    snapshots: tuple[int, ...] = (),
) -> InversionResult:
    """Optimises one pseudo-token set per target; see OTIConfig/OVIConfig for the settings.

    ``loss_and_grad(tokens, targets, grad_scale) -> (loss [B], grad [B, R, W])``, when given, replaces the
    autograd step through ``encode`` (see :mod:`crossgap_qdrant.inversion.text_suffix_step`). ``snapshots``:
    step counts (at most ``config.steps``, fixed budgets only) after which the tokens are kept; their features
    go to ``InversionResult.snapshots``, so one run gives the whole quality-against-steps curve.
    """
    start_time = time.perf_counter()
    device = targets.device
    n = targets.shape[0]
    snapshots = check_snapshots(snapshots, config)
    kept = {k: init.clone() if k == 0 else torch.empty_like(init) for k in snapshots}
    tokens_out = torch.empty_like(init)
    steps_out = torch.zeros(n, dtype=torch.int64)
    bar = None
    if progress and n:
        bar = progress_bar(n * config.steps, f"{desc} ({n} samples x {config.steps} steps)", "step")
    hyper = dict(lr=config.lr, beta1=config.betas[0], beta2=config.betas[1], eps=config.eps,
                 weight_decay=config.weight_decay)

    def step_all(p, m, v, step, active, target, grad_scale):
        if loss_and_grad is not None:
            loss, grad = loss_and_grad(p, target, grad_scale)
        else:
            p_var = p.detach().requires_grad_(True)
            loss = ops.cosine_loss(encode(p_var), target)
            (grad,) = torch.autograd.grad(loss.sum() * grad_scale, p_var)
        ops.adamw_step(p, grad, m, v, step, active, **hyper)
        return loss.detach()

    # capture costs two warm-up steps per batch: worth it for long budgets, not for a warm start's few steps
    use_graph = config.cuda_graph and device.type == "cuda" and config.steps >= CUDA_GRAPH_MIN_STEPS
    # Every sample's gradient is scaled by 1/batch_size, the published batch-mean loss of a full batch, also
    # in a partial batch: a sample's optimisation then does not depend on how many others share its batch.
    grad_scale = 1.0 / config.batch_size
    if config.stopping is None or config.steps == 0:
        for lo in range(0, n, config.batch_size):
            hi = min(n, lo + config.batch_size)
            p = init[lo:hi].to(device).clone()
            m, v = torch.zeros_like(p), torch.zeros_like(p)
            step = torch.zeros(hi - lo, dtype=torch.int64, device=device)
            active = torch.ones(hi - lo, dtype=torch.bool, device=device)
            target = targets[lo:hi]

            def one_step(p=p, m=m, v=v, step=step, active=active, target=target):
                step_all(p, m, v, step, active, target, grad_scale)

            graph = capture_step(one_step, (p, m, v, step)) if use_graph and config.steps else None
            batch_start = time.perf_counter()
            for done in range(1, config.steps + 1):
                if graph is not None:
                    graph.replay()
                else:
                    one_step()
                if done in kept:
                    kept[done][lo:hi] = p.cpu()
                if lo == 0 and done == min(ESTIMATE_STEPS, config.steps) < config.steps:
                    per_step = (time.perf_counter() - batch_start) / done
                    warn_if_long(desc, n, config, per_step * config.steps * math.ceil(n / config.batch_size))
                if bar is not None:
                    bar.update(hi - lo)
            tokens_out[lo:hi] = p.cpu()
            steps_out[lo:hi] = step.cpu()
            if bar is not None:
                bar.set_postfix_str(f"{hi}/{n} samples", refresh=False)
    else:
        run_continuous(step_all, targets, init, config, tokens_out, steps_out, bar, grad_scale)
    if bar is not None:
        bar.update(bar.total - bar.n)  # samples that stopped early leave part of their budget unspent
        bar.close()

    features, loss = final_features(final_encode, tokens_out, targets, config.batch_size)
    seconds = time.perf_counter() - start_time
    if n:
        logger.debug("%s: %d samples, %.0f steps each on average, mean loss %.4f, %.2f s", desc, n,
                     steps_out.float().mean().item(), loss.mean().item(), seconds)
    snapshot_features = {k: final_features(final_encode, t, targets, config.batch_size)[0] for k, t in kept.items()}
    return InversionResult(features=features, tokens=tokens_out, loss=loss, steps=steps_out, seconds=seconds,
                           snapshots=snapshot_features)


def check_snapshots(snapshots, config: InversionConfig) -> tuple[int, ...]:
    """The snapshot step counts, sorted and unique; each an int in [0, config.steps], with a fixed budget."""
    out = tuple(sorted(set(snapshots or ())))
    if not out:
        return out
    if any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= config.steps for k in out):
        raise InvalidArgumentError(f"snapshots must be step counts in [0, steps={config.steps}], got {list(snapshots)}")
    if config.stopping is not None:
        raise InvalidArgumentError("snapshots need a fixed budget: use stopping=None (samples that stop early have no "
                         "tokens at later steps)")
    return out


def warn_if_long(desc: str, n: int, config: InversionConfig, seconds: float) -> None:
    """Warns, with the estimate, when an inversion is expected to take longer than LONG_INVERSION_S."""
    if seconds > LONG_INVERSION_S:
        logger.warning("%s of %d sample(s) will take about %s (%d steps each, about %s a sample on this "
                       "machine)", desc, n, format_seconds(seconds), config.steps, format_seconds(seconds / n))


def capture_step(one_step: Callable[[], None], state: tuple[torch.Tensor, ...]) -> "torch.cuda.CUDAGraph":
    """One optimisation step captured in a CUDA graph, for replay (fixed shapes: one batch of a fixed budget).

    Capture needs the step's kernels warmed up on a side stream first; the warm-up runs real steps, so the
    optimiser ``state`` (tokens, moments, step counts) is saved before and restored after. Replaying the graph
    then performs exactly the captured step on the same tensors, without launching each kernel from Python.
    """
    saved = [t.clone() for t in state]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            one_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        one_step()
    for tensor, copy in zip(state, saved):
        tensor.copy_(copy)
    return graph


def stopping_update(
    rule: StoppingRule, loss: torch.Tensor, best: torch.Tensor, since: torch.Tensor, steps: torch.Tensor,
    budget: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the per-sample stopping rule.

    Args:
        loss: [S] loss measured at this step; best: [S] best loss at the last improvement;
        since: [S] steps since that improvement; steps: [S] steps taken, this one included.

    Returns:
        (done [S] bool, best, since). ``best`` moves only on an improvement of at least ``min_delta``, so a
        sample improving by less per step is still kept while its improvement over ``patience`` steps adds up.
    """
    improved = loss < best - (rule.min_delta or 0.0)
    best = torch.where(improved, loss, best)
    since = torch.where(improved, torch.zeros_like(since), since + 1)
    done = steps >= budget
    eligible = steps >= rule.min_steps
    if rule.target_loss is not None:
        done |= eligible & (loss <= rule.target_loss)
    if rule.min_delta is not None:
        done |= eligible & (since >= rule.patience)
    return done, best, since


def run_continuous(step_all, targets, init, config, tokens_out, steps_out, bar, grad_scale) -> None:
    """Slots of a full batch; a sample that stops is written out and the next pending one takes its slot."""
    rule: StoppingRule = config.stopping
    device = targets.device
    n = targets.shape[0]
    size = min(config.batch_size, n)
    if size == 0:
        return
    width = init.shape[1:]
    p = torch.zeros(size, *width, device=device)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    step = torch.zeros(size, dtype=torch.int64, device=device)
    owner = torch.full((size,), -1, dtype=torch.int64)  # sample index held by each slot
    best = torch.full((size,), math.inf)
    since = torch.zeros(size, dtype=torch.int64)  # steps since the loss last improved by min_delta
    pending = 0

    def fill(slots: torch.Tensor) -> None:
        nonlocal pending
        for s in slots.tolist():
            if pending >= n:
                owner[s] = -1
                continue
            owner[s] = pending
            p[s] = init[pending].to(device)
            m[s] = 0
            v[s] = 0
            step[s] = 0
            best[s] = math.inf
            since[s] = 0
            pending += 1

    fill(torch.arange(size))
    target_buf = torch.zeros(size, targets.shape[1], device=device)
    while (owner >= 0).any():
        live = owner >= 0
        target_buf[live.to(device)] = targets[owner[live].to(device)]
        active = live.clone()
        # The loss measured at this step (before its update) decides who stops after it.
        loss = step_all(p, m, v, step, active.to(device), target_buf, grad_scale).cpu()
        if bar is not None:
            bar.update(int(live.sum()))
        stepped = step.cpu()
        done, best, since = stopping_update(rule, loss, best, since, stepped, config.steps)
        done &= live
        finished = done.nonzero().flatten()
        if finished.numel():
            idx = owner[finished]
            tokens_out[idx] = p[finished.to(device)].cpu()
            steps_out[idx] = stepped[finished]
            fill(finished)


@torch.no_grad()
def final_features(final_encode, tokens, targets, batch_size):
    device = targets.device
    feats = []
    for lo in range(0, tokens.shape[0], batch_size):
        feats.append(F.normalize(final_encode(tokens[lo : lo + batch_size].to(device)).float(), dim=-1))
    if not feats:
        return torch.empty(0, targets.shape[1]), torch.empty(0)
    features = torch.cat(feats)
    loss = 1 - (features * targets).sum(-1)
    return features.cpu(), loss.cpu()
