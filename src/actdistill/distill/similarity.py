"""How much each decoder layer changes its input: the signal behind static pruning and hybrid depth.

A layer whose output tokens are nearly its input tokens (cosine similarity near 1) can be skipped at little
cost; the ones that change their input most are kept (static pruning) or always run (hybrid depth).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def layer_input_similarity(teacher, data, count: int = 1024, batch_size: int = 128) -> torch.Tensor:
    """(L,) mean cosine similarity between each decoder layer's input and output tokens over training frames."""
    idx = torch.linspace(0, len(data) - 1, min(count, len(data))).long()
    sims = torch.zeros(teacher.num_layers)
    bb = teacher.backbone
    for chunk in idx.split(batch_size):
        h = teacher.embed(data.batch(chunk))
        ctx = bb.context(h)
        for l in range(teacher.num_layers):
            out = bb.layer(l, h, ctx)
            sims[l] += F.cosine_similarity(out, h, dim=-1).mean(1).sum()
            h = out
    return sims / len(idx)
