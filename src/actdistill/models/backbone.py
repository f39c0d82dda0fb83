"""Drive a transformers decoder layer by layer from outside (DESIGN.md "The model contract").

The backbone is a stock `transformers` model (here `LlamaModel` built from a
small `LlamaConfig`); we never fork its modeling code. We call its rotary
embedding, its mask builder and its decoder layers ourselves, which is what
lets a router skip layers:  embed -> layer_0 .. layer_{L-1} -> norm.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel
from transformers.masking_utils import create_causal_mask

# transformers 5.x renamed `past_key_values` to `cache` in the mask helpers; pass the name this version has.
_CACHE_ARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


@dataclass
class LayerContext:
    """What every decoder layer needs besides the hidden states, for one (batch, sequence) shape."""

    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (1, N, head_dim)
    attention_mask: torch.Tensor | None  # None: causal handled inside SDPA
    position_ids: torch.Tensor  # (1, N)

    def rows(self, index: torch.Tensor) -> "LayerContext":
        """The context for a subset of batch rows (rotary tables are shared by all rows)."""
        mask = self.attention_mask
        if mask is not None and mask.shape[0] > 1:
            mask = mask[index]
        return LayerContext(self.position_embeddings, mask, self.position_ids)


class DecoderBackbone(nn.Module):
    """A transformers decoder whose layers the package calls one at a time."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)

    @classmethod
    def llama(cls, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int, intermediate_size: int,
              max_positions: int, attn_implementation: str = "sdpa") -> "DecoderBackbone":
        cfg = LlamaConfig(
            vocab_size=1,  # inputs are embeddings; the token table is unused
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max(max_positions, 16),
            rms_norm_eps=1e-6,
            attention_dropout=0.0,
            tie_word_embeddings=False,
        )
        cfg._attn_implementation = attn_implementation
        return cls(cfg)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    @property
    def num_layers(self) -> int:
        return len(self.model.layers)

    def context(self, h: torch.Tensor) -> LayerContext:
        b, n, _ = h.shape
        position_ids = torch.arange(n, device=h.device).unsqueeze(0)
        mask = create_causal_mask(config=self.config, inputs_embeds=h, attention_mask=None, position_ids=position_ids,
                                  **{_CACHE_ARG: None})
        return LayerContext(self.model.rotary_emb(h, position_ids=position_ids), mask, position_ids)

    def layer(self, i: int, h: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        return self.model.layers[i](h, attention_mask=ctx.attention_mask, position_embeddings=ctx.position_embeddings,
                                    position_ids=ctx.position_ids)

    def norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.norm(h)

    def forward(self, h: torch.Tensor, return_hidden: bool = False):
        """Full-depth pass; `return_hidden` also returns the hidden state after every layer (L x (B, N, D))."""
        ctx = self.context(h)
        hidden = []
        for i in range(self.num_layers):
            h = self.layer(i, h, ctx)
            hidden.append(h)
        out = self.norm(h)
        return (out, hidden) if return_hidden else out
