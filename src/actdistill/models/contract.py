"""The model contract: what a VLA must offer for probing, distillation, export and layer skipping.

    embed(batch)               -> h0 (B, N, D): every token before decoder layer 0
    backbone                   -> a DecoderBackbone (models/backbone.py) wrapping the transformers decoder
    backbone.norm(h)           -> final norm
    action_head(h_normed)      -> (B, chunk, A) continuous actions (the family decodes: regression, DDIM, bins)
    task_loss(h_normed, batch) -> the head family's own training loss
    spans                      -> {"vision": (s, e), "language": (s, e), "queries": (s, e)} token spans of h0
    hidden_size, num_layers, chunk_size, image_size, n_action_steps

`ReferenceVLA` (models/vla.py) is one such model; `examples/distill_your_own_vla.py` builds another
around a transformers vision-language model. The router reads the vision and language spans of h0;
the probes read every layer's output.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

REQUIRED = ("embed", "backbone", "action_head", "task_loss", "spans", "hidden_size", "num_layers", "chunk_size",
            "image_size", "n_action_steps")
ROUTER_SPANS = ("vision", "language")


class SpanError(ValueError):
    """A token span does not lie inside the sequence the model embeds."""


@runtime_checkable
class VLAModel(Protocol):
    backbone: torch.nn.Module
    spans: dict[str, tuple[int, int]]
    hidden_size: int
    num_layers: int
    chunk_size: int
    image_size: int
    n_action_steps: int

    def embed(self, batch: dict) -> torch.Tensor: ...

    def action_head(self, h_normed: torch.Tensor) -> torch.Tensor: ...

    def task_loss(self, h_normed: torch.Tensor, batch: dict) -> torch.Tensor: ...


def check_vla(model) -> None:
    """One sentence naming what a model lacks to be distilled (before any work is done)."""
    from actdistill.models.backbone import AdapterError, DecoderBackbone

    missing = [a for a in REQUIRED if not hasattr(model, a)]
    if missing:
        raise AdapterError(f"{type(model).__name__} lacks {', '.join(missing)}; a VLA for actdistill needs "
                           f"{', '.join(REQUIRED)} (see actdistill.models.contract).")
    if not isinstance(model.backbone, DecoderBackbone):
        raise AdapterError(f"{type(model).__name__}.backbone is a {type(model.backbone).__name__}; wrap the transformers "
                           "decoder with actdistill.models.backbone.DecoderBackbone(model).")
    spans = model.spans
    for key in ROUTER_SPANS + ("queries",):
        if key not in spans:
            raise SpanError(f"{type(model).__name__}.spans has no {key!r} span; it needs vision, language and queries.")


def check_spans(spans: dict[str, tuple[int, int]], seq_len: int, keys=ROUTER_SPANS) -> None:
    """Each named span (start, end) must be a non-empty slice of a sequence of `seq_len` tokens."""
    for key in keys:
        start, end = spans[key]
        if not 0 <= start < end <= seq_len:
            raise SpanError(f"The {key} span ({start}, {end}) lies outside the {seq_len}-token sequence the model embeds; "
                            f"spans are (start, end) with 0 <= start < end <= {seq_len}.")
