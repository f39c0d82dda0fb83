import torch

from actdistill.probe.graph import GraphSemanticExtractor, LayerProbes, dense_log_prior, knn_graph


def test_knn_graph_has_k_edges_per_node_no_self_loops_and_normalised_priors():
    torch.manual_seed(0)
    scores = torch.randn(3, 10, 10) * 5
    idx, prior = knn_graph(scores, k=4)
    assert idx.shape == (3, 10, 4)
    nodes = torch.arange(10).view(1, 10, 1)
    assert not (idx == nodes).any()
    assert all(len(set(row.tolist())) == 4 for row in idx.reshape(-1, 4))
    torch.testing.assert_close(prior.sum(-1), torch.ones(3, 10))
    # the kept neighbours are the highest-scoring other nodes
    masked = scores.masked_fill(torch.eye(10, dtype=torch.bool), float("-inf"))
    torch.testing.assert_close(scores.gather(-1, idx).min(-1).values, masked.topk(4, -1).values[..., -1])


def test_edge_prior_is_stable_for_huge_scores():
    scores = torch.tensor([[[0.0, 1000.0, 999.0], [1000.0, 0.0, -1000.0], [5.0, 5.0, 0.0]]])
    idx, prior = knn_graph(scores, k=2)
    assert torch.isfinite(prior).all()
    torch.testing.assert_close(prior[0, 0].max(), torch.sigmoid(torch.tensor(1.0)))


def test_dense_prior_keeps_only_graph_edges():
    idx = torch.tensor([[[1], [0], [0]]])
    prior = torch.ones(1, 3, 1)
    lp = dense_log_prior(idx, prior, 3)
    assert torch.isinf(lp).sum() == 6 and lp[0, 0, 1] == 0 and lp[0, 2, 0] == 0


def test_extractor_is_batched_and_rows_independent():
    torch.manual_seed(0)
    e = GraphSemanticExtractor(16, semantic_dim=8, graph_dim=12, affinity_dim=6, k=3)
    h = torch.randn(5, 9, 16)
    z = e(h)
    assert z.shape == (5, 8)
    torch.testing.assert_close(e(h[2:3]), z[2:3], rtol=1e-5, atol=1e-6)


def test_layer_probes_shapes():
    p = LayerProbes(num_layers=3, hidden_size=16, chunk_size=4, semantic_dim=8, graph_dim=12, affinity_dim=6, k=3)
    z, a = p([torch.randn(2, 7, 16) for _ in range(3)])
    assert z.shape == (2, 3, 8) and a.shape == (2, 3, 4, 4)
