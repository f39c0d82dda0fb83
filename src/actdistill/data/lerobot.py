"""Demonstrations in the LeRobotDataset v3 layout, read and written with pyarrow and PyAV.

    meta/info.json                         codebase_version "v3.0", fps, features, data_path, video_path, splits
    meta/stats.json                        per-feature min / max / mean / std / count
    meta/tasks.parquet                     task (the instruction) -> task_index
    meta/episodes/chunk-000/file-000.parquet   per episode: length, tasks, data and video file indices and spans
    data/chunk-000/file-000.parquet        per frame: observation.state, action, timestamp, frame_index,
                                           episode_index, index, task_index
    videos/<camera>/chunk-000/file-000.mp4 every episode's frames, one after the other

The `lerobot` package itself pins torch < 2.11 and cannot be installed beside this project, so the format is
handled here. `read_lerobot` returns the same `DemoSet` as the HDF5 reader, so every stage reads either.
The package's own header, placement seeds and environment arguments travel in info.json under "actdistill".
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import numpy as np

from actdistill.artifacts import ArtifactError, atomic_write_bytes, atomic_write_json, hash_file
from actdistill.data.demos import Demo, DemoSet, content_hash

INFO = "meta/info.json"
DATA_FILE = "data/chunk-000/file-000.parquet"
EPISODES_FILE = "meta/episodes/chunk-000/file-000.parquet"
TASKS_FILE = "meta/tasks.parquet"
STATE_KEY = "observation.state"
IMAGE_KEY = "observation.image"


def is_lerobot_dataset(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / INFO).is_file()


def _video_path(camera: str) -> str:
    return f"videos/{camera}/chunk-000/file-000.mp4"


def _encode(frames: np.ndarray, path: Path, fps: int) -> None:
    """(T, H, W, 3) uint8 -> H.264 (libx264, yuv444p, qp 0: the codec's loss is only the RGB <-> YUV rounding)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"qp": "0", "preset": "veryfast", "g": "1"}
        for img in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")))
        out.mux(stream.encode())
    tmp.replace(path)


def _decode(path: Path) -> np.ndarray:
    import av

    try:
        with av.open(str(path)) as f:
            return np.stack([frame.to_ndarray(format="rgb24") for frame in f.decode(video=0)])
    except (av.error.FFmpegError, ValueError) as err:
        raise ArtifactError(f"Video {path} cannot be decoded ({err}); it is corrupt or truncated.") from err


def write_lerobot(demos: DemoSet, root: Path, fps: int = 80, camera: str = IMAGE_KEY) -> Path:
    """Write `demos` as a LeRobotDataset v3 folder (one data file, one video file per camera)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
    (root / "meta/episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    tasks = sorted({d.instruction for d in demos.demos})
    task_index = {t: i for i, t in enumerate(tasks)}
    states = np.concatenate([d.states for d in demos.demos]).astype(np.float32)
    actions = np.concatenate([d.actions for d in demos.demos]).astype(np.float32)
    lengths = [len(d.actions) for d in demos.demos]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    frame_index = np.concatenate([np.arange(n) for n in lengths]).astype(np.int64)
    episode_index = np.repeat(np.arange(len(lengths)), lengths).astype(np.int64)
    table = pa.table({
        STATE_KEY: pa.array(list(states), type=pa.list_(pa.float32(), states.shape[1])),
        "action": pa.array(list(actions), type=pa.list_(pa.float32(), actions.shape[1])),
        "timestamp": pa.array((frame_index / fps).astype(np.float32)),
        "frame_index": pa.array(frame_index),
        "episode_index": pa.array(episode_index),
        "index": pa.array(np.arange(len(states), dtype=np.int64)),
        "task_index": pa.array(np.repeat([task_index[d.instruction] for d in demos.demos], lengths).astype(np.int64)),
    })
    pq.write_table(table, root / DATA_FILE)
    images = np.concatenate([d.images for d in demos.demos])
    _encode(images, root / _video_path(camera), fps)
    from_ts = starts / fps
    episodes = pa.table({
        "episode_index": pa.array(np.arange(len(lengths), dtype=np.int64)),
        "tasks": pa.array([[d.instruction] for d in demos.demos], type=pa.list_(pa.string())),
        "length": pa.array(np.asarray(lengths, dtype=np.int64)),
        "data/chunk_index": pa.array(np.zeros(len(lengths), dtype=np.int64)),
        "data/file_index": pa.array(np.zeros(len(lengths), dtype=np.int64)),
        "dataset_from_index": pa.array(starts),
        "dataset_to_index": pa.array(starts + np.asarray(lengths)),
        f"videos/{camera}/chunk_index": pa.array(np.zeros(len(lengths), dtype=np.int64)),
        f"videos/{camera}/file_index": pa.array(np.zeros(len(lengths), dtype=np.int64)),
        f"videos/{camera}/from_timestamp": pa.array(from_ts),
        f"videos/{camera}/to_timestamp": pa.array(from_ts + np.asarray(lengths) / fps),
    })
    pq.write_table(episodes, root / EPISODES_FILE)
    pq.write_table(pa.table({"task_index": pa.array(np.arange(len(tasks), dtype=np.int64))},
                            ).append_column("task", pa.array(tasks)), root / TASKS_FILE)
    h, w = images.shape[1:3]
    features = {
        camera: {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                 "info": {"video.height": h, "video.width": w, "video.codec": "h264", "video.pix_fmt": "yuv444p",
                          "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False}},
        STATE_KEY: {"dtype": "float32", "shape": [states.shape[1]], "names": None},
        "action": {"dtype": "float32", "shape": [actions.shape[1]], "names": None},
        **{k: {"dtype": t, "shape": [1], "names": None} for k, t in (("timestamp", "float32"), ("frame_index", "int64"),
                                                                     ("episode_index", "int64"), ("index", "int64"),
                                                                     ("task_index", "int64"))},
    }
    info = {"codebase_version": "v3.0", "robot_type": "sawyer", "total_episodes": len(lengths),
            "total_frames": int(len(states)), "total_tasks": len(tasks), "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": fps,
            "splits": {"train": f"0:{len(lengths)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": features,
            "actdistill": {"header": demos.header, "env_args": demos.env_args, "attrs": demos.attrs,
                           "episode_meta": [{"task": d.task, "placement_seed": int(d.placement_seed)} for d in demos.demos]}}
    stats = {STATE_KEY: _stats(states), "action": _stats(actions),
             camera: _stats(images.reshape(-1, 3).astype(np.float64) / 255.0)}
    atomic_write_json(root / "meta/stats.json", stats)
    atomic_write_bytes(root / INFO, (json.dumps(info, indent=2) + "\n").encode())  # last: marks the folder complete
    return root


def _stats(x: np.ndarray) -> dict:
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
            "count": [int(len(x))]}


def _folder_fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root)}:{hash_file(path)}".encode())
    return h.hexdigest()[:16]


def read_lerobot(root: Path, image_key: str | None = None, state_key: str = STATE_KEY) -> DemoSet:
    """A LeRobotDataset v3 folder as a `DemoSet`; one sentence for a missing file, feature or instruction."""
    import pyarrow.parquet as pq

    root = Path(root)
    if not (root / INFO).is_file():
        raise ArtifactError(f"{root} is not a LeRobot dataset: {INFO} is missing.")
    try:
        info = json.loads((root / INFO).read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{root / INFO} is not valid JSON ({err}).") from err
    features = info.get("features", {})
    cameras = [k for k, v in features.items() if v.get("dtype") in ("video", "image")]
    if image_key is None:
        if len(cameras) != 1:
            raise ArtifactError(f"{root} has {len(cameras)} cameras ({', '.join(cameras) or 'none'}); name the one to "
                                "use with image_key.")
        image_key = cameras[0]
    for key, what in ((image_key, "image"), (state_key, "state"), ("action", "action")):
        if key not in features:
            raise ArtifactError(f"{root} has no {what} feature {key!r}; its features are {', '.join(features)}.")
    if features[image_key]["dtype"] != "video":
        raise ArtifactError(f"{root}: the camera {image_key!r} is stored as images, not video; only video cameras are read.")
    try:
        data = pq.read_table(root / DATA_FILE).to_pydict() if (root / DATA_FILE).is_file() else None
        episodes = pq.read_table(root / EPISODES_FILE).to_pydict()
        tasks = pq.read_table(root / TASKS_FILE).to_pydict()
    except OSError as err:
        raise ArtifactError(f"{root}: a parquet file is missing or corrupt ({err}).") from err
    if data is None:
        raise ArtifactError(f"{root}: {DATA_FILE} is missing (only single-file datasets are read so far).")
    task_text = dict(zip(tasks["task_index"], tasks["task"]))
    frames = _decode(root / _video_path(image_key))
    states = np.asarray(data[state_key], dtype=np.float32)
    actions = np.asarray(data["action"], dtype=np.float32)
    if len(frames) != len(states):
        raise ArtifactError(f"{root}: the video of {image_key!r} has {len(frames)} frames but the data has {len(states)}.")
    meta = info.get("actdistill", {}).get("episode_meta")
    demos = []
    for e, (lo, hi) in enumerate(zip(episodes["dataset_from_index"], episodes["dataset_to_index"])):
        idx = data["task_index"][lo]
        if idx not in task_text or not task_text[idx]:
            raise ArtifactError(f"{root}: episode {e} has no instruction (task_index {idx} is not in {TASKS_FILE}).")
        m = meta[e] if meta else {"task": task_text[idx], "placement_seed": -1}
        demos.append(Demo(task=m["task"], instruction=task_text[idx], placement_seed=m["placement_seed"],
                          images=frames[lo:hi], states=states[lo:hi], actions=actions[lo:hi]))
    extra = info.get("actdistill", {})
    env_args = dict(extra.get("env_args", {"image_size": int(frames.shape[1])}))
    return DemoSet(demos=demos, header=extra.get("header", {}), env_args=env_args, fingerprint=_folder_fingerprint(root),
                   attrs=extra.get("attrs", {}), content_hash=content_hash(demos))
