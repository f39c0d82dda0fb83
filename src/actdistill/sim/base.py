"""The simulator interface at the bottom of the package (STYLE.md item 7; docs/design.md "Layering").

A suite names its tasks, their difficulty groups, the state and action sizes its policies see, and builds
one environment per task; every other module reaches a simulator only through `get_suite(key)`. Placement
ranges are shared by every suite: demonstrations, test placements (the reported numbers) and validation
placements (every choice made from rollouts) never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

import numpy as np

from actdistill.config import ConfigError


@dataclass
class Observation:
    image: np.ndarray  # (H, W, 3) uint8
    state: np.ndarray  # (state_dim,) float32
    instruction: str


class Env(Protocol):
    """One task of a suite, with seeded placements and a scripted expert."""

    instruction: str

    def reset(self, placement_seed: int) -> Observation: ...

    def step(self, action: np.ndarray) -> tuple[Observation, bool]: ...  # (observation, success)

    def expert_action(self) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Suite:
    key: str  # what `sim.suite` names, e.g. "mt10"
    name: str  # what results files call it, e.g. "metaworld-MT10"
    tasks: tuple[str, ...]
    state_dim: int
    action_dim: int
    make_env: Callable[[str, str, int, int], Env]  # (task, camera, image_size, max_steps) -> Env
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # difficulty group -> tasks

    def check_tasks(self, tasks: tuple[str, ...]) -> None:
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise ConfigError(f"Unknown task(s) {', '.join(map(repr, unknown))} in the {self.name} suite; choose from "
                              f"{', '.join(self.tasks)}.")


SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite) -> Suite:
    SUITES[suite.key] = suite
    return suite


def get_suite(key: str) -> Suite:
    if key not in SUITES:
        raise ConfigError(f"Unknown suite {key!r}; choose from {', '.join(SUITES)}.")
    return SUITES[key]


# kind -> first seed of its range; a range holds seed * 100_000 + i for eval.seed in [0, 1000), i < 100_000
PLACEMENT_BASES = {"demo": 0, "eval": 10_000_000, "calib": 20_000_000, "val": 200_000_000}


def placement_seeds(kind: str, seed: int, count: int) -> list[int]:
    """Placement seeds: demonstrations, test ("eval", the reported numbers) and validation ("val", every choice
    made from rollouts) draw from disjoint ranges."""
    base = PLACEMENT_BASES[kind]
    return [base + seed * 100_000 + i for i in range(count)]
