"""Run one distillation under torchrun; with a kill step, rank 1 dies abruptly (os._exit) at that loss call.

usage: python -m torch.distributed.run ... distill_with_a_dying_rank.py CONFIG TEACHER PROBE DATA OUT KILL_AT
(KILL_AT = -1: never). A test helper: the loss function is wrapped from outside, the package is not changed.
"""

import json
import os
import sys

import actdistill.distill.stage as stage
from actdistill.config import DistillConfig


def main() -> None:
    cfg_path, teacher, probe, data, out, kill_at = sys.argv[1:7]
    kill_at = int(kill_at)
    real = stage.distill_loss
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if int(os.environ.get("RANK", "0")) == 1 and calls["n"] == kill_at:
            os._exit(17)  # no cleanup, no checkpoint: as a killed process
        return real(*args, **kwargs)

    stage.distill_loss = dying
    cfg = DistillConfig.from_dict(json.loads(open(cfg_path).read()))
    stage.run_distill(cfg, teacher, probe, data, out, progress=False)


if __name__ == "__main__":
    main()
