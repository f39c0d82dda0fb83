"""Load any policy artifact (teacher, exported student, baseline) from its folder, by the stage in its header."""

from __future__ import annotations

from pathlib import Path

from actdistill.artifacts import ArtifactError, read_json
from actdistill.constants import HEADER_FILE


def load_policy(folder: Path):
    folder = Path(folder)
    header = read_json(folder / HEADER_FILE, "the policy header")
    stage = header.get("stage")
    if stage == "train-teacher":
        from actdistill.teacher import load_teacher

        return load_teacher(folder)[0]
    if stage == "export":
        from actdistill.export import load_student

        return load_student(folder)
    if stage == "early-exit":
        from actdistill.bench.baselines import load_early_exit

        return load_early_exit(folder)
    raise ArtifactError(f"{folder} holds a '{stage}' artifact, which is not a policy; point to a teacher or an exported student.")
