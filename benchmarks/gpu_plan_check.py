"""GPU check of `actdistill plan` (for a session with a GPU; about a minute on one H100/H200-class device).

For each case, one real training step of the stage runs on the GPU and `torch.cuda.max_memory_allocated` (weights
included) is compared with the plan's single-device total from the fake-tensor dry run. Prints one JSON line per
case and exits 1 if any case is off by more than 15%.

    python benchmarks/gpu_plan_check.py            # a ~1.2B-parameter Llama-style decoder, 276 tokens, batch 4
"""

from __future__ import annotations

import json
import sys

import torch

from actdistill.bench.plan import dry_run, plan_memory, vla_stage
from actdistill.config import ModelConfig

CFG = ModelConfig(image_size=256, patch_size=16, num_lang_tokens=18, hidden_size=2048, num_layers=22, num_heads=16,
                  num_kv_heads=16, intermediate_size=5632)


def measured_peak(build) -> float:
    """Bytes: peak allocated during one forward, backward and AdamW step on the GPU, weights included."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.device("cuda"):
        model, loss_fn, params = build()
    opt = torch.optim.AdamW(params, lr=1e-4)
    loss_fn(model).backward()
    opt.step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del model, opt, params
    return peak


def main() -> int:
    if not torch.cuda.is_available():
        print("no GPU: this check needs one", file=sys.stderr)
        return 2
    worst = 0.0
    for stage, ac, mp in (("distill", False, "no"), ("distill", True, "no"), ("distill", True, "bf16"),
                          ("train-teacher", False, "no")):
        planned = plan_memory(dry_run(vla_stage(CFG, stage, 4, activation_checkpointing=ac, mixed_precision=mp)), 1, mp)
        planned_gib = planned["DDP"]["total"]
        peak_gib = measured_peak(vla_stage(CFG, stage, 4, activation_checkpointing=ac, mixed_precision=mp,
                                           device_type="cuda")) / 1024 ** 3
        err = (planned_gib - peak_gib) / peak_gib
        worst = max(worst, abs(err))
        print(json.dumps({"stage": stage, "activation_checkpointing": ac, "mixed_precision": mp,
                          "planned_gib": round(planned_gib, 3), "measured_gib": round(peak_gib, 3), "error": round(err, 4),
                          "device": torch.cuda.get_device_name()}), flush=True)
    return 0 if worst <= 0.15 else 1


if __name__ == "__main__":
    sys.exit(main())
