"""`actdistill evaluate`: closed-loop success on MT10 held-out placements (docs/design.md pipeline stage 6).

Any object with `select_action(observation)` / `reset()` can be evaluated.
Episodes of a task run `batch_envs` at a time in lock-step with one batched
policy call per step; finished environments stop stepping and rendering.
Placement seeds come from a range disjoint from the demonstrations'.
A policy that reports which decoder layers it ran (`pop_layer_mask`) gets its
layer usage counted at every policy call of every live episode.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from actdistill.artifacts import atomic_write_bytes, atomic_write_json
from actdistill.config import EvalConfig, SimConfig
from actdistill.constants import OBS_IMAGE, OBS_STATE, RESULTS_FILE, RESULTS_TABLE, TASK
from actdistill.provenance import provenance
from actdistill.sim import get_suite, placement_seeds
from actdistill.sim.base import import_suites, suite_modules
from actdistill.sim.perturb import make_perturbation


def wilson_ci(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def format_delta(d: list[float] | None) -> str:
    """A paired difference [point, lo, hi] as "+0.123 [+0.045, +0.201]" (empty when there is none)."""
    return f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" if d else ""


def paired_bootstrap(a: dict[str, list[int]], b: dict[str, list[int]], samples: int, seed: int = 0) -> list[float]:
    """Mean over tasks of (a - b) success with a 95% CI, resampling episodes (placements) within each task."""
    rng = np.random.default_rng(seed)
    tasks = list(a)
    diffs = [np.asarray(a[t], float) - np.asarray(b[t], float) for t in tasks]
    point = float(np.mean([d.mean() for d in diffs]))
    boots = np.mean([d[rng.integers(0, len(d), (samples, len(d)))].mean(1) for d in diffs], axis=0)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return [point, float(lo), float(hi)]


def drop_difference(policy: dict, reference: dict, samples: int) -> list[float]:
    """(policy's drop) - (reference's drop), per placement, as mean over tasks with a paired 95% CI.

    `policy` and `reference`: {"clean": row, "perturbed": row} with per-episode successes on the same placements."""
    def drop(r: dict) -> dict[str, list[int]]:
        return {t: (np.asarray(r["clean"]["per_episode_success"][t]) - np.asarray(r["perturbed"]["per_episode_success"][t])).tolist()
                for t in r["clean"]["per_episode_success"]}

    return paired_bootstrap(drop(policy), drop(reference), samples)


_WORKER: dict[str, Any] = {}


def _init_worker(factory: Callable[[], Any] | None, policy: Any, threads: int, modules: tuple[str, ...] = ()) -> None:
    torch.set_num_threads(threads)
    import_suites(modules)
    _WORKER["policy"] = policy if policy is not None else factory()
    _WORKER["envs"] = {}


@dataclass
class _Log:
    """What a lock-step group of episodes records besides success: layers, gate logits, traces, gate statistics."""

    b: int
    record_logits: bool
    trace: bool
    routed: bool
    layer_sum: np.ndarray | None = None
    calls: np.ndarray = field(init=False)
    gate_logits: list = field(init=False)
    traces: list = field(init=False)
    gates: dict = field(default_factory=dict)
    prev_dec: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.calls = np.zeros(self.b, dtype=np.int64)
        self.gate_logits = [[] for _ in range(self.b)]
        self.traces = [{"layers": [], "gripper": []} for _ in range(self.b)]

    def step(self, policy, actions: np.ndarray, active: np.ndarray, clean: list, perturbed: bool) -> None:
        mask = policy.pop_layer_mask() if hasattr(policy, "pop_layer_mask") else None
        if mask is not None:
            m = mask.detach().cpu().numpy().astype(np.int64)  # (B, L)
            self.layer_sum = np.zeros_like(m) if self.layer_sum is None else self.layer_sum
            self.layer_sum[active] += m[active]
            self.calls[active] += 1
            if self.record_logits or self.routed:
                logits = policy.last_gate_logits().detach().cpu().numpy()  # (B, L)
            if self.record_logits:
                for i in np.flatnonzero(active):
                    self.gate_logits[i].append(logits[i])
            if self.routed:
                _count_gates(self.gates, policy, logits, clean, perturbed, self.prev_dec, active)
                self.prev_dec = logits >= policy.gate_threshold
        if self.trace:  # layers: those of the forward that produced this step's action (None before any forward)
            for i in np.flatnonzero(active):
                last = self.traces[i]["layers"][-1] if self.traces[i]["layers"] else None
                self.traces[i]["layers"].append(int(m[i].sum()) if mask is not None else last)
                self.traces[i]["gripper"].append(round(float(actions[i, -1]), 3))

    def fill(self, i: int, ep: dict) -> dict:
        ep["policy_calls"] = int(self.calls[i])
        if self.layer_sum is not None:
            ep["layers_executed"] = self.layer_sum[i].tolist()
        if self.record_logits:
            ep["gate_logits"] = np.stack(self.gate_logits[i]) if self.gate_logits[i] else np.zeros((0, 0))
        if self.trace:
            ep["trace"] = self.traces[i]
        if self.routed and self.gates:
            ep["gates"] = {k: v[i].tolist() for k, v in self.gates.items()}
        return ep


def run_episodes(policy, task: str, seeds: list[int], sim: SimConfig, max_steps: int, envs_cache: dict,
                 keep_frames: int = 0, record_logits: bool = False, perturb: str = "none",
                 trace: bool = False) -> list[dict]:
    """Run one lock-step group of episodes of `task`, one per placement seed.

    `record_logits` keeps the router's gate logits of every live step (for budget calibration). `perturb` names
    the perturbation the policy's observations get (sim/perturb.py; the simulator is not touched). `trace` keeps,
    per step, the layers executed and the gripper command and, for a policy with a router (`gate_logits`), per
    layer: decisions that differ from the previous step's, decisions that the perturbation flipped (the same
    frame unperturbed through the router) and the summed distance of the gate logits from the threshold.
    """
    suite = get_suite(sim.suite)
    perturbation = make_perturbation(perturb)
    for other in [t for t in envs_cache if t != task]:  # one task's environments at a time: each holds a renderer
        for env in envs_cache.pop(other):
            env.close()
    pool = envs_cache.setdefault(task, [])
    while len(pool) < len(seeds):
        pool.append(suite.make_env(task, sim.camera, sim.image_size, max_steps))
    envs = pool[: len(seeds)]
    obs = [env.reset(s) for env, s in zip(envs, seeds)]
    b = len(seeds)
    active = np.ones(b, dtype=bool)
    success = np.zeros(b, dtype=bool)
    steps = np.zeros(b, dtype=np.int64)
    frames: list[list[np.ndarray]] = [[] for _ in range(min(keep_frames, b))]
    log = _Log(b, record_logits, trace, routed=trace and hasattr(policy, "gate_logits"))
    policy.reset()
    for _t in range(max_steps):
        seen = [perturbation.apply(o, s, int(k), task) for o, s, k in zip(obs, seeds, steps)]
        actions = policy.select_action(observation_batch(seen))
        actions = actions.detach().cpu().numpy() if torch.is_tensor(actions) else np.asarray(actions)
        if actions.shape != (b, suite.action_dim) or not np.isfinite(actions).all():
            raise ValueError(f"The policy returned actions of shape {actions.shape} (or non-finite values); expected "
                             f"({b}, {suite.action_dim}).")
        log.step(policy, actions, active, obs, perturbation.active)
        for i in np.flatnonzero(active):
            if i < len(frames):
                frames[i].append(seen[i].image)
            obs[i], ok = envs[i].step(actions[i])
            steps[i] += 1
            if ok:
                success[i] = True
                active[i] = False
        if not active.any():
            break
    out = []
    for i, s in enumerate(seeds):
        ep = log.fill(i, {"task": task, "seed": int(s), "success": bool(success[i]), "steps": int(steps[i])})
        if i < len(frames):
            ep["frames"] = frames[i]
        out.append(ep)
    return out


def observation_batch(observations: list) -> dict:
    """The policy's batched observation of a list of simulator observations."""
    return {OBS_IMAGE: np.stack([o.image for o in observations]), OBS_STATE: np.stack([o.state for o in observations]),
            TASK: [o.instruction for o in observations]}


def _count_gates(gates: dict, policy, logits: np.ndarray, clean: list, perturbed: bool,
                 prev_dec: np.ndarray | None, active: np.ndarray) -> None:
    """Add this step's gate statistics of the live rows to `gates` (per row and layer)."""
    thr = policy.gate_threshold
    dec = logits >= thr
    if not gates:
        shape = logits.shape
        gates.update(calls=np.zeros(shape[0], np.int64), margin=np.zeros(shape), switches=np.zeros(shape, np.int64),
                     pairs=np.zeros(shape[0], np.int64), flips=np.zeros(shape, np.int64))
    a = active
    gates["calls"][a] += 1
    gates["margin"][a] += np.abs(logits[a] - thr)
    if prev_dec is not None:
        live = a & (gates["calls"] > 1)
        gates["switches"][live] += (dec[live] != prev_dec[live])
        gates["pairs"][live] += 1
    if perturbed:
        ref_dec = policy.gate_logits(observation_batch(clean)).detach().cpu().numpy() >= thr
        gates["flips"][a] += (dec[a] != ref_dec[a])


class PolicyCopy:
    """A policy object as a picklable factory: `evaluate` with workers > 1 gives each worker process its own copy
    (a student being calibrated, which has no folder yet); in-process evaluation uses the object itself."""

    def __init__(self, policy) -> None:
        self.policy = policy

    def __call__(self):
        return self.policy


def _job(args: tuple) -> list[dict]:
    task, seeds, sim, max_steps, keep, perturb, trace, record_logits = args
    return run_episodes(_WORKER["policy"], task, seeds, sim, max_steps, _WORKER["envs"], keep, record_logits, perturb,
                        trace)


def evaluate(policy_or_spec, cfg: EvalConfig, sim: SimConfig, out_dir: Path | None = None, name: str = "policy",
             exclude_seeds: dict[str, list[int]] | None = None, progress: bool = True,
             seeds_per_task: dict[str, list[int]] | None = None, record_logits: bool = False,
             return_episodes: bool = False, earlier: list[dict] | None = None):
    """Closed-loop evaluation; returns (and writes under `out_dir`) per-task and mean success with 95% CIs.

    Placements are the held-out evaluation seeds unless `seeds_per_task` names others (calibration uses
    training placements). `return_episodes` also returns the per-episode records. `earlier`: records of an
    evaluation of the same policy and config with fewer episodes (pipeline.earlier_episodes); a lock-step group
    whose placements they all cover is taken from them instead of being run again (an episode is a function of
    its group's placements, so the records are the ones this evaluation would produce).
    """
    get_suite(sim.suite).check_tasks(sim.tasks)
    t0 = time.time()
    held_out = placement_seeds("eval" if cfg.split == "test" else "val", cfg.seed, cfg.episodes_per_task)
    seeds = {t: list((seeds_per_task or {}).get(t, held_out))[: cfg.episodes_per_task] for t in sim.tasks}
    for task, used in (exclude_seeds or {}).items():
        overlap = set(used) & set(seeds.get(task, []))
        if overlap:
            raise ValueError(f"Evaluation placement seeds overlap the {task} demonstrations ({len(overlap)} seeds); choose another eval.seed.")
    jobs, reused = [], []
    known = {(e["task"], e["seed"]): e for e in earlier or []}
    for task in sim.tasks:
        for g in range(0, len(seeds[task]), cfg.batch_envs):
            keep = max(0, cfg.gifs_per_task - g)
            group = seeds[task][g:g + cfg.batch_envs]
            if keep == 0 and not record_logits and all((task, s) in known for s in group):
                reused += [known[(task, s)] for s in group]
            else:
                jobs.append((task, group, sim, cfg.max_steps, keep, cfg.perturb, cfg.trace, record_logits))
    episodes: list[dict] = list(reused)
    bar = tqdm(total=sum(len(v) for v in seeds.values()), desc=f"evaluate {name}", unit="ep", disable=not progress, dynamic_ncols=True)

    def _collect(results: list[dict]) -> None:
        episodes.extend(results)
        bar.update(len(results))
        done = [e["success"] for e in episodes]
        bar.set_postfix(success=f"{np.mean(done):.2f}")

    is_spec = not hasattr(policy_or_spec, "select_action")  # a picklable factory (registry.PolicySpec, PolicyCopy)
    if cfg.workers > 1 and is_spec:
        ctx = mp.get_context("spawn")
        threads = max(1, torch.get_num_threads() // cfg.workers)
        with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(policy_or_spec, None, threads, suite_modules())) as pool:
            for res in pool.imap_unordered(_job, jobs):
                _collect(res)
    else:
        policy = policy_or_spec() if is_spec else policy_or_spec
        envs: dict = {}
        try:
            for task, s, sim_, max_steps, keep, perturb, trace, rec in jobs:
                _collect(run_episodes(policy, task, s, sim_, max_steps, envs, keep, rec, perturb, trace))
        finally:
            for pool_envs in envs.values():
                for env in pool_envs:
                    env.close()
    bar.close()
    episodes.sort(key=lambda e: (sim.tasks.index(e["task"]), e["seed"]))
    result = summarize(episodes, sim.tasks, name, cfg, get_suite(sim.suite).groups)
    result["seconds"] = round(time.time() - t0, 1)
    if reused:
        result["episodes_reused"] = len(reused)
    if out_dir is not None:
        write_results(result, episodes, Path(out_dir))
    return (result, episodes) if return_episodes else result


def summarize(episodes: list[dict], tasks: tuple[str, ...], name: str, cfg: EvalConfig,
              groups: dict[str, tuple[str, ...]] | None = None) -> dict:
    """Per-task and mean success with Wilson CIs, mean success per difficulty group (over the group's tasks that
    were evaluated), and per-layer usage for routed policies."""
    per_task = {}
    ci_task = {}
    usage_task = {}
    for task in tasks:
        eps = [e for e in episodes if e["task"] == task]
        k = sum(e["success"] for e in eps)
        per_task[task] = k / len(eps)
        ci_task[task] = list(wilson_ci(k, len(eps)))
        if eps and "layers_executed" in eps[0]:
            calls = sum(e["policy_calls"] for e in eps)
            usage_task[task] = (np.sum([e["layers_executed"] for e in eps], axis=0) / max(calls, 1)).round(4).tolist()
    k = sum(e["success"] for e in episodes)
    row: dict[str, Any] = {
        "name": name,
        "success_mean": float(np.mean(list(per_task.values()))),
        "success_ci95": list(wilson_ci(k, len(episodes))),
        "success_per_task": per_task,
        "success_ci95_per_task": ci_task,
        "episodes_per_task": cfg.episodes_per_task,
        "max_steps": cfg.max_steps,
        "mean_episode_steps": float(np.mean([e["steps"] for e in episodes])),
        "placement_seeds": sorted({e["seed"] for e in episodes}),
        "per_episode_success": {t: [int(e["success"]) for e in episodes if e["task"] == t] for t in tasks},
    }
    in_group = {g: [t for t in ts if t in per_task] for g, ts in (groups or {}).items()}
    row["success_per_group"] = {g: float(np.mean([per_task[t] for t in ts])) for g, ts in in_group.items() if ts}
    if usage_task:
        calls = sum(e["policy_calls"] for e in episodes)
        executed = np.sum([e["layers_executed"] for e in episodes], axis=0)
        row["layers_executed_frac"] = float(executed.sum() / (max(calls, 1) * len(executed)))
        row["layer_usage_per_task"] = usage_task
    if cfg.perturb != "none":
        row["perturb"] = cfg.perturb
    gated = [e["gates"] for e in episodes if "gates" in e]
    if gated:
        row["gate_stats"] = gate_summary(gated, perturbed=cfg.perturb != "none")
    return row


def gate_summary(gated: list[dict], perturbed: bool) -> dict:
    """Per layer: the share of gate decisions a perturbation flipped (against the same frame unperturbed), the share
    that changed from one control step to the next, and the mean distance of the gate logit from its threshold."""
    calls = max(sum(g["calls"] for g in gated), 1)
    pairs = max(sum(g["pairs"] for g in gated), 1)
    margin = np.sum([g["margin"] for g in gated], axis=0) / calls
    switches = np.sum([g["switches"] for g in gated], axis=0) / pairs
    out = {"decisions": int(calls), "switch_rate_per_layer": switches.round(5).tolist(),
           "switch_rate": float(switches.mean()), "logit_margin_per_layer": margin.round(4).tolist()}
    if perturbed:
        flips = np.sum([g["flips"] for g in gated], axis=0) / calls
        out.update(flip_rate_per_layer=flips.round(5).tolist(), flip_rate=float(flips.mean()))
    return out


def markdown_table(rows: list[dict], tasks: tuple[str, ...]) -> str:
    short = [t.replace("-v3", "") for t in tasks]
    head = "| policy | mean success (95% CI) | layers executed | " + " | ".join(short) + " |"
    sep = "|" + "---|" * (3 + len(tasks))
    lines = [head, sep]
    for r in rows:
        lo, hi = r["success_ci95"]
        frac = r.get("layers_executed_frac")
        frac_s = f"{frac:.2f}" if frac is not None else "1.00"
        cells = " | ".join(f"{r['success_per_task'][t]:.2f}" for t in tasks)
        lines.append(f"| {r['name']} | {r['success_mean']:.3f} ({lo:.2f}-{hi:.2f}) | {frac_s} | {cells} |")
    return "\n".join(lines) + "\n"


def write_results(result: dict, episodes: list[dict], out_dir: Path) -> None:
    import imageio.v2 as imageio

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / RESULTS_FILE, {**result, "provenance": provenance()})
    tasks = tuple(result["success_per_task"])
    atomic_write_bytes(out_dir / RESULTS_TABLE, markdown_table([result], tasks).encode())
    atomic_write_json(out_dir / "episodes.json",
                      [{k: v for k, v in e.items() if k not in ("frames", "gate_logits")} for e in episodes])
    for e in episodes:
        if e.get("frames"):
            frames = [np.kron(f, np.ones((3, 3, 1), dtype=np.uint8)) for f in e["frames"]]
            tag = "success" if e["success"] else "fail"
            imageio.mimsave(out_dir / f"{e['task']}_seed{e['seed']}_{tag}.gif", frames, duration=0.05)
