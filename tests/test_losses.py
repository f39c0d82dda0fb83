"""Each ActDistill loss equals its formula on a small hand-computed case."""

import math

import pytest
import torch

from actdistill.distill.losses import (action_stream_loss, balance_loss, budget_loss, cosine_matrix, gate_losses, layer_weights,
                                      polarization_loss,
                                       semantic_loss)


def test_layer_weights_gamma2_mean_one_layer0_zero():
    w = layer_weights(3, 2.0)  # raw (0, 1/4, 1), mean 5/12
    torch.testing.assert_close(w, torch.tensor([0.0, 0.6, 2.4]))
    assert w.mean().item() == pytest.approx(1.0)


def test_relational_term_on_three_samples():
    z_s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z_t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    c_s = torch.tensor([[1, 0, 1 / math.sqrt(2)], [0, 1, 1 / math.sqrt(2)], [1 / math.sqrt(2), 1 / math.sqrt(2), 1]])
    c_t = torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]])
    torch.testing.assert_close(cosine_matrix(z_s), c_s)
    rel = ((c_s - c_t) ** 2).mean().item()
    cos = 1 - (1 + 0 + 1 / math.sqrt(2)) / 3
    w = torch.tensor([2.0])
    got = semantic_loss(z_s[:, None], z_t[:, None], w, eta=0.5).item()
    assert got == pytest.approx(2.0 * (cos + 0.5 * rel), rel=1e-6)


def test_semantic_terms_on_executed_rows_only_read_the_rows_that_ran_each_layer():
    g = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(5, 2, 3, generator=g), torch.randn(5, 2, 3, generator=g)
    w = torch.tensor([1.0, 2.0])
    ran = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 0], [0, 0]], dtype=torch.bool)
    # by hand: layer 0 on rows 0, 1, 3; layer 1 on rows 1, 2
    want = sum(w[l] * semantic_loss(z_s[ran[:, l]][:, l:l + 1], z_t[ran[:, l]][:, l:l + 1], torch.ones(1)) for l in (0, 1))
    assert semantic_loss(z_s, z_t, w, executed=ran).item() == pytest.approx(want.item(), rel=1e-6)
    # every row ran every layer: the plain loss; a layer no row ran adds nothing; one row: its cosine term only
    assert semantic_loss(z_s, z_t, w, executed=torch.ones(5, 2, dtype=torch.bool)).item() == pytest.approx(
        semantic_loss(z_s, z_t, w).item(), rel=1e-6)
    one = torch.zeros(5, 2, dtype=torch.bool)
    one[3, 1] = True
    cos = 1 - torch.nn.functional.cosine_similarity(z_s[3, 1], z_t[3, 1], dim=0)
    assert semantic_loss(z_s, z_t, w, executed=one).item() == pytest.approx(2.0 * cos.item(), rel=1e-6)
    assert semantic_loss(z_s, z_t, w, executed=torch.zeros(5, 2, dtype=torch.bool)).item() == 0.0


def test_triple_mse_uses_zero_previous_action_for_layer0():
    a_gt = torch.tensor([[[1.0, 1, 1, 1]]])  # (B=1, C=1, A=4)
    a_s = torch.tensor([[[[0.5] * 4]], [[[2.0] * 4]]]).view(1, 2, 1, 4)  # layer 0: 0.5, layer 1: 2.0
    a_t = torch.tensor([[[[0.0] * 4]], [[[1.0] * 4]]]).view(1, 2, 1, 4)
    w = torch.tensor([1.0, 3.0])
    layer0 = (0.5 - 1) ** 2 + (0.5 - 0) ** 2 + (0.5 - 0) ** 2
    layer1 = (2 - 1) ** 2 + (2 - 1) ** 2 + (2 - 0.5) ** 2
    assert action_stream_loss(a_s, a_gt, a_t, w).item() == pytest.approx(1.0 * layer0 + 3.0 * layer1)


def test_triple_mse_stops_the_gradient_into_the_previous_layer():
    a_s = torch.zeros(1, 2, 1, 4, requires_grad=True)
    target = torch.ones(1, 1, 4)
    loss = action_stream_loss(a_s, target, torch.zeros(1, 2, 1, 4), torch.tensor([0.0, 1.0]))
    loss.backward()
    # layer 0 has weight 0 and is only a stop-gradient target of layer 1: no gradient reaches it
    assert a_s.grad[0, 0].abs().sum().item() == 0.0 and a_s.grad[0, 1].abs().sum().item() > 0


def test_balance_and_budget_terms():
    g = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.5]])  # gbar = (0.5, 0, 0.5), mean 1/3
    expected_bal = ((0.5 - 1 / 3) ** 2 + (1 / 3) ** 2 + (0.5 - 1 / 3) ** 2) / 3
    assert balance_loss(g).item() == pytest.approx(expected_bal)
    assert budget_loss(g, 0.5).item() == pytest.approx((2 / 6 - 0.5) ** 2)


def test_hard_budget_counts_executed_layers_and_passes_the_gradient_to_g():
    # gates parked just above tau: the soft mean meets rho = 0.5 but every layer executes
    g = torch.full((4, 6), 0.51, requires_grad=True)
    soft = gate_losses(g, tau=0.5, rho=0.5, budget_on="soft")
    hard = gate_losses(g, tau=0.5, rho=0.5, budget_on="hard")
    assert soft["bud"].item() == pytest.approx(0.01**2, rel=1e-4)
    assert hard["bud"].item() == pytest.approx(0.5 ** 2)  # executed fraction 1.0
    hard["bud"].backward()
    # d/dg of (mean(mask) - rho)^2 through the straight-through mask: 2 * 0.5 / 24 for every gate
    assert torch.allclose(g.grad, torch.full_like(g, 2 * 0.5 / 24))


def test_polarization_is_zero_at_saturated_gates_and_largest_at_one_half():
    assert polarization_loss(torch.tensor([[0.0, 1.0]])).item() == 0.0
    assert polarization_loss(torch.tensor([[0.5, 0.5]])).item() == pytest.approx(0.25)
    assert polarization_loss(torch.tensor([[0.2, 0.9]])).item() == pytest.approx((0.16 + 0.09) / 2)


def test_stream_normalisations_equal_their_formulas():
    from actdistill.distill.losses import normalise_streams

    sem, act = torch.tensor(6.0), torch.tensor(45.0)
    assert normalise_streams(sem, act, "none", 5) == (sem, act)
    s, a = normalise_streams(sem, act, "terms", 5)  # L_sem: 2 summands per layer, L_act: 3
    assert s.item() == pytest.approx(6.0 / 10) and a.item() == pytest.approx(45.0 / 15)
    s, a = normalise_streams(sem, act, "initial", 5, initial=torch.tensor([3.0, 90.0]))
    assert s.item() == pytest.approx(2.0) and a.item() == pytest.approx(0.5)
    s, a = normalise_streams(sem, act, "initial", 5, initial=torch.tensor([1e-7, 90.0]))  # a stream that starts at ~0
    assert s.item() == pytest.approx(6.0) and a.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs the streams' values"):
        normalise_streams(sem, act, "initial", 5)


def test_the_streams_weight_falls_linearly_to_zero_over_its_fraction_of_training():
    from actdistill.distill.losses import stream_weight

    assert [stream_weight(s, 10, 0.0) for s in (0, 5, 10)] == [1.0, 1.0, 1.0]  # off: constant weights
    assert [stream_weight(s, 10, 1.0) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert [stream_weight(s, 10, 0.5) for s in (0, 2, 5, 7, 10)] == pytest.approx([1.0, 0.6, 0.0, 0.0, 0.0])
