"""Sharded training for the training loop: FSDP2 (`torch.distributed.fsdp.fully_shard`) per decoder layer, sharded
checkpoints (torch distributed checkpoint), and consolidation to whole weights (docs/design.md "Scale-out").

The loop keeps the caller's model whole on the host and trains a sharded copy on the device: every decoder layer of
every `DecoderBackbone` in the model is its own FSDP unit, the rest (embeddings, router, head, probes) belongs to
the root unit. Each process holds 1/N of every parameter, gradient and optimizer state between uses; a unit's
parameters are gathered for its forward and backward and resharded afterwards. The losses run inside the root
module's forward or on its outputs, so no parameter is read while sharded. Every decoder layer runs in the dense
training pass (a skipped layer is gated to an exact skip, not left out), so every unit takes part in every
collective and no rank waits for a layer the others did not run. Buffers are not sharded: each process keeps its
own, and the consolidated weights take the main process's (as DDP's buffer broadcast does).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from actdistill.artifacts import ArtifactError
from actdistill.models.backbone import DecoderBackbone


def backbones(model: nn.Module) -> list[DecoderBackbone]:
    return [m for m in model.modules() if isinstance(m, DecoderBackbone)]


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one: every decoder layer of every DecoderBackbone in `model`."""
    return [layer for bb in backbones(model) for layer in bb.layers]


def set_activation_checkpointing(model: nn.Module, on: bool) -> int:
    """Recompute decoder-layer activations in the backward pass (every DecoderBackbone in `model`); returns how
    many backbones were switched."""
    found = backbones(model)
    for bb in found:
        bb.checkpointing = on
    return len(found)


def shard_model(model: nn.Module, device: torch.device, mixed_precision: str) -> nn.Module:
    """A sharded copy of `model` on `device` (the caller's model is left whole and untouched)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    work = copy.deepcopy(model).to(device)
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision == "bf16"
              else MixedPrecisionPolicy())
    for unit in shard_units(work):
        fully_shard(unit, mp_policy=policy)
    fully_shard(work, mp_policy=policy)
    return work


def grad_norm_value(norm) -> float:
    """The total gradient norm as a float (a DTensor's is first gathered)."""
    full = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return float(full)


def save_sharded(folder: Path, model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Every process writes its shards of weights and optimizer state into `folder` (a collective call)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(folder))


def load_sharded(folder: Path, model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Restore weights and optimizer state written by `save_sharded` (a collective call)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader

    msd, osd = get_state_dict(model, opt)
    saved = set(FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    missing = [k for k in msd if f"model.{k}" not in saved]
    if missing:
        raise ArtifactError(f"The sharded checkpoint in {folder} lacks weights of this model ({missing[0]} and "
                                 f"{len(missing) - 1} more); delete it or resume with the model that wrote it.")
    state = {"model": msd, "optim": osd}
    # partial: a parameter that never had a gradient (a decoder's unused token embedding) has no optimizer state
    # in the checkpoint, and keeps none here (AdamW skips a parameter without a gradient)
    dcp.load(state, checkpoint_id=str(folder), planner=DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def consolidate(work: nn.Module, target: nn.Module, is_main: bool) -> None:
    """Gather the sharded weights into `target` (the whole model on the host) on the main process (a collective
    call; the other processes' `target` keeps its weights, as only the main process writes outputs)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(work, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if is_main:
        missing, unexpected = target.load_state_dict(full, strict=False)
        buffers = {n for n, _ in target.named_buffers()}
        if unexpected or set(missing) - buffers:
            raise RuntimeError(f"consolidation left {sorted(missing)[:3]} missing and {sorted(unexpected)[:3]} unexpected")
        with torch.no_grad():  # buffers are not in FSDP's state dict of parameters: the main process's own
            own = dict(work.named_buffers())
            for n, b in target.named_buffers():
                if n in own:
                    b.copy_(own[n].to(b.device))
