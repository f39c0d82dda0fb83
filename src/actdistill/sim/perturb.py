"""Observation perturbations applied inside the evaluation runner (docs/design.md "Robustness").

A perturbation changes what the policy sees and nothing else: the simulator steps on the true state, and image
perturbations leave the state and instruction alone (and so on). Its randomness is a pure function of the
perturbation, the placement seed and the step, so every policy evaluated on the same placements sees the same
noise at the same step and rows stay paired. Kinds, units and named levels live in config (`PERTURB_KINDS`,
`PERTURB_PRESETS`); each kind is implemented here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np

from actdistill.config import parse_perturbation
from actdistill.sim.base import Observation
from actdistill.sim.instructions import PARAPHRASES

HAND_XYZ, GOAL_XYZ = slice(0, 3), slice(4, 7)  # Meta-World state: hand xyz, gripper opening, goal xyz


@dataclass(frozen=True)
class Perturbation:
    spec: str  # as the user wrote it (a preset name or "kind:level")
    kind: str
    level: float

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def _rng(self, placement_seed: int, step: int | None) -> np.random.Generator:
        key = [zlib.crc32(self.kind.encode()), int(placement_seed)] + ([] if step is None else [int(step)])
        return np.random.default_rng(key)

    def apply(self, obs: Observation, placement_seed: int, step: int, task: str) -> Observation:
        """The observation the policy sees at `step` of the episode with this placement (a new object)."""
        if self.kind == "none":
            return obs
        return _APPLY[self.kind](self, obs, placement_seed, step, task)


def make_perturbation(spec: str) -> Perturbation:
    """The perturbation a preset name or "kind:level" names; an unknown name or level raises ConfigError."""
    kind, level = parse_perturbation(spec)
    return Perturbation(spec, kind, level)


def _image(obs: Observation, img: np.ndarray) -> Observation:
    return replace(obs, image=np.ascontiguousarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)))


def _noise(p: Perturbation, obs: Observation, seed: int, step: int, task: str) -> Observation:
    rng = p._rng(seed, step)
    return _image(obs, obs.image.astype(np.float32) + rng.normal(0.0, p.level, obs.image.shape))


def _brightness(p: Perturbation, obs: Observation, seed: int, step: int, task: str) -> Observation:
    return _image(obs, obs.image.astype(np.float32) * p.level)


def _contrast(p: Perturbation, obs: Observation, seed: int, step: int, task: str) -> Observation:
    img = obs.image.astype(np.float32)
    mean = img.mean(axis=(0, 1), keepdims=True)
    return _image(obs, mean + p.level * (img - mean))


def _shift(p: Perturbation, obs: Observation, seed: int, step: int, task: str) -> Observation:
    """The picture translated by `level` pixels in a direction fixed for the episode (edges repeated), as a camera
    mounted a little off its calibrated pose would see it."""
    k = int(round(p.level))
    angle = p._rng(seed, None).uniform(0, 2 * np.pi)
    dy, dx = int(round(k * np.sin(angle))), int(round(k * np.cos(angle)))
    h, w = obs.image.shape[:2]
    rows = np.clip(np.arange(h) - dy, 0, h - 1)
    cols = np.clip(np.arange(w) - dx, 0, w - 1)
    return replace(obs, image=np.ascontiguousarray(obs.image[rows][:, cols]))


def _occlusion(p: Perturbation, obs: Observation, seed: int, step: int, task: str) -> Observation:
    """A grey square of side `level` x the image side at a place fixed for the episode (a static occluder)."""
    h, w = obs.image.shape[:2]
    side = max(1, int(round(p.level * min(h, w))))
    rng = p._rng(seed, None)
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    img = obs.image.copy()
    img[y:y + side, x:x + side] = 128
    return replace(obs, image=img)


def _state_noise(p: Perturbation, obs: Observation, seed: int, step: int, task: str) -> Observation:
    rng = p._rng(seed, step)
    state = obs.state.astype(np.float32).copy()
    state[HAND_XYZ] += rng.normal(0.0, p.level, 3).astype(np.float32)
    state[GOAL_XYZ] += rng.normal(0.0, p.level, 3).astype(np.float32)
    return replace(obs, state=state)


def _paraphrase(p: Perturbation, obs: Observation, seed: int, step: int, task: str) -> Observation:
    return replace(obs, instruction=PARAPHRASES[task][int(p.level) - 1])


# one implementation per kind of config.PERTURB_KINDS (tests/test_perturb.py checks that none is missing)
_APPLY = {"image-noise": _noise, "brightness": _brightness, "contrast": _contrast, "camera-shift": _shift,
          "occlusion": _occlusion, "state-noise": _state_noise, "paraphrase": _paraphrase}
IMPLEMENTED = tuple(_APPLY)
