"""`actdistill compare`: policies evaluated on the same placements, side by side, paired.

Input: two or more evaluation folders (what `actdistill evaluate --out` writes: `results.json`) or their results
files, all of the same tasks on the same placements. Output: per policy its success (Wilson 95% CI), decoder
layers executed per call (also as a fraction of the reference's depth, so that a smaller model counts as the
compute it is) and success per difficulty group of its suite; then every policy minus the first (the reference),
overall, per group and per task, as paired bootstrap differences over the shared placements (the same bootstrap as
`actdistill run` and `bench`). The question it answers without a bench: is one teacher better than another, does a
smaller model lose anything, where (which difficulty group) does the difference lie. The split (test or validation
placements) is read from the placements themselves and printed, so a choice made from validation numbers stays
visibly apart from a test row.

Under a perturbation (`--clean`: the same policies' unperturbed evaluations on the same placements, in the same
order), each policy also gets its drop against its own clean run, and every policy its drop minus the reference's
drop, paired per placement: does a student lose more under noise than its teacher does?
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from actdistill.artifacts import ArtifactError, read_json, write_report
from actdistill.errors import ConfigError
from actdistill.evaluate import RESULTS_FILE, drop_difference, format_delta, paired_bootstrap
from actdistill.provenance import provenance
from actdistill.sim import suite_for
from actdistill.sim.base import placement_kind

SPLIT_NAMES = {"eval": "test", "val": "validation", "demo": "demonstration"}  # placement_kind -> what the report says
ROW_FIELDS = ("name", "success_mean", "success_ci95", "success_per_task", "per_episode_success", "placement_seeds")


def load_evaluation(item: Path) -> tuple[str, dict]:
    """An evaluation folder or its results file; one sentence if it is neither."""
    path = item / RESULTS_FILE if item.is_dir() else item
    if not path.is_file():
        raise ArtifactError(f"{item} holds no {RESULTS_FILE}: name a folder `actdistill evaluate --out` wrote, or its "
                            f"results file.")
    row = read_json(path, "the evaluation results")
    missing = [k for k in ROW_FIELDS if k not in row]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}: compare reads the results `actdistill evaluate` "
                            f"writes (one policy per file).")
    return str(path), row


def compare(items: list[Path], names: list[str] | None = None, samples: int = 10_000,
            clean: list[Path] | None = None) -> dict:
    """The comparison report of the evaluations at `items`; the first is the reference; `clean`: the unperturbed
    evaluations of the same policies, in the same order (see the module docstring)."""
    if len(items) < 2:
        raise ConfigError(f"A comparison needs at least two evaluations, got {len(items)}.")
    if names is not None and len(names) != len(items):
        raise ConfigError(f"--names gives {len(names)} name(s) for {len(items)} evaluations; give one per evaluation.")
    if clean is not None and len(clean) != len(items):
        raise ConfigError(f"--clean gives {len(clean)} evaluation(s) for {len(items)}; give each policy's clean "
                          f"evaluation, in the same order.")
    evals = [load_evaluation(Path(p)) for p in items]
    cleans = [load_evaluation(Path(p)) for p in clean] if clean is not None else []
    (ref_path, ref), others = evals[0], evals[1:]
    tasks = tuple(ref["success_per_task"])
    for path, row in others + cleans:
        if tuple(row["success_per_task"]) != tasks:
            raise ArtifactError(f"{path} was evaluated on other tasks than {ref_path}; a comparison pairs the same "
                                f"tasks.")
        for t in tasks:
            if len(row["per_episode_success"][t]) != len(ref["per_episode_success"][t]):
                raise ArtifactError(f"{path} has {len(row['per_episode_success'][t])} episodes of {t} where {ref_path} "
                                    f"has {len(ref['per_episode_success'][t])}; evaluate both with the same --episodes.")
        if row["placement_seeds"] != ref["placement_seeds"]:
            raise ArtifactError(f"{path} was evaluated on other placements than {ref_path}; policies are paired only "
                                f"on the same placements (same --seed and split).")
    labels = list(names) if names else [row["name"] for _, row in evals]
    if not names and len(set(labels)) != len(labels):  # `evaluate` names rows "policy" unless told: the folders
        labels = [Path(p).parent.name for p, _ in evals]
    if len(set(labels)) != len(labels):
        raise ConfigError("Two evaluations carry the same name; give each its own with --names.")
    suite = suite_for(tasks)
    groups = {g: tuple(t for t in ts if t in tasks) for g, ts in suite.groups.items()}
    groups = {g: ts for g, ts in groups.items() if ts}
    ref_depth = policy_depth(ref)
    rows = []
    for label, (path, row) in zip(labels, evals):
        depth = policy_depth(row)
        frac = row.get("layers_executed_frac", 1.0)
        per_call = frac * depth if depth else None
        rows.append({"name": label, "results": path, "success_mean": row["success_mean"],
                     "success_ci95": row["success_ci95"], "decoder_layers": depth, "layers_per_call": per_call,
                     # executed layers as a fraction of the reference's depth: a 6-layer model from scratch runs
                     # all of its own layers but half of a 12-layer reference's
                     "layers_executed_frac": per_call / ref_depth if per_call is not None and ref_depth else frac,
                     "success_per_group": {g: float(np.mean([row["success_per_task"][t] for t in ts]))
                                           for g, ts in groups.items()},
                     "success_per_task": row["success_per_task"],
                     "revision": (row.get("provenance") or {}).get("git")})
    for r, (_, row), (_, c) in zip(rows, evals, cleans):
        r["clean_success_mean"] = c["success_mean"]
        r["drop_vs_clean"] = paired_bootstrap(c["per_episode_success"], row["per_episode_success"], samples)
    differences = []
    ref_eps = ref["per_episode_success"]
    for label, (_, row) in zip(labels[1:], others):
        eps = row["per_episode_success"]
        differences.append({
            "name": label, "reference": labels[0],
            "overall": paired_bootstrap(eps, ref_eps, samples),
            "per_group": {g: paired_bootstrap({t: eps[t] for t in ts}, {t: ref_eps[t] for t in ts}, samples)
                          for g, ts in groups.items()},
            "per_task": {t: paired_bootstrap({t: eps[t]}, {t: ref_eps[t]}, samples) for t in tasks}})
    for d, (_, row), (_, c) in zip(differences, others, cleans[1:]):
        d["drop_minus_reference_drop"] = drop_difference({"clean": c, "perturbed": row},
                                                         {"clean": cleans[0][1], "perturbed": ref}, samples)
    kinds = {placement_kind(s) for s in ref["placement_seeds"]}
    split = SPLIT_NAMES.get(kinds.pop(), "other") if len(kinds) == 1 else "mixed"
    return {"benchmark": suite.name, "split": split, "against_clean": clean is not None,
            "episodes_per_task": len(ref_eps[tasks[0]]), "tasks": list(tasks),
            "groups": {g: list(ts) for g, ts in groups.items()}, "rows": rows, "differences": differences,
            "bootstrap_samples": samples, "provenance": provenance()}


def policy_depth(row: dict) -> int | None:
    """The number of decoder layers of the evaluated policy (the length of its per-layer usage), if recorded."""
    usage = row.get("layer_usage_per_task") or {}
    return len(next(iter(usage.values()))) if usage else None


def compare_table(report: dict) -> str:
    """Markdown: one line per policy (success, layers, groups), then one per difference against the reference."""
    groups = list(report["groups"])
    drops = report.get("against_clean", False)
    extra = " clean | drop vs clean [95% CI] |" if drops else ""
    lines = [f"{report['benchmark']}, {report['split']} placements, {report['episodes_per_task']} episodes per task.", "",
             "| policy | success (95% CI) | layers per call | layers (of the reference's) | "
             + " | ".join(f"{g} ({len(report['groups'][g])})" for g in groups)
             + " |" + extra, "|" + "---|" * (4 + len(groups) + 2 * drops)]
    for r in report["rows"]:
        lo, hi = r["success_ci95"]
        cells = " | ".join(f"{r['success_per_group'][g]:.3f}" for g in groups)
        tail = f" {r['clean_success_mean']:.3f} | {format_delta(r['drop_vs_clean'])} |" if drops else ""
        known = r.get("layers_per_call") is not None
        per_call = f"{r['layers_per_call']:.1f} of {r['decoder_layers']}" if known else ""
        lines.append(f"| {r['name']} | {r['success_mean']:.3f} ({lo:.2f}-{hi:.2f}) | {per_call} | "
                     f"{r['layers_executed_frac']:.2f} | {cells} |" + tail)
    lines += ["", "| difference [95% CI] | overall | " + " | ".join(groups) + " |"
              + (" drop minus the reference's drop |" if drops else ""), "|" + "---|" * (2 + len(groups) + drops)]
    for d in report["differences"]:
        cells = " | ".join(format_delta(d["per_group"][g]) for g in groups)
        tail = f" {format_delta(d['drop_minus_reference_drop'])} |" if drops else ""
        lines.append(f"| {d['name']} - {d['reference']} | {format_delta(d['overall'])} | {cells} |" + tail)
    return "\n".join(lines) + "\n"


def write_compare(report: dict, out: Path) -> Path:
    """`out` (.json) and the table beside it (.md)."""
    return write_report(out, report, compare_table(report), "mt50_depth_val.json")
