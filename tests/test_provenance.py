"""Provenance: every header and results file says which code, versions and machine produced it."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import pytest

from actdistill.artifacts import make_header, write_header
from actdistill.pipeline import StageRunner
from actdistill.provenance import (KEY_PACKAGES, check_provenance, provenance, reproduction_check, same_environment,
                                   version_changes)

ROOT = Path(__file__).resolve().parents[1]
# Results committed before provenance was recorded (session 6 and earlier); every other file must carry it.
LEGACY_RESULTS = {"mt10.json", "mt10_run_session3.json", "mt10_run_diffusion.json", "mt10_run_discrete_teacher.json",
                  "mt10_gpu_latency_h200.json"}


def test_provenance_names_code_versions_machine_and_threads():
    p = provenance()
    check_provenance(p, "this record")
    assert p["packages"]["torch"] == metadata.version("torch")
    assert p["packages"]["mujoco"] == metadata.version("mujoco")
    assert p["git"]["revision"] is None or re.fullmatch(r"[0-9a-f]{40}", p["git"]["revision"])
    assert p["threads"]["torch"] >= 1 and p["machine"]["cpu"]
    json.dumps(p)  # it goes into JSON files


def test_every_header_carries_provenance(tmp_path):
    header = make_header("collect", {"a": 1}, inputs={})
    check_provenance(header["provenance"], "the header")
    with pytest.raises(ValueError, match="without packages"):
        check_provenance({k: v for k, v in header["provenance"].items() if k != "packages"}, "a record")


def test_version_changes_are_named():
    now = provenance()
    assert version_changes(now, now) == []
    old = json.loads(json.dumps(now))
    old["packages"]["mujoco"] = "3.2.7"
    assert version_changes(old, now) == [f"mujoco 3.2.7 -> {now['packages']['mujoco']}"]
    assert version_changes(None, now) == ["it was made before provenance was recorded"]
    assert not same_environment(old, now) and same_environment(now, json.loads(json.dumps(now)))


def test_a_stage_reused_across_a_version_change_says_so_in_one_line(tmp_path):
    header = make_header("collect", {"a": 1}, inputs={}, summary={"seconds": 1.0})
    header["provenance"]["packages"]["numpy"] = "0.0.1"
    write_header(tmp_path, header)
    st = StageRunner()
    calls = []
    st.run("collect", "collect", tmp_path, {"a": 1}, {}, lambda: calls.append(1) or {}, lambda s: "", lambda s: "")
    assert not calls and st.rows[0]["status"] == "reused"
    assert len(st.notices) == 1 and "numpy 0.0.1 ->" in st.notices[0] and st.notices[0].startswith("collect: reused")


def test_a_reused_stage_copied_from_another_run_shows_the_file_in_this_runs_folder(tmp_path):
    first, here = tmp_path / "runs" / "a" / "teacher", tmp_path / "runs" / "b" / "teacher"
    summary = {"seconds": 1.0, "weights": str(first / "model.safetensors")}
    for folder in (first, here):
        write_header(folder, make_header("train-teacher", {"a": 1}, inputs={}, summary=summary))
        (folder / "model.safetensors").write_bytes(b"w")
    st = StageRunner()
    st.run("train-teacher", "train-teacher", here, {"a": 1}, {}, lambda: {}, lambda s: "", lambda s: s["weights"])
    assert st.rows[0]["output"] == str(here / "model.safetensors")
    (here / "model.safetensors").unlink()  # nothing of that name here: the summary's own path, as stored
    st.run("train-teacher", "train-teacher", here, {"a": 1}, {}, lambda: {}, lambda s: "", lambda s: s["weights"])
    assert st.rows[1]["output"] == str(first / "model.safetensors")


def test_each_stage_logs_a_timestamped_line_as_it_starts_and_ends(tmp_path, capsys):
    st = StageRunner()
    st.run("probe", "probe", tmp_path / "a", {"a": 1}, {}, lambda: {"seconds": 12.3}, lambda s: "probe MSE 0.1",
           lambda s: "")
    write_header(tmp_path / "b", make_header("collect", {"a": 1}, inputs={}, summary={"seconds": 1.0}))
    st.run("collect", "collect", tmp_path / "b", {"a": 1}, {}, lambda: {}, lambda s: "", lambda s: "")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(line[0] == "[" and line[9:11] == "] " for line in lines)
    assert lines[0].endswith(f"probe: started ({tmp_path / 'a'})")
    assert lines[1].endswith("probe: ran in 12 s, probe MSE 0.1") and lines[2].endswith("collect: reused")


def _row(name, mean, lo, hi):
    return {"name": name, "success_mean": mean, "success_ci95": [lo, hi]}


def test_reproduction_check_compares_within_the_reference_ci():
    config = {"out": "runs/x", "seed": 0, "tasks": ("a", "b")}  # in memory a tuple, in the committed JSON a list
    ref = {"config": {**config, "out": "runs/default", "tasks": ["a", "b"]}, "provenance": provenance(), "dataset_content_hash": "abc",
           "rows": [_row("teacher", 0.74, 0.68, 0.80), _row("student", 0.715, 0.65, 0.77)]}
    rep = reproduction_check([_row("teacher", 0.70, 0, 1), _row("student", 0.63, 0, 1)], "abc", config, ref)
    assert rep["comparable"] and rep["dataset_match"] is True
    assert [(r["name"], r["within"]) for r in rep["rows"]] == [("teacher", True), ("student", False)]
    assert reproduction_check([], "xyz", config, ref)["dataset_match"] is False
    assert "another config" in reproduction_check([], "abc", {**config, "seed": 1}, ref)["reason"]
    old = json.loads(json.dumps(ref))
    old["provenance"]["packages"]["torch"] = "1.0"
    assert "package versions differ: torch 1.0" in reproduction_check([], "abc", config, old)["reason"]
    assert "records no provenance" in reproduction_check([], "abc", config, {**ref, "provenance": None})["reason"]


def test_committed_results_carry_provenance():
    """Every results file committed from now on names what produced it (the older ones are listed above)."""
    files = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert files
    for path in files:
        if path.name in LEGACY_RESULTS:
            continue
        check_provenance(json.loads(path.read_text()).get("provenance"), str(path))


def test_constraints_pin_every_dependency():
    """The lock file pins (==) every direct dependency and every package whose version is recorded."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.findall(r'^\s+"([A-Za-z0-9_.-]+)', text.split("dependencies = [", 1)[1].split("]", 1)[0], re.M)
    deps += re.findall(r'"([A-Za-z0-9_.-]+)[><=]', text.split("[project.optional-dependencies]", 1)[1].split("\n\n", 1)[0])
    for name in set(deps) | set(KEY_PACKAGES):
        assert name.lower().replace("_", "-") in pins, f"{name} is not pinned in constraints.txt"


def test_record_made_after_a_commit_names_the_revision_the_command_started_from(monkeypatch):
    import actdistill.provenance as prov

    states = iter([{"revision": "a" * 40, "dirty": False}, {"revision": "b" * 40, "dirty": False},
                   {"revision": "b" * 40, "dirty": False}])
    monkeypatch.setattr(prov, "git_state", lambda: next(states))
    monkeypatch.setattr(prov, "_STARTED_AT", None)
    prov.record_start()
    p = prov.provenance()
    assert p["git"]["revision"] == "b" * 40 and p["git_at_start"]["revision"] == "a" * 40
    check_provenance(p, "the record")
    prov.record_start()  # started and written at the same revision: no second field
    monkeypatch.setattr(prov, "git_state", lambda: {"revision": "b" * 40, "dirty": False})
    assert "git_at_start" not in prov.provenance()
