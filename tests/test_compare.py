"""`actdistill compare`: evaluations on the same placements, per difficulty group, paired against the first."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from actdistill.artifacts import ArtifactError
from actdistill.bench.compare import compare, compare_table
from actdistill.cli import main
from actdistill.errors import ConfigError
from actdistill.evaluate import wilson_ci
from actdistill.provenance import check_provenance

from tests.helpers.results_files import write_in_folders

# three MT50 tasks from three of its difficulty groups: reach (easy), bin-picking (medium), stick-pull (very hard)
TASKS = ("reach-v3", "bin-picking-v3", "stick-pull-v3")
VAL = [200_000_000 + i for i in range(4)]


def _row(name: str, episodes: dict[str, list[int]], placements=VAL, layers: float | None = None) -> dict:
    per_task = {t: float(np.mean(v)) for t, v in episodes.items()}
    k, n = sum(sum(v) for v in episodes.values()), sum(len(v) for v in episodes.values())
    row = {"name": name, "per_episode_success": episodes, "success_per_task": per_task,
           "success_mean": float(np.mean(list(per_task.values()))), "success_ci95": list(wilson_ci(k, n)),
           "episodes_per_task": 4, "placement_seeds": list(placements)}
    if layers is not None:
        row["layers_executed_frac"] = layers
    return row


DEEP = _row("policy", {"reach-v3": [1, 1, 1, 1], "bin-picking-v3": [1, 0, 1, 0], "stick-pull-v3": [1, 1, 0, 0]})
SHALLOW = _row("policy", {"reach-v3": [1, 1, 1, 1], "bin-picking-v3": [0, 0, 0, 0], "stick-pull-v3": [1, 0, 0, 0]})


def _write(tmp_path, *rows: dict) -> list:
    return write_in_folders(tmp_path, "eval-", "results.json", rows)


def test_compare_reports_groups_and_paired_differences(tmp_path):
    rep = compare(_write(tmp_path, DEEP, SHALLOW), samples=500)
    assert rep["benchmark"] == "metaworld-MT50" and rep["split"] == "validation" and rep["episodes_per_task"] == 4
    assert rep["groups"] == {"easy": ["reach-v3"], "medium": ["bin-picking-v3"], "very_hard": ["stick-pull-v3"]}
    deep, shallow = rep["rows"]
    assert [deep["name"], shallow["name"]] == ["eval-0", "eval-1"]  # both evaluated as "policy": the folder names
    assert deep["success_per_group"] == {"easy": 1.0, "medium": 0.5, "very_hard": 0.5}
    assert shallow["layers_executed_frac"] == 1.0
    (d,) = rep["differences"]
    # shallow minus deep: 0 on reach, -0.5 on bin-picking, -0.25 on stick-pull; overall the mean over tasks, -0.25
    assert d["overall"][0] == pytest.approx(-0.25)
    assert d["per_group"]["easy"] == [0.0, 0.0, 0.0]  # identical episodes: no spread at all
    assert d["per_group"]["medium"][0] == pytest.approx(-0.5) and d["per_task"]["bin-picking-v3"][0] == pytest.approx(-0.5)
    assert d["per_group"]["very_hard"][1] < -0.25 < d["per_group"]["very_hard"][2] <= 0.0
    assert d["overall"][1] < -0.25 < d["overall"][2] < 0.0
    check_provenance(rep["provenance"], "the comparison")


def test_compare_counts_a_smaller_models_layers_against_the_references_depth(tmp_path):
    # a 12-layer teacher, a routed student running 5 of its 12 on average, a 6-layer model from scratch: each reports
    # its executed fraction over its own layers (1.0, 5/12, 1.0); the comparison puts all three on the teacher's scale
    def usage(n_layers, frac):
        return {t: [frac] * n_layers for t in TASKS}
    teacher = {**DEEP, "layers_executed_frac": 1.0, "layer_usage_per_task": usage(12, 1.0)}
    student = {**SHALLOW, "layers_executed_frac": 5 / 12, "layer_usage_per_task": usage(12, 5 / 12)}
    scratch = {**SHALLOW, "layers_executed_frac": 1.0, "layer_usage_per_task": usage(6, 1.0)}
    rep = compare(_write(tmp_path, teacher, student, scratch), names=["teacher", "student", "scratch-l6"], samples=200)
    rows = {r["name"]: r for r in rep["rows"]}
    assert [rows[n]["decoder_layers"] for n in ("teacher", "student", "scratch-l6")] == [12, 12, 6]
    assert rows["student"]["layers_per_call"] == pytest.approx(5.0)
    assert rows["scratch-l6"]["layers_per_call"] == pytest.approx(6.0)
    assert rows["scratch-l6"]["layers_executed_frac"] == pytest.approx(0.5)
    assert rows["student"]["layers_executed_frac"] == pytest.approx(5 / 12)
    table = compare_table(rep)
    assert "| scratch-l6 | " in table and "| 6.0 of 6 | 0.50 |" in table


def test_compare_refuses_what_is_not_paired(tmp_path):
    with pytest.raises(ConfigError, match="at least two evaluations"):
        compare(_write(tmp_path / "a", DEEP))
    test_placements = _row("other", DEEP["per_episode_success"], placements=[10_000_000 + i for i in range(4)])
    with pytest.raises(ArtifactError, match="other placements"):
        compare(_write(tmp_path / "b", DEEP, test_placements))
    fewer = copy.deepcopy(SHALLOW)
    fewer["per_episode_success"]["reach-v3"] = [1, 1]
    with pytest.raises(ArtifactError, match="2 episodes of reach-v3 where .* has 4"):
        compare(_write(tmp_path / "c", DEEP, fewer))
    other_tasks = _row("other", {"reach-v3": [1, 1, 1, 1]})
    with pytest.raises(ArtifactError, match="other tasks"):
        compare(_write(tmp_path / "d", DEEP, other_tasks))
    with pytest.raises(ArtifactError, match="holds no results.json"):
        compare([tmp_path / "missing", tmp_path / "missing"])
    no_episodes = {k: v for k, v in SHALLOW.items() if k != "per_episode_success"}
    with pytest.raises(ArtifactError, match="lacks per_episode_success"):
        compare(_write(tmp_path / "e", DEEP, no_episodes))
    with pytest.raises(ConfigError, match="one per evaluation"):
        compare(_write(tmp_path / "f", DEEP, SHALLOW), names=["only-one"])
    with pytest.raises(ConfigError, match="same name"):
        compare(_write(tmp_path / "g", DEEP, SHALLOW), names=["x", "x"])


def test_compare_cli_writes_the_report(tmp_path, capsys):
    paths = _write(tmp_path, DEEP, _row("student", SHALLOW["per_episode_success"], layers=0.25))
    out = tmp_path / "report" / "depth.json"
    assert main(["compare", *map(str, paths), "--names", "teacher-l12", "scratch-l3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| scratch-l3 - teacher-l12 | -0.250 [" in printed and "validation placements" in printed
    rep = json.loads(out.read_text())
    assert [r["name"] for r in rep["rows"]] == ["teacher-l12", "scratch-l3"] and rep["rows"][1]["layers_executed_frac"] == 0.25
    assert "| teacher-l12 | 0.667" in out.with_suffix(".md").read_text()
    assert main(["compare", *map(str, paths), "--out", str(tmp_path / "depth.md")]) == 2
    assert "--out names the JSON file" in capsys.readouterr().err


def test_compare_under_a_perturbation_pairs_each_drop_with_the_references(tmp_path):
    # the teacher loses one stick-pull episode under the perturbation; the student loses two bin-picking episodes
    # and the same stick-pull one: its drop is 2/4 on bin-picking beyond the teacher's, 1/6 over the three tasks
    teacher_clean, student_clean = DEEP, DEEP
    teacher = _row("t", {"reach-v3": [1, 1, 1, 1], "bin-picking-v3": [1, 0, 1, 0], "stick-pull-v3": [0, 1, 0, 0]})
    student = _row("s", {"reach-v3": [1, 1, 1, 1], "bin-picking-v3": [0, 0, 0, 0], "stick-pull-v3": [0, 1, 0, 0]})
    perturbed = _write(tmp_path / "p", teacher, student)
    clean = _write(tmp_path / "c", teacher_clean, student_clean)
    rep = compare(perturbed, samples=500, clean=clean)
    t, s = rep["rows"]
    assert t["clean_success_mean"] == s["clean_success_mean"] == DEEP["success_mean"]
    assert t["drop_vs_clean"][0] == pytest.approx(0.25 / 3) and s["drop_vs_clean"][0] == pytest.approx(0.75 / 3)
    (d,) = rep["differences"]
    assert d["drop_minus_reference_drop"][0] == pytest.approx(0.5 / 3)
    assert d["drop_minus_reference_drop"][1] <= 0.5 / 3 <= d["drop_minus_reference_drop"][2]
    with pytest.raises(ConfigError, match="--clean gives 1 evaluation"):
        compare(perturbed, clean=clean[:1])
    elsewhere = _row("c", DEEP["per_episode_success"], placements=[10_000_000 + i for i in range(4)])
    with pytest.raises(ArtifactError, match="other placements"):
        compare(perturbed, clean=[clean[0], _write(tmp_path / "x", elsewhere)[0]])
    out = tmp_path / "drops.json"
    assert main(["compare", *map(str, perturbed), "--clean", *map(str, clean), "--names", "teacher", "student",
                 "--out", str(out)]) in (0, None)
    table = out.with_suffix(".md").read_text()
    assert "drop vs clean" in table and "| student - teacher | -0.167" in table and "+0.167 [" in table
