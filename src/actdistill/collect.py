"""`actdistill collect`: scripted Meta-World experts write demonstrations (docs/design.md pipeline stage 1).

Each task's expert runs on seeded random placements; only successful
episodes are kept, and every placement seed tried is recorded so that
evaluation draws from a disjoint range.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from actdistill.artifacts import atomic_write_json, make_header, write_header
from actdistill.config import CollectConfig
from actdistill.constants import CONFIG_FILE, DATASET_FILE
from actdistill.data.hdf5 import Demo, DemoWriter
from actdistill.sim import get_suite, placement_seeds
from actdistill.sim.base import import_suites, suite_modules

_WORKER_ENVS: dict = {}  # per worker process: one environment per task, built on first use


def rollout_expert(task: str, seed: int, camera: str, image_size: int, max_steps: int, suite: str = "mt10") -> Demo | None:
    """One expert episode on placement `seed`; None if the expert fails within `max_steps`."""
    key = (suite, task, camera, image_size, max_steps)
    if key not in _WORKER_ENVS:
        _WORKER_ENVS[key] = get_suite(suite).make_env(task, camera, image_size, max_steps)
    env = _WORKER_ENVS[key]
    obs = env.reset(seed)
    images, states, actions = [], [], []
    for _ in range(max_steps):
        action = env.expert_action()
        images.append(obs.image)
        states.append(obs.state)
        actions.append(action)
        obs, success = env.step(action)
        if success:
            return Demo(task=task, instruction=env.instruction, placement_seed=seed,
                        images=np.stack(images), states=np.stack(states), actions=np.stack(actions))
    return None


def _job(args: tuple) -> tuple[str, int, Demo | None]:
    task, seed, camera, image_size, max_steps, suite = args
    return task, seed, rollout_expert(task, seed, camera, image_size, max_steps, suite)


def expert_success(kept: dict[str, list[int]], failed: dict[str, list[int]]) -> dict[str, float]:
    """Per task, the scripted expert's success rate on the placements up to its last kept demo: every seed
    below it was tried (kept demos are the lowest successful seeds), so these are the first k seeds of the
    range with len(kept) successes among them."""
    out = {}
    for t, seeds in kept.items():
        last = max(seeds) if seeds else -1
        tried = len(seeds) + sum(1 for f in failed[t] if f < last)
        out[t] = round(len(seeds) / tried, 4) if tried else float("nan")
    return out


def collect(cfg: CollectConfig, out_dir: Path, progress: bool = True) -> dict:
    """Collect `cfg.demos_per_task` successful demos per task into `out_dir/demos.hdf5`."""
    suite = get_suite(cfg.sim.suite)
    suite.check_tasks(cfg.sim.tasks)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    n = cfg.demos_per_task
    kept: dict[str, dict[int, Demo]] = {t: {} for t in cfg.sim.tasks}
    failed: dict[str, list[int]] = {t: [] for t in cfg.sim.tasks}
    next_index = {t: 0 for t in cfg.sim.tasks}
    all_seeds = {t: placement_seeds("demo", cfg.seed, 100_000) for t in cfg.sim.tasks}
    bar = tqdm(total=n * len(cfg.sim.tasks), desc="collect", unit="demo", disable=not progress)
    ctx = mp.get_context("spawn")
    with ctx.Pool(cfg.workers, initializer=import_suites, initargs=(suite_modules(),)) as pool:
        while True:
            jobs = []
            for t in cfg.sim.tasks:
                missing = n - len(kept[t])
                if missing <= 0:
                    continue
                extra = missing + max(1, missing // 10)  # a few spares: experts fail ~1% of the time
                for _ in range(extra):
                    jobs.append((t, all_seeds[t][next_index[t]], cfg.sim.camera, cfg.sim.image_size, cfg.max_steps,
                                 cfg.sim.suite))
                    next_index[t] += 1
                    if next_index[t] > 20 * n + 100:
                        raise RuntimeError(f"The {t} expert keeps failing (only {len(kept[t])} of {n} demos); raise collect.max_steps.")
            if not jobs:
                break
            for task, seed, demo in pool.imap_unordered(_job, jobs):
                if demo is None:
                    failed[task].append(seed)
                else:
                    # every success of the round is held: which ones arrive first depends on worker timing
                    if len(kept[task]) < n:
                        bar.update(1)
                        bar.set_postfix(task=task.replace("-v3", ""), steps=len(demo.actions))
                    kept[task][seed] = demo
            # Keep the n lowest successful seeds of each task: every seed below them was tried in this or an earlier
            # round, so the result is a function of the seeds alone, not of which worker finished first.
            for t in cfg.sim.tasks:
                kept[t] = dict(sorted(kept[t].items())[:n])
                failed[t].sort()
    bar.close()

    header = make_header("collect", cfg.to_dict(), inputs={})
    env_args = {"benchmark": suite.name, "camera": cfg.sim.camera, "image_size": cfg.sim.image_size,
                "tasks": list(cfg.sim.tasks)}
    writer = DemoWriter(out_dir / DATASET_FILE, header=header, env_args=env_args)
    try:
        for t in cfg.sim.tasks:
            for seed in sorted(kept[t]):
                writer.add(kept[t][seed])
    except BaseException:
        writer.abort()
        raise
    used = {t: sorted(kept[t]) for t in cfg.sim.tasks}
    writer.close(extra_attrs={"placement_seeds": used, "failed_seeds": failed})
    atomic_write_json(out_dir / CONFIG_FILE, cfg.to_dict())
    frames = {t: int(sum(len(d.actions) for d in kept[t].values())) for t in cfg.sim.tasks}
    summary = {"dataset": str(out_dir / DATASET_FILE), "content_hash": writer.content_hash,
               "demos": n * len(cfg.sim.tasks), "frames": sum(frames.values()),
               "frames_per_task": frames, "expert_failures": {t: len(v) for t, v in failed.items()},
               "expert_success": (rate := expert_success(used, failed)),
               "expert_success_per_group": {g: round(float(np.mean([rate[t] for t in ts])), 4)
                                            for g, ts in suite.groups.items() if ts and all(t in rate for t in ts)},
               "seconds": round(time.time() - t0, 1)}
    write_header(out_dir, {**header, "summary": summary})
    return summary
