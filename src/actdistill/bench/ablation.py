"""`actdistill ablate`: what each part of ActDistill adds at one budget (docs/design.md "Baselines").

Every variant is distilled from the same teacher and cache, exported (calibrated, and settled where it says
so) like the default student, and evaluated on validation placements, which no reported number uses; each
row carries its paired difference to the full method on the same placements.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from actdistill.artifacts import atomic_write_bytes, atomic_write_json, read_json, weights_hash_of
from actdistill.bench.baselines import train_router_kd
from actdistill.bench.run import paired_bootstrap
from actdistill.config import AblationConfig, ConfigError, DistillConfig, ExportConfig, RunConfig, apply_overrides
from actdistill.constants import CONFIG_FILE, DATASET_FILE, HEADER_FILE, RESULTS_FILE
from actdistill.data.dataset import FrameDataset
from actdistill.data.hdf5 import read_demos
from actdistill.distill.stage import run_distill
from actdistill.export import export_inputs, run_export, training_placements
from actdistill.pipeline import StageRunner, evaluate_stage, finished
from actdistill.probe.stage import load_probe_artifact
from actdistill.provenance import provenance
from actdistill.sim import get_suite
from actdistill.teacher import load_teacher

# name -> overrides of the run's distill / export configs ("kind": "router-kd" trains the router-KD baseline)
VARIANTS: dict[str, dict] = {
    "full": {},
    "no-semantic": {"distill.alpha": 0.0},
    "no-action": {"distill.beta": 0.0},
    "router-kd": {"kind": "router-kd"},  # no per-layer terms: final-action distillation only
    "norm-terms": {"distill.stream_norm": "terms"},
    "norm-initial": {"distill.stream_norm": "initial"},
    "quantile": {"distill.gating": "quantile", "export.calib_rounds": 1},  # calibration measures, never shifts
    "hybrid": {"distill.always_run": 3},
    "full+settle": {"export.settle_steps": 300},
    "router-kd+settle": {"kind": "router-kd", "export.settle_steps": 300},
    # the winners of the single changes, combined (candidates for the default)
    "norm-initial+quantile": {"distill.stream_norm": "initial", "distill.gating": "quantile", "export.calib_rounds": 1},
    "norm-initial+settle": {"distill.stream_norm": "initial", "export.settle_steps": 300},
    # quantile gating whose deployed threshold is set from the final router on training frames (no running-average lag)
    "quantile-data": {"distill.gating": "quantile", "distill.threshold_source": "data", "export.calib_rounds": 1},
    "norm-initial+quantile-data": {"distill.stream_norm": "initial", "distill.gating": "quantile",
                                   "distill.threshold_source": "data", "export.calib_rounds": 1},
}


def variant_configs(name: str, rc: RunConfig, rho: float) -> tuple[str, DistillConfig, ExportConfig]:
    """(kind, distill config, export config) of a variant at budget rho."""
    if name not in VARIANTS:
        raise ConfigError(f"Unknown ablation variant {name!r}; choose from {', '.join(VARIANTS)}.")
    spec = dict(VARIANTS[name])
    kind = spec.pop("kind", "actdistill")
    dcfg = dataclasses.replace(rc.distill, rho=rho)
    d = {k.split(".", 1)[1]: v for k, v in spec.items() if k.startswith("distill.")}
    x = {k.split(".", 1)[1]: v for k, v in spec.items() if k.startswith("export.")}
    return kind, apply_overrides(dcfg, d) if d else dcfg, apply_overrides(rc.export, x) if x else rc.export


def run_ablation(run_dir: Path, cfg: AblationConfig, progress: bool = True) -> dict:
    run_dir = Path(run_dir)
    rc = RunConfig.from_dict(read_json(run_dir / CONFIG_FILE, "the run config"))
    if "full" not in cfg.variants:
        raise ConfigError("AblationConfig.variants must include 'full': every row is compared with it.")
    for name in cfg.variants:
        variant_configs(name, rc, cfg.rho)  # every name checked before any work starts
    out = run_dir / f"ablation-rho{cfg.rho}"
    data_path, teacher_dir, probe_dir = run_dir / "collect" / DATASET_FILE, run_dir / "teacher", run_dir / "probe"
    teacher, tinfo = load_teacher(teacher_dir)
    teacher_hash = tinfo["header"]["weights_hash"]
    demos = read_demos(data_path)
    seeds_used = demos.attrs.get("placement_seeds")
    data = FrameDataset(demos, teacher.config.chunk_size, tuple(tinfo["tasks"]))
    _, cache, _ = load_probe_artifact(probe_dir, teacher, teacher_hash, data.fingerprint)
    sim = rc.collect.sim
    st = StageRunner()
    eval_key = {"eval": cfg.eval.to_dict(), "sim": sim.to_dict()}
    rows: dict[str, dict] = {}
    for name in cfg.variants:
        kind, dcfg, xcfg = variant_configs(name, rc, cfg.rho)
        folder = out / name.replace("+", "-")
        if kind == "router-kd":
            key = {"distill": dcfg.to_dict(), "export": xcfg.to_dict()}
            st.run(f"{name}: train + export", "export", folder, key, {"teacher": teacher_hash},
                   lambda dcfg=dcfg, xcfg=xcfg, folder=folder, key=key: train_router_kd(
                       teacher, teacher_hash, data, dcfg, xcfg, sim, training_placements(data_path), folder, key, progress),
                   lambda s: f"shift {s['gate_shift']:+.3f}", lambda s: s["weights"])
            policy_dir, distilled = folder, {}
        else:
            # a variant that differs from another only in its export settings reuses that one's distilled student
            ddir = next((out / other.replace("+", "-") / "distill" for other in VARIANTS
                         if finished(out / other.replace("+", "-") / "distill", "distill", dcfg.to_dict(),
                                     {"teacher": teacher_hash, "cache": cache.fingerprint})), folder / "distill")
            distilled = st.run(f"{name}: distill", "distill", ddir, dcfg.to_dict(), {"teacher": teacher_hash, "cache": cache.fingerprint},
                               lambda dcfg=dcfg, ddir=ddir: run_distill(dcfg, teacher_dir, probe_dir, data_path, ddir, progress),
                               lambda s: f"keep {s['train_keep_ratio']:.2f}", lambda s: s["weights"])
            policy_dir = folder / "student"
            st.run(f"{name}: export", "export", policy_dir, xcfg.to_dict(),
                   export_inputs(xcfg, weights_hash_of(ddir), cache.fingerprint),
                   lambda xcfg=xcfg, ddir=ddir, pdir=policy_dir: run_export(xcfg, ddir, data_path, pdir, sim, progress,
                                                                         teacher_dir, probe_dir),
                   lambda s: f"shift {s['gate_shift']:+.3f}", lambda s: s["weights"])
        h = weights_hash_of(policy_dir)
        eval_dir = out / f"eval-{name.replace('+', '-')}"
        ev = st.run(f"{name}: evaluate (val)", "evaluate", eval_dir, eval_key, {"policy": h},
                    lambda pdir=policy_dir, h=h, name=name, eval_dir=eval_dir: evaluate_stage(
                        pdir, h, cfg.eval, sim, eval_dir, name, seeds_used, progress),
                    lambda s: f"success {s['row']['success_mean']:.3f}, layers {s['row']['layers_executed_frac']:.2f}",
                    lambda s, eval_dir=eval_dir: str(eval_dir / RESULTS_FILE))
        export_summary = read_json(policy_dir / HEADER_FILE, "the export header")["summary"]
        rows[name] = {"variant": name, "kind": kind, "overrides": VARIANTS[name], **ev["row"],
                      "calibration": export_summary.get("calibration", []), "gate_shift": export_summary.get("gate_shift"),
                      "final_losses": distilled.get("final", {}), "train_keep_ratio": distilled.get("train_keep_ratio")}
    return finish_ablation(rows, cfg, rc, out, data.content_hash, st)


def finish_ablation(rows: dict, cfg: AblationConfig, rc: RunConfig, out: Path, content_hash: str, st: StageRunner) -> dict:
    full = rows["full"]["per_episode_success"]
    out_rows = []
    for name, r in rows.items():
        row = {k: v for k, v in r.items() if k != "per_episode_success"}
        if name != "full":
            row["delta_vs_full"] = paired_bootstrap(r["per_episode_success"], full, cfg.bootstrap_samples)
        out_rows.append(row)
    results = {"benchmark": get_suite(rc.collect.sim.suite).name, "kind": "ablation", "rho": cfg.rho, "split": cfg.eval.split,
               "config": {"run": rc.to_dict(), "ablation": cfg.to_dict()}, "provenance": provenance(),
               "dataset_content_hash": content_hash, "rows": out_rows, "stages": st.rows}
    atomic_write_json(out / "ablation.json", results)
    atomic_write_bytes(out / "ablation.md", ablation_table(out_rows, cfg).encode())
    return results


def ablation_table(rows: list[dict], cfg: AblationConfig) -> str:
    lines = [f"Ablation at rho {cfg.rho}, {cfg.eval.episodes_per_task} validation episodes per task "
             f"(placements disjoint from the demonstrations and from the test placements).", "",
             "| variant | success (95% CI) | delta vs full [95% CI] | layers executed | calibration (executed fraction by round) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["success_ci95"]
        d = r.get("delta_vs_full")
        d_s = f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" if d else ""
        cal = " / ".join(f"{c['layers_executed_frac']:.2f}" for c in r["calibration"])
        lines.append(f"| {r['variant']} | {r['success_mean']:.3f} ({lo:.2f}-{hi:.2f}) | {d_s} | "
                     f"{r.get('layers_executed_frac', 1.0):.3f} | {cal} |")
    return "\n".join(lines) + "\n"
