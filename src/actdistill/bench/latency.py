"""Latency of one policy step at batch 1, measured as a ratio: policies interleaved in one process.

Absolute times on a shared CPU are noisy; running the policies round-robin (rotating the order
every round) after a warm-up exposes them to the same noise, and medians discard outliers.
"""

from __future__ import annotations

import statistics
import time

import torch


@torch.no_grad()
def interleaved_latency(policies: dict, batches: list[dict], warmup: int = 5, repeats: int = 30) -> dict[str, float]:
    """Median milliseconds of `predict` per policy; `batches` are cycled so routed policies see varied inputs."""
    names = list(policies)
    for _ in range(warmup):
        for n in names:
            policies[n].predict(batches[0])
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        batch = batches[r % len(batches)]
        for n in order:
            t0 = time.perf_counter()
            policies[n].predict(batch)
            times[n].append((time.perf_counter() - t0) * 1000.0)
    return {n: statistics.median(v) for n, v in times.items()}
