import dataclasses
import json
from pathlib import Path

import pytest
import torch

from actdistill.artifacts import ArtifactError, load_tensors
from actdistill.config import ConfigError, TrainConfig
from actdistill.teacher import load_teacher, train_teacher
from tests.conftest import tiny_teacher_config


def test_teacher_trains_saves_and_reloads(tiny_teacher):
    model, info = load_teacher(tiny_teacher)
    header = info["header"]
    assert header["stage"] == "train-teacher" and header["summary"]["steps"] == 20
    log = [json.loads(line) for line in (tiny_teacher / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    weights = load_tensors(tiny_teacher / "model.safetensors", "w")
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k])
    assert not torch.equal(model.state_std, torch.ones(7))  # dataset statistics were stored


def test_resume_continues_and_matches_uninterrupted_run(tiny_demos, tmp_path):
    cfg = tiny_teacher_config(steps=20)
    torch.manual_seed(0)
    train_teacher(cfg, tiny_demos, tmp_path / "full", progress=False)
    torch.manual_seed(0)
    out = train_teacher(cfg, tiny_demos, tmp_path / "resumed", progress=False, stop_after=10)
    assert out == {"stopped_at": 10}
    torch.manual_seed(123)  # a different global seed must not matter: the loop reseeds itself
    s = train_teacher(cfg, tiny_demos, tmp_path / "resumed", progress=False)
    assert s["resumed_from"] == 10
    a = load_tensors(tmp_path / "full" / "model.safetensors", "a")
    b = load_tensors(tmp_path / "resumed" / "model.safetensors", "b")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_checkpoint_of_another_run_is_refused(tiny_demos, tmp_path):
    train_teacher(tiny_teacher_config(steps=10), tiny_demos, tmp_path / "t", progress=False, stop_after=10)
    with pytest.raises(ArtifactError, match="different train-teacher run"):
        train_teacher(tiny_teacher_config(steps=10, num_layers=2), tiny_demos, tmp_path / "t", progress=False)


def test_tampered_weights_are_refused(tiny_teacher, tmp_path):
    import shutil

    copy = tmp_path / "t"
    shutil.copytree(tiny_teacher, copy)
    w = load_tensors(copy / "model.safetensors", "w")
    w["head.bias"] = w["head.bias"] + 1
    from safetensors.torch import save_file

    save_file(w, str(copy / "model.safetensors"))
    with pytest.raises(ArtifactError, match="do not match its header"):
        load_teacher(copy)


def test_a_folder_of_another_stage_is_refused(tiny_demos, tmp_path):
    from actdistill.registry import load_policy

    with pytest.raises(ArtifactError, match="holds a 'collect' artifact"):
        load_teacher(tiny_demos.parent)
    with pytest.raises(ArtifactError, match="not a policy"):
        load_policy(tiny_demos.parent)


def test_weight_average_is_written_resumes_and_leaves_the_training_unchanged(tiny_demos, tmp_path):
    plain = tiny_teacher_config(steps=20)
    averaged = dataclasses.replace(plain, train=dataclasses.replace(plain.train, ema_decay=0.9))
    train_teacher(plain, tiny_demos, tmp_path / "plain", progress=False)
    train_teacher(averaged, tiny_demos, tmp_path / "ema", progress=False, stop_after=19)  # checkpoint at step 19

    def last_checkpoint(name: str) -> Path:
        ckpt = tmp_path / name / "ckpt"
        return ckpt / json.loads((ckpt / "latest.json").read_text())["folder"]

    before = load_tensors(last_checkpoint("ema") / "ema.safetensors", "average at step 19")
    s = train_teacher(averaged, tiny_demos, tmp_path / "ema", progress=False)
    assert s["resumed_from"] == 19
    raw = load_tensors(last_checkpoint("ema") / "model.safetensors", "raw weights at step 20")
    written = load_tensors(tmp_path / "ema" / "model.safetensors", "written weights")
    trained = load_tensors(tmp_path / "plain" / "model.safetensors", "weights without an average")
    assert all(torch.equal(trained[k], raw[k]) for k in trained)  # the average never feeds back into the training
    floats = [k for k in raw if raw[k].is_floating_point()]
    for k in floats:  # one more average step from the resumed state: 0.9 * average(19) + 0.1 * weights(20)
        torch.testing.assert_close(written[k], 0.9 * before[f"module.{k}"] + 0.1 * raw[k], rtol=0, atol=1e-6)
    assert any(not torch.equal(written[k], raw[k]) for k in floats)
    model, info = load_teacher(tmp_path / "ema")  # the written teacher loads like any other
    assert info["config"].train.ema_decay == 0.9


def test_weight_average_settings_are_checked():
    with pytest.raises(ConfigError, match=r"ema_decay must be in \[0, 1\)"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ConfigError, match="cannot be combined with train.sharding=fsdp"):
        TrainConfig(ema_decay=0.999, sharding="fsdp")
    assert "ema_decay" not in TrainConfig().to_dict()  # off: earlier config hashes stay valid


def test_instruction_rewording_trains_on_training_rewordings_only_and_resumes_the_same(tiny_demos, tmp_path,
                                                                                     monkeypatch):
    from actdistill.constants import OBS_LANG, TASK_ID
    from actdistill.models.language import rewording_table
    from actdistill.models.vla import ReferenceVLA
    from actdistill.sim.instructions import REWORDINGS

    cfg = dataclasses.replace(tiny_teacher_config(steps=6), instruction_reword=1.0)
    seen = []
    forward = ReferenceVLA.forward

    def spy(self, batch, *a, **kw):
        seen.append((batch[OBS_LANG].clone(), batch[TASK_ID].clone()))
        return forward(self, batch, *a, **kw)

    monkeypatch.setattr(ReferenceVLA, "forward", spy)
    s = train_teacher(cfg, tiny_demos, tmp_path / "whole", progress=False)
    tasks = tuple(s and load_teacher(tmp_path / "whole")[1]["header"]["tasks"])
    table = rewording_table(tasks, "teacher.instruction_reword")  # (tasks, K, D)
    assert all(t in REWORDINGS for t in tasks) and len(seen) == 6
    for lang, task_id in seen:  # p = 1: every row carries one of its own task's training rewordings
        dist = (lang[:, None, :] - table[task_id]).abs().amax(-1).min(-1).values
        assert dist.max() < 1e-6
    assert "instruction_reword" in json.loads((tmp_path / "whole" / "config.json").read_text())
    # the draw depends on seed and step only: a resumed run ends with the same weights
    train_teacher(cfg, tiny_demos, tmp_path / "resumed", progress=False, stop_after=3)
    train_teacher(cfg, tiny_demos, tmp_path / "resumed", progress=False)
    a, b = (load_tensors(tmp_path / d / "model.safetensors", d) for d in ("whole", "resumed"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="instruction_reword must be in"):
        dataclasses.replace(cfg, instruction_reword=1.5)


def test_step_generator_is_the_base_seed_on_one_process_and_differs_per_process(monkeypatch):
    import actdistill.training as training

    one = training.step_generator(12345)
    assert torch.equal(torch.rand(8, generator=one), torch.rand(8, generator=torch.Generator().manual_seed(12345)))

    class Rank:
        def __init__(self, index):
            self.process_index = index

    draws = []
    for index in (0, 1):
        monkeypatch.setattr(training, "distributed_state", lambda index=index: Rank(index))
        draws.append(torch.rand(8, generator=training.step_generator(12345)))
    assert not torch.equal(draws[0], draws[1])
