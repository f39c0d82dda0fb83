import json

import numpy as np
import pytest

from actdistill.config import EvalConfig, SimConfig
from actdistill.evaluate import evaluate, wilson_ci
from actdistill.teacher import load_teacher
from tests.conftest import TINY_TASKS


def test_wilson_interval_known_values():
    lo, hi = wilson_ci(10, 20)
    assert lo == pytest.approx(0.2993, abs=1e-3) and hi == pytest.approx(0.7007, abs=1e-3)
    assert wilson_ci(0, 10)[0] == 0.0 and wilson_ci(10, 10)[1] == 1.0


def test_one_episode_with_a_tiny_teacher(tiny_teacher, tmp_path):
    policy, _ = load_teacher(tiny_teacher)
    cfg = EvalConfig(episodes_per_task=1, max_steps=15, workers=1, gifs_per_task=1)
    r = evaluate(policy, cfg, SimConfig(tasks=TINY_TASKS, image_size=32), tmp_path, name="tiny", progress=False)
    assert set(r["success_per_task"]) == set(TINY_TASKS)
    assert r["episodes_per_task"] == 1 and 0 <= r["success_mean"] <= 1
    assert r["layers_executed_frac"] == 1.0  # the teacher runs every layer at every call
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["name"] == "tiny" and saved["placement_seeds"][0] >= 10_000_000
    assert len(list(tmp_path.glob("*.gif"))) == len(TINY_TASKS)
    eps = json.loads((tmp_path / "episodes.json").read_text())
    assert all(e["steps"] <= 15 and e["policy_calls"] == e["steps"] for e in eps)


def test_evaluator_counts_expert_successes(monkeypatch):
    """A policy object that is not a VLA (the scripted expert, reading the evaluator's own environments)."""
    import actdistill.evaluate as ev
    from actdistill.sim.metaworld_env import MT10Env

    class Expert:
        envs: list = []

        def reset(self):
            pass

        def select_action(self, obs):
            return np.stack([e.expert_action() for e in self.envs])

    expert = Expert()
    real = ev.run_episodes

    def run(policy, task, seeds, sim, max_steps, envs_cache, *args, **kw):
        envs_cache[task] = [MT10Env(task, camera=sim.camera, image_size=sim.image_size, max_steps=max_steps) for _ in seeds]
        expert.envs = envs_cache[task]
        return real(policy, task, seeds, sim, max_steps, envs_cache, *args, **kw)

    monkeypatch.setattr(ev, "run_episodes", run)
    cfg = EvalConfig(episodes_per_task=2, max_steps=200, workers=1, batch_envs=2)
    r = evaluate(expert, cfg, SimConfig(tasks=("drawer-close-v3",), image_size=32), None, progress=False)
    assert r["success_per_task"]["drawer-close-v3"] == 1.0
    assert r["mean_episode_steps"] < 200 and "layers_executed_frac" not in r


def test_overlapping_seeds_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        evaluate(object(), EvalConfig(episodes_per_task=2, workers=1), SimConfig(tasks=("reach-v3",)), None,
                 exclude_seeds={"reach-v3": [10_000_000]}, progress=False)


def test_success_is_reported_per_difficulty_group():
    from actdistill.config import EvalConfig
    from actdistill.evaluate import summarize

    eps = [{"task": t, "seed": i, "success": s, "steps": 10, "policy_calls": 10}
           for t, results in (("a", [1, 1]), ("b", [0, 1]), ("c", [0, 0])) for i, s in enumerate(results)]
    row = summarize(eps, ("a", "b", "c"), "p", EvalConfig(episodes_per_task=2),
                    {"easy": ("a", "b", "z"), "hard": ("c",), "empty": ("z",)})
    assert row["success_per_group"] == {"easy": 0.75, "hard": 0.0}  # over the evaluated tasks of each group


def test_cli_evaluate_writes_results_and_a_header(tiny_teacher, tmp_path):
    import json

    from actdistill.cli import main
    from actdistill.provenance import check_provenance

    out = tmp_path / "e"
    assert main(["evaluate", "--policy", str(tiny_teacher), "--out", str(out), "--episodes", "1", "--max-steps", "5",
                 "--workers", "1", "--tasks", "reach-v3", "--no-progress"]) == 0
    header = json.loads((out / "header.json").read_text())
    teacher_hash = json.loads((tiny_teacher / "header.json").read_text())["weights_hash"]
    assert header["stage"] == "evaluate" and header["inputs"] == {"policy": teacher_hash}
    check_provenance(header["provenance"], "the evaluate header")
    check_provenance(json.loads((out / "results.json").read_text())["provenance"], "results.json")


def test_cli_evaluate_defaults_to_the_policys_tasks_and_refuses_others(tiny_teacher, tmp_path, capsys):
    import json

    from actdistill.cli import main
    from actdistill.registry import policy_tasks
    from actdistill.sim import suite_for

    trained = policy_tasks(tiny_teacher)
    assert trained and suite_for(trained).key == "mt10"
    assert suite_for(("reach-v3", "hammer-v3")).key == "mt50"  # hammer is in MT50 only
    out = tmp_path / "e"
    assert main(["evaluate", "--policy", str(tiny_teacher), "--out", str(out), "--episodes", "1", "--max-steps", "3",
                 "--workers", "1", "--no-progress"]) == 0
    assert tuple(json.loads((out / "results.json").read_text())["success_per_task"]) == trained
    assert main(["evaluate", "--policy", str(tiny_teacher), "--out", str(tmp_path / "x"), "--tasks", "hammer-v3"]) == 2
    err = capsys.readouterr().err
    assert "was trained on" in err and "hammer-v3" in err and not (tmp_path / "x").exists()


def test_raising_the_episode_count_reuses_the_earlier_groups_and_equals_a_fresh_evaluation(tiny_teacher, tmp_path):
    import dataclasses

    from actdistill.artifacts import weights_hash_of
    from actdistill.pipeline import earlier_episodes, evaluate_stage

    sim = SimConfig(tasks=TINY_TASKS, image_size=32)
    w = weights_hash_of(tiny_teacher)
    two = EvalConfig(episodes_per_task=2, max_steps=12, workers=1, batch_envs=2, perturb="image-noise-low", trace=True)
    four = dataclasses.replace(two, episodes_per_task=4)
    evaluate_stage(tiny_teacher, w, two, sim, tmp_path / "grown", "t", {}, False)
    # another config (here the perturbation), another policy, or groups that do not line up: nothing to reuse
    assert len(earlier_episodes(tmp_path / "grown", four, sim, w)) == 2 * len(TINY_TASKS)
    assert earlier_episodes(tmp_path / "grown", dataclasses.replace(four, perturb="none"), sim, w) is None
    assert earlier_episodes(tmp_path / "grown", four, sim, "0" * 16) is None
    assert earlier_episodes(tmp_path / "grown", dataclasses.replace(four, batch_envs=3), sim, w) is None
    grown = evaluate_stage(tiny_teacher, w, four, sim, tmp_path / "grown", "t", {}, False)["row"]
    fresh = evaluate_stage(tiny_teacher, w, four, sim, tmp_path / "fresh", "t", {}, False)["row"]
    assert grown["episodes_reused"] == 2 * len(TINY_TASKS) and "episodes_reused" not in fresh
    a, b = (json.loads((tmp_path / d / "episodes.json").read_text()) for d in ("grown", "fresh"))
    assert a == b
    assert {k: v for k, v in grown.items() if k not in ("seconds", "episodes_reused")} == \
           {k: v for k, v in fresh.items() if k != "seconds"}
