"""Router consistency (distill/consistency.py): the view's perturbations stay in their stated ranges, the term
is zero when the router already agrees, and training on it makes the router's logits agree under a brightness
change it did not agree on before."""

import math

import pytest
import torch

from actdistill.config import ConfigError, DistillConfig
from actdistill.constants import OBS_IMAGE, OBS_LANG, ROUTER_VIEW
from actdistill.distill.consistency import consistency_loss, embedding_noise, photometric_jitter, router_view
from tests.test_routing import _batch, _student


def test_jitter_scales_brightness_within_its_range_and_zero_jitter_is_the_identity():
    gen = torch.Generator().manual_seed(0)
    flat = torch.full((64, 4, 4, 3), 100, dtype=torch.uint8)  # contrast cannot change a flat frame
    out = photometric_jitter(flat, 0.4, gen).float()
    assert out.min() >= 60 and out.max() <= 140 and out.std() > 5
    assert bool((out == out[:, :1, :1, :1]).all())  # one factor per frame
    img = torch.randint(0, 256, (8, 6, 6, 3), dtype=torch.uint8, generator=gen)
    assert torch.equal(photometric_jitter(img, 0.0, gen), img)


def test_embedding_noise_keeps_unit_norm_and_stays_within_45_degrees():
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(256, 384, generator=gen), dim=1)
    out = embedding_noise(emb, 1.0, gen)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(256))
    cos = (out * emb).sum(1)
    assert cos.min() >= math.cos(math.pi / 4) - 1e-5 and cos.max() < 1.0


def test_router_view_refuses_float_images():
    batch = {OBS_IMAGE: torch.zeros(2, 8, 8, 3), OBS_LANG: torch.zeros(2, 384)}
    with pytest.raises(ValueError, match="uint8"):
        router_view(batch, 0.4, 1.0, torch.Generator())


def test_config_checks_the_consistency_fields():
    with pytest.raises(ConfigError, match="router_jitter"):
        DistillConfig(router_jitter=1.5)
    assert "router_consistency" not in DistillConfig().to_dict()  # earlier distill fingerprints stay valid


def test_training_on_the_term_makes_the_router_agree_under_brightness():
    student, _, cfg = _student()
    student.train()
    batch = _batch(cfg, 16)
    batch[OBS_LANG] = torch.nn.functional.normalize(batch[OBS_LANG], dim=1)  # sentence embeddings are unit vectors
    brighter = {**batch, OBS_IMAGE: (batch[OBS_IMAGE].float() * 1.3).clamp(0, 255).to(torch.uint8)}

    def gap() -> float:
        with torch.no_grad():
            a = student.router.logits(student.vla.embed(batch))
            b = student.router.logits(student.vla.embed(brighter))
        return float((a - b).pow(2).mean())

    with torch.no_grad():  # a router that reads brightness: large weights on the vision summary
        student.router.gate.weight.normal_(0, 2.0)
    before = gap()
    opt = torch.optim.Adam(student.router.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        out = student({**batch, ROUTER_VIEW: router_view(batch, 0.4, 1.0, gen)})
        loss = consistency_loss(out["logits"], out["view_logits"], out["routed"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert before > 0.05
    assert gap() < 0.2 * before


def test_snapping_fixes_the_nearly_constant_gates_and_the_shift_is_read_on_a_free_layer():
    from actdistill.export import SNAP_BIAS, gate_shift, snap_gates

    student, _, _ = _student()
    thr = student.gate_threshold
    steps = 100
    logits = torch.full((steps, 6), thr - 1.0)
    logits[:95, 0] = thr + 0.05  # on in 95% of steps, barely above the threshold
    logits[:4, 1] = thr + 2.0  # on in 4%
    logits[:50, 2] = thr + 3.0  # truly routed
    logits[:, 3] = thr + 0.5  # always on
    with torch.no_grad():
        student.router.gate_bias[:] = -0.25  # an earlier calibration shift
    fixed = snap_gates(student, logits, 0.1)
    # layers 4 and 5 are never on: fixed off as well
    assert fixed["snapped_on"] == [0, 3] and fixed["snapped_off"] == [1, 4, 5]
    assert fixed["on_rate_per_layer"][2] == 0.5
    bias = student.router.gate_bias
    assert bias[0] > SNAP_BIAS / 2 and bias[1] < -SNAP_BIAS / 2 and bias[2] == -0.25
    assert gate_shift(student) == -0.25
    h0 = student.vla.embed(_batch(student.vla.config, 4))
    mask = student.layer_mask(h0)
    assert mask[:, [0, 3]].all() and not mask[:, [1, 4, 5]].any()


def test_training_rewordings_are_never_a_held_out_paraphrase_or_the_instruction():
    from actdistill.sim.instructions import INSTRUCTIONS, PARAPHRASES, REWORDINGS
    from actdistill.sim import get_suite

    from actdistill.models.language import shared_language_encoder

    assert set(REWORDINGS) == set(get_suite("mt50").tasks)  # MT10's tasks are among them
    held_out = set(INSTRUCTIONS.values()) | {p for ps in PARAPHRASES.values() for p in ps}
    enc = shared_language_encoder()
    for task, words in REWORDINGS.items():
        assert len(set(words)) == len(words) >= 2
        assert not set(words) & held_out  # no task's instruction or held-out paraphrase
        # and no near-copy of a held-out paraphrase of the task (MiniLM cosine; the closest pair is 0.958)
        assert (enc.encode(list(words)) @ enc.encode(list(PARAPHRASES[task])).T).max() < 0.96, task


def test_reword_swaps_rows_for_their_own_tasks_rewordings_at_its_rate():
    from actdistill.models.language import reword

    gen = torch.Generator().manual_seed(0)
    table = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(3, 2, 4)  # (tasks, K, D)
    task_id = torch.randint(0, 3, (4000,), generator=gen)
    emb = torch.full((4000, 4), -1.0)
    out = reword(emb, task_id, table, 0.3, gen)
    swapped = (out != emb).all(1)
    assert abs(swapped.float().mean().item() - 0.3) < 0.03
    for i in torch.nonzero(swapped).flatten()[:200].tolist():  # each swapped row holds one of its own task's rows
        assert any(torch.equal(out[i], table[task_id[i], k]) for k in range(2))
    assert torch.equal(reword(emb, task_id, table, 0.0, gen), emb)
    assert (reword(emb, task_id, table, 1.0, gen) != emb).all()  # p = 1: every row reworded


def test_rewording_a_task_without_rewordings_is_one_sentence():
    from actdistill.models.language import rewording_table

    with pytest.raises(ConfigError, match="teacher.instruction_reword needs .* made-up-v3 has none .* set "
                                          "teacher.instruction_reword=0"):
        rewording_table(("reach-v3", "made-up-v3"), "teacher.instruction_reword")
    with pytest.raises(ConfigError, match="router_reword"):
        DistillConfig(router_reword=1.5)
