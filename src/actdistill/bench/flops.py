"""Exact FLOP counts with `torch.utils.flop_counter.FlopCounterMode`.

On CPU the default attention kernel `aten._scaled_dot_product_flash_attention_for_cpu` has no
formula in the counter and would count zero; we map it (and its backward) to torch's own `sdpa_flop`
(`sdpa_backward_flop`), the formulas the counter uses for the CUDA kernels, so attention is counted. Like the counter, we
count matrix products (linear, conv, attention), not element-wise ops.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop



def _sdpa_cpu_flop(*args, **kwargs) -> int:
    return sdpa_flop(*args, **kwargs)  # torch's `sdpa_flop` already converts tensors to shapes


def _sdpa_cpu_backward_flop(*args, **kwargs) -> int:
    return sdpa_backward_flop(*args, **kwargs)  # (grad_out, query, key, value, ...) as for the CUDA kernels


_sdpa_cpu_flop._get_raw = True  # type: ignore[attr-defined]  # tell the counter not to wrap it a second time
_sdpa_cpu_backward_flop._get_raw = True  # type: ignore[attr-defined]
_CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
           torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flop}


def count_flops(fn, *args, decoder_layers=(), **kwargs) -> tuple[int, int]:
    """FLOPs of `fn(*args, **kwargs)`: (total, those spent inside the given decoder layer modules)."""
    mode = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
    inside = [0]
    start: list[int] = []
    hooks = []
    for layer in decoder_layers:
        hooks.append(layer.register_forward_pre_hook(lambda m, a: start.append(mode.get_total_flops())))
        hooks.append(layer.register_forward_hook(
            lambda m, a, o: inside.__setitem__(0, inside[0] + mode.get_total_flops() - start.pop())))
    try:
        with mode, torch.no_grad():
            fn(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return mode.get_total_flops(), inside[0]


def train_step_flops(model, loss_fn, batch: dict) -> int:
    """FLOPs of one training step on `batch`: the forward pass of `loss_fn(model, batch)` and its backward."""
    mode = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
    was_training = model.training
    model.train()
    try:
        with mode:
            loss = loss_fn(model, batch)
            loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return mode.get_total_flops()


def policy_flops(policy, batch: dict) -> dict[str, float]:
    """Decoder and whole-policy FLOPs of one action query (`predict`) of a teacher or routed student."""
    backbone = policy.vla.backbone if hasattr(policy, "vla") else policy.backbone
    total, decoder = count_flops(policy.predict, batch, decoder_layers=list(backbone.layers))
    return {"policy_flops": float(total), "decoder_flops": float(decoder)}


def llama_layer_flops(batch: int, seq: int, hidden: int, heads: int, kv_heads: int, intermediate: int) -> int:
    """Analytic matmul FLOPs of one Llama decoder layer (bias-free projections, SiLU-gated MLP, full attention)."""
    head_dim = hidden // heads
    proj = 2 * batch * seq * hidden * (heads * head_dim + 2 * kv_heads * head_dim) + 2 * batch * seq * heads * head_dim * hidden
    attn = 4 * batch * heads * seq * seq * head_dim
    mlp = 3 * 2 * batch * seq * hidden * intermediate
    return proj + attn + mlp
