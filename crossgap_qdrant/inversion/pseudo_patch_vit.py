"""Fast forward of a frozen ViT image tower fed with pseudo patch tokens (OVI).

Vision towers attend in both directions, so nothing can be skipped: every position runs every step. This
module runs the same computation as the tower's own forward (see reference.encode_image_with_pseudo_tokens,
the published one) on contiguous activations, optionally on a copy of the tower cast once to a reduced
precision (made once per tower and dtype); tests compare the two.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from crossgap_qdrant.inversion.blocks import block_forward, check_block
from crossgap_qdrant.inversion.reference import patch_token_index
from crossgap_qdrant.models.cast_copy import cast_copy
from crossgap_qdrant.models.towers import UnsupportedModelError, vision_tower


class PseudoPatchImageEncoder(nn.Module):
    """Image features of R pseudo patch tokens repeated over the grid.

    Args:
        model: an open_clip model whose ``visual`` is a VisionTransformer of ResidualAttentionBlocks
            (no attentional pooler).
        dtype: compute dtype; other than the tower's, a frozen copy of the tower cast once (and cached).

    Call with pseudo tokens [B, R, W] (W: vision width, any float dtype, differentiable) to get unnormalised
    features [B, E] in ``dtype``.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        tower = vision_tower(model)
        visual = tower.module
        if getattr(visual, "attn_pool", None) is not None:
            raise UnsupportedModelError("image towers with an attentional pooler take the generic path")
        if not getattr(visual.transformer, "batch_first", True):
            raise UnsupportedModelError("sequence-first vision transformers are not supported")
        for block in visual.transformer.resblocks:
            check_block(block)
        if any(p.dtype != dtype for p in visual.parameters()):  # mixed-precision loading casts only some
            visual = cast_copy(visual, dtype)
        self.visual = visual.requires_grad_(False)
        self.num_patches = tower.num_patches
        self.dtype = dtype
        self._index: torch.Tensor | None = None  # patch -> token, built for the first R seen

    def forward(self, pseudo_tokens: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        r = pseudo_tokens.shape[1]
        if self._index is None or self._index[-1] != r - 1 or self._index.device != pseudo_tokens.device:
            self._index = patch_token_index(r, self.num_patches, pseudo_tokens.device)
        patches = pseudo_tokens.to(self.dtype).index_select(1, self._index)
        cls = visual.class_embedding.view(1, 1, -1).expand(patches.shape[0], -1, -1)
        x = torch.cat([cls, patches], dim=1) + visual.positional_embedding
        x = visual.ln_pre(visual.patch_dropout(x))
        for block in visual.transformer.resblocks:
            x = block_forward(block, x)
        pooled, _ = visual._pool(x)
        return pooled @ visual.proj if visual.proj is not None else pooled
