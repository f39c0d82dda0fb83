"""probe -> distill -> export on the tiny teacher (real files, real fingerprints)."""

import json

import numpy as np
import pytest
import torch

from actdistill.artifacts import ArtifactError, load_tensors
from actdistill.cache import CACHE_FILE, TeacherCache
from actdistill.config import ConfigError, DistillConfig, EvalConfig, ExportConfig, ProbeConfig, SimConfig, TrainConfig
from actdistill.distill.stage import run_distill
from actdistill.export import _student_from_distill, load_student, run_export
from actdistill.probe.stage import run_probe
from tests.conftest import TINY_TASKS

PROBE = ProbeConfig(semantic_dim=16, graph_dim=16, affinity_dim=8, k=4,
                    train=TrainConfig(steps=10, batch_size=16, lr=3e-3, warmup_steps=1, shift_augment=0, checkpoint_every=10))
DISTILL = DistillConfig(rho=0.3, router_dim=8, router_init_bias=0.0, lambda_bud=50.0, soft_warmup_steps=2,
                        train=TrainConfig(steps=12, batch_size=16, lr=3e-3, warmup_steps=1, shift_augment=0, checkpoint_every=6))


@pytest.fixture(scope="module")
def probed(tiny_teacher, tiny_demos, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe")
    summary = run_probe(PROBE, tiny_teacher, tiny_demos, out, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def distilled(tiny_teacher, tiny_demos, probed, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill")
    summary = run_distill(DISTILL, tiny_teacher, probed[0], tiny_demos, out, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def other_teacher(tiny_demos, tmp_path_factory):
    """A second tiny teacher, with other weights than the one the student was distilled from."""
    from tests.conftest import train_tiny_teacher

    return train_tiny_teacher(tiny_demos, tmp_path_factory.mktemp("other-teacher"), seed=5, steps=3)


def test_probe_writes_a_fingerprinted_cache_for_every_sample(probed, tiny_teacher):
    out, s = probed
    header = json.loads((out / "header.json").read_text())
    fp = header["fingerprint"]
    assert set(fp) == {"teacher_weights", "dataset", "heads"}
    cache = TeacherCache.load(out / CACHE_FILE, fp)
    assert cache.semantic.shape == (s["samples"], 4, 16) and cache.probe_action.shape == (s["samples"], 4, 4, 4)
    torch.testing.assert_close(cache.sample_ids, torch.arange(s["samples"]))
    assert len(s["probe_mse_per_layer"]) == 4 and (out / "probe_error.png").stat().st_size > 1000
    z, a = cache.lookup(torch.tensor([5, 0]))
    torch.testing.assert_close(z[1], cache.semantic[0])


def test_mismatched_cache_is_refused(probed):
    out, _ = probed
    fp = json.loads((out / "header.json").read_text())["fingerprint"]
    with pytest.raises(ArtifactError, match="written for another teacher_weights"):
        TeacherCache.load(out / CACHE_FILE, {**fp, "teacher_weights": "0000"})


def test_distill_refuses_a_cache_of_another_teacher(probed, other_teacher, tiny_demos, tmp_path):
    with pytest.raises(ArtifactError, match="another teacher_weights"):
        run_distill(DISTILL, other_teacher, probed[0], tiny_demos, tmp_path / "d", progress=False)


def test_distilled_student_skips_layers(distilled):
    _, s = distilled
    assert s["train_keep_ratio"] < 1.0
    assert len(s["gate_mean_per_layer"]) == 4
    for k in ("task", "sem", "act", "bal", "bud", "keep"):
        assert k in s["final"]


def test_export_drops_graph_parts_and_matches_the_trained_student(distilled, tiny_demos, tmp_path):
    out, _ = distilled
    trained = load_tensors(out / "model.safetensors", "w")
    assert any(k.startswith("probes.") for k in trained)
    s = run_export(ExportConfig(calibrate=False), out, tiny_demos, tmp_path / "x", SimConfig(tasks=TINY_TASKS, image_size=32),
                   progress=False)
    saved = load_tensors(tmp_path / "x" / "model.safetensors", "x")
    assert not any(k.startswith("probes.") for k in saved)
    assert s["parameters"] < sum(v.numel() for v in trained.values())
    exported = load_student(tmp_path / "x")
    reference, _, _ = _student_from_distill(out)
    from tests.test_routing import _batch

    b = _batch(exported.vla.config, 4)
    assert torch.equal(exported.predict(b), reference.predict(b))


def test_export_calibrates_to_the_budget(distilled, tiny_demos, tmp_path):
    out, _ = distilled
    cfg = ExportConfig(calib_episodes_per_task=2, calib_rounds=2, max_steps=12, calib_margin=0.02, settle_steps=0,
                       calib_workers=1)
    s = run_export(cfg, out, tiny_demos, tmp_path / "x", SimConfig(tasks=TINY_TASKS, image_size=32), progress=False)
    hist = s["calibration"]
    fracs = [h["layers_executed_frac"] for h in hist]
    in_band = 0.3 - 2 * 0.02 - 0.02 <= fracs[0] <= 0.3
    # one round if the budget was already met; otherwise the shift moved the closed-loop fraction towards it
    assert (len(hist) == 1 and in_band) or (len(hist) == 2 and abs(fracs[1] - 0.28) <= abs(fracs[0] - 0.28))
    student = load_student(tmp_path / "x")
    assert float(student.router.gate_bias[0]) == pytest.approx(s["gate_shift"])


def test_a_calibration_round_in_worker_processes_records_what_an_in_process_one_does(distilled, tiny_demos):
    """Calibration sends each worker a copy of the student (PolicyCopy): the same episodes, and the gate logits of
    every policy call of each, as the in-process round (equal up to the float rounding of other thread counts)."""
    from actdistill.evaluate import PolicyCopy, evaluate
    from actdistill.export import training_placements

    student, _, _ = _student_from_distill(distilled[0])
    seeds = {t: v[:2] for t, v in training_placements(tiny_demos).items()}
    sim = SimConfig(tasks=TINY_TASKS, image_size=32)
    runs = {}
    for workers in (1, 2):
        cfg = EvalConfig(episodes_per_task=2, max_steps=12, workers=workers, batch_envs=2)
        runs[workers] = evaluate(PolicyCopy(student), cfg, sim, None, progress=False, seeds_per_task=seeds,
                                 record_logits=True, return_episodes=True)[1]
    for a, b in zip(runs[1], runs[2], strict=True):
        assert (a["task"], a["seed"], a["steps"], a["success"]) == (b["task"], b["seed"], b["steps"], b["success"])
        assert b["gate_logits"].shape == (b["policy_calls"], student.router.gate_bias.numel()) and b["policy_calls"] > 0
        np.testing.assert_allclose(a["gate_logits"], b["gate_logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("objective", ["distill", "final"])
def test_settling_trains_the_calibrated_masks_and_keeps_them(objective, distilled, probed, tiny_teacher, tiny_demos,
                                                             tmp_path):
    out, _ = distilled
    sim = SimConfig(tasks=TINY_TASKS, image_size=32)
    cfg = ExportConfig(calib_episodes_per_task=2, calib_rounds=2, max_steps=12, settle_steps=4, settle_loss=objective,
                       calib_workers=1)
    with pytest.raises(ConfigError, match="give the teacher and probe folders"):
        run_export(cfg, out, tiny_demos, tmp_path / "refused", sim, progress=False)
    s = run_export(cfg, out, tiny_demos, tmp_path / "x", sim, progress=False, teacher_dir=tiny_teacher, probe_dir=probed[0])
    assert s["settle"]["steps"] == 4 and [h["phase"] for h in s["calibration"]][-1] == "settled"
    # the objective settling trained with: the distillation's streams, or the teacher's final action
    logged = json.loads((tmp_path / "x" / "settle" / "train_log.jsonl").read_text().splitlines()[-1])
    assert ("kd" in logged) == (objective == "final") and ("sem" in logged) == (objective == "distill")
    settled = load_student(tmp_path / "x")
    reference, _, _ = _student_from_distill(out)
    reference.router.gate_bias.copy_(settled.router.gate_bias)  # the calibrated shift, before settling
    from tests.test_routing import _batch

    b = _batch(settled.vla.config, 6)
    h0 = settled.vla.embed(b)
    # the gates read only frozen parameters, so every input keeps its calibrated mask ...
    assert torch.equal(settled.router.logits(h0), reference.router.logits(reference.vla.embed(b)))
    frozen = settled.gate_dependencies(b)
    assert frozen and all(n.startswith(("router.", "vla.vision.", "vla.lang_proj.")) for n in frozen)
    # ... while the layers it runs were trained further
    a, r = settled.state_dict(), reference.state_dict()
    assert all(torch.equal(a[n], r[n]) for n in frozen)
    assert any(not torch.equal(a[n], r[n]) for n in a if n.startswith("vla.backbone."))


def test_settling_refuses_a_cache_the_student_was_not_distilled_with(distilled, other_teacher, tiny_demos, tmp_path):
    other_probe = tmp_path / "other-probe"
    run_probe(PROBE, other_teacher, tiny_demos, other_probe, progress=False)
    cfg = ExportConfig(calib_episodes_per_task=2, calib_rounds=1, max_steps=12, settle_steps=2, calib_workers=1)
    with pytest.raises(ArtifactError, match="distilled against another teacher cache"):
        run_export(cfg, distilled[0], tiny_demos, tmp_path / "x", SimConfig(tasks=TINY_TASKS, image_size=32), progress=False,
                   teacher_dir=other_teacher, probe_dir=other_probe)


def test_decayed_streams_leave_the_task_loss_and_gate_terms_alone_and_settling_keeps_them_off(
        tiny_teacher, tiny_demos, probed, tmp_path):
    """stream_decay=0.5 over 12 steps: full streams at step 0, none from step 6 on (the logged loss is then the task
    loss plus the gate terms), and settling with the distillation objective trains with the streams still off."""
    import dataclasses

    cfg = dataclasses.replace(DISTILL, stream_decay=0.5)
    run_distill(cfg, tiny_teacher, probed[0], tiny_demos, tmp_path / "d", progress=False)
    first, last = [json.loads(x) for x in (tmp_path / "d" / "train_log.jsonl").read_text().splitlines()]
    gates = {r["step"]: cfg.lambda_bal * r["bal"] + cfg.lambda_bud * r["bud"] + cfg.lambda_pol * r["pol"] for r in (first, last)}
    assert first["step"] == 0 and first["stream_w"] == 1.0
    assert first["loss"] == pytest.approx(first["task"] + first["sem"] + first["act"] + gates[0], rel=1e-5)
    assert last["step"] == 11 and last["stream_w"] == 0.0 and last["sem"] > 0 and last["act"] > 0
    assert last["loss"] == pytest.approx(last["task"] + gates[11], rel=1e-5)
    sim = SimConfig(tasks=TINY_TASKS, image_size=32)
    xcfg = ExportConfig(calib_episodes_per_task=1, calib_rounds=1, max_steps=8, settle_steps=2, calib_workers=1)
    run_export(xcfg, tmp_path / "d", tiny_demos, tmp_path / "x", sim, progress=False, teacher_dir=tiny_teacher,
               probe_dir=probed[0])
    settled = [json.loads(x) for x in (tmp_path / "x" / "settle" / "train_log.jsonl").read_text().splitlines()]
    assert settled and all(r["stream_w"] == 0.0 for r in settled)


def test_final_action_distillation_beside_decayed_streams_ends_as_router_kd_and_settling_keeps_it(
        tiny_teacher, tiny_demos, probed, tmp_path):
    """distill.final_kd=1 with stream_decay=0.5: the logged loss is task + streams + gate terms + kd at step 0 and
    task + gate terms + kd from the decay's end on (router-KD's objective); settling on the distillation objective
    keeps the kd term; the term is the student's own action against the teacher's, zero for a student running every
    layer (the teacher's copy); without a teacher, or with a negative weight, one sentence."""
    import dataclasses

    from actdistill.data.dataset import FrameDataset
    from actdistill.data.hdf5 import read_demos
    from actdistill.distill.routing import RoutedStudent
    from actdistill.distill.stage import distill_loss, final_action_term
    from actdistill.distill.targets import teacher_targets
    from actdistill.probe.stage import load_probe_artifact
    from actdistill.teacher import load_teacher

    cfg = dataclasses.replace(DISTILL, stream_decay=0.5, final_kd=1.0)
    run_distill(cfg, tiny_teacher, probed[0], tiny_demos, tmp_path / "d", progress=False)
    first, last = [json.loads(x) for x in (tmp_path / "d" / "train_log.jsonl").read_text().splitlines()]
    gates = {r["step"]: cfg.lambda_bal * r["bal"] + cfg.lambda_bud * r["bud"] + cfg.lambda_pol * r["pol"] for r in (first, last)}
    assert first["kd"] > 0 and last["kd"] > 0 and last["stream_w"] == 0.0
    assert first["loss"] == pytest.approx(first["task"] + first["sem"] + first["act"] + gates[0] + first["kd"], rel=1e-5)
    assert last["loss"] == pytest.approx(last["task"] + gates[11] + last["kd"], rel=1e-5)
    assert json.loads((tmp_path / "d" / "config.json").read_text())["distill"]["final_kd"] == 1.0
    xcfg = ExportConfig(calib_episodes_per_task=1, calib_rounds=1, max_steps=8, settle_steps=2, calib_workers=1)
    run_export(xcfg, tmp_path / "d", tiny_demos, tmp_path / "x", SimConfig(tasks=TINY_TASKS, image_size=32),
               progress=False, teacher_dir=tiny_teacher, probe_dir=probed[0])
    settled = [json.loads(x) for x in (tmp_path / "x" / "settle" / "train_log.jsonl").read_text().splitlines()]
    assert settled and all(r["stream_w"] == 0.0 and r["kd"] > 0 for r in settled)

    teacher, tinfo = load_teacher(tiny_teacher)
    data = FrameDataset(read_demos(tiny_demos), teacher.config.chunk_size, tuple(tinfo["tasks"]))
    probes, cache, _ = load_probe_artifact(probed[0], teacher, tinfo["header"]["weights_hash"], data.fingerprint)
    student = RoutedStudent.from_teacher(teacher, probes, router_dim=8).eval()
    batch = data.batch(torch.arange(0, len(data), max(1, len(data) // 8)))
    n = len(batch["sample_id"])
    with torch.no_grad():
        every = final_action_term(student.forward_train(batch, masks=torch.ones(n, student.num_layers)), teacher, batch)
        half = torch.ones(n, student.num_layers)
        half[:, 1::2] = 0
        some = final_action_term(student.forward_train(batch, masks=half), teacher, batch)
    assert every.item() < 1e-8 < some.item(), (every.item(), some.item())
    with pytest.raises(ValueError, match="needs the teacher"):
        distill_loss(student, batch, teacher_targets("cache", cache), cfg, soft=False)
    with pytest.raises(ConfigError, match="final_kd must be >= 0"):
        DistillConfig(final_kd=-1.0)


def test_online_targets_are_the_teachers_on_the_batch_as_the_student_sees_it(tiny_teacher, tiny_demos, probed):
    """On unshifted frames the online targets are the cache's; on shifted ones they move with the image, so a student
    that runs every layer (an exact copy of the teacher) has no semantic error against them and a positive one
    against the cache (the targets of frames it was not shown). Changing the module they were built from leaves them
    alone."""
    from actdistill.data.dataset import FrameDataset
    from actdistill.data.hdf5 import read_demos
    from actdistill.distill.routing import RoutedStudent
    from actdistill.distill.stage import _streams
    from actdistill.distill.targets import teacher_targets
    from actdistill.probe.stage import load_probe_artifact
    from actdistill.teacher import load_teacher
    from actdistill.training import random_shift

    teacher, tinfo = load_teacher(tiny_teacher)
    data = FrameDataset(read_demos(tiny_demos), teacher.config.chunk_size, tuple(tinfo["tasks"]))
    probes, cache, _ = load_probe_artifact(probed[0], teacher, tinfo["header"]["weights_hash"], data.fingerprint)
    online, cached = teacher_targets("online", cache, teacher, probes), teacher_targets("cache", cache)
    batch = data.batch(torch.arange(0, len(data), max(1, len(data) // 8)))
    for got, want in zip(online(batch), cached(batch)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    shifted = {**batch, "observation.image": random_shift(batch["observation.image"], 3, torch.Generator().manual_seed(0))}
    assert not torch.equal(shifted["observation.image"], batch["observation.image"])
    student = RoutedStudent.from_teacher(teacher, probes, router_dim=8)
    out = student.forward_train(shifted, masks=torch.ones(len(batch["sample_id"]), student.num_layers))
    cfg = DistillConfig(teacher_targets="online")
    against_online, against_cache = (_streams(student, out, shifted, t, cfg)[1].item() for t in (online, cached))
    assert against_online < 1e-3 * against_cache and against_cache > 1e-5, (against_online, against_cache)
    before = online(shifted)
    with torch.no_grad():
        for p in probes.parameters():
            p.add_(1.0)
    for got, want in zip(online(shifted), before):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="need the teacher and its probes"):
        teacher_targets("online", cache)
    with pytest.raises(ConfigError, match="teacher_targets must be one of cache, online"):
        DistillConfig(teacher_targets="live")


def test_a_distillation_on_shifted_images_with_online_targets_distils_and_settles(tiny_teacher, tiny_demos, probed,
                                                                                 tmp_path):
    import dataclasses

    cfg = dataclasses.replace(DISTILL, teacher_targets="online",
                              train=dataclasses.replace(DISTILL.train, shift_augment=2))
    s = run_distill(cfg, tiny_teacher, probed[0], tiny_demos, tmp_path / "d", progress=False)
    assert s["steps"] == cfg.train.steps and all(np.isfinite(s["final"][k]) for k in ("sem", "act", "task"))
    saved = json.loads((tmp_path / "d" / "config.json").read_text())["distill"]
    assert saved["teacher_targets"] == "online" and saved["train"]["shift_augment"] == 2
    xcfg = ExportConfig(calib_episodes_per_task=1, calib_rounds=1, max_steps=8, settle_steps=2, calib_workers=1)
    x = run_export(xcfg, tmp_path / "d", tiny_demos, tmp_path / "x", SimConfig(tasks=TINY_TASKS, image_size=32),
                   progress=False, teacher_dir=tiny_teacher, probe_dir=probed[0])
    assert x["settle"]["steps"] == 2


def test_always_run_layers_above_the_budget_are_refused_before_training(tiny_teacher, tiny_demos, probed, tmp_path):
    """Two always-run layers of the tiny teacher's four are half of them: above rho 0.3, so no routing could meet it."""
    import dataclasses

    with pytest.raises(ConfigError, match=r"always_run=2 of the teacher's 4 layers already runs 0.500 of them, above the "
                                         r"budget rho=0.3; set distill.always_run to at most 1"):
        run_distill(dataclasses.replace(DISTILL, always_run=2), tiny_teacher, probed[0], tiny_demos, tmp_path / "d",
                    progress=False)
    assert not (tmp_path / "d" / "ckpt").exists()


def test_instruction_rewording_changes_what_the_student_reads_and_never_the_teachers_targets(tiny_teacher, tiny_demos,
                                                                                           probed, tmp_path):
    """distill.instruction_reword=1: every row the student reads carries one of its task's training rewordings, the
    targets are looked up for the batch as given (the training instruction), the draw repeats for the same step,
    and the option reaches a whole distillation. Off, the student reads the batch itself."""
    import dataclasses

    from actdistill.data.dataset import FrameDataset
    from actdistill.data.hdf5 import read_demos
    from actdistill.distill.consistency import distill_rewordings
    from actdistill.distill.routing import RoutedStudent
    from actdistill.distill.stage import distill_loss, student_input
    from actdistill.distill.targets import teacher_targets
    from actdistill.probe.stage import load_probe_artifact
    from actdistill.teacher import load_teacher

    teacher, tinfo = load_teacher(tiny_teacher)
    data = FrameDataset(read_demos(tiny_demos), teacher.config.chunk_size, tuple(tinfo["tasks"]))
    probes, cache, _ = load_probe_artifact(probed[0], teacher, tinfo["header"]["weights_hash"], data.fingerprint)
    cfg = dataclasses.replace(DISTILL, instruction_reword=1.0)
    table = distill_rewordings(cfg, data.task_names)
    assert table.shape[0] == len(TINY_TASKS) and distill_rewordings(DISTILL, data.task_names) is None
    batch = data.batch(torch.arange(0, len(data), max(1, len(data) // 8)))
    lang, task = batch["observation.language"], batch["task_id"]
    seen, looked_up = [], []
    student = RoutedStudent.from_teacher(teacher, probes, router_dim=8).train()
    student.register_forward_pre_hook(lambda m, args: seen.append(args[0]["observation.language"]))
    cached = teacher_targets("cache", cache)

    def targets(b):
        looked_up.append(b["observation.language"])
        return cached(b)

    distill_loss(student, batch, targets, cfg, soft=False, step=3, rewordings=table)
    assert torch.equal(looked_up[0], lang)
    for row, t in zip(seen[0], task):  # every row one of its own task's rewordings, none the instruction
        assert any(torch.allclose(row, table[t, k]) for k in range(table.shape[1]))
    assert not torch.isclose(seen[0], lang).all(1).any()
    torch.testing.assert_close(student_input(batch, cfg, 3, table)["observation.language"], seen[0])
    distill_loss(student, batch, targets, DISTILL, soft=False, step=3)
    assert seen[1] is lang
    with pytest.raises(ValueError, match="instruction_reword > 0 needs the rewording table"):
        student_input(batch, cfg, 0, None)
    with pytest.raises(ConfigError, match="instruction_reword must be in"):
        DistillConfig(instruction_reword=-0.1)
    assert "instruction_reword" not in DISTILL.to_dict()  # earlier distill fingerprints stay valid
    half = dataclasses.replace(DISTILL, instruction_reword=0.5)
    s = run_distill(half, tiny_teacher, probed[0], tiny_demos, tmp_path / "d", progress=False)
    assert s["steps"] == half.train.steps
    assert json.loads((tmp_path / "d" / "config.json").read_text())["distill"]["instruction_reword"] == 0.5
