"""Latency of one policy step at batch 1, measured as a ratio: policies interleaved in one process.

Absolute times on a shared CPU are noisy; running the policies round-robin (rotating the order
every round) after a warm-up exposes them to the same noise, and medians discard outliers.
On a GPU each timed call is bracketed by a device synchronisation, so the time is the call's
whole latency (launches and kernels), not only the host's enqueueing.
"""

from __future__ import annotations

import statistics
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def interleaved_latency(policies: dict, batches: list[dict], warmup: int = 5, repeats: int = 30) -> dict[str, float]:
    """Median milliseconds of `predict` per policy; `batches` are cycled so routed policies see varied inputs.

    The batches must already be on the policies' device."""
    names = list(policies)
    device = next(policies[names[0]].parameters()).device
    for _ in range(warmup):
        for n in names:
            policies[n].predict(batches[0])
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        batch = batches[r % len(batches)]
        for n in order:
            _sync(device)
            t0 = time.perf_counter()
            policies[n].predict(batch)
            _sync(device)
            times[n].append((time.perf_counter() - t0) * 1000.0)
    return {n: statistics.median(v) for n, v in times.items()}
