"""`actdistill run`: collect -> train-teacher -> evaluate -> probe -> distill -> export -> evaluate student.

A stage whose output folder already holds a finished artifact made from the
same config and inputs is reused (its header says so), so a rerun after a
crash or a config change redoes only what changed.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable

from actdistill.artifacts import (atomic_write_bytes, atomic_write_json, hash_json, make_header, read_json, save_figure,
                                  weights_hash_of, write_header)
from actdistill.config import ConfigError, EvalConfig, RunConfig, SimConfig
from actdistill.constants import CONFIG_FILE, DATASET_FILE, HEADER_FILE, RESULTS_FILE
from actdistill.provenance import provenance, reference_results_path, reproduction_check, version_changes
from actdistill.sim import get_suite


def finished(folder: Path, stage: str, config: dict, inputs: dict) -> dict | None:
    """The header of a finished artifact made by `stage` from this config and these inputs, else None."""
    path = folder / HEADER_FILE
    if not path.is_file():
        return None
    header = read_json(path, f"the {stage} header")
    if header.get("stage") == stage and header.get("config_hash") == hash_json(config) and header.get("inputs") == inputs:
        return header
    return None


class StageRunner:
    """Runs stages, reusing a finished artifact of the same config and inputs, and keeps a row per stage."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.now = provenance()
        self.notices: list[str] = []  # one line per stage reused across a version or code change

    def run(self, name: str, stage: str, folder: Path, config: dict, inputs: dict, fn: Callable[[], dict],
            note: Callable[[dict], str], output: Callable[[dict], str]) -> dict:
        header = finished(folder, stage, config, inputs)
        if header is None:
            self._line(f"{name}: started ({folder})")
            summary, status = fn(), "ran"
        else:
            summary, status = header["summary"], "reused"
            changes = version_changes(header.get("provenance"), self.now)
            if changes:
                self.notices.append(f"{name}: reused an artifact made with other versions ({'; '.join(changes)}).")
        row = {"stage": name, "status": status, "seconds": summary.get("seconds"), "note": note(summary),
               "output": self._shown(output(summary), folder, status)}
        self.rows.append(row)
        took = f" in {row['seconds']:.0f} s" if status == "ran" and isinstance(row["seconds"], (int, float)) else ""
        self._line(f"{name}: {status}{took}" + (f", {row['note']}" if row["note"] else ""))
        return summary

    @staticmethod
    def _shown(path: str, folder: Path, status: str) -> str:
        """The output as this run holds it: a reused artifact copied from another run names its first folder in
        its summary, so show the file of the same name in this stage's folder when it is there."""
        if status != "reused" or not path:
            return path
        here = Path(folder) / Path(path).name
        return str(here) if here.exists() else path

    @staticmethod
    def _line(text: str) -> None:
        """A timestamped line on stderr as each stage starts and ends: what a run in the background shows."""
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def earlier_episodes(out_dir: Path, eval_cfg: EvalConfig, sim: SimConfig, weights_hash: str) -> list[dict] | None:
    """The episode records of a finished evaluation in `out_dir` of the same policy weights, sim and eval config
    except fewer episodes per task, a multiple of `batch_envs` (so its lock-step groups are groups this
    evaluation runs too): raising `episodes_per_task` then runs only the new placements."""
    path = out_dir / HEADER_FILE
    if not path.is_file():
        return None
    header = read_json(path, "the evaluation header")
    n = header.get("summary", {}).get("row", {}).get("episodes_per_task")
    if (header.get("stage") != "evaluate" or header.get("inputs") != {"policy": weights_hash} or not isinstance(n, int)
            or not 0 < n < eval_cfg.episodes_per_task or n % eval_cfg.batch_envs):
        return None
    before = dataclasses.replace(eval_cfg, episodes_per_task=n)
    if header.get("config_hash") != hash_json({"eval": before.to_dict(), "sim": sim.to_dict()}):
        return None
    return read_json(out_dir / "episodes.json", "the earlier evaluation's episodes")


def evaluate_stage(spec_path: Path, weights_hash: str, eval_cfg: EvalConfig, sim: SimConfig, out_dir: Path, name: str,
                   exclude: dict, progress: bool, policy=None) -> dict:
    """Evaluate a policy folder and stamp the result with a header keyed by eval config, sim and policy weights.

    `policy`: the folder's policy when the caller already loaded it (used in-process; worker processes load their own)."""
    from actdistill.evaluate import evaluate
    from actdistill.registry import PolicySpec

    in_process = policy is not None and eval_cfg.workers == 1
    result = evaluate(policy if in_process else PolicySpec(str(spec_path)), eval_cfg, sim, out_dir, name=name,
                      exclude_seeds=exclude, progress=progress,
                      earlier=earlier_episodes(out_dir, eval_cfg, sim, weights_hash))
    summary = {"seconds": result["seconds"], "row": result}
    write_header(out_dir, make_header("evaluate", {"eval": eval_cfg.to_dict(), "sim": sim.to_dict()},
                                      inputs={"policy": weights_hash}, summary=summary))
    return summary


DISTILL_COLLECT_DIR = "collect-distill"  # a run's distillation set, when smaller than the teacher's


def distillation_data(run_dir: Path, rc: RunConfig) -> Path:
    """The dataset a run's probes, distillation and bench rows train on (RunConfig.distill_demos_per_task)."""
    return Path(run_dir) / (DISTILL_COLLECT_DIR if rc.distill_demos_per_task else "collect") / DATASET_FILE


def distillation_set(cfg: RunConfig, st: StageRunner, progress: bool) -> tuple[Path, str, str] | None:
    """Collect a run's smaller distillation set (RunConfig.distill_demos_per_task); its path, fingerprint and content
    hash, or None when the later stages train on the teacher's own set."""
    from actdistill.collect import collect
    from actdistill.data.hdf5 import read_demos

    if not cfg.distill_demos_per_task:
        return None
    dcol = dataclasses.replace(cfg.collect, demos_per_task=cfg.distill_demos_per_task)
    path = distillation_data(Path(cfg.out), cfg)
    dcol_dir = path.parent
    st.run("collect distillation set", "collect", dcol_dir, dcol.to_dict(), {}, lambda: collect(dcol, dcol_dir, progress),
           lambda s: f"{s['demos']} demos, {s['frames']} frames", lambda s: str(path))
    demos = read_demos(path)
    return path, demos.fingerprint, demos.content_hash


def results_file(suite_key: str) -> str:
    """The results file name of `run` and `bench` for a suite: mt10.json, mt50.json."""
    return f"{suite_key}.json"


def run_pipeline(cfg: RunConfig, progress: bool = True) -> dict:
    from actdistill.collect import collect
    from actdistill.data.hdf5 import read_demos
    from actdistill.distill.stage import run_distill
    from actdistill.export import export_inputs, run_export
    from actdistill.probe.stage import run_probe
    from actdistill.teacher import train_teacher

    check_suite_sizes(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG_FILE, cfg.to_dict())
    st = StageRunner()
    t_start = time.time()
    eval_key = {"eval": cfg.eval.to_dict(), "sim": cfg.collect.sim.to_dict()}

    col_dir = out / "collect"
    data_path = col_dir / DATASET_FILE
    st.run("collect", "collect", col_dir, cfg.collect.to_dict(), {}, lambda: collect(cfg.collect, col_dir, progress),
           lambda s: f"{s['demos']} demos, {s['frames']} frames", lambda s: str(data_path))
    demos = read_demos(data_path)
    seeds_used = demos.attrs.get("placement_seeds")
    fp, content = demos.fingerprint, demos.content_hash
    del demos  # the stages below read the file themselves

    teacher_dir = out / "teacher"
    st.run("train-teacher", "train-teacher", teacher_dir, cfg.teacher.to_dict(), {"dataset": fp},
           lambda: train_teacher(cfg.teacher, data_path, teacher_dir, progress),
           lambda s: f"{s['parameters'] / 1e6:.2f}M params, {s['steps']} steps ({s['passes']} passes), loss {s['final_loss']}",
           lambda s: s["weights"])
    teacher_hash = weights_hash_of(teacher_dir)

    ev_t = st.run("evaluate teacher", "evaluate", out / "eval-teacher", eval_key, {"policy": teacher_hash},
                  lambda: evaluate_stage(teacher_dir, teacher_hash, cfg.eval, cfg.collect.sim, out / "eval-teacher", "teacher",
                                               seeds_used, progress),
                  lambda s: f"success {s['row']['success_mean']:.3f}", lambda s: str(out / "eval-teacher" / RESULTS_FILE))

    dist_path, dist_fp, dist_content = distillation_set(cfg, st, progress) or (data_path, fp, content)
    probe_dir = out / "probe"
    st.run("probe", "probe", probe_dir, cfg.probe.to_dict(), {"teacher": teacher_hash, "dataset": dist_fp},
           lambda: run_probe(cfg.probe, teacher_dir, dist_path, probe_dir, progress),
           lambda s: f"L_prep {s['final_loss']}, probe MSE layer0 {s['probe_mse_per_layer'][0]:.4f} -> last {s['probe_mse_per_layer'][-1]:.4f}",
           lambda s: s["cache"])
    cache_fp = read_json(probe_dir / HEADER_FILE, "the probe header")["fingerprint"]

    rho = cfg.distill.rho
    distill_dir = out / f"distill-rho{rho}"
    st.run("distill", "distill", distill_dir, cfg.distill.to_dict(), {"teacher": teacher_hash, "cache": cache_fp},
           lambda: run_distill(cfg.distill, teacher_dir, probe_dir, dist_path, distill_dir, progress),
           lambda s: f"train keep ratio {s['train_keep_ratio']:.2f}, task loss {s['final'].get('task', float('nan')):.4f}",
           lambda s: s["weights"])
    student_hash = weights_hash_of(distill_dir)

    export_dir = out / f"student-rho{rho}"
    st.run("export + calibrate", "export", export_dir, cfg.export.to_dict(), export_inputs(cfg.export, student_hash, cache_fp),
           lambda: run_export(cfg.export, distill_dir, dist_path, export_dir, cfg.collect.sim, progress, teacher_dir, probe_dir),
           lambda s: f"gate shift {s['gate_shift']:+.3f}, calibration frac " + "/".join(
               f"{c['layers_executed_frac']:.2f}" for c in s["calibration"]), lambda s: s["weights"])
    exported_hash = weights_hash_of(export_dir)

    name = f"actdistill-rho{rho}"
    ev_s = st.run("evaluate student", "evaluate", out / f"eval-{name}", eval_key, {"policy": exported_hash},
                  lambda: evaluate_stage(export_dir, exported_hash, cfg.eval, cfg.collect.sim, out / f"eval-{name}", name,
                                               seeds_used, progress),
                  lambda s: f"success {s['row']['success_mean']:.3f}, layers {s['row']['layers_executed_frac']:.2f}",
                  lambda s: str(out / f"eval-{name}" / RESULTS_FILE))

    cost = measure_cost(teacher_dir, export_dir, data_path)
    results = run_results(cfg, st, ev_t["row"], ev_s["row"], cost, content)
    if dist_content != content:
        results["distillation_dataset_content_hash"] = dist_content
    results_path = out / results_file(cfg.collect.sim.suite)
    atomic_write_json(results_path, results)
    return {"stages": st.rows, "rows": results["rows"], "results": str(results_path), "cost": cost,
            "layer_usage": layer_usage_report(ev_s["row"], out / f"eval-{name}"),
            "heatmap": str(out / f"eval-{name}" / "layer_usage.png"), "wall_seconds": round(time.time() - t_start, 1),
            "notices": st.notices, "reproduction": compare_with_reference(results, reference_results_path())}


def run_results(cfg: RunConfig, st: StageRunner, teacher: dict, student: dict, cost: dict, content: str) -> dict:
    """The run's results file: teacher and student rows with their cost columns, the paired student - teacher
    difference (10,000 bootstrap resamples of the same placements), provenance and the dataset's content hash."""
    from actdistill.evaluate import paired_bootstrap

    student.update(decoder_gflops=round(cost["student_decoder_gflops"], 5), policy_gflops=round(cost["student_policy_gflops"], 5),
                   latency_ms_median=round(cost["student_latency_ms"], 3), speedup=round(cost["speedup"], 3),
                   ideal_speedup=round(cost["ideal_speedup"], 3))
    teacher.update(decoder_gflops=round(cost["teacher_decoder_gflops"], 5), policy_gflops=round(cost["teacher_policy_gflops"], 5),
                   latency_ms_median=round(cost["teacher_latency_ms"], 3), layers_executed_frac=1.0)
    diff = paired_bootstrap(student["per_episode_success"], teacher["per_episode_success"], 10_000)
    return {"benchmark": get_suite(cfg.collect.sim.suite).name, "config": cfg.to_dict(), "provenance": st.now,
            "dataset_content_hash": content, "student_minus_teacher": diff, "rows": [teacher, student],
            "stage_seconds": {s["stage"]: s["seconds"] for s in st.rows}, "reused_across_versions": st.notices}


def check_suite_sizes(cfg: RunConfig) -> None:
    """The teacher's state and action sizes are the suite's (one sentence, before any work, if not)."""
    suite = get_suite(cfg.collect.sim.suite)
    if (cfg.teacher.model.state_dim, cfg.teacher.model.action_dim) != (suite.state_dim, suite.action_dim):
        raise ConfigError(f"The {suite.name} suite has {suite.state_dim}-dimensional states and {suite.action_dim}-dimensional "
                          f"actions; set teacher.model.state_dim={suite.state_dim} and action_dim={suite.action_dim}.")


def compare_with_reference(results: dict, path: Path) -> dict:
    """`reproduction_check` of a finished run against the committed results at `path` (when there are any)."""
    if not path.is_file():
        return {"comparable": False, "reason": f"no committed results at {path}", "rows": [], "dataset_match": None}
    reference = read_json(path, "the committed default-run results")
    return reproduction_check(results["rows"], results["dataset_content_hash"], results["config"], reference)


def measure_cost(teacher_dir: Path, student_dir: Path, data_path: Path) -> dict:
    """FLOPs and interleaved batch-1 latency of teacher and student on 40 training frames (all tasks)."""
    from actdistill.bench.cost import compare_cost, sample_frames
    from actdistill.data.dataset import FrameDataset
    from actdistill.data.hdf5 import read_demos
    from actdistill.export import load_student
    from actdistill.teacher import load_teacher

    teacher, info = load_teacher(teacher_dir)
    student = load_student(student_dir)
    data = FrameDataset(read_demos(data_path), teacher.config.chunk_size, tuple(info["tasks"]))
    return compare_cost(teacher, student, sample_frames(data))


def layer_usage_report(row: dict, out_dir: Path) -> str:
    """Tasks x layers matrix of the fraction of policy calls that executed each layer: markdown + heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    usage = row["layer_usage_per_task"]
    tasks = list(usage)
    mat = np.array([usage[t] for t in tasks])
    n_layers = mat.shape[1]
    lines = ["| task | " + " | ".join(f"L{l}" for l in range(n_layers)) + " | mean |", "|---" * (n_layers + 2) + "|"]
    for t, r in zip(tasks, mat):
        lines.append(f"| {t.replace('-v3', '')} | " + " | ".join(f"{v:.2f}" for v in r) + f" | {r.mean():.2f} |")
    md = "\n".join(lines) + "\n"
    atomic_write_bytes(out_dir / "layer_usage.md", md.encode())
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * n_layers, 0.5 + 0.4 * len(tasks)))
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_layers), [str(l) for l in range(n_layers)])
    ax.set_yticks(range(len(tasks)), [t.replace("-v3", "") for t in tasks])
    ax.set_xlabel("decoder layer")
    ax.set_title(f"{row['name']}: fraction of policy calls executing each layer")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    save_figure(fig, out_dir / "layer_usage.png")
    plt.close(fig)
    return md
