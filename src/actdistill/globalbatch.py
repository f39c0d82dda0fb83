"""Losses over the global batch of a data-parallel step (docs/design.md "Scale-out").

Under DDP or FSDP every process holds `batch_size` rows of a global batch and the gradients are averaged over
the processes. A loss that is a mean over its own rows (and nothing else) would then train exactly like one
process with the global batch, but ours are not all of that kind: a padded mean divides by the number of
valid chunk steps, which differs between processes; the relational semantic term compares every pair of rows;
the balance and budget terms are functions of batch means; quantile gating ranks the logits of the batch.

While `global_batch(True)` is active (the training loop turns it on for every loss it computes when several
processes train), such statistics are taken over the rows of all processes: sums and counts are all-reduced
and row tensors all-gathered in rank order (which is the one-process order of the same global batch), through
the autograd-aware collectives of `torch.distributed.nn`. Every process then computes the same global loss,
and the backward pass of the collectives hands each process `world` times the gradient of its own rows, which
the data-parallel average turns into the one-process gradient. With one process nothing changes.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist

_ACTIVE = [False]


@contextlib.contextmanager
def global_batch(enabled: bool) -> Iterator[None]:
    """Take batch statistics over every process's rows inside the block (when `enabled`)."""
    before = _ACTIVE[0]
    _ACTIVE[0] = enabled and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    try:
        yield
    finally:
        _ACTIVE[0] = before


def active() -> bool:
    return _ACTIVE[0]


def sum_over_processes(x: torch.Tensor) -> torch.Tensor:
    """x summed over the processes (gradients flow to every process's x); x itself with one process."""
    if not active():
        return x
    from torch.distributed.nn.functional import all_reduce  # imported only when several processes train

    return all_reduce(x) if x.requires_grad else _no_grad_sum(x)


def _no_grad_sum(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def rows_of_all_processes(x: torch.Tensor) -> torch.Tensor:
    """The rows (dim 0) of every process, concatenated in rank order; x itself with one process."""
    if not active():
        return x
    if x.requires_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def own_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """This process's `rows` rows of a tensor built from `rows_of_all_processes`."""
    if not active():
        return x
    start = dist.get_rank() * rows
    return x[start:start + rows]
