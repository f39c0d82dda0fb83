"""A suite registered from one module outside the package runs through the configs, collection (spawned
workers), teacher training and evaluation (spawned workers) with no change to the package."""

from __future__ import annotations

import numpy as np
import pytest

from actdistill.config import ConfigError, EvalConfig, SimConfig
from actdistill.sim import SUITES, Suite, get_suite, instruction_for, register_suite
from tests.helpers import toy_suite


@pytest.fixture
def toy():
    register_suite(toy_suite.TOY)  # registered on import; again here in case an earlier test removed it
    yield toy_suite.TOY
    SUITES.pop(toy_suite.TOY.key)  # later tests see only the package's suites


def test_a_suite_from_outside_the_package_sets_the_config_defaults_and_names(toy):
    sim = SimConfig(suite="toy-point", camera="top", image_size=16)
    assert sim.tasks == ("point-reach", "point-corner")  # the default task list is the whole suite
    assert instruction_for("point-corner", 1) == "reach the far corner"
    with pytest.raises(ConfigError, match="Unknown camera 'corner2'; choose from top"):
        SimConfig(suite="toy-point", image_size=16)
    with pytest.raises(ConfigError, match="Unknown task 'reach-v3' in SimConfig.tasks"):
        SimConfig(suite="toy-point", camera="top", tasks=("reach-v3",))
    with pytest.raises(ConfigError, match="paraphrase 3 does not exist"):
        instruction_for("point-corner", 2)
    with pytest.raises(ConfigError, match="already registered"):
        register_suite(Suite(**{**toy.__dict__}))
    with pytest.raises(ConfigError, match="no instruction for b"):
        Suite(key="x", name="x", tasks=("a", "b"), state_dim=1, action_dim=1, make_env=toy.make_env, cameras=("c",),
              instructions={"a": ("do a",)})


def test_a_suite_from_outside_the_package_collects_trains_and_evaluates_with_workers(toy, tmp_path):
    from actdistill.collect import collect
    from actdistill.config import CollectConfig, TeacherConfig, TrainConfig
    from actdistill.data.hdf5 import read_demos
    from actdistill.evaluate import evaluate
    from actdistill.registry import PolicySpec
    from actdistill.teacher import train_teacher
    from tests.conftest import tiny_model_config

    sim = SimConfig(suite="toy-point", camera="top", image_size=16)
    collect(CollectConfig(sim=sim, demos_per_task=3, workers=2, max_steps=40), tmp_path / "c", progress=False)
    demos = read_demos(tmp_path / "c" / "demos.hdf5")
    assert demos.env_args["benchmark"] == "toy-point"
    assert {d.task for d in demos.demos} == set(sim.tasks)
    assert demos.demos[0].states.shape[1] == 3 and demos.demos[0].actions.shape[1] == 2
    assert demos.demos[0].instruction in ("go to the green dot", "go to the corner")

    cfg = TeacherConfig(model=tiny_model_config(image_size=16, patch_size=4, state_dim=3, action_dim=2),
                        train=TrainConfig(steps=4, batch_size=8, lr=1e-3, warmup_steps=1, checkpoint_every=4))
    train_teacher(cfg, tmp_path / "c" / "demos.hdf5", tmp_path / "t", progress=False)
    res = evaluate(PolicySpec(str(tmp_path / "t")), EvalConfig(episodes_per_task=2, max_steps=5, workers=2, batch_envs=2),
                   sim, progress=False)
    assert res["episodes_per_task"] == 2 and set(res["success_per_task"]) == set(sim.tasks)
    assert set(res["success_per_group"]) == {"easy", "hard"}
    assert np.isfinite(res["success_mean"])
