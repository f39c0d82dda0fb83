"""A suite defined outside the package, in this one file: a point moved to a goal in the unit square, drawn as
two pixels. Importing the module registers it (spawned workers import it again through `sim.base.import_suites`).
"""

from __future__ import annotations

import numpy as np

from actdistill.sim import Suite, instruction_for, register_suite
from actdistill.sim.base import Observation


class PointEnv:
    """Move a point (state x, y, distance to the goal) to a goal it sees only in the picture."""

    def __init__(self, task: str, camera: str, image_size: int, max_steps: int) -> None:
        self.task, self.size = task, image_size
        self.instruction = instruction_for(task)

    def reset(self, placement_seed: int) -> Observation:
        rng = np.random.default_rng(placement_seed)
        self.pos = rng.uniform(0.1, 0.9, 2)
        self.goal = rng.uniform(0.1, 0.9, 2) if self.task == "point-reach" else np.array([0.9, 0.9])
        return self._obs()

    def _obs(self) -> Observation:
        img = np.zeros((self.size, self.size, 3), np.uint8)
        for xy, channel in ((self.pos, 0), (self.goal, 1)):
            i, j = (np.clip(xy, 0, 1) * (self.size - 1)).round().astype(int)
            img[i, j, channel] = 255
        dist = np.linalg.norm(self.goal - self.pos)
        return Observation(image=img, state=np.array([*self.pos, dist], np.float32), instruction=self.instruction)

    def step(self, action: np.ndarray) -> tuple[Observation, bool]:
        self.pos = np.clip(self.pos + 0.1 * np.clip(action, -1, 1), 0, 1)
        return self._obs(), bool(np.linalg.norm(self.goal - self.pos) < 0.05)

    def expert_action(self) -> np.ndarray:
        return np.clip((self.goal - self.pos) / 0.1, -1, 1).astype(np.float32)

    def close(self) -> None:
        pass


TOY = register_suite(Suite(
    key="toy-point", name="toy-point", tasks=("point-reach", "point-corner"), state_dim=3, action_dim=2,
    make_env=PointEnv, cameras=("top",), groups={"easy": ("point-corner",), "hard": ("point-reach",)},
    instructions={"point-reach": ("go to the green dot", "move onto the green dot", "reach the green mark"),
                  "point-corner": ("go to the corner", "move into the corner", "reach the far corner")}))
