"""Two gloo processes holding half a batch each, with their gradients averaged as DDP does, get the gradient one
process gets from the whole batch: padded means, the relational semantic term, the gate statistics and
quantile gating are taken over the global batch (actdistill/globalbatch.py)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from actdistill.distill.losses import layer_weights, routed_gate_losses, semantic_loss
from actdistill.distill.routing import global_quantile_gate
from actdistill.globalbatch import global_batch
from actdistill.models.heads import masked_mean

B, L, D, C = 8, 4, 6, 5


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=g)
    z_t = torch.randn(B, L, D, generator=g)
    target = torch.randn(B, C, generator=g)
    pad = torch.zeros(B, C, dtype=torch.bool)
    for i in range(B):  # rows end at different chunk steps: the processes hold different numbers of valid steps
        pad[i, 1 + i % C:] = True if i < 5 else False
    return x, z_t, target, pad


def _model():
    torch.manual_seed(1)
    return torch.nn.ModuleDict({"z": torch.nn.Linear(D, L * D), "a": torch.nn.Linear(D, C), "gate": torch.nn.Linear(D, L)})


def _loss(model, x, z_t, target, pad, gating):
    z_s = model["z"](x).view(-1, L, D)
    err = (model["a"](x) - target) ** 2
    logits = model["gate"](x)
    if gating == "quantile":
        _, _, g = global_quantile_gate(logits, 0.5)
    else:
        g = torch.sigmoid(logits)
    gl = routed_gate_losses(g, [0, 1, 2], 0.5, 0.3, "hard", gating)
    return masked_mean(err, pad) + semantic_loss(z_s, z_t, layer_weights(L)) + gl["bal"] + gl["bud"] + gl["pol"]


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _worker(rank: int, world: int, init: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        x, z_t, target, pad = _data()
        rows = slice(rank * B // world, (rank + 1) * B // world)
        for gating in ("threshold", "quantile"):
            for sync in (True, False):
                model = _model()
                with global_batch(sync):
                    loss = _loss(model, x[rows], z_t[rows], target[rows], pad[rows], gating)
                loss.backward()
                for p in model.parameters():  # what DDP and FSDP do with the gradients
                    dist.all_reduce(p.grad)
                    p.grad /= world
                out[(rank, gating, sync)] = (loss.item(), _grads(model))
    finally:
        dist.destroy_process_group()


def _one_process(gating: str) -> tuple[float, torch.Tensor]:
    model = _model()
    with global_batch(True):  # no process group: the switch changes nothing
        loss = _loss(model, *_data(), gating)
    loss.backward()
    return loss.item(), _grads(model)


def test_two_processes_get_the_one_process_gradient_of_the_global_batch(tmp_path):
    out = mp.Manager().dict()
    mp.start_processes(_worker, args=(2, f"file://{tmp_path}/init", out), nprocs=2, start_method="spawn")
    for gating in ("threshold", "quantile"):
        loss1, grad1 = _one_process(gating)
        for rank in (0, 1):
            loss2, grad2 = out[(rank, gating, True)]
            assert abs(loss2 - loss1) < 1e-6 * max(1.0, abs(loss1)), (gating, loss1, loss2)
            assert (grad2 - grad1).abs().max() < 1e-6 * grad1.abs().max(), (gating, (grad2 - grad1).abs().max())
        # control: each process's own batch statistics (what DDP alone gives) are far from the one-process gradient
        _, grad_local = out[(0, gating, False)]
        assert (grad_local - grad1).abs().max() > 1e-2 * grad1.abs().max(), gating
