"""`actdistill train-teacher`: the reference VLA trained by behaviour cloning (docs/design.md pipeline stage 2)."""

from __future__ import annotations

from pathlib import Path

import torch

from actdistill.artifacts import (ArtifactError, atomic_save_tensors, atomic_write_json, hash_tensors, load_checked_weights,
                                  make_header, read_header, read_json, write_header)
from actdistill.config import ConfigError, TeacherConfig
from actdistill.constants import CONFIG_FILE, WEIGHTS_FILE
from actdistill.data.dataset import FrameDataset
from actdistill.data.hdf5 import read_demos
from actdistill.models.heads import check_head_family
from actdistill.models.language import reword_batch, rewording_table
from actdistill.models.vla import ReferenceVLA
from actdistill.training import distributed_summary, main_process_writes, step_generator, train_loop


def train_teacher(cfg: TeacherConfig, dataset_path: Path, out_dir: Path, progress: bool = True,
                  stop_after: int | None = None) -> dict:
    out_dir = Path(out_dir)
    demos = read_demos(dataset_path)
    size = demos.env_args.get("image_size", demos.demos[0].images.shape[1])
    if size != cfg.model.image_size:
        raise ConfigError(f"The dataset has {size}x{size} images but teacher.model.image_size is "
                          f"{cfg.model.image_size}; set it to {size}.")
    s_dim, a_dim = demos.demos[0].states.shape[1], demos.demos[0].actions.shape[1]
    if (s_dim, a_dim) != (cfg.model.state_dim, cfg.model.action_dim):
        raise ConfigError(f"The dataset has {s_dim}-dimensional states and {a_dim}-dimensional actions but the model "
                          f"expects {cfg.model.state_dim} and {cfg.model.action_dim}; set teacher.model.state_dim={s_dim} "
                          f"and teacher.model.action_dim={a_dim}.")
    tasks = tuple(demos.env_args.get("tasks") or demos.tasks)
    data = FrameDataset(demos, cfg.model.chunk_size, tasks)
    torch.manual_seed(cfg.train.seed)
    model = ReferenceVLA(cfg.model)
    mean, std = data.state_stats()
    model.state_mean.copy_(mean)
    model.state_std.copy_(std)
    identity = {"model": cfg.model.to_dict(), "dataset": data.fingerprint}
    loss_fn = None
    if cfg.instruction_reword > 0:
        identity["instruction_reword"] = cfg.instruction_reword
        loss_fn = reworded_loss(rewording_table(data.task_names, "teacher.instruction_reword"), cfg.instruction_reword,
                                cfg.train.seed)
    result = train_loop(model=model, dataset=data, cfg=cfg.train, out_dir=out_dir, stage="train-teacher",
                        identity=identity, progress=progress, stop_after=stop_after, loss_fn=loss_fn)
    if result.steps < cfg.train.steps:
        return {"stopped_at": result.steps}
    return main_process_writes(out_dir, lambda: _write_teacher(model, cfg, data, tasks, result, out_dir))


def reworded_loss(table: torch.Tensor, p: float, seed: int):
    """The teacher's loss on batches whose instructions are reworded with probability p (from `table`, the
    (tasks, K, D) rewording embeddings); the draw is a function of seed and step, so a resumed run draws the same."""
    def loss_fn(model, batch, step):
        gen = step_generator(seed * 15_485_863 + step)
        return model(reword_batch(batch, table, p, gen))
    return loss_fn


def _write_teacher(model, cfg: TeacherConfig, data, tasks, result, out_dir: Path) -> dict:
    weights = model.state_dict()
    atomic_save_tensors(out_dir / WEIGHTS_FILE, weights)
    atomic_write_json(out_dir / CONFIG_FILE, {**cfg.to_dict(), "tasks": list(tasks)})
    n_params = sum(p.numel() for p in model.parameters())
    summary = {"weights": str(out_dir / WEIGHTS_FILE), "parameters": n_params, "steps": result.steps,
               "final_loss": round(result.final_loss, 5), "seconds": round(result.seconds, 1),
               "resumed_from": result.resumed_from, "frames": len(data),
               "passes": round(result.steps * cfg.train.batch_size * result.processes / len(data), 2),
               **distributed_summary(result)}
    write_header(out_dir, make_header("train-teacher", cfg.to_dict(), inputs={"dataset": data.fingerprint},
                                      weights_hash=hash_tensors(weights), tasks=list(tasks), summary=summary))
    return summary


def load_teacher(folder: Path) -> tuple[ReferenceVLA, dict]:
    """Load a trained teacher; refuses a folder that holds another stage or mismatched weights."""
    folder = Path(folder)
    header = read_header(folder, "train-teacher")
    cfg_json = read_json(folder / CONFIG_FILE, "the teacher config")
    tasks = cfg_json.pop("tasks", None)
    cfg = TeacherConfig.from_saved(cfg_json)
    model = ReferenceVLA(cfg.model)
    weights = load_checked_weights(folder, header, "teacher weights", "train it again")
    check_head_family(weights, cfg.model.action_head, folder / WEIGHTS_FILE)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{folder / WEIGHTS_FILE} is a checkpoint of another model ({len(missing)} missing, "
                            f"{len(unexpected)} unexpected tensors); point to a teacher trained by actdistill.")
    model.eval()
    return model, {"header": header, "tasks": tasks, "config": cfg}
