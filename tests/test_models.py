import pytest
import torch

from actdistill.constants import ACTION, OBS_IMAGE, OBS_LANG, OBS_STATE, TASK
from actdistill.models.backbone import DecoderBackbone
from actdistill.models.policy import ObservationError
from actdistill.models.vla import ReferenceVLA, action_loss
from tests.conftest import tiny_model_config


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_layer_loop_equals_transformers_forward(attn):
    torch.manual_seed(0)
    bb = DecoderBackbone.llama(32, 3, 4, 2, 64, max_positions=20, attn_implementation=attn).eval()
    h = torch.randn(3, 11, 32)
    ours = bb(h)
    theirs = bb.model(inputs_embeds=h).last_hidden_state
    assert (ours - theirs).abs().max().item() <= 1e-6
    _, hidden = bb(h, return_hidden=True)
    assert len(hidden) == 3 and not torch.allclose(hidden[0], hidden[1])


def _batch(cfg, b=4):
    g = torch.Generator().manual_seed(1)
    return {OBS_IMAGE: torch.randint(0, 255, (b, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, generator=g),
            OBS_STATE: torch.randn(b, 7, generator=g), OBS_LANG: torch.randn(b, 384, generator=g),
            ACTION: torch.rand(b, cfg.chunk_size, 4, generator=g) * 2 - 1}


def test_spans_cover_the_sequence():
    cfg = tiny_model_config()
    spans = cfg.spans
    assert spans["language"] == (0, 2) and spans["state"] == (2, 3)
    assert spans["vision"] == (3, 3 + (32 // 8) ** 2) and spans["queries"][1] == cfg.seq_len
    m = ReferenceVLA(cfg)
    assert m.embed(_batch(cfg)).shape == (4, cfg.seq_len, cfg.hidden_size)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    cfg = tiny_model_config()
    m = ReferenceVLA(cfg)
    batch = _batch(cfg, 8)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = m(batch)[0].item()
    for _ in range(30):
        loss, _ = m(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m(batch)[0].item() < 0.5 * first


def test_action_loss_ignores_padded_steps():
    pred = torch.zeros(1, 3, 4)
    target = torch.tensor([[[1.0] * 4, [2.0] * 4, [100.0] * 4]])
    pad = torch.tensor([[False, False, True]])
    assert action_loss(pred, target, pad).item() == pytest.approx((1 + 4) / 2)


def test_wrong_image_size_is_refused_in_one_sentence():
    cfg = tiny_model_config()
    m = ReferenceVLA(cfg)
    obs = {OBS_IMAGE: torch.zeros(1, 64, 64, 3, dtype=torch.uint8), OBS_STATE: torch.zeros(1, 7), TASK: ["open the door"]}
    with pytest.raises(ObservationError, match="trained on 32x32"):
        m.select_action(obs)
    with pytest.raises(ObservationError, match="lacks 'task'"):
        m.select_action({OBS_IMAGE: obs[OBS_IMAGE], OBS_STATE: obs[OBS_STATE]})


def test_select_action_uses_a_receding_horizon():
    cfg = tiny_model_config(n_action_steps=2)
    m = ReferenceVLA(cfg).eval()
    obs = {OBS_IMAGE: torch.zeros(2, 32, 32, 3, dtype=torch.uint8), OBS_STATE: torch.zeros(2, 7), TASK: ["open the door"] * 2}
    m.reset()
    a1 = m.select_action(obs)
    assert m.pop_layer_mask().shape == (2, cfg.num_layers)
    a2 = m.select_action(obs)
    assert m.pop_layer_mask() is None  # second action comes from the queue, no forward
    batch = m.prepare_observation(obs)
    chunk = m.predict(batch).clamp(-1, 1)
    torch.testing.assert_close(a1, chunk[:, 0])
    torch.testing.assert_close(a2, chunk[:, 1])
