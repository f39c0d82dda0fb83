"""`actdistill ablate`: what each part of ActDistill adds at one budget (docs/design.md "Baselines").

Every variant is distilled from the same teacher and cache, exported (calibrated, and settled where it says
so) like the default student, and evaluated on validation placements, which no reported number uses; each
row carries its paired difference to a reference variant (the full method unless `--reference` names another) on
the same placements.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from actdistill.artifacts import atomic_write_bytes, atomic_write_json, read_json, weights_hash_of
from actdistill.bench.baselines import train_router_kd
from actdistill.bench.rows import RunArtifacts, seeded
from actdistill.bench.run import pool_seeds, seed_paired_difference
from actdistill.config import (DEFAULT_SETTLE_STEPS, AblationConfig, ConfigError, DistillConfig, ExportConfig, RunConfig,
                               apply_overrides)
from actdistill.constants import CONFIG_FILE, HEADER_FILE, RESULTS_FILE
from actdistill.distill.stage import run_distill
from actdistill.evaluate import format_delta
from actdistill.export import export_inputs, run_export, training_placements
from actdistill.pipeline import StageRunner, evaluate_stage, finished
from actdistill.provenance import provenance
from actdistill.sim import get_suite

# name -> overrides of the run's distill / export configs ("kind": "router-kd" trains the router-KD baseline)
VARIANTS: dict[str, dict] = {
    "full": {},
    "no-semantic": {"distill.alpha": 0.0},
    "no-action": {"distill.beta": 0.0},
    "router-kd": {"kind": "router-kd"},  # no per-layer terms: final-action distillation only
    # the same routed student trained on the task loss alone (no distillation from the teacher at all)
    "router-task": {"kind": "router-kd", "distill.beta": 0.0},
    "norm-terms": {"distill.stream_norm": "terms"},
    "norm-initial": {"distill.stream_norm": "initial"},
    "quantile": {"distill.gating": "quantile", "export.calib_rounds": 1},  # calibration measures, never shifts
    "hybrid": {"distill.always_run": 3},
    # the per-layer streams' weight falls linearly to 0 over all (decay) or the first half (decay-half) of the
    # training steps: the streams shape the router and the early student, the task loss alone finishes it
    "decay": {"distill.stream_decay": 1.0},
    "decay-half": {"distill.stream_decay": 0.5},
    # both: the static-prune layers always run, the per-layer streams decay to 0
    "hybrid-decay": {"distill.always_run": 3, "distill.stream_decay": 1.0},
    # the teacher's final action distilled through the student's own head beside the streams (distill.final_kd),
    # the streams fading out: the objective starts as ActDistill's and ends as router-KD's
    "decay-kd": {"distill.stream_decay": 1.0, "distill.final_kd": 1.0},
    "hybrid-decay-kd": {"distill.always_run": 3, "distill.stream_decay": 1.0, "distill.final_kd": 1.0},
    # the same term with the streams kept at full weight
    "kd": {"distill.final_kd": 1.0},
    # router-KD with the same always-run layers as hybrid
    "hybrid-router-kd": {"kind": "router-kd", "distill.always_run": 3},
    # hybrid on randomly shifted images (train.shift_augment), each shifted batch with the teacher's own targets
    # (distill/targets.py): the teacher's layers on inputs the training frames do not hold
    "hybrid-augment": {"distill.always_run": 3, "distill.teacher_targets": "online", "distill.train.shift_augment": 4},
    # the same augmentation for hybrid router-KD (its final-action target is the teacher's on each batch anyway)
    "hybrid-router-kd-augment": {"kind": "router-kd", "distill.always_run": 3, "distill.train.shift_augment": 4},
    # the semantic stream compares only the rows that ran each layer (distill/losses.py semantic_loss)
    "sem-executed": {"distill.semantic_on": "executed"},
    # the winners of the single changes, combined (candidates for the default)
    "norm-initial+quantile": {"distill.stream_norm": "initial", "distill.gating": "quantile", "export.calib_rounds": 1},
    # quantile gating whose deployed threshold is set from the final router on training frames (no running-average lag)
    "quantile-data": {"distill.gating": "quantile", "distill.threshold_source": "data", "export.calib_rounds": 1},
    "norm-initial+quantile-data": {"distill.stream_norm": "initial", "distill.gating": "quantile",
                                   "distill.threshold_source": "data", "export.calib_rounds": 1},
    # router consistency under brightness/contrast jitter and instruction-embedding noise (distill/consistency.py)
    "consistency": {"distill.router_consistency": 1.0},
    # the same with brightness/contrast jitter only (no instruction-embedding rotation)
    "consistency-image": {"distill.router_consistency": 1.0, "distill.router_lang_noise": 0.0},
    # the same with half of the view's instructions replaced by training-only rewordings (sim/instructions.py)
    "consistency-reword": {"distill.router_consistency": 1.0, "distill.router_reword": 0.5},
    # a router that reads the vision tokens only: an unseen phrasing of the instruction cannot move its gates
    "router-vision": {"distill.router_inputs": "vision"},
    # the router that also reads the instruction (the default until session 27)
    "router-language": {"distill.router_inputs": "vision+language"},
    # the student reads a training-only rewording of its instruction in half of its rows, against the teacher's
    # targets for the training instruction (distill.instruction_reword): a decoder that acts alike on rewordings
    "reword": {"distill.instruction_reword": 0.5},
    "router-vision-reword": {"distill.router_inputs": "vision", "distill.instruction_reword": 0.5},
    # gates on (off) in >= 85% of closed-loop calibration steps fixed on (off) for every input (export.py snap_gates)
    "snap": {"export.snap": 0.15, "export.calib_rounds": 3},
}
# any variant + a SETTLE suffix: the same student, then distillation continued under its calibrated masks
# (export.settle_steps), with the distillation's own objective (+settle) or with the task loss and the teacher's
# final action only (+settle-final, export.settle_loss); a variant without a suffix is not settled, whatever the
# run's default
SETTLE_STEPS = DEFAULT_SETTLE_STEPS
SETTLE_SUFFIXES = {"+settle": {"export.settle_steps": SETTLE_STEPS},
                   "+settle-final": {"export.settle_steps": SETTLE_STEPS, "export.settle_loss": "final"}}


def variant_spec(name: str) -> dict:
    """The overrides of variant `name` (a VARIANTS entry, or one followed by a SETTLE_SUFFIXES key)."""
    suffix = next((x for x in SETTLE_SUFFIXES if name.endswith(x)), None)
    base = name[:-len(suffix)] if suffix else name
    if base not in VARIANTS:
        raise ConfigError(f"Unknown ablation variant {name!r}; choose from {', '.join(VARIANTS)}, each optionally "
                          f"followed by {' or '.join(repr(x) for x in SETTLE_SUFFIXES)}.")
    return {**VARIANTS[base], **SETTLE_SUFFIXES.get(suffix, {"export.settle_steps": 0})}


def variant_configs(name: str, rc: RunConfig, rho: float) -> tuple[str, DistillConfig, ExportConfig]:
    """(kind, distill config, export config) of a variant at budget rho."""
    spec = variant_spec(name)
    kind = spec.pop("kind", "actdistill")
    dcfg = dataclasses.replace(rc.distill, rho=rho)
    d = {k.split(".", 1)[1]: v for k, v in spec.items() if k.startswith("distill.")}
    x = {k.split(".", 1)[1]: v for k, v in spec.items() if k.startswith("export.")}
    return kind, apply_overrides(dcfg, d) if d else dcfg, apply_overrides(rc.export, x) if x else rc.export


def variant_policy(run_dir: Path, rho: float, name: str) -> Path:
    """The exported policy folder `actdistill ablate` made for variant `name` at budget rho (chosen on validation
    placements; `actdistill robustness --variants` then reports it on test placements)."""
    if name == "full":
        raise ConfigError("The 'full' variant is the ActDistill student itself; name the other variants.")
    rc = RunConfig.from_saved(read_json(Path(run_dir) / CONFIG_FILE, "the run config"))
    kind, _, _ = variant_configs(name, rc, rho)
    folder = Path(run_dir) / f"ablation-rho{rho}" / name.replace("+", "-")
    path = folder if kind == "router-kd" else folder / "student"
    if not (path / HEADER_FILE).is_file():
        raise ConfigError(f"No exported policy of ablation variant {name!r} at rho {rho} in {path}; run `actdistill "
                          f"ablate --run {run_dir} --rho {rho} --variants {name} --reference {name}` first.")
    return path


def run_ablation(run_dir: Path, cfg: AblationConfig, progress: bool = True) -> dict:
    for name in cfg.variants:
        variant_spec(name)  # every name checked before any work starts
    run = RunArtifacts(run_dir)
    out = run.run_dir / f"ablation-rho{cfg.rho}"
    st = StageRunner()
    members: dict[str, list[dict]] = {}  # variant -> its row of each training seed
    perturbed: dict[str, dict[str, list[dict]]] = {}  # variant -> perturbation -> its evaluation row of each seed
    for name in cfg.variants:
        for k in range(cfg.seeds):
            row, under = variant_seed(run, st, cfg, name, k, out, progress)
            members.setdefault(name, []).append(row)
            for p, r in under.items():
                perturbed.setdefault(name, {}).setdefault(p, []).append(r)
    rows = {name: pooled_variant(ms) for name, ms in members.items()}
    return finish_ablation(rows, cfg, run.rc, out, run.data.content_hash, st, perturbed)


def variant_seed(run: RunArtifacts, st: StageRunner, cfg: AblationConfig, name: str, k: int, out: Path,
                 progress: bool) -> tuple[dict, dict[str, dict]]:
    """Training seed k of variant `name`: distilled (or trained, router-KD), exported and evaluated on validation
    placements, clean and under each perturbation. Seed 0 lives in the variant's folder, seed k > 0 in
    `<variant>-seed<k>`; the seed is the configured training seed plus k (as in the bench)."""
    kind, dcfg, xcfg = variant_configs(name, run.rc, cfg.rho)
    dcfg = dataclasses.replace(dcfg, train=seeded(dcfg.train, k))
    label = name if k == 0 else f"{name} (seed {k})"
    folder = out / (name.replace("+", "-") + (f"-seed{k}" if k else ""))
    if kind == "router-kd":
        key = {"distill": dcfg.to_dict(), "export": xcfg.to_dict()}
        st.run(f"{label}: train + export", "export", folder, key, {"teacher": run.teacher_hash},
               lambda: train_router_kd(run.teacher, run.teacher_hash, run.data, dcfg, xcfg, run.sim,
                                       training_placements(run.data_path), folder, key, progress),
               lambda s: f"shift {s['gate_shift']:+.3f}", lambda s: s["weights"])
        policy_dir, distilled = folder, {}
    else:
        dkey = {"teacher": run.teacher_hash, "cache": run.cache.fingerprint}
        ddir = distillation_folder(out, run.run_dir / f"distill-rho{cfg.rho}", dcfg, dkey, folder / "distill")
        distilled = st.run(f"{label}: distill", "distill", ddir, dcfg.to_dict(), dkey,
                           lambda: run_distill(dcfg, run.teacher_dir, run.probe_dir, run.data_path, ddir, progress),
                           lambda s: f"keep {s['train_keep_ratio']:.2f}", lambda s: s["weights"])
        xkey = export_inputs(xcfg, weights_hash_of(ddir), run.cache.fingerprint)
        run_student = run.run_dir / f"student-rho{cfg.rho}"
        policy_dir = run_student if finished(run_student, "export", xcfg.to_dict(), xkey) else folder / "student"
        st.run(f"{label}: export", "export", policy_dir, xcfg.to_dict(), xkey,
               lambda: run_export(xcfg, ddir, run.data_path, policy_dir, run.sim, progress, run.teacher_dir, run.probe_dir),
               lambda s: f"shift {s['gate_shift']:+.3f}", lambda s: s["weights"])
    h = weights_hash_of(policy_dir)
    tag = name if k == 0 else f"{name}-seed{k}"
    ev = evaluate_variant(st, tag, policy_dir, h, cfg.eval, run.sim, out, run.seeds_used, progress)
    under = {p: evaluate_variant(st, tag, policy_dir, h, dataclasses.replace(cfg.eval, perturb=p), run.sim, out / p,
                                 run.seeds_used, progress)["row"] for p in cfg.perturbations}
    export_summary = read_json(policy_dir / HEADER_FILE, "the export header")["summary"]
    row = {"variant": name, "kind": kind, "overrides": variant_spec(name), **ev["row"],
           "calibration": export_summary.get("calibration", []), "gate_shift": export_summary.get("gate_shift"),
           "final_losses": distilled.get("final", {}), "train_keep_ratio": distilled.get("train_keep_ratio")}
    return row, under


def pooled(name: str, members: list[dict]) -> dict:
    """Evaluation rows of one variant's training seeds: one seed's row as it is; several pooled as the bench pools
    them (mean success, a Wilson CI over every episode, each seed's success and their spread)."""
    return members[0] if len(members) == 1 else pool_seeds(name, members, tuple(members[0]["success_per_task"]))


def pooled_variant(members: list[dict]) -> dict:
    """A variant's row over its training seeds (`pooled`), with the calibration of seed 0 and, for several seeds,
    every seed's gate shift and keep ratio. `per_episode_success` becomes the list of the seeds' records."""
    row = dict(pooled(members[0]["variant"], members))
    if len(members) > 1:
        row.pop("name")
        row.update(gate_shift_per_seed=[m["gate_shift"] for m in members],
                   train_keep_ratio_per_seed=[m["train_keep_ratio"] for m in members])
    row["per_episode_success"] = [m["per_episode_success"] for m in members]
    return row


def distillation_folder(out: Path, run_distill_dir: Path, dcfg: DistillConfig, dkey: dict, own: Path) -> Path:
    """Where a variant's distillation is, or goes (`own`): a variant that differs from another only in its export
    settings reuses that one's distilled student, from any variant folder under `out` (this call's or an earlier
    call's), and one equal to the run's own distillation at this budget reuses the run's student."""
    made = sorted(p / "distill" for p in out.iterdir() if p.is_dir()) if out.is_dir() else []
    return next((d for d in [*made, run_distill_dir] if finished(d, "distill", dcfg.to_dict(), dkey)), own)


def evaluate_variant(st: StageRunner, name: str, policy_dir: Path, weights_hash: str, ecfg, sim, root: Path,
                     seeds_used, progress: bool) -> dict:
    """One validation evaluation of a variant's policy (under `ecfg.perturb`), reused when already made."""
    eval_dir = root / f"eval-{name.replace('+', '-')}"
    label = name if ecfg.perturb == "none" else f"{name} ({ecfg.perturb})"
    return st.run(f"{label}: evaluate (val)", "evaluate", eval_dir, {"eval": ecfg.to_dict(), "sim": sim.to_dict()},
                  {"policy": weights_hash},
                  lambda: evaluate_stage(policy_dir, weights_hash, ecfg, sim, eval_dir, label, seeds_used, progress),
                  lambda s: f"success {s['row']['success_mean']:.3f}, layers {s['row']['layers_executed_frac']:.2f}",
                  lambda s: str(eval_dir / RESULTS_FILE))


def perturbed_rows(rows: dict, perturbed: dict, samples: int, reference: str) -> dict:
    """variant -> perturbation -> success, its CI, layers, the paired drop against the same variant clean and the
    paired difference against the reference variant under the same perturbation (seed-paired over training seeds)."""
    out = {}
    for name, by_p in perturbed.items():
        clean = rows[name]["per_episode_success"]
        out[name] = {}
        for p, members in by_p.items():
            r = pooled(name, members)
            mine = [m["per_episode_success"] for m in members]
            cell = {"success_mean": r["success_mean"], "success_ci95": r["success_ci95"],
                    "layers_executed_frac": r.get("layers_executed_frac", 1.0),
                    "drop_vs_clean": seed_paired_difference(clean, mine, samples)[0]}
            if len(members) > 1:
                cell["seed_success"] = r["seed_success"]
            if name != reference:
                theirs = [m["per_episode_success"] for m in perturbed[reference][p]]
                cell["delta_vs_reference"] = seed_paired_difference(mine, theirs, samples)[0]
            out[name][p] = cell
    return out


def finish_ablation(rows: dict, cfg: AblationConfig, rc: RunConfig, out: Path, content_hash: str, st: StageRunner,
                    perturbed: dict | None = None) -> dict:
    ref = rows[cfg.reference]["per_episode_success"]
    under = perturbed_rows(rows, perturbed or {}, cfg.bootstrap_samples, cfg.reference)
    out_rows = []
    for name, r in rows.items():
        row = {k: v for k, v in r.items() if k != "per_episode_success"}
        if name != cfg.reference:
            row["delta_vs_reference"], per_seed = seed_paired_difference(r["per_episode_success"], ref, cfg.bootstrap_samples)
            if r.get("seeds", 1) > 1:
                row["delta_vs_reference_per_seed"] = per_seed
        if under.get(name):
            row["perturbed"] = under[name]
        out_rows.append(row)
    results = {"benchmark": get_suite(rc.collect.sim.suite).name, "kind": "ablation", "rho": cfg.rho, "split": cfg.eval.split,
               "reference": cfg.reference,
               "config": {"run": rc.to_dict(), "ablation": cfg.to_dict()}, "provenance": provenance(),
               "dataset_content_hash": content_hash, "rows": out_rows, "stages": st.rows}
    atomic_write_json(out / "ablation.json", results)
    atomic_write_bytes(out / "ablation.md", ablation_table(out_rows, cfg).encode())
    return results


def ablation_table(rows: list[dict], cfg: AblationConfig) -> str:
    seeds = cfg.seeds > 1  # then a column with every seed's success, and the differences are seed-paired
    lines = [f"Ablation at rho {cfg.rho}, {cfg.eval.episodes_per_task} validation episodes per task "
             f"(placements disjoint from the demonstrations and from the test placements)"
             + (f", {cfg.seeds} training seeds per variant; differences seed-paired." if seeds else "."), "",
             "| variant | success (95% CI) | " + ("per training seed | " if seeds else "")
             + f"delta vs {cfg.reference} [95% CI] | layers executed | calibration (executed fraction by round) |",
             "|---|---|---|---|---|" + ("---|" if seeds else "")]
    for r in rows:
        lo, hi = r["success_ci95"]
        d_s = format_delta(r.get("delta_vs_reference"))
        per_s = ("/".join(f"{x:.3f}" for x in r["seed_success"]) + " | ") if seeds else ""
        cal = " / ".join(f"{c['layers_executed_frac']:.2f}" for c in r["calibration"])
        lines.append(f"| {r['variant']} | {r['success_mean']:.3f} ({lo:.2f}-{hi:.2f}) | {per_s}{d_s} | "
                     f"{r.get('layers_executed_frac', 1.0):.3f} | {cal} |")
    if any("perturbed" in r for r in rows):
        lines += ["", "Under perturbation (same validation placements and perturbation draws for every variant):", "",
                  f"| variant | perturbation | success (95% CI) | drop vs its clean [95% CI] | delta vs {cfg.reference} [95% CI] | "
                  "layers executed |", "|---|---|---|---|---|---|"]
        for r in rows:
            for p, c in r.get("perturbed", {}).items():
                lo, hi = c["success_ci95"]
                lines.append(f"| {r['variant']} | {p} | {c['success_mean']:.3f} ({lo:.2f}-{hi:.2f}) | "
                             f"{format_delta(c['drop_vs_clean'])} | {format_delta(c.get('delta_vs_reference'))} | "
                             f"{c['layers_executed_frac']:.3f} |")
    return "\n".join(lines) + "\n"
