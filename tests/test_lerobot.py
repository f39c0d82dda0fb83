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
