"""Demonstrations in memory, whatever file they came from (HDF5 or LeRobot): episodes, the set, its content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from actdistill.constants import ACTION_DIM, STATE_DIM


@dataclass
class Demo:
    task: str
    instruction: str
    placement_seed: int
    images: np.ndarray  # (T, H, W, 3) uint8
    states: np.ndarray  # (T, 7) float32
    actions: np.ndarray  # (T, 4) float32

    def __post_init__(self) -> None:
        t = len(self.actions)
        if t == 0:
            raise ValueError(f"Demo of {self.task} (seed {self.placement_seed}) is empty.")
        if self.images.ndim != 4 or self.images.shape[0] != t or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"Demo images must be (T, H, W, 3) uint8 with T={t}, got {self.images.shape} {self.images.dtype}.")
        if self.states.ndim != 2 or self.actions.ndim != 2 or len(self.states) != t or 0 in self.states.shape[1:] + self.actions.shape[1:]:
            raise ValueError(f"Demo states/actions must be (T, S) and (T, A) with T={t} (Meta-World: S={STATE_DIM}, "
                             f"A={ACTION_DIM}), got {self.states.shape} and {self.actions.shape}.")
        if not self.instruction:
            raise ValueError(f"Demo of {self.task} (seed {self.placement_seed}) has no instruction.")


def hash_demo_into(h, demo: Demo) -> None:
    """Feed one demo's content (not the file's bytes, which carry a timestamp) into a running hash."""
    h.update(json.dumps([demo.task, demo.instruction, int(demo.placement_seed)]).encode())
    for arr in (demo.images, demo.states.astype(np.float32), demo.actions.astype(np.float32)):
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())


def content_hash(demos: list[Demo]) -> str:
    """Hash of the demonstrations themselves, in file order: equal for bit-identical collections."""
    h = hashlib.sha256()
    for d in demos:
        hash_demo_into(h, d)
    return h.hexdigest()[:16]


@dataclass
class DemoSet:
    """All demos of a file, in memory, plus the file's header and fingerprint."""

    demos: list[Demo]
    header: dict
    env_args: dict
    fingerprint: str
    attrs: dict = field(default_factory=dict)
    content_hash: str = ""  # `content_hash(demos)`: equal for bit-identical collections, whatever the file's timestamps

    @property
    def tasks(self) -> list[str]:
        return sorted({d.task for d in self.demos})

    @property
    def num_frames(self) -> int:
        return sum(len(d.actions) for d in self.demos)
