"""`actdistill export`: the deployable routed student (DESIGN.md pipeline stage 5 and "Budget calibration").

Every graph extractor and action probe is removed; what remains is the teacher copy and the router.
The budget loss holds on training frames, but closed-loop rollouts visit other states, so the gates
are then calibrated: a global shift of the gate logits, chosen from the logits recorded in closed-loop
rollouts on training placements and re-measured until the executed-layer fraction meets rho. The
shift is stored in the router's `gate_bias` buffer, i.e. inside the exported weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from actdistill.artifacts import (ArtifactError, atomic_save_tensors, atomic_write_json, hash_tensors, load_checked_weights,
                                  make_header, read_header, read_json, write_header)
from actdistill.config import DistillConfig, EvalConfig, ExportConfig, ModelConfig, SimConfig
from actdistill.constants import CONFIG_FILE, WEIGHTS_FILE
from actdistill.distill.routing import RoutedStudent
from actdistill.models.heads import check_head_family


def training_placements(dataset_path: Path) -> dict[str, list[int]]:
    """The placement seeds of the demonstrations (read from the file's attributes only)."""
    with h5py.File(dataset_path, "r") as f:
        return json.loads(f["data"].attrs["placement_seeds"])


def _student_from_distill(distill_dir: Path) -> tuple[RoutedStudent, dict, dict]:
    header = read_header(distill_dir, "distill")
    cfg_json = read_json(Path(distill_dir) / CONFIG_FILE, "the distill config")
    dcfg = DistillConfig.from_dict(cfg_json["distill"])
    mcfg = ModelConfig.from_dict(cfg_json["model"])
    weights = load_checked_weights(distill_dir, header, "distilled student weights", "distill again")
    check_head_family(weights, mcfg.action_head, Path(distill_dir) / WEIGHTS_FILE, prefix="vla.head.")
    student = RoutedStudent(mcfg, router_dim=dcfg.router_dim, tau=dcfg.tau)
    kept = {k: v for k, v in weights.items() if not k.startswith("probes.")}
    student.load_state_dict(kept, strict=True)
    student.eval()
    return student, cfg_json, header


def calibrate(student: RoutedStudent, rho: float, cfg: ExportConfig, sim: SimConfig, seeds: dict[str, list[int]],
              progress: bool = True) -> list[dict]:
    """Shift the gate logits until the closed-loop executed-layer fraction on training placements meets rho."""
    from actdistill.evaluate import evaluate

    target = rho - cfg.calib_margin
    ecfg = EvalConfig(episodes_per_task=cfg.calib_episodes_per_task, max_steps=cfg.max_steps, workers=1,
                      batch_envs=cfg.calib_episodes_per_task)
    history = []
    for r in range(cfg.calib_rounds):
        result, episodes = evaluate(student, ecfg, sim, None, name=f"calibration round {r}", progress=progress,
                                    seeds_per_task=seeds, record_logits=True, return_episodes=True)
        frac = result["layers_executed_frac"]
        shift = float(student.router.gate_bias[0])
        history.append({"round": r, "gate_shift": round(shift, 4), "layers_executed_frac": round(frac, 4),
                        "success_mean": round(result["success_mean"], 4)})
        if rho - 2 * cfg.calib_margin - 0.02 <= frac <= rho or r == cfg.calib_rounds - 1:
            break
        logits = torch.from_numpy(np.concatenate([e["gate_logits"] for e in episodes if len(e["gate_logits"])]))
        student.router.gate_bias += student.calibrate_shift(logits, target)
    return history


def run_export(cfg: ExportConfig, distill_dir: Path, dataset_path: Path, out_dir: Path, sim: SimConfig,
               progress: bool = True) -> dict:
    t0 = time.time()
    out_dir = Path(out_dir)
    student, dist_cfg, dheader = _student_from_distill(Path(distill_dir))
    rho = dist_cfg["distill"]["rho"]
    history = []
    if cfg.calibrate:
        sim = SimConfig(tasks=tuple(dist_cfg["tasks"]), camera=sim.camera, image_size=student.image_size)
        history = calibrate(student, rho, cfg, sim, training_placements(dataset_path), progress)
    summary = save_student(student, out_dir, dist_cfg["model"], dist_cfg["distill"]["router_dim"], rho, dist_cfg["tasks"],
                           cfg.to_dict(), {"student": dheader["weights_hash"]}, {"calibration": history})
    summary["seconds"] = round(time.time() - t0, 1)
    write_header(out_dir, {**read_json(out_dir / "header.json", "the export header"), "summary": summary})
    return summary


def save_student(student: RoutedStudent, out_dir: Path, model_cfg: dict, router_dim: int, rho: float, tasks: list[str],
                 config: dict, inputs: dict, extra: dict) -> dict:
    """Write a deployable routed student (no graph parts) with its header; also used for routed baselines."""
    weights = student.state_dict()
    leaked = [k for k in weights if k.startswith("probes.")]
    assert not leaked, leaked  # the exported student never carries graph parts
    atomic_save_tensors(out_dir / WEIGHTS_FILE, weights)
    atomic_write_json(out_dir / CONFIG_FILE, {"model": model_cfg, "router_dim": router_dim, "tau": student.tau,
                                             "rho": rho, "tasks": tasks})
    summary = {"weights": str(out_dir / WEIGHTS_FILE), "rho": rho, "gate_shift": float(student.router.gate_bias[0]),
               "parameters": sum(p.numel() for p in student.parameters()), **extra}
    write_header(out_dir, make_header("export", config, inputs=inputs, weights_hash=hash_tensors(weights), summary=summary))
    return summary


def load_student(folder: Path) -> RoutedStudent:
    folder = Path(folder)
    header = read_header(folder, "export")
    cfg = read_json(folder / CONFIG_FILE, "the student config")
    student = RoutedStudent(ModelConfig.from_dict(cfg["model"]), router_dim=cfg["router_dim"], tau=cfg["tau"])
    weights = load_checked_weights(folder, header, "student weights", "export it again")
    check_head_family(weights, student.vla.config.action_head, folder / WEIGHTS_FILE, prefix="vla.head.")
    try:
        student.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ArtifactError(f"{folder / WEIGHTS_FILE} is not a routed student of this architecture; export it again.") from err
    student.eval()
    return student
