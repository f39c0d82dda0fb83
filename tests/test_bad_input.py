"""Property-based bad input: every user mistake is one sentence naming the field or file, and nothing is written.

Set ACTDISTILL_BAD_INPUT_REPORT=path to write how many distinct bad inputs each test tried,
ACTDISTILL_BAD_INPUT_EXAMPLES=n for the examples per test, ACTDISTILL_BAD_INPUT_RANDOM=1 for fresh ones.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import typing
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from actdistill import config as C
from actdistill.artifacts import ArtifactError
from actdistill.cli import main
from actdistill.constants import OBS_IMAGE, OBS_STATE, TASK
from actdistill.data.hdf5 import read_demos
from actdistill.models.policy import ObservationError
from actdistill.sim.metaworld_env import CAMERAS, MT10_TASKS

TRIED: dict[str, set[str]] = {}
# Derandomized by default, so CI sees the same examples every time; ACTDISTILL_BAD_INPUT_RANDOM=1 explores anew.
SETTINGS = settings(max_examples=int(os.environ.get("ACTDISTILL_BAD_INPUT_EXAMPLES", "60")), deadline=None,
                    derandomize=os.environ.get("ACTDISTILL_BAD_INPUT_RANDOM") != "1",
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _tried(test: str, case) -> None:
    TRIED.setdefault(test, set()).add(repr(case))


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("ACTDISTILL_BAD_INPUT_REPORT")
    if path:
        counts = {k: len(v) for k, v in sorted(TRIED.items())}
        Path(path).write_text(json.dumps({"distinct_bad_inputs": counts, "total": sum(counts.values())}, indent=2))


def _one_sentence(text: str) -> str:
    text = text.strip()
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


# ---------------------------------------------------------------------------------------------- configs

CONFIGS = [C.SimConfig, C.CollectConfig, C.ModelConfig, C.TrainConfig, C.TeacherConfig, C.ProbeConfig, C.DistillConfig,
           C.ExportConfig, C.EvalConfig, C.BenchConfig, C.RunConfig]


def _leaf_fields(cls, prefix: str = "") -> list[tuple[str, object, str]]:
    """(dotted path, annotated type, owning class name) of every non-config field, nested ones included."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in C.dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and issubclass(tp, C._Base):
            out += _leaf_fields(tp, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", tp, cls.__name__))
    return out


FIELDS = [(cls, *leaf) for cls in CONFIGS for leaf in _leaf_fields(cls)]
junk = st.one_of(st.text(max_size=8), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def wrong_value(tp) -> st.SearchStrategy:
    """Values that are wrong for a field of type `tp` whatever its range."""
    base = typing.get_args(tp)[0] if typing.get_origin(tp) in (typing.Union, C.types.UnionType) else tp
    if base is bool:
        return st.one_of(st.integers(), junk, st.floats())
    if base is int:
        return st.one_of(junk, st.booleans(), st.floats().filter(lambda x: not float(x).is_integer()))
    if base is float:
        return st.one_of(junk, st.booleans(), st.sampled_from([math.nan, math.inf, -math.inf]))
    if base is str:
        return st.one_of(st.integers(), st.floats(), st.lists(st.text(max_size=3), max_size=2), st.booleans())
    if typing.get_origin(base) is tuple:
        inner = typing.get_args(base)[0]
        return st.one_of(st.integers(), st.booleans(), st.text(min_size=1, max_size=5), st.lists(wrong_value(inner), min_size=1, max_size=2))
    raise AssertionError(f"no strategy for {tp}")


@SETTINGS
@given(data=st.data())
def test_a_wrong_type_anywhere_in_any_config_is_one_sentence_naming_the_field(data):
    cls, path, tp, owner = data.draw(st.sampled_from(FIELDS))
    value = data.draw(wrong_value(tp))
    _tried("config wrong type", (cls.__name__, path, value))
    with pytest.raises(C.ConfigError) as err:
        C.apply_overrides(cls(), {path: value})
    msg = _one_sentence(str(err.value))
    assert path.split(".")[-1] in msg and owner in msg


# fields with a range: values outside it
OUT_OF_RANGE = {
    "TrainConfig.steps": st.integers(max_value=0), "TrainConfig.lr": st.floats(max_value=0), "TrainConfig.batch_size": st.integers(max_value=0),
    "TrainConfig.grad_clip": st.floats(max_value=0), "TrainConfig.weight_decay": st.floats(max_value=-1e-9),
    "SimConfig.image_size": st.one_of(st.integers(max_value=15), st.integers(min_value=257)),
    "SimConfig.tasks": st.lists(st.text(min_size=1, max_size=12).filter(lambda t: t not in MT10_TASKS), min_size=1, max_size=3),
    "SimConfig.camera": st.text(max_size=10).filter(lambda t: t not in CAMERAS),
    "DistillConfig.rho": st.one_of(st.floats(max_value=0), st.floats(min_value=1.0, exclude_min=True)),
    "DistillConfig.tau": st.one_of(st.floats(max_value=0), st.floats(min_value=1.0)),
    "DistillConfig.budget_on": st.text(max_size=6).filter(lambda t: t not in ("hard", "soft")),
    "DistillConfig.alpha": st.floats(max_value=-1e-9), "DistillConfig.lambda_bud": st.floats(max_value=-1e-9),
    "EvalConfig.episodes_per_task": st.integers(max_value=0), "ExportConfig.calib_margin": st.floats(min_value=0.5),
    "ModelConfig.num_layers": st.integers(max_value=0), "ProbeConfig.k": st.integers(max_value=0),
}
RANGED = [(cls, path, owner) for cls, path, _tp, owner in FIELDS if f"{owner}.{path.split('.')[-1]}" in OUT_OF_RANGE]


@SETTINGS
@given(data=st.data())
def test_an_out_of_range_value_is_one_sentence_naming_the_field(data):
    cls, path, owner = data.draw(st.sampled_from(RANGED))
    value = data.draw(OUT_OF_RANGE[f"{owner}.{path.split('.')[-1]}"].filter(lambda v: not (isinstance(v, float) and math.isnan(v))))
    _tried("config out of range", (cls.__name__, path, value))
    with pytest.raises(C.ConfigError) as err:
        C.apply_overrides(cls(), {path: value})
    msg = _one_sentence(str(err.value))
    field = path.split(".")[-1]
    assert field in msg or (field == "tasks" and "task" in msg.lower())


@SETTINGS
@given(cls=st.sampled_from(CONFIGS), name=st.one_of(st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True), st.text(min_size=1, max_size=6)))
def test_unknown_fields_are_named(cls, name):
    assume(name not in {f.name for f in C.dataclasses.fields(cls)})
    _tried("config unknown field", (cls.__name__, name))
    assume("." not in name)  # a dotted name is a path into a nested config
    with pytest.raises(C.ConfigError) as err:
        cls.from_dict({**cls().to_dict(), name: 1})
    assert repr(name) in _one_sentence(str(err.value))
    with pytest.raises(C.ConfigError) as err:
        C.apply_overrides(cls(), {name: 1})
    assert _one_sentence(str(err.value)).startswith("Unknown config field")


# ---------------------------------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


TEACHER_FIELDS = [(path, tp) for cls, path, tp, _o in FIELDS if cls is C.TeacherConfig]


@settings(SETTINGS, max_examples=max(SETTINGS.max_examples // 2, 10))
@given(data=st.data())
def test_the_cli_answers_a_bad_set_with_one_sentence_and_writes_nothing(data, tiny_demos, tmp_path):
    path, tp = data.draw(st.sampled_from(TEACHER_FIELDS))
    value = data.draw(wrong_value(tp))
    _tried("cli --set", (path, value))
    out = tmp_path / "teacher"
    code, err = _cli(["train-teacher", "--data", str(tiny_demos), "--out", str(out), "--set", f"{path}={json.dumps(value)}",
                      "--no-progress"])
    assert code == 2 and _one_sentence(err).startswith("actdistill: error: ") and path.split(".")[-1] in err
    assert not out.exists()


@SETTINGS
@given(tasks=st.lists(st.text(alphabet=st.characters(codec="ascii", categories=["L", "N", "P"]), min_size=1, max_size=14)
                      .filter(lambda t: t not in MT10_TASKS and not t.startswith("-")), min_size=1, max_size=3))
def test_unknown_task_names_are_refused_before_any_simulation(tasks, tmp_path):
    _tried("cli unknown task", tuple(tasks))
    code, err = _cli(["collect", "--out", str(tmp_path / "c"), "--tasks", *tasks, "--no-progress"])
    assert code == 2 and "Unknown task" in _one_sentence(err) and not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------------------------- datasets

MUTATIONS = ["truncate", "nan_action", "inf_state", "drop_key", "wrong_image_shape", "no_instruction", "empty_file",
             "random_bytes", "no_demos", "short_actions"]


def _mutate(src: Path, dst: Path, kind: str, frac: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if kind == "empty_file":
        dst.write_bytes(b"")
        return
    if kind == "random_bytes":
        dst.write_bytes(rng.integers(0, 256, size=int(1 + frac * 4096), dtype=np.uint8).tobytes())
        return
    shutil.copy(src, dst)
    if kind == "truncate":
        with open(dst, "r+b") as f:
            f.truncate(int(frac * os.path.getsize(dst)))
        return
    with h5py.File(dst, "r+") as f:
        names = sorted(k for k in f["data"] if k.startswith("demo_"))
        g = f["data"][names[int(frac * len(names)) % len(names)]]
        t = g["actions"].shape[0]
        if kind == "nan_action":
            a = g["actions"][()]
            a[int(frac * t) % t, int(seed) % 4] = np.nan
            g["actions"][...] = a
        elif kind == "inf_state":
            s = g["obs/state"][()]
            s[int(frac * t) % t, int(seed) % s.shape[1]] = np.inf
            g["obs/state"][...] = s
        elif kind == "drop_key":
            del g[["obs/image", "obs/state", "actions"][seed % 3]]
        elif kind == "wrong_image_shape":
            img = g["obs/image"][()]
            del g["obs/image"]
            g["obs/image"] = img[:, :, :, :2] if seed % 2 else img[:, 1:]
        elif kind == "no_instruction":
            g.attrs["instruction"] = ""
        elif kind == "no_demos":
            for n in names:
                del f["data"][n]
        elif kind == "short_actions":
            a = g["actions"][()]
            del g["actions"]
            g["actions"] = a[: max(t - 1 - seed % 3, 0)]


@SETTINGS
@given(kind=st.sampled_from(MUTATIONS), frac=st.floats(0.0, 0.99), seed=st.integers(0, 10_000))
def test_broken_datasets_are_one_sentence_naming_the_file_and_nothing_is_trained(kind, frac, seed, tiny_demos, tmp_path):
    _tried("dataset", (kind, round(frac, 3), seed))
    bad = tmp_path / "bad.hdf5"
    _mutate(tiny_demos, bad, kind, frac, seed)
    with pytest.raises(ArtifactError) as err:
        read_demos(bad)
    assert str(bad) in _one_sentence(str(err.value))
    out = tmp_path / "teacher"
    code, msg = _cli(["train-teacher", "--data", str(bad), "--out", str(out), "--no-progress"])
    assert code == 2 and str(bad) in _one_sentence(msg) and not out.exists()


# ---------------------------------------------------------------------------------------------- observations and artifacts


@pytest.fixture(scope="module")
def tiny_policy(tiny_teacher):
    from actdistill.registry import load_policy

    return load_policy(tiny_teacher)


def _good_obs(policy, b: int = 1) -> dict:
    return {OBS_IMAGE: np.zeros((b, policy.image_size, policy.image_size, 3), np.uint8),
            OBS_STATE: np.zeros((b, 7), np.float32), TASK: ["reach-v3"] * b}


@SETTINGS
@given(data=st.data())
def test_malformed_observations_are_one_sentence(data, tiny_policy):
    s = tiny_policy.image_size
    obs = _good_obs(tiny_policy)
    key = data.draw(st.sampled_from([OBS_IMAGE, OBS_STATE, TASK, "missing"]))
    if key == OBS_IMAGE:
        shape = data.draw(st.lists(st.integers(1, 70), min_size=1, max_size=5)
                          .filter(lambda sh: tuple(sh[-3:]) != (s, s, 3) and math.prod(sh) <= 200_000))
        dtype = data.draw(st.sampled_from([np.uint8, np.float32, np.int64]))
        obs[OBS_IMAGE] = np.zeros(shape, dtype)
        case = (key, tuple(shape), np.dtype(dtype).name)
    elif key == OBS_STATE:
        state = data.draw(st.one_of(st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=12).filter(lambda v: len(v) != 7),
                                    st.lists(st.sampled_from([math.nan, math.inf, -math.inf, 0.0]), min_size=7, max_size=7)
                                    .filter(lambda v: not all(map(math.isfinite, v))),
                                    st.text(max_size=4)))
        obs[OBS_STATE] = state
        case = (key, repr(state))
    elif key == TASK:
        obs[TASK] = data.draw(st.one_of(st.lists(st.text(max_size=5), min_size=2, max_size=3), st.just([""]), st.just([3])))
        case = (key, repr(obs[TASK]))
    else:
        del obs[data.draw(st.sampled_from([OBS_IMAGE, OBS_STATE, TASK]))]
        case = (key, tuple(obs))
    _tried("observation", case)
    tiny_policy.reset()
    with pytest.raises(ObservationError) as err:
        tiny_policy.select_action(obs)
    _one_sentence(str(err.value))


ARTIFACT_FAULTS = ["truncate_weights", "flip_weight_bytes", "header_not_json", "header_other_stage", "config_missing",
                   "weights_missing", "header_missing"]


@SETTINGS
@given(kind=st.sampled_from(ARTIFACT_FAULTS), frac=st.floats(0.01, 0.99))
def test_corrupt_or_mismatched_artifacts_are_refused_naming_the_folder(kind, frac, tiny_teacher, tmp_path):
    from actdistill.registry import load_policy

    _tried("artifact", (kind, round(frac, 3)))
    folder = tmp_path / "teacher"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(tiny_teacher, folder, ignore=shutil.ignore_patterns("ckpt"))
    weights, header = folder / "model.safetensors", folder / "header.json"
    if kind == "truncate_weights":
        with open(weights, "r+b") as f:
            f.truncate(int(frac * os.path.getsize(weights)))
    elif kind == "flip_weight_bytes":
        data = bytearray(weights.read_bytes())
        i = len(data) - 1 - int(frac * (len(data) // 2))  # somewhere in the tensor bytes, after the JSON header
        data[i] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif kind == "header_not_json":
        header.write_text(header.read_text()[: int(frac * 50)])
    elif kind == "header_other_stage":
        h = json.loads(header.read_text())
        header.write_text(json.dumps({**h, "stage": "probe"}))
    else:
        (folder / {"config_missing": "config.json", "weights_missing": "model.safetensors", "header_missing": "header.json"}[kind]).unlink()
    with pytest.raises(ArtifactError) as err:
        load_policy(folder)
    assert str(folder) in _one_sentence(str(err.value))


def test_a_later_field_at_its_default_can_still_be_set():
    cfg = C.apply_overrides(C.RunConfig(), {"teacher.model.decoder": "qwen2", "teacher.model.sliding_window": 8})
    assert cfg.teacher.model.decoder == "qwen2" and cfg.to_dict()["teacher"]["model"]["sliding_window"] == 8
    assert "decoder" not in C.RunConfig().to_dict()["teacher"]["model"]  # earlier config hashes are unchanged


def test_a_saved_config_reads_back_its_earlier_values_and_a_users_config_takes_todays_defaults():
    """A run made with settling off writes no settle_steps (0 is its earlier value): read back from the run's
    config.json it is 0 again, in the nested export section too, not today's default of 300; a config a user writes
    without the field gets today's default. Every config with every later field at its earlier value round-trips."""
    run = C.apply_overrides(C.RunConfig(), {"export.settle_steps": 0})
    saved = json.loads(json.dumps(run.to_dict()))
    assert "settle_steps" not in saved["export"]
    assert C.RunConfig.from_saved(saved).export.settle_steps == 0
    assert C.RunConfig.from_saved(saved) == run
    assert C.RunConfig.from_dict(saved).export.settle_steps == C.ExportConfig().settle_steps == 300
    assert C.RunConfig.from_saved(C.RunConfig().to_dict()) == C.RunConfig()  # today's defaults are written out
    for cls in (C.RunConfig, C.DistillConfig, C.ExportConfig, C.TeacherConfig, C.StudentConfig, C.BenchConfig):
        earlier = {f: v for f, v in cls._EARLIER_VALUES.items()}
        cfg = cls(**earlier)
        assert cls.from_saved(json.loads(json.dumps(cfg.to_dict()))) == cfg, cls.__name__
    with pytest.raises(C.ConfigError, match="must be given as a JSON object"):
        C.ExportConfig.from_saved([1])
