"""Meta-World MT10 and MT50 with CPU offscreen rendering, registered as the suites "mt10" and "mt50".

One `MetaWorldEnv` per task: a Meta-World v3 environment whose object and goal
placement is set from an integer placement seed. The environments of one task in
one process share one `mujoco.Renderer` (a GL context with the task's meshes and
textures, about 140 MB and 0.3 s to build on this CPU): each render builds the
scene from its own environment's model and data, so each gets its own picture.
Shadows, reflections and multisampling are switched off: the same picture at
~12 ms instead of ~160 ms.
"""

from __future__ import annotations

import atexit
import functools
import os
from typing import Any

import numpy as np

from actdistill.constants import ACTION_DIM, STATE_DIM
from actdistill.errors import ConfigError
from actdistill.sim.base import Observation, Suite, instruction_for, register_suite
from actdistill.sim.instructions import INSTRUCTIONS, PARAPHRASES

MT10_TASKS: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
# Meta-World MT50 (metaworld 3.x order); MT10 is a subset
MT50_TASKS: tuple[str, ...] = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3", "coffee-pull-v3",
    "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3", "door-open-v3",
    "door-unlock-v3", "hand-insert-v3", "drawer-close-v3", "drawer-open-v3", "faucet-open-v3", "faucet-close-v3",
    "hammer-v3", "handle-press-side-v3", "handle-press-v3", "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3",
    "pick-place-wall-v3", "pick-out-of-hole-v3", "pick-place-v3", "plate-slide-v3", "plate-slide-side-v3",
    "plate-slide-back-v3", "plate-slide-back-side-v3", "peg-insert-side-v3", "peg-unplug-side-v3", "soccer-v3",
    "stick-push-v3", "stick-pull-v3", "push-v3", "push-wall-v3", "push-back-v3", "reach-v3", "reach-wall-v3",
    "shelf-place-v3", "sweep-into-v3", "sweep-v3", "window-open-v3", "window-close-v3",
)
CAMERAS: tuple[str, ...] = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")

_UPSIDE_DOWN_CAMERAS = ("corner",)  # Meta-World's `corner` camera renders flipped vertically
_POLICY_NAMES = {
    "reach-v3": "SawyerReachV3Policy",
    "push-v3": "SawyerPushV3Policy",
    "pick-place-v3": "SawyerPickPlaceV3Policy",
    "door-open-v3": "SawyerDoorOpenV3Policy",
    "drawer-open-v3": "SawyerDrawerOpenV3Policy",
    "drawer-close-v3": "SawyerDrawerCloseV3Policy",
    "button-press-topdown-v3": "SawyerButtonPressTopdownV3Policy",
    "peg-insert-side-v3": "SawyerPegInsertionSideV3Policy",
    "window-open-v3": "SawyerWindowOpenV3Policy",
    "window-close-v3": "SawyerWindowCloseV3Policy",
}


def _import_sim():
    if not os.environ.get("MUJOCO_GL") and not os.environ.get("DISPLAY"):
        # library code does not set the environment for its caller; the CLI sets MUJOCO_GL=egl for itself
        raise RuntimeError("Offscreen rendering needs MUJOCO_GL set before mujoco is imported (no display here): "
                           "run with MUJOCO_GL=egl, or set os.environ['MUJOCO_GL'] = 'egl' at the top of your script.")
    try:
        import metaworld
        import mujoco
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError(
            f"Meta-World is not importable ({err}); install it with `pip install metaworld mujoco packaging` "
            "and, for offscreen rendering, the Debian packages libegl1 libegl-mesa0 libgl1-mesa-dri."
        ) from err
    return metaworld, mujoco


_TASK_CACHE: dict[str, Any] = {}
_SUITE_TASKS = {"mt10": MT10_TASKS, "mt50": MT50_TASKS}


def _single_task(task: str):
    """metaworld.MT1 for one task, built once per process. Its task objects carry the same environment class and
    fully observable mode as MT10's or MT50's; building MT10 or MT50 instead would construct and sample every task's
    environment (about 5 s and 26 s here) for a process that may need two of them."""
    metaworld, _ = _import_sim()
    if task not in _TASK_CACHE:
        _TASK_CACHE[task] = metaworld.MT1(task, seed=0)
    return _TASK_CACHE[task]


class MetaWorldEnv:
    """One Meta-World task (of MT10 or MT50) with seeded placements, RGB rendering and its scripted expert."""

    def __init__(self, task: str, camera: str = "corner2", image_size: int = 64, max_steps: int = 300,
                 benchmark: str = "mt10"):
        _, mujoco = _import_sim()
        names = _SUITE_TASKS[benchmark]
        if task not in names:
            raise ConfigError(f"Unknown {benchmark.upper()} task '{task}'; choose from {', '.join(names)}.")
        bench = _single_task(task)
        self.task = task
        self.instruction = instruction_for(task)
        self.camera = camera
        self.image_size = image_size
        self.max_steps = max_steps
        self._env = bench.train_classes[task]()
        # Any task object of this class sets the fully observable mode (goal in the observation);
        # the placement itself is overwritten from our own seed in `reset`.
        self._env.set_task(next(t for t in bench.train_tasks if t.env_name == task))
        self._env.max_path_length = max(max_steps, 1)
        names = [self._env.model.camera(i).name for i in range(self._env.model.ncam)]
        if camera not in names:
            raise ConfigError(f"Unknown camera '{camera}' for {task}; choose from {', '.join(names)}.")
        self._env.model.vis.quality.offsamples = 0
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = names.index(camera)
        self._option = mujoco.MjvOption()
        self._render_key = (task, image_size)
        self._renderer = _acquire_renderer(self._render_key, self._env.model, image_size)
        self._mujoco = mujoco
        self._raw_obs: np.ndarray | None = None
        self.steps = 0
        self._expert = None

    # -- placement ---------------------------------------------------------------------------
    def reset(self, placement_seed: int) -> Observation:
        # Meta-World samples the placement itself (with its own rejection rules, e.g. goal far enough from
        # the object) from its seeded generator, so a placement is a pure function of the seed.
        self._env._freeze_rand_vec = False
        self._env.seeded_rand_vec = True
        self._env.seed(int(placement_seed))
        raw, _ = self._env.reset()
        self._env._freeze_rand_vec = True  # keep this placement until the next reset
        # Meta-World moves sites (the goal marker) in the model after its last mj_forward, so without this the
        # first frame shows the previous episode's marker: an episode's bytes would depend on what ran before it.
        self._mujoco.mj_forward(self._env.model, self._env.data)
        self._raw_obs = raw
        self.steps = 0
        return self._observe()

    def step(self, action: np.ndarray) -> tuple[Observation, bool]:
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"Meta-World actions have {ACTION_DIM} values, got shape {tuple(action.shape)}.")
        if not np.all(np.isfinite(action)):
            raise ValueError("The policy returned a NaN or infinite action.")
        raw, _reward, _term, _trunc, info = self._env.step(np.clip(action, -1.0, 1.0))
        self._raw_obs = raw
        self.steps += 1
        return self._observe(), bool(info["success"])

    # -- observation ---------------------------------------------------------------------------
    def render(self) -> np.ndarray:
        mj = self._mujoco
        # the scene of this environment's own model and data (a placement may move sites in the model)
        mj.mjv_updateScene(self._env.model, self._env.data, self._option, None, self._camera, mj.mjtCatBit.mjCAT_ALL,
                           self._renderer.scene)
        self._renderer.scene.flags[mj.mjtRndFlag.mjRND_SHADOW] = 0
        self._renderer.scene.flags[mj.mjtRndFlag.mjRND_REFLECTION] = 0
        img = self._renderer.render()
        if self.camera in _UPSIDE_DOWN_CAMERAS:
            img = img[::-1]
        return np.ascontiguousarray(img)

    def _observe(self) -> Observation:
        raw = self._raw_obs
        state = np.concatenate([raw[:4], raw[-3:]]).astype(np.float32)
        assert state.shape == (STATE_DIM,)
        return Observation(image=self.render(), state=state, instruction=self.instruction)

    # -- scripted expert -----------------------------------------------------------------------
    def expert_action(self) -> np.ndarray:
        if self._expert is None:
            import warnings

            from metaworld import policies

            # the MT10 experts by name (as the MT10 data was collected); the rest from Meta-World's own map
            self._expert = (getattr(policies, _POLICY_NAMES[self.task])() if self.task in _POLICY_NAMES
                            else policies.ENV_POLICY_MAP[self.task]())
            warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
        return np.clip(self._expert.get_action(self._raw_obs), -1.0, 1.0).astype(np.float32)

    def close(self) -> None:
        if self._renderer is not None:
            _release_renderer(self._render_key)
            self._renderer = None
        self._env.close()


MT10Env = MetaWorldEnv  # the name earlier code and tests use

# Difficulty groups of MT50 as LeRobot's Meta-World config (`DIFFICULTY_TO_TASKS`) and the SmolVLA tables use
# them (28 easy, 11 medium, 6 hard, 5 very hard).
MT50_GROUPS: dict[str, tuple[str, ...]] = {
    "easy": ("button-press-v3", "button-press-topdown-v3", "button-press-topdown-wall-v3", "button-press-wall-v3",
             "coffee-button-v3", "dial-turn-v3", "door-close-v3", "door-lock-v3", "door-open-v3", "door-unlock-v3",
             "drawer-close-v3", "drawer-open-v3", "faucet-close-v3", "faucet-open-v3", "handle-press-v3",
             "handle-press-side-v3", "handle-pull-v3", "handle-pull-side-v3", "lever-pull-v3", "plate-slide-v3",
             "plate-slide-back-v3", "plate-slide-back-side-v3", "plate-slide-side-v3", "reach-v3", "reach-wall-v3",
             "window-close-v3", "window-open-v3", "peg-unplug-side-v3"),
    "medium": ("basketball-v3", "bin-picking-v3", "box-close-v3", "coffee-pull-v3", "coffee-push-v3", "hammer-v3",
               "peg-insert-side-v3", "push-wall-v3", "soccer-v3", "sweep-v3", "sweep-into-v3"),
    "hard": ("assembly-v3", "hand-insert-v3", "pick-out-of-hole-v3", "pick-place-v3", "push-v3", "push-back-v3"),
    "very_hard": ("shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3", "pick-place-wall-v3"),
}


# (task, image size) -> [renderer, environments using it]. A renderer is built from the first environment's model;
# the others of the task have the same meshes and textures (Meta-World builds every environment of a task from the
# same XML), and `render` passes each environment's own model and data when it builds the scene.
_RENDERERS: dict[tuple[str, int], list] = {}


def _acquire_renderer(key: tuple[str, int], model, image_size: int):
    _, mujoco = _import_sim()
    entry = _RENDERERS.get(key)
    if entry is None:
        entry = _RENDERERS[key] = [mujoco.Renderer(model, image_size, image_size), 0]
        _close_at_exit()
    entry[1] += 1
    return entry[0]


def _release_renderer(key: tuple[str, int]) -> None:
    entry = _RENDERERS[key]
    entry[1] -= 1
    if entry[1] == 0:  # the task's last environment: free the GL context
        entry[0].close()
        del _RENDERERS[key]


@functools.cache
def _close_at_exit() -> None:
    """Free, at exit, the renderers of environments never closed, while mujoco's EGL bindings still work: left to
    interpreter shutdown, their destructors find the bindings torn down and each prints a traceback. Registered
    once a renderer exists, so after mujoco's own exit handler (which terminates the EGL display) and hence run
    before it (exit handlers run last registered, first run)."""
    def close_all() -> None:
        while _RENDERERS:
            _, (renderer, _) = _RENDERERS.popitem()
            renderer.close()

    atexit.register(close_all)


def _maker(benchmark: str):
    def make(task: str, camera: str, image_size: int, max_steps: int) -> MetaWorldEnv:
        return MetaWorldEnv(task, camera=camera, image_size=image_size, max_steps=max_steps, benchmark=benchmark)
    return make


_TEXTS = {t: (INSTRUCTIONS[t], *PARAPHRASES[t]) for t in MT50_TASKS}
MT10 = register_suite(Suite(key="mt10", name="metaworld-MT10", tasks=MT10_TASKS, state_dim=STATE_DIM,
                            action_dim=ACTION_DIM, make_env=_maker("mt10"), cameras=CAMERAS,
                            instructions={t: _TEXTS[t] for t in MT10_TASKS},
                            groups={g: tuple(t for t in ts if t in MT10_TASKS) for g, ts in MT50_GROUPS.items()}))
MT50 = register_suite(Suite(key="mt50", name="metaworld-MT50", tasks=MT50_TASKS, state_dim=STATE_DIM,
                            action_dim=ACTION_DIM, make_env=_maker("mt50"), cameras=CAMERAS, instructions=_TEXTS,
                            groups=MT50_GROUPS))
