"""Demonstrations on disk in the robomimic / LIBERO HDF5 layout.

    data/                      attrs: header (JSON), env_args (JSON), total
      demo_<i>/                attrs: num_samples, instruction, task, placement_seed
        obs/image              (T, H, W, 3) uint8
        obs/state              (T, 7) float32   hand xyz, gripper opening, goal xyz
        actions                (T, 4) float32

The same reader loads real robomimic / LIBERO files whose image and state
keys are named in `read_demos(image_key=..., state_key=...)`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from actdistill.artifacts import ArtifactError, hash_file, write_failed
from actdistill.data.demos import Demo, DemoSet, hash_demo_into, content_hash
from actdistill.data.lerobot import is_lerobot_dataset, is_view, read_lerobot, read_view

__all__ = ["Demo", "DemoSet", "DemoWriter", "content_hash", "read_demos"]


class DemoWriter:
    """Append demos to a temporary file; `close()` renames it into place (a killed run leaves no valid-looking file)."""

    def __init__(self, path: Path, header: dict, env_args: dict):
        self.path = Path(path)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._n = 0
        self._total = 0
        self._hash = hashlib.sha256()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = h5py.File(self._tmp, "w")
            self._data = self._f.create_group("data")
            self._data.attrs["header"] = json.dumps(header)
            self._data.attrs["env_args"] = json.dumps(env_args)
        except OSError as err:
            raise write_failed(self.path, err) from err

    def add(self, demo: Demo) -> None:
        try:
            self._add(demo)
        except OSError as err:
            raise write_failed(self.path, err) from err

    def _add(self, demo: Demo) -> None:
        g = self._data.create_group(f"demo_{self._n}")
        g.attrs.update(num_samples=len(demo.actions), instruction=demo.instruction, task=demo.task,
                       placement_seed=int(demo.placement_seed))
        g.create_dataset("obs/image", data=demo.images, compression="lzf", chunks=(1, *demo.images.shape[1:]))
        g.create_dataset("obs/state", data=demo.states.astype(np.float32))
        g.create_dataset("actions", data=demo.actions.astype(np.float32))
        self._n += 1
        self._total += len(demo.actions)
        hash_demo_into(self._hash, demo)

    @property
    def content_hash(self) -> str:
        """`content_hash` of the demos added so far."""
        return self._hash.hexdigest()[:16]

    def close(self, extra_attrs: dict | None = None) -> None:
        try:
            self._data.attrs["total"] = self._total
            self._data.attrs["content_hash"] = self.content_hash
            for k, v in (extra_attrs or {}).items():
                self._data.attrs[k] = json.dumps(v)
            self._f.close()
            os.replace(self._tmp, self.path)
        except OSError as err:
            self.abort()
            raise write_failed(self.path, err) from err

    def abort(self) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)


def read_demos(path: Path, image_key: str = "obs/image", state_key: str = "obs/state") -> DemoSet:
    """Read a whole demo file, or a LeRobotDataset v3 folder; stop with one sentence on a missing, corrupt or
    incomplete one. (For a LeRobot folder the keys are its feature names; the defaults pick its one camera and
    `observation.state`.)"""
    path = Path(path)
    if is_view(path):
        return read_view(path)
    if is_lerobot_dataset(path):
        return read_lerobot(path, None if image_key == "obs/image" else image_key,
                            "observation.state" if state_key == "obs/state" else state_key)
    if not path.is_file():
        raise ArtifactError(f"Dataset not found at {path}; run `actdistill collect` first.")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ArtifactError(f"Dataset {path} is not a readable HDF5 file ({err}); it is corrupt or truncated, collect it again.") from err
    with f:
        if "data" not in f:
            raise ArtifactError(f"Dataset {path} has no 'data' group; it is not a robomimic/LIBERO-layout demo file.")
        data = f["data"]
        header = json.loads(data.attrs.get("header", "{}"))
        env_args = json.loads(data.attrs.get("env_args", "{}"))
        attrs = {k: json.loads(v) for k, v in data.attrs.items() if k not in ("header", "env_args", "total", "content_hash")}
        stored_hash = data.attrs.get("content_hash")
        names = sorted((k for k in data.keys() if k.startswith("demo_")), key=lambda s: int(s.split("_")[1]))
        if not names:
            raise ArtifactError(f"Dataset {path} holds no demos.")
        demos = []
        for name in names:
            g = data[name]
            instruction = g.attrs.get("instruction", "")
            if not instruction:
                raise ArtifactError(f"{path}:{name} has no instruction attribute; every demo needs its language instruction.")
            for key in (image_key, state_key, "actions"):
                if key not in g:
                    raise ArtifactError(f"{path}:{name} lacks '{key}'; every demo needs images, states and actions.")
            try:
                demo = Demo(task=str(g.attrs.get("task", "")), instruction=str(instruction),
                            placement_seed=int(g.attrs.get("placement_seed", -1)),
                            images=g[image_key][()], states=g[state_key][()].astype(np.float32),
                            actions=g["actions"][()].astype(np.float32))
            except (ValueError, OSError) as err:
                raise ArtifactError(f"{path}:{name} is malformed or truncated: {err}") from err
            size = env_args.get("image_size", demo.images.shape[1])
            if demo.images.shape[1:3] != (size, size):
                raise ArtifactError(f"{path}:{name} has {demo.images.shape[1]}x{demo.images.shape[2]} images, but the file "
                                    f"declares {size}x{size}; every image must have the file's size.")
            if not (np.isfinite(demo.states).all() and np.isfinite(demo.actions).all()):
                raise ArtifactError(f"{path}:{name} contains NaN or infinite states or actions; remove the demo or collect again.")
            demos.append(demo)
    dims = {(d.states.shape[1], d.actions.shape[1]) for d in demos}
    if len(dims) > 1:
        raise ArtifactError(f"Dataset {path} mixes state/action sizes {sorted(dims)}; every demo needs the same sizes.")
    digest = content_hash(demos)
    if stored_hash is not None and stored_hash != digest:
        raise ArtifactError(f"Dataset {path} does not hold the demos it was written with (content hash {digest}, recorded "
                            f"{stored_hash}); it was changed after collection, collect it again.")
    return DemoSet(demos=demos, header=header, env_args=env_args, fingerprint=hash_file(path), attrs=attrs,
                   content_hash=digest)
