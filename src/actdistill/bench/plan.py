"""`actdistill plan`: per-device memory of a training stage under DDP and FSDP, from a dry run (docs/design.md
"Scale-out").

The stage's real training step (forward, backward, AdamW step) runs once on fake tensors
(`torch._subclasses.fake_tensor.FakeTensorMode`: shapes, dtypes and kernel choices of the real CPU run, no memory,
no arithmetic) while a dispatch mode adds up every tensor the step allocates and frees. That gives, at the given
per-device batch: the weights W, the gradients G, the optimizer state O, the peak of the forward and backward
passes P1 (activations, plus the gradients alive at that moment) and the peak of the optimizer step P2 (gradients,
state and AdamW's temporaries). Then, per device:

    DDP   W + max(O + P1, P2)
    FSDP  (W + G + O) / N + max(A, (P2 - G - O) / N) + U,    U = root unit + 2 x largest layer (gathered, compute
                                                               dtype) + one layer's unsharded gradient

where A is the peak of a second forward and backward in which every gradient is freed as soon as it is accumulated
(FSDP reduce-scatters each unit's gradient and keeps only its shard).

(the root unit's parameters stay gathered from forward to backward; the next layer is prefetched while one runs).
The frozen teacher of the probe stage is counted as weights without gradients or optimizer state. Not included:
the CUDA context and allocator fragmentation (a few hundred MiB to a few GiB on a GPU), kernel workspaces, and the
data loader. A transformers config plans its decoder (embeddings and layers) as the student's decoder, with the
package's router, probes and action head; a VLA's vision tower is not part of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from actdistill.bench.memory import LiveBytes, weight_bytes
from actdistill.config import ConfigError, ModelConfig, ProbeConfig
from actdistill.constants import ACTION, OBS_IMAGE, OBS_LANG, OBS_STATE

GIB = 1024.0 ** 3
STAGES = ("distill", "train-teacher", "probe")


@dataclasses.dataclass
class DryRun:
    weights: int  # bytes of parameters and buffers
    grads: int
    optimizer: int
    peak_backward: int  # peak of forward + backward (activations and the gradients alive then)
    peak_step: int  # peak of the optimizer step (gradients, state and temporaries)
    activations: int  # peak of forward + backward with every gradient freed once accumulated
    root_params: int  # parameters outside the decoder layers (one FSDP unit)
    largest_layer: int  # parameters of the largest decoder layer
    frozen: int  # bytes of frozen weights (a probed teacher)
    steady_peak: int = 0  # peak of a later step, optimizer state included (weights excluded)


def dry_run(build: Callable[[], tuple[nn.Module, Callable[[nn.Module], torch.Tensor], list[nn.Parameter]]],
            fake: bool = True) -> DryRun:
    """One training step of `build()` = (model, loss_fn(model) -> loss, trained parameters), on fake tensors (or, with
    fake=False, on real ones: the measurement the plan is checked against)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ctx = FakeTensorMode(allow_non_fake_inputs=False) if fake else contextlib.nullcontext()
    with ctx:
        model, loss_fn, params = build()
        trained = {id(p) for p in params}
        frozen = sum(p.untyped_storage().nbytes() for p in model.parameters() if id(p) not in trained)
        opt = torch.optim.AdamW(params, lr=1e-4)
        mode = LiveBytes()
        with mode:
            loss_fn(model).backward()
            p1 = mode.peak
            grads = sum(p.grad.untyped_storage().nbytes() for p in params if p.grad is not None)
            mode.peak = mode.live
            opt.step()
            p2 = mode.peak
        state = sum(v.untyped_storage().nbytes() for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
        # the forward and backward again, each gradient dropped as soon as it is accumulated (as FSDP reduce-scatters
        # and frees each unit's): the activations' own peak
        opt.zero_grad(set_to_none=True)
        hooks = [p.register_post_accumulate_grad_hook(_drop_grad) for p in params]
        mode = LiveBytes()
        with mode:
            loss_fn(model).backward()
        activations = mode.peak
        for h in hooks:
            h.remove()
        # a later step as the training loop takes it (the optimizer state alive throughout, gradients freed after the
        # step): its peak, with the state counted, is what a run reaches (the measurement the plan is checked against)
        mode = LiveBytes()
        with mode:
            loss_fn(model).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        steady = state + mode.peak
        units = _decoder_layers(model)
        layers = [sum(p.numel() * p.element_size() for p in layer.parameters() if id(p) in trained) for layer in units]
        in_layers = {id(p) for layer in units for p in layer.parameters()}
        root = sum(p.numel() * p.element_size() for p in params if id(p) not in in_layers)
    return DryRun(weight_bytes(model), grads, state, p1, p2, activations, root, max(layers, default=0), frozen, steady)


def _drop_grad(p: torch.Tensor) -> None:
    p.grad = None


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    from actdistill.sharding import shard_units

    return shard_units(model)


def plan_memory(run: DryRun, devices: int, mixed_precision: str = "no", fsdp_run: DryRun | None = None) -> dict[str, dict[str, float]]:
    """GiB per device of each part, and the total, for DDP and FSDP over `devices` processes.

    `fsdp_run`: the dry run whose activations FSDP has, when they differ from DDP's (bf16: DDP autocasts, keeping
    bf16 copies of the weights for the backward; FSDP gathers bf16 parameters and computes in them)."""
    n = devices
    unit_bytes = 0.5 if mixed_precision == "bf16" else 1.0  # gathered parameters in the compute dtype
    trained_w = run.weights - run.frozen
    total = run.weights + max(run.optimizer + run.peak_backward, run.peak_step)  # the state lives through later steps
    ddp = {"teacher (frozen)": run.frozen, "weights": trained_w, "gradients": run.grads, "optimizer": run.optimizer,
           "gathered units": 0, "activations and temporaries": total - run.weights - run.grads - run.optimizer}
    ddp["total"] = total
    gathered = unit_bytes * (run.root_params + 2 * run.largest_layer) + run.largest_layer
    fsdp = {"teacher (frozen)": run.frozen, "weights": trained_w / n, "gradients": run.grads / n, "optimizer": run.optimizer / n,
            "gathered units": gathered,
            "activations and temporaries": max((fsdp_run or run).activations, (run.peak_step - run.grads - run.optimizer) / n)}
    fsdp["total"] = sum(fsdp.values())
    return {k: {part: v / GIB for part, v in d.items()} for k, d in (("DDP", ddp), ("FSDP", fsdp))}


# --- what to dry-run --------------------------------------------------------------------------------------------

def vla_batch(cfg: ModelConfig, b: int) -> dict:
    return {OBS_IMAGE: torch.zeros(b, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8),
            OBS_STATE: torch.zeros(b, cfg.state_dim), OBS_LANG: torch.zeros(b, cfg.lang_dim),
            ACTION: torch.zeros(b, cfg.chunk_size, cfg.action_dim)}


def vla_stage(cfg: ModelConfig, stage: str, batch: int, probe: ProbeConfig | None = None,
              activation_checkpointing: bool = False, mixed_precision: str = "no", device_type: str = "cpu"):
    """The build function of a dry run of `stage` on the package's reference VLA of config `cfg` (`device_type`: where
    bf16 autocast applies when the step runs for real)."""
    from actdistill.distill.routing import RoutedStudent
    from actdistill.models.vla import ReferenceVLA
    from actdistill.probe.graph import LayerProbes
    from actdistill.sharding import set_activation_checkpointing

    probe = probe or ProbeConfig()

    def probes_for(teacher) -> LayerProbes:
        return LayerProbes(teacher.num_layers, teacher.hidden_size, teacher.chunk_size, probe.semantic_dim, probe.graph_dim,
                           probe.affinity_dim, probe.k, probe.heads, action_dim=cfg.action_dim)

    def build():
        data = vla_batch(cfg, batch)
        teacher = ReferenceVLA(cfg)
        if stage == "train-teacher":
            # the teacher's forward without its logging (`.item()` needs values)
            model, loss = teacher, (lambda m: _autocast(mixed_precision, lambda: m.task_loss(m.backbone(m.embed(data)), data), device_type))
            params = list(model.parameters())
        elif stage == "probe":
            teacher.requires_grad_(False)
            model = nn.ModuleDict({"teacher": teacher, "probes": probes_for(teacher)})

            def loss(m):
                with torch.no_grad():
                    _, hidden = m["teacher"].backbone(m["teacher"].embed(data), return_hidden=True)
                sem, act = _autocast(mixed_precision, lambda: m["probes"](hidden), device_type)
                return act.float().pow(2).mean() + sem.float().pow(2).mean()
            params = list(model["probes"].parameters())
        else:
            model = RoutedStudent(teacher, probes=probes_for(teacher))

            def loss(m):
                out = _autocast(mixed_precision, lambda: m.forward_train(data), device_type)
                return out["task_loss"] + out["semantic"].float().pow(2).mean() + out["probe_action"].float().pow(2).mean()
            params = list(model.parameters())
        set_activation_checkpointing(model, activation_checkpointing)
        model.train()
        return model, loss, params

    if mixed_precision == "bf16-params":  # every parameter and input made in bf16
        def build_bf16():
            old = torch.get_default_dtype()
            torch.set_default_dtype(torch.bfloat16)
            try:
                return build()
            finally:
                torch.set_default_dtype(old)
        return build_bf16
    return build


def _autocast(mixed_precision: str, fn, device_type: str = "cpu"):
    if mixed_precision != "bf16":  # "no", or "bf16-params" (the model itself in bf16, as FSDP computes)
        return fn()
    with torch.autocast(device_type, dtype=torch.bfloat16):
        return fn()


def model_config_from_transformers(path: Path, tokens: int) -> tuple[ModelConfig, int, str]:
    """A reference-VLA config whose decoder has the sizes of a transformers config (config.json), the token count
    `tokens` (vision tokens chosen to make it up), and the config's vocabulary size and decoder family."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"No transformers config at {file}.")
    try:
        hf = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file} is not valid JSON ({err}).") from err
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [k for k in need if k not in hf]
    if missing:
        raise ConfigError(f"{file} lacks {', '.join(missing)}; plan needs a decoder's sizes.")
    family = hf.get("model_type", "llama")
    if tokens < 4:
        raise ConfigError(f"--tokens must be at least 4 (image, language, state and query tokens), got {tokens}.")
    side = int((tokens - 3) ** 0.5)  # image tokens side^2; language tokens make up the rest; + state and query
    cfg = ModelConfig(image_size=16 * side, patch_size=16, num_lang_tokens=tokens - side * side - 2,
                      hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                      num_heads=hf["num_attention_heads"], num_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
                      intermediate_size=hf["intermediate_size"], decoder=family if family in ("llama", "qwen2", "mistral",
                                                                                              "gemma", "gemma2", "gemma3") else "llama")
    return cfg, int(hf.get("vocab_size", 0)), family


def add_token_embedding(run: DryRun, cfg: ModelConfig, vocab: int, trained: bool) -> DryRun:
    """The decoder's token embedding (vocab x hidden, fp32), which the reference VLA leaves out (it is fed
    embeddings): trained (weights, gradients alive through the step, AdamW state) or frozen (a probed teacher)."""
    vb = 4 * vocab * cfg.hidden_size
    if not trained:
        return dataclasses.replace(run, weights=run.weights + vb, frozen=run.frozen + vb)
    return dataclasses.replace(run, weights=run.weights + vb, grads=run.grads + vb, optimizer=run.optimizer + 2 * vb,
                               peak_backward=run.peak_backward + vb, peak_step=run.peak_step + 3 * vb,
                               activations=run.activations + vb,  # its gradient, before it is reduce-scattered
                               root_params=run.root_params + vb)


def plan_table(plans: dict[str, dict[str, float]], device_gib: float) -> str:
    """Markdown: GiB per device (MiB when every total is under 1 GiB), and whether each engine fits."""
    parts = list(plans["FSDP"])
    small = all(p["total"] < 1.0 for p in plans.values())
    unit, scale = ("MiB", 1024.0) if small else ("GiB", 1.0)
    lines = [f"| per device ({unit}) | " + " | ".join(plans) + " |", "|---" * (1 + len(plans)) + "|"]
    for part in parts:
        lines.append(f"| {part} | " + " | ".join(f"{p.get(part, 0.0) * scale:.2f}" for p in plans.values()) + " |")
    lines.append(f"| fits in {device_gib:g} GiB | " + " | ".join("yes" if p["total"] <= device_gib else "no"
                                                              for p in plans.values()) + " |")
    return "\n".join(lines) + "\n"
