"""Bring your own decoder: the layer loop equals each transformers family's own forward; routing works through it."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from actdistill.config import DECODERS
from actdistill.distill.routing import RoutedStudent
from actdistill.models.backbone import FAMILIES, AdapterError, DecoderBackbone, find_decoder
from tests.conftest import tiny_model_config


def test_the_config_and_the_adapter_know_the_same_families():
    assert set(DECODERS) == set(FAMILIES)


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_layer_loop_equals_the_models_own_forward(family, attn):
    torch.manual_seed(0)
    if family == "gemma2" and attn == "sdpa":  # Gemma 2's logit soft-capping has no SDPA path
        with pytest.raises(AdapterError, match="does not support attn_implementation='sdpa'"):
            DecoderBackbone.build(family, 32, 4, 4, 2, 64, max_positions=24, attn_implementation=attn)
        return
    # a sliding window shorter than the sequence, so sliding layers really get their own mask
    bb = DecoderBackbone.build(family, 32, 4, 4, 2, 64, max_positions=24, attn_implementation=attn, sliding_window=5).eval()
    h = torch.randn(3, 20, 32)
    with torch.no_grad():
        ours = bb(h)
        theirs = bb.model(inputs_embeds=h).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    if family in ("gemma2", "gemma3"):
        assert "sliding_attention" in bb.layer_types


def test_wrapping_a_causal_lm_finds_its_decoder():
    cfg = Qwen2Config(vocab_size=11, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, max_position_embeddings=32)
    lm = AutoModelForCausalLM.from_config(cfg)
    assert find_decoder(lm) is lm.model and DecoderBackbone(lm).num_layers == 2


def test_a_model_without_decoder_layers_is_one_sentence():
    with pytest.raises(AdapterError, match="Could not find decoder layers in Linear"):
        DecoderBackbone(torch.nn.Linear(2, 2))
    with pytest.raises(AdapterError, match="Unknown decoder family 'gpt9'"):
        DecoderBackbone.build("gpt9", 32, 2, 4, 2, 64, 16)


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_routed_student_skips_layers_through_the_adapter(family):
    torch.manual_seed(0)
    cfg = tiny_model_config(decoder=family, attn_implementation="eager", sliding_window=6)
    from actdistill.models.vla import ReferenceVLA

    teacher = ReferenceVLA(cfg).eval()
    student = RoutedStudent.from_teacher(teacher, None, router_dim=8).eval()
    b = 4
    batch = {"observation.image": torch.randint(0, 255, (b, 32, 32, 3), dtype=torch.uint8),
             "observation.state": torch.randn(b, 7), "observation.language": torch.randn(b, cfg.lang_dim)}
    calls = [0] * cfg.num_layers
    for i, layer in enumerate(student.vla.backbone.layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + a[0].shape[0]))
    mask = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        h0 = student.vla.embed(batch)
        routed = student.routed_decode(h0, mask)
        rows = torch.cat([student.routed_decode(h0[i:i + 1], mask[i:i + 1]) for i in range(b)])
    torch.testing.assert_close(routed, rows, atol=1e-5, rtol=1e-5)
    assert calls == [2 * v for v in mask.sum(0).tolist()]  # each layer ran only on the rows that chose it (twice)


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_a_few_training_steps_through_the_adapter_move_the_router(family):
    from actdistill.models.vla import ReferenceVLA

    torch.manual_seed(0)
    cfg = tiny_model_config(decoder=family, attn_implementation="eager", sliding_window=6)
    student = RoutedStudent.from_teacher(ReferenceVLA(cfg), None, router_dim=8, init_bias=0.0)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    b = 8
    batch = {"observation.image": torch.randint(0, 255, (b, 32, 32, 3), dtype=torch.uint8),
             "observation.state": torch.randn(b, 7), "observation.language": torch.randn(b, cfg.lang_dim)}
    before = student.router.gate.weight.detach().clone()
    for _ in range(3):
        out = student.forward_train(batch)
        loss = out["action"].pow(2).mean() + (out["gates"].mean() - 0.3) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(before, student.router.gate.weight) and torch.isfinite(loss)


def test_a_config_window_the_layers_ignore_is_not_used():
    """OLMo 2 ignores `sliding_window` in its config; guessing sliding masks from it gave wrong hidden states."""
    from transformers import AutoModel, Olmo2Config

    torch.manual_seed(0)
    cfg = Olmo2Config(vocab_size=11, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, max_position_embeddings=64, sliding_window=5)
    model = AutoModel.from_config(cfg).eval()
    bb = DecoderBackbone(model)
    assert bb.layer_types == ["full_attention"] * 3
    h = torch.randn(2, 20, 32)
    with torch.no_grad():
        torch.testing.assert_close(bb(h), model(inputs_embeds=h).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_a_decoder_whose_forward_the_loop_cannot_reproduce_is_refused():
    from transformers import LlamaConfig, LlamaModel

    class Doubled(LlamaModel):  # a forward that does more than embed -> layers -> norm
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.last_hidden_state = out.last_hidden_state * 2
            return out

    cfg = LlamaConfig(vocab_size=11, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, max_position_embeddings=32)
    with pytest.raises(AdapterError, match="does not reproduce its own forward"):
        DecoderBackbone(Doubled(cfg))
    DecoderBackbone(Doubled(cfg), verify=False)  # the check can be skipped on purpose


def test_wrapping_does_not_move_the_global_rng():
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=11, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, max_position_embeddings=32)
    model = LlamaModel(cfg)
    torch.manual_seed(3)
    a = torch.rand(4)
    torch.manual_seed(3)
    DecoderBackbone(model)
    assert torch.equal(torch.rand(4), a)
