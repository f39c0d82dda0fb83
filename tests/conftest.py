"""Shared tiny fixtures: a two-task demo file and a tiny model config, built once per session."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from actdistill.config import CollectConfig, ModelConfig, SimConfig, TeacherConfig, TrainConfig

TINY_TASKS = ("reach-v3", "drawer-close-v3")

# The tests are an application, like the CLI: they choose offscreen EGL rendering unless the caller chose a renderer.
os.environ.setdefault("MUJOCO_GL", "egl")
# decoded LeRobot videos are cached under a temporary folder, not in the user's ~/.cache
os.environ.setdefault("ACTDISTILL_CACHE", tempfile.mkdtemp(prefix="actdistill-cache-"))


def tiny_model_config(**kw) -> ModelConfig:
    base = dict(image_size=32, hidden_size=32, num_layers=4, num_heads=2, num_kv_heads=1, intermediate_size=64,
                patch_size=8, num_lang_tokens=2, chunk_size=4)
    base.update(kw)
    return ModelConfig(**base)


def tiny_teacher_config(steps: int = 20, **model_kw) -> TeacherConfig:
    return TeacherConfig(model=tiny_model_config(**model_kw),
                         train=TrainConfig(steps=steps, batch_size=16, lr=2e-3, warmup_steps=2, checkpoint_every=10))


@pytest.fixture(scope="session")
def tiny_demos(tmp_path_factory):
    """Two demos each of two tasks at 32x32, collected by the real experts (single worker)."""
    from actdistill.collect import collect

    out = tmp_path_factory.mktemp("collect")
    cfg = CollectConfig(sim=SimConfig(tasks=TINY_TASKS, image_size=32), demos_per_task=2, workers=1, max_steps=200)
    collect(cfg, out, progress=False)
    return out / "demos.hdf5"


def train_tiny_teacher(demos, out, seed: int, steps: int):
    """Train a tiny teacher on `demos` into `out` from a fixed seed; returns `out`."""
    from actdistill.teacher import train_teacher

    torch.manual_seed(seed)
    train_teacher(tiny_teacher_config(steps=steps), demos, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_teacher(tiny_demos, tmp_path_factory):
    return train_tiny_teacher(tiny_demos, tmp_path_factory.mktemp("teacher"), seed=0, steps=20)
