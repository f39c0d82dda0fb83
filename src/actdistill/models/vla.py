"""The reference VLA teacher: our CPU-sized stand-in for OpenVLA / CogACT.

Tokens (spans from `ModelConfig.spans`, never hard-coded slices):
    [language (2) | state (1) | vision patches (16) | action query (1)]
-> Llama decoder layers driven one by one (models/backbone.py)
-> final norm -> action head on the action-query ("cognition") tokens -> action chunk (B, chunk, 4).
The head is one of three families (models/heads.py): regression, diffusion, discrete.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from actdistill.config import ModelConfig
from actdistill.constants import ACTION, ACTION_PAD, OBS_IMAGE, OBS_LANG, OBS_STATE
from actdistill.models.backbone import DecoderBackbone
from actdistill.models.heads import action_loss, build_head
from actdistill.models.policy import PolicyMixin


class ConvPatchEncoder(nn.Module):
    """A small CNN stem: (B, 3, H, W) -> (B, (H/p)*(W/p), D) patch tokens with learned positions."""

    def __init__(self, image_size: int, patch_size: int, hidden_size: int):
        super().__init__()
        n_down = int(math.log2(patch_size))
        chans = [3] + [min(32 * 2**i, hidden_size) for i in range(n_down - 1)] + [hidden_size]
        layers: list[nn.Module] = []
        for i in range(n_down):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1))
            if i < n_down - 1:
                layers += [nn.GroupNorm(8, chans[i + 1]), nn.GELU()]
        self.net = nn.Sequential(*layers)
        self.pos = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2, hidden_size))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.net(images)  # (B, D, h, w)
        return x.flatten(2).transpose(1, 2) + self.pos  # (B, h*w, D)


class ReferenceVLA(PolicyMixin, nn.Module):
    """Action-chunk VLA with a transformers decoder core and a regression, diffusion or discrete action head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.n_action_steps = config.n_action_steps
        d = config.hidden_size
        self.vision = ConvPatchEncoder(config.image_size, config.patch_size, d)
        self.lang_proj = nn.Linear(config.lang_dim, config.num_lang_tokens * d)
        self.state_proj = nn.Linear(config.state_dim, d)
        self.queries = nn.Parameter(torch.randn(1, config.num_query_tokens, d) * 0.02)
        self.backbone = DecoderBackbone.build(config.decoder, d, config.num_layers, config.num_heads, config.num_kv_heads,
                                              config.intermediate_size, config.seq_len, config.attn_implementation,
                                              config.sliding_window or None)
        self.head = build_head(config.action_head, config.num_query_tokens * d, config.chunk_size,
                               train_steps=config.diffusion_steps, ddim_steps=config.ddim_steps, bins=config.action_bins,
                               action_dim=config.action_dim)
        # Dataset statistics of the state, set by the trainer and saved with the weights.
        self.register_buffer("state_mean", torch.zeros(config.state_dim))
        self.register_buffer("state_std", torch.ones(config.state_dim))
        self.reset()

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @property
    def spans(self) -> dict[str, tuple[int, int]]:
        return self.config.spans

    @property
    def head_family(self) -> str:
        return self.config.action_head

    # -- the model contract: embed -> layers -> norm -> head -----------------------------------
    def embed(self, batch: dict) -> torch.Tensor:
        """Token embeddings before layer 0: (B, N, D)."""
        img = batch[OBS_IMAGE]
        if img.dtype == torch.uint8:  # (B, H, W, 3) uint8 -> (B, 3, H, W) in [-0.5, 0.5]
            img = img.permute(0, 3, 1, 2).to(self.queries.dtype) / 255.0 - 0.5  # the model's own dtype (float32 unless built in bf16)
        b = img.shape[0]
        d = self.config.hidden_size
        state = (batch[OBS_STATE] - self.state_mean) / self.state_std
        tokens = [
            self.lang_proj(batch[OBS_LANG]).view(b, self.config.num_lang_tokens, d),
            self.state_proj(state).unsqueeze(1),
            self.vision(img),
            self.queries.expand(b, -1, -1),
        ]
        h = torch.cat(tokens, dim=1)  # (B, N, D)
        assert h.shape[1] == self.config.seq_len
        return h

    def cognition(self, h_normed: torch.Tensor) -> torch.Tensor:
        """The head's condition: the final-normed action-query tokens, flattened (B, n_query * D)."""
        q0, q1 = self.config.spans["queries"]
        return h_normed[:, q0:q1].flatten(1)

    def action_head(self, h_normed: torch.Tensor) -> torch.Tensor:
        """Continuous actions (B, chunk, 4) from the final-normed hidden states, whatever the head family."""
        return self.head.decode(self.cognition(h_normed))

    def task_loss(self, h_normed: torch.Tensor, batch: dict) -> torch.Tensor:
        """The head family's own training loss (MSE, DDPM noise MSE or bin cross-entropy)."""
        return self.head.loss(self.cognition(h_normed), batch[ACTION], batch.get(ACTION_PAD))

    def predict(self, batch: dict) -> torch.Tensor:
        return self.action_head(self.backbone(self.embed(batch)))

    def predict_chunk(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.predict(batch).clamp(-1.0, 1.0)
        return chunk, torch.ones(chunk.shape[0], self.num_layers, dtype=torch.bool)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        loss = self.task_loss(self.backbone(self.embed(batch)), batch)
        return loss, {"loss": loss.item()}


__all__ = ["ConvPatchEncoder", "ReferenceVLA", "action_loss"]
