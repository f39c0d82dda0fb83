"""`actdistill distill`: train the routed student against the teacher cache (docs/design.md "Losses").

L = L_task + alpha L_sem + beta L_act + lambda_bal L_bal + lambda_bud L_bud + lambda_pol L_pol, with the
teacher's per-layer targets read from the fingerprinted cache by sample id, or computed on each augmented batch
(`teacher_targets="online"`, distill/targets.py). L_bud holds the executed
fraction (straight-through masks) to rho by default; L_pol keeps gates away from the threshold.
"""

from __future__ import annotations

from pathlib import Path

import torch

from actdistill.artifacts import (ArtifactError, atomic_save_tensors, atomic_write_json, hash_tensors, make_header,
                                  read_json, write_header)
from actdistill.config import ConfigError, DistillConfig
from actdistill.constants import ACTION, ACTION_PAD, CONFIG_FILE, ROUTER_VIEW, WEIGHTS_FILE
from actdistill.data.dataset import FrameDataset
from actdistill.data.hdf5 import read_demos
from actdistill.distill.consistency import consistency_loss, router_view, distill_rewordings
from actdistill.distill.losses import (action_stream_loss, layer_weights, normalise_streams, routed_gate_losses,
                                       semantic_loss, stream_weight)
from actdistill.distill.similarity import layer_input_similarity
from actdistill.distill.routing import RoutedStudent
from actdistill.distill.targets import teacher_targets
from actdistill.models.heads import action_loss
from actdistill.models.language import reword_batch
from actdistill.probe.stage import load_probe_artifact
from actdistill.teacher import load_teacher
from actdistill.training import distributed_summary, main_process_writes, step_generator, train_loop, unwrap


def distill_loss(model: RoutedStudent, batch: dict, targets, cfg: DistillConfig, soft: bool,
                 initial: torch.Tensor | None = None, step: int = 0,
                 rewordings: torch.Tensor | None = None, stream_step: int | None = None,
                 teacher=None) -> tuple[torch.Tensor, dict]:
    """The ActDistill objective; `targets(batch)` = the teacher's (z_l^T, a_l^T) of the batch (distill/targets.py);
    `initial` = (L_sem, L_act) of the untrained student for stream_norm="initial";
    `step` seeds the router-consistency view (a pure function of seed and step, so a resumed run draws the same);
    `rewordings` = the (tasks, K, D) table of training rewordings when cfg.router_reword or cfg.instruction_reword
    is set (distill_rewordings); `stream_step` = the step the streams' decay reads (cfg.stream_decay; default
    `step`: settling passes the last training step); `teacher` = the contract model whose final action
    cfg.final_kd distils (needed only then). The teacher's targets are always those of `batch` as given."""
    if cfg.final_kd > 0:
        check_final_action(unwrap(model), teacher)  # before the forward, as router-KD's loss does
    seen = student_input(batch, cfg, step, rewordings)
    if cfg.router_consistency > 0:
        gen = step_generator(cfg.train.seed * 104_729 + step)
        view = router_view(seen, cfg.router_jitter, cfg.router_lang_noise, gen, rewordings, cfg.router_reword)
        seen = {**seen, ROUTER_VIEW: view}
    out = model(seen, soft=soft)  # through the DDP wrapper when several processes train
    student = unwrap(model)
    l_task, l_sem, l_act = _streams(student, out, batch, targets, cfg)
    l_sem, l_act = normalise_streams(l_sem, l_act, cfg.stream_norm, student.num_layers, initial)
    g = out["gates"]
    w = stream_weight(step if stream_step is None else stream_step, cfg.train.steps, cfg.stream_decay)  # 1.0 when off
    loss, gl = with_gate_terms(l_task + cfg.alpha * w * l_sem + cfg.beta * w * l_act, student, out, cfg)
    extra = {}  # the optional terms, logged beside the gate terms
    if cfg.final_kd > 0:
        extra["kd"] = final_action_term(out, teacher, batch)
        loss = loss + cfg.final_kd * extra["kd"]
    if cfg.router_consistency > 0:
        extra["cons"] = consistency_loss(out["logits"], out["view_logits"], out["routed"])
        loss = loss + cfg.router_consistency * extra["cons"]
    on = out["masks"].detach() >= 0.5 if student.gating == "quantile" else g >= student.tau
    logs = {"loss": loss.item(), "task": l_task.item(), "sem": l_sem.item(), "act": l_act.item(),
            **{k: v.item() for k, v in {**gl, **extra}.items()}, "keep": on.float().mean().item(), "g": g.mean().item(),
            "gate_on_per_layer": [round(v, 3) for v in on.float().mean(0).tolist()]}
    if cfg.stream_decay > 0:
        logs["stream_w"] = w
    return loss, logs


def student_input(batch: dict, cfg: DistillConfig, step: int, rewordings: torch.Tensor | None) -> dict:
    """The batch the student reads: with cfg.instruction_reword > 0, each row's instruction embedding replaced
    with that probability by one of its task's training rewordings (a pure function of seed and step, so a resumed
    run draws the same); otherwise `batch` itself."""
    if cfg.instruction_reword <= 0:
        return batch
    if rewordings is None:
        raise ValueError("distill.instruction_reword > 0 needs the rewording table (distill_rewordings).")
    gen = step_generator(cfg.train.seed * 7_919 + step)
    return reword_batch(batch, rewordings, cfg.instruction_reword, gen)


def check_final_action(student: RoutedStudent, teacher) -> None:
    """Distilling the teacher's final action needs the teacher and compares continuous actions: refuse a missing
    teacher or another head in one sentence, before any forward pass."""
    if teacher is None:
        raise ValueError("Distillation from the teacher's final action (router-KD's term, distill.final_kd) needs the "
                         "teacher.")
    if student.vla.config.action_head != "regression":
        raise ValueError(f"Distillation from the teacher's final action needs a regression head (a continuous action "
                         f"output); this student has a {student.vla.config.action_head!r} head.")


def final_action_term(out: dict, teacher, batch: dict) -> torch.Tensor:
    """MSE between the student's action (its own head, from the forward pass `out`) and the teacher's final action
    on `batch` (valid steps only). `teacher` is any contract model with a continuous action output (`predict`);
    callers check both first (check_final_action)."""
    device = out["action"].device  # the training loop puts the batch and the student on it; the teacher follows
    if next(teacher.parameters()).device != device:
        teacher.to(device)
    with torch.no_grad():
        target = teacher.predict(batch)
    return action_loss(out["action"], target, batch.get(ACTION_PAD))


def final_action_loss(model: RoutedStudent, teacher, batch: dict, cfg: DistillConfig) -> tuple[torch.Tensor, dict]:
    """Task loss + distillation from the teacher's final action only (+ the same gate terms as ActDistill): the
    router-KD baseline's objective, and settling's with `export.settle_loss="final"`."""
    student = unwrap(model)
    check_final_action(student, teacher)  # before the forward: another head has no continuous action to compare
    out = model(batch)
    l_task = action_loss(out["action"], batch[ACTION], batch.get(ACTION_PAD))
    l_kd = final_action_term(out, teacher, batch)
    loss = with_gate_terms(l_task + cfg.beta * l_kd, student, out, cfg)[0]
    return loss, {"loss": loss.item(), "task": l_task.item(), "kd": l_kd.item(),
                  "keep": (out["masks"].detach() >= 0.5).float().mean().item()}


def with_gate_terms(loss: torch.Tensor, student: RoutedStudent, out: dict, cfg: DistillConfig) -> tuple[torch.Tensor, dict]:
    """`loss` plus the weighted gate terms (balance, budget, polarization) of one forward pass, added one by one in
    that order (the order every earlier distillation summed them in, so its weights reproduce bitwise); and each term."""
    gl = routed_gate_losses(out["gates"], out["routed"], student.tau, cfg.rho, cfg.budget_on, student.gating)
    return loss + cfg.lambda_bal * gl["bal"] + cfg.lambda_bud * gl["bud"] + cfg.lambda_pol * gl["pol"], gl


def _streams(student: RoutedStudent, out: dict, batch: dict, targets, cfg: DistillConfig):
    """(L_task, L_sem, L_act) of one forward pass against the teacher's targets of the batch."""
    z_t, a_t = targets(batch)
    device = out["final"].device
    z_t, a_t = z_t.to(device), a_t.to(device)
    w = layer_weights(student.num_layers, cfg.gamma).to(device)
    l_task = out["task_loss"]  # the head family's own loss, computed inside the forward
    executed = out["masks"].detach() >= 0.5 if cfg.semantic_on == "executed" else None
    l_sem = semantic_loss(out["semantic"], z_t, w, cfg.eta, executed)
    l_act = action_stream_loss(out["probe_action"], batch[ACTION], a_t, w, batch.get(ACTION_PAD))
    return l_task, l_sem, l_act


@torch.no_grad()
def initial_streams(student: RoutedStudent, data: FrameDataset, targets, cfg: DistillConfig) -> torch.Tensor:
    """(L_sem, L_act) of the untrained student running a random rho of its layers, on a fixed batch of evenly spread
    frames: the size of each stream when the budget first bites. (With every layer on, the untrained student is
    the teacher and L_sem is exactly 0.) The same on every process and on resume: it depends on no training step."""
    was = student.training
    student.eval()  # eval: the quantile gate's running threshold does not move
    idx = torch.linspace(0, len(data) - 1, min(cfg.train.batch_size, len(data))).long()
    batch = data.batch(idx)
    g = torch.Generator().manual_seed(cfg.train.seed)
    masks = (torch.rand(len(idx), student.num_layers, generator=g) < cfg.rho).float()
    masks[:, list(student.always_run)] = 1.0
    _, l_sem, l_act = _streams(student, student.forward_train(batch, masks=masks), batch, targets, cfg)
    student.train(was)
    return torch.stack([l_sem, l_act])


def check_always_run(count: int, rho: float, num_layers: int) -> None:
    """Refuse hybrid depth whose always-run layers alone exceed the budget (no routing could then meet it)."""
    if count > rho * num_layers + 1e-9:
        raise ConfigError(f"always_run={count} of the teacher's {num_layers} layers already runs "
                         f"{count / num_layers:.3f} of them, above the budget rho={rho}; set distill.always_run "
                         f"to at most {int(rho * num_layers + 1e-9)}.")


def hybrid_layers(teacher, data: FrameDataset, count: int, rho: float = 1.0) -> tuple[int, ...]:
    """The `count` layers that change their input most on training frames (lowest input/output cosine similarity):
    the always-run layers of hybrid depth. They may not exceed the budget rho on their own."""
    if count <= 0:
        return ()
    if count >= teacher.num_layers:
        raise ValueError(f"always_run={count} leaves no layer to route (the teacher has {teacher.num_layers}).")
    check_always_run(count, rho, teacher.num_layers)
    return tuple(sorted(torch.argsort(layer_input_similarity(teacher, data))[:count].tolist()))


def run_distill(cfg: DistillConfig, teacher_dir: Path, probe_dir: Path, dataset_path: Path, out_dir: Path,
                progress: bool = True, stop_after: int | None = None) -> dict:
    teacher, tinfo = load_teacher(teacher_dir)
    teacher_hash = tinfo["header"]["weights_hash"]
    demos = read_demos(dataset_path)
    probes, cache, _ = load_probe_artifact(probe_dir, teacher, teacher_hash, demos.fingerprint)
    data = FrameDataset(demos, teacher.config.chunk_size, tuple(tinfo["tasks"]))
    saved_config = {"model": teacher.config.to_dict(), "probe": read_json(Path(probe_dir) / CONFIG_FILE, "the probe config"),
                    "tasks": tinfo["tasks"]}
    return distill_student(cfg, teacher, probes, cache, data, out_dir, progress, stop_after, teacher_hash, saved_config)[1]


def distill_student(cfg: DistillConfig, teacher, probes, cache, data: FrameDataset, out_dir: Path, progress: bool = True,
                    stop_after: int | None = None, teacher_hash: str | None = None,
                    saved_config: dict | None = None) -> tuple[RoutedStudent, dict]:
    """Distil any teacher that meets the model contract (models/contract.py), given its probes and cache.

    Returns the routed student (probes still attached; `strip_probes` removes them) and the summary."""
    out_dir = Path(out_dir)
    teacher_hash = teacher_hash or hash_tensors(teacher.state_dict())
    if len(data) != cache.sample_ids.numel():
        raise ArtifactError(f"The teacher cache holds {cache.sample_ids.numel()} samples but the dataset {len(data)}; run `actdistill probe` again.")
    always = hybrid_layers(teacher, data, cfg.always_run, cfg.rho)
    torch.manual_seed(cfg.train.seed)
    student = RoutedStudent.from_teacher(teacher, probes, router_dim=cfg.router_dim, tau=cfg.tau,
                                         init_bias=cfg.router_init_bias, **routing_options(cfg, always))
    targets = teacher_targets(cfg.teacher_targets, cache, teacher, probes)
    initial = initial_streams(student, data, targets, cfg) if cfg.stream_norm == "initial" else None
    rewordings = distill_rewordings(cfg, data.task_names)

    def loss_fn(model, batch, step):
        return distill_loss(model, batch, targets, cfg, soft=step < cfg.soft_warmup_steps, initial=initial, step=step,
                            rewordings=rewordings, teacher=teacher)

    # The router learns faster than the copied weights: it starts from scratch and must move its gates
    # from "all on" to the budget within one short distillation.
    router_params = list(student.router.parameters())
    rest = [p for n, p in student.named_parameters() if not n.startswith("router.")]
    result = train_loop(model=student, dataset=data, cfg=cfg.train, out_dir=out_dir, stage="distill", loss_fn=loss_fn,
                        params=rest, extra_groups=[(router_params, cfg.router_lr_scale)],
                        identity={"distill": cfg.to_dict(), "teacher": teacher_hash, "cache": cache.fingerprint},
                        progress=progress, stop_after=stop_after)
    if result.steps < cfg.train.steps:
        return student, {"stopped_at": result.steps}
    thresholds = {}
    if cfg.gating == "quantile":
        thresholds["running_threshold"] = float(student.running_threshold)
        if cfg.threshold_source == "data":
            thresholds["data_threshold"] = student.set_threshold_from(_gate_logits(student, data))
    student.finish_training()  # the training gate folded into the router's bias: a plain routed student

    def write() -> dict:
        weights = student.state_dict()
        atomic_save_tensors(out_dir / WEIGHTS_FILE, weights)
        atomic_write_json(out_dir / CONFIG_FILE, {"distill": cfg.to_dict(), **(saved_config or {})})
        gate_means = _gate_means(student, data)
        last = result.history[-1] if result.history else {}
        summary = {"weights": str(out_dir / WEIGHTS_FILE), "steps": result.steps, "seconds": round(result.seconds, 1),
                   "final": {k: round(v, 5) for k, v in last.items() if isinstance(v, float)},
                   "train_keep_ratio": round(float(gate_means.mean()), 4),
                   "gate_mean_per_layer": [round(float(v), 4) for v in gate_means], "always_run_layers": list(always),
                   **thresholds,
                   **({"initial_streams": [float(v) for v in initial]} if initial is not None else {}),
                   **distributed_summary(result)}
        write_header(out_dir, make_header("distill", cfg.to_dict(), inputs={"teacher": teacher_hash, "cache": cache.fingerprint},
                                          weights_hash=hash_tensors(weights), summary=summary))
        return summary

    return student, main_process_writes(out_dir, write)


def routing_options(cfg: DistillConfig, always: tuple[int, ...]) -> dict:
    """The RoutedStudent training options a distillation config asks for."""
    return {"gating": cfg.gating, "rho": cfg.rho, "always_run": always, "momentum": cfg.threshold_momentum,
            "router_inputs": cfg.router_inputs}


def _spread(data: FrameDataset, n: int) -> torch.Tensor:
    return torch.linspace(0, len(data) - 1, min(n, len(data))).long()


@torch.no_grad()
def _gate_means(student: RoutedStudent, data: FrameDataset, n: int = 2048) -> torch.Tensor:
    """Per-layer fraction of training frames whose gate is on (hard), over an evenly spread subset."""
    masks = []
    for chunk in _spread(data, n).split(256):
        masks.append(student.layer_mask(student.vla.embed(data.batch(chunk))).float())
    return torch.cat(masks).mean(0)


@torch.no_grad()
def _gate_logits(student: RoutedStudent, data: FrameDataset, n: int = 2048) -> torch.Tensor:
    """Gate logits (n, L) of the router on evenly spread training frames (no augmentation)."""
    return torch.cat([student.router.logits(student.vla.embed(data.batch(chunk))) for chunk in _spread(data, n).split(256)])
