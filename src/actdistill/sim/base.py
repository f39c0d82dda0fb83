"""The simulator interface at the bottom of the package (STYLE.md item 7; docs/design.md "Layering").

A suite names its tasks, their instructions (the training one and held-out paraphrases), their difficulty
groups, its cameras, the state and action sizes its policies see, and builds one environment per task; every
other module, the configs included, reaches a simulator only through `get_suite(key)`. Adding a suite is one
module that calls `register_suite` plus its import in `sim/__init__.py` (tests/test_suites.py registers one
from a test file alone). Placement
ranges are shared by every suite: demonstrations, test placements (the reported numbers) and validation
placements (every choice made from rollouts) never overlap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

import numpy as np

from actdistill.errors import ConfigError


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
    cameras: tuple[str, ...]  # what `sim.camera` may name
    # task -> (training instruction, held-out paraphrase 1, paraphrase 2, ...); paraphrases never train
    instructions: Mapping[str, tuple[str, ...]]
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # difficulty group -> tasks

    def __post_init__(self) -> None:
        missing = [t for t in self.tasks if not self.instructions.get(t)]
        if missing:
            raise ConfigError(f"Suite {self.key!r} gives no instruction for {', '.join(missing)}.")
        strays = sorted({t for ts in self.groups.values() for t in ts} - set(self.tasks))
        if strays:
            raise ConfigError(f"Suite {self.key!r} puts {', '.join(strays)} in a difficulty group but not in its tasks.")
        if not self.cameras:
            raise ConfigError(f"Suite {self.key!r} names no camera.")

    def check_tasks(self, tasks: tuple[str, ...]) -> None:
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise ConfigError(f"Unknown task(s) {', '.join(map(repr, unknown))} in the {self.name} suite; choose from "
                              f"{', '.join(self.tasks)}.")


SUITES: dict[str, Suite] = {}
DEFAULT_SUITE = "mt10"  # what `sim.suite` is when a config does not say


def register_suite(suite: Suite) -> Suite:
    if suite.key in SUITES and SUITES[suite.key] is not suite:
        raise ConfigError(f"A suite named {suite.key!r} is already registered.")
    SUITES[suite.key] = suite
    return suite


def get_suite(key: str) -> Suite:
    if key not in SUITES:
        raise ConfigError(f"Unknown suite {key!r}; choose from {', '.join(SUITES)}.")
    return SUITES[key]


def suite_for(tasks: tuple[str, ...], prefer: str = DEFAULT_SUITE) -> Suite:
    """The registered suite that holds every one of `tasks`: `prefer` when it does (MT10's tasks are MT50's too), then
    the others in registration order."""
    order = [get_suite(prefer), *(s for k, s in SUITES.items() if k != prefer)]
    for suite in order:
        if all(t in suite.tasks for t in tasks):
            return suite
    raise ConfigError(f"No registered suite ({', '.join(SUITES)}) holds all of the tasks {', '.join(tasks)}.")


def suite_modules() -> tuple[str, ...]:
    """The modules that registered the suites known in this process. Spawned worker processes start with only
    the package's own suites and import these (`import_suites`), so a suite registered by a user's module
    works with several workers too."""
    return tuple(sorted({s.make_env.__module__ for s in SUITES.values()}))


def import_suites(modules: tuple[str, ...]) -> None:
    for m in modules:
        importlib.import_module(m)


def instruction_for(task: str, paraphrase: int = -1) -> str:
    """The training instruction of `task` (from the first registered suite that has it); `paraphrase >= 0` picks
    held-out paraphrase number `paraphrase + 1`."""
    for suite in SUITES.values():
        if task in suite.instructions:
            texts = suite.instructions[task]
            if paraphrase + 1 >= len(texts):
                raise ConfigError(f"Task {task!r} of the {suite.name} suite has {len(texts) - 1} held-out "
                                  f"paraphrase(s); paraphrase {paraphrase + 1} does not exist.")
            return texts[paraphrase + 1]
    raise ConfigError(f"Unknown task {task!r}; no registered suite ({', '.join(SUITES)}) has it.")


# kind -> first seed of its range; a range holds base + seed * 100_000 + i for i < 100_000 and seed below its
# kind's limit (collect.seed < 100; eval.seed < 1000 for test and validation), so the three ranges never meet:
# demonstrations [0, 1e7), test [1e7, 1.1e8), validation [2e8, 3e8)
PLACEMENT_BASES = {"demo": 0, "eval": 10_000_000, "val": 200_000_000}
SEED_LIMITS = {"demo": 100, "eval": 1000, "val": 1000}
PER_SEED = 100_000  # placements per seed of a range


def placement_seeds(kind: str, seed: int, count: int) -> list[int]:
    """Placement seeds: demonstrations, test ("eval", the reported numbers) and validation ("val", every choice
    made from rollouts) draw from disjoint ranges."""
    base = PLACEMENT_BASES[kind]
    if not 0 <= seed < SEED_LIMITS[kind] or not 0 <= count <= PER_SEED:
        raise ConfigError(f"Placement seed {seed} (or count {count}) is outside the {kind!r} range.")
    return [base + seed * PER_SEED + i for i in range(count)]


def placement_kind(placement: int) -> str:
    """Which range a placement seed lies in: "demo", "eval" (test) or "val"; "other" outside all three."""
    for kind, base in PLACEMENT_BASES.items():
        if base <= placement < base + SEED_LIMITS[kind] * PER_SEED:
            return kind
    return "other"
