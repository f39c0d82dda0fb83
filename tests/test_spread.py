"""`actdistill spread`: runs that differ only in their seeds, compared on their shared placements."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from actdistill.artifacts import ArtifactError
from actdistill.bench.spread import seed_spread
from actdistill.cli import main
from actdistill.errors import ConfigError
from actdistill.evaluate import wilson_ci
from actdistill.provenance import check_provenance, provenance

from tests.helpers.results_files import write_in_folders

TASKS = ("reach-v3", "push-v3")


def _row(name: str, episodes: dict[str, list[int]], layers: float = 1.0) -> dict:
    per_task = {t: float(np.mean(v)) for t, v in episodes.items()}
    k, n = sum(sum(v) for v in episodes.values()), sum(len(v) for v in episodes.values())
    return {"name": name, "per_episode_success": episodes, "success_per_task": per_task,
            "success_mean": float(np.mean(list(per_task.values()))), "success_ci95": list(wilson_ci(k, n)),
            "success_ci95_per_task": {t: list(wilson_ci(sum(v), len(v))) for t, v in episodes.items()},
            "layers_executed_frac": layers, "episodes_per_task": 4, "placement_seeds": {t: [10, 11, 12, 13] for t in TASKS}}


def _run(seed: int, teacher: dict[str, list[int]], student: dict[str, list[int]]) -> dict:
    config = {"out": f"runs/seed-{seed}", "collect": {"seed": 0, "demos_per_task": 50},
              "teacher": {"train": {"steps": 5500, "seed": seed}}, "eval": {"episodes_per_task": 4, "seed": 0}}
    return {"benchmark": "metaworld-MT10", "config": config, "provenance": provenance(), "dataset_content_hash": "abc",
            "rows": [_row("teacher", teacher), _row("actdistill-rho0.5", student, 0.5)],
            "stage_seconds": {"collect": 60.0, "train-teacher": 120.0}}


RUN0 = _run(0, {"reach-v3": [1, 1, 1, 0], "push-v3": [0, 0, 1, 0]}, {"reach-v3": [1, 1, 0, 0], "push-v3": [0, 0, 1, 0]})
RUN1 = _run(1, {"reach-v3": [1, 1, 1, 1], "push-v3": [0, 1, 1, 0]}, {"reach-v3": [1, 1, 1, 1], "push-v3": [0, 1, 1, 1]})


def _write(tmp_path, *runs: dict) -> list:
    return write_in_folders(tmp_path, "run", "mt10.json", runs)


def test_spread_reports_each_seed_the_spread_and_the_seed_paired_difference(tmp_path):
    rep = seed_spread(_write(tmp_path, RUN0, RUN1), samples=500)
    # teacher: seed 0 (0.75 + 0.25) / 2 = 0.5, seed 1 (1.0 + 0.5) / 2 = 0.75; student: 0.375 and 0.875
    teacher, student = rep["pooled"]
    assert teacher["seed_success"] == [0.5, 0.75] and student["seed_success"] == [0.375, 0.875]
    assert teacher["seed_spread"]["std"] == pytest.approx(np.std([0.5, 0.75], ddof=1))
    assert student["seed_spread"]["min"] == 0.375 and student["seed_spread"]["max"] == 0.875
    assert teacher["success_ci95"] == pytest.approx(list(wilson_ci(10, 16)))  # 4 + 6 successes of 16 pooled episodes
    # student minus teacher per run: -0.125 and +0.125; over the runs 0.0, its CI from runs and placements redrawn
    assert [r["student_minus_teacher"][0] for r in rep["runs"]] == pytest.approx([-0.125, 0.125])
    assert rep["student_minus_teacher_per_seed"] == pytest.approx([-0.125, 0.125])
    d = rep["student_minus_teacher"]
    assert d[0] == pytest.approx(0.0) and d[1] < -0.1 and d[2] > 0.1
    assert [r["core_target_met"] for r in rep["runs"]] == [False, True] and rep["core_target_met"] == 1
    assert [r["seeds"] for r in rep["runs"]] == [{"teacher.train.seed": 0}, {"teacher.train.seed": 1}]
    assert rep["runs"][0]["stage_minutes"] == 3.0
    check_provenance(rep["provenance"], "the spread report")


def test_spread_refuses_runs_that_are_not_comparable(tmp_path):
    other_config = copy.deepcopy(RUN1)
    other_config["config"]["teacher"]["train"]["steps"] = 900
    with pytest.raises(ConfigError, match=r"another config .*teacher\.train\.steps differs"):
        seed_spread(_write(tmp_path / "a", RUN0, other_config))
    other_data = copy.deepcopy(RUN1)
    other_data["dataset_content_hash"] = "def"
    with pytest.raises(ArtifactError, match="another dataset"):
        seed_spread(_write(tmp_path / "b", RUN0, other_data))
    other_places = copy.deepcopy(RUN1)
    other_places["rows"][1]["placement_seeds"]["push-v3"] = [20, 21, 22, 23]
    with pytest.raises(ArtifactError, match="other placements"):
        seed_spread(_write(tmp_path / "c", RUN0, other_places))
    with pytest.raises(ConfigError, match="same seeds"):
        seed_spread(_write(tmp_path / "d", RUN0, RUN0))
    with pytest.raises(ConfigError, match="at least two runs"):
        seed_spread(_write(tmp_path / "e", RUN0))
    no_hash = {k: v for k, v in RUN1.items() if k != "dataset_content_hash"}
    with pytest.raises(ArtifactError, match="lacks dataset_content_hash"):
        seed_spread(_write(tmp_path / "f", RUN0, no_hash))


def test_spread_cli_writes_the_report_and_its_table(tmp_path, capsys):
    a, b = _write(tmp_path, RUN0, RUN1)
    out = tmp_path / "results" / "mt10_run_seeds.json"
    assert main(["spread", str(a), str(b / "mt10.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the core target (student >= teacher - 0.03) is met in 1 of 2 runs" in printed
    rep = json.loads(out.read_text())
    assert rep["pooled"][1]["seed_success"] == [0.375, 0.875]
    assert "| actdistill-rho0.5 | 0.375 / 0.875 | 0.625 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["spread", str(a), str(b), "--out", str(tmp_path / "report.txt")]) == 2
    assert "--out names the JSON file" in capsys.readouterr().err


def test_committed_seed_spread_is_what_its_runs_give():
    """benchmarks/results/mt10_run_seeds.json is recomputed from the committed run files it names."""
    root = Path(__file__).resolve().parents[1]
    committed = json.loads((root / "benchmarks" / "results" / "mt10_run_seeds.json").read_text())
    runs = [root / r["results"] for r in committed["runs"]]
    assert len(runs) >= 3  # the issue asks for at least three teacher seeds of the default run
    rep = json.loads(json.dumps(seed_spread(runs)))  # tuples as lists, like the file
    assert [Path(r["results"]).name for r in rep["runs"]] == [Path(r["results"]).name for r in committed["runs"]]
    for run in rep["runs"] + committed["runs"]:
        run.pop("results")  # a path: absolute here, relative to the repository in the file
    for key in ("runs", "pooled", "student_minus_teacher", "student_minus_teacher_per_seed", "core_target_met",
                "dataset_content_hash", "config"):
        assert rep[key] == committed[key], key
    check_provenance(committed["provenance"], str(root / "benchmarks" / "results" / "mt10_run_seeds.json"))
