"""Peak memory of one policy step: weights plus the largest amount of activation memory alive at once.

On a GPU the caching allocator keeps statistics (`torch.cuda.max_memory_allocated`). The CPU
allocator keeps none, so on CPU we follow every tensor that an ATen op allocates (a dispatch mode
sees each op's outputs; an output whose storage is shared with one of the op's inputs is a view or
an in-place result and allocates nothing) and free it when its storage dies. The running sum of
live bytes is exact for everything the policy allocates through PyTorch; memory the kernels take
outside PyTorch's allocator (oneDNN scratch space) is not included.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of every tensor an ATen op allocates while the mode is on (also for fake tensors: a
    storage is known by its StorageImpl, not by its address)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, size = storage._cdata, storage.nbytes()
            if size == 0 or key in inputs or key in self._tracked:
                continue
            self._tracked.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, size)
        return out

    def _free(self, key: int, size: int) -> None:
        self._tracked.discard(key)
        self.live -= size


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of parameters and buffers (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        seen[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
    return sum(seen.values())


@torch.no_grad()
def peak_memory(policy, batch: dict) -> dict[str, float]:
    """MiB of weights, of peak activations during `policy.predict(batch)`, and their sum."""
    device = next(policy.parameters()).device
    weights = weight_bytes(policy)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        policy.predict(batch)
        torch.cuda.synchronize(device)
        act = torch.cuda.max_memory_allocated(device) - base
    else:
        mode = LiveBytes()
        with mode:
            policy.predict(batch)
        act = mode.peak
    mib = 1024.0 ** 2
    return {"weights_mb": weights / mib, "activations_mb": act / mib, "peak_memory_mb": (weights + act) / mib}
