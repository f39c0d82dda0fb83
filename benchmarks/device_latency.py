"""Teacher vs exported student latency on one device (CPU or CUDA GPU), interleaved in one process, medians.

    python benchmarks/device_latency.py --run runs/default --export-frames frames.safetensors   # once, here
    python benchmarks/device_latency.py --teacher T --student S --frames frames.safetensors --device cuda --out r.json

The frames file holds real training frames (image, state, instruction embedding), so the device needs
neither the simulator nor the language encoder. Batch 1 is the deployment case; larger batches show
the cost of per-row routing (gather / run / scatter per layer).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from actdistill.artifacts import atomic_save_tensors, load_tensors  # noqa: E402
from actdistill.bench.latency import interleaved_latency  # noqa: E402
from actdistill.constants import OBS_IMAGE, OBS_LANG, OBS_STATE  # noqa: E402

KEYS = (OBS_IMAGE, OBS_STATE, OBS_LANG)


def export_frames(run: Path, out: Path, count: int) -> None:
    from actdistill.bench.cost import sample_frames
    from actdistill.data.dataset import FrameDataset
    from actdistill.data.hdf5 import read_demos
    from actdistill.teacher import load_teacher

    teacher, info = load_teacher(run / "teacher")
    data = FrameDataset(read_demos(run / "collect" / "demos.hdf5"), teacher.config.chunk_size, tuple(info["tasks"]))
    frames = sample_frames(data, count)
    atomic_save_tensors(out, {k: torch.cat([f[k] for f in frames]) for k in KEYS})
    print(f"wrote {count} frames to {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path)
    p.add_argument("--export-frames", type=Path)
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--teacher", type=Path)
    p.add_argument("--student", type=Path)
    p.add_argument("--frames", type=Path)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if a.export_frames:
        export_frames(a.run, a.export_frames, a.count)
        return
    from actdistill.export import load_student
    from actdistill.teacher import load_teacher

    device = torch.device(a.device)
    teacher = load_teacher(a.teacher)[0].to(device).eval()
    student = load_student(a.student).to(device).eval()
    frames = {k: v.to(device) for k, v in load_tensors(a.frames, "the frames file").items()}
    n = frames[OBS_IMAGE].shape[0]
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "frames": n, "rows": []}
    for bs in a.batch_sizes:
        batches = [{k: v[i:i + bs] for k, v in frames.items()} for i in range(0, n - bs + 1, max(bs, 1))]
        with torch.no_grad():
            executed = torch.cat([student.layer_mask(student.vla.embed(b)).float() for b in batches]).mean().item()
        lat = interleaved_latency({"teacher": teacher, "student": student}, batches, warmup=20, repeats=a.repeats)
        row = {"batch": bs, "teacher_ms": round(lat["teacher"], 4), "student_ms": round(lat["student"], 4),
               "speedup": round(lat["teacher"] / lat["student"], 3), "layers_executed_frac": round(executed, 4)}
        result["rows"].append(row)
        print(json.dumps(row))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
