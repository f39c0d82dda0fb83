"""Load any policy artifact (teacher, exported student, baseline) from its folder, by the stage in its header.

`PolicySpec` is a picklable zero-argument factory for `actdistill.evaluate`: evaluation workers call it to
build their own copy, and the evaluator itself knows no policy kinds (docs/design.md, "Layering").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from actdistill.artifacts import ArtifactError, read_json
from actdistill.constants import CONFIG_FILE, HEADER_FILE
from actdistill.early_exit import load_early_exit
from actdistill.export import load_student
from actdistill.teacher import load_teacher

LOADERS = {  # header stage -> loader of that policy kind
    "train-teacher": lambda folder: load_teacher(folder)[0],
    "export": load_student,
    "early-exit": load_early_exit,
}


def load_policy(folder: Path):
    folder = Path(folder)
    header = read_json(folder / HEADER_FILE, "the policy header")
    stage = header.get("stage")
    if stage not in LOADERS:
        raise ArtifactError(f"{folder} holds a '{stage}' artifact, which is not a policy; point to a teacher or an exported student.")
    return LOADERS[stage](folder)


def policy_tasks(folder: Path) -> tuple[str, ...]:
    """The task list a policy folder was trained on (an early-exit policy: its teacher's); () when not recorded."""
    cfg = read_json(Path(folder) / CONFIG_FILE, "the policy config")
    if "tasks" not in cfg and "teacher" in cfg:  # early exit points to its teacher
        return policy_tasks(Path(cfg["teacher"]))
    return tuple(cfg.get("tasks", ()))


@dataclass(frozen=True)
class PolicySpec:
    """A picklable recipe for a policy (its folder), so that evaluation workers can build their own copy."""

    path: str

    def __call__(self):
        return load_policy(Path(self.path))
