"""Observation perturbations (sim/perturb.py), gate statistics of the runner, and the robustness analysis."""

import numpy as np
import pytest
import torch

from actdistill.config import AblationConfig, ConfigError, EvalConfig, RobustnessConfig, SimConfig
from actdistill.sim.perturb import PERTURB_KINDS, PERTURB_PRESETS
from actdistill.sim.base import Observation
from actdistill.sim import get_suite
from actdistill.sim.perturb import IMPLEMENTED, make_perturbation

IMAGE_KINDS = ("image-noise", "brightness", "contrast", "camera-shift", "occlusion")


def _obs(seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(image=rng.integers(30, 220, (32, 32, 3), dtype=np.uint8),
                       state=rng.normal(0, 0.2, 7).astype(np.float32), instruction="open the drawer")


def test_every_kind_in_config_is_implemented():
    assert set(IMPLEMENTED) == set(PERTURB_KINDS)
    for name in PERTURB_PRESETS:
        assert make_perturbation(name).kind in PERTURB_KINDS


@pytest.mark.parametrize("spec", list(PERTURB_PRESETS))
def test_a_perturbation_changes_what_it_names_and_nothing_else(spec):
    obs = _obs()
    before = (obs.image.copy(), obs.state.copy(), obs.instruction)
    p = make_perturbation(spec)
    out = p.apply(obs, placement_seed=7, step=3, task="drawer-open-v3")
    # the input is not modified
    assert np.array_equal(obs.image, before[0]) and np.array_equal(obs.state, before[1]) and obs.instruction == before[2]
    assert out.image.dtype == np.uint8 and out.image.shape == obs.image.shape and out.state.dtype == np.float32
    image_changed = not np.array_equal(out.image, obs.image)
    state_changed = not np.array_equal(out.state, obs.state)
    text_changed = out.instruction != obs.instruction
    if p.kind in IMAGE_KINDS:
        assert image_changed and not state_changed and not text_changed
    elif p.kind == "state-noise":
        assert state_changed and not image_changed and not text_changed
        assert out.state[3] == obs.state[3]  # the gripper opening is not a position: untouched
        assert not np.array_equal(out.state[:3], obs.state[:3]) and not np.array_equal(out.state[4:], obs.state[4:])
    else:
        assert text_changed and not image_changed and not state_changed
        assert out.instruction == get_suite("mt10").instructions["drawer-open-v3"][int(p.level)]


def test_draws_are_a_function_of_placement_and_step():
    p = make_perturbation("image-noise-low")
    obs = _obs()
    a = p.apply(obs, 11, 5, "reach-v3").image
    assert np.array_equal(a, p.apply(obs, 11, 5, "reach-v3").image)
    assert not np.array_equal(a, p.apply(obs, 11, 6, "reach-v3").image)
    assert not np.array_equal(a, p.apply(obs, 12, 5, "reach-v3").image)
    # a static occluder and a camera offset stay where they are for the whole episode
    for spec in ("occlusion", "camera-shift"):
        q = make_perturbation(spec)
        plain = Observation(image=np.full((32, 32, 3), 10, np.uint8), state=obs.state, instruction="x")
        plain.image[:, :16] = 200
        assert np.array_equal(q.apply(plain, 3, 0, "reach-v3").image, q.apply(plain, 3, 50, "reach-v3").image)


def test_levels_have_their_stated_effect():
    obs = _obs()
    noisy = make_perturbation("image-noise:16").apply(obs, 0, 0, "reach-v3").image.astype(float)
    assert 12 < np.std(noisy - obs.image) < 18
    shifted = make_perturbation("camera-shift:3").apply(obs, 0, 0, "reach-v3").image
    assert any(np.array_equal(shifted[4:-4, 4:-4], obs.image[4 - dy:28 - dy, 4 - dx:28 - dx])
               for dy in range(-3, 4) for dx in range(-3, 4) if max(abs(dy), abs(dx)) >= 2)
    occ = make_perturbation("occlusion:0.25").apply(obs, 0, 0, "reach-v3").image
    assert (occ == 128).all(axis=-1).sum() >= 64  # an 8x8 grey square at 32x32
    assert make_perturbation("none").apply(obs, 0, 0, "reach-v3") is obs


@pytest.mark.parametrize("bad", ["fog", "image-noise", "image-noise:lots", "paraphrase:3", "occlusion:0.95", "none:1"])
def test_an_unknown_perturbation_or_level_is_one_sentence(bad):
    with pytest.raises(ConfigError) as err:
        EvalConfig(perturb=bad)
    assert str(err.value).count(". ") == 0 and "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        RobustnessConfig(perturbations=("image-noise-low", bad))


@pytest.mark.parametrize("cls", [RobustnessConfig, AblationConfig])
def test_perturbation_lists_refuse_none_and_repeats_alike(cls):
    with pytest.raises(ConfigError, match=f"{cls.__name__}.perturbations lists brightness twice"):
        cls(perturbations=("brightness", "paraphrase-1", "brightness"))
    with pytest.raises(ConfigError, match="lists 'none'"):
        cls(perturbations=("none",))
    assert cls(perturbations=("brightness", "paraphrase-1")).perturbations == ("brightness", "paraphrase-1")


class _Router:
    """A fake routed policy: its gate logits for a batch are the batch's mean pixel value minus a per-layer offset."""

    gate_threshold = 0.0

    def __init__(self, offsets):
        self.offsets = np.asarray(offsets, float)

    def gate_logits(self, batch):
        return torch.tensor(batch["observation.image"].reshape(len(batch["task"]), -1).mean(1)[:, None] - self.offsets)


def test_gate_flips_switches_and_margins_counted_from_hand_made_gates():
    from actdistill.evaluate import _count_gates, gate_summary

    policy = _Router([0.0, 0.0])
    gates: dict = {}
    active = np.array([True, True])
    clean = [Observation(np.full((2, 2, 3), v, np.uint8), np.zeros(7, np.float32), "x") for v in (1, 3)]
    # step 1: seen logits (perturbed) row0 = [+1, -1], row1 = [+1, +1]; clean logits = [1, 1] and [3, 3]
    seen = np.array([[1.0, -1.0], [1.0, 1.0]])
    _count_gates(gates, policy, seen, clean, True, None, active)
    # step 2: row 1 finished; row0 = [-2, -1]
    seen2 = np.array([[-2.0, -1.0], [5.0, 5.0]])
    _count_gates(gates, policy, seen2, clean, True, seen >= 0, np.array([True, False]))
    assert gates["calls"].tolist() == [2, 1] and gates["pairs"].tolist() == [1, 0]
    assert gates["flips"].tolist() == [[1, 2], [0, 0]]  # row0: layer 0 flipped at step 2, layer 1 at both
    assert gates["switches"].tolist() == [[1, 0], [0, 0]]
    assert np.allclose(gates["margin"], [[3.0, 2.0], [1.0, 1.0]])
    s = gate_summary([{k: v[i].tolist() for k, v in gates.items()} for i in range(2)], perturbed=True)
    assert s["decisions"] == 3 and s["flip_rate_per_layer"] == pytest.approx([1 / 3, 2 / 3], abs=1e-4)
    assert s["switch_rate_per_layer"] == pytest.approx([1.0, 0.0]) and s["logit_margin_per_layer"] == pytest.approx([4 / 3, 1.0], abs=1e-3)


def test_two_policies_see_the_same_perturbed_observations():
    """The runner perturbs what the policy sees, identically for any policy, and never what the simulator steps."""
    from actdistill.evaluate import run_episodes

    class Recorder:
        def __init__(self):
            self.seen = []

        def reset(self):
            pass

        def select_action(self, obs):
            self.seen.append({k: (np.array(v) if k != "task" else list(v)) for k, v in obs.items()})
            return np.zeros((len(obs["task"]), 4), np.float32)

    sim = SimConfig(tasks=("reach-v3",), image_size=32)
    runs = {}
    for name, perturb in (("a", "image-noise-low"), ("b", "image-noise-low"), ("clean", "none"), ("para", "paraphrase-2")):
        rec, envs = Recorder(), {}
        try:
            run_episodes(rec, "reach-v3", [10_000_000, 10_000_001], sim, 3, envs, perturb=perturb)
        finally:
            for e in envs.get("reach-v3", []):
                e.close()
        runs[name] = rec.seen
    for sa, sb, sc in zip(runs["a"], runs["b"], runs["clean"]):
        assert np.array_equal(sa["observation.image"], sb["observation.image"])
        assert not np.array_equal(sa["observation.image"], sc["observation.image"])
        assert np.array_equal(sa["observation.state"], sc["observation.state"]) and sa["task"] == sc["task"]
    assert runs["para"][0]["task"] == [get_suite("mt10").instructions["reach-v3"][2]] * 2
    assert np.array_equal(runs["para"][2]["observation.image"], runs["clean"][2]["observation.image"])


def test_a_non_finite_state_on_the_perturbed_path_is_one_sentence(tiny_teacher):
    from actdistill.models.policy import ObservationError
    from actdistill.teacher import load_teacher

    policy, _ = load_teacher(tiny_teacher)
    obs = _obs()
    obs.state[0] = np.nan
    seen = make_perturbation("state-noise").apply(obs, 0, 0, "reach-v3")
    with pytest.raises(ObservationError, match="NaN"):
        policy.select_action({"observation.image": seen.image, "observation.state": seen.state, "task": seen.instruction})


def test_layer_usage_around_gripper_events_and_lost_episodes():
    from actdistill.bench.robustness import event_steps, routing_failures

    near = event_steps([1, 1, 1, -1, -1, -1, -1, 1], window=1)
    assert near.tolist() == [False, False, True, True, True, False, True, True]
    student = [{"task": "t", "seed": 1, "success": True, "trace": {"layers": [2, 2, 6, 6, 6, 2, 2, 4], "gripper": [1, 1, 1, -1, -1, -1, -1, 1]}},
               {"task": "t", "seed": 2, "success": False, "trace": {"layers": [3, 3], "gripper": [1, 1]}}]
    teacher = [{"task": "t", "seed": 1, "success": True}, {"task": "t", "seed": 2, "success": True}]
    r = routing_failures(student, teacher, RobustnessConfig(event_window=1, final_steps=2))
    assert r["layers_near_gripper_events"] == pytest.approx(np.mean([6, 6, 6, 2, 4]))
    assert r["layers_elsewhere"] == pytest.approx(np.mean([2, 2, 2, 3, 3]))
    assert r["layers_before_success"] == pytest.approx(3.0) and r["layers_earlier_in_successes"] == pytest.approx(4.0)
    assert [(e["task"], e["seed"]) for e in r["lost_where_teacher_succeeded"]] == [("t", 2)]
    assert r["mean_layers_in_those"] == 3.0 and r["mean_layers_in_successes"] == pytest.approx(3.75)


def test_drop_difference_is_paired_per_placement():
    from actdistill.evaluate import drop_difference

    clean = {"per_episode_success": {"t": [1, 1, 1, 1]}}
    student = {"clean": clean, "perturbed": {"per_episode_success": {"t": [0, 0, 1, 1]}}}  # drops 0.5
    teacher = {"clean": clean, "perturbed": {"per_episode_success": {"t": [0, 1, 1, 1]}}}  # drops 0.25
    d = drop_difference(student, teacher, 200)
    assert d[0] == pytest.approx(0.25) and d[1] <= d[0] <= d[2]
