"""`actdistill run`: collect -> train-teacher -> evaluate on the built-in MT10 setting.

A stage whose output folder already holds a finished artifact made from the
same config and inputs is reused (its header says so), so a rerun after a
crash or a config change redoes only what changed.
"""

from __future__ import annotations

import time
from pathlib import Path

from actdistill.artifacts import atomic_write_json, hash_json, read_json
from actdistill.config import RunConfig
from actdistill.constants import CONFIG_FILE, DATASET_FILE, HEADER_FILE, RESULTS_FILE


def _finished(folder: Path, stage: str, config: dict, inputs: dict) -> dict | None:
    """The header of a finished artifact made by `stage` from this config and these inputs, else None."""
    path = folder / HEADER_FILE
    if not path.is_file():
        return None
    header = read_json(path, f"the {stage} header")
    if header.get("stage") == stage and header.get("config_hash") == hash_json(config) and header.get("inputs") == inputs:
        return header
    return None


def run_pipeline(cfg: RunConfig, progress: bool = True) -> dict:
    from actdistill.collect import collect
    from actdistill.data.hdf5 import read_demos
    from actdistill.evaluate import PolicySpec, evaluate
    from actdistill.teacher import train_teacher

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG_FILE, cfg.to_dict())
    stages: list[dict] = []
    t_start = time.time()

    # 1. collect
    col_dir = out / "collect"
    header = _finished(col_dir, "collect", cfg.collect.to_dict(), {})
    if header is None:
        summary = collect(cfg.collect, col_dir, progress=progress)
        status = "ran"
    else:
        summary, status = header["summary"], "reused"
    stages.append({"stage": "collect", "status": status, "seconds": summary["seconds"], "output": str(col_dir / DATASET_FILE),
                   "note": f"{summary['demos']} demos, {summary['frames']} frames"})
    demos = read_demos(col_dir / DATASET_FILE)

    # 2. train-teacher
    teacher_dir = out / "teacher"
    header = _finished(teacher_dir, "train-teacher", cfg.teacher.to_dict(), {"dataset": demos.fingerprint})
    if header is None:
        summary = train_teacher(cfg.teacher, col_dir / DATASET_FILE, teacher_dir, progress=progress)
        status = "ran"
    else:
        summary, status = header["summary"], "reused"
    stages.append({"stage": "train-teacher", "status": status, "seconds": summary["seconds"], "output": summary["weights"],
                   "note": f"{summary['parameters'] / 1e6:.2f}M params, {summary['steps']} steps, {summary['passes']} passes, loss {summary['final_loss']}"})

    # 3. evaluate
    eval_dir = out / "eval-teacher"
    t0 = time.time()
    result = evaluate(PolicySpec(str(teacher_dir)), cfg.eval, cfg.collect.sim, eval_dir, name="teacher",
                      exclude_seeds=demos.attrs.get("placement_seeds"), progress=progress)
    stages.append({"stage": "evaluate teacher", "status": "ran", "seconds": round(time.time() - t0, 1),
                   "output": str(eval_dir / RESULTS_FILE), "note": f"success {result['success_mean']:.3f}"})

    rows = [result]
    results = {"benchmark": "metaworld-MT10", "config": cfg.to_dict(), "rows": rows,
               "stage_seconds": {s["stage"]: s["seconds"] for s in stages}}
    atomic_write_json(out / "mt10.json", results)
    total = round(time.time() - t_start, 1)
    return {"stages": stages, "rows": rows, "results": str(out / "mt10.json"), "wall_seconds": total}
