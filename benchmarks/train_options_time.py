"""Training-step time of the teacher under the precision and checkpointing options, interleaved in one process.

    python benchmarks/train_options_time.py --data runs/default/collect/demos.hdf5 [--rounds 15] [--batch 64]

Four copies of the default teacher (same initial weights), each with its own AdamW, take turns on the same
batch: fp32, fp32 with activation checkpointing (train.activation_checkpointing), bf16 autocast (what
train.mixed_precision=bf16 does through Accelerate on one CPU process) and bf16 with checkpointing. Prints the
median seconds per step (forward, backward, optimizer step) of each and its ratio to fp32. Peak memory is
`actdistill plan`'s business (README "Sharded training").
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from pathlib import Path

import torch

from actdistill.config import TeacherConfig
from actdistill.data.dataset import FrameDataset
from actdistill.data.hdf5 import read_demos
from actdistill.models.vla import ReferenceVLA
from actdistill.sharding import set_activation_checkpointing
from actdistill.training import batch_indices

OPTIONS = {"fp32": (False, False), "fp32 + checkpointing": (False, True), "bf16": (True, False),
           "bf16 + checkpointing": (True, True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    cfg = TeacherConfig()
    data = FrameDataset(read_demos(args.data), cfg.model.chunk_size)
    batch = data.batch(batch_indices(len(data), 0, args.batch, 0))
    torch.manual_seed(0)
    base = ReferenceVLA(cfg.model)
    models, optims = {}, {}
    for name, (_, ckpt) in OPTIONS.items():
        models[name] = copy.deepcopy(base).train()
        set_activation_checkpointing(models[name], ckpt)
        optims[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4)
    times: dict[str, list[float]] = {n: [] for n in OPTIONS}
    names = list(OPTIONS)
    for r in range(args.warmup + args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
            bf16 = OPTIONS[name][0]
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            t0 = time.perf_counter()
            with ctx:
                loss, _ = models[name](batch)
            loss.backward()
            optims[name].step()
            optims[name].zero_grad(set_to_none=True)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["fp32"])
    print(f"teacher training step, batch {args.batch}, {args.rounds} interleaved rounds, {torch.get_num_threads()} threads")
    print(f"| option | median s/step | ratio to fp32 |\n|---|---|---|")
    for name in names:
        m = statistics.median(times[name])
        print(f"| {name} | {m:.3f} | {m / ref:.2f} |")


if __name__ == "__main__":
    main()
