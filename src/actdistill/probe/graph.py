"""Graph semantic extractor E_l and action probe P_l (docs/design.md "Graph-structured encapsulation").

For the hidden states H (B, N, D) after decoder layer l:
  1. affinity s_ij = phi(h_i) . psi(h_j) (bias-free linear maps); each node keeps its k highest-scoring
     other nodes (no self loops); edge prior w_ij = softmax of the kept scores (stable form of
     exp(s_ij) / sum_kept exp(s_ik));
  2. two graph-attention layers (4 heads, averaged; ReLU between) with
     e_ij = LeakyReLU_0.2(a . [W h_i ; W h_j]) and message weight proportional to w_ij * exp(e_ij),
     normalised over node i's incoming edges, i.e. softmax_j(e_ij + log w_ij);
  3. attention pooling over nodes, then an MLP to the semantic vector z_l (B, d_s).
The action probe P_l maps z_l to an action chunk (B, chunk, A). Everything is batched: no loop over samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def knn_graph(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k neighbours of every node, excluding itself.

    scores: (B, N, N) affinities. Returns neighbour indices (B, N, k) and edge priors (B, N, k) summing to 1 per node.
    """
    n = scores.shape[-1]
    k = min(k, n - 1)
    eye = torch.eye(n, dtype=torch.bool, device=scores.device)
    masked = scores.masked_fill(eye, float("-inf"))
    top, idx = masked.topk(k, dim=-1)  # (B, N, k)
    prior = torch.softmax(top, dim=-1)  # exp(s_ij) / sum over kept neighbours, computed stably
    return idx, prior


def dense_log_prior(idx: torch.Tensor, prior: torch.Tensor, n: int) -> torch.Tensor:
    """Edge priors as a dense (B, N, N) matrix of log w_ij, -inf where j is not a kept neighbour of i.

    With the few tokens of a VLA layer (tens), dense masked attention is much cheaper than gathering
    per-edge features, and it is exactly the same sparse graph.
    """
    out = torch.full((*idx.shape[:2], n), float("-inf"), dtype=prior.dtype, device=prior.device)
    return out.scatter(-1, idx, torch.log(prior.clamp_min(1e-30)))


class PriorGraphAttention(nn.Module):
    """One graph-attention layer whose message weights combine the edge prior with the attention logits."""

    def __init__(self, dim_in: int, dim_out: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.dim_out = dim_out
        self.W = nn.Linear(dim_in, heads * dim_out, bias=False)
        self.a_dst = nn.Parameter(torch.randn(heads, dim_out) * 0.1)
        self.a_src = nn.Parameter(torch.randn(heads, dim_out) * 0.1)

    def forward(self, h: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
        """h (B, N, D_in), log_prior (B, N, N) from `dense_log_prior` -> (B, N, F)."""
        b, n, _ = h.shape
        wh = self.W(h).view(b, n, self.heads, self.dim_out)  # (B, N, H, F)
        e_dst = (wh * self.a_dst).sum(-1)  # (B, N, H): a_1 . W h_i
        e_src = (wh * self.a_src).sum(-1)  # (B, N, H): a_2 . W h_j
        e = F.leaky_relu(e_dst.unsqueeze(2) + e_src.unsqueeze(1), 0.2)  # (B, N_i, N_j, H)
        alpha = torch.softmax(e + log_prior.unsqueeze(-1), dim=2)  # w_ij exp(e_ij), normalised over i's incoming edges
        msg = torch.einsum("bijh,bjhf->bihf", alpha, wh)  # (B, N, H, F)
        return msg.mean(2)  # heads averaged: (B, N, F)


class GraphSemanticExtractor(nn.Module):
    def __init__(self, hidden_size: int, semantic_dim: int = 128, graph_dim: int = 64, affinity_dim: int = 32,
                 k: int = 8, heads: int = 4):
        super().__init__()
        self.k = k
        self.phi = nn.Linear(hidden_size, affinity_dim, bias=False)
        self.psi = nn.Linear(hidden_size, affinity_dim, bias=False)
        self.gat1 = PriorGraphAttention(hidden_size, graph_dim, heads)
        self.gat2 = PriorGraphAttention(graph_dim, graph_dim, heads)
        self.pool_score = nn.Linear(graph_dim, 1)
        self.mlp = nn.Sequential(nn.Linear(graph_dim, graph_dim), nn.GELU(), nn.Linear(graph_dim, semantic_dim))

    def graph(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.phi(h) @ self.psi(h).transpose(1, 2)  # (B, N, N)
        return knn_graph(scores, self.k)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, N, D) -> semantic vector (B, d_s)."""
        h = h.float()
        idx, prior = self.graph(h)
        log_prior = dense_log_prior(idx, prior, h.shape[1])
        x = F.relu(self.gat1(h, log_prior))
        x = self.gat2(x, log_prior)  # (B, N, F)
        attn = torch.softmax(self.pool_score(x), dim=1)  # (B, N, 1)
        return self.mlp((attn * x).sum(1))  # (B, d_s)


class ActionProbe(nn.Module):
    def __init__(self, semantic_dim: int, chunk_size: int, action_dim: int = 4, hidden: int = 128):
        super().__init__()
        self.chunk_size = chunk_size
        self.action_dim = action_dim
        self.net = nn.Sequential(nn.Linear(semantic_dim, hidden), nn.GELU(), nn.Linear(hidden, chunk_size * action_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, self.chunk_size, self.action_dim)  # (B, chunk, A)


class LayerProbes(nn.Module):
    """E_l and P_l for every decoder layer l."""

    def __init__(self, num_layers: int, hidden_size: int, chunk_size: int, semantic_dim: int = 128, graph_dim: int = 64,
                 affinity_dim: int = 32, k: int = 8, heads: int = 4, action_dim: int = 4):
        super().__init__()
        self.extractors = nn.ModuleList(GraphSemanticExtractor(hidden_size, semantic_dim, graph_dim, affinity_dim, k, heads)
                                        for _ in range(num_layers))
        self.probes = nn.ModuleList(ActionProbe(semantic_dim, chunk_size, action_dim, hidden=graph_dim)
                                    for _ in range(num_layers))

    def forward(self, hidden: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden: L x (B, N, D) -> semantic (B, L, d_s), probe actions (B, L, chunk, A)."""
        z = [e(h) for e, h in zip(self.extractors, hidden)]
        a = [p(zl) for p, zl in zip(self.probes, z)]
        return torch.stack(z, 1), torch.stack(a, 1)
