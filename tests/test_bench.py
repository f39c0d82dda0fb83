import json
from pathlib import Path

import numpy as np
import pytest

from actdistill.artifacts import ArtifactError
from actdistill.bench.run import check_bench_results, paired_bootstrap
from actdistill.provenance import provenance


def test_paired_bootstrap_point_and_interval():
    a = {"t1": [1, 1, 1, 1], "t2": [1, 0, 1, 0]}
    b = {"t1": [0, 0, 0, 0], "t2": [1, 0, 1, 0]}
    mean, lo, hi = paired_bootstrap(a, b, samples=500)
    assert mean == pytest.approx(0.5)  # task 1 differs by 1 on every placement, task 2 by 0
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)  # no variance in the paired differences
    rng = np.random.default_rng(0)
    c = {"t": rng.integers(0, 2, 30).tolist()}
    d = {"t": rng.integers(0, 2, 30).tolist()}
    mean, lo, hi = paired_bootstrap(c, d, samples=2000)
    assert lo < mean < hi and hi - lo > 0.1


def _row(name: str, **kw) -> dict:
    row = {"name": name, "success_mean": 0.5, "success_ci95": [0.4, 0.6], "success_per_task": {"t": 0.5},
           "success_hard": 0.5, "episodes_per_task": 30, "layers_executed_frac": 0.5, "decoder_gflops": 0.05,
           "policy_gflops": 0.08, "latency_ms_median": 10.0, "speedup": 1.5, "ideal_speedup": 1.7,
           "speedup_of_ideal": 0.88, "peak_memory_mb": 20.0, "seeds": 1, "seed_success": [0.5],
           "success_per_group": {"easy": 0.5}}
    row.update(kw)
    return row


def test_bench_results_check_names_what_is_wrong():
    ok = {"benchmark": "metaworld-MT10", "split": "test", "config": {}, "provenance": provenance(),
          "dataset_content_hash": "0" * 16, "hard_tasks": ["t"],
          "rows": [_row("teacher", layers_executed_frac=1.0), _row("actdistill-rho0.5"),
                   _row("static-prune-rho0.5", delta_vs_actdistill=[0.01, -0.02, 0.04], delta_vs_teacher=[-0.02, -0.05, 0.01])]}
    check_bench_results(ok)
    bad = [({"rows": ok["rows"]}, "lack the field 'benchmark'"),
           ({**ok, "rows": [{k: v for k, v in _row("teacher").items() if k != "speedup"}]}, "lacks the fields speedup"),
           ({**ok, "rows": [_row("teacher", success_ci95=[0.6, 0.7])]}, "does not bracket its mean"),
           ({**ok, "rows": [_row("actdistill-rho0.5", decoder_gflops=0.1)]}, "out of range"),
           ({**ok, "rows": [_row("router-kd-rho0.5")]}, "should carry delta_vs_actdistill"),
           ({**ok, "rows": [_row("teacher", delta_vs_actdistill=[0, 0, 0])]}, "should not carry"),
           ({**ok, "rows": [_row("early-exit-rho0.5", delta_vs_actdistill=[0.1, -0.1, 0.05])]}, "paired-difference CI"),
           ({**ok, "rows": [_row("actdistill-rho0.5", delta_vs_teacher=[-0.1, -0.05, 0.02])]}, "paired-difference CI"),
           ({**ok, "rows": [_row("teacher", delta_vs_teacher=[0, 0, 0])]}, "teacher row should not carry delta_vs_teacher"),
           ({k: v for k, v in ok.items() if k != "provenance"}, "lack the field 'provenance'"),
           ({**ok, "provenance": {"git": {}}}, "provenance record without actdistill"),
           ({k: v for k, v in ok.items() if k != "split"}, "lack the field 'split'"),
           ({**ok, "split": "val"}, "from the 'test' placements only"),
           ({**ok, "rows": [{k: v for k, v in _row("teacher").items() if k != "success_per_group"}]},
            "lacks the fields success_per_group"),
           ({**ok, "rows": [_row("teacher", success_per_group={"hard": 1.5})]}, "in group 'hard', outside"),
           ({**ok, "rows": [_row("teacher", success_paraphrase=0.9, success_paraphrase_ci95=[0.2, 0.4])]},
            "paraphrase success CI")]
    for results, message in bad:
        with pytest.raises(ArtifactError, match=message):
            check_bench_results(results)


def test_committed_mt10_results_validate():
    """The committed benchmark results have every row of the default bench and the shape the schema check promises."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "mt10.json"
    results = json.loads(path.read_text())
    # committed before provenance, training seeds, the validation split and the difficulty groups were recorded
    # (tests/test_provenance.py lists such files); the rest of the shape holds
    legacy_rows = [{"seeds": 1, "seed_success": [r["success_mean"]], "success_per_group": {}, **r} for r in results["rows"]]
    check_bench_results({"provenance": provenance(), "dataset_content_hash": None, "split": "test", **results,
                         "rows": legacy_rows})
    names = [r["name"] for r in results["rows"]]
    methods = ("static-prune", "router-kd", "early-exit", "scratch")
    expected = ["teacher"] + [f"actdistill-rho{r}" for r in (0.3, 0.5, 0.7)] + [f"{m}-rho{r}" for r in (0.3, 0.5) for m in methods]
    assert sorted(names) == sorted(expected)
    assert {r["episodes_per_task"] for r in results["rows"]} == {30}


def test_committed_settled_bench_results_validate():
    """Bench results committed since settling became the default (mt10_bench_*.json) pass the full schema check:
    provenance, test split, per-seed values and per-group success."""
    files = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "results").glob("mt10_bench_*.json"))
    assert files
    for path in files:
        results = json.loads(path.read_text())
        check_bench_results(results)
        assert results["config"]["run"]["export"]["settle_steps"] > 0 and results["split"] == "test"
        assert {r["episodes_per_task"] for r in results["rows"]} == {30}


def _episodes(per_task):
    return {t: list(v) for t, v in per_task.items()}


def test_seed_pooling_averages_seeds_and_reports_their_spread():
    from actdistill.bench.run import pool_seeds

    tasks = ("a", "b")
    members = []
    for eps in ({"a": [1, 1, 0, 0], "b": [1, 1, 1, 1]}, {"a": [1, 1, 1, 1], "b": [0, 0, 0, 1]}):
        per_task = {t: float(np.mean(v)) for t, v in eps.items()}
        members.append({"name": "x", "success_mean": float(np.mean(list(per_task.values()))), "success_per_task": per_task,
                        "per_episode_success": eps, "episodes_per_task": 4, "layers_executed_frac": 0.4})
    members[1]["layers_executed_frac"] = 0.6
    row = pool_seeds("m-rho0.5", members, tasks)
    assert row["success_per_task"] == {"a": 0.75, "b": 0.625}
    assert row["success_mean"] == pytest.approx(0.6875) and row["seed_success"] == [0.75, 0.625]
    assert row["seed_spread"]["std"] == pytest.approx(np.std([0.75, 0.625], ddof=1))
    assert row["layers_executed_frac"] == pytest.approx(0.5) and row["seeds"] == 2
    lo, hi = row["success_ci95"]
    assert lo < row["success_mean"] < hi and "per_episode_success" not in row


def test_seed_paired_difference_pairs_seeds_and_covers_their_spread():
    from actdistill.bench.run import seed_paired_difference

    rng = np.random.default_rng(0)
    base = {t: rng.integers(0, 2, 30).tolist() for t in ("a", "b")}
    # one seed on each side: exactly the episode-paired bootstrap
    one, per = seed_paired_difference([base], [base], 500)
    assert one == paired_bootstrap(base, base, 500) and per == [0.0]
    # three seeds whose differences to ActDistill are +0.3, 0 and -0.3: the point is their mean, each seed is
    # reported, and the interval spans both signs (the seeds disagree)
    ones, zeros = {t: [1] * 30 for t in base}, {t: [0] * 30 for t in base}
    mixed = {t: [1] * 9 + [0] * 21 for t in base}
    a = [mixed, mixed, mixed]
    b = [{t: [0] * 30 for t in base}, mixed, {t: [1] * 18 + [0] * 12 for t in base}]
    d, per = seed_paired_difference(a, b, 2000)
    assert per == pytest.approx([0.3, 0.0, -0.3]) and d[0] == pytest.approx(0.0)
    assert d[1] < -0.1 and d[2] > 0.1
    # a row trained once (early exit) is paired with every seed of the other side
    d1, per1 = seed_paired_difference([ones], [zeros, ones, zeros], 200)
    assert per1 == [1.0, 0.0, 1.0] and d1[0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="same number of seeds"):
        seed_paired_difference([ones, ones], [ones, ones, ones], 10)


def test_any_ablation_variant_can_be_settled():
    from actdistill.bench.ablation import SETTLE_STEPS, variant_configs
    from actdistill.config import RunConfig
    from actdistill.errors import ConfigError

    rc = RunConfig()
    kind, d, x = variant_configs("hybrid+settle", rc, 0.3)
    assert (kind, d.always_run, d.rho, x.settle_steps) == ("actdistill", 3, 0.3, SETTLE_STEPS)
    kind, d, x = variant_configs("router-kd+settle", rc, 0.3)
    assert (kind, x.settle_steps) == ("router-kd", SETTLE_STEPS)
    # a variant without the suffix is not settled, though the run's default settles
    assert rc.export.settle_steps > 0 and variant_configs("hybrid", rc, 0.3)[2].settle_steps == 0
    with pytest.raises(ConfigError, match="Unknown ablation variant 'hybrid\\+settle\\+settle'"):
        variant_configs("hybrid+settle+settle", rc, 0.3)
    # '+settle-final' settles on the task loss and the teacher's final action; '+settle' on the distillation's own
    kind, d, x = variant_configs("full+settle-final", rc, 0.3)
    assert (kind, d, x.settle_steps, x.settle_loss) == ("actdistill", variant_configs("full", rc, 0.3)[1], SETTLE_STEPS, "final")
    assert variant_configs("full+settle", rc, 0.3)[2].settle_loss == "distill"
    # the default settling objective leaves earlier export fingerprints unchanged
    assert "settle_loss" not in rc.export.to_dict() and "settle_loss" in x.to_dict()
    # ActDistill with the teacher's final action beside the fading streams, hybrid: one config, saved with the field
    kind, d, x = variant_configs("hybrid-decay-kd+settle", rc, 0.3)
    assert (kind, d.always_run, d.stream_decay, d.final_kd, x.settle_loss) == ("actdistill", 3, 1.0, 1.0, "distill")
    assert "final_kd" in d.to_dict() and "final_kd" not in rc.distill.to_dict()


def test_pooled_rows_report_success_and_layer_use_per_difficulty_group():
    from actdistill.bench.run import group_table, pool_seeds

    tasks = ("a", "b", "c")
    eps = {"a": [1, 1], "b": [0, 1], "c": [0, 0]}
    member = {"name": "x", "success_mean": 0.5, "success_per_task": {t: float(np.mean(v)) for t, v in eps.items()},
              "per_episode_success": eps, "episodes_per_task": 2, "layers_executed_frac": 0.5,
              "layer_usage_per_task": {"a": [1.0, 0.0], "b": [1.0, 1.0], "c": [0.5, 0.5]}}
    row = pool_seeds("m-rho0.5", [member], tasks, {"easy": ("a", "b"), "hard": ("c",), "empty": ()})
    assert row["success_per_group"] == {"easy": 0.75, "hard": 0.0}  # tasks weigh equally; empty groups dropped
    assert row["layers_executed_per_group"] == {"easy": 0.75, "hard": 0.5}
    table = group_table([row], ["easy", "hard"])
    assert "| m-rho0.5 | 0.750 | 0.000 | 0.75 | 0.50 |" in table


def test_paraphrase_columns_pair_each_paraphrase_episode_with_the_same_placement():
    from actdistill.bench.run import paraphrase_columns

    row = {"per_episode_success": {"a": [1, 1, 1, 0], "b": [1, 0, 1, 1]}}
    p1 = {"success_mean": 0.25, "per_episode_success": {"a": [0, 1], "b": [0, 0]}}  # the first two placements
    p2 = {"success_mean": 0.5, "per_episode_success": {"a": [1, 1], "b": [0, 0]}}
    c = paraphrase_columns(row, [p1, p2], 500)
    assert c["success_paraphrase_per_task"] == {"a": 0.75, "b": 0.0}
    assert c["success_paraphrase"] == pytest.approx(0.375) and c["success_paraphrase_each"] == [0.25, 0.5]
    assert c["paraphrase_episodes_per_task"] == 2
    # instruction on placements 0, 1 (twice): a = 1, 1, 1, 1 and b = 1, 0, 1, 0 -> 0.75 against 0.375
    assert c["instruction_minus_paraphrase"][0] == pytest.approx(0.375)
    lo, hi = c["success_paraphrase_ci95"]
    assert lo < 0.375 < hi


def test_placement_ranges_are_disjoint_and_named():
    from actdistill.config import CollectConfig
    from actdistill.errors import ConfigError
    from actdistill.sim import placement_kind, placement_seeds

    assert placement_kind(placement_seeds("demo", 99, 100_000)[-1]) == "demo"
    assert placement_kind(placement_seeds("eval", 0, 1)[0]) == "eval"
    assert placement_kind(placement_seeds("eval", 999, 100_000)[-1]) == "eval"
    assert placement_kind(placement_seeds("val", 999, 100_000)[-1]) == "val"
    assert placement_kind(150_000_000) == "other"
    with pytest.raises(ConfigError, match="outside the 'demo' range"):
        placement_seeds("demo", 100, 10)  # would reach the test range
    with pytest.raises(ConfigError, match="CollectConfig.seed must be in"):
        CollectConfig(seed=100)


def test_calibration_refuses_test_placements_before_any_episode():
    from actdistill.config import ExportConfig, SimConfig
    from actdistill.export import calibrate
    from actdistill.sim import placement_seeds

    class NoEpisodes:  # any use of the student would mean an episode started
        def __getattr__(self, name):
            raise AssertionError(f"the student was used ({name})")

    seeds = {"reach-v3": placement_seeds("eval", 0, 2)}
    with pytest.raises(ValueError, match="given 2 test placement"):
        calibrate(NoEpisodes(), 0.5, ExportConfig(), SimConfig(tasks=("reach-v3",)), seeds)


def test_an_ablation_variant_reuses_a_distillation_made_under_any_earlier_variant_folder(tmp_path):
    """`hybrid+settle-final` after an earlier call made `hybrid+settle` (folder hybrid-settle, a name not in the
    variant table): the distillation there is reused, not trained again; another config is not."""
    import dataclasses

    from actdistill.artifacts import make_header, write_header
    from actdistill.bench.ablation import distillation_folder
    from actdistill.config import DistillConfig

    out, dkey = tmp_path / "ablation-rho0.3", {"teacher": "t", "cache": {"hash": "c"}}
    hybrid = DistillConfig(rho=0.3, always_run=3)
    earlier = out / "hybrid-settle" / "distill"
    earlier.mkdir(parents=True)
    write_header(earlier, make_header("distill", hybrid.to_dict(), inputs=dkey))
    own = out / "hybrid-settle-final" / "distill"
    assert distillation_folder(out, tmp_path / "distill-rho0.3", hybrid, dkey, own) == earlier
    other = dataclasses.replace(hybrid, stream_decay=1.0)
    assert distillation_folder(out, tmp_path / "distill-rho0.3", other, dkey, own) == own
    assert distillation_folder(out, tmp_path / "distill-rho0.3", hybrid, {**dkey, "teacher": "u"}, own) == own


def test_a_merged_bench_keeps_the_paraphrase_success_of_every_part_by_seed():
    """Each part ran the paraphrases for its own lowest seed of a row: the merge lists them by that seed, the teacher
    (in every part, seed 0) once, and a row only one part paraphrased not at all."""
    from actdistill.bench.merge import paraphrase_per_seed

    def part(seeds: dict[str, list[int]], para: dict[str, float]) -> dict:
        return {"rows": [{"name": g, **({"success_paraphrase": para[g]} if g in para else {})} for g in seeds],
                "seed_rows": [{"group": g, "seed": k} for g, ks in seeds.items() for k in ks]}

    parts = [part({"teacher": [0], "actdistill-rho0.3": [0], "early-exit-rho0.3": [0]},
                  {"teacher": 0.675, "actdistill-rho0.3": 0.32, "early-exit-rho0.3": 0.13}),
             part({"teacher": [0], "actdistill-rho0.3": [2, 1]}, {"teacher": 0.675, "actdistill-rho0.3": 0.33}),
             part({"teacher": [0], "actdistill-rho0.3": [3]}, {"teacher": 0.675})]  # this part ran no paraphrases
    assert paraphrase_per_seed(parts, "actdistill-rho0.3") == {0: 0.32, 1: 0.33}
    assert paraphrase_per_seed(parts, "teacher") == {0: 0.675}
    assert paraphrase_per_seed(parts, "early-exit-rho0.3") == {0: 0.13}
