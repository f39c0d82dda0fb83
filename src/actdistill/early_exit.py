"""Early exit (DeeR-VLA style), a baseline policy: run the teacher's layers in order and stop once the
per-layer action probe's prediction has stopped changing; the threshold is chosen on training frames to
match a compute target (docs/design.md, "Baselines").
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from actdistill.artifacts import atomic_write_json, load_tensors, read_json
from actdistill.config import EarlyExitConfig, ProbeConfig
from actdistill.constants import CONFIG_FILE
from actdistill.models.policy import PolicyMixin
from actdistill.models.vla import ReferenceVLA
from actdistill.probe.graph import LayerProbes
from actdistill.probe.stage import PROBES_FILE, build_probes
from actdistill.teacher import load_teacher


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
        action = torch.zeros(b, self.teacher.config.chunk_size, self.teacher.config.action_dim)
        mask = torch.zeros(b, L, dtype=torch.bool)
        live = torch.arange(b)
        prev = None
        for l in range(L):
            h_live = bb.layer(l, h[live], ctx.rows(live))
            h = h.index_copy(0, live, h_live)
            mask[live, l] = True
            a = self.probes.probes[l](self.probes.extractors[l](h_live))  # (B_live, chunk, A)
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
    cfg = EarlyExitConfig.from_saved(read_json(Path(folder) / CONFIG_FILE, "the early-exit config"))
    teacher, _ = load_teacher(Path(cfg.teacher))
    probes = build_probes(ProbeConfig.from_saved(read_json(Path(cfg.probe) / CONFIG_FILE, "the probe config")), teacher)
    probes.load_state_dict(load_tensors(Path(cfg.probe) / PROBES_FILE, "the probe weights"))
    return EarlyExitPolicy(teacher, probes.eval(), cfg.threshold).eval()


def save_early_exit(folder: Path, teacher_dir: Path, probe_dir: Path, threshold: float) -> None:
    atomic_write_json(Path(folder) / CONFIG_FILE, EarlyExitConfig(teacher=str(teacher_dir), probe=str(probe_dir),
                                                                  threshold=threshold).to_dict())
