"""Per-rank peak memory of sharded distillation steps of a reference VLA, against `actdistill plan`'s columns.

usage: python -m torch.distributed.run --nproc-per-node N fsdp_step_memory.py (tiny|default) BATCH
Rank 0 prints one JSON line: the measured peak of every rank and the plan's FSDP and DDP totals (MiB)."""
import gc
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from actdistill.bench.memory import LiveBytes
from actdistill.bench.plan import vla_batch, dry_run, vla_stage, plan_memory
from actdistill.config import ModelConfig, ProbeConfig
from actdistill.distill.routing import RoutedStudent
from actdistill.models.vla import ReferenceVLA
from actdistill.probe.graph import LayerProbes
from actdistill.sharding import shard_model
torch.set_num_threads(1)
dist.init_process_group("gloo")
r, n = dist.get_rank(), dist.get_world_size()
which = sys.argv[1]
cfg = ModelConfig() if which == "default" else ModelConfig(image_size=32, hidden_size=32, num_layers=4, num_heads=2, num_kv_heads=1, intermediate_size=64, patch_size=8, num_lang_tokens=2, chunk_size=4)
B = int(sys.argv[2])
p = ProbeConfig()
torch.manual_seed(0)
t = ReferenceVLA(cfg)
whole = RoutedStudent(t, probes=LayerProbes(t.num_layers, t.hidden_size, t.chunk_size, p.semantic_dim, p.graph_dim, p.affinity_dim, p.k, p.heads, action_dim=cfg.action_dim))
whole.train()
data = vla_batch(cfg, B)
mode = LiveBytes()
with mode:  # everything the sharded model and its step allocate on this rank
    m = shard_model(whole, torch.device("cpu"), "no")
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    for _ in range(2):  # two steps as the training loop takes them: the second runs with the optimizer state alive
        out = m(data)
        loss = out["task_loss"] + out["semantic"].pow(2).mean() + out["probe_action"].pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
peak = mode.peak
res = [None] * n
dist.all_gather_object(res, peak)
if r == 0:
    run = dry_run(vla_stage(cfg, "distill", B))
    plan = plan_memory(run, n)["FSDP"]["total"] * 1024
    print(json.dumps({"model": which, "batch": B, "measured_MiB_per_rank": [x / 2**20 for x in res], "plan_FSDP_MiB": plan,
                      "plan_DDP_MiB": plan_memory(run, n)["DDP"]["total"] * 1024}))
# release the sharded model's communication state while the interpreter is whole, wait for every rank, then
# destroy the group (a gloo work object finalised at interpreter exit aborted a rank: "terminate called without
# an active exception")
del m, opt, out, loss
gc.collect()
dist.barrier()
dist.destroy_process_group()
