"""LeRobotDataset v3 in and out: a dataset written by the package reads back frame for frame (images within the
codec's loss, states and actions exactly), and every stage reads it like the HDF5 file."""

import json

import numpy as np
import pytest

from actdistill.artifacts import ArtifactError
from actdistill.data.dataset import FrameDataset
from actdistill.data.hdf5 import read_demos
from actdistill.data.lerobot import read_lerobot, write_lerobot


def test_written_dataset_reads_back_frame_for_frame(tiny_demos, tmp_path):
    demos = read_demos(tiny_demos)
    root = write_lerobot(demos, tmp_path / "ds", fps=80)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == len(demos.demos)
    assert info["total_frames"] == demos.num_frames and info["splits"] == {"train": f"0:{len(demos.demos)}"}
    assert set(json.loads((root / "meta/stats.json").read_text())) == {"observation.state", "action", "observation.image"}
    back = read_demos(root)  # the same entry point as HDF5: a folder is recognised as a LeRobot dataset
    assert len(back.demos) == len(demos.demos)
    for a, b in zip(demos.demos, back.demos):
        assert (a.task, a.instruction, a.placement_seed) == (b.task, b.instruction, b.placement_seed)
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.actions, b.actions)
        assert a.images.shape == b.images.shape
        err = np.abs(a.images.astype(int) - b.images.astype(int))
        assert err.mean() < 1.0 and err.max() <= 8  # H.264 at qp 0 in yuv444p: only colour-conversion rounding
    assert back.attrs["placement_seeds"] == demos.attrs["placement_seeds"]
    data = FrameDataset(back, chunk_size=4)  # what every training stage builds from it
    assert len(data) == demos.num_frames


def test_a_foreign_dataset_is_read_by_its_feature_names(tiny_demos, tmp_path):
    demos = read_demos(tiny_demos)
    root = write_lerobot(demos, tmp_path / "ds", camera="observation.images.front")
    back = read_lerobot(root, image_key="observation.images.front")
    assert back.num_frames == demos.num_frames
    with pytest.raises(ArtifactError, match="no image feature 'observation.images.wrist'"):
        read_lerobot(root, image_key="observation.images.wrist")
    with pytest.raises(ArtifactError, match="no state feature 'observation.joints'"):
        read_lerobot(root, state_key="observation.joints")


def test_broken_datasets_are_one_sentence(tiny_demos, tmp_path):
    root = write_lerobot(read_demos(tiny_demos), tmp_path / "ds")
    (root / "videos/observation.image/chunk-000/file-000.mp4").write_bytes(b"not a video")
    with pytest.raises(ArtifactError, match="cannot be decoded"):
        read_demos(root)
    (root / "meta/info.json").write_text("{")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_demos(root)


def test_episodes_spread_over_several_files_read_like_one_file(tiny_demos, tmp_path):
    demos = read_demos(tiny_demos)
    one = read_demos(write_lerobot(demos, tmp_path / "one"))
    root = write_lerobot(demos, tmp_path / "many", episodes_per_file=1)
    assert len(list((root / "data/chunk-000").glob("file-*.parquet"))) == len(demos.demos)
    many = read_demos(root)
    assert many.content_hash == one.content_hash  # the same frames, states, actions and instructions


def test_a_view_names_the_features_every_stage_reads(tiny_demos, tmp_path):
    """A multi-camera dataset cannot be read without naming a camera; `actdistill lerobot-view` names it once, and the
    view is a dataset for every stage (here: train-teacher through the CLI)."""
    import subprocess
    import sys

    demos = read_demos(tiny_demos)
    root = write_lerobot(demos, tmp_path / "ds", camera="observation.images.front")
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.images.wrist"] = info["features"]["observation.images.front"]  # a second camera
    (root / "meta/info.json").write_text(json.dumps(info))
    import shutil

    shutil.copytree(root / "videos/observation.images.front", root / "videos/observation.images.wrist")
    with pytest.raises(ArtifactError, match="has 2 cameras"):
        read_demos(root)
    cli = [sys.executable, "-m", "actdistill.cli"]
    proc = subprocess.run(cli + ["lerobot-view", "--data", str(root), "--image-key", "observation.images.front",
                                 "--out", str(tmp_path / "view")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    view = read_demos(tmp_path / "view")
    assert view.content_hash == read_lerobot(root, image_key="observation.images.front").content_hash
    assert view.fingerprint != read_lerobot(root, image_key="observation.images.wrist").fingerprint  # the camera counts
    cfg = {"model": {"image_size": 32, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
                     "intermediate_size": 64, "patch_size": 8, "chunk_size": 4},
           "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2, "warmup_steps": 1}}
    (tmp_path / "t.json").write_text(json.dumps(cfg))
    proc = subprocess.run(cli + ["train-teacher", "--data", str(tmp_path / "view"), "--out", str(tmp_path / "t"),
                                 "--config", str(tmp_path / "t.json"), "--no-progress"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bad = subprocess.run(cli + ["lerobot-view", "--data", str(root), "--image-key", "observation.images.top",
                                "--out", str(tmp_path / "v2")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no image feature 'observation.images.top'" in bad.stderr
    assert not (tmp_path / "v2").exists()


def test_malformed_multi_file_datasets_are_one_sentence(tiny_demos, tmp_path):
    demos = read_demos(tiny_demos)
    root = write_lerobot(demos, tmp_path / "ds", episodes_per_file=1)
    (root / "data/chunk-000/file-001.parquet").unlink()
    with pytest.raises(ArtifactError, match="data file data/chunk-000/file-001.parquet of episode 1 is missing"):
        read_demos(root)
    root = write_lerobot(demos, tmp_path / "short", episodes_per_file=2)
    from actdistill.data.lerobot import _encode  # a video shorter than its parquet rows
    frames = np.concatenate([d.images for d in demos.demos[:2]])[:-3]
    _encode(frames, root / "videos/observation.image/chunk-000/file-000.mp4", 80)
    with pytest.raises(ArtifactError, match="shorter than its parquet rows"):
        read_demos(root)
    root = write_lerobot(demos, tmp_path / "fps")
    info = json.loads((root / "meta/info.json").read_text())
    info["fps"] = 30
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ArtifactError, match="runs at 80 fps and the dataset at 30"):
        read_demos(root)
    (root / "meta/info.json").unlink()
    with pytest.raises(ArtifactError):
        read_demos(root)


def test_a_video_is_decoded_once_then_read_from_the_frame_cache(tiny_demos, tmp_path, monkeypatch):
    import actdistill.data.lerobot as lr

    monkeypatch.setenv("ACTDISTILL_CACHE", str(tmp_path / "cache"))
    root = write_lerobot(read_demos(tiny_demos), tmp_path / "ds")
    first = read_demos(root)
    monkeypatch.setattr(lr, "_decode_video", lambda path: (_ for _ in ()).throw(AssertionError("decoded twice")))
    again = read_demos(root)
    assert again.content_hash == first.content_hash
    (cached,) = (tmp_path / "cache" / "frames").glob("*.npy")
    cached.write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="decoded-frame cache .* is corrupt"):
        read_demos(root)
