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


# -- quantile gating and hybrid depth (train at the budget you deploy) --------------------------------------------

def test_quantile_gate_passes_exactly_its_share_of_a_batch():
    from actdistill.distill.routing import quantile_gate

    logits = torch.randn(7, 6, generator=torch.Generator().manual_seed(0), requires_grad=True)
    for keep in (0.0, 0.2, 0.3, 0.5, 0.77, 1.0):
        hard, thr, g = quantile_gate(logits, keep)
        assert int(hard.sum()) == round(keep * 42)
        assert torch.equal(hard.bool(), logits.detach() >= thr) or keep in (0.0, 1.0)  # the threshold separates them
    hard, thr, g = quantile_gate(logits, 0.3)
    assert len(set(hard.sum(1).tolist())) > 1  # rows differ in how many layers they run
    (hard + g - g.detach()).sum().backward()  # straight-through: the gradient of the surrogate sigmoid
    torch.testing.assert_close(logits.grad, (g * (1 - g)).detach())


def test_running_threshold_converges_and_train_and_deploy_masks_agree():
    student, _, cfg = _student(gating="quantile", rho=0.5, momentum=0.2)
    student.train()
    batch = _batch(cfg, 16)
    with torch.no_grad():
        h0 = student.vla.embed(batch)
        for _ in range(60):  # a stationary stream: the same batch again and again
            g, m = student.training_gates(h0)
    assert int(m.sum()) == round(0.5 * 16 * 6)
    _, thr, _ = __import__("actdistill.distill.routing", fromlist=["quantile_gate"]).quantile_gate(
        student.router.logits(h0).detach(), 0.5)
    assert abs(float(student.running_threshold) - float(thr)) < 1e-5
    train_mask = m.bool()
    student.finish_training().eval()  # the running threshold becomes the deployed one
    assert not hasattr(student, "running_threshold")
    assert torch.equal(student.layer_mask(h0), train_mask)


def test_a_threshold_set_from_data_passes_exactly_the_budget_on_that_data():
    """threshold_source="data": the deployed threshold comes from the final router's logits, not from a running
    average that lags a drifting logit level."""
    student, _, cfg = _student(gating="quantile", rho=0.5, momentum=0.1)
    h0 = student.vla.embed(_batch(cfg, 32))
    with torch.no_grad():
        student.running_threshold.fill_(1e3)  # a stale running estimate far above every logit
        thr = student.set_threshold_from(student.router.logits(h0))
    assert float(student.running_threshold) == pytest.approx(thr)
    student.finish_training().eval()
    assert int(student.layer_mask(h0).sum()) == round(0.5 * 32 * 6)


def test_eval_mode_does_not_move_the_running_threshold():
    student, _, cfg = _student(gating="quantile", rho=0.5)
    h0 = student.vla.embed(_batch(cfg, 4))
    student.eval()
    student.training_gates(h0)
    assert int(student.threshold_updates) == 0


def test_always_run_layers_execute_for_every_row_and_are_not_routed():
    from actdistill.distill.losses import routed_gate_losses

    student, _, cfg = _student(gating="quantile", rho=0.5, always_run=(0, 3))
    assert student.routed_layers == (1, 2, 4, 5) and student.routed_keep == pytest.approx((0.5 * 6 - 2) / 4)
    student.train()
    batch = _batch(cfg, 8)
    out = student.forward_train(batch)
    m = out["masks"].detach()
    assert m[:, [0, 3]].eq(1).all()  # always executed
    assert int(m[:, [1, 2, 4, 5]].sum()) == round(0.25 * 8 * 4)  # only the routed layers share the budget
    assert m.mean().item() == pytest.approx(0.5)  # all layers together run at rho
    gl = routed_gate_losses(out["gates"], out["routed"], student.tau, 0.5, "hard", "quantile")
    assert gl["bud"].item() == 0.0  # met exactly by construction
    # deployed: the always-run layers run on every row (hook counts), the routed ones as trained
    student.finish_training().eval()
    calls = [0] * cfg.num_layers
    for i, layer in enumerate(student.vla.backbone.layers):
        layer.register_forward_pre_hook(lambda mod, a, i=i: calls.__setitem__(i, calls[i] + a[0].shape[0]))
    with torch.no_grad():
        student.predict(batch)
    assert calls[0] == calls[3] == 8


def test_threshold_gating_with_always_run_counts_them_in_the_budget():
    from actdistill.distill.losses import routed_gate_losses

    g = torch.tensor([[1.0, 0.9, 0.1, 1.0], [1.0, 0.2, 0.2, 1.0]])  # layers 0 and 3 always run
    gl = routed_gate_losses(g, [1, 2], tau=0.5, rho=0.5, budget_on="hard", gating="threshold")
    # executed: row 0 runs 3 of 4, row 1 runs 2 of 4 -> 0.625; (0.625 - 0.5)^2
    assert gl["bud"].item() == pytest.approx(0.125 ** 2)
    assert gl["pol"].item() == pytest.approx(float((g[:, 1:3] * (1 - g[:, 1:3])).mean()))


def test_default_gating_is_the_plain_threshold_gate():
    student, _, cfg = _student()
    h0 = student.vla.embed(_batch(cfg, 4))
    g, m = student.training_gates(h0)
    torch.testing.assert_close(g, student.router(h0))
    assert torch.equal(m, straight_through(g, student.tau))  # the same op as before quantile gating existed


def _random_router(student):
    with torch.no_grad():
        student.router.gate.weight.normal_(0, 3.0)
        student.router.gate.bias.zero_()
    return student


def test_a_vision_router_reads_no_instruction_and_still_reads_the_image():
    cfg = tiny_model_config(num_layers=6)
    batch = _batch(cfg, 6)
    reworded = {**batch, OBS_LANG: torch.randn(6, 384, generator=torch.Generator().manual_seed(9))}
    moved = {**batch, OBS_IMAGE: torch.flip(batch[OBS_IMAGE], dims=[1])}
    vision = _random_router(_student(router_inputs="vision")[0])
    both = _random_router(_student()[0])
    assert vision.router.gate.in_features == 2 * 8 and not hasattr(vision.router, "proj_lang")
    with torch.no_grad():
        def logits(s, b):
            return s.router.logits(s.vla.embed(b))
        assert torch.equal(logits(vision, batch), logits(vision, reworded))
        assert not torch.allclose(logits(vision, batch), logits(vision, moved))
        assert not torch.allclose(logits(both, batch), logits(both, reworded))  # the default router reads it


def test_a_vision_router_exports_and_reloads_with_identical_actions(tmp_path):
    import json

    from actdistill.export import export_student, load_student

    student, _, cfg = _student(router_inputs="vision")
    _random_router(student)
    export_student(student, tmp_path / "s", rho=0.5, tasks=["reach-v3"])
    assert json.loads((tmp_path / "s" / "config.json").read_text())["router_inputs"] == "vision"
    loaded = load_student(tmp_path / "s")
    assert loaded.router.inputs == "vision"
    b = _batch(cfg, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(b), student.eval().predict(b), rtol=0, atol=0)
    # the default router writes no such field, so the configs (and hashes) of earlier students are unchanged
    both, _, _ = _student()
    export_student(both, tmp_path / "d", rho=0.5, tasks=["reach-v3"])
    assert "router_inputs" not in json.loads((tmp_path / "d" / "config.json").read_text())


def test_an_unknown_router_input_is_one_sentence():
    from actdistill.config import DistillConfig
    from actdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="router_inputs must be one of vision\\+language, vision, got 'text'"):
        DistillConfig(router_inputs="text")
