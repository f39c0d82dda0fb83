"""`actdistill bench`: every method at every budget on the same data, placements and episodes.

Rows: teacher; actdistill-rho<r> for each budget; at each baseline budget static-prune, static-prune-distill,
router-kd, early-exit and scratch (or the ones `bench.baselines` names), each matched to the compute the
ActDistill student of that budget executes in closed loop. Columns: success (per task, per difficulty group,
mean with 95% CI, hard tasks), success under the held-out instruction paraphrases, the paired difference to the
ActDistill row of the same budget (paired bootstrap over the same placements), executed-layer fraction (overall
and per difficulty group), decoder and policy FLOPs per action query, batch-1 latency measured interleaved in one
process, speedup, ideal speedup. Finished rows whose config and inputs are unchanged are reused by fingerprint.
Results go to `<suite>.json` (mt10.json, mt50.json) in the run's bench folder.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from actdistill.artifacts import ArtifactError, atomic_write_bytes, atomic_write_json, save_figure
from actdistill.config import BenchConfig, RunConfig
from actdistill.evaluate import format_delta, paired_bootstrap
from actdistill.pipeline import results_file
from actdistill.provenance import check_provenance, provenance
from actdistill.sim import get_suite


ROW_FIELDS = ("name", "success_mean", "success_ci95", "success_per_task", "success_hard", "episodes_per_task", "seeds",
              "seed_success",
              "layers_executed_frac", "decoder_gflops", "policy_gflops", "latency_ms_median", "speedup", "ideal_speedup",
              "speedup_of_ideal", "peak_memory_mb")


_TOL = 1e-9  # interval ends and means are computed in different summation orders


# written by every bench since the validation split and the difficulty groups existed (earlier files lack them)
LATER_FIELDS = ("split",)
LATER_ROW_FIELDS = ("success_per_group",)


def check_bench_results(results: dict) -> None:
    """Raise ArtifactError, in one sentence, unless `results` has the shape `mt10.json` / `mt50.json` promise."""
    for key in ("benchmark", "config", "provenance", "dataset_content_hash", "hard_tasks", "rows", *LATER_FIELDS):
        if key not in results:
            raise ArtifactError(f"bench results lack the field '{key}'.")
    if results["split"] != "test":
        raise ArtifactError(f"bench results report the {results['split']!r} placements; reported numbers come from the "
                            f"'test' placements only.")
    try:
        check_provenance(results["provenance"], "the bench results")
    except ValueError as err:
        raise ArtifactError(str(err)) from err
    for r in results["rows"]:
        name = r.get("name", "?")
        missing = [k for k in ROW_FIELDS if k not in r]
        if missing:
            raise ArtifactError(f"bench row '{name}' lacks the fields {', '.join(missing)}.")
        lo, hi = r["success_ci95"]
        if not lo - _TOL <= r["success_mean"] <= hi + _TOL or not 0 <= lo <= hi <= 1:
            raise ArtifactError(f"bench row '{name}' has a success CI {r['success_ci95']} that does not bracket its mean.")
        if not 0 <= r["layers_executed_frac"] <= 1 or not 0 <= r["decoder_gflops"] <= r["policy_gflops"]:
            raise ArtifactError(f"bench row '{name}' has an executed-layer fraction or FLOP count out of range.")
        has_delta = not name.startswith(("teacher", "actdistill"))
        if ("delta_vs_actdistill" in r) != has_delta:
            raise ArtifactError(f"bench row '{name}' should {'' if has_delta else 'not '}carry delta_vs_actdistill.")
        if name.startswith("teacher") and "delta_vs_teacher" in r:
            raise ArtifactError("the bench's teacher row should not carry delta_vs_teacher.")
        for d in (r.get("delta_vs_actdistill"), r.get("delta_vs_teacher")):  # delta_vs_teacher: since session 26
            if d and not d[1] - _TOL <= d[0] <= d[2] + _TOL:
                raise ArtifactError(f"bench row '{name}' has a paired-difference CI that does not bracket its mean.")
        missing = [k for k in LATER_ROW_FIELDS if k not in r]
        if missing:
            raise ArtifactError(f"bench row '{name}' lacks the fields {', '.join(missing)}.")
        for g, v in r["success_per_group"].items():
            if not 0 <= v <= 1:
                raise ArtifactError(f"bench row '{name}' has a success of {v} in group '{g}', outside [0, 1].")
        if "success_paraphrase" in r:
            lo, hi = r["success_paraphrase_ci95"]
            if not lo - _TOL <= r["success_paraphrase"] <= hi + _TOL or not 0 <= lo <= hi <= 1:
                raise ArtifactError(f"bench row '{name}' has a paraphrase success CI that does not bracket its mean.")


def run_bench(run_dir: Path, cfg: BenchConfig, progress: bool = True) -> dict:
    """The teacher, ActDistill at every budget and seed, then every registered baseline at every baseline budget
    (only the training seeds `cfg.seed_list` names, when it names any: one part of a split bench)."""
    from actdistill.bench.rows import BASELINES, Bench, chosen_baselines
    from actdistill.distill.stage import check_always_run

    chosen = chosen_baselines(cfg.baselines or tuple(BASELINES), "bench.baselines")
    bench = Bench(run_dir, cfg, progress)
    for rho in cfg.actdistill_budgets:  # before any row: hybrid depth must fit every budget
        check_always_run(bench.rc.distill.always_run, rho, bench.teacher.num_layers)
    bench.evaluate_row("teacher", bench.teacher_dir, bench.teacher_hash)
    for rho in cfg.actdistill_budgets:
        for k in cfg.seeds_run():
            bench.actdistill_row(rho, k)
    if cfg.baseline_budgets:
        bench.count_training_compute()
    for last in (False, True):  # the longest trainings last: every cheaper row is worth having first
        for rho in cfg.baseline_budgets:
            for k in cfg.seeds_run():
                for b, spec in BASELINES.items():
                    if b in chosen and spec.last == last and (spec.per_seed or k == 0):
                        spec.build(bench, rho, k, bench.matched_fraction(rho, k))
    paraphrased = bench.paraphrase_rows()
    extra = {"training_compute": {k: {"steps": v["steps"], "pflops": v["flops"] / 1e15} for k, v in bench.training.items()},
             "inputs": {"teacher": bench.teacher_hash, "cache": bench.cache.fingerprint}}  # what bench-merge checks
    results = finish_bench(bench.rows, bench.policies, bench.groups, cfg, bench.tasks, bench.data, bench.out, bench.rc, extra,
                           paraphrased)
    results["stages"] = bench.stages.rows
    results["results_file"] = results_file(bench.sim.suite)
    if cfg.seed_list:  # a part: kept aside too, so the next part's results file does not replace it
        results["part_file"] = keep_part(bench.out, results["results_file"], cfg.seed_list)
    return results


def part_name(results_name: str, seed_list: tuple[int, ...]) -> str:
    """`mt10_seed1.json` for the part of seed 1, `mt10_seed1-2.json` for seeds 1 and 2."""
    return results_name.replace(".json", "_seed" + "-".join(map(str, sorted(seed_list))) + ".json")


def keep_part(out: Path, results_name: str, seed_list: tuple[int, ...]) -> Path:
    """A copy of a part's results file (and its table) under `out/parts/`, named by its seeds, for `bench-merge`."""
    parts = out / "parts"
    parts.mkdir(exist_ok=True)
    name = part_name(results_name, seed_list)
    for src, dst in ((results_name, name), (results_name.replace(".json", ".md"), name.replace(".json", ".md"))):
        atomic_write_bytes(parts / dst, (out / src).read_bytes())
    return parts / name


COST_FIELDS = ("decoder_gflops", "policy_gflops", "latency_ms_median", "speedup", "peak_memory_mb", "weights_mb",
               "activations_mb", "latency_ms_median_compiled", "speedup_compiled")


def finish_bench(rows: dict, policies: dict, groups: dict, cfg: BenchConfig, tasks: tuple, data, out: Path, rc: RunConfig,
                 extra: dict | None = None, paraphrased: dict[str, list[dict]] | None = None) -> dict:
    """One row per method and budget, pooled over its training seeds; cost and paraphrase columns from its first
    policy (`paraphrased`: row name -> that policy's evaluations under each held-out paraphrase); written to `out`."""
    from actdistill.pipeline import layer_usage_report

    costs = measure_costs(policies, groups, cfg, data)
    para = {g: paraphrase_columns(rows[spec["members"][0]], paraphrased[g], cfg.bootstrap_samples)
            for g, spec in groups.items() if paraphrased and paraphrased.get(g)}
    results = assemble_bench(rows, groups, costs, para, cfg, rc, tasks, data.content_hash, extra)
    for spec in groups.values():
        first = rows[spec["members"][0]]
        if spec["method"] == "actdistill" and first.get("layer_usage_per_task"):
            layer_usage_report(first, out / f"eval-{spec['members'][0]}")  # per-task layer usage: markdown + heatmap
    write_bench(results, out, get_suite(rc.collect.sim.suite).key)
    return results


def measure_costs(policies: dict, groups: dict, cfg: BenchConfig, data) -> dict[str, dict]:
    """Per group, on its first policy (a seed changes the weights, not the architecture): decoder and policy FLOPs
    per action query, batch-1 latency measured interleaved with every other group in this process, speedup over the
    teacher, peak memory."""
    from actdistill.bench.cost import sample_frames
    from actdistill.bench.flops import policy_flops
    from actdistill.bench.latency import interleaved_latency
    from actdistill.bench.memory import peak_memory
    from actdistill.registry import load_policy

    frames = sample_frames(data, cfg.latency_frames)
    loaded = {g: load_policy(policies[spec["members"][0]]) for g, spec in groups.items()}
    latency = interleaved_latency(loaded, frames, repeats=cfg.latency_repeats)
    compiled = None
    if cfg.compile:
        compiled = interleaved_latency({n: _compiled(p) for n, p in loaded.items()}, frames, repeats=cfg.latency_repeats)
    costs = {}
    for g, policy in loaded.items():
        fl = [policy_flops(policy, f) for f in frames]
        mem = max((peak_memory(policy, f) for f in frames), key=lambda m: m["peak_memory_mb"])
        costs[g] = {"decoder_gflops": float(np.mean([x["decoder_flops"] for x in fl])) / 1e9,
                    "policy_gflops": float(np.mean([x["policy_flops"] for x in fl])) / 1e9,
                    "latency_ms_median": latency[g], "speedup": latency["teacher"] / latency[g],
                    "peak_memory_mb": mem["peak_memory_mb"], "weights_mb": mem["weights_mb"],
                    "activations_mb": mem["activations_mb"]}
        if compiled:
            costs[g].update(latency_ms_median_compiled=compiled[g], speedup_compiled=compiled["teacher"] / compiled[g])
    return costs


def assemble_bench(rows: dict, groups: dict, costs: dict, para: dict, cfg: BenchConfig, rc: RunConfig, tasks: tuple,
                   content_hash: str | None, extra: dict | None = None) -> dict:
    """The results file from every member's evaluation row (`rows`, by name), the groups (method, budget, members and
    their seed indices), each group's cost and paraphrase columns; checked against the schema."""
    teacher_row = rows["teacher"]
    hard = [t for t in tasks if teacher_row["success_per_task"][t] < 0.9]
    suite = get_suite(rc.collect.sim.suite)
    suite_groups = {g: tuple(t for t in ts if t in tasks) for g, ts in suite.groups.items()}
    out_rows = []
    for name, spec in groups.items():
        members = [rows[m] for m in spec["members"]]
        row = pool_seeds(name, members, tasks, suite_groups)
        row.update(para.get(name, {}))
        row.update(method=spec["method"], rho=spec["rho"],
                   success_hard=float(np.mean([row["success_per_task"][t] for t in hard])) if hard else None,
                   **costs[name])
        ref = f"actdistill-rho{spec['rho']}"
        if spec["method"] not in ("teacher", "actdistill") and ref in groups:
            a, b = seed_aligned(spec, groups[ref], rows)
            row["delta_vs_actdistill"], row["delta_vs_actdistill_per_seed"] = seed_paired_difference(
                a, b, cfg.bootstrap_samples)
        if spec["method"] != "teacher":  # the teacher (one policy) paired with every training seed of the row
            row["delta_vs_teacher"], row["delta_vs_teacher_per_seed"] = seed_paired_difference(
                [rows[m]["per_episode_success"] for m in spec["members"]], [teacher_row["per_episode_success"]],
                cfg.bootstrap_samples)
        out_rows.append(row)
    t_pol = next(r["policy_gflops"] for r in out_rows if r["name"] == "teacher")
    for r in out_rows:
        r["ideal_speedup"] = t_pol / r["policy_gflops"]
        r["speedup_of_ideal"] = r["speedup"] / r["ideal_speedup"]
    # every member's whole evaluation row (per-episode success included): what `bench-merge` pools across parts
    seed_rows = [{**rows[m], "group": g, "seed": k}
                 for g, spec in groups.items() for m, k in zip(spec["members"], spec["seeds"])]
    results = {"benchmark": suite.name, "split": cfg.eval.split,
               "config": {"run": rc.to_dict(), "bench": cfg.to_dict()},
               "provenance": provenance(), "dataset_content_hash": content_hash, "hard_tasks": hard,
               "groups": {g: list(ts) for g, ts in suite_groups.items() if ts},
               **(extra or {}), "rows": out_rows, "seed_rows": seed_rows}
    check_bench_results(results)
    return results


def seed_aligned(spec: dict, ref: dict, rows: dict) -> tuple[list, list]:
    """Per-episode successes of a group and of its ActDistill reference, seed by seed over the seeds both have; a
    group of one member (early exit, trained on nothing) is paired with every seed of the reference."""
    if len(spec["members"]) == 1:
        return [rows[spec["members"][0]]["per_episode_success"]], [rows[m]["per_episode_success"] for m in ref["members"]]
    mine, theirs = dict(zip(spec["seeds"], spec["members"])), dict(zip(ref["seeds"], ref["members"]))
    common = sorted(set(mine) & set(theirs))
    if not common:
        raise ArtifactError(f"bench group '{spec['members'][0]}' shares no training seed with its ActDistill row.")
    return [rows[mine[k]]["per_episode_success"] for k in common], [rows[theirs[k]]["per_episode_success"] for k in common]


def write_bench(results: dict, out: Path, suite_key: str) -> Path:
    """`<suite>.json`, its markdown tables and the Pareto (and per-group usage) plots in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    name = results_file(suite_key)
    atomic_write_json(out / name, results)
    rows = results["rows"]
    table = bench_table(rows)
    if results["groups"] or any("success_paraphrase" in r for r in rows):
        table += "\n" + group_table(rows, list(results["groups"]))
    atomic_write_bytes(out / name.replace(".json", ".md"), table.encode())
    pareto_plot(rows, out / "pareto.png", results["benchmark"])
    if results["groups"] and any("layers_executed_per_group" in r for r in rows):
        group_usage_plot(rows, list(results["groups"]), out / "group_usage.png")
    return out / name


PARAPHRASE_FIELDS = ("success_paraphrase", "success_paraphrase_ci95", "success_paraphrase_per_task",
                     "success_paraphrase_each", "paraphrase_episodes_per_task", "instruction_minus_paraphrase")


def paraphrase_columns(row: dict, evals: list[dict], samples: int) -> dict:
    """Success under the held-out paraphrases (pooled over them, on the first placements of each task), and the
    paired gap to the training instruction on the same placements (instruction minus paraphrase)."""
    from actdistill.evaluate import wilson_ci

    tasks = list(row["per_episode_success"])
    para = {t: [x for e in evals for x in e["per_episode_success"][t]] for t in tasks}
    # each paraphrase episode is paired with the training-instruction episode of the same placement
    instr = {t: [x for e in evals for x in row["per_episode_success"][t][:len(e["per_episode_success"][t])]] for t in tasks}
    k, n = sum(sum(v) for v in para.values()), sum(len(v) for v in para.values())
    per_task = {t: float(np.mean(v)) for t, v in para.items()}
    return {"success_paraphrase": float(np.mean(list(per_task.values()))), "success_paraphrase_ci95": list(wilson_ci(k, n)),
            "success_paraphrase_per_task": per_task,
            "success_paraphrase_each": [float(e["success_mean"]) for e in evals],
            "paraphrase_episodes_per_task": len(evals[0]["per_episode_success"][tasks[0]]),
            "instruction_minus_paraphrase": paired_bootstrap(instr, para, samples)}


def pool_seeds(name: str, members: list[dict], tasks: tuple, groups: dict[str, tuple[str, ...]] | None = None) -> dict:
    """The evaluation rows of one method's training seeds as one row: per-task success averaged over seeds, a
    Wilson CI over every pooled episode, each seed's mean success and their spread (sample std, min, max); per
    difficulty group (`groups`, restricted to the tasks evaluated) the mean success and, for routed rows, the
    executed-layer fraction, every task weighing the same."""
    from actdistill.evaluate import wilson_ci

    row = {k: v for k, v in members[0].items() if k not in ("per_episode_success",)}
    per_task = {t: float(np.mean([r["success_per_task"][t] for r in members])) for t in tasks}
    episodes = {t: [x for r in members for x in r["per_episode_success"][t]] for t in tasks}
    k_all = sum(sum(v) for v in episodes.values())
    n_all = sum(len(v) for v in episodes.values())
    seed_success = [float(r["success_mean"]) for r in members]
    row.update(name=name, success_mean=float(np.mean(list(per_task.values()))), success_per_task=per_task,
               success_ci95=list(wilson_ci(k_all, n_all)),
               success_ci95_per_task={t: list(wilson_ci(sum(v), len(v))) for t, v in episodes.items()},
               layers_executed_frac=float(np.mean([r.get("layers_executed_frac", 1.0) for r in members])),
               seeds=len(members), seed_success=seed_success,
               seed_spread={"std": float(np.std(seed_success, ddof=1)) if len(members) > 1 else 0.0,
                            "min": min(seed_success), "max": max(seed_success)})
    if all(r.get("layer_usage_per_task") for r in members):
        row["layer_usage_per_task"] = {t: np.mean([r["layer_usage_per_task"][t] for r in members], axis=0).round(4).tolist()
                                       for t in tasks}
    in_group = {g: ts for g, ts in (groups or {}).items() if ts}
    row["success_per_group"] = {g: float(np.mean([per_task[t] for t in ts])) for g, ts in in_group.items()}
    if "layer_usage_per_task" in row:
        row["layers_executed_per_group"] = {g: float(np.mean([np.mean(row["layer_usage_per_task"][t]) for t in ts]))
                                            for g, ts in in_group.items()}
    return row


def seed_paired_difference(a: list[dict[str, list[int]]], b: list[dict[str, list[int]]], samples: int,
                           seed: int = 0) -> tuple[list[float], list[float]]:
    """Mean (a - b) success over training seeds with a 95% CI, and each seed's own difference.

    Seed i of `a` is paired with seed i of `b` (a row with one seed, like early exit, is paired with every seed of
    the other). With one seed on both sides this is `paired_bootstrap`; with several, each bootstrap sample
    redraws the seed pairs and then the episodes within each pair (placements stay paired), so the interval
    covers the spread between training runs as well as the episode noise.
    """
    n = max(len(a), len(b))
    a, b = (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)
    if len(a) != len(b):
        raise ValueError(f"Seed-paired differences need the same number of seeds on both sides, got {len(a)} and {len(b)}.")
    per_seed = [paired_bootstrap(x, y, samples=1, seed=seed)[0] for x, y in zip(a, b)]
    if n == 1:
        return paired_bootstrap(a[0], b[0], samples, seed), per_seed
    rng = np.random.default_rng(seed)
    tasks = list(a[0])
    diffs = [[np.asarray(x[t], float) - np.asarray(y[t], float) for t in tasks] for x, y in zip(a, b)]  # [seed][task]
    boots = np.empty(samples)
    for i in range(samples):
        picks = rng.integers(0, n, n)
        boots[i] = np.mean([np.mean([d[rng.integers(0, len(d), len(d))].mean() for d in diffs[p]]) for p in picks])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return [float(np.mean(per_seed)), float(lo), float(hi)], per_seed


def _compiled(policy):
    """A compiled copy (the eager policy stays as it is for FLOP counting)."""
    policy = copy.deepcopy(policy)
    policy.predict = torch.compile(policy.predict)
    return policy


def bench_table(rows: list[dict]) -> str:
    head = ("| row | success (95% CI) | per training seed | hard tasks | delta vs ActDistill [95% CI] | per-seed delta | "
            "delta vs teacher [95% CI] | layers | decoder GFLOPs | policy GFLOPs | latency ms | speedup | ideal | peak MiB |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lo, hi = r["success_ci95"]
        d_s, dt_s = format_delta(r.get("delta_vs_actdistill")), format_delta(r.get("delta_vs_teacher"))
        per_d = "/".join(f"{x:+.3f}" for x in r.get("delta_vs_actdistill_per_seed", [])) if r.get("seeds", 1) > 1 else ""
        per_s = "/".join(f"{x:.3f}" for x in r["seed_success"]) if r.get("seeds", 1) > 1 else ""
        if per_s:
            per_s += f" (sd {r['seed_spread']['std']:.3f})"
        hard = f"{r['success_hard']:.3f}" if r.get("success_hard") is not None else ""
        lines.append(f"| {r['name']} | {r['success_mean']:.3f} ({lo:.2f}-{hi:.2f}) | {per_s} | {hard} | {d_s} | {per_d} | {dt_s} | "
                     f"{r['layers_executed_frac']:.2f} | {r['decoder_gflops']:.4f} | {r['policy_gflops']:.4f} | "
                     f"{r['latency_ms_median']:.2f} | {r['speedup']:.2f} | {r['ideal_speedup']:.2f} | "
                     f"{r['peak_memory_mb']:.1f} |")
    return "\n".join(lines) + "\n"


def group_table(rows: list[dict], groups: list[str]) -> str:
    """Success and executed-layer fraction per difficulty group, and success under the held-out paraphrases."""
    head = ("| row | " + "".join(f"{g} success | " for g in groups) + "".join(f"{g} layers | " for g in groups)
            + "paraphrase success (95% CI) | instruction - paraphrase [95% CI] |")
    lines = [head, "|" + "---|" * (3 + 2 * len(groups))]
    for r in rows:
        succ = "".join(f"{r['success_per_group'][g]:.3f} | " if g in r["success_per_group"] else " | " for g in groups)
        used = r.get("layers_executed_per_group", {})
        lay = "".join(f"{used[g]:.2f} | " if g in used else " | " for g in groups)
        para = gap = ""
        if "success_paraphrase" in r:
            lo, hi = r["success_paraphrase_ci95"]
            para = f"{r['success_paraphrase']:.3f} ({lo:.2f}-{hi:.2f})"
            if "success_paraphrase_per_seed" in r:  # a merged bench whose parts each ran their own seed's paraphrases
                para += "; seeds " + " / ".join(f"{v:.3f}" for v in r["success_paraphrase_per_seed"].values())
            gap = format_delta(r["instruction_minus_paraphrase"])
        lines.append(f"| {r['name']} | {succ}{lay}{para} | {gap} |")
    return "\n".join(lines) + "\n"


def group_usage_plot(rows: list[dict], groups: list[str], path: Path) -> None:
    """Executed-layer fraction per difficulty group of every routed row: does the router spend more on hard tasks?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routed = [r for r in rows if "layers_executed_per_group" in r]
    width = 0.8 / len(routed)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(groups) * len(routed)), 3.5))
    for i, r in enumerate(routed):
        ax.bar([j + i * width for j in range(len(groups))],
               [r["layers_executed_per_group"].get(g, np.nan) for g in groups], width, label=r["name"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups)
    ax.set_xlabel("difficulty group")
    ax.set_ylabel("decoder layers executed (fraction)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def pareto_plot(rows: list[dict], path: Path, benchmark: str = "MT10") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    methods: dict[str, list] = {}
    for r in rows:
        methods.setdefault(r.get("method", r["name"]), []).append(r)
    for m, rs in methods.items():
        rs = sorted(rs, key=lambda r: r["policy_gflops"])
        ax.plot([r["policy_gflops"] for r in rs], [r["success_mean"] for r in rs], marker="o", label=m)
    ax.set_xlabel("policy GFLOPs per action query")
    ax.set_ylabel(f"mean {benchmark} success")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
