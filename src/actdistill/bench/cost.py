"""Teacher vs student compute on real frames: decoder / policy FLOPs per action query and batch-1 latency."""

from __future__ import annotations

import statistics

import torch

from actdistill.bench.flops import policy_flops
from actdistill.bench.latency import interleaved_latency


def sample_frames(data, count: int = 40) -> list[dict]:
    """Batch-1 inputs from `count` frames spread evenly over a FrameDataset (all tasks appear)."""
    idx = torch.linspace(0, len(data) - 1, count).long()
    return [data.batch(i.view(1)) for i in idx]


def compare_cost(teacher, student, frames: list[dict], repeats: int = 30) -> dict:
    t = [policy_flops(teacher, f) for f in frames[:1]][0]  # the teacher's cost does not depend on the input
    s = [policy_flops(student, f) for f in frames]
    s_dec = statistics.mean(x["decoder_flops"] for x in s)
    s_pol = statistics.mean(x["policy_flops"] for x in s)
    lat = interleaved_latency({"teacher": teacher, "student": student}, frames, repeats=repeats)
    return {
        "teacher_decoder_gflops": t["decoder_flops"] / 1e9,
        "teacher_policy_gflops": t["policy_flops"] / 1e9,
        "student_decoder_gflops": s_dec / 1e9,
        "student_policy_gflops": s_pol / 1e9,
        "ideal_speedup": t["policy_flops"] / s_pol,
        "teacher_latency_ms": lat["teacher"],
        "student_latency_ms": lat["student"],
        "speedup": lat["teacher"] / lat["student"],
        "frames": len(frames),
    }
