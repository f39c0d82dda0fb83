import numpy as np

from actdistill.sim.base import placement_seeds
from actdistill.sim.metaworld_env import MT10Env


def test_two_envs_in_one_process_render_real_frames():
    a = MT10Env("reach-v3", camera="corner2", image_size=48)
    b = MT10Env("door-open-v3", camera="corner", image_size=48)
    try:
        oa, ob = a.reset(0), b.reset(0)
        for o in (oa, ob):
            assert o.image.shape == (48, 48, 3) and o.image.dtype == np.uint8
            assert o.image.mean() > 20 and o.image.std() > 10  # not black, not flat
        assert not np.array_equal(oa.image, ob.image)
        # rendering a again after b still gives a's scene
        assert np.array_equal(a.render(), oa.image)
    finally:
        a.close()
        b.close()


def test_placements_are_seeded_and_state_has_goal():
    env = MT10Env("reach-v3", image_size=32)
    try:
        s0, s1, s0b = env.reset(0).state, env.reset(1).state, env.reset(0).state
        assert s0.shape == (7,)
        np.testing.assert_array_equal(s0, s0b)
        assert not np.allclose(s0[4:], s1[4:])  # the goal moves with the seed
    finally:
        env.close()


def test_expert_solves_drawer_close():
    env = MT10Env("drawer-close-v3", image_size=32, max_steps=200)
    try:
        solved = 0
        for seed in range(3):
            env.reset(seed)
            for _ in range(200):
                _, ok = env.step(env.expert_action())
                if ok:
                    solved += 1
                    break
        assert solved == 3
    finally:
        env.close()


def test_eval_and_demo_seeds_are_disjoint():
    assert not set(placement_seeds("demo", 0, 1000)) & set(placement_seeds("eval", 0, 1000))


def _episode_bytes(demo) -> bytes:
    return demo.images.tobytes() + demo.states.tobytes() + demo.actions.tobytes()


def test_an_episode_does_not_depend_on_what_ran_before_it_in_the_same_env():
    """Meta-World moves the goal marker after its last mj_forward; without a forward after reset the first frame
    showed the previous episode's marker (push-v3 differed at frame 0), so a worker's history changed the data."""
    from actdistill.collect import rollout_expert, _WORKER_ENVS

    args = ("corner2", 32, 150)
    _WORKER_ENVS.clear()
    fresh = rollout_expert("push-v3", 5, *args)
    rollout_expert("push-v3", 7, *args)  # another placement first, in the same environment
    after = rollout_expert("push-v3", 5, *args)
    _WORKER_ENVS.clear()
    assert fresh is not None and after is not None
    assert _episode_bytes(fresh) == _episode_bytes(after)


def test_seeded_collection_is_bit_reproducible(tmp_path):
    """Two episodes collected twice (two worker processes, completion order free) give the same bytes and hash."""
    from actdistill.collect import collect
    from actdistill.config import CollectConfig, SimConfig
    from actdistill.data.hdf5 import read_demos

    cfg = CollectConfig(sim=SimConfig(tasks=("reach-v3", "push-v3"), image_size=32), demos_per_task=1, workers=2,
                        max_steps=150)
    a = collect(cfg, tmp_path / "a", progress=False)
    b = collect(cfg, tmp_path / "b", progress=False)
    da, db = read_demos(tmp_path / "a" / "demos.hdf5"), read_demos(tmp_path / "b" / "demos.hdf5")
    assert [_episode_bytes(d) for d in da.demos] == [_episode_bytes(d) for d in db.demos]
    assert a["content_hash"] == b["content_hash"] == da.content_hash == db.content_hash


def test_demo_test_and_validation_placements_are_disjoint():
    ranges = [set(placement_seeds("demo", s, 100_000)) for s in (0, 50)]  # eval.seed may go up to 999
    ranges += [set(placement_seeds(k, s, 100_000)) for k in ("eval", "val") for s in (0, 999)]
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            assert not a & b


def test_the_mt50_suite_names_every_task_once_with_groups_and_instructions():
    from actdistill.config import SimConfig
    from actdistill.sim import get_suite

    suite = get_suite("mt50")
    assert len(suite.tasks) == 50 == len(set(suite.tasks))
    sizes = {g: len(ts) for g, ts in suite.groups.items()}
    assert sizes == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    assert sorted(t for ts in suite.groups.values() for t in ts) == sorted(suite.tasks)  # a partition
    for t in suite.tasks:
        strings = suite.instructions[t]
        assert len(strings) == 3 == len(set(strings)), t
    assert set(get_suite("mt10").tasks) < set(suite.tasks)
    assert SimConfig(suite="mt50").tasks == suite.tasks  # the default list is the whole suite
    assert SimConfig(suite="mt50", tasks=("soccer-v3",)).tasks == ("soccer-v3",)
    import pytest

    from actdistill.config import ConfigError
    with pytest.raises(ConfigError, match="Unknown task 'soccer-v3'"):
        SimConfig(tasks=("soccer-v3",))  # not an MT10 task


def test_an_mt50_task_renders_and_its_expert_solves_it():
    from actdistill.sim import get_suite

    env = get_suite("mt50").make_env("coffee-button-v3", "corner2", 32, 200)
    try:
        obs = env.reset(0)
        assert obs.image.shape == (32, 32, 3) and obs.state.shape == (7,) and obs.instruction
        for _ in range(200):
            _, ok = env.step(env.expert_action())
            if ok:
                break
        assert ok
    finally:
        env.close()


def test_expert_success_counts_the_seeds_up_to_the_last_kept_demo():
    from actdistill.collect import expert_success

    # seeds 0..3 were tried before the last kept one (3): 3 successes, 1 failure; seed 5 failed after it
    assert expert_success({"a": [0, 2, 3], "b": [0, 1]}, {"a": [1, 5], "b": []}) == {"a": 0.75, "b": 1.0}


def test_the_one_task_environment_is_the_mt10_benchmark_environment():
    """MetaWorldEnv builds metaworld.MT1 for its one task (MT10 builds all ten): the same class, the same fully
    observable mode and, for a placement seed, the same raw observations under the same actions."""
    import metaworld
    import mujoco

    bench = metaworld.MT10(seed=0)
    raw = bench.train_classes["push-v3"]()
    raw.set_task(next(t for t in bench.train_tasks if t.env_name == "push-v3"))
    env = MT10Env("push-v3", image_size=32, max_steps=20)
    try:
        env.reset(11)
        raw._freeze_rand_vec, raw.seeded_rand_vec = False, True
        raw.seed(11)
        obs, _ = raw.reset()
        mujoco.mj_forward(raw.model, raw.data)  # as MetaWorldEnv.reset does (the goal marker's position)
        assert type(env._env) is type(raw) and not env._env._partially_observable
        np.testing.assert_array_equal(env._raw_obs, obs)
        for _ in range(10):
            act = env.expert_action()
            env.step(act)
            obs, *_ = raw.step(act)
            np.testing.assert_array_equal(env._raw_obs, obs)
    finally:
        env.close()
        raw.close()


def test_the_environments_of_a_task_share_one_renderer_and_each_renders_its_own_scene():
    """Environments of one task in one process share a renderer (one GL context); stepped interleaved, each gives
    the pictures a lone environment with its own fresh renderer gives for the same placement and actions, and the
    renderer is freed with the task's last environment."""
    from actdistill.sim import metaworld_env as m

    SIZE = 24  # a size no other test uses, so that no environment left open elsewhere shares this renderer

    def lone(seed, actions):
        env = MT10Env("push-v3", image_size=SIZE, max_steps=20)
        try:
            return [env.reset(seed).image] + [env.step(a)[0].image for a in actions]
        finally:
            env.close()

    a, b = (MT10Env("push-v3", image_size=SIZE, max_steps=20) for _ in range(2))
    try:
        assert a._renderer is b._renderer and m._RENDERERS[("push-v3", SIZE)][1] == 2
        seen = {11: [a.reset(11).image], 12: [b.reset(12).image]}
        acts = {11: [], 12: []}
        for _ in range(6):
            for seed, env in ((11, a), (12, b)):
                act = env.expert_action()
                acts[seed].append(act)
                seen[seed].append(env.step(act)[0].image)
        assert not np.array_equal(seen[11][-1], seen[12][-1])
    finally:
        a.close()
        b.close()
    assert ("push-v3", SIZE) not in m._RENDERERS
    for seed in (11, 12):
        for got, want in zip(seen[seed], lone(seed, acts[seed]), strict=True):
            np.testing.assert_array_equal(got, want)
