"""The three action-head families a VLA may end in; each reads the final-normed action-query tokens.

- ``regression`` (the default): a linear map to the action chunk, trained with masked MSE.
- ``diffusion`` (CogACT style): a denoiser over the whole chunk conditioned on the cognition
  token(s); DDPM training (noise prediction), DDIM sampling with ``ddim_steps`` steps. The
  schedules are `diffusers`' DDPM / DDIM schedulers.
- ``discrete`` (OpenVLA style): every action dimension of every chunk step is a token over
  ``action_bins`` uniform bins of [-1, 1]; logits come from per-position embeddings through one
  shared bin vocabulary (OpenVLA's LM head), trained with cross-entropy, decoded by arg-max to
  the bin centre.

Every head has `decode(cond) -> (B, chunk, A)` continuous actions and `loss(cond, target, pad)`,
its own task loss. The per-layer action probes of ActDistill always predict continuous actions,
so only the task loss differs between the families.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from actdistill import globalbatch
from actdistill.config import HEADS
from actdistill.constants import ACTION_DIM


def masked_mean(err: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    """Mean of err (B, chunk) over the chunk steps inside the episode (pad True = beyond its end); over the rows
    of every process while globalbatch.global_batch is active."""
    if pad is None and not globalbatch.active():
        return err.mean()
    valid = torch.ones_like(err) if pad is None else (~pad).to(err.dtype)
    total = globalbatch.sum_over_processes((err * valid).sum())  # each sum is this process's own with one process
    return total / globalbatch.sum_over_processes(valid.sum()).clamp_min(1.0)


def action_loss(pred: torch.Tensor, target: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    """MSE over the chunk steps that lie inside the episode. pred, target: (B, chunk, A); pad: (B, chunk) bool."""
    return masked_mean(F.mse_loss(pred, target, reduction="none").mean(-1), pad)


class RegressionHead(nn.Linear):
    """Continuous chunk regression: (B, C) -> (B, chunk, A). A plain Linear, so its tensors are `head.weight/bias`."""

    family = "regression"

    def __init__(self, cond_dim: int, chunk: int, action_dim: int = ACTION_DIM):
        super().__init__(cond_dim, chunk * action_dim)
        self.chunk, self.action_dim = chunk, action_dim

    def decode(self, cond: torch.Tensor) -> torch.Tensor:
        return self(cond).view(-1, self.chunk, self.action_dim)

    def loss(self, cond: torch.Tensor, target: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        return action_loss(self.decode(cond), target, pad)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class DiffusionHead(nn.Module):
    """DDPM-trained denoiser over the action chunk, conditioned on the cognition token(s); DDIM sampling."""

    family = "diffusion"

    def __init__(self, cond_dim: int, chunk: int, hidden: int = 256, train_steps: int = 100, ddim_steps: int = 10,
                 action_dim: int = ACTION_DIM):
        super().__init__()
        from diffusers import DDIMScheduler, DDPMScheduler

        self.chunk, self.time_dim, self.ddim_steps, self.action_dim = chunk, 64, ddim_steps, action_dim
        n = chunk * action_dim
        self.cond = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU())
        self.time = nn.Sequential(nn.Linear(self.time_dim, hidden), nn.SiLU())
        self.denoiser = nn.Sequential(nn.Linear(n + 2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                      nn.Linear(hidden, n))
        # Actions live in [-1, 1]: the predicted clean chunk is clipped there at every step.
        self.train_scheduler = DDPMScheduler(num_train_timesteps=train_steps, beta_schedule="squaredcos_cap_v2",
                                             clip_sample=True, prediction_type="epsilon")
        self.sampler = DDIMScheduler.from_config(self.train_scheduler.config)

    def eps(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Predicted noise for noisy chunks x (B, chunk, A) at timesteps t (B,), given the projected condition c."""
        h = torch.cat([x.flatten(1), c, self.time(timestep_embedding(t, self.time_dim))], dim=-1)
        return self.denoiser(h).view_as(x)

    def loss(self, cond: torch.Tensor, target: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        noise = torch.randn_like(target)
        t = torch.randint(0, self.train_scheduler.config.num_train_timesteps, (target.shape[0],), device=target.device)
        noisy = self.train_scheduler.add_noise(target, noise, t)
        err = F.mse_loss(self.eps(noisy, t, self.cond(cond)), noise, reduction="none").mean(-1)
        return masked_mean(err, pad)

    def decode(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        c = self.cond(cond)
        x = torch.randn(cond.shape[0], self.chunk, self.action_dim, device=cond.device, generator=generator)
        self.sampler.set_timesteps(self.ddim_steps, device=cond.device)
        for t in self.sampler.timesteps:
            eps = self.eps(x, t.expand(x.shape[0]), c)
            x = self.sampler.step(eps, t, x).prev_sample
        return x


class DiscreteHead(nn.Module):
    """Per-dimension uniform bins over [-1, 1] (256 by default), one token per action dimension and chunk step."""

    family = "discrete"

    def __init__(self, cond_dim: int, chunk: int, bins: int = 256, token_dim: int = 64, action_dim: int = ACTION_DIM):
        super().__init__()
        self.chunk, self.bins, self.token_dim, self.action_dim = chunk, bins, token_dim, action_dim
        self.positions = nn.Linear(cond_dim, chunk * action_dim * token_dim)  # one embedding per action token
        self.vocab = nn.Linear(token_dim, bins)  # shared over positions, like an LM head over the bin tokens

    def logits(self, cond: torch.Tensor) -> torch.Tensor:
        tokens = F.gelu(self.positions(cond)).view(-1, self.chunk, self.action_dim, self.token_dim)
        return self.vocab(tokens)  # (B, chunk, A, bins)

    def to_bins(self, actions: torch.Tensor) -> torch.Tensor:
        return ((actions.clamp(-1.0, 1.0) + 1.0) / 2.0 * self.bins).long().clamp(max=self.bins - 1)

    def centres(self, idx: torch.Tensor) -> torch.Tensor:
        return (idx.float() + 0.5) / self.bins * 2.0 - 1.0

    def loss(self, cond: torch.Tensor, target: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        logits = self.logits(cond)
        err = F.cross_entropy(logits.flatten(0, 2), self.to_bins(target).flatten(), reduction="none")
        return masked_mean(err.view(target.shape).mean(-1), pad)

    def decode(self, cond: torch.Tensor) -> torch.Tensor:
        return self.centres(self.logits(cond).argmax(-1))


def build_head(family: str, cond_dim: int, chunk: int, *, hidden: int = 256, train_steps: int = 100, ddim_steps: int = 10,
               bins: int = 256, action_dim: int = ACTION_DIM) -> nn.Module:
    if family == "regression":
        return RegressionHead(cond_dim, chunk, action_dim)
    if family == "diffusion":
        return DiffusionHead(cond_dim, chunk, hidden, train_steps, ddim_steps, action_dim)
    if family == "discrete":
        return DiscreteHead(cond_dim, chunk, bins, action_dim=action_dim)
    raise ValueError(f"Unknown action head {family!r}; choose one of {', '.join(HEADS)}.")


def head_family_of(weights: dict, prefix: str = "head.") -> str | None:
    """The head family a state dict was trained with, from its tensor names (None if it has no head)."""
    names = {k[len(prefix):] for k in weights if k.startswith(prefix)}
    if any(k.startswith("denoiser.") for k in names):
        return "diffusion"
    if any(k.startswith("vocab.") for k in names):
        return "discrete"
    if "weight" in names:
        return "regression"
    return None


def check_head_family(weights: dict, expected: str, path, prefix: str = "head.") -> None:
    """One sentence if the weights were trained with another head family than the config names."""
    from actdistill.artifacts import ArtifactError

    found = head_family_of(weights, prefix)
    if found is not None and found != expected:
        raise ArtifactError(f"{path} was trained with a {found!r} action head but its config asks for a {expected!r} head; "
                            f"set model.action_head={found} or point to a checkpoint trained with the {expected!r} head.")
