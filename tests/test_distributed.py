"""Two gloo processes on this CPU (torchrun + Accelerate) train like one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from actdistill.artifacts import load_tensors
from actdistill.config import ConfigError, DistillConfig, ProbeConfig, TrainConfig
from actdistill.models.vla import ReferenceVLA
from actdistill.probe.stage import build_probes
from actdistill.teacher import load_teacher
from actdistill.training import check_engine, train_loop
from tests.conftest import tiny_teacher_config

STEPS = 4


def _train(batch_size: int) -> TrainConfig:
    return TrainConfig(steps=STEPS, batch_size=batch_size, lr=2e-3, warmup_steps=1, checkpoint_every=STEPS, shift_augment=0)


def _configs(batch_size: int) -> dict[str, dict]:
    teacher = tiny_teacher_config()
    return {
        "train-teacher": {"model": teacher.model.to_dict(), "train": _train(batch_size).to_dict()},
        "probe": ProbeConfig(semantic_dim=16, graph_dim=16, affinity_dim=8, k=4, train=_train(batch_size)).to_dict(),
        "distill": DistillConfig(rho=0.5, router_dim=8, router_init_bias=0.0, soft_warmup_steps=0,
                                 train=_train(batch_size)).to_dict(),
    }


def _run(stage: str, processes: int, out, cfg: dict, demos, teacher=None, probe=None) -> None:
    cfg_path = out.parent / f"{out.name}.json"
    cfg_path.write_text(json.dumps(cfg))
    args = ["-m", "actdistill.cli", stage, "--data", str(demos), "--out", str(out), "--config", str(cfg_path), "--no-progress"]
    args += ["--teacher", str(teacher)] if teacher else []
    args += ["--probe", str(probe)] if probe else []
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(launch + args, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _summary(folder) -> dict:
    return json.loads((folder / "header.json").read_text())["summary"]


def _relative_gap(one: dict, two: dict, init: dict) -> float:
    """|two - one| over the size of one's training update |one - init|, on the tensors `init` holds.

    Not zero, but at float level: a matrix product over 8 rows does not round exactly like the same rows in a
    product over 16. Before batch statistics were taken over the global batch (globalbatch.py) the distilled
    student differed by 5.4% of its update."""
    gap = sum(float(((two[k] - one[k]).double() ** 2).sum()) for k in init) ** 0.5
    update = sum(float(((one[k] - init[k]).double() ** 2).sum()) for k in init) ** 0.5
    assert update > 0
    return gap / update


@pytest.fixture(scope="module")
def trained(tiny_demos, tmp_path_factory):
    """Teacher, probes and student trained by two DDP processes (batch 8 each) and, for the teacher and the
    student, by one process with the same global batch (16); shared by the tests below."""
    tmp = tmp_path_factory.mktemp("dp")
    one, two = _configs(batch_size=16), _configs(batch_size=8)
    _run("train-teacher", 1, tmp / "t1", one["train-teacher"], tiny_demos)
    _run("train-teacher", 2, tmp / "t2", two["train-teacher"], tiny_demos)
    _run("probe", 2, tmp / "p2", two["probe"], tiny_demos, teacher=tmp / "t2")
    _run("distill", 1, tmp / "d1", one["distill"], tiny_demos, teacher=tmp / "t2", probe=tmp / "p2")
    _run("distill", 2, tmp / "d2", two["distill"], tiny_demos, teacher=tmp / "t2", probe=tmp / "p2")
    return tmp


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_demos, trained, tmp_path):
    one, two = _configs(batch_size=16), _configs(batch_size=8)  # 2 x 8 = 16 frames per step either way
    # teacher
    s = _summary(trained / "t2")
    assert s["processes"] == 2 and len(set(s["rank_weight_hashes"])) == 1  # both ranks ended with identical weights
    assert "processes" not in _summary(trained / "t1")
    cfg = tiny_teacher_config()
    torch.manual_seed(cfg.train.seed)  # the teacher's initial weights, as train_teacher draws them
    init = ReferenceVLA(cfg.model).state_dict()
    t1, t2 = (load_tensors(trained / t / "model.safetensors", t) for t in ("t1", "t2"))
    gaps = {"teacher": _relative_gap(t1, t2, init)}
    # control: one process with half the global batch (what training would be if rank 1's gradients were lost)
    _run("train-teacher", 1, tmp_path / "t-half", two["train-teacher"], tiny_demos)
    control = _relative_gap(t1, load_tensors(tmp_path / "t-half" / "model.safetensors", "half"), init)
    assert gaps["teacher"] < 0.5 * control, (gaps, control)
    # probe: both runs probe the same teacher; rank 0 alone writes the cache
    _run("probe", 1, tmp_path / "p1", one["probe"], tiny_demos, teacher=trained / "t2")
    assert _summary(trained / "p2")["processes"] == 2
    assert sorted(p.name for p in (trained / "p2").iterdir() if p.name.endswith(".tmp")) == []
    teacher, _ = load_teacher(trained / "t2")
    pcfg = ProbeConfig.from_dict(one["probe"])
    torch.manual_seed(pcfg.train.seed)
    init = build_probes(pcfg, teacher).state_dict()
    p1, p2 = load_tensors(tmp_path / "p1" / "probes.safetensors", "p1"), load_tensors(trained / "p2" / "probes.safetensors", "p2")
    gaps["probe"] = _relative_gap(p1, p2, init)
    c1, c2 = (load_tensors(f / "teacher_cache.safetensors", "cache") for f in (tmp_path / "p1", trained / "p2"))
    assert c1.keys() == c2.keys() and all(c1[k].shape == c2[k].shape for k in c1)
    # distillation: every rank reads the cache rank 0 wrote
    s = _summary(trained / "d2")
    assert s["processes"] == 2 and len(set(s["rank_weight_hashes"])) == 1
    d1, d2 = (load_tensors(trained / d / "model.safetensors", d) for d in ("d1", "d2"))
    init = {f"vla.{k}": v for k, v in t2.items()}  # the student starts as the teacher
    gaps["distill"] = _relative_gap(d1, d2, init)
    assert all(g < 1e-4 for g in gaps.values()), gaps  # float tolerance: batch statistics are global (globalbatch.py)


def test_deepspeed_and_single_process_fsdp_are_refused_before_any_work(tmp_path, monkeypatch):
    """DeepSpeed is not the loop's sharded engine, and FSDP needs two or more processes: one sentence each."""
    for ok in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        assert check_engine(ok, "train-teacher") is False
    assert check_engine(DistributedType.MULTI_CPU, "distill", "fsdp", 2) is True
    assert check_engine(DistributedType.FSDP, "distill", "none", 4) is True  # accelerate launch --use_fsdp
    with pytest.raises(ConfigError, match=r"^distill: FSDP sharding needs 2 or more processes") as err:
        train_loop(model=torch.nn.Linear(2, 2), dataset=None, cfg=TrainConfig(steps=2, batch_size=2, sharding="fsdp"),
                   out_dir=tmp_path / "d", stage="distill")
    assert err.value.args[0].count(". ") == 0
    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda self: DistributedType.DEEPSPEED))
    with pytest.raises(ConfigError, match=r"^distill: DeepSpeed is not supported"):
        train_loop(model=torch.nn.Linear(2, 2), dataset=None, cfg=_train(2), out_dir=tmp_path / "d", stage="distill")
    assert not (tmp_path / "d" / "ckpt").exists()


HELPER = os.path.join(os.path.dirname(__file__), "helpers", "distill_with_a_dying_rank.py")


def _torchrun(args: list[str], processes: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(launch + args, capture_output=True, text=True, timeout=600, env=env, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_fsdp_distillation_matches_ddp_and_one_process_and_resumes_after_a_rank_dies(tiny_demos, trained, tmp_path):
    """Two gloo processes with FSDP (parameters, gradients and optimizer state sharded per decoder layer) give the
    student two DDP processes give (same per-rank batches) and the one-process student with the same global batch,
    to float tolerance; killed mid-run on one rank, the run resumes from its last sharded
    checkpoint to the uninterrupted run's weights."""
    two = _configs(batch_size=8)
    teacher, probe = trained / "t2", trained / "p2"
    fsdp = {**two["distill"], "train": {**two["distill"]["train"], "sharding": "fsdp"}}
    _run("distill", 2, tmp_path / "fsdp", fsdp, tiny_demos, teacher=teacher, probe=probe)
    s = _summary(tmp_path / "fsdp")
    assert s["processes"] == 2 and s["steps"] == STEPS
    d1, ddp = (load_tensors(trained / d / "model.safetensors", d) for d in ("d1", "d2"))
    sh = load_tensors(tmp_path / "fsdp" / "model.safetensors", "fsdp")
    assert ddp.keys() == sh.keys()
    t = load_tensors(teacher / "model.safetensors", "teacher")
    init = {f"vla.{k}": v for k, v in t.items()}  # the student starts as the teacher
    assert _relative_gap(ddp, sh, init) < 1e-4  # the same arithmetic, sharded
    assert _relative_gap(d1, sh, init) < 1e-4
    # teacher training and probing take the same option (the probe stage shards the probes; the teacher stays whole)
    sharded = {k: {**two[k], "train": {**two[k]["train"], "sharding": "fsdp"}} for k in ("train-teacher", "probe")}
    _run("train-teacher", 2, tmp_path / "t-fsdp", sharded["train-teacher"], tiny_demos)
    ta, tb = load_tensors(teacher / "model.safetensors", "t2"), load_tensors(tmp_path / "t-fsdp" / "model.safetensors", "f")
    cfg = tiny_teacher_config()
    torch.manual_seed(cfg.train.seed)
    assert _relative_gap(ta, tb, ReferenceVLA(cfg.model).state_dict()) < 1e-4
    _run("probe", 2, tmp_path / "p-fsdp", sharded["probe"], tiny_demos, teacher=teacher)
    assert _summary(tmp_path / "p-fsdp")["processes"] == 2
    ckpt = tmp_path / "fsdp" / "ckpt"
    latest = json.loads((ckpt / "latest.json").read_text())
    assert sorted(p.name for p in (ckpt / latest["folder"]).iterdir() if p.name.startswith("rng-")) == ["rng-0.safetensors",
                                                                                                      "rng-1.safetensors"]
    # kill rank 1 at its 4th loss call (step 3: after the checkpoint at step 2), run again, and compare with the
    # uninterrupted FSDP run above (checkpointing more often does not change the arithmetic)
    killed = {**fsdp, "train": {**fsdp["train"], "checkpoint_every": 2}}
    cfg_path = tmp_path / "killed.json"
    cfg_path.write_text(json.dumps(killed))
    common = [HELPER, str(cfg_path), str(teacher), str(probe), str(tiny_demos), str(tmp_path / "killed")]
    died = _torchrun(common + ["4"], check=False)
    assert died.returncode != 0 and not (tmp_path / "killed" / "model.safetensors").exists()
    assert json.loads((tmp_path / "killed" / "ckpt" / "latest.json").read_text())["step"] == 2
    _torchrun(common + ["-1"])  # resumes from step 2
    a = load_tensors(tmp_path / "killed" / "model.safetensors", "killed")
    assert a.keys() == sh.keys() and all(torch.equal(a[k], sh[k]) for k in a)
    steps = [[json.loads(line)["step"] for line in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]
             for d in ("killed", "fsdp")]
    assert steps[0] == steps[1] and len(set(steps[0])) == len(steps[0])  # each logged step once, across the kill


def test_plan_predicts_the_peak_memory_of_a_sharded_step_within_15_percent():
    """Two gloo processes shard the tiny student (FSDP) and take one distillation step; each rank's measured peak
    (every tensor allocated, from sharding to the optimizer step) is within 15% of `actdistill plan`'s FSDP total."""
    helper = os.path.join(os.path.dirname(__file__), "helpers", "fsdp_step_memory.py")
    proc = _torchrun([helper, "tiny", "16"])
    res = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    for measured in res["measured_MiB_per_rank"]:
        assert abs(res["plan_FSDP_MiB"] - measured) / measured < 0.15, res
