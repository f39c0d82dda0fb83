import torch

from actdistill.bench.flops import count_flops, llama_layer_flops, policy_flops
from actdistill.distill.routing import RoutedStudent
from actdistill.models.backbone import DecoderBackbone
from actdistill.models.vla import ReferenceVLA
from tests.conftest import tiny_model_config
from tests.test_routing import _batch, _set_gates


def test_decoder_flops_equal_the_analytic_count_attention_included():
    bb = DecoderBackbone.llama(32, 2, 4, 2, 48, max_positions=16).eval()
    h = torch.randn(3, 10, 32)
    total, inside = count_flops(bb, h, decoder_layers=list(bb.layers))
    assert total == inside == 2 * llama_layer_flops(3, 10, 32, 4, 2, 48)


def test_teacher_policy_flops_split_into_decoder_and_rest():
    cfg = tiny_model_config(num_layers=4)
    teacher = ReferenceVLA(cfg).eval()
    f = policy_flops(teacher, _batch(cfg, 1))
    layer = llama_layer_flops(1, cfg.seq_len, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size)
    assert f["decoder_flops"] == 4 * layer
    assert f["policy_flops"] > f["decoder_flops"]


def test_student_with_half_its_layers_skipped_costs_half_the_decoder():
    torch.manual_seed(0)
    cfg = tiny_model_config(num_layers=4)
    teacher = ReferenceVLA(cfg).eval()
    student = RoutedStudent.from_teacher(teacher, None, router_dim=8).eval()
    _set_gates(student, torch.tensor([5.0, -5.0, 5.0, -5.0]))
    b = _batch(cfg, 1)
    ft, fs = policy_flops(teacher, b), policy_flops(student, b)
    assert fs["decoder_flops"] == ft["decoder_flops"] / 2
    rest_t = ft["policy_flops"] - ft["decoder_flops"]
    rest_s = fs["policy_flops"] - fs["decoder_flops"]
    # everything else is unchanged but for the router's own projections, which are counted too
    r, n_v, n_l, d = 8, cfg.num_vision_tokens, cfg.num_lang_tokens, cfg.hidden_size
    assert rest_s - rest_t == 2 * (n_v * d * r + n_l * d * r + 4 * r * cfg.num_layers)
