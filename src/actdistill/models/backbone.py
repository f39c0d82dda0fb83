"""Drive a transformers decoder layer by layer from outside (docs/design.md "The model contract").

The backbone is a stock `transformers` model (by default `LlamaModel` built from a
small `LlamaConfig`; any transformers decoder can be wrapped); we never fork its modeling code. We call its rotary
embedding, its mask builder and its decoder layers ourselves, which is what
lets a router skip layers:  embed -> layer_0 .. layer_{L-1} -> norm.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import is_fake
from torch import nn
from transformers import AutoModel, Gemma2Config, Gemma3TextConfig, GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask


def _cache_kw(fn) -> str:
    """transformers 5.x renamed `past_key_values` to `cache` in the mask helpers; the name this version has."""
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


MASKS = {"full_attention": (create_causal_mask, _cache_kw(create_causal_mask)),
         "sliding_attention": (create_sliding_window_causal_mask, _cache_kw(create_sliding_window_causal_mask))}
FAMILIES = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig, "gemma": GemmaConfig,
            "gemma2": Gemma2Config, "gemma3": Gemma3TextConfig}


_ABSENT = object()  # an attribute a module does not have (None is a value: "no window")


class AdapterError(ValueError):
    """A model cannot be driven layer by layer (no decoder layers found, an unsupported layer type)."""


def find_decoder(model: nn.Module) -> nn.Module:
    """The transformers decoder inside `model`: the module with `layers`, `norm` and `rotary_emb`.

    Accepts the decoder itself (LlamaModel, Qwen2Model, ...), a model holding it as `model` (a *ForCausalLM),
    or a vision-language model holding it as `language_model` (possibly one level down)."""
    node = model
    for _ in range(4):
        if isinstance(getattr(node, "layers", None), nn.ModuleList) and hasattr(node, "norm") and hasattr(node, "rotary_emb"):
            return node
        child = next((getattr(node, a) for a in ("language_model", "model", "text_model")
                      if isinstance(getattr(node, a, None), nn.Module)), None)
        if child is None:
            break
        node = child
    raise AdapterError(f"Could not find decoder layers in {type(model).__name__}: expected a transformers decoder with "
                       "`layers`, `norm` and `rotary_emb`, or a model holding one as `model` or `language_model`.")


@dataclass
class LayerContext:
    """What every decoder layer needs besides the hidden states, for one (batch, sequence) shape.

    Masks and rotary tables are kept per layer type ("full_attention", "sliding_attention"): models such as
    Gemma 2/3 alternate both, each with its own mask (and, in Gemma 3, its own rotary base)."""

    position_embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]]  # type -> (cos, sin), each (1, N, head_dim)
    masks: dict[str, torch.Tensor | None]  # type -> mask; None: causal handled inside SDPA
    position_ids: torch.Tensor  # (1, N)

    def rows(self, index: torch.Tensor) -> LayerContext:
        """The context for a subset of batch rows (rotary tables are shared by all rows)."""
        masks = {t: m[index] if m is not None and m.shape[0] > 1 else m for t, m in self.masks.items()}
        return LayerContext(self.position_embeddings, masks, self.position_ids)


class DecoderBackbone(nn.Module):
    """A transformers decoder whose layers the package calls one at a time: embed -> layer_0 .. layer_{L-1} -> norm.

    `DecoderBackbone(model)` wraps any transformers decoder (or a model that holds one, see `find_decoder`);
    the layer loop reproduces the model's own forward on `inputs_embeds` (tests check Llama, Qwen2, Mistral
    and the Gemma family)."""

    def __init__(self, model: nn.Module, register: bool = True, verify: bool = True):
        """`register=False` when the decoder already belongs to your model (a VLM's `language_model`): the
        backbone then drives it without holding it as a submodule, so its weights are stored once.

        `verify` runs the layer loop and the model's own forward on one small random input and refuses, in one
        sentence, a model whose forward does something the loop does not (skipped for meta-device and fake weights)."""
        super().__init__()
        decoder = find_decoder(model)
        if register:
            self.model = decoder
        else:
            object.__setattr__(self, "model", decoder)  # a reference, not a submodule
        self.config = self.model.config
        self._rotary_per_type = "layer_type" in inspect.signature(self.model.rotary_emb.forward).parameters
        candidates = self._candidate_layer_types()
        for types in candidates:
            unknown = sorted(set(types) - set(MASKS))
            if unknown:
                raise AdapterError(f"{type(self.model).__name__} has layer types {unknown}; supported: {sorted(MASKS)}.")
        self.layer_types = candidates[0]
        # activation checkpointing per decoder layer while training (TrainConfig.activation_checkpointing): a layer's
        # activations are recomputed in the backward pass instead of kept
        self.checkpointing = False
        if verify and not any(p.is_meta or is_fake(p) for p in self.model.parameters()):  # no values to compare
            self._choose_verified(candidates)

    def _candidate_layer_types(self) -> list[list[str]]:
        """Each layer's attention type, from the model itself; several candidates where the model leaves it open."""
        n = len(self.model.layers)
        types = getattr(self.config, "layer_types", None)
        if types is not None:
            return [list(types[:n])]
        windows = [getattr(getattr(layer, "self_attn", None), "sliding_window", _ABSENT) for layer in self.model.layers]
        if all(w is not _ABSENT for w in windows):  # the attention modules hold the window they use (None: full)
            return [["sliding_attention" if w else "full_attention" for w in windows]]
        if getattr(self.config, "sliding_window", None):
            # a window in the config that the layers may use (Mistral) or ignore (OLMo 2): the model's own
            # forward decides between the two (`_choose_verified`)
            return [["sliding_attention"] * n, ["full_attention"] * n]
        return [["full_attention"] * n]

    @torch.no_grad()
    def _choose_verified(self, candidates: list[list[str]]) -> None:
        """Keep the first candidate whose layer loop reproduces the model's own forward; refuse if none does."""
        p = next(self.model.parameters())
        window = getattr(self.config, "sliding_window", None) or 0
        length = min(window + 4, 256) if window else 8  # longer than the window, so a sliding mask differs from full
        g = torch.Generator().manual_seed(0)  # a private generator: wrapping must not move the global RNG
        h = torch.randn(1, length, self.config.hidden_size, generator=g).to(device=p.device, dtype=p.dtype)
        was_training = self.model.training
        self.model.eval()
        try:
            theirs = self.model(inputs_embeds=h, use_cache=False).last_hidden_state
            tol = 1e-4 if p.dtype == torch.float32 else 3e-2
            worst = float("inf")
            for types in candidates:
                self.layer_types = types
                ours = self.forward(h)
                worst = min(worst, float((ours - theirs).abs().max()))
                if torch.allclose(ours, theirs, atol=tol * (1 + float(theirs.abs().max())), rtol=tol):
                    return
        finally:
            self.model.train(was_training)
        raise AdapterError(f"Driving {type(self.model).__name__} layer by layer does not reproduce its own forward (max "
                           f"difference {worst:.3g} on a random input): its forward does something besides embed -> "
                           "layers -> norm that this adapter does not know; it cannot be routed as it is.")

    @classmethod
    def build(cls, family: str, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int,
              intermediate_size: int, max_positions: int, attn_implementation: str = "sdpa",
              sliding_window: int | None = None) -> DecoderBackbone:
        """A freshly initialised decoder of a transformers family, sized by the arguments."""
        if family not in FAMILIES:
            raise AdapterError(f"Unknown decoder family {family!r}; choose from {', '.join(FAMILIES)}.")
        kw = dict(vocab_size=1, bos_token_id=None, eos_token_id=None, pad_token_id=None,  # inputs are embeddings
                  hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                  num_key_value_heads=num_kv_heads, intermediate_size=intermediate_size,
                  head_dim=hidden_size // num_heads, max_position_embeddings=max(max_positions, 16), rms_norm_eps=1e-6,
                  attention_dropout=0.0, tie_word_embeddings=False)
        if family in ("gemma2", "gemma3", "mistral"):
            kw["sliding_window"] = sliding_window or 4096
        if family in ("gemma2", "gemma3"):
            kw["query_pre_attn_scalar"] = hidden_size // num_heads
        cfg = FAMILIES[family](**kw)
        try:
            model = AutoModel.from_config(cfg, attn_implementation=attn_implementation)
        except ValueError as err:
            raise AdapterError(f"The {family} decoder does not support attn_implementation={attn_implementation!r} in this "
                               "transformers version; use 'eager'.") from err
        return cls(model)

    @classmethod
    def llama(cls, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int, intermediate_size: int,
              max_positions: int, attn_implementation: str = "sdpa") -> DecoderBackbone:
        return cls.build("llama", hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, max_positions,
                         attn_implementation)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    @property
    def num_layers(self) -> int:
        return len(self.model.layers)

    def context(self, h: torch.Tensor) -> LayerContext:
        position_ids = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        shared = None if self._rotary_per_type else self.model.rotary_emb(h, position_ids=position_ids)
        masks, rope = {}, {}
        for t in sorted(set(self.layer_types)):
            fn, cache_kw = MASKS[t]
            masks[t] = fn(config=self.config, inputs_embeds=h, attention_mask=None, position_ids=position_ids,
                          **{cache_kw: None})
            rope[t] = self.model.rotary_emb(h, position_ids, t) if self._rotary_per_type else shared
        return LayerContext(rope, masks, position_ids)

    def layer(self, i: int, h: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self._layer, i, h, ctx, use_reentrant=False)
        return self._layer(i, h, ctx)

    def _layer(self, i: int, h: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        t = self.layer_types[i]
        out = self.model.layers[i](h, attention_mask=ctx.masks[t], position_embeddings=ctx.position_embeddings[t],
                                   position_ids=ctx.position_ids)
        return out[0] if isinstance(out, tuple) else out

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
