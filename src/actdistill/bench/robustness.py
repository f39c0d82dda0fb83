"""`actdistill robustness`: how the routed student degrades under noisy and unusual inputs (docs/design.md
"Robustness").

Rows: the teacher, the ActDistill student of each budget, the same-budget baselines (static-prune and
router-KD by default) and any ablation variants named (chosen on validation by `actdistill ablate`), each
evaluated clean and under every perturbation on the same test placements, with the same perturbation draws
(sim/perturb.py), so that every comparison is paired. Reported per cell: success with
its 95% CI, the paired drop against the same policy clean, and the layers executed. Per perturbation, the
student's drop beyond its teacher's (and beyond the static model's of the same budget), paired over placements.
For routed policies: the share of gate decisions each perturbation flips (against the same frame unperturbed)
and the share that change between consecutive control steps, per layer. From the clean traces: layer usage
around gripper open/close commands and before success against the rest, and the student's failures where the
teacher succeeded on the same placement.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from actdistill.artifacts import atomic_write_bytes, atomic_write_json, read_json, save_figure
from actdistill.bench.ablation import variant_policy
from actdistill.bench.rows import BASELINES, Bench, chosen_baselines
from actdistill.config import BenchConfig, RobustnessConfig
from actdistill.evaluate import drop_difference, format_delta, paired_bootstrap
from actdistill.provenance import provenance
from actdistill.sim import get_suite


def run_robustness(run_dir: Path, cfg: RobustnessConfig, progress: bool = True) -> dict:
    chosen_baselines(cfg.baselines, "robustness.baselines")
    run_dir = Path(run_dir)
    variants = {(rho, v): variant_policy(run_dir, rho, v) for rho in cfg.budgets for v in cfg.variants}  # before work
    out = run_dir / "robustness"
    bcfg = BenchConfig(actdistill_budgets=cfg.budgets, baseline_budgets=cfg.budgets, eval=cfg.eval)
    bench = Bench(run_dir, bcfg, progress, eval_root=out / "clean")
    bench.evaluate_row("teacher", bench.teacher_dir, bench.teacher_hash)
    for rho in cfg.budgets:
        bench.actdistill_row(rho, 0)
    for (rho, v), folder in variants.items():
        bench.evaluate_row(bench.member(f"actdistill+{v}", rho, 0), folder, bench.weights_hash_of(folder))
    if "scratch" in cfg.baselines:
        bench.count_training_compute()
    for rho in cfg.budgets:
        for b in cfg.baselines:
            BASELINES[b].build(bench, rho, 0, bench.matched_fraction(rho, 0))
    conditions = ("clean",) + cfg.perturbations
    cells: dict[str, dict[str, dict]] = {"clean": dict(bench.rows)}
    for p in cfg.perturbations:
        ecfg = dataclasses.replace(cfg.eval, perturb=p)
        cells[p] = {name: bench.evaluate_policy(name, folder, bench.weights_hash_of(folder), ecfg, out / p, f" ({p})")
                    for name, folder in bench.policies.items()}
    episodes = {c: {name: read_json(out / c / f"eval-{name}" / "episodes.json", "the episode records")
                    for name in bench.policies} for c in conditions}
    results = {"benchmark": get_suite(bench.sim.suite).name, "kind": "robustness", "split": cfg.eval.split,
               "config": {"run": bench.rc.to_dict(), "robustness": cfg.to_dict()}, "provenance": provenance(),
               "dataset_content_hash": bench.data.content_hash,
               "rows": robustness_rows(cells, conditions, cfg.bootstrap_samples),
               "student_vs_reference": drop_comparisons(cells, cfg, bench.groups),
               "gate_stability": {n: {c: cells[c][n]["gate_stats"] for c in conditions if "gate_stats" in cells[c][n]}
                                  for n in bench.policies if "gate_stats" in cells["clean"][n]},
               "where_routing_fails": {n: routing_failures(episodes["clean"][n], episodes["clean"]["teacher"], cfg)
                                       for n in bench.policies if n.startswith("actdistill")},
               "stages": bench.stages.rows}
    atomic_write_json(out / "robustness.json", results)
    atomic_write_bytes(out / "robustness.md", robustness_report(results).encode())
    for name, stats in results["gate_stability"].items():
        gate_flip_plot(name, stats, out / f"gate_flips_{name}.png")
    return results


def robustness_rows(cells: dict, conditions: tuple[str, ...], samples: int) -> list[dict]:
    """One row per policy and condition: success, CI, layers executed, paired drop against the same policy clean."""
    rows = []
    for name, clean in cells["clean"].items():
        for c in conditions:
            r = cells[c][name]
            row = {"policy": name, "condition": c, "success_mean": r["success_mean"], "success_ci95": r["success_ci95"],
                   "layers_executed_frac": r.get("layers_executed_frac", 1.0),
                   "success_per_task": r["success_per_task"]}
            if c != "clean":
                row["drop_vs_clean"] = paired_bootstrap(clean["per_episode_success"], r["per_episode_success"], samples)
            gs = r.get("gate_stats", {})
            if "flip_rate" in gs:
                row["gate_flip_rate"] = gs["flip_rate"]
            rows.append(row)
    return rows


def drop_comparisons(cells: dict, cfg: RobustnessConfig, groups: dict) -> list[dict]:
    """Per ActDistill student (and ablation variant) and perturbation: its drop minus the teacher's, and minus each
    same-budget baseline's."""
    out = []
    for rho in cfg.budgets:
        refs = ["teacher"] + [f"{b}-rho{rho}" for b in cfg.baselines if f"{b}-rho{rho}" in cells["clean"]]
        for student in [f"actdistill-rho{rho}"] + [f"actdistill+{v}-rho{rho}" for v in cfg.variants]:
            for p in cfg.perturbations:
                entry = {"student": student, "perturbation": p}
                for ref in refs:
                    entry[f"minus_{ref}"] = drop_difference(
                        {"clean": cells["clean"][student], "perturbed": cells[p][student]},
                        {"clean": cells["clean"][ref], "perturbed": cells[p][ref]}, cfg.bootstrap_samples)
                out.append(entry)
    return out


def event_steps(gripper: list[float], window: int) -> np.ndarray:
    """Steps within `window` of a gripper command changing sign (closing or opening), as a boolean mask."""
    g = np.sign(np.asarray(gripper, dtype=float))
    change = np.flatnonzero((g[1:] != g[:-1]) & (g[1:] != 0) & (g[:-1] != 0)) + 1
    near = np.zeros(len(g), dtype=bool)
    for t in change:
        near[max(0, t - window): t + window + 1] = True
    return near


def routing_failures(student_eps: list[dict], teacher_eps: list[dict], cfg: RobustnessConfig) -> dict:
    """Layer usage around rare events against the rest of the episode, and the student's failures where the
    teacher succeeded on the same placement, from clean traces."""
    ev, rest, final, body = [], [], [], []
    for e in student_eps:
        if any(x is None for x in e["trace"]["layers"]):
            raise ValueError(f"The trace of {e['task']} seed {e['seed']} lacks layer counts: only a policy that reports "
                             "which layers it ran (pop_layer_mask) can be analysed for layer usage.")
        layers = np.asarray(e["trace"]["layers"], dtype=float)
        near = event_steps(e["trace"]["gripper"], cfg.event_window)
        ev.extend(layers[near])
        rest.extend(layers[~near])
        if e["success"]:
            k = min(cfg.final_steps, len(layers))
            final.extend(layers[len(layers) - k:])
            body.extend(layers[: len(layers) - k])
    teacher_ok = {(e["task"], e["seed"]): e["success"] for e in teacher_eps}
    lost = [e for e in student_eps if not e["success"] and teacher_ok.get((e["task"], e["seed"]))]
    won = [e for e in student_eps if e["success"]]

    def mean_layers(eps: list[dict]) -> float | None:
        vals = [x for e in eps for x in e["trace"]["layers"] if x is not None]
        return float(np.mean(vals)) if vals else None

    def m(v: list) -> float | None:
        return float(np.mean(v)) if v else None

    return {"layers_near_gripper_events": m(ev), "steps_near_gripper_events": len(ev),
            "layers_elsewhere": m(rest), "steps_elsewhere": len(rest),
            "layers_before_success": m(final), "layers_earlier_in_successes": m(body),
            "lost_where_teacher_succeeded": [{"task": e["task"], "seed": e["seed"], "mean_layers": mean_layers([e])}
                                             for e in lost],
            "mean_layers_in_those": mean_layers(lost), "mean_layers_in_successes": mean_layers(won)}


def robustness_report(results: dict) -> str:
    cfg = results["config"]["robustness"]
    n = cfg["eval"]["episodes_per_task"]
    lines = [f"Robustness on {results['benchmark']}, {n} test episodes per task per cell; every policy sees the same "
             "perturbation draws on the same placements.", "",
             "| policy | condition | success (95% CI) | drop vs clean [95% CI] | layers executed | gate flips |",
             "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lo, hi = r["success_ci95"]
        d = r.get("drop_vs_clean")
        flips = r.get("gate_flip_rate")
        lines.append(f"| {r['policy']} | {r['condition']} | {r['success_mean']:.3f} ({lo:.2f}-{hi:.2f}) | "
                     f"{format_delta(d)} | {r['layers_executed_frac']:.3f} | {'' if flips is None else f'{flips:.3f}'} |")
    lines += ["", "Drop of the student beyond each reference's drop (positive: the student loses more), paired over "
              "placements:", ""]
    comps = results["student_vs_reference"]
    refs = sorted({k[len("minus_"):] for c in comps for k in c if k.startswith("minus_")})
    lines += ["| student | perturbation | " + " | ".join(f"minus {r}" for r in refs) + " |", "|---" * (2 + len(refs)) + "|"]
    for c in comps:
        lines.append(f"| {c['student']} | {c['perturbation']} | "
                     + " | ".join(format_delta(c[f"minus_{r}"]) if f"minus_{r}" in c else "" for r in refs) + " |")
    lines += ["", "Layer usage (mean layers executed per step, clean test episodes):", "",
              "| student | near gripper events | elsewhere | last steps before success | earlier in successes | "
              "lost where the teacher succeeded (episodes, mean layers) | mean layers in successes |",
              "|---|---|---|---|---|---|---|"]
    for name, f in results["where_routing_fails"].items():
        def v(x):
            return "" if x is None else f"{x:.2f}"
        lines.append(f"| {name} | {v(f['layers_near_gripper_events'])} | {v(f['layers_elsewhere'])} | "
                     f"{v(f['layers_before_success'])} | {v(f['layers_earlier_in_successes'])} | "
                     f"{len(f['lost_where_teacher_succeeded'])}, {v(f['mean_layers_in_those'])} | "
                     f"{v(f['mean_layers_in_successes'])} |")
    return "\n".join(lines) + "\n"


def gate_flip_plot(name: str, stats: dict, path: Path) -> None:
    """Per layer: the share of decisions each perturbation flipped, and the clean step-to-step switch rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = [c for c in stats if "flip_rate_per_layer" in stats[c]]
    n_layers = len(stats["clean"]["switch_rate_per_layer"])
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * n_layers, 3.6))
    width = 0.8 / (len(conds) + 1)
    x = np.arange(n_layers)
    for i, c in enumerate(conds):
        ax.bar(x + i * width, stats[c]["flip_rate_per_layer"], width, label=f"{c}: flipped")
    ax.bar(x + len(conds) * width, stats["clean"]["switch_rate_per_layer"], width, color="black",
           label="clean: changed since the previous step")
    ax.axhline(0.05, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(x + 0.4 - width / 2, [str(l) for l in range(n_layers)])
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("share of gate decisions")
    ax.set_title(f"{name}: gate decisions changed by each perturbation")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
