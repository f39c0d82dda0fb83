"""Where the distillation's per-layer teacher targets (z_l^T, a_l^T) come from (docs/design.md "Teacher targets").

"cache": read by sample id from the teacher cache that `actdistill probe` wrote, one deterministic pass over the
unaugmented training frames (the default; no teacher forward pass while distilling). "online": the frozen teacher
and its frozen extractors and probes run on each batch as the student sees it, after augmentation, so the student
learns the teacher's layers on inputs the training frames do not hold (a shifted image is a new input with its own
teacher targets) at the cost of one teacher forward pass per step.
"""

from __future__ import annotations

import copy

import torch

from actdistill.cache import TeacherCache
from actdistill.constants import OBS_IMAGE, SAMPLE_ID
from actdistill.probe.graph import LayerProbes
from actdistill.probe.stage import teacher_hidden


class CachedTargets:
    """The teacher cache's targets of a batch's frames, by sample id."""

    def __init__(self, cache: TeacherCache):
        self.cache = cache

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.lookup(batch[SAMPLE_ID])


class OnlineTargets:
    """The frozen teacher's targets of a batch as given (augmented or not), from its own frozen copy of the probes
    (freezing it leaves the caller's module as it was)."""

    def __init__(self, teacher, probes: LayerProbes):
        self.teacher = teacher.eval()
        self.probes = copy.deepcopy(probes).eval().requires_grad_(False)
        self.device = next(self.probes.parameters()).device

    @torch.no_grad()
    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        device = batch[OBS_IMAGE].device  # the device the training loop put the batch on
        if device != self.device:
            self.teacher.to(device)
            self.probes.to(device)
            self.device = device
        return self.probes(teacher_hidden(self.teacher, batch))


def teacher_targets(source: str, cache: TeacherCache, teacher=None, probes: LayerProbes | None = None):
    """The targets a distillation config's `teacher_targets` asks for: `cache` ("cache"), or `teacher` and `probes`
    run on each batch ("online")."""
    if source == "cache":
        return CachedTargets(cache)
    if teacher is None or probes is None:
        raise ValueError("Online teacher targets need the teacher and its probes.")
    return OnlineTargets(teacher, probes)
