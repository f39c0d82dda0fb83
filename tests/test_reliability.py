"""Faults a long run meets: SIGKILL and resume, a kill during a write, NaN and exploding gradients, a full disk."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from actdistill.artifacts import ArtifactError, ArtifactWriteError, atomic_save_tensors, atomic_write_json, load_tensors
from actdistill.cli import main
from actdistill.config import DistillConfig, ProbeConfig, TeacherConfig, TrainConfig
from actdistill.constants import OBS_IMAGE
from actdistill.probe.stage import run_probe
from actdistill.training import LATEST_FILE, TrainingDiverged, train_loop
from tests.conftest import tiny_model_config

# Each trial kills a stage once at a random step after its first checkpoint; ACTDISTILL_KILL_TRIALS raises the count.
TRIALS = int(os.environ.get("ACTDISTILL_KILL_TRIALS", "1"))
STEPS, EVERY = 120, 10


def _train(**kw) -> TrainConfig:
    return TrainConfig(steps=STEPS, batch_size=8, lr=2e-3, warmup_steps=2, checkpoint_every=EVERY, num_threads=1,
                       shift_augment=kw.pop("shift_augment", 2), **kw)


STAGE_CONFIGS = {
    "train-teacher": TeacherConfig(model=tiny_model_config(), train=_train()),
    "probe": ProbeConfig(semantic_dim=16, graph_dim=16, affinity_dim=8, k=4, train=_train(shift_augment=0)),
    "distill": DistillConfig(rho=0.5, router_dim=8, router_init_bias=0.0, train=_train(shift_augment=0)),
}


@pytest.fixture(scope="module")
def small_probe(tiny_teacher, tiny_demos, tmp_path_factory):
    cfg = ProbeConfig(semantic_dim=16, graph_dim=16, affinity_dim=8, k=4,
                      train=TrainConfig(steps=4, batch_size=8, warmup_steps=1, shift_augment=0, checkpoint_every=4))
    out = tmp_path_factory.mktemp("probe")
    run_probe(cfg, tiny_teacher, tiny_demos, out, progress=False)
    return out


def _command(stage: str, out: Path, cfg_path: Path, demos: Path, teacher: Path, probe: Path) -> list[str]:
    args = {"train-teacher": ["--data", str(demos)],
            "probe": ["--teacher", str(teacher), "--data", str(demos)],
            "distill": ["--teacher", str(teacher), "--probe", str(probe), "--data", str(demos)]}[stage]
    return [sys.executable, "-m", "actdistill.cli", stage, *args, "--out", str(out), "--config", str(cfg_path),
            "--no-progress"]


def _checkpoint_step(out: Path) -> int:
    try:
        return json.loads((out / "ckpt" / LATEST_FILE).read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.parametrize("stage", list(STAGE_CONFIGS))
def test_sigkill_then_resume_equals_an_uninterrupted_run(stage, tiny_demos, tiny_teacher, small_probe, tmp_path):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(STAGE_CONFIGS[stage].to_dict()))
    cmd = lambda out: _command(stage, out, cfg_path, tiny_demos, tiny_teacher, small_probe)  # noqa: E731
    ref = tmp_path / "reference"
    subprocess.run(cmd(ref), check=True, capture_output=True, timeout=600)
    weights = "probes.safetensors" if stage == "probe" else "model.safetensors"
    expected = load_tensors(ref / weights, "reference")
    rng = random.Random(f"{stage}-kill")
    for trial in range(TRIALS):
        out = tmp_path / f"killed-{trial}"
        kill_after = rng.choice(range(EVERY, STEPS // 2, EVERY))  # a checkpoint; the kill lands in the steps after it
        proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while _checkpoint_step(out) < kill_after and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the stage finished before it could be killed"
        killed_at = _checkpoint_step(out)
        assert EVERY <= killed_at < STEPS and not (out / "header.json").exists()
        done = subprocess.run(cmd(out), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        got = load_tensors(out / weights, "resumed")
        assert got.keys() == expected.keys()
        for k in expected:
            assert torch.equal(got[k], expected[k]), f"{stage}: {k} differs after a kill at checkpoint {killed_at}"


_WRITER = """
import sys, torch
from actdistill.artifacts import atomic_save_tensors
path = sys.argv[1]
i = 0
while True:
    atomic_save_tensors(path, {"w": torch.full((4_000_000,), float(i % 2))}, metadata={"version": str(i % 2)})
    i += 1
"""


def test_a_kill_during_a_write_leaves_the_previous_file_loadable(tmp_path):
    path = tmp_path / "model.safetensors"
    atomic_save_tensors(path, {"w": torch.full((4_000_000,), 7.0)})
    rng = random.Random(1)
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)])
        time.sleep(rng.uniform(1.0, 2.0))  # several 16 MB writes in flight
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        w = load_tensors(path, "the file")["w"]
        assert w.numel() == 4_000_000 and w.unique().numel() == 1 and w[0].item() in (0.0, 1.0, 7.0)


class _Line(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))


class _Frames:
    def __len__(self):
        return 32

    def batch(self, idx):
        return {OBS_IMAGE: torch.zeros(len(idx), 4, 4, 3, dtype=torch.uint8), "x": idx.float()}


def _loop(tmp_path, loss_at, steps=12, every=5, **cfg):
    model = _Line()
    train_cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-2, warmup_steps=0, checkpoint_every=every, shift_augment=0, **cfg)
    return model, train_loop(model=model, dataset=_Frames(), cfg=train_cfg, out_dir=tmp_path, stage="toy",
                             loss_fn=lambda m, b, s: (loss_at(m, s), {}), progress=False)


def test_a_nan_loss_stops_with_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    def loss_at(m, step):
        return (m.w.sum() - 1) ** 2 * (float("nan") if step == 7 else 1.0)

    with pytest.raises(TrainingDiverged, match="at step 7;"):
        _loop(tmp_path, loss_at)
    assert _checkpoint_step(tmp_path) == 5
    assert torch.isfinite(load_tensors(tmp_path / "ckpt" / "step-0000005" / "model.safetensors", "ckpt")["w"]).all()


def test_an_infinite_gradient_with_a_finite_loss_stops_too(tmp_path):
    def loss_at(m, step):
        return m.w.sum() + (torch.sqrt(m.w[0] - m.w[0].detach()) if step == 3 else 0.0)  # value 0, gradient inf

    with pytest.raises(TrainingDiverged, match="gradient norm became inf at step 3"):
        _loop(tmp_path, loss_at)


def test_an_exploding_gradient_is_clipped_and_logged(tmp_path):
    def loss_at(m, step):
        return m.w.sum() * (1e9 if step == 2 else 1e-3)

    model, result = _loop(tmp_path, loss_at, steps=3, every=3, grad_clip=1.0)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and log[-1]["clipped_steps"] == 1 and log[-1]["grad_norm"] > 1e8
    assert torch.isfinite(model.w).all() and (model.w - 1).abs().max() < 0.1  # Adam steps of size ~lr, not 1e9


@pytest.mark.parametrize("code,reason", [(errno.ENOSPC, "no space left on the device"), (errno.EACCES, "permission denied")])
def test_disk_full_or_no_permission_is_one_sentence_and_earlier_artifacts_survive(code, reason, tiny_demos, tmp_path,
                                                                                     monkeypatch, capsys):
    import actdistill.artifacts as artifacts
    from actdistill.teacher import train_teacher

    out = tmp_path / "teacher"
    cfg = TeacherConfig(model=tiny_model_config(), train=TrainConfig(steps=8, batch_size=4, warmup_steps=1, checkpoint_every=2))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    train_teacher(cfg, tiny_demos, out, progress=False, stop_after=4)  # an interrupted run: checkpoint at step 4
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert _checkpoint_step(out) == 4
    real_save = artifacts.save_file

    def failing_save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)  # half of the data reached the disk ...
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError(code, os.strerror(code))  # ... then the device refused the rest

    monkeypatch.setattr(artifacts, "save_file", failing_save)
    argv = ["train-teacher", "--data", str(tiny_demos), "--out", str(out), "--config", str(tmp_path / "cfg.json"),
            "--no-progress"]
    capsys.readouterr()
    assert main(argv) == 2  # resumes at step 4; its first checkpoint write (step 6) fails
    err = capsys.readouterr().err.strip()
    assert err.startswith("actdistill: error: Could not write") and reason in err and "\n" not in err
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # exactly as the interrupted run left it: no partial or temporary files
    monkeypatch.setattr(artifacts, "save_file", real_save)
    assert main(argv) == 0 and _checkpoint_step(out) == 8  # with room again, the same command finishes the run


def test_a_checkpoint_of_another_run_is_refused_naming_the_folder(tmp_path):
    _loop(tmp_path, lambda m, s: m.w.sum() ** 2, steps=5)
    with pytest.raises(ArtifactError, match="belongs to a different toy run"):
        _loop(tmp_path, lambda m, s: m.w.sum() ** 2, steps=6)


def test_a_pointer_to_a_missing_checkpoint_is_refused(tmp_path):
    _loop(tmp_path, lambda m, s: m.w.sum() ** 2, steps=5)
    latest = json.loads((tmp_path / "ckpt" / LATEST_FILE).read_text())
    atomic_write_json(tmp_path / "ckpt" / LATEST_FILE, {**latest, "folder": "step-0000099"})
    with pytest.raises(ArtifactError, match="checkpoint state not found"):
        _loop(tmp_path, lambda m, s: m.w.sum() ** 2, steps=5)


def test_write_errors_name_the_file(tmp_path, monkeypatch):
    import actdistill.artifacts as artifacts

    def no_room(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.tempfile, "mkstemp", no_room)
    with pytest.raises(ArtifactWriteError, match=f"Could not write {tmp_path / 'x.json'}: no space left"):
        atomic_write_json(tmp_path / "x.json", {})
    assert list(tmp_path.iterdir()) == []


def test_tied_weights_are_stored_once_and_tied_again_on_load(tmp_path):
    """A tensor under two names (tied embeddings, a decoder held by a VLM and by its backbone) checkpoints and resumes."""
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied, as in many language models
    model = nn.ModuleDict({"emb": emb, "head": head})
    atomic_save_tensors(tmp_path / "w.safetensors", model.state_dict())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["emb.weight"]  # stored once
    loaded = load_tensors(tmp_path / "w.safetensors", "tied")
    assert sorted(loaded) == ["emb.weight", "head.weight"] and loaded["emb.weight"] is loaded["head.weight"]
    fresh = nn.ModuleDict({"emb": nn.Embedding(10, 4), "head": nn.Linear(4, 10, bias=False)})
    fresh["head"].weight = fresh["emb"].weight
    fresh.load_state_dict(loaded, strict=True)
    torch.testing.assert_close(fresh["head"].weight, emb.weight)
    # the weights hash a header records is the hash of what loads back
    from actdistill.artifacts import hash_tensors

    assert hash_tensors(loaded) == hash_tensors(model.state_dict())
    overlapping = {"a": emb.weight, "b": emb.weight[1:]}
    with pytest.raises(ArtifactError, match="different views of one storage"):
        atomic_save_tensors(tmp_path / "v.safetensors", overlapping)


def test_the_count_of_clipped_steps_survives_a_resume(tmp_path):
    def loss_at(m, step):
        return m.w.sum() * (1e9 if step in (1, 6) else 1e-3)

    def run(folder, stop_after=None):
        model = _Line()
        cfg = TrainConfig(steps=8, batch_size=4, lr=1e-2, warmup_steps=0, checkpoint_every=4, shift_augment=0)
        train_loop(model=model, dataset=_Frames(), cfg=cfg, out_dir=folder, stage="toy",
                   loss_fn=lambda m, b, s: (loss_at(m, s), {}), progress=False, stop_after=stop_after)
        return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]

    whole = run(tmp_path / "whole")
    run(tmp_path / "resumed", stop_after=4)
    resumed = run(tmp_path / "resumed")
    assert whole[-1]["clipped_steps"] == resumed[-1]["clipped_steps"] == 2
