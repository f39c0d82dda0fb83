"""The dynamic router and the self-derived routed student (docs/design.md "Student and router").

Layer update (train = deploy, a deliberate improvement on the paper's public code):
    h_l = h_{l-1} + m_l * (f_l(h_{l-1}) - h_{l-1}),   m_l = 1[g_l >= tau] forward, dg_l backward.
At inference a layer with m_l = 0 is not computed at all; in a batch each layer runs only on the
rows that selected it (gather, run, scatter back), so rows stay independent.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from actdistill.config import ModelConfig
from actdistill.models.contract import check_spans, check_vla
from actdistill.models.policy import PolicyMixin
from actdistill.models.vla import ReferenceVLA
from actdistill.probe.graph import LayerProbes


def straight_through(g: torch.Tensor, tau: float) -> torch.Tensor:
    """Hard 0/1 gate in the forward pass, the gradient of g in the backward pass."""
    hard = (g >= tau).to(g.dtype)
    return hard + g - g.detach()


class Router(nn.Module):
    """Per-input layer gates from the embeddings before layer 0.

    Vision and language tokens (spans from the model config) are each projected and layer-normalised,
    each pooled by mean and by max; the four summaries are concatenated; one linear unit per layer
    gives g_l = sigmoid(. + gate_bias_l). `gate_bias` is the post-training budget calibration.
    """

    def __init__(self, hidden_size: int, num_layers: int, spans: dict[str, tuple[int, int]], router_dim: int = 64,
                 init_bias: float = 2.0):
        super().__init__()
        self.spans = {k: tuple(v) for k, v in spans.items()}
        self.proj_vision = nn.Linear(hidden_size, router_dim)
        self.norm_vision = nn.LayerNorm(router_dim)
        self.proj_lang = nn.Linear(hidden_size, router_dim)
        self.norm_lang = nn.LayerNorm(router_dim)
        self.gate = nn.Linear(4 * router_dim, num_layers)
        nn.init.normal_(self.gate.weight, std=0.01)
        nn.init.constant_(self.gate.bias, init_bias)  # start with every layer on: the student begins as the teacher
        self.register_buffer("gate_bias", torch.zeros(num_layers))

    def logits(self, h0: torch.Tensor) -> torch.Tensor:
        """h0 (B, N, D) -> gate logits (B, L), calibration bias included."""
        check_spans(self.spans, h0.shape[1])
        v0, v1 = self.spans["vision"]
        l0, l1 = self.spans["language"]
        v = self.norm_vision(self.proj_vision(h0[:, v0:v1]))  # (B, Nv, r)
        t = self.norm_lang(self.proj_lang(h0[:, l0:l1]))  # (B, Nl, r)
        summary = torch.cat([v.mean(1), v.amax(1), t.mean(1), t.amax(1)], dim=-1)  # (B, 4r)
        return self.gate(summary) + self.gate_bias

    def forward(self, h0: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(h0))  # (B, L) in (0, 1)


class RoutedStudent(PolicyMixin, nn.Module):
    """Teacher copy (weights included) + router; + the layer probes while training (removed by export)."""

    def __init__(self, model: ModelConfig | nn.Module, router_dim: int = 64, tau: float = 0.5, init_bias: float = 2.0,
                 probes: LayerProbes | None = None):
        """`model`: the reference VLA's config (a fresh ReferenceVLA is built) or any VLA module that meets the
        model contract (models/contract.py), which the student then owns."""
        super().__init__()
        if isinstance(model, ModelConfig):
            model = ReferenceVLA(model)
        check_vla(model)
        self.vla = model
        self.router = Router(model.hidden_size, model.num_layers, model.spans, router_dim, init_bias)
        self.probes = probes
        self.tau = tau
        self.image_size = model.image_size
        self.n_action_steps = model.n_action_steps
        self.reset()

    @classmethod
    def from_teacher(cls, teacher: nn.Module, probes: LayerProbes | None, **kw) -> RoutedStudent:
        """Self-derived student: a copy of the teacher (weights included) and copies of its trained extractors and probes."""
        vla = ReferenceVLA(teacher.config) if isinstance(teacher, ReferenceVLA) else copy.deepcopy(teacher)
        student = cls(vla, probes=copy.deepcopy(probes) if probes is not None else None, **kw)
        student.vla.load_state_dict(teacher.state_dict())
        return student

    @property
    def num_layers(self) -> int:
        return self.vla.num_layers

    def strip_probes(self) -> RoutedStudent:
        """Drop the graph extractors and probes (training-only parts): what `actdistill export` deploys."""
        self.probes = None
        return self

    def forward_train(self, batch: dict, soft: bool = False) -> dict:
        """Dense pass with gated residuals (every layer computed, gated to an exact skip when m_l = 0)."""
        bb = self.vla.backbone
        h = self.vla.embed(batch)  # (B, N, D)
        g = self.router(h)  # (B, L)
        ctx = bb.context(h)
        hidden = []
        for l in range(self.num_layers):
            m = g[:, l] if soft else straight_through(g[:, l], self.tau)
            f = bb.layer(l, h, ctx)
            h = h + m[:, None, None] * (f - h)
            hidden.append(h)
        final = bb.norm(h)
        out = {"final": final, "gates": g, "hidden": hidden}
        if getattr(self.vla, "head_family", None) == "regression":  # deterministic and cheap; others sample or arg-max
            out["action"] = self.vla.action_head(final)
        if self.probes is not None:
            out["semantic"], out["probe_action"] = self.probes(hidden)
        return out

    def forward(self, batch: dict, soft: bool = False) -> dict:
        """The training pass (`forward_train`), so that a DDP wrapper sees it and synchronises gradients."""
        return self.forward_train(batch, soft=soft)

    @torch.no_grad()
    def routed_decode(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Inference: run layer l only on the rows with mask[:, l]; rows that skip it are not computed."""
        bb = self.vla.backbone
        ctx = bb.context(h)
        b = h.shape[0]
        for l in range(self.num_layers):
            rows = mask[:, l].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            if rows.numel() == b:
                h = bb.layer(l, h, ctx)
            else:
                h = h.index_copy(0, rows, bb.layer(l, h.index_select(0, rows), ctx.rows(rows)))
        return bb.norm(h)

    def gate_dependencies(self, batch: dict) -> set[str]:
        """Names of the trainable parameters the gate logits depend on: the router and whatever embeds its spans.

        Found by differentiating the logits of `batch`, so it holds for any contract model."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        with torch.enable_grad():
            logits = self.router.logits(self.vla.embed(batch))
            grads = torch.autograd.grad(logits.sum(), [p for _, p in named], allow_unused=True)
        return {n for (n, _), g in zip(named, grads) if g is not None and bool(g.abs().sum() > 0)}

    def layer_mask(self, h0: torch.Tensor) -> torch.Tensor:
        return self.router(h0) >= self.tau  # (B, L) bool

    def predict(self, batch: dict) -> torch.Tensor:
        h0 = self.vla.embed(batch)
        return self.vla.action_head(self.routed_decode(h0, self.layer_mask(h0)))

    def predict_chunk(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        h0 = self.vla.embed(batch)
        self._last_logits = self.router.logits(h0)
        mask = torch.sigmoid(self._last_logits) >= self.tau
        return self.vla.action_head(self.routed_decode(h0, mask)).clamp(-1.0, 1.0), mask

    def last_gate_logits(self) -> torch.Tensor:
        """Gate logits (B, L) of the most recent `predict_chunk` call."""
        return self._last_logits

    def calibrate_shift(self, logits: torch.Tensor, target: float) -> float:
        """The global logit shift that makes the fraction of gates >= tau over `logits` (S, L) equal `target`."""
        threshold = math.log(self.tau / (1 - self.tau))  # g >= tau  <=>  logit >= threshold
        q = torch.quantile(logits.flatten().double(), 1.0 - target).item()
        return threshold - q
