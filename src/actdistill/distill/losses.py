"""ActDistill losses as pure functions of tensors (docs/design.md "Losses").

Shapes: B batch, L layers, d_s semantic dim, C chunk length, A = 4 action dims. When several processes train,
the terms that depend on more than one row (the relational semantic term, the gate statistics) take the rows
of every process (actdistill/globalbatch.py), and padded means divide by the valid steps of all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from actdistill.config import STREAM_NORMS
from actdistill.distill.routing import straight_through
from actdistill.globalbatch import rows_of_all_processes
from actdistill.models.heads import action_loss


def layer_weights(num_layers: int, gamma: float = 2.0) -> torch.Tensor:
    """w_l = (l / (L-1))^gamma rescaled to mean 1 (layer 0 weighs 0: deep layers carry the action)."""
    if num_layers == 1:
        return torch.ones(1)
    w = (torch.arange(num_layers, dtype=torch.float32) / (num_layers - 1)) ** gamma
    return w / w.mean()


def cosine_matrix(z: torch.Tensor) -> torch.Tensor:
    """(B, d) -> (B, B) pairwise cosine similarities (the batch's relational structure)."""
    zn = F.normalize(z, dim=-1)
    return zn @ zn.T


def semantic_loss(z_s: torch.Tensor, z_t: torch.Tensor, w: torch.Tensor, eta: float = 0.5,
                  executed: torch.Tensor | None = None) -> torch.Tensor:
    """L_sem = sum_l w_l [ mean_b (1 - cos(z_l^S, z_l^T)) + eta * MSE(C_l^S, C_l^T) ].  z_*: (B, L, d_s).

    `executed` (B, L) bool (semantic_on="executed"): layer l's terms read only the rows that ran layer l (a
    skipped layer cannot change its row's features, so matching the teacher's features after it only pulls the
    other layers toward the teacher's depth profile); a layer that no row ran, or that one row ran (no
    relational structure), contributes what it can."""
    z_s, z_t = rows_of_all_processes(z_s), rows_of_all_processes(z_t)
    if executed is not None:
        executed = rows_of_all_processes(executed.to(z_s.dtype)).detach() > 0.5
    total = z_s.new_zeros(())
    for l in range(z_s.shape[1]):
        s_l, t_l = z_s[:, l], z_t[:, l]
        if executed is not None:
            rows = executed[:, l]
            if not bool(rows.any()):
                continue
            s_l, t_l = s_l[rows], t_l[rows]
        cos = 1.0 - F.cosine_similarity(s_l, t_l, dim=-1).mean()
        rel = F.mse_loss(cosine_matrix(s_l), cosine_matrix(t_l)) if s_l.shape[0] > 1 else s_l.new_zeros(())
        total = total + w[l] * (cos + eta * rel)
    return total


def action_stream_loss(a_s: torch.Tensor, a_gt: torch.Tensor, a_t: torch.Tensor, w: torch.Tensor,
                       pad: torch.Tensor | None = None) -> torch.Tensor:
    """Triple MSE: L_act = sum_l w_l [ MSE(a_l^S, a_gt) + MSE(a_l^S, a_l^T) + MSE(a_l^S, stopgrad(a_{l-1}^S)) ].

    a_s, a_t: (B, L, C, A); a_gt: (B, C, A); a_{-1}^S = 0.
    """
    total = a_s.new_zeros(())
    prev = torch.zeros_like(a_s[:, 0])
    for l in range(a_s.shape[1]):
        cur = a_s[:, l]
        total = total + w[l] * (action_loss(cur, a_gt, pad) + action_loss(cur, a_t[:, l], pad)
                                + action_loss(cur, prev.detach(), pad))
        prev = cur
    return total


def balance_loss(gates: torch.Tensor) -> torch.Tensor:
    """L_bal = mean_l (gbar_l - mean(gbar))^2 with gbar_l the batch mean of g_l.  gates: (B, L)."""
    gbar = gates.mean(0)
    return (gbar - gbar.mean()).pow(2).mean()


def budget_loss(gates: torch.Tensor, rho: float) -> torch.Tensor:
    """L_bud = (mean over batch and layers of g - rho)^2: the user's compute budget.

    Pass the straight-through masks (forward value 0/1, gradient of g) to hold the executed fraction itself
    to rho, or the soft gates g (budget_on="soft").
    """
    return (gates.mean() - rho).pow(2)


def polarization_loss(gates: torch.Tensor) -> torch.Tensor:
    """mean g (1 - g): zero at g in {0, 1}, largest at 0.5; pushes gates away from the threshold so the hard
    decisions do not flip under small input changes or a calibration shift."""
    return (gates * (1.0 - gates)).mean()


def gate_losses(gates: torch.Tensor, tau: float, rho: float, budget_on: str) -> dict[str, torch.Tensor]:
    """Balance, budget and polarization terms of the router. gates: soft g (B, L)."""
    executed = straight_through(gates, tau) if budget_on == "hard" else gates
    return {"bal": balance_loss(gates), "bud": budget_loss(executed, rho), "pol": polarization_loss(gates)}


def routed_gate_losses(gates: torch.Tensor, routed: list[int], tau: float, rho: float, budget_on: str,
                       gating: str) -> dict[str, torch.Tensor]:
    """`gate_losses` over the routed layers only (always-run layers take no part in balance or polarization).

    The budget holds the fraction of all layers executed (always-run ones count as executed); under quantile
    gating it is met exactly by construction and its term is zero. gates: (B, L), this process's rows."""
    gates = rows_of_all_processes(gates)
    n_layers = gates.shape[1]
    if gating == "threshold" and len(routed) == n_layers:
        return gate_losses(gates, tau, rho, budget_on)
    g = gates[:, routed]
    if gating == "quantile":
        bud = g.new_zeros(())
    else:
        executed = straight_through(g, tau) if budget_on == "hard" else g
        bud = budget_loss((executed.sum(1, keepdim=True) + n_layers - len(routed)) / n_layers, rho)
    return {"bal": balance_loss(g), "bud": bud, "pol": polarization_loss(g)}


def stream_weight(step: int, steps: int, decay: float) -> float:
    """The per-layer streams' weight at training step `step` of `steps` (DistillConfig.stream_decay): 1 - step /
    (decay * steps), floored at 0; 1 throughout when `decay` is 0."""
    if decay <= 0:
        return 1.0
    return max(0.0, 1.0 - step / (decay * steps))


INITIAL_FLOOR = 1e-4  # "initial": a stream smaller than this at the start is not rescaled


def normalise_streams(l_sem: torch.Tensor, l_act: torch.Tensor, how: str, n_layers: int,
                      initial: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Put the two distillation streams on a common scale.

    "none": as they are. "terms": each divided by its number of summands (L_sem: 2 per layer, cosine and
    relational; L_act: 3 per layer), i.e. a mean instead of a sum. "initial": each divided by its value for
    the student before training (`initial` = (L_sem0, L_act0)), so each starts at 1 and neither dominates
    the other by its units (the action stream was measured at about 75x the task loss); a stream that starts
    below INITIAL_FLOOR is left as it is rather than blown up."""
    if how == "none":
        return l_sem, l_act
    if how == "terms":
        return l_sem / (2 * n_layers), l_act / (3 * n_layers)
    if how == "initial":
        if initial is None:
            raise ValueError("Stream normalisation 'initial' needs the streams' values before training.")
        scale = torch.where(initial > INITIAL_FLOOR, initial, torch.ones_like(initial))
        return l_sem / scale[0], l_act / scale[1]
    raise ValueError(f"Unknown stream normalisation {how!r}; choose from {', '.join(STREAM_NORMS)}.")
