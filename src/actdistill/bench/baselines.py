"""The simpler ways to spend the same compute, beside which the ActDistill student is measured.

- static pruning (EfficientVLA style): drop, for every input, the layers whose output changes their input
  least (cosine similarity over training frames), then fine-tune with the task loss;
- the same static pruning trained with ActDistill's own losses (per-layer semantic and action streams): what
  the losses give without routing;
- router without graph supervision (MoLe-VLA style): the same router, gating, budget and calibration,
  trained with the task loss and distillation from the teacher's final action only;
- early exit (DeeR-VLA style): a deployable policy of its own, in `actdistill.early_exit`;
- a smaller model from scratch: the student's mean depth, trained on the task loss.
Each is a policy with `predict`, `select_action`, `reset` (and `pop_layer_mask`), so the same evaluator,
FLOP counter and latency meter measure all of them.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from actdistill.config import DistillConfig, ExportConfig, SimConfig
from actdistill.distill.similarity import layer_input_similarity  # noqa: F401 - part of this module's API
from actdistill.distill.routing import RoutedStudent
from actdistill.distill.stage import final_action_loss, hybrid_layers, routing_options
from actdistill.export import calibrate_and_settle, save_student
from actdistill.models.vla import ReferenceVLA
from actdistill.training import train_loop


STATIC_ROUTER_DIM = 8  # the static student's router is fixed (zero weights, +-20 biases): its width is immaterial


def static_prune_student(teacher: ReferenceVLA, keep: int, similarity: torch.Tensor, probes=None) -> RoutedStudent:
    """A student that runs the same `keep` layers for every input: the least input-preserving ones. `probes`: copies
    of the teacher's extractors and probes to attach, for training with the distillation losses."""
    if not 1 <= keep <= teacher.num_layers:
        raise ValueError(f"keep must be in [1, {teacher.num_layers}], got {keep}.")
    keep_set = set(torch.argsort(similarity)[:keep].tolist())  # lowest similarity = the layer changes most
    student = RoutedStudent.from_teacher(teacher, probes, router_dim=STATIC_ROUTER_DIM)
    with torch.no_grad():
        student.router.gate.weight.zero_()
        student.router.gate.bias.copy_(torch.tensor([20.0 if l in keep_set else -20.0 for l in range(teacher.num_layers)]))
    for p in student.router.parameters():
        p.requires_grad_(False)
    return student


def task_loss(model: RoutedStudent, batch: dict) -> tuple[torch.Tensor, dict]:
    loss = model(batch)["task_loss"]  # through the DDP wrapper when several processes train
    return loss, {"loss": loss.item()}


def train_router_kd(teacher: ReferenceVLA, teacher_hash: str, data, dcfg: DistillConfig, export_cfg: ExportConfig,
                    sim: SimConfig, seeds: dict[str, list[int]], folder: Path, key: dict, progress: bool = True) -> dict:
    """The router-KD baseline, trained, calibrated (and settled) like the ActDistill student, saved as a routed student.

    Same router, gating, always-run layers and budget as ActDistill; the loss is the task loss plus distillation
    from the teacher's final action only."""
    t0 = time.time()
    always = hybrid_layers(teacher, data, dcfg.always_run, dcfg.rho)
    torch.manual_seed(dcfg.train.seed)
    student = RoutedStudent.from_teacher(teacher, None, router_dim=dcfg.router_dim, tau=dcfg.tau,
                                         init_bias=dcfg.router_init_bias, **routing_options(dcfg, always))
    rest = [p for n, p in student.named_parameters() if not n.startswith("router.")]
    train_loop(model=student, dataset=data, cfg=dcfg.train, out_dir=folder, stage="router-kd",
               loss_fn=lambda m, b, s: final_action_loss(m, teacher, b, dcfg),
               params=rest, extra_groups=[(list(student.router.parameters()), dcfg.router_lr_scale)],
               identity={"key": key, "teacher": teacher_hash}, progress=progress)
    student.finish_training().eval()
    # the same calibration and settling as the ActDistill student, with this baseline's own loss
    history, extra = calibrate_and_settle(
        student, dcfg.rho, export_cfg, sim, seeds, lambda m, b, s: final_action_loss(m, teacher, b, dcfg), data,
        dcfg.train, folder, {"key": key, "teacher": teacher_hash}, progress) if export_cfg.calibrate else ([], {})
    return {**save_student(student, folder, teacher.config.to_dict(), dcfg.router_dim, dcfg.rho, list(data.task_names), key,
                           {"teacher": teacher_hash}, {"calibration": history, **extra}),
            "seconds": round(time.time() - t0, 1)}
