"""The simpler ways to spend the same compute, beside which the ActDistill student is measured.

- static pruning (EfficientVLA style): drop, for every input, the layers whose output changes their input
  least (cosine similarity over training frames), then fine-tune with the task loss;
- router without graph supervision (MoLe-VLA style): the same router, gating, budget and calibration,
  trained with the task loss and distillation from the teacher's final action only;
- early exit (DeeR-VLA style): a deployable policy of its own, in `actdistill.early_exit`;
- a smaller model from scratch: the student's mean depth, trained on the task loss.
Each is a policy with `predict`, `select_action`, `reset` (and `pop_layer_mask`), so the same evaluator,
FLOP counter and latency meter measure all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from actdistill.constants import ACTION, ACTION_PAD
from actdistill.config import DistillConfig
from actdistill.distill.losses import gate_losses
from actdistill.distill.routing import RoutedStudent
from actdistill.models.vla import ReferenceVLA, action_loss
from actdistill.training import unwrap


@torch.no_grad()
def layer_input_similarity(teacher: ReferenceVLA, data, count: int = 1024, batch_size: int = 128) -> torch.Tensor:
    """(L,) mean cosine similarity between each decoder layer's input and output tokens over training frames."""
    idx = torch.linspace(0, len(data) - 1, min(count, len(data))).long()
    sims = torch.zeros(teacher.num_layers)
    bb = teacher.backbone
    for chunk in idx.split(batch_size):
        h = teacher.embed(data.batch(chunk))
        ctx = bb.context(h)
        for l in range(teacher.num_layers):
            out = bb.layer(l, h, ctx)
            sims[l] += F.cosine_similarity(out, h, dim=-1).mean(1).sum()
            h = out
    return sims / len(idx)


def static_prune_student(teacher: ReferenceVLA, keep: int, similarity: torch.Tensor) -> RoutedStudent:
    """A student that runs the same `keep` layers for every input: the least input-preserving ones."""
    if not 1 <= keep <= teacher.num_layers:
        raise ValueError(f"keep must be in [1, {teacher.num_layers}], got {keep}.")
    keep_set = set(torch.argsort(similarity)[:keep].tolist())  # lowest similarity = the layer changes most
    student = RoutedStudent.from_teacher(teacher, None, router_dim=8)
    with torch.no_grad():
        student.router.gate.weight.zero_()
        student.router.gate.bias.copy_(torch.tensor([20.0 if l in keep_set else -20.0 for l in range(teacher.num_layers)]))
    for p in student.router.parameters():
        p.requires_grad_(False)
    return student


def task_loss(model: RoutedStudent, batch: dict) -> tuple[torch.Tensor, dict]:
    out = model(batch)  # through the DDP wrapper when several processes train
    loss = unwrap(model).vla.task_loss(out["final"], batch)
    return loss, {"loss": loss.item()}


def router_kd_loss(model: RoutedStudent, teacher: ReferenceVLA, batch: dict, cfg: DistillConfig) -> tuple[torch.Tensor, dict]:
    """Task loss + distillation from the teacher's final action only (+ the same gate terms as ActDistill)."""
    student = unwrap(model)
    if student.vla.config.action_head != "regression":
        raise ValueError(f"The router-KD baseline distils the teacher's continuous action output, which needs a regression "
                         f"head; this student has a {student.vla.config.action_head!r} head.")
    out = model(batch)
    with torch.no_grad():
        target = teacher.predict(batch)
    pad = batch.get(ACTION_PAD)
    l_task = action_loss(out["action"], batch[ACTION], pad)
    l_kd = action_loss(out["action"], target, pad)
    g = out["gates"]
    gl = gate_losses(g, student.tau, cfg.rho, cfg.budget_on)
    loss = (l_task + cfg.beta * l_kd + cfg.lambda_bal * gl["bal"] + cfg.lambda_bud * gl["bud"]
            + cfg.lambda_pol * gl["pol"])
    return loss, {"loss": loss.item(), "task": l_task.item(), "kd": l_kd.item(),
                  "keep": (g >= student.tau).float().mean().item()}
