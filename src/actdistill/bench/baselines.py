"""The simpler ways to spend the same compute, beside which the ActDistill student is measured.

- static pruning (EfficientVLA style): drop, for every input, the layers whose output changes their input
  least (cosine similarity over training frames), then fine-tune with the task loss;
- router without graph supervision (MoLe-VLA style): the same router, gating, budget and calibration,
  trained with the task loss and distillation from the teacher's final action only;
- early exit (DeeR-VLA style): run layers in order and stop once the per-layer action probe's prediction
  has stopped changing; the threshold is chosen on training frames to match a compute target;
- a smaller model from scratch: the student's mean depth, trained on the task loss.
Each is a policy with `predict`, `select_action`, `reset` (and `pop_layer_mask`), so the same evaluator,
FLOP counter and latency meter measure all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from actdistill.constants import ACTION, ACTION_PAD
from actdistill.config import DistillConfig
from actdistill.distill.losses import gate_losses
from actdistill.distill.routing import RoutedStudent
from actdistill.models.policy import PolicyMixin
from actdistill.models.vla import ReferenceVLA, action_loss
from actdistill.probe.graph import LayerProbes
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


class EarlyExitPolicy(PolicyMixin, nn.Module):
    """Teacher layers in order; after layer l the probe action a_l is compared with a_{l-1}; a row exits
    (acting with a_l) once max |a_l - a_{l-1}| < threshold. Probe evaluation is part of its cost."""

    def __init__(self, teacher: ReferenceVLA, probes: LayerProbes, threshold: float, min_layers: int = 2):
        super().__init__()
        self.teacher = teacher
        self.probes = probes
        self.threshold = threshold
        self.min_layers = min_layers
        self.image_size = teacher.image_size
        self.n_action_steps = teacher.n_action_steps
        self.reset()

    @property
    def backbone(self):
        return self.teacher.backbone

    @torch.no_grad()
    def run(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        bb = self.teacher.backbone
        h = self.teacher.embed(batch)
        b, L = h.shape[0], self.teacher.num_layers
        ctx = bb.context(h)
        action = torch.zeros(b, self.teacher.config.chunk_size, 4)
        mask = torch.zeros(b, L, dtype=torch.bool)
        live = torch.arange(b)
        prev = None
        for l in range(L):
            h_live = bb.layer(l, h[live], ctx.rows(live))
            h = h.index_copy(0, live, h_live)
            mask[live, l] = True
            a = self.probes.probes[l](self.probes.extractors[l](h_live))  # (B_live, chunk, 4)
            if l == L - 1:
                action[live] = self.teacher.action_head(bb.norm(h_live))
                break
            done = torch.zeros(len(live), dtype=torch.bool)
            if prev is not None and l + 1 >= self.min_layers:
                done = (a - prev).abs().flatten(1).amax(1) < self.threshold
            action[live[done]] = a[done]
            live, prev = live[~done], a[~done]
            if live.numel() == 0:
                break
        return action, mask

    def predict(self, batch: dict) -> torch.Tensor:
        return self.run(batch)[0]

    def predict_chunk(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        action, mask = self.run(batch)
        return action.clamp(-1.0, 1.0), mask


@torch.no_grad()
def choose_exit_threshold(policy: EarlyExitPolicy, data, target_frac: float, count: int = 1024) -> float:
    """The threshold whose mean executed-layer fraction on training frames is closest to `target_frac` (bisection)."""
    idx = torch.linspace(0, len(data) - 1, min(count, len(data))).long()
    batches = [data.batch(c) for c in idx.split(256)]

    def frac(thr: float) -> float:
        policy.threshold = thr
        return torch.cat([policy.run(b)[1] for b in batches]).float().mean().item()

    lo, hi = 0.0, 2.0  # actions live in [-1, 1]: a change above 2 is impossible, so thr=2 exits at min_layers
    for _ in range(14):
        mid = (lo + hi) / 2
        if frac(mid) > target_frac:
            lo = mid  # too much compute: exit more eagerly
        else:
            hi = mid
    policy.threshold = hi
    return hi


def load_early_exit(folder) -> EarlyExitPolicy:
    """An early-exit policy artifact: the teacher, its trained per-layer probes and the exit threshold."""
    from pathlib import Path

    from actdistill.artifacts import load_tensors, read_json
    from actdistill.config import ProbeConfig
    from actdistill.probe.stage import PROBES_FILE, build_probes
    from actdistill.teacher import load_teacher

    cfg = read_json(Path(folder) / "config.json", "the early-exit config")
    teacher, _ = load_teacher(Path(cfg["teacher"]))
    probes = build_probes(ProbeConfig.from_dict(read_json(Path(cfg["probe"]) / "config.json", "the probe config")), teacher)
    probes.load_state_dict(load_tensors(Path(cfg["probe"]) / PROBES_FILE, "the probe weights"))
    return EarlyExitPolicy(teacher, probes.eval(), cfg["threshold"]).eval()
