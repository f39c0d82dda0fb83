"""One training loop for every stage (teacher, probe, distill, baselines), through Hugging Face Accelerate.

The loop is resumable and deterministic: the data order of step s is a pure
function of (seed, s) (a seeded permutation per epoch), so resuming from a
checkpoint at step s replays exactly the same batches as an uninterrupted
run. Weights, optimizer, scheduler and RNG state are restored from the checkpoint.

Checkpoints are complete or absent: each is written into its own folder
`ckpt/step-NNNNNNN/` (every file atomically), and only then does `ckpt/latest.json`
(itself replaced atomically) point to it; the previous checkpoint is deleted after
that. A kill at any moment leaves `latest.json` naming a whole checkpoint.

`train_loop` is longer than the package's 80-line rule on purpose: the order in which it seeds, resumes, draws
each step's batch and augmentation, steps, checks for non-finite values and checkpoints is what makes a resumed
run bitwise the uninterrupted one, and it reads best as one sequence.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from actdistill.artifacts import ArtifactError, atomic_save_tensors, atomic_write_json, hash_json, load_tensors, read_json
from actdistill.config import ConfigError, TrainConfig
from actdistill.constants import OBS_IMAGE, TRAIN_META_FILE, TRAIN_STATE_FILE, WEIGHTS_FILE
from actdistill.globalbatch import global_batch
from actdistill.sharding import (consolidate, grad_norm_value, load_sharded, save_sharded, set_activation_checkpointing,
                                 shard_model)


LATEST_FILE = "latest.json"
EMA_FILE = "ema.safetensors"  # in a checkpoint folder: the weight average (train.ema_decay > 0)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite."""


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_loss: float
    resumed_from: int
    history: list[dict]
    processes: int = 1
    rank_weight_hashes: list[str] | None = None  # one per process when several trained together (all equal)


def distributed_state():
    """Accelerate's process state (one process, or the ranks `torchrun` / `accelerate launch` started)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (loss functions read its attributes; the forward goes through the wrapper)."""
    return getattr(model, "module", model)


def distributed_summary(result: TrainResult) -> dict:
    """Summary fields of a multi-process training (none for a single process, so its outputs stay as they were)."""
    if result.processes == 1:
        return {}
    return {"processes": result.processes, "rank_weight_hashes": result.rank_weight_hashes}


def main_process_writes(out_dir: Path, write: Callable[[], dict]) -> dict:
    """Run `write` (the stage's outputs) on the main process only; the other ranks wait and read its summary."""
    from actdistill.constants import HEADER_FILE

    state = distributed_state()
    summary = write() if state.is_main_process else None
    state.wait_for_everyone()
    return summary if summary is not None else read_json(Path(out_dir) / HEADER_FILE, "the header the main process wrote")["summary"]


def check_engine(distributed_type, stage: str, sharding: str = "none", processes: int = 1) -> bool:
    """Whether this training is sharded (FSDP), refusing, before any work is done, what the loop cannot run.

    FSDP comes from `TrainConfig.sharding="fsdp"` or from `accelerate launch --use_fsdp`; it needs 2+ processes.
    DeepSpeed is refused: the loop's sharded path is FSDP2 (sharding.py), whose checkpoints and consolidation it
    writes itself."""
    from accelerate.utils import DistributedType

    if distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError(
            f"{stage}: DeepSpeed is not supported (the loop shards with FSDP2 and checkpoints itself); set "
            "train.sharding=fsdp, or use `accelerate launch --use_fsdp`, instead.")
    sharded = sharding == "fsdp" or distributed_type == DistributedType.FSDP
    if sharded and processes < 2:
        raise ConfigError(f"{stage}: FSDP sharding needs 2 or more processes (torchrun --nproc-per-node N, or accelerate "
                          "launch --num_processes N); one process trains whole (train.sharding=none).")
    return sharded


def batch_indices(n: int, step: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """The frame indices of `step` for `rank`: a seeded permutation per epoch, read in order."""
    global_bs = batch_size * world
    per_epoch = max(n // global_bs, 1)
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    start = pos * global_bs + rank * batch_size
    return perm[start:start + batch_size] if n >= global_bs else perm[torch.arange(batch_size) % n]


def step_generator(base: int) -> torch.Generator:
    """The generator of one training step's random draws inside a loss (instruction rewording, router views):
    `base` is a pure function of the seed and the step, so a resumed run draws the same; each process adds its
    index times an odd 32-bit constant (the CPU generator keeps the low 32 bits of a seed), so processes under DDP
    draw independently while a single process draws exactly `base`."""
    return torch.Generator().manual_seed(base + distributed_state().process_index * 0x9E3779B1)


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ-style random shift of (B, H, W, 3) uint8 images by up to `pad` pixels (edge padding)."""
    if pad <= 0:
        return images
    b, h, w, _ = images.shape
    x = images.permute(0, 3, 1, 2).float()
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    out = torch.stack([x[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    return out.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def cosine_lr(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"{pid}.{k}": v for pid, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    scalars = {f"{pid}.{k}": v for pid, st in sd["state"].items() for k, v in st.items() if not torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def train_loop(
    *,
    model: nn.Module,
    dataset,
    cfg: TrainConfig,
    out_dir: Path,
    stage: str,
    loss_fn: Callable[[nn.Module, dict, int], tuple[torch.Tensor, dict]] | None = None,
    params: list[nn.Parameter] | None = None,
    extra_groups: list[tuple[list[nn.Parameter], float]] | None = None,
    identity: dict | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train `params` (default: all of `model`) for `cfg.steps` steps, resuming from `out_dir/ckpt` if present.

    `loss_fn(model, batch, step) -> (loss, logs)` defaults to `model(batch)`.
    `extra_groups` are (parameters, learning-rate multiplier) pairs trained beside `params`.
    `identity` (JSON-able) is stored with each checkpoint; a checkpoint of another run is refused.
    `stop_after` ends the loop early at that step (after checkpointing), to test kill-and-resume.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "ckpt"
    # Unused parameters are normal here (a wrapped decoder's token embedding when embeddings are fed in, a
    # user's VLA parts that the loss does not reach); DDP must not wait for their gradients.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision="bf16" if cfg.mixed_precision == "bf16" else "no",
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    sharded = check_engine(accelerator.distributed_type, stage, cfg.sharding, accelerator.num_processes)
    if sharded and cfg.ema_decay:
        raise ConfigError(f"{stage}: train.ema_decay cannot be combined with FSDP sharding (the average would need "
                          "sharding too); set train.ema_decay=0.")
    set_seed(cfg.seed)
    loss_fn = loss_fn or (lambda m, b, s: m(b))
    set_activation_checkpointing(model, cfg.activation_checkpointing)
    # optimizer groups by parameter name, so that they can be resolved in a sharded copy of the model as well
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [([names[id(p)] for p in (params if params is not None else model.parameters()) if p.requires_grad], 1.0)]
    groups += [([names[id(p)] for p in ps if p.requires_grad], scale) for ps, scale in (extra_groups or [])]
    whole = model
    if sharded:
        model = shard_model(model, accelerator.device, cfg.mixed_precision)
    by_name = dict(model.named_parameters())
    opt_groups = []
    for group_names, lr_scale in groups:
        ps = [by_name[n] for n in group_names]
        opt_groups += [{"params": [p for p in ps if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr": cfg.lr * lr_scale},
                       {"params": [p for p in ps if p.ndim < 2], "weight_decay": 0.0, "lr": cfg.lr * lr_scale}]
    params = [p for g in opt_groups for p in g["params"]]
    opt = torch.optim.AdamW(opt_groups, lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, cfg.steps, cfg.warmup_steps))
    identity_hash = hash_json({"stage": stage, "train": cfg.to_dict(), **(identity or {})})
    layout = {"sharded": sharded, "processes": accelerator.num_processes} if sharded else {}

    ema = weight_average(model, cfg.ema_decay)
    start = clipped = 0  # clipped: steps whose gradient norm exceeded cfg.grad_clip (logged as clipped_steps)
    if (ckpt_dir / LATEST_FILE).is_file():
        start, clipped = _load_checkpoint(ckpt_dir, stage, identity_hash, model, opt, sched, layout,
                                          accelerator.process_index, ema)
    raw = model  # the module itself (prepare may wrap it; the parameters stay these)

    if not sharded:
        model, opt = accelerator.prepare(model, opt)
    model.train()
    history: list[dict] = []
    t0 = time.time()
    last_loss = float("nan")
    logged = 0
    n = len(dataset)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = tqdm(range(start, end), desc=stage, initial=start, total=cfg.steps,
               disable=not (progress and accelerator.is_main_process), dynamic_ncols=True)
    for step in bar:
        idx = batch_indices(n, step, cfg.batch_size, cfg.seed, accelerator.process_index, accelerator.num_processes)
        batch = dataset.batch(idx)
        gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step * 31 + accelerator.process_index)
        batch[OBS_IMAGE] = random_shift(batch[OBS_IMAGE], cfg.shift_augment, gen)
        batch = {k: (v.to(accelerator.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        with global_batch(accelerator.num_processes > 1):  # batch statistics over every process's rows
            loss, logs = loss_fn(model, batch, step)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"{stage}: the loss became {loss.item()} at step {step}; the last good checkpoint in {ckpt_dir} is kept "
                "(lower the learning rate and resume).")
        accelerator.backward(loss)  # no gradient is alive here: they are freed right after each optimizer step
        if sharded:  # DTensor gradients: the norm is reduced over the shards
            grad_norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        else:
            grad_norm = float(accelerator.clip_grad_norm_(params, cfg.grad_clip))
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(
                f"{stage}: the gradient norm became {grad_norm} at step {step} (finite loss {loss.item():.4g}); the last good "
                f"checkpoint in {ckpt_dir} is kept (lower the learning rate and resume).")
        clipped += grad_norm > cfg.grad_clip  # clip_grad_norm_ rescaled this step's gradient to cfg.grad_clip
        opt.step()
        opt.zero_grad(set_to_none=True)  # gradients freed now, not kept through the next forward
        sched.step()
        if ema is not None:
            ema.update_parameters(raw)
        last_loss = loss.item()
        if step % 50 == 0 or step == cfg.steps - 1:
            rec = {"step": step, "lr": sched.get_last_lr()[0], "grad_norm": grad_norm, "clipped_steps": clipped, **logs}
            history.append(rec)
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if isinstance(v, float)})
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == end:
            if sharded:  # every process writes its shards; the main process then points latest.json at them
                _save_sharded_checkpoint(ckpt_dir, done, identity_hash, model, opt, sched, layout, accelerator, clipped)
            elif accelerator.is_main_process:
                _save_checkpoint(ckpt_dir, done, identity_hash, accelerator.unwrap_model(model), opt, sched, ema, clipped)
            if accelerator.is_main_process:
                _append_log(out_dir, history[logged:])  # the log holds exactly the steps the checkpoint has done
                logged = len(history)
        accelerator.wait_for_everyone()
    bar.close()
    if sharded:
        consolidate(model, whole, accelerator.is_main_process)
        model = whole
    else:
        model = accelerator.unwrap_model(model)
    if ema is not None and end == cfg.steps:  # the written weights are the average; the last checkpoint keeps the raw
        model.load_state_dict(ema.module.state_dict())
    model.eval()
    hashes = None
    if accelerator.num_processes > 1 and not sharded:  # data-parallel ranks must end with the same weights
        from accelerate.utils import gather_object

        from actdistill.artifacts import hash_tensors

        hashes = gather_object([hash_tensors(model.state_dict())])
        if len(set(hashes)) > 1:
            raise TrainingDiverged(f"{stage}: the {accelerator.num_processes} processes ended with different weights "
                                   f"(hashes {', '.join(h[:8] for h in hashes)}); nothing was written.")
    return TrainResult(steps=end, seconds=time.time() - t0, final_loss=last_loss, resumed_from=start, history=history,
                       processes=accelerator.num_processes, rank_weight_hashes=hashes)


def _append_log(out_dir: Path, records: list[dict]) -> None:
    if records:
        with open(out_dir / "train_log.jsonl", "a") as f:
            f.writelines(json.dumps(rec) + "\n" for rec in records)


def weight_average(model: nn.Module, decay: float):
    """An exponential moving average of `model`'s parameters and buffers (torch.optim.swa_utils), or None when
    `decay` is 0. Updated after every optimizer step; it never feeds back into the training."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _save_checkpoint(ckpt_dir: Path, step: int, identity: str, model: nn.Module, opt: torch.optim.Optimizer,
                     sched, ema=None, clipped: int = 0) -> None:
    folder = ckpt_dir / f"step-{step:07d}"
    if folder.exists():  # left by a run killed between writing it and pointing latest.json to it
        shutil.rmtree(folder)
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    opt_tensors["rng.torch"] = torch.get_rng_state()
    atomic_save_tensors(folder / WEIGHTS_FILE, model.state_dict())
    atomic_save_tensors(folder / TRAIN_STATE_FILE, opt_tensors)
    if ema is not None:
        atomic_save_tensors(folder / EMA_FILE, ema.state_dict())
    atomic_write_json(folder / TRAIN_META_FILE, {"step": step, "identity": identity, "optimizer": opt_meta,
                                                 "scheduler": sched.state_dict(), "clipped_steps": int(clipped)})
    atomic_write_json(ckpt_dir / LATEST_FILE, {"step": step, "folder": folder.name, "identity": identity})
    for old in ckpt_dir.glob("step-*"):
        if old.is_dir() and old.name != folder.name:
            shutil.rmtree(old)


def _save_sharded_checkpoint(ckpt_dir: Path, step: int, identity: str, model: nn.Module, opt: torch.optim.Optimizer,
                             sched, layout: dict, accelerator, clipped: int = 0) -> None:
    """Sharded weights and optimizer state (torch distributed checkpoint) plus each process's RNG state, all in a
    fresh folder; only when every process has written does the main process write latest.json."""
    folder = ckpt_dir / f"step-{step:07d}"
    if accelerator.is_main_process and folder.exists():
        shutil.rmtree(folder)
    accelerator.wait_for_everyone()
    save_sharded(folder, model, opt)
    atomic_save_tensors(folder / f"rng-{accelerator.process_index}.safetensors", {"rng.torch": torch.get_rng_state()})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(folder / TRAIN_META_FILE, {"step": step, "identity": identity, "scheduler": sched.state_dict(),
                                                     "clipped_steps": int(clipped), **layout})
        atomic_write_json(ckpt_dir / LATEST_FILE, {"step": step, "folder": folder.name, "identity": identity})
        for old in ckpt_dir.glob("step-*"):
            if old.is_dir() and old.name != folder.name:
                shutil.rmtree(old)


def _load_checkpoint(ckpt_dir: Path, stage: str, identity: str, model: nn.Module, opt: torch.optim.Optimizer,
                     sched, layout: dict | None = None, rank: int = 0, ema=None) -> tuple[int, int]:
    """Restore the checkpoint `latest.json` names; returns its step and its count of clipped steps (0 for a
    checkpoint written before that count was kept). `layout`: the sharded launch of this run ({} when not
    sharded); a checkpoint of another layout is refused."""
    latest = read_json(ckpt_dir / LATEST_FILE, f"the {stage} checkpoint pointer")
    if latest.get("identity") != identity:
        raise ArtifactError(
            f"The checkpoint in {ckpt_dir} belongs to a different {stage} run (other config or inputs); "
            "delete that folder or choose another output folder.")
    folder = ckpt_dir / str(latest.get("folder"))
    meta = read_json(folder / TRAIN_META_FILE, f"the {stage} checkpoint state")
    if meta.get("step") != latest.get("step") or meta.get("identity") != identity:
        raise ArtifactError(f"The {stage} checkpoint in {folder} does not match {ckpt_dir / LATEST_FILE}; delete {ckpt_dir} and rerun.")
    was = {k: meta[k] for k in ("sharded", "processes") if k in meta}
    if was != (layout or {}):
        def say(d: dict) -> str:
            return f"sharded over {d['processes']} processes" if d else "unsharded"
        raise ArtifactError(f"The {stage} checkpoint in {folder} was written {say(was)} and this run is {say(layout or {})}; "
                            "resume it with the same launch, or delete the checkpoint folder.")
    if layout:
        load_sharded(folder, model, opt)
        sched.load_state_dict(meta["scheduler"])
        rng = load_tensors(folder / f"rng-{rank}.safetensors", f"the {stage} checkpoint RNG state")["rng.torch"]
        torch.set_rng_state(rng)
        return int(meta["step"]), int(meta.get("clipped_steps", 0))
    try:
        model.load_state_dict(load_tensors(folder / WEIGHTS_FILE, f"the {stage} checkpoint weights"), strict=True)
    except RuntimeError as err:
        raise ArtifactError(f"The {stage} checkpoint weights in {folder} do not fit this model; delete {ckpt_dir} and rerun.") from err
    if ema is not None:
        try:
            ema.load_state_dict(load_tensors(folder / EMA_FILE, f"the {stage} checkpoint's weight average"))
        except RuntimeError as err:
            raise ArtifactError(f"The {stage} weight average in {folder} does not fit this model; delete {ckpt_dir} and "
                                "rerun.") from err
    state = load_tensors(folder / TRAIN_STATE_FILE, f"the {stage} optimizer state")
    rng = state.pop("rng.torch", None)
    opt.load_state_dict(_unflatten_optimizer(state, meta["optimizer"]))
    sched.load_state_dict(meta["scheduler"])
    if rng is not None:
        torch.set_rng_state(rng)
    return int(meta["step"]), int(meta.get("clipped_steps", 0))
