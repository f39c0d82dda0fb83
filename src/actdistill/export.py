"""`actdistill export`: the deployable routed student (docs/design.md pipeline stage 5 and "Budget calibration").

Every graph extractor and action probe is removed; what remains is the teacher copy and the router.
The budget loss holds on training frames, but closed-loop rollouts visit other states, so the gates
are then calibrated: a global shift of the gate logits, chosen from the logits recorded in closed-loop
rollouts on training placements and re-measured until the executed-layer fraction meets rho. The
shift is stored in the router's `gate_bias` buffer, i.e. inside the exported weights.

A small shift can move many gates across the threshold at once, so the calibrated student runs masks it
never trained with. Settling (`settle_steps`) then continues the distillation with the router and
everything its logits read frozen: each input keeps its calibrated mask and the network that is
deployed is the network that was trained.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from actdistill.artifacts import (ArtifactError, atomic_save_tensors, atomic_write_json, hash_tensors, load_checked_weights,
                                  make_header, read_header, read_json, write_header)
from actdistill.config import (ConfigError, DistillConfig, EvalConfig, ExportConfig, ModelConfig, SimConfig, StudentConfig,
                               TrainConfig)
from actdistill.constants import CONFIG_FILE, WEIGHTS_FILE
from actdistill.distill.routing import RoutedStudent
from actdistill.models.heads import check_head_family
from actdistill.models.vla import ReferenceVLA
from actdistill.training import train_loop


def training_placements(dataset_path: Path) -> dict[str, list[int]]:
    """The placement seeds of the demonstrations (read from the file's attributes only)."""
    with h5py.File(dataset_path, "r") as f:
        return json.loads(f["data"].attrs["placement_seeds"])


def _student_from_distill(distill_dir: Path, probes=None) -> tuple[RoutedStudent, dict, dict]:
    """The distilled student without its graph parts, or with them when a `probes` module is given (a copy of it
    receives the student's trained extractors and probes; the caller's keeps the teacher's)."""
    header = read_header(distill_dir, "distill")
    cfg_json = read_json(Path(distill_dir) / CONFIG_FILE, "the distill config")
    dcfg = DistillConfig.from_saved(cfg_json["distill"])
    mcfg = ModelConfig.from_saved(cfg_json["model"])
    weights = load_checked_weights(distill_dir, header, "distilled student weights", "distill again")
    check_head_family(weights, mcfg.action_head, Path(distill_dir) / WEIGHTS_FILE, prefix="vla.head.")
    student = RoutedStudent(mcfg, router_dim=dcfg.router_dim, tau=dcfg.tau,
                            probes=copy.deepcopy(probes) if probes is not None else None,
                            router_inputs=dcfg.router_inputs)
    kept = weights if probes is not None else {k: v for k, v in weights.items() if not k.startswith("probes.")}
    try:
        student.load_state_dict(kept, strict=True)
    except RuntimeError as err:
        raise ArtifactError(f"{Path(distill_dir) / WEIGHTS_FILE} does not fit the probes given ({str(err).splitlines()[0]}); "
                            "distill again.") from err
    student.eval()
    return student, cfg_json, header


def calibrate(student: RoutedStudent, rho: float, cfg: ExportConfig, sim: SimConfig, seeds: dict[str, list[int]],
              progress: bool = True, phase: str = "calibrate") -> list[dict]:
    """Shift the gate logits until the closed-loop executed-layer fraction on training placements meets rho.

    `seeds` (task -> placement seeds) are demonstration or validation placements; test placements are refused."""
    from actdistill.evaluate import PolicyCopy, evaluate
    from actdistill.sim import placement_kind

    test = sorted(s for ss in seeds.values() for s in ss if placement_kind(s) == "eval")
    if test:
        raise ValueError(f"Calibration was given {len(test)} test placement(s) (e.g. {test[0]}); it may only use "
                         f"demonstration or validation placements, so that test numbers are never tuned on.")
    target = rho - cfg.calib_margin
    ecfg = EvalConfig(episodes_per_task=cfg.calib_episodes_per_task, max_steps=cfg.max_steps,
                      workers=cfg.calib_workers, batch_envs=cfg.calib_episodes_per_task)
    history = []
    for r in range(cfg.calib_rounds):
        result, episodes = evaluate(PolicyCopy(student), ecfg, sim, None, name=f"{phase} round {r}", progress=progress,
                                    seeds_per_task=seeds, record_logits=True, return_episodes=True)
        frac = result["layers_executed_frac"]
        history.append({"phase": phase, "round": r, "gate_shift": round(gate_shift(student), 4),
                        "layers_executed_frac": round(frac, 4), "success_mean": round(result["success_mean"], 4)})
        logits = torch.from_numpy(np.concatenate([e["gate_logits"] for e in episodes if len(e["gate_logits"])]))
        snapped = r == 0 and phase == "calibrate" and cfg.snap > 0
        if snapped:  # the recorded logits as the snapped router would give them
            fixed = snap_gates(student, logits, cfg.snap)
            history[-1].update(fixed)
            logits = logits.clone()
            logits[:, fixed["snapped_on"]] += SNAP_BIAS
            logits[:, fixed["snapped_off"]] -= SNAP_BIAS
        if not snapped and (rho - 2 * cfg.calib_margin - 0.02 <= frac <= rho or r == cfg.calib_rounds - 1):
            break
        student.router.gate_bias += student.calibrate_shift(logits, target)
    return history


SNAP_BIAS = 1e4  # a gate bias this large saturates the sigmoid: the gate is fixed for every input


def gate_shift(student: RoutedStudent) -> float:
    """The calibration shift held in the router's bias (read on a layer that is not fixed on or off)."""
    bias = student.router.gate_bias
    free = (bias.abs() < SNAP_BIAS / 2).nonzero()
    return float(bias[free[0, 0]]) if len(free) else 0.0


@torch.no_grad()
def snap_gates(student: RoutedStudent, logits: torch.Tensor, share: float) -> dict:
    """Fix the gates that are nearly constant in closed loop: a layer on in at least 1 - `share` of the recorded
    steps (logits (S, L)) runs for every input, one on in at most `share` for none. Such gates sit where the budget
    pushed them, near the threshold, and are the ones a small input change flips (docs/design.md "Gate snapping")."""
    on = (logits >= student.gate_threshold).float().mean(0)
    always = [l for l in range(len(on)) if on[l] >= 1 - share]
    never = [l for l in range(len(on)) if on[l] <= share]
    for l in always:
        student.router.gate_bias[l] += SNAP_BIAS
    for l in never:
        student.router.gate_bias[l] -= SNAP_BIAS
    return {"snapped_on": always, "snapped_off": never, "on_rate_per_layer": [round(float(v), 4) for v in on]}


def settle(student: RoutedStudent, loss_fn, data, train_cfg: TrainConfig, steps: int, out_dir: Path, stage: str,
           identity: dict, progress: bool = True) -> dict:
    """Train, with the calibrated gates, every parameter the gate decisions do not depend on.

    The router and whatever embeds the spans it reads stay frozen, so every input keeps the mask it was
    calibrated with; `loss_fn(model, batch, step)` is the student's own training loss. Resumes from
    `out_dir/ckpt`."""
    frozen = student.gate_dependencies(data.batch(torch.arange(min(8, len(data)))))
    trainable = {n: p.requires_grad for n, p in student.named_parameters()}
    for n, p in student.named_parameters():
        p.requires_grad_(trainable[n] and n not in frozen)
    cfg = dataclasses.replace(train_cfg, steps=steps, warmup_steps=min(train_cfg.warmup_steps, steps // 5))
    try:
        result = train_loop(model=student, dataset=data, cfg=cfg, out_dir=out_dir, stage=stage, loss_fn=loss_fn,
                            params=[p for p in student.parameters() if p.requires_grad], identity=identity,
                            progress=progress)
    finally:
        for n, p in student.named_parameters():
            p.requires_grad_(trainable[n])
    student.eval()
    return {"steps": result.steps, "seconds": round(result.seconds, 1), "frozen_parameters": len(frozen),
            "final_loss": round(result.final_loss, 5)}


def calibrate_and_settle(student: RoutedStudent, rho: float, cfg: ExportConfig, sim: SimConfig, seeds: dict[str, list[int]],
                         loss_fn, data, train_cfg: TrainConfig, out_dir: Path, identity: dict,
                         progress: bool = True) -> tuple[list[dict], dict]:
    """Calibrate; then, when `cfg.settles`, settle with `loss_fn` and re-measure. Returns (history, summary extras)."""
    history = calibrate(student, rho, cfg, sim, seeds, progress)
    if not cfg.settles:
        return history, {}
    s = settle(student, loss_fn, data, train_cfg, cfg.settle_steps, Path(out_dir) / "settle", "settle",
               {**identity, "gate_bias": student.router.gate_bias.tolist()}, progress)
    history += calibrate(student, rho, cfg, sim, seeds, progress, phase="settled")
    return history, {"settle": s}


def export_inputs(cfg: ExportConfig, student_hash: str, cache_fingerprint: dict | None) -> dict:
    """The export stage's inputs: the distilled student, and the teacher cache when it settles."""
    return {"student": student_hash, **({"cache": cache_fingerprint} if cfg.settles else {})}


def run_export(cfg: ExportConfig, distill_dir: Path, dataset_path: Path, out_dir: Path, sim: SimConfig,
               progress: bool = True, teacher_dir: Path | None = None, probe_dir: Path | None = None) -> dict:
    """Calibrate the gates to the budget (and settle, which needs the teacher and probe folders for the cache)."""
    t0 = time.time()
    out_dir = Path(out_dir)
    settling = cfg.settles
    if settling and (teacher_dir is None or probe_dir is None):
        raise ConfigError("ExportConfig.settle_steps > 0 continues the distillation against the teacher cache; give the "
                          "teacher and probe folders (--teacher, --probe) or set export.settle_steps=0.")
    probes = cache = data = None
    if settling:
        from actdistill.data.dataset import FrameDataset
        from actdistill.data.hdf5 import read_demos
        from actdistill.probe.stage import load_probe_artifact
        from actdistill.teacher import load_teacher

        teacher, tinfo = load_teacher(Path(teacher_dir))
        data = FrameDataset(read_demos(dataset_path), teacher.config.chunk_size, tuple(tinfo["tasks"]))
        probes, cache, _ = load_probe_artifact(Path(probe_dir), teacher, tinfo["header"]["weights_hash"], data.fingerprint)
    student, dist_cfg, dheader = _student_from_distill(Path(distill_dir), probes)
    if settling and dheader["inputs"].get("cache") != cache.fingerprint:
        raise ArtifactError(f"The student in {distill_dir} was distilled against another teacher cache than the one in "
                            f"{probe_dir}; give the probe folder it was distilled with.")
    rho = dist_cfg["distill"]["rho"]
    history, extra = [], {}
    if cfg.calibrate:
        from actdistill.sim import suite_for

        tasks = tuple(dist_cfg["tasks"])  # calibrated on the tasks it was distilled on, in the caller's suite if it has them
        sim = SimConfig(tasks=tasks, camera=sim.camera, image_size=student.image_size,
                        suite=suite_for(tasks, prefer=sim.suite).key)
        from actdistill.distill.consistency import distill_rewordings
        from actdistill.distill.stage import distill_loss, final_action_loss
        from actdistill.distill.targets import teacher_targets

        dcfg = DistillConfig.from_saved(dist_cfg["distill"])
        if cfg.settle_loss == "final":
            def loss_fn(m, b, s):
                return final_action_loss(m, teacher, b, dcfg)
        else:
            rewordings = distill_rewordings(dcfg, data.task_names) if settling else None
            targets = teacher_targets(dcfg.teacher_targets, cache, teacher, probes) if settling else None
            initial = dheader.get("summary", {}).get("initial_streams")  # stream_norm="initial": the distillation's scales
            initial = torch.tensor(initial) if initial is not None else None

            def loss_fn(m, b, s):
                return distill_loss(m, b, targets, dcfg, soft=False, initial=initial, step=s, rewordings=rewordings,
                                    stream_step=dcfg.train.steps,  # the streams' weight at the end of distillation
                                    teacher=teacher)
        history, extra = calibrate_and_settle(student, rho, cfg, sim, training_placements(dataset_path), loss_fn, data,
                                              dcfg.train, out_dir, {"student": dheader["weights_hash"]}, progress)
    student.strip_probes()
    summary = save_student(student, out_dir, dist_cfg["model"], dist_cfg["distill"]["router_dim"], rho, dist_cfg["tasks"],
                           cfg.to_dict(), export_inputs(cfg, dheader["weights_hash"], cache and cache.fingerprint),
                           {"calibration": history, **extra})
    summary["seconds"] = round(time.time() - t0, 1)
    write_header(out_dir, {**read_json(out_dir / "header.json", "the export header"), "summary": summary})
    return summary


def save_student(student: RoutedStudent, out_dir: Path, model_cfg: dict | None, router_dim: int, rho: float,
                 tasks: list[str], config: dict, inputs: dict, extra: dict) -> dict:
    """Write a deployable routed student (no graph parts) with its header; also used for routed baselines.

    `model_cfg` is the reference VLA's config, or None for a model of your own (its class is recorded, and
    `load_student` then needs a fresh instance of it)."""
    weights = student.state_dict()
    leaked = [k for k in weights if k.startswith("probes.")]
    assert not leaked, leaked  # the exported student never carries graph parts
    atomic_save_tensors(out_dir / WEIGHTS_FILE, weights)
    cls = type(student.vla)
    scfg = StudentConfig(model=model_cfg, model_class=f"{cls.__module__}.{cls.__qualname__}", router_dim=router_dim,
                         tau=student.tau, rho=rho, tasks=tuple(tasks), router_inputs=student.router.inputs)
    atomic_write_json(out_dir / CONFIG_FILE, scfg.to_dict())
    summary = {"weights": str(out_dir / WEIGHTS_FILE), "rho": rho, "gate_shift": gate_shift(student),
               "parameters": sum(p.numel() for p in student.parameters()), **extra}
    write_header(out_dir, make_header("export", config, inputs=inputs, weights_hash=hash_tensors(weights), summary=summary))
    return summary


def export_student(student: RoutedStudent, out_dir: Path, rho: float, tasks: list[str], inputs: dict | None = None) -> dict:
    """Export a routed student of any contract model (graph parts dropped) into `out_dir`, as `actdistill export`
    does for the reference VLA; reload it with `load_student(out_dir, model=<a fresh instance of your model>)`."""
    student.strip_probes().eval()
    model_cfg = student.vla.config.to_dict() if isinstance(student.vla, ReferenceVLA) else None
    return save_student(student, Path(out_dir), model_cfg, student.router.proj_vision.out_features, rho, list(tasks),
                        {"rho": rho}, inputs or {}, {})


def load_student(folder: Path, model: nn.Module | None = None) -> RoutedStudent:
    """A deployable routed student. The reference VLA is rebuilt from the saved config; a student of your own model
    needs `model`, a fresh instance of the class it was exported from (its weights are replaced)."""
    folder = Path(folder)
    header = read_header(folder, "export")
    cfg = StudentConfig.from_saved(read_json(folder / CONFIG_FILE, "the student config"))
    if cfg.model is None and model is None:
        raise ArtifactError(f"{folder} holds a routed {cfg.model_class or 'custom model'}; load it with "
                            "load_student(folder, model=<a fresh instance of that class>).")
    student = RoutedStudent(cfg.model if model is None else model, router_dim=cfg.router_dim, tau=cfg.tau,
                            router_inputs=cfg.router_inputs)
    weights = load_checked_weights(folder, header, "student weights", "export it again")
    if cfg.model is not None:
        check_head_family(weights, student.vla.config.action_head, folder / WEIGHTS_FILE, prefix="vla.head.")
    try:
        student.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ArtifactError(f"{folder / WEIGHTS_FILE} is not a routed student of this architecture; export it again.") from err
    student.eval()
    return student
