import pytest
import torch

from actdistill.constants import OBS_IMAGE, OBS_LANG, OBS_STATE
from actdistill.distill.routing import RoutedStudent, straight_through
from actdistill.models.vla import ReferenceVLA
from actdistill.probe.graph import LayerProbes
from tests.conftest import tiny_model_config


def _batch(cfg, b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {OBS_IMAGE: torch.randint(0, 255, (b, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, generator=g),
            OBS_STATE: torch.randn(b, 7, generator=g), OBS_LANG: torch.randn(b, 384, generator=g)}


def _student(**kw):
    torch.manual_seed(0)
    cfg = tiny_model_config(num_layers=6)
    teacher = ReferenceVLA(cfg).eval()
    probes = LayerProbes(cfg.num_layers, cfg.hidden_size, cfg.chunk_size, 8, 12, 6, 3)
    return RoutedStudent.from_teacher(teacher, probes, router_dim=8, **kw).eval(), teacher, cfg


def _set_gates(student, logits):
    """Make the router output fixed, input-dependent-free logits (L,) or per-row via the bias."""
    with torch.no_grad():
        student.router.gate.weight.zero_()
        student.router.gate.bias.copy_(logits)


def test_straight_through_forward_is_hard_backward_is_sigmoid_gradient():
    x = torch.tensor([-1.0, 0.2, 3.0], requires_grad=True)
    g = torch.sigmoid(x)
    m = straight_through(g, 0.5)
    assert m.tolist() == [0.0, 1.0, 1.0]
    m.sum().backward()
    torch.testing.assert_close(x.grad, g.detach() * (1 - g.detach()))


def test_student_starts_as_the_teacher():
    student, teacher, cfg = _student()
    b = _batch(cfg, 3)
    _set_gates(student, torch.full((6,), 5.0))
    torch.testing.assert_close(student.predict(b), teacher.predict(b), rtol=0, atol=1e-6)


def test_skipped_layers_are_never_called():
    student, _, cfg = _student()
    calls = [0] * 6
    hooks = [layer.register_forward_hook(lambda m, i, o, l=l: calls.__setitem__(l, calls[l] + 1))
             for l, layer in enumerate(student.vla.backbone.layers)]
    _set_gates(student, torch.tensor([5.0, -5, 5, -5, -5, 5]))
    student.predict(_batch(cfg, 4))
    for h in hooks:
        h.remove()
    assert calls == [1, 0, 1, 0, 0, 1]


def test_mixed_batch_equals_row_by_row():
    student, _, cfg = _student()
    with torch.no_grad():  # an input-dependent router: rows choose different layers
        student.router.gate.weight.normal_(0, 3.0)
        student.router.gate.bias.zero_()
    b = _batch(cfg, 6)
    h0 = student.vla.embed(b)
    mask = student.layer_mask(h0)
    assert len({tuple(r.tolist()) for r in mask}) > 1, "the test needs rows that route differently"
    together = student.predict(b)
    alone = torch.cat([student.predict({k: v[i:i + 1] for k, v in b.items()}) for i in range(6)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_hard_training_pass_equals_routed_inference():
    """Train = deploy: the dense gated-residual pass gives what the skipping pass gives."""
    student, _, cfg = _student()
    with torch.no_grad():
        student.router.gate.weight.normal_(0, 3.0)
    b = _batch(cfg, 5)
    with torch.no_grad():
        dense = student.forward_train(b, soft=False)["action"]
    torch.testing.assert_close(dense, student.predict(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_soft_and_hard_gates_agree_in_the_limit(sign):
    student, _, cfg = _student()
    b = _batch(cfg, 2)
    _set_gates(student, torch.full((6,), sign * 30.0))
    with torch.no_grad():
        soft = student.forward_train(b, soft=True)["action"]
        hard = student.forward_train(b, soft=False)["action"]
    torch.testing.assert_close(soft, hard, rtol=0, atol=1e-6)


def test_gradient_reaches_router_through_hard_gates():
    student, _, cfg = _student()
    student.train()
    out = student.forward_train(_batch(cfg, 3))
    out["action"].pow(2).mean().backward()
    assert student.router.gate.weight.grad.abs().sum() > 0


def test_calibration_shift_hits_the_target_fraction():
    student, _, _ = _student()
    logits = torch.randn(1000, 6)
    shift = student.calibrate_shift(logits, 0.3)
    frac = ((logits + shift) >= 0).float().mean().item()
    assert frac == pytest.approx(0.3, abs=0.002)
