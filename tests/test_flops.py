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


def test_training_step_flops_count_the_backward_attention_included():
    from actdistill.bench.flops import train_step_flops

    bb = DecoderBackbone.llama(32, 2, 4, 2, 48, max_positions=16)
    h = torch.randn(3, 10, 32, requires_grad=True)
    flops = train_step_flops(bb, lambda m, x: m(x).sum(), h)
    attn = 4 * 3 * 4 * 10 * 10 * 8  # the two attention matmuls of one layer, forward
    rest = llama_layer_flops(3, 10, 32, 4, 2, 48) - attn
    # projections and MLP: forward + grad of input + grad of weight; attention: torch's flash backward
    # formula (five matmuls: the scores are recomputed) on top of the forward
    assert flops == 2 * (3 * rest + attn + attn * 5 // 2)
    assert all(p.grad is None for p in bb.parameters())  # counting leaves no gradients behind


def test_peak_memory_follows_live_tensors():
    from actdistill.bench.memory import LiveBytes, peak_memory, weight_bytes

    lin = torch.nn.Linear(256, 256)
    x = torch.randn(64, 256)
    with torch.no_grad(), LiveBytes() as mode:
        a = lin(x)  # 64 KiB; the transposed weight is a view and allocates nothing
        big = torch.zeros(1000, 1000)  # 4 MB
        view = big.view(-1)
        del big  # the storage lives on in the view
        copy = view + 0  # another 4 MB while the first is alive
        del view, copy
        assert mode.live == a.numel() * 4
    assert mode.peak == a.numel() * 4 + 2 * 4_000_000
    cfg = tiny_model_config(num_layers=4)
    teacher = ReferenceVLA(cfg).eval()
    m = peak_memory(teacher, _batch(cfg, 1))
    tensors = list(teacher.parameters()) + list(teacher.buffers())  # buffers include the rotary table
    assert m["weights_mb"] * 1024 ** 2 == weight_bytes(teacher) == sum(t.numel() * t.element_size() for t in tensors)
    assert 0 < m["activations_mb"] < m["peak_memory_mb"]
