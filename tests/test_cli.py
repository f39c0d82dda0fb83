import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from safetensors.torch import load_file

from actdistill.bench.run import check_bench_results
from actdistill.cli import main


def test_help_explains_every_subcommand(capsys):
    for cmd in ([], ["collect"], ["train-teacher"], ["evaluate"], ["run"]):
        try:
            main([*cmd, "--help"])
        except SystemExit as e:
            assert e.code == 0
        out = capsys.readouterr().out
        assert "usage: actdistill" in out


def test_user_mistakes_get_one_sentence(tmp_path, capsys):
    assert main(["collect", "--out", str(tmp_path), "--tasks", "fly-v3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("actdistill: error: Unknown task 'fly-v3'") and "\n" not in err
    assert main(["train-teacher", "--data", str(tmp_path / "none.hdf5"), "--out", str(tmp_path / "t")]) == 2
    assert "run `actdistill collect` first" in capsys.readouterr().err
    assert main(["run", "--set", "teacher.train.lr=-1", "--out", str(tmp_path / "r")]) == 2
    assert "TrainConfig.lr must be > 0" in capsys.readouterr().err
    assert main(["evaluate", "--policy", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "policy header not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing was written for a rejected config


def tiny_run_config(out: Path, sim: dict) -> dict:
    """A whole tiny `actdistill run` (tiny model, a few steps per stage) on the tasks `sim` names."""
    return {
        "out": str(out),
        "collect": {"sim": {**sim, "image_size": 32}, "demos_per_task": 1, "workers": 1, "max_steps": 150},
        "teacher": {"model": {"image_size": 32, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
                              "intermediate_size": 64, "patch_size": 8, "chunk_size": 4},
                    "train": {"steps": 6, "batch_size": 8, "checkpoint_every": 3, "warmup_steps": 1}},
        "eval": {"episodes_per_task": 1, "max_steps": 10, "workers": 1},
        "probe": {"semantic_dim": 16, "graph_dim": 16, "affinity_dim": 8, "k": 4,
                  "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 4, "warmup_steps": 1, "shift_augment": 0}},
        "distill": {"rho": 0.5, "router_dim": 8, "router_init_bias": 0.0, "soft_warmup_steps": 1,
                    "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 4, "warmup_steps": 1, "shift_augment": 0}},
        "export": {"calib_episodes_per_task": 1, "calib_rounds": 1, "max_steps": 10, "settle_steps": 2, "calib_workers": 1},
    }


def run_tiny(tmp_path: Path, sim: dict) -> subprocess.CompletedProcess:
    (tmp_path / "cfg.json").write_text(json.dumps(tiny_run_config(tmp_path / "run", sim)))
    proc = subprocess.run([sys.executable, "-m", "actdistill.cli", "run", "--config", str(tmp_path / "cfg.json"),
                           "--no-progress"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def run_on_tiny_run(tmp_path: Path, command: str, cfg: dict, name: str, *extra: str) -> subprocess.CompletedProcess:
    """`actdistill <command> --run <tmp_path>/run --config <name>.json` with `cfg` written there; it must succeed."""
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "actdistill.cli", command, "--run", str(tmp_path / "run"), "--config",
                           str(tmp_path / f"{name}.json"), *extra, "--no-progress"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A whole tiny `actdistill run` through the CLI on two MT10 tasks."""
    tmp_path = tmp_path_factory.mktemp("run")
    return tmp_path, run_tiny(tmp_path, {"tasks": ["reach-v3", "drawer-close-v3"]})


def test_tiny_end_to_end_run_through_the_cli(tiny_run):
    tmp_path, proc = tiny_run
    assert "pipeline" in proc.stdout and "closed-loop success" in proc.stdout
    # a line per stage on stderr as it goes, and no progress bar of any library under --no-progress
    assert "] train-teacher: started (" in proc.stderr and "] evaluate student: ran in " in proc.stderr
    assert "Loading weights" not in proc.stderr and "it/s]" not in proc.stderr
    res = json.loads((tmp_path / "run" / "mt10.json").read_text())
    teacher, student = res["rows"]
    assert teacher["name"] == "teacher" and teacher["episodes_per_task"] == 1
    assert set(teacher["success_per_task"]) == {"reach-v3", "drawer-close-v3"}
    assert student["name"] == "actdistill-rho0.5" and 0.0 <= student["layers_executed_frac"] <= 1.0
    assert set(student["layer_usage_per_task"]) == {"reach-v3", "drawer-close-v3"}
    assert "layer usage of the student per task" in proc.stdout
    d = res["student_minus_teacher"]  # paired over the same placements
    assert d[1] <= d[0] <= d[2] and len(res["dataset_content_hash"]) == 16
    from actdistill.provenance import check_provenance
    check_provenance(res["provenance"], "the run's mt10.json")
    assert "reproduction check: not compared" in proc.stdout  # another config than the committed run
    assert (tmp_path / "run" / "eval-actdistill-rho0.5" / "layer_usage.png").stat().st_size > 1000
    exported = load_file(str(tmp_path / "run" / "student-rho0.5" / "model.safetensors"))
    export_summary = json.loads((tmp_path / "run" / "student-rho0.5" / "header.json").read_text())["summary"]
    assert export_summary["settle"]["steps"] == 2 and export_summary["calibration"][-1]["phase"] == "settled"
    assert not any(k.startswith("probes.") for k in exported)
    # a second run reuses the finished stages
    proc = subprocess.run([sys.executable, "-m", "actdistill.cli", "run", "--config", str(tmp_path / "cfg.json"),
                           "--no-progress"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.count("reused") == 7  # every stage


def test_tiny_bench_on_a_tiny_run(tiny_run):
    """Every baseline builds, trains a few steps and is evaluated by the same evaluator; the results validate."""
    tmp_path, _ = tiny_run
    bench = {"actdistill_budgets": [0.5, 0.7], "baseline_budgets": [0.5],
             "eval": {"episodes_per_task": 2, "max_steps": 8, "workers": 1}, "latency_repeats": 3, "latency_frames": 4,
             "bootstrap_samples": 50, "scratch_compute_scale": 0.2,
             "paraphrase_episodes_per_task": 0}  # the paraphrase columns are the MT50 bench test's subject
    run_on_tiny_run(tmp_path, "bench", bench, "bench")
    res = json.loads((tmp_path / "run" / "bench" / "mt10.json").read_text())
    names = [r["name"] for r in res["rows"]]
    assert names == ["teacher", "actdistill-rho0.5", "actdistill-rho0.7", "static-prune-rho0.5",
                     "static-prune-distill-rho0.5", "router-kd-rho0.5", "early-exit-rho0.5", "scratch-rho0.5"]
    check_bench_results(res)  # the results file's schema
    assert res["split"] == "test" and {g: set(ts) for g, ts in res["groups"].items()} == {"easy": {"reach-v3", "drawer-close-v3"}}
    bench_dir = tmp_path / "run" / "bench"
    for r in res["rows"]:
        assert set(r["success_per_group"]) == {"easy"} and "success_paraphrase" not in r
    assert "layers_executed_per_group" in res["rows"][1] and (bench_dir / "group_usage.png").stat().st_size > 1000
    # the scratch model runs all of its own layers: its fraction is of the teacher's depth, with no per-group usage
    # over its own layers (which would read 1.00)
    assert "layers_executed_per_group" not in res["rows"][-1] and res["rows"][-1]["layers_executed_frac"] < 1
    assert not list(bench_dir.glob("eval-*-paraphrase-*"))
    # static pruning trained with ActDistill's losses keeps the same layers as static pruning, with other weights
    sp, spd = (json.loads((bench_dir / n / "header.json").read_text()) for n in ("static-prune-rho0.5",
                                                                                   "static-prune-distill-rho0.5"))
    assert sp["summary"]["kept_layers"] == spd["summary"]["kept_layers"] and sp["weights_hash"] != spd["weights_hash"]
    assert res["rows"][4]["layers_executed_frac"] == res["rows"][3]["layers_executed_frac"]
    for r in res["rows"]:
        assert r["episodes_per_task"] == 2 and r["policy_gflops"] > 0
    teacher = res["rows"][0]
    assert teacher["speedup"] == 1.0 and teacher["ideal_speedup"] == 1.0 and teacher["layers_executed_frac"] == 1.0
    assert (tmp_path / "run" / "bench" / "pareto.png").stat().st_size > 1000
    assert (tmp_path / "run" / "bench" / "eval-actdistill-rho0.5" / "layer_usage.png").stat().st_size > 1000
    # the scratch model's training compute matches the teacher's plus the distillation's (settling included), times the scale
    c = res["training_compute"]
    assert c["settle"]["steps"] == 2
    scratch, target = c["scratch-rho0.5"], 0.2 * (c["teacher"]["pflops"] + c["distill"]["pflops"] + c["settle"]["pflops"])
    assert abs(scratch["pflops"] - target) <= 0.5 * scratch["pflops"] / scratch["steps"]  # within half a step
    assert res["rows"][-1]["peak_memory_mb"] > 0
    # the scratch model's executed fraction is its depth over the teacher's, which its decoder FLOPs confirm
    scratch_row = res["rows"][-1]
    assert scratch_row["layers_executed_frac"] < 1
    assert scratch_row["decoder_gflops"] / teacher["decoder_gflops"] == pytest.approx(scratch_row["layers_executed_frac"])
    # router-KD gets the same calibration and settling as the ActDistill student, with its own loss
    kd = json.loads((tmp_path / "run" / "bench" / "router-kd-rho0.5" / "header.json").read_text())["summary"]
    assert kd["settle"]["steps"] == 2 and kd["calibration"][-1]["phase"] == "settled"


def test_tiny_bench_with_two_training_seeds(tiny_run):
    """--seeds 2 trains every trained row twice (seed 1 in its own folders, other weights), runs early exit once,
    pools each method's seeds into one row with the per-seed values, and pairs differences seed by seed."""
    tmp_path, _ = tiny_run
    bench = {"actdistill_budgets": [0.5], "baseline_budgets": [0.5],
             "eval": {"episodes_per_task": 2, "max_steps": 8, "workers": 1}, "latency_repeats": 3, "latency_frames": 4,
             "bootstrap_samples": 50, "scratch_compute_scale": 0.2,  # seed 0 rows are reused from the test above
             "baselines": ["static-prune", "router-kd", "early-exit", "scratch"], "paraphrase_episodes_per_task": 0}
    run_on_tiny_run(tmp_path, "bench", bench, "bench2", "--seeds", "2")
    res = json.loads((tmp_path / "run" / "bench" / "mt10.json").read_text())
    check_bench_results(res)
    rows = {r["name"]: r for r in res["rows"]}
    assert list(rows) == ["teacher", "actdistill-rho0.5", "static-prune-rho0.5", "router-kd-rho0.5", "early-exit-rho0.5",
                          "scratch-rho0.5"]
    for name in ("actdistill-rho0.5", "static-prune-rho0.5", "router-kd-rho0.5", "scratch-rho0.5"):
        assert rows[name]["seeds"] == 2 and len(rows[name]["seed_success"]) == 2
    assert rows["early-exit-rho0.5"]["seeds"] == 1 and rows["teacher"]["seeds"] == 1
    for name in ("static-prune-rho0.5", "router-kd-rho0.5", "early-exit-rho0.5", "scratch-rho0.5"):
        d, per = rows[name]["delta_vs_actdistill"], rows[name]["delta_vs_actdistill_per_seed"]
        assert len(per) == 2 and d[0] == pytest.approx(sum(per) / 2)
    seeds = {(r["group"], r["seed"]): r for r in res["seed_rows"]}
    # every row but the teacher minus the teacher, each training seed on the same placements as the teacher
    assert "delta_vs_teacher" not in rows["teacher"] and len(rows["early-exit-rho0.5"]["delta_vs_teacher_per_seed"]) == 1
    teacher_eps = seeds[("teacher", 0)]["per_episode_success"]
    for k in (0, 1):
        mine = seeds[("actdistill-rho0.5", k)]["per_episode_success"]
        by_hand = sum(sum(mine[t]) / len(mine[t]) - sum(teacher_eps[t]) / len(teacher_eps[t]) for t in mine) / len(mine)
        assert rows["actdistill-rho0.5"]["delta_vs_teacher_per_seed"][k] == pytest.approx(by_hand)
    assert seeds[("router-kd-rho0.5", 1)]["name"] == "router-kd-rho0.5-seed1"
    bench_dir = tmp_path / "run" / "bench"
    for a, b in (("distill-rho0.5-seed1", tmp_path / "run" / "distill-rho0.5"), ("router-kd-rho0.5-seed1", bench_dir / "router-kd-rho0.5")):
        h1 = json.loads((bench_dir / a / "header.json").read_text())
        h0 = json.loads((b / "header.json").read_text())
        assert h1["weights_hash"] != h0["weights_hash"]  # another seed, other weights
    assert "seed" in (bench_dir / "mt10.md").read_text().splitlines()[0]


def test_a_bench_run_in_parts_merges_into_the_whole_bench(tiny_run):
    """Seeds 0 and 1 benched as two parts (--seed-list) and merged give the rows of the 2-seed bench: the same pooled
    successes and CIs, per-seed values and seed-paired differences; parts of another bench, members with other
    episodes and files from before merging existed are refused in one sentence."""
    tmp_path, _ = tiny_run
    bench = {"actdistill_budgets": [0.5], "baseline_budgets": [0.5],
             "eval": {"episodes_per_task": 2, "max_steps": 8, "workers": 1}, "latency_repeats": 3, "latency_frames": 4,
             "bootstrap_samples": 50, "scratch_compute_scale": 0.2,  # the same rows as the 2-seed test: all reused
             "baselines": ["static-prune", "router-kd", "early-exit", "scratch"], "paraphrase_episodes_per_task": 0}
    bench_dir = tmp_path / "run" / "bench"
    run_on_tiny_run(tmp_path, "bench", bench, "whole", "--seeds", "2")
    whole = json.loads((bench_dir / "mt10.json").read_text())
    parts = []
    for k in (0, 1):
        proc = run_on_tiny_run(tmp_path, "bench", bench, f"part{k}", "--seeds", "2", "--seed-list", str(k))
        assert f"part kept as {bench_dir / 'parts' / f'mt10_seed{k}.json'}" in proc.stdout
        parts.append(bench_dir / "parts" / f"mt10_seed{k}.json")  # each part kept aside by its own bench
        assert parts[-1].read_bytes() == (bench_dir / "mt10.json").read_bytes()
        assert parts[-1].with_suffix(".md").read_bytes() == (bench_dir / "mt10.md").read_bytes()
    p0, p1 = (json.loads(p.read_text()) for p in parts)
    assert {(r["group"], r["seed"]) for r in p1["seed_rows"]} == {
        ("teacher", 0), ("actdistill-rho0.5", 1), ("static-prune-rho0.5", 1), ("router-kd-rho0.5", 1),
        ("scratch-rho0.5", 1)}  # early exit trains nothing: it goes with seed 0
    assert all(r["seeds"] == 1 for r in p0["rows"]) and all("per_episode_success" in r for r in p1["seed_rows"])
    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, "-m", "actdistill.cli", "bench-merge", *map(str, parts), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = json.loads((out / "mt10.json").read_text())
    check_bench_results(merged)
    w, m = ({r["name"]: r for r in res["rows"]} for res in (whole, merged))
    assert list(m) == list(w)
    for name, row in w.items():
        for key in ("success_mean", "success_ci95", "seeds", "seed_success", "success_per_task", "layers_executed_frac",
                    "decoder_gflops", "policy_gflops"):
            assert m[name][key] == pytest.approx(row[key]), (name, key)
        if "delta_vs_actdistill" in row:
            assert m[name]["delta_vs_actdistill"] == pytest.approx(row["delta_vs_actdistill"])
            assert m[name]["delta_vs_actdistill_per_seed"] == pytest.approx(row["delta_vs_actdistill_per_seed"])
    assert m["router-kd-rho0.5"]["seeds"] == 2 and m["early-exit-rho0.5"]["seeds"] == 1
    assert [len(p["members"]) for p in merged["parts"]] == [len(p0["seed_rows"]), len(p1["seed_rows"]) - 1]
    assert (out / "mt10.md").is_file() and (out / "pareto.png").stat().st_size > 1000

    def refused(part: dict, name: str) -> str:
        path = tmp_path / name
        path.write_text(json.dumps(part))
        proc = subprocess.run([sys.executable, "-m", "actdistill.cli", "bench-merge", str(parts[0]), str(path), "--out",
                               str(tmp_path / "refused")], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and not (tmp_path / "refused").exists(), proc.stderr[-2000:]
        return proc.stderr.strip()

    other_teacher = json.loads(json.dumps(p1))
    other_teacher["inputs"]["teacher"] = "0" * 16
    assert "differ in their teacher weights" in refused(other_teacher, "other_teacher.json")
    other_episodes = json.loads(json.dumps(p1))
    teacher = next(r for r in other_episodes["seed_rows"] if r["name"] == "teacher")
    first = next(iter(teacher["per_episode_success"]))
    teacher["per_episode_success"][first][0] = 1 - teacher["per_episode_success"][first][0]
    assert "both hold 'teacher' with different episodes" in refused(other_episodes, "other_episodes.json")
    old = {k: v for k, v in p1.items() if k != "inputs"}
    assert "lacks 'inputs'" in refused(old, "old.json")


def test_tiny_ablation_on_validation_placements(tiny_run):
    """Each variant is distilled (or trained, router-KD), exported and evaluated on validation placements only, and
    paired with the full method; quantile gating and the stream normalisations run end to end."""
    tmp_path, _ = tiny_run
    proc = subprocess.run([sys.executable, "-m", "actdistill.cli", "ablate", "--run", str(tmp_path / "run"), "--rho", "0.5",
                           "--episodes", "2", "--variants", "full", "sem-executed", "router-kd", "quantile", "norm-initial",
                           "full+settle", "consistency-reword", "snap", "--perturbations", "brightness",
                           "--set", "eval.max_steps=8", "--set", "eval.workers=1", "--set", "bootstrap_samples=50",
                           "--no-progress"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "ablation-rho0.5" / "ablation.json").read_text())
    rows = {r["variant"]: r for r in res["rows"]}
    assert list(rows) == ["full", "sem-executed", "router-kd", "quantile", "norm-initial", "full+settle", "consistency-reword", "snap"]
    # full at the run's own budget reuses the run's distilled student; a variant without '+settle' is not settled
    # (the run settles), so it is exported again, and full+settle then reuses that distillation as well
    assert not (tmp_path / "run" / "ablation-rho0.5" / "full" / "distill").exists()
    stages = {s["stage"]: s["status"] for s in res["stages"]}
    assert stages["full: distill"] == stages["full+settle: distill"] == "reused"
    assert rows["full"]["overrides"]["export.settle_steps"] == 0 and rows["full+settle"]["calibration"][-1]["phase"] == "settled"
    d = json.loads((tmp_path / "run" / "ablation-rho0.5" / "consistency-reword" / "distill" / "header.json").read_text())["summary"]
    assert d["final"]["cons"] >= 0  # the router-consistency term (its view reworded) was part of the objective
    # every variant also under the perturbation, paired with its own clean run and with full under it
    for name, r in rows.items():
        cell = r["perturbed"]["brightness"]
        assert len(cell["drop_vs_clean"]) == 3 and ("delta_vs_reference" in cell) == (name != "full")
    assert "| consistency-reword | brightness |" in (tmp_path / "run" / "ablation-rho0.5" / "ablation.md").read_text()
    # snapping: the first calibration round fixes nearly constant gates, and the snapped student is measured again
    cal = rows["snap"]["calibration"]
    assert len(cal) >= 2 and "snapped_on" in cal[0] and len(cal[0]["on_rate_per_layer"]) == 2
    # full+settle differs from full only in its export: it reuses full's distilled student
    assert not (tmp_path / "run" / "ablation-rho0.5" / "full-settle" / "distill").exists()
    assert (tmp_path / "run" / "ablation-rho0.5" / "full-settle" / "student" / "header.json").is_file()
    assert res["split"] == "val" and "provenance" in res
    for name, r in rows.items():
        assert all(s >= 200_000_000 for s in r["placement_seeds"])  # validation placements, not test ones
        assert ("delta_vs_reference" in r) == (name != "full")
    assert rows["router-kd"]["kind"] == "router-kd" and rows["quantile"]["overrides"]["distill.gating"] == "quantile"
    # quantile gating: one calibration round that measures and never shifts
    q = json.loads((tmp_path / "run" / "ablation-rho0.5" / "quantile" / "student" / "header.json").read_text())["summary"]
    assert [c["phase"] for c in q["calibration"]].count("calibrate") == 1
    d = json.loads((tmp_path / "run" / "ablation-rho0.5" / "norm-initial" / "distill" / "header.json").read_text())["summary"]
    assert len(d["initial_streams"]) == 2 and d["initial_streams"][1] > 0  # the streams' size with a random rho of layers
    assert "delta vs full" in (tmp_path / "run" / "ablation-rho0.5" / "ablation.md").read_text()
    # another reference, without the unsettled full row: every stage is reused and the rows pair with full+settle
    again = subprocess.run([sys.executable, "-m", "actdistill.cli", "ablate", "--run", str(tmp_path / "run"), "--rho", "0.5",
                            "--episodes", "2", "--variants", "full+settle", "quantile", "--reference", "full+settle",
                            "--set", "eval.max_steps=8", "--set", "eval.workers=1", "--set", "bootstrap_samples=50",
                            "--no-progress"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    res2 = json.loads((tmp_path / "run" / "ablation-rho0.5" / "ablation.json").read_text())
    assert res2["reference"] == "full+settle" and {s["status"] for s in res2["stages"]} == {"reused"}
    # two training seeds: seed 0 of each variant is the one made above, seed 1 is trained in its own folder, and
    # every difference is seed-paired (the per-seed differences average to the point estimate)
    seeded = subprocess.run([sys.executable, "-m", "actdistill.cli", "ablate", "--run", str(tmp_path / "run"), "--rho", "0.5",
                             "--episodes", "2", "--variants", "full+settle", "router-kd", "--reference", "full+settle",
                             "--seeds", "2", "--perturbations", "brightness", "--set", "eval.max_steps=8",
                             "--set", "eval.workers=1", "--set", "bootstrap_samples=50", "--no-progress"],
                            capture_output=True, text=True, timeout=600)
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    res3 = json.loads((tmp_path / "run" / "ablation-rho0.5" / "ablation.json").read_text())
    stages = {s["stage"]: s["status"] for s in res3["stages"]}
    assert stages["full+settle: export"] == stages["router-kd: train + export"] == "reused"
    assert stages["full+settle (seed 1): distill"] == stages["router-kd (seed 1): train + export"] == "ran"
    assert (tmp_path / "run" / "ablation-rho0.5" / "full-settle-seed1" / "distill" / "header.json").is_file()
    d1 = json.loads((tmp_path / "run" / "ablation-rho0.5" / "full-settle-seed1" / "distill" / "config.json").read_text())
    assert d1["distill"]["train"]["seed"] == res3["config"]["run"]["distill"]["train"]["seed"] + 1
    rows3, rows2 = {r["variant"]: r for r in res3["rows"]}, {r["variant"]: r for r in res2["rows"]}
    assert rows3["full+settle"]["seed_success"][0] == rows2["full+settle"]["success_mean"]
    kd = rows3["router-kd"]
    assert kd["seeds"] == 2 and len(kd["delta_vs_reference_per_seed"]) == 2
    assert kd["delta_vs_reference"][0] == pytest.approx(sum(kd["delta_vs_reference_per_seed"]) / 2)
    assert len(kd["perturbed"]["brightness"]["seed_success"]) == 2 and "delta_vs_reference" in kd["perturbed"]["brightness"]
    assert "per training seed" in (tmp_path / "run" / "ablation-rho0.5" / "ablation.md").read_text()
    rows2 = {r["variant"]: r for r in res2["rows"]}
    assert "delta_vs_reference" not in rows2["full+settle"]
    d = rows2["quantile"]["delta_vs_reference"]
    assert abs(d[0] - (rows2["quantile"]["success_mean"] - rows2["full+settle"]["success_mean"])) < 1e-9
    assert "delta vs full+settle" in (tmp_path / "run" / "ablation-rho0.5" / "ablation.md").read_text()
    # a reference that is not one of the variants is refused before any work
    bad_ref = subprocess.run([sys.executable, "-m", "actdistill.cli", "ablate", "--run", str(tmp_path / "run"),
                              "--variants", "quantile", "--reference", "full"], capture_output=True, text=True, timeout=300)
    assert bad_ref.returncode == 2 and "must be one of the variants" in bad_ref.stderr
    # a test-split evaluation is refused before any work
    bad = subprocess.run([sys.executable, "-m", "actdistill.cli", "ablate", "--run", str(tmp_path / "run"),
                          "--set", "eval.split=test"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "validation placements" in bad.stderr


def test_tiny_robustness_table_on_a_tiny_run(tiny_run):
    """Teacher, student and the same-budget baselines, clean and perturbed on the same test placements; the table,
    the drop comparisons, the gate statistics and the plots come out of one command."""
    tmp_path, _ = tiny_run
    # a variant chosen on validation placements (reused when the ablation test made it already) is a row too
    ab = subprocess.run([sys.executable, "-m", "actdistill.cli", "ablate", "--run", str(tmp_path / "run"), "--rho", "0.5",
                         "--episodes", "2", "--variants", "full", "consistency", "--set", "eval.max_steps=8", "--set",
                         "eval.workers=1", "--set", "bootstrap_samples=50", "--no-progress"],
                        capture_output=True, text=True, timeout=900)
    assert ab.returncode == 0, ab.stderr[-3000:]
    cfg = {"budgets": [0.5], "perturbations": ["image-noise-high", "paraphrase-1"], "bootstrap_samples": 50,
           "variants": ["consistency"], "eval": {"episodes_per_task": 2, "max_steps": 6, "workers": 1, "trace": True}}
    run_on_tiny_run(tmp_path, "robustness", cfg, "robust")
    out = tmp_path / "run" / "robustness"
    res = json.loads((out / "robustness.json").read_text())
    names = {"teacher", "actdistill-rho0.5", "static-prune-rho0.5", "router-kd-rho0.5", "actdistill+consistency-rho0.5"}
    cells = {(r["policy"], r["condition"]) for r in res["rows"]}
    assert cells == {(n, c) for n in names for c in ("clean", "image-noise-high", "paraphrase-1")}
    seeds = {json.dumps(json.loads((out / c / f"eval-{n}" / "results.json").read_text())["placement_seeds"])
             for n in names for c in ("clean", "image-noise-high")}
    assert len(seeds) == 1 and min(json.loads(seeds.pop())) >= 10_000_000  # the same test placements in every cell
    for r in res["rows"]:
        assert ("drop_vs_clean" in r) == (r["condition"] != "clean")
    comp = {c["perturbation"]: c for c in res["student_vs_reference"] if c["student"] == "actdistill-rho0.5"}
    assert set(comp) == {"image-noise-high", "paraphrase-1"}
    assert {c["student"] for c in res["student_vs_reference"]} == {"actdistill-rho0.5", "actdistill+consistency-rho0.5"}
    assert {"minus_teacher", "minus_static-prune-rho0.5", "minus_router-kd-rho0.5"} <= set(comp["paraphrase-1"])
    gs = res["gate_stability"]["actdistill-rho0.5"]
    assert len(gs["image-noise-high"]["flip_rate_per_layer"]) == 2 and "flip_rate_per_layer" not in gs["clean"]
    assert "teacher" not in res["gate_stability"]
    fails = res["where_routing_fails"]["actdistill-rho0.5"]
    assert fails["steps_near_gripper_events"] + fails["steps_elsewhere"] > 0
    eps = json.loads((out / "clean" / "eval-actdistill-rho0.5" / "episodes.json").read_text())
    assert all(len(e["trace"]["layers"]) == e["steps"] == len(e["trace"]["gripper"]) for e in eps)
    assert (out / "gate_flips_actdistill-rho0.5.png").stat().st_size > 1000
    assert "minus teacher" in (out / "robustness.md").read_text()
    # trained rows are shared with the bench (run/bench); the robustness evaluations live in their own folders
    assert (tmp_path / "run" / "bench" / "static-prune-rho0.5" / "header.json").is_file()
    assert (out / "clean" / "eval-static-prune-rho0.5" / "header.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "actdistill.cli", "robustness", "--run", str(tmp_path / "run"),
                          "--perturbations", "fog"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Unknown perturbation 'fog'" in bad.stderr and bad.stderr.count("\n") == 1
    missing = subprocess.run([sys.executable, "-m", "actdistill.cli", "robustness", "--run", str(tmp_path / "run"),
                              "--variants", "hybrid"], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "actdistill ablate" in missing.stderr and missing.stderr.count("\n") == 1


def test_evaluate_refuses_an_unknown_perturbation_before_any_episode(tiny_teacher, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "actdistill.cli", "evaluate", "--policy", str(tiny_teacher), "--out",
                           str(tmp_path / "ev"), "--perturb", "image-noise:500"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "must be in [0, 128]" in proc.stderr and not (tmp_path / "ev").exists()


def test_a_programming_error_keeps_its_traceback(monkeypatch):
    """A KeyError inside a command is a bug, not a user mistake: it is not turned into a one-sentence error."""
    import actdistill.cli as cli

    def broken(args):
        raise KeyError("a key the code misspelled")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["collect"].set_defaults(func=broken)
    with pytest.raises(KeyError, match="misspelled"):
        main(["collect", "--out", "x"])


def test_a_registered_baseline_becomes_a_bench_row(tiny_run):
    """Adding a baseline is one function and a registration: the bench runs it at every baseline budget, pairs it
    with ActDistill and reports it like the built-in rows."""
    from actdistill.bench.rows import BASELINES, register_baseline
    from actdistill.bench.run import run_bench
    from actdistill.config import BenchConfig, EvalConfig

    tmp_path, _ = tiny_run

    @register_baseline("full-depth")
    def full_depth(bench, rho, k, frac):  # the teacher itself, as a (trivial) baseline
        bench.evaluate_row(bench.member("full-depth", rho, k), bench.teacher_dir, bench.teacher_hash)

    try:
        cfg = BenchConfig(actdistill_budgets=(0.5, 0.7), baseline_budgets=(0.5,), latency_repeats=3, latency_frames=4,
                          bootstrap_samples=50, scratch_compute_scale=0.2, paraphrase_episodes_per_task=0,
                          eval=EvalConfig(episodes_per_task=2, max_steps=8, workers=1))
        res = run_bench(tmp_path / "run", cfg, progress=False)
    finally:
        del BASELINES["full-depth"]
    rows = {r["name"]: r for r in res["rows"]}
    assert "full-depth-rho0.5" in rows and rows["full-depth-rho0.5"]["rho"] == 0.5
    assert rows["full-depth-rho0.5"]["method"] == "full-depth" and "delta_vs_actdistill" in rows["full-depth-rho0.5"]
    assert list(rows)[-1] == "scratch-rho0.5"  # registered rows run before the `last` ones


def test_tiny_mt50_bench_reports_difficulty_groups_and_paraphrases(tmp_path):
    """MT50 as a suite of its own, end to end: a tiny run on two tasks of different difficulty groups, then a bench
    whose results (mt50.json) carry success per group, layer use per group and success under the paraphrases."""
    run_tiny(tmp_path, {"suite": "mt50", "tasks": ["coffee-button-v3", "push-v3"]})
    run = json.loads((tmp_path / "run" / "mt50.json").read_text())
    assert run["benchmark"] == "metaworld-MT50" and set(run["rows"][0]["success_per_group"]) == {"easy", "hard"}
    bench = {"actdistill_budgets": [0.5], "baseline_budgets": [0.5], "baselines": ["static-prune-distill", "early-exit"],
             "paraphrase_episodes_per_task": 1, "eval": {"episodes_per_task": 1, "max_steps": 6, "workers": 1},
             "latency_repeats": 2, "latency_frames": 2, "bootstrap_samples": 20}
    proc = run_on_tiny_run(tmp_path, "bench", bench, "bench")
    out = tmp_path / "run" / "bench"
    res = json.loads((out / "mt50.json").read_text())
    check_bench_results(res)
    assert res["benchmark"] == "metaworld-MT50" and res["groups"] == {"easy": ["coffee-button-v3"], "hard": ["push-v3"]}
    assert [r["name"] for r in res["rows"]] == ["teacher", "actdistill-rho0.5", "static-prune-distill-rho0.5",
                                                "early-exit-rho0.5"]
    for r in res["rows"]:  # every row, also under both held-out paraphrases, paired with its own first placement
        assert set(r["success_per_group"]) == {"easy", "hard"} and r["paraphrase_episodes_per_task"] == 1
        assert len(r["success_paraphrase_each"]) == 2 and 0 <= r["success_paraphrase"] <= 1
        for k in (1, 2):
            assert json.loads((out / f"eval-{r['name']}-paraphrase-{k}" / "results.json").read_text())[
                "perturb"] == f"paraphrase-{k}"
    assert set(res["rows"][1]["layers_executed_per_group"]) == {"easy", "hard"}
    md = (out / "mt50.md").read_text()
    assert (out / "group_usage.png").stat().st_size > 1000 and "easy success" in md and "paraphrase success" in md
    assert "mt50.json" in proc.stdout and not (out / "mt10.json").exists()
    unknown = subprocess.run([sys.executable, "-m", "actdistill.cli", "bench", "--run", str(tmp_path / "run"), "--set",
                              "baselines=[\"pruning\"]"], capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "Unknown baseline(s) 'pruning'" in unknown.stderr


def test_a_run_distils_on_a_smaller_set_than_its_teacher_trained_on(tmp_path):
    """RunConfig.distill_demos_per_task: the teacher trains on every demo, the probes, the distillation, the settling
    and the bench rows on the first k per task (a set collected alone, which holds the same first demos)."""
    from actdistill.bench.rows import RunArtifacts
    from actdistill.config import ConfigError, RunConfig
    from actdistill.data.hdf5 import read_demos

    cfg = tiny_run_config(tmp_path / "run", {"tasks": ["reach-v3", "drawer-close-v3"]})
    cfg["collect"]["demos_per_task"], cfg["distill_demos_per_task"] = 2, 1
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "actdistill.cli", "run", "--config", str(tmp_path / "cfg.json"),
                           "--no-progress"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    full, small = read_demos(run / "collect" / "demos.hdf5"), read_demos(run / "collect-distill" / "demos.hdf5")
    assert len(full.demos) == 4 and len(small.demos) == 2
    for d in small.demos:  # the first demo of its task in the teacher's set, byte for byte
        first = next(f for f in full.demos if f.task == d.task)
        assert d.placement_seed == first.placement_seed and np.array_equal(d.images, first.images)
        assert np.array_equal(d.actions, first.actions)
    header = lambda stage: json.loads((run / stage / "header.json").read_text())  # noqa: E731
    assert header("teacher")["inputs"]["dataset"] == full.fingerprint
    assert header("probe")["inputs"]["dataset"] == small.fingerprint
    res = json.loads((run / "mt10.json").read_text())
    assert res["dataset_content_hash"] == full.content_hash
    assert res["distillation_dataset_content_hash"] == small.content_hash
    assert "] collect distillation set: ran in " in proc.stderr
    assert RunArtifacts(run).data_path == run / "collect-distill" / "demos.hdf5"
    with pytest.raises(ConfigError, match="distill_demos_per_task must be 0"):
        RunConfig.from_dict({**cfg, "distill_demos_per_task": 2})
