"""Router consistency (docs/design.md "Router consistency"): the gates of an input and of the same input under a
photometric change or a reworded instruction should agree.

Measured on MT10 (benchmarks/results/mt10_robustness_10ep.md): a brightness change of x1.3 and the held-out
instruction paraphrases flip 13-24% of the student's gate decisions while its teacher and a static model of the
same compute barely move; the router had only ever seen one brightness and one phrasing per task. This term
shows it more: each distillation batch gets a second view, read by the router only, in which every frame's
brightness and contrast are scaled by factors drawn from [1 - jitter, 1 + jitter] and every instruction
embedding is rotated by up to atan(`lang_noise`) in a random direction, after being replaced, with probability
`router_reword`, by one of its task's training-only rewordings (sim/instructions.py REWORDINGS); the loss is the mean
squared difference between the view's gate logits and the batch's, so the router learns to give the perturbed
input the decisions of the clean one. Both sides carry gradient: with the batch's logits held fixed the update
is not the gradient of any objective (the target moves with the router) and was measured to diverge on its
own; the budget and polarization terms anchor the batch's logits. The layers and heads never see the view.
"""

from __future__ import annotations

import torch

from actdistill.constants import OBS_IMAGE, OBS_LANG, TASK_ID
from actdistill.models.language import reword, rewording_table


def photometric_jitter(images: torch.Tensor, jitter: float, generator: torch.Generator) -> torch.Tensor:
    """(B, H, W, 3) uint8 frames, each with its brightness and then its contrast (distance of each pixel from the
    frame's mean) scaled by factors uniform in [1 - jitter, 1 + jitter]; the same operations as the brightness and
    contrast perturbations of sim/perturb.py."""
    b = images.shape[0]
    bright = 1.0 + jitter * (2 * torch.rand(b, 1, 1, 1, generator=generator) - 1)
    contrast = 1.0 + jitter * (2 * torch.rand(b, 1, 1, 1, generator=generator) - 1)
    x = images.float() * bright.to(images.device)
    mean = x.mean(dim=(1, 2), keepdim=True)
    x = mean + contrast.to(images.device) * (x - mean)
    return x.round().clamp(0, 255).to(torch.uint8)


def embedding_noise(emb: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """(B, D) unit sentence embeddings, each moved along a random direction orthogonal to it by a length uniform in
    [0, scale] and re-normalised: rotated by atan(length), so scale 1 rotates by up to 45 degrees."""
    b, d = emb.shape
    noise = torch.randn(b, d, generator=generator).to(emb)
    noise = noise - (noise * emb).sum(1, keepdim=True) * emb  # orthogonal to the (unit) embedding
    direction = torch.nn.functional.normalize(noise, dim=1)
    radius = scale * torch.rand(b, 1, generator=generator)
    return torch.nn.functional.normalize(emb + (radius * direction).to(emb), dim=1)


def distill_rewordings(cfg, tasks: tuple[str, ...]) -> torch.Tensor | None:
    """The rewording table a distillation with config `cfg` (DistillConfig) needs, for the router's view
    (router_reword) or the student's own input (instruction_reword), or None when it needs none."""
    if cfg.instruction_reword > 0:
        return rewording_table(tuple(tasks), "distill.instruction_reword")
    if cfg.router_consistency > 0 and cfg.router_reword > 0:
        return rewording_table(tuple(tasks), "distill.router_reword")
    return None


def router_view(batch: dict, jitter: float, lang_noise: float, generator: torch.Generator,
                rewordings: torch.Tensor | None = None, reword_p: float = 0.0) -> dict:
    """The perturbed copy of a batch's observations that the router-consistency term feeds the router: jittered
    frames, and instructions reworded (with probability reword_p, from `rewordings`) and then rotated."""
    images = batch[OBS_IMAGE]
    if images.dtype != torch.uint8:
        raise ValueError("Router consistency perturbs uint8 frames (B, H, W, 3); this batch holds "
                         f"{images.dtype} images.")
    lang = batch[OBS_LANG]
    if reword_p > 0:
        if rewordings is None:
            raise ValueError("router_view: reword_p > 0 needs the rewording table (distill_rewordings).")
        lang = reword(lang, batch[TASK_ID], rewordings, reword_p, generator)
    return {OBS_IMAGE: photometric_jitter(images, jitter, generator),
            OBS_LANG: embedding_noise(lang, lang_noise, generator)}


def consistency_loss(logits: torch.Tensor, view_logits: torch.Tensor, routed: list[int]) -> torch.Tensor:
    """Mean squared difference of the routed layers' gate logits (B, L) between the view and the batch."""
    return (view_logits[:, routed] - logits[:, routed]).pow(2).mean()
