"""`actdistill probe`: train E_l, P_l on the frozen teacher, then write the teacher cache (docs/design.md "Teacher probing").

L_prep = mean_l MSE(P_l(E_l(h_l)), a_gt). After training, one deterministic pass over every
training frame (no augmentation) writes z_l^T and a_l^T, keyed by sample id. The per-layer probe
error (table + plot) shows at which depth the teacher's action forms.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from actdistill.artifacts import (ArtifactError, atomic_save_tensors, atomic_write_bytes, atomic_write_json, hash_tensors,
                                  load_tensors, make_header, read_header, read_json, save_figure, write_header)
from actdistill.cache import CACHE_FILE, TeacherCache
from actdistill.config import ProbeConfig
from actdistill.constants import ACTION, ACTION_DIM, ACTION_PAD, CONFIG_FILE
from actdistill.data.dataset import FrameDataset
from actdistill.data.hdf5 import read_demos
from actdistill.models.heads import action_loss
from actdistill.probe.graph import LayerProbes
from actdistill.teacher import load_teacher
from actdistill.training import distributed_summary, main_process_writes, train_loop

PROBES_FILE = "probes.safetensors"


def build_probes(cfg: ProbeConfig, teacher) -> LayerProbes:
    action_dim = getattr(getattr(teacher, "config", None), "action_dim", ACTION_DIM)  # a contract model may not say
    return LayerProbes(teacher.num_layers, teacher.hidden_size, teacher.chunk_size, cfg.semantic_dim, cfg.graph_dim,
                       cfg.affinity_dim, cfg.k, cfg.heads, action_dim=action_dim)


def teacher_hidden(teacher, batch: dict) -> list[torch.Tensor]:
    with torch.no_grad():
        _, hidden = teacher.backbone(teacher.embed(batch), return_hidden=True)
    return hidden


def prep_loss(probe_actions: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """L_prep = mean_l MSE(a_l, a_gt); also returns the per-layer errors (L,)."""
    per_layer = torch.stack([action_loss(probe_actions[:, l], batch[ACTION], batch.get(ACTION_PAD))
                             for l in range(probe_actions.shape[1])])
    return per_layer.mean(), per_layer


def run_probe(cfg: ProbeConfig, teacher_dir: Path, dataset_path: Path, out_dir: Path, progress: bool = True,
              stop_after: int | None = None) -> dict:
    teacher, tinfo = load_teacher(teacher_dir)
    demos = read_demos(dataset_path)
    # any dataset of the teacher's tasks (FrameDataset checks them) and image size: its training set, or a smaller
    # distillation set (RunConfig.distill_demos_per_task), as a user distilling a teacher trained on data they do not
    # hold has
    data = FrameDataset(demos, teacher.config.chunk_size, tuple(tinfo["tasks"]))
    size = data.image_size
    if size != teacher.config.image_size:
        raise ArtifactError(f"{dataset_path} holds {size}x{size} images, but the teacher in {teacher_dir} reads "
                            f"{teacher.config.image_size}x{teacher.config.image_size}; probe it with data of its image size.")
    return train_probes(cfg, teacher, data, out_dir, progress, stop_after, teacher_hash=tinfo["header"]["weights_hash"])


def train_probes(cfg: ProbeConfig, teacher, data: FrameDataset, out_dir: Path, progress: bool = True,
                 stop_after: int | None = None, teacher_hash: str | None = None) -> dict:
    """Probe any teacher that meets the model contract (models/contract.py) on a FrameDataset; writes to `out_dir`."""
    out_dir = Path(out_dir)
    trainable = [p for p in teacher.parameters() if p.requires_grad]
    for p in trainable:  # the teacher is frozen while probed; its flags are restored afterwards (a student copies them)
        p.requires_grad_(False)
    try:
        return _train_probes(cfg, teacher, data, out_dir, progress, stop_after, teacher_hash)
    finally:
        for p in trainable:
            p.requires_grad_(True)


def _train_probes(cfg: ProbeConfig, teacher, data: FrameDataset, out_dir: Path, progress: bool, stop_after: int | None,
                  teacher_hash: str | None) -> dict:
    teacher.eval()
    teacher_hash = teacher_hash or hash_tensors(teacher.state_dict())
    torch.manual_seed(cfg.train.seed)
    probes = build_probes(cfg, teacher)

    def loss_fn(model, batch, step):
        _, a = model(teacher_hidden(teacher, batch))
        loss, per_layer = prep_loss(a, batch)
        return loss, {"l_prep": loss.item(), "first": per_layer[0].item(), "last": per_layer[-1].item()}

    result = train_loop(model=probes, dataset=data, cfg=cfg.train, out_dir=out_dir, stage="probe", loss_fn=loss_fn,
                        identity={"probe": cfg.to_dict(), "teacher": teacher_hash, "dataset": data.fingerprint},
                        progress=progress, stop_after=stop_after)
    if result.steps < cfg.train.steps:
        return {"stopped_at": result.steps}

    def write() -> dict:
        # One deterministic pass over every frame writes the cache (main process only; every rank of
        # a later distillation reads it).
        t0 = time.time()
        probes.eval()
        n = len(data)
        sem, act, err_sum = [], [], torch.zeros(teacher.num_layers)
        with torch.no_grad():
            for start in tqdm(range(0, n, cfg.cache_batch_size), desc="teacher cache", disable=not progress):
                idx = torch.arange(start, min(start + cfg.cache_batch_size, n))
                batch = data.batch(idx)
                z, a = probes(teacher_hidden(teacher, batch))
                _, per_layer = prep_loss(a, batch)
                err_sum += per_layer * len(idx)
                sem.append(z)
                act.append(a)
        probe_weights = probes.state_dict()
        heads_hash = hash_tensors(probe_weights)
        fingerprint = {"teacher_weights": teacher_hash, "dataset": data.fingerprint, "heads": heads_hash}
        cache = TeacherCache(torch.cat(sem), torch.cat(act), torch.arange(n), fingerprint)
        cache.save(out_dir / CACHE_FILE)
        atomic_save_tensors(out_dir / PROBES_FILE, probe_weights)
        atomic_write_json(out_dir / CONFIG_FILE, cfg.to_dict())

        layer_err = (err_sum / n).tolist()
        report_probe_error(layer_err, out_dir)
        summary = {"probes": str(out_dir / PROBES_FILE), "cache": str(out_dir / CACHE_FILE), "samples": n,
                   "steps": result.steps, "train_seconds": round(result.seconds, 1), "cache_seconds": round(time.time() - t0, 1),
                   "seconds": round(result.seconds + time.time() - t0, 1), "final_loss": round(result.final_loss, 5),
                   "probe_mse_per_layer": [round(e, 5) for e in layer_err],
                   "parameters": sum(p.numel() for p in probes.parameters()), **distributed_summary(result)}
        write_header(out_dir, make_header("probe", cfg.to_dict(), inputs={"teacher": teacher_hash, "dataset": data.fingerprint},
                                          fingerprint=fingerprint, summary=summary))
        return summary

    return main_process_writes(out_dir, write)


def report_probe_error(layer_err: list[float], out_dir: Path) -> None:
    """Table and plot of each layer's probe action error: where the teacher's action forms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["| layer | probe action MSE (training frames) |", "|---|---|"]
    lines += [f"| {l} | {e:.5f} |" for l, e in enumerate(layer_err)]
    atomic_write_bytes(out_dir / "probe_error.md", ("\n".join(lines) + "\n").encode())
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(len(layer_err)), layer_err, marker="o")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("probe action MSE")
    ax.set_title("Action error of the per-layer probe vs depth")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out_dir / "probe_error.png")
    plt.close(fig)


def load_probe_artifact(probe_dir: Path, teacher, teacher_hash: str, dataset_fp: str) -> tuple[LayerProbes, TeacherCache, dict]:
    """The trained probes and the cache, checked against the teacher and dataset at hand."""
    probe_dir = Path(probe_dir)
    header = read_header(probe_dir, "probe")
    cfg = ProbeConfig.from_saved(read_json(probe_dir / CONFIG_FILE, "the probe config"))
    probes = build_probes(cfg, teacher)
    weights = load_tensors(probe_dir / PROBES_FILE, "the probe weights")
    heads_hash = hash_tensors(weights)
    try:
        probes.load_state_dict(weights)
    except RuntimeError as err:
        raise ArtifactError(f"The probes in {probe_dir} do not fit this teacher ({str(err).splitlines()[0]}); probe it again.") from err
    expect = {"teacher_weights": teacher_hash, "dataset": dataset_fp, "heads": heads_hash}
    cache = TeacherCache.load(probe_dir / CACHE_FILE, expect)
    return probes, cache, header
