import h5py
import numpy as np
import pytest
import torch

from actdistill.artifacts import ArtifactError
from actdistill.data.dataset import FrameDataset
from actdistill.data.hdf5 import Demo, DemoWriter, read_demos


def _demo(t=5, task="reach-v3", instr="reach the red goal", seed=3):
    rng = np.random.default_rng(seed)
    return Demo(task=task, instruction=instr, placement_seed=seed,
                images=rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8),
                states=rng.normal(size=(t, 7)).astype(np.float32), actions=rng.uniform(-1, 1, (t, 4)).astype(np.float32))


def test_round_trip_is_exact(tmp_path):
    demos = [_demo(5, seed=1), _demo(7, task="push-v3", instr="push the puck to the goal", seed=2)]
    w = DemoWriter(tmp_path / "d.hdf5", header={"stage": "collect"}, env_args={"image_size": 8})
    for d in demos:
        w.add(d)
    w.close({"placement_seeds": {"reach-v3": [1]}})
    back = read_demos(tmp_path / "d.hdf5")
    assert back.header == {"stage": "collect"} and back.attrs["placement_seeds"] == {"reach-v3": [1]}
    for a, b in zip(demos, back.demos):
        assert (a.task, a.instruction, a.placement_seed) == (b.task, b.instruction, b.placement_seed)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.states, b.states)
    with h5py.File(tmp_path / "d.hdf5") as f:  # robomimic layout
        assert f["data/demo_1/obs/image"].shape == (7, 8, 8, 3) and f["data/demo_1"].attrs["num_samples"] == 7


def test_action_chunks_pad_at_episode_end(tmp_path):
    w = DemoWriter(tmp_path / "d.hdf5", header={}, env_args={})
    d0, d1 = _demo(3, seed=1), _demo(4, seed=2)
    w.add(d0)
    w.add(d1)
    w.close()
    ds = FrameDataset(read_demos(tmp_path / "d.hdf5"), chunk_size=4, task_names=("reach-v3",))
    b = ds.batch(torch.tensor([1, 3]))
    # frame 1 of demo 0: actions 1, 2 then padded with the last action of demo 0 (not demo 1's)
    np.testing.assert_array_equal(b["action"][0, :2].numpy(), d0.actions[1:3])
    np.testing.assert_array_equal(b["action"][0, 2].numpy(), d0.actions[2])
    assert b["action_is_pad"][0].tolist() == [False, False, True, True]
    np.testing.assert_array_equal(b["action"][1].numpy(), d1.actions[0:4])
    assert not b["action_is_pad"][1].any()


def test_missing_instruction_is_refused(tmp_path):
    w = DemoWriter(tmp_path / "d.hdf5", header={}, env_args={})
    w.add(_demo())
    w.close()
    with h5py.File(tmp_path / "d.hdf5", "a") as f:
        f["data/demo_0"].attrs["instruction"] = ""
    with pytest.raises(ArtifactError, match="no instruction"):
        read_demos(tmp_path / "d.hdf5")


def test_truncated_file_is_refused(tmp_path):
    w = DemoWriter(tmp_path / "d.hdf5", header={}, env_args={})
    w.add(_demo(50))
    w.close()
    data = (tmp_path / "d.hdf5").read_bytes()
    (tmp_path / "d.hdf5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt or truncated|malformed or truncated"):
        read_demos(tmp_path / "d.hdf5")


def test_nan_actions_are_refused(tmp_path):
    d = _demo()
    d.actions[2, 1] = np.nan
    w = DemoWriter(tmp_path / "d.hdf5", header={}, env_args={})
    w.add(d)
    w.close()
    with pytest.raises(ArtifactError, match="NaN"):
        read_demos(tmp_path / "d.hdf5")


def test_content_hash_follows_the_demos_not_the_file(tmp_path):
    """The content hash is recorded at write time, read back equal, changes with one pixel, and a file whose
    demos were altered after collection is refused."""
    from actdistill.data.hdf5 import content_hash

    demos = [_demo(5, seed=1), _demo(6, seed=2)]
    paths = []
    for name, header in (("a.hdf5", {"stage": "collect", "created": 1}), ("b.hdf5", {"stage": "collect", "created": 2})):
        w = DemoWriter(tmp_path / name, header=header, env_args={"image_size": 8})
        for d in demos:
            w.add(d)
        w.close()
        paths.append(tmp_path / name)
    a, b = read_demos(paths[0]), read_demos(paths[1])
    assert a.fingerprint != b.fingerprint and a.content_hash == b.content_hash == content_hash(demos)
    changed = [_demo(5, seed=1), _demo(6, seed=2)]
    changed[1].images[2, 3, 4, 0] ^= 1
    assert content_hash(changed) != a.content_hash
    with h5py.File(paths[0], "r+") as f:
        f["data/demo_0/actions"][0, 0] += 0.5
    with pytest.raises(ArtifactError, match="changed after collection"):
        read_demos(paths[0])


def test_a_dataset_of_other_sizes_needs_a_model_of_those_sizes(tmp_path):
    from actdistill.config import ConfigError
    from actdistill.teacher import train_teacher
    from tests.conftest import tiny_teacher_config

    rng = np.random.default_rng(0)
    demo = Demo(task="reach-v3", instruction="reach the red goal", placement_seed=1,
                images=rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8),
                states=rng.normal(size=(6, 9)).astype(np.float32), actions=rng.uniform(-1, 1, (6, 6)).astype(np.float32))
    w = DemoWriter(tmp_path / "d.hdf5", header={"stage": "collect"}, env_args={"image_size": 32, "tasks": ["reach-v3"]})
    w.add(demo)
    w.close()
    with pytest.raises(ConfigError, match="9-dimensional states and 6-dimensional actions"):
        train_teacher(tiny_teacher_config(steps=2), tmp_path / "d.hdf5", tmp_path / "t", progress=False)
    cfg = tiny_teacher_config(steps=2, state_dim=9, action_dim=6)
    s = train_teacher(cfg, tmp_path / "d.hdf5", tmp_path / "t2", progress=False)
    assert s["steps"] == 2
