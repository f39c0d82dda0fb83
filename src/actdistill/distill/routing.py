"""The dynamic router and the self-derived routed student (docs/design.md "Student and router").

Layer update (train = deploy, a deliberate improvement on the paper's public code):
    h_l = h_{l-1} + m_l * (f_l(h_{l-1}) - h_{l-1}),   m_l = 1[g_l >= tau] forward, dg_l backward.
At inference a layer with m_l = 0 is not computed at all; in a batch each layer runs only on the
rows that selected it (gather, run, scatter back), so rows stay independent.

Two training gates (docs/design.md "Budget calibration"): "threshold" (m = 1[g >= tau], the budget held by a
loss and calibrated after training) and "quantile" (exactly round(rho_routed * B * L_routed) gates of a batch
pass, those with the highest logits; a running estimate of that logit threshold, kept like BatchNorm's running
statistics, is the deployed threshold, so training and deployment agree by construction). Layers named in
`always_run` (hybrid depth) execute for every input and take no part in routing.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from actdistill import globalbatch
from actdistill.config import GATINGS, ROUTER_INPUTS, ModelConfig
from actdistill.constants import ACTION, ROUTER_VIEW
from actdistill.models.contract import check_spans, check_vla
from actdistill.models.policy import PolicyMixin
from actdistill.models.vla import ReferenceVLA
from actdistill.probe.graph import LayerProbes


def straight_through(g: torch.Tensor, tau: float) -> torch.Tensor:
    """Hard 0/1 gate in the forward pass, the gradient of g in the backward pass."""
    hard = (g >= tau).to(g.dtype)
    return hard + g - g.detach()


def quantile_gate(logits: torch.Tensor, keep: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `round(keep * logits.numel())` highest logits of a batch pass.

    logits: (B, L_routed). Returns (hard mask (B, L_routed) with exactly that many ones, the batch threshold
    (midway between the last passing and the first failing logit), the surrogate g = sigmoid(logit - threshold)
    whose gradient the straight-through mask carries).
    """
    flat = logits.detach().flatten()
    n = flat.numel()
    k = int(round(keep * n))
    order = torch.argsort(flat, descending=True, stable=True)
    hard = torch.zeros(n, dtype=logits.dtype, device=logits.device)
    hard[order[:k]] = 1.0
    ranked = flat[order]
    if k == 0:
        thr = ranked[0] + 1.0
    elif k == n:
        thr = ranked[-1] - 1.0
    else:
        thr = (ranked[k - 1] + ranked[k]) / 2
    g = torch.sigmoid(logits - thr)
    return hard.view_as(logits), thr, g


def global_quantile_gate(logits: torch.Tensor, keep: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`quantile_gate` over the global batch while several processes train (globalbatch.py): the logits of every
    process are ranked together and this process's rows of the mask are returned, so the share passes in the
    global batch, as with one process."""
    if not globalbatch.active():
        return quantile_gate(logits, keep)
    hard, thr, _ = quantile_gate(globalbatch.rows_of_all_processes(logits.detach()), keep)
    return globalbatch.own_rows(hard, logits.shape[0]), thr, torch.sigmoid(logits - thr)


class Router(nn.Module):
    """Per-input layer gates from the embeddings before layer 0.

    Vision and language tokens (spans from the model config) are each projected and layer-normalised,
    each pooled by mean and by max; the summaries are concatenated; one linear unit per layer
    gives g_l = sigmoid(. + gate_bias_l). `gate_bias` is the post-training budget calibration.
    `inputs` "vision" reads the vision tokens only, so no phrasing of the instruction can move a gate.
    """

    def __init__(self, hidden_size: int, num_layers: int, spans: dict[str, tuple[int, int]], router_dim: int = 64,
                 init_bias: float = 2.0, inputs: str = "vision+language"):
        super().__init__()
        if inputs not in ROUTER_INPUTS:
            raise ValueError(f"Router inputs must be one of {', '.join(ROUTER_INPUTS)}, got {inputs!r}.")
        self.spans = {k: tuple(v) for k, v in spans.items()}
        self.inputs = inputs
        self.proj_vision = nn.Linear(hidden_size, router_dim)
        self.norm_vision = nn.LayerNorm(router_dim)
        if inputs == "vision+language":
            self.proj_lang = nn.Linear(hidden_size, router_dim)
            self.norm_lang = nn.LayerNorm(router_dim)
        n_summaries = 2 * len(inputs.split("+"))  # mean and max of each input
        self.gate = nn.Linear(n_summaries * router_dim, num_layers)
        nn.init.normal_(self.gate.weight, std=0.01)
        nn.init.constant_(self.gate.bias, init_bias)  # start with every layer on: the student begins as the teacher
        self.register_buffer("gate_bias", torch.zeros(num_layers))

    def logits(self, h0: torch.Tensor) -> torch.Tensor:
        """h0 (B, N, D) -> gate logits (B, L), calibration bias included."""
        check_spans(self.spans, h0.shape[1])
        v0, v1 = self.spans["vision"]
        v = self.norm_vision(self.proj_vision(h0[:, v0:v1]))  # (B, Nv, r)
        parts = [v.mean(1), v.amax(1)]
        if self.inputs == "vision+language":
            l0, l1 = self.spans["language"]
            t = self.norm_lang(self.proj_lang(h0[:, l0:l1]))  # (B, Nl, r)
            parts += [t.mean(1), t.amax(1)]
        return self.gate(torch.cat(parts, dim=-1)) + self.gate_bias

    def forward(self, h0: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(h0))  # (B, L) in (0, 1)


class RoutedStudent(PolicyMixin, nn.Module):
    """Teacher copy (weights included) + router; + the layer probes while training (removed by export)."""

    def __init__(self, model: ModelConfig | nn.Module, router_dim: int = 64, tau: float = 0.5, init_bias: float = 2.0,
                 probes: LayerProbes | None = None, gating: str = "threshold", rho: float | None = None,
                 always_run: tuple[int, ...] = (), momentum: float = 0.1, router_inputs: str = "vision+language"):
        """`model`: the reference VLA's config (a fresh ReferenceVLA is built) or any VLA module that meets the
        model contract (models/contract.py), which the student then owns.

        Training options (folded into `router.gate_bias` by `finish_training`, so a deployed student is the
        same plain module whatever it was trained with): `gating` "threshold" or "quantile" (which needs the
        budget `rho`, the fraction of all layers executed, and the running threshold's `momentum`), and
        `always_run`, layers executed for every input. `router_inputs`: what the router reads (Router)."""
        super().__init__()
        if isinstance(model, ModelConfig):
            model = ReferenceVLA(model)
        check_vla(model)
        self.vla = model
        self.router = Router(model.hidden_size, model.num_layers, model.spans, router_dim, init_bias, router_inputs)
        self.probes = probes
        self.tau = tau
        self.image_size = model.image_size
        self.n_action_steps = model.n_action_steps
        L = model.num_layers
        bad = [l for l in always_run if not 0 <= l < L]
        if bad or len(set(always_run)) != len(always_run):
            raise ValueError(f"always_run must name distinct layers in [0, {L}), got {list(always_run)}.")
        if gating not in GATINGS:
            raise ValueError(f"gating must be one of {', '.join(GATINGS)}, got {gating!r}.")
        self.gating = gating
        self.always_run = tuple(sorted(always_run))
        self.routed_layers = tuple(l for l in range(L) if l not in self.always_run)
        if gating == "quantile":
            if rho is None:
                raise ValueError("Quantile gating needs the budget rho.")
            # the share of the routed layers that must run so that all layers run at the fraction rho
            self.routed_keep = min(1.0, max(0.0, (rho * L - len(self.always_run)) / max(len(self.routed_layers), 1)))
            self.momentum = momentum
            self.register_buffer("running_threshold", torch.zeros(()))
            self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))
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

    def training_gates(self, h0: torch.Tensor, soft: bool = False,
                       logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(g, m): the gates (B, L) the gate losses read and the masks (B, L) the layers are multiplied by.

        Always-run layers get g = m = 1. Quantile gating passes exactly its share of the routed gates of this
        batch (of the global batch when several processes train) and, in training mode, moves the running
        threshold towards this batch's threshold. `logits`: the router's logits of `h0`, when already computed."""
        logits = self.router.logits(h0) if logits is None else logits  # (B, L)
        if self.gating == "threshold" and not self.always_run:  # the plain gate of every layer
            g = torch.sigmoid(logits)
            return g, (g if soft else straight_through(g, self.tau))
        routed = list(self.routed_layers)
        g = torch.ones_like(logits)
        if self.gating == "quantile":
            hard, thr, g_r = global_quantile_gate(logits[:, routed], self.routed_keep)
            if self.training:
                with torch.no_grad():
                    first = self.threshold_updates == 0
                    mom = torch.where(first, torch.ones_like(thr), torch.full_like(thr, self.momentum))
                    self.running_threshold.copy_((1 - mom) * self.running_threshold + mom * thr)
                    self.threshold_updates += 1
            m_r = g_r if soft else hard + g_r - g_r.detach()
        else:
            g_r = torch.sigmoid(logits[:, routed])
            m_r = g_r if soft else straight_through(g_r, self.tau)
        g = g.index_copy(1, torch.tensor(routed, device=g.device), g_r)
        m = torch.ones_like(logits).index_copy(1, torch.tensor(routed, device=g.device), m_r)
        return g, m

    @torch.no_grad()
    def set_threshold_from(self, logits: torch.Tensor) -> float:
        """Quantile gating: set the deployed threshold from gate logits (S, L) of the final router on a sample of
        inputs, so that exactly the budget's share of their routed gates pass; returns it."""
        _, thr, _ = quantile_gate(logits[:, list(self.routed_layers)], self.routed_keep)
        self.running_threshold.copy_(thr)
        return float(thr)

    def finish_training(self) -> RoutedStudent:
        """Fold the training gate into `router.gate_bias`: afterwards m = 1[sigmoid(logit) >= tau] gives the masks
        training converged to (quantile: logit >= running threshold; always-run layers: on for every input)."""
        with torch.no_grad():
            if self.gating == "quantile":
                self.router.gate_bias += math.log(self.tau / (1 - self.tau)) - float(self.running_threshold)
                delattr(self, "running_threshold")
                delattr(self, "threshold_updates")
            for l in self.always_run:
                self.router.gate_bias[l] = 1e4  # sigmoid saturates: the gate is on for every input
        self.gating, self.routed_layers, self.always_run = "threshold", tuple(range(self.num_layers)), ()
        return self

    def forward_train(self, batch: dict, soft: bool = False, masks: torch.Tensor | None = None) -> dict:
        """Dense pass with gated residuals (every layer computed, gated to an exact skip when m_l = 0).

        `masks` (B, L) replaces the router's masks (the router still runs and its gates are returned). A batch
        with a ROUTER_VIEW (a perturbed copy of its observations) also returns the router's logits of that view
        beside those of the batch ("view_logits", "logits"): the router-consistency term reads them."""
        bb = self.vla.backbone
        h = self.vla.embed(batch)  # (B, N, D)
        logits = self.router.logits(h)  # (B, L)
        g, own = self.training_gates(h, soft, logits)  # (B, L) each
        masks = own if masks is None else masks.to(own.dtype)
        ctx = bb.context(h)
        hidden = []
        for l in range(self.num_layers):
            m = masks[:, l]
            f = bb.layer(l, h, ctx)
            h = h + m[:, None, None] * (f - h)
            hidden.append(h)
        final = bb.norm(h)
        out = {"final": final, "gates": g, "masks": masks, "hidden": hidden, "routed": list(self.routed_layers),
               "logits": logits}
        if ROUTER_VIEW in batch:  # inside the forward: a DDP/FSDP wrapper sees every parameter this reads
            out["view_logits"] = self.router.logits(self.vla.embed({**batch, **batch[ROUTER_VIEW]}))
        if getattr(self.vla, "head_family", None) == "regression":  # deterministic and cheap; others sample or arg-max
            out["action"] = self.vla.action_head(final)
        if self.probes is not None:
            out["semantic"], out["probe_action"] = self.probes(hidden)
        if ACTION in batch:  # the head's own loss inside the forward: under FSDP no parameter is read outside it
            out["task_loss"] = self.vla.task_loss(final, batch)
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

    @property
    def gate_threshold(self) -> float:
        """The logit at which a gate passes: sigmoid(logit) >= tau  <=>  logit >= log(tau / (1 - tau))."""
        return math.log(self.tau / (1 - self.tau))

    @torch.no_grad()
    def gate_logits(self, observation: dict) -> torch.Tensor:
        """Gate logits (B, L) the router gives an observation, without acting (the action queue is untouched)."""
        return self.router.logits(self.vla.embed(self.prepare_observation(observation)))

    def last_gate_logits(self) -> torch.Tensor:
        """Gate logits (B, L) of the most recent `predict_chunk` call."""
        return self._last_logits

    def calibrate_shift(self, logits: torch.Tensor, target: float) -> float:
        """The global logit shift that makes the fraction of gates >= tau over `logits` (S, L) equal `target`."""
        q = torch.quantile(logits.flatten().double(), 1.0 - target).item()
        return self.gate_threshold - q
