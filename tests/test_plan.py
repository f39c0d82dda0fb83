"""`actdistill plan`: the dry run on fake tensors predicts the measured peak memory of a real training step."""

import json
import subprocess
import sys

import pytest

from actdistill.bench.plan import DryRun, dry_run, plan_memory, vla_stage
from tests.conftest import tiny_model_config

MIB = 1024.0 ** 2


@pytest.mark.parametrize("stage,ac,mp", [("distill", False, "no"), ("distill", True, "no"), ("distill", False, "bf16"),
                                         ("train-teacher", False, "no"), ("probe", False, "no")])
def test_the_dry_run_predicts_the_measured_peak_within_15_percent(stage, ac, mp):
    cfg = tiny_model_config()
    fake = dry_run(vla_stage(cfg, stage, 8, activation_checkpointing=ac, mixed_precision=mp))
    real = dry_run(vla_stage(cfg, stage, 8, activation_checkpointing=ac, mixed_precision=mp), fake=False)
    planned = plan_memory(fake, 1, mp)["DDP"]["total"] * 1024 ** 3
    measured = real.weights + real.steady_peak  # a later step of the real run, as training reaches it
    assert measured > 0 and abs(planned - measured) / measured < 0.15, (planned / MIB, measured / MIB)
    assert fake.weights == real.weights and fake.grads == real.grads and fake.optimizer == real.optimizer


def test_checkpointing_and_bf16_lower_the_activations_they_should():
    cfg = tiny_model_config(num_layers=6)
    base, ckpt = (dry_run(vla_stage(cfg, "train-teacher", 16, activation_checkpointing=a)) for a in (False, True))
    assert ckpt.activations < base.activations and ckpt.weights == base.weights


def test_fsdp_divides_what_it_shards_and_keeps_the_rest():
    gib = 1024 ** 3
    run = DryRun(weights=8 * gib, grads=8 * gib, optimizer=16 * gib, peak_backward=10 * gib, peak_step=8 * gib + 16 * gib + gib,
                 activations=2 * gib, root_params=gib // 2, largest_layer=gib // 4, frozen=0)
    p = plan_memory(run, 8)
    assert p["DDP"]["total"] == pytest.approx(8 + 26)  # W + max(O + P1, P2)
    assert p["FSDP"]["weights"] == pytest.approx(1) and p["FSDP"]["optimizer"] == pytest.approx(2)
    assert p["FSDP"]["gathered units"] == pytest.approx(0.5 + 2 * 0.25 + 0.25)
    assert p["FSDP"]["activations and temporaries"] == pytest.approx(2)  # max(A, (P2 - G - O) / N) = max(2, 1/8)
    assert p["FSDP"]["total"] == pytest.approx(1 + 1 + 2 + 1.25 + 2)


def test_plan_command_for_a_transformers_config(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "actdistill.cli", "plan", "--model-config", str(tmp_path), "--devices", "2",
                           "--batch", "2", "--tokens", "40", "--device-memory", "0.001"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 layers, hidden 64, 40 tokens" in proc.stdout and "| fits in 0.001 GiB | no | no |" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "actdistill.cli", "plan", "--model-config", str(tmp_path / "nope.json")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "No transformers config" in bad.stderr
