"""`actdistill spread`: how much the default run's numbers move with its training seed.

Input: the results files (`mt10.json`) of `actdistill run`s that differ only in their training seeds (e.g.
`--set teacher.train.seed=k --out runs/seed-k`), so they share the dataset and the held-out placements. Output:
per run the teacher's and the student's success, the student's executed layers and student minus teacher (paired
bootstrap over the run's placements); per policy the seeds' successes, their spread (sample std, min, max) and a
Wilson CI over every pooled episode; and student minus teacher over seeds, where each bootstrap sample redraws
the runs and then the placements within each run (`seed_paired_difference`), so its CI covers the spread between
training runs as well as the episode noise. With only the teacher's seed changed, every later stage still differs
between the runs (the probes, the distillation and the settling start from that teacher), so the student's spread
is the whole pipeline's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from actdistill.artifacts import ArtifactError, read_json, save_figure, write_report
from actdistill.bench.run import pool_seeds, seed_paired_difference
from actdistill.errors import ConfigError
from actdistill.evaluate import format_delta, paired_bootstrap
from actdistill.provenance import provenance


CORE_MARGIN = 0.03  # the core target: student >= teacher - 3 points on the same placements
RUN_FIELDS = ("config", "rows", "dataset_content_hash")


def _settings(config: dict) -> dict:
    """A run's config without what may differ between the runs of one spread: the output folder and every seed."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "seed"}
        return node

    return strip({k: v for k, v in config.items() if k != "out"})


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return path


def _seeds(config: dict) -> dict[str, Any]:
    """Every seed field of a config, by dotted path (the collection seed among them)."""
    out: dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "seed":
                    out[f"{path}{k}"] = v
                else:
                    walk(v, f"{path}{k}.")

    walk(config, "")
    return out


def load_run_results(item: Path) -> tuple[str, dict]:
    """A run folder (the one `mt*.json` at its top level) or a results file; one sentence if neither."""
    path = item
    if item.is_dir():  # a run writes one results file at its top level, named after its suite
        found = sorted(item.glob("mt*.json"))
        if len(found) != 1:
            raise ArtifactError(f"{item} holds {len(found)} results files of an `actdistill run` (mt10.json); name the "
                                f"one to use.")
        path = found[0]
    results = read_json(path, "the run results")
    missing = [k for k in RUN_FIELDS if k not in results]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}: a spread reads the results files `actdistill run` "
                            f"writes since it records its dataset's content hash.")
    if len(results["rows"]) != 2 or results["rows"][0]["name"] != "teacher":
        raise ArtifactError(f"{path} does not hold a teacher row and one student row, as `actdistill run` writes them.")
    return str(path), results


def seed_spread(items: list[Path], samples: int = 10_000) -> dict:
    """The spread report of the runs at `items` (run folders or results files); see the module docstring. With the
    default `samples` each run's student minus teacher is the one `actdistill run` printed for it."""
    if len(items) < 2:
        raise ConfigError(f"A seed spread needs at least two runs, got {len(items)}.")
    runs = [load_run_results(Path(p)) for p in items]
    (ref_path, ref), others = runs[0], runs[1:]
    for path, r in others:
        where = _first_difference(_settings(ref["config"]), _settings(r["config"]))
        if where:
            raise ConfigError(f"{path} was made with another config than {ref_path} ({where} differs): a seed spread "
                              f"compares runs that differ only in their seeds.")
        if r["dataset_content_hash"] != ref["dataset_content_hash"]:
            raise ArtifactError(f"{path} was trained on another dataset than {ref_path} (content hash "
                                f"{r['dataset_content_hash']} vs {ref['dataset_content_hash']}).")
        for a, b in zip(ref["rows"], r["rows"]):
            if a["name"] != b["name"]:
                raise ArtifactError(f"{path} has the row {b['name']!r} where {ref_path} has {a['name']!r}.")
            if a["placement_seeds"] != b["placement_seeds"]:
                raise ArtifactError(f"{path} evaluated {b['name']} on other placements than {ref_path}; runs are paired "
                                    f"only on the same placements.")
    seeds = [_seeds(r["config"]) for _, r in runs]
    if len({tuple(sorted(s.items())) for s in seeds}) != len(seeds):
        raise ConfigError("Two of the runs have the same seeds: each run of a spread needs its own training seed.")
    varying = sorted({k for s in seeds for k in s if len({str(t.get(k)) for t in seeds}) > 1})
    tasks = tuple(ref["rows"][0]["success_per_task"])
    teacher_rows = [r["rows"][0] for _, r in runs]
    student_rows = [r["rows"][1] for _, r in runs]
    per_run = []
    for (path, r), s, t, st in zip(runs, seeds, teacher_rows, student_rows):
        diff = paired_bootstrap(st["per_episode_success"], t["per_episode_success"], samples)
        per_run.append({"results": path, "seeds": {k: s.get(k) for k in varying},
                        "revision": (r.get("provenance") or {}).get("git"),
                        "teacher": t["success_mean"], "teacher_ci95": t["success_ci95"],
                        "student": st["success_mean"], "student_ci95": st["success_ci95"],
                        "student_layers_executed_frac": st["layers_executed_frac"],
                        "student_minus_teacher": diff, "core_target_met": bool(diff[0] >= -CORE_MARGIN - 1e-9),
                        "speedup": st.get("speedup"), "ideal_speedup": st.get("ideal_speedup"),
                        "stage_seconds": r.get("stage_seconds"),
                        "stage_minutes": round(sum((r.get("stage_seconds") or {}).values()) / 60, 1)})
    pooled = [pool_seeds(rows[0]["name"], rows, tasks) for rows in (teacher_rows, student_rows)]
    keep = ("name", "success_mean", "success_ci95", "success_per_task", "layers_executed_frac", "seeds", "seed_success",
            "seed_spread")
    diff, diff_each = seed_paired_difference([r["per_episode_success"] for r in student_rows],
                                             [r["per_episode_success"] for r in teacher_rows], samples)
    return {"benchmark": ref["benchmark"], "runs": per_run, "dataset_content_hash": ref["dataset_content_hash"],
            "episodes_per_task": ref["rows"][0]["episodes_per_task"],
            "pooled": [{k: p[k] for k in keep} for p in pooled],
            "student_minus_teacher": diff, "student_minus_teacher_per_seed": diff_each,
            "core_margin": CORE_MARGIN, "core_target_met": sum(r["core_target_met"] for r in per_run),
            "config": _settings(ref["config"]), "provenance": provenance()}


def spread_table(report: dict) -> str:
    """Markdown: one line per run, then one per policy over the runs."""
    lines = ["| run | seeds | teacher (95% CI) | student (95% CI) | student layers | student - teacher [95% CI] | "
             "core target | stage minutes |", "|" + "---|" * 8]
    for r in report["runs"]:
        d = r["student_minus_teacher"]
        seeds = ", ".join(f"{k}={v}" for k, v in r["seeds"].items())
        lines.append(f"| {r['results']} | {seeds} | {r['teacher']:.3f} ({r['teacher_ci95'][0]:.2f}-{r['teacher_ci95'][1]:.2f}) "
                     f"| {r['student']:.3f} ({r['student_ci95'][0]:.2f}-{r['student_ci95'][1]:.2f}) | "
                     f"{r['student_layers_executed_frac']:.2f} | {format_delta(d)} | "
                     f"{'met' if r['core_target_met'] else 'missed'} | {r['stage_minutes'] or ''} |")
    lines += ["", "| policy | per seed | mean | sample std | min | max | pooled 95% CI | layers |", "|" + "---|" * 8]
    for p in report["pooled"]:
        s = p["seed_spread"]
        lines.append(f"| {p['name']} | {' / '.join(f'{x:.3f}' for x in p['seed_success'])} | {np.mean(p['seed_success']):.3f} | "
                     f"{s['std']:.3f} | {s['min']:.3f} | {s['max']:.3f} | {p['success_ci95'][0]:.2f}-{p['success_ci95'][1]:.2f} | "
                     f"{p['layers_executed_frac']:.2f} |")
    d = report["student_minus_teacher"]
    lines += ["", f"Student minus teacher over the {len(report['runs'])} runs (seed-paired bootstrap): {d[0]:+.3f} "
              f"[{d[1]:+.3f}, {d[2]:+.3f}]; the core target (student >= teacher - {report['core_margin']:.2f}) is met in "
              f"{report['core_target_met']} of {len(report['runs'])} runs."]
    return "\n".join(lines) + "\n"


def spread_plot(report: dict, path: Path) -> None:
    """Teacher and student of each run joined by a line (a falling line: the student lost to its own teacher),
    with each policy's mean over the runs and its pooled 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.0, 3.5))
    for r in report["runs"]:
        label = ", ".join(f"{k.rsplit('.', 2)[0]} seed {v}" for k, v in r["seeds"].items())
        ax.plot([0, 1], [r["teacher"], r["student"]], marker="o", alpha=0.7, label=label)
    for x, p in enumerate(report["pooled"]):
        mean = float(np.mean(p["seed_success"]))
        lo, hi = p["success_ci95"]
        ax.errorbar([x + 0.08], [mean], yerr=[[mean - lo], [hi - mean]], fmt="s", color="black", capsize=3,
                    label="mean, pooled 95% CI" if x == 0 else None)
    names = [p["name"] for p in report["pooled"]]
    ax.set_xticks([0, 1], names)
    ax.set_xlim(-0.3, 1.4)
    ax.set_ylabel("success")
    ax.set_title(f"{report['benchmark']}, {report['episodes_per_task']} episodes per task", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_spread(report: dict, out: Path) -> Path:
    """`out` (.json), the table beside it (.md) and the plot (.png)."""
    out = write_report(out, report, spread_table(report), "mt10_run_seeds.json")
    spread_plot(report, out.with_suffix(".png"))
    return out
