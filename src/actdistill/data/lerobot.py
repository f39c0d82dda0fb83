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
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from actdistill.artifacts import ArtifactError, atomic_write_bytes, atomic_write_json, hash_file
from actdistill.data.demos import Demo, DemoSet, content_hash

INFO = "meta/info.json"
EPISODES_FILE = "meta/episodes/chunk-000/file-000.parquet"
TASKS_FILE = "meta/tasks.parquet"
STATE_KEY = "observation.state"
IMAGE_KEY = "observation.image"


def is_lerobot_dataset(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / INFO).is_file()


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


def frame_cache_dir() -> Path:
    """Where decoded videos are kept: $ACTDISTILL_CACHE, else ~/.cache/actdistill (derived data, safe to delete)."""
    return Path(os.environ.get("ACTDISTILL_CACHE", Path.home() / ".cache" / "actdistill")) / "frames"


def _decode(path: Path) -> np.ndarray:
    """The video's frames (T, H, W, 3) uint8, decoded once per video content and then read from the frame cache
    (decoding the default MT10 dataset took 86 s here against 2 s for its HDF5 file, and every stage reads it)."""
    cache = frame_cache_dir() / f"{hash_file(path)}.npy"
    if cache.is_file():
        try:
            return np.load(cache)
        except (OSError, ValueError) as err:
            raise ArtifactError(f"The decoded-frame cache {cache} is corrupt ({err}); delete it and run again.") from err
    frames = _decode_video(path)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, frames)
    tmp.replace(cache)
    return frames


def _decode_video(path: Path) -> np.ndarray:
    import av

    try:
        with av.open(str(path)) as f:
            return np.stack([frame.to_ndarray(format="rgb24") for frame in f.decode(video=0)])
    except (av.error.FFmpegError, ValueError) as err:
        raise ArtifactError(f"Video {path} cannot be decoded ({err}); it is corrupt or truncated.") from err


def write_lerobot(demos: DemoSet, root: Path, fps: int = 80, camera: str = IMAGE_KEY,
                  episodes_per_file: int | None = None) -> Path:
    """Write `demos` as a LeRobotDataset v3 folder: data and video files of `episodes_per_file` episodes each
    (default: all in one), in chunk 000."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    (root / "meta/episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    tasks = sorted({d.instruction for d in demos.demos})
    task_index = {t: i for i, t in enumerate(tasks)}
    lengths = [len(d.actions) for d in demos.demos]
    per = episodes_per_file or max(len(lengths), 1)
    ep_cols: dict[str, list] = {}
    offset = 0
    for f, first in enumerate(range(0, len(lengths), per)):
        group = list(range(first, min(first + per, len(lengths))))
        glen = [lengths[e] for e in group]
        states = np.concatenate([demos.demos[e].states for e in group]).astype(np.float32)
        actions = np.concatenate([demos.demos[e].actions for e in group]).astype(np.float32)
        starts = np.concatenate([[0], np.cumsum(glen)[:-1]]).astype(np.int64)
        frame_index = np.concatenate([np.arange(n) for n in glen]).astype(np.int64)
        table = pa.table({
            STATE_KEY: pa.array(list(states), type=pa.list_(pa.float32(), states.shape[1])),
            "action": pa.array(list(actions), type=pa.list_(pa.float32(), actions.shape[1])),
            "timestamp": pa.array((frame_index / fps).astype(np.float32)),
            "frame_index": pa.array(frame_index),
            "episode_index": pa.array(np.repeat(group, glen).astype(np.int64)),
            "index": pa.array(offset + np.arange(len(states), dtype=np.int64)),
            "task_index": pa.array(np.repeat([task_index[demos.demos[e].instruction] for e in group], glen).astype(np.int64)),
        })
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"data/chunk-000/file-{f:03d}.parquet")
        _encode(np.concatenate([demos.demos[e].images for e in group]), root / f"videos/{camera}/chunk-000/file-{f:03d}.mp4", fps)
        cols = {"episode_index": group, "tasks": [[demos.demos[e].instruction] for e in group], "length": glen,
                "data/chunk_index": [0] * len(group), "data/file_index": [f] * len(group),
                "dataset_from_index": (offset + starts).tolist(), "dataset_to_index": (offset + starts + np.asarray(glen)).tolist(),
                f"videos/{camera}/chunk_index": [0] * len(group), f"videos/{camera}/file_index": [f] * len(group),
                f"videos/{camera}/from_timestamp": (starts / fps).tolist(),
                f"videos/{camera}/to_timestamp": ((starts + np.asarray(glen)) / fps).tolist()}
        for k, v in cols.items():
            ep_cols.setdefault(k, []).extend(v)
        offset += len(states)
    pq.write_table(pa.table({k: pa.array(v, type=pa.list_(pa.string())) if k == "tasks" else pa.array(v)
                             for k, v in ep_cols.items()}), root / EPISODES_FILE)
    pq.write_table(pa.table({"task_index": pa.array(np.arange(len(tasks), dtype=np.int64))},
                            ).append_column("task", pa.array(tasks)), root / TASKS_FILE)
    states = np.concatenate([d.states for d in demos.demos]).astype(np.float32)
    actions = np.concatenate([d.actions for d in demos.demos]).astype(np.float32)
    images = np.concatenate([d.images for d in demos.demos])
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


def _folder_fingerprint(root: Path, keys: dict | None = None) -> str:
    """Every file's content, and the features read (two cameras of one dataset are two datasets)."""
    h = hashlib.sha256(json.dumps(keys or {}, sort_keys=True).encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root)}:{hash_file(path)}".encode())
    return h.hexdigest()[:16]


def _read_parquet(path: Path) -> dict:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pydict()
    except OSError as err:
        raise ArtifactError(f"{path} is missing or corrupt ({err}).") from err


def _episode_files(episodes: dict, prefix: str, e: int) -> tuple[int, int]:
    chunk, file = episodes.get(f"{prefix}/chunk_index"), episodes.get(f"{prefix}/file_index")
    return (int(chunk[e]) if chunk else 0, int(file[e]) if file else 0)


def _read_info(root: Path, image_key: str | None, state_key: str) -> tuple[dict, str, float]:
    """`meta/info.json` checked for the features read: (info, the camera read, fps)."""
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
                                "use (`actdistill lerobot-view --image-key`).")
        image_key = cameras[0]
    for key, what in ((image_key, "image"), (state_key, "state"), ("action", "action")):
        if key not in features:
            raise ArtifactError(f"{root} has no {what} feature {key!r}; its features are {', '.join(features)}.")
    if features[image_key]["dtype"] != "video":
        raise ArtifactError(f"{root}: the camera {image_key!r} is stored as images, not video; only video cameras are read.")
    fps = info.get("fps")
    video_fps = features[image_key].get("info", {}).get("video.fps", fps)
    if not fps or video_fps != fps:
        raise ArtifactError(f"{root}: the camera {image_key!r} runs at {video_fps} fps and the dataset at {fps}; they must match.")
    return info, image_key, fps


def read_lerobot(root: Path, image_key: str | None = None, state_key: str = STATE_KEY) -> DemoSet:
    """A LeRobotDataset v3 folder as a `DemoSet`; one sentence for a missing file, feature or instruction.

    Episodes may live in any number of data and video files (`meta/episodes/*/*.parquet` names each episode's
    data file and, per camera, its video file and time span); a video file is decoded once."""
    root = Path(root)
    info, image_key, fps = _read_info(root, image_key, state_key)
    data_tmpl = info.get("data_path", "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet")
    video_tmpl = info.get("video_path", "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
    episode_files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not episode_files:
        raise ArtifactError(f"{root}: no episode metadata under meta/episodes/.")
    episodes: dict = {}
    for f in episode_files:
        for k, v in _read_parquet(f).items():
            episodes.setdefault(k, []).extend(v)
    tasks = _read_parquet(root / TASKS_FILE)
    task_text = dict(zip(tasks["task_index"], tasks["task"]))
    data_cache: dict[tuple[int, int], dict] = {}
    video_cache: dict[tuple[int, int], np.ndarray] = {}
    meta = info.get("actdistill", {}).get("episode_meta")
    order = np.argsort(episodes["episode_index"], kind="stable")
    demos = []
    for e in (int(i) for i in order):
        ep = int(episodes["episode_index"][e])
        dkey = _episode_files(episodes, "data", e)
        if dkey not in data_cache:
            path = root / data_tmpl.format(chunk_index=dkey[0], file_index=dkey[1])
            if not path.is_file():
                raise ArtifactError(f"{root}: the data file {path.relative_to(root)} of episode {ep} is missing.")
            table = _read_parquet(path)
            for key in (state_key, "action", "episode_index", "task_index"):
                if key not in table:
                    raise ArtifactError(f"{path} has no column {key!r}.")
            data_cache[dkey] = table
        table = data_cache[dkey]
        rows = np.flatnonzero(np.asarray(table["episode_index"]) == ep)
        if len(rows) != int(episodes["length"][e]):
            raise ArtifactError(f"{root}: episode {ep} has {len(rows)} data rows but its metadata says {episodes['length'][e]}.")
        vkey = _episode_files(episodes, f"videos/{image_key}", e)
        if vkey not in video_cache:
            path = root / video_tmpl.format(video_key=image_key, chunk_index=vkey[0], file_index=vkey[1])
            if not path.is_file():
                raise ArtifactError(f"{root}: the video {path.relative_to(root)} of episode {ep} is missing.")
            video_cache[vkey] = _decode(path)
        frames = video_cache[vkey]
        t0 = episodes.get(f"videos/{image_key}/from_timestamp")
        first = int(round(float(t0[e]) * fps)) if t0 else int(rows[0])
        images = frames[first:first + len(rows)]
        if len(images) != len(rows):
            raise ArtifactError(f"{root}: the video of {image_key!r} holds {len(images)} frames of episode {ep}, which has "
                                f"{len(rows)} data rows; the video is shorter than its parquet rows.")
        idx = table["task_index"][rows[0]]
        if idx not in task_text or not task_text[idx]:
            raise ArtifactError(f"{root}: episode {ep} has no instruction (task_index {idx} is not in {TASKS_FILE}).")
        m = meta[ep] if meta else {"task": task_text[idx], "placement_seed": -1}
        demos.append(Demo(task=m["task"], instruction=task_text[idx], placement_seed=m["placement_seed"], images=images,
                          states=np.asarray([table[state_key][i] for i in rows], dtype=np.float32),
                          actions=np.asarray([table["action"][i] for i in rows], dtype=np.float32)))
    extra = info.get("actdistill", {})
    env_args = dict(extra.get("env_args", {"image_size": int(demos[0].images.shape[1])}))
    keys = {"image_key": image_key, "state_key": state_key}
    return DemoSet(demos=demos, header=extra.get("header", {}), env_args=env_args,
                   fingerprint=_folder_fingerprint(root, keys), attrs=extra.get("attrs", {}),
                   content_hash=content_hash(demos))


VIEW = "actdistill_view.json"


def write_view(source: Path, out: Path, image_key: str | None, state_key: str) -> Path:
    """A dataset view: a folder holding only which LeRobot dataset to read and with which image and state features.
    Every stage's `--data` takes it like a dataset; the source folder is not touched. Checked by reading it once."""
    source = Path(source).resolve()
    read_lerobot(source, image_key, state_key)  # one sentence now rather than at the first stage
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / VIEW, {"source": str(source), "image_key": image_key, "state_key": state_key})
    return out


def is_view(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / VIEW).is_file()


def read_view(path: Path) -> DemoSet:
    try:
        v = json.loads((Path(path) / VIEW).read_text())
        source, image_key, state_key = Path(v["source"]), v["image_key"], v["state_key"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ArtifactError(f"{Path(path) / VIEW} is not a dataset view ({err}); write it again with `actdistill lerobot-view`.") from err
    return read_lerobot(source, image_key, state_key)
