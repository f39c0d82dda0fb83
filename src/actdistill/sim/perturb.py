"""Observation perturbations applied inside the evaluation runner (docs/design.md "Robustness").

A perturbation changes what the policy sees and nothing else: the simulator steps on the true state, and image
perturbations leave the state and instruction alone (and so on). Its randomness is a pure function of the
perturbation, the placement seed and the step, so every policy evaluated on the same placements sees the same
noise at the same step and rows stay paired. Kinds, their units and ranges, the named levels (presets) and
one implementation per kind live here; `EvalConfig.perturb` is checked with `parse_perturbation`.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

import numpy as np

from actdistill.errors import ConfigError
from actdistill.sim.base import Observation, instruction_for

HAND_XYZ, GOAL_XYZ = slice(0, 3), slice(4, 7)  # Meta-World state: hand xyz, gripper opening, goal xyz


# kind -> (unit of its level, smallest, largest level)
PERTURB_KINDS: dict[str, tuple[str, float, float]] = {
    "image-noise": ("std of Gaussian pixel noise, in 0-255 units", 0.0, 128.0),
    "brightness": ("factor on every pixel", 0.1, 4.0),
    "contrast": ("factor on each pixel's distance from the frame mean", 0.0, 4.0),
    "camera-shift": ("pixels the picture is translated by", 0.0, 32.0),
    "occlusion": ("side of a grey square, as a fraction of the image side", 0.0, 0.9),
    "state-noise": ("std of Gaussian noise on hand and goal xyz, in metres", 0.0, 1.0),
    "paraphrase": ("which held-out instruction paraphrase (1 or 2)", 1.0, 2.0),
}
# named perturbations (what `eval.perturb` and `actdistill robustness` accept besides "kind:level")
PERTURB_PRESETS: dict[str, str] = {
    "image-noise-low": "image-noise:4",
    "image-noise-high": "image-noise:16",
    "brightness": "brightness:1.3",
    "contrast": "contrast:0.6",
    "camera-shift": "camera-shift:3",
    "occlusion": "occlusion:0.2",
    "state-noise": "state-noise:0.01",
    "paraphrase-1": "paraphrase:1",
    "paraphrase-2": "paraphrase:2",
}


def parse_perturbation(spec: str) -> tuple[str, float]:
    """(kind, level) of a perturbation named by a preset or written "kind:level"; "none" is ("none", 0.0)."""
    if spec == "none":
        return "none", 0.0
    text = PERTURB_PRESETS.get(spec, spec)
    kind, sep, level_s = text.partition(":")
    if kind not in PERTURB_KINDS or not sep:
        raise ConfigError(f"Unknown perturbation {spec!r}; use 'none', one of {', '.join(PERTURB_PRESETS)}, or "
                          f"'kind:level' with kind in {', '.join(PERTURB_KINDS)}.")
    unit, lo, hi = PERTURB_KINDS[kind]
    try:
        level = float(level_s)
    except ValueError:
        level = math.nan
    if not lo <= level <= hi or (kind == "paraphrase" and level not in (1.0, 2.0)):
        raise ConfigError(f"Perturbation {spec!r}: the {kind} level ({unit}) must be in [{lo:g}, {hi:g}], got {level_s!r}.")
    return kind, level


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
    return replace(obs, instruction=instruction_for(task, int(p.level) - 1))


# one implementation per kind of PERTURB_KINDS (tests/test_perturb.py checks that none is missing)
_APPLY = {"image-noise": _noise, "brightness": _brightness, "contrast": _contrast, "camera-shift": _shift,
          "occlusion": _occlusion, "state-noise": _state_noise, "paraphrase": _paraphrase}
IMPLEMENTED = tuple(_APPLY)
