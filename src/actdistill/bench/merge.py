"""`actdistill bench-merge`: one bench pooled from parts run on other machines or in other sessions.

A bench over several training seeds is many hours of training and closed-loop evaluation on a small machine.
`actdistill bench --set 'seed_list=[1,2]'` trains and evaluates only those seeds of every trained row (the teacher
row and the rows trained on nothing, like early exit, go with seed 0), and every bench results file keeps each
member's whole evaluation, per-episode successes included (`seed_rows`). The parts of one bench (the same run
config, teacher weights, distillation cache, dataset content and bench config apart from `seed_list`) are pooled
here into what a single bench over all of their seeds writes: per-seed successes and their spread, pooled CIs,
seed-paired differences to the ActDistill row of the same budget. A member held by two parts must have the same
episodes in both (the teacher is in every part: this is where two machines that made "the same" teacher would
show that they did not).

The cost columns (FLOPs, batch-1 latency and speedup, memory) and the paraphrase columns of a group come from the
part that holds its lowest seed: latency and speedup are each measured against the teacher in that part's own
process, as in a single bench. Each part ran the paraphrases for its own lowest seed of a row, so the merged row
also lists those successes by seed (`success_paraphrase_per_seed`). The merged file lists its parts with their provenance.
"""

from __future__ import annotations

from pathlib import Path

from actdistill.artifacts import ArtifactError, read_json
from actdistill.bench.run import COST_FIELDS, PARAPHRASE_FIELDS, assemble_bench
from actdistill.config import BenchConfig, RunConfig
from actdistill.errors import ConfigError


def paraphrase_per_seed(parts: list[dict], name: str) -> dict[int, float]:
    """A row's paraphrase success in each part that ran it, by the seed it was run with (a part runs the paraphrases
    for its lowest seed of the row; the teacher, in every part, counts once)."""
    out: dict[int, float] = {}
    for part in parts:
        row = next((r for r in part["rows"] if r["name"] == name and "success_paraphrase" in r), None)
        if row is not None:
            out.setdefault(min(sr["seed"] for sr in part["seed_rows"] if sr["group"] == name), row["success_paraphrase"])
    return out


def load_part(path: Path) -> dict:
    """A bench results file that can be merged; one sentence if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist: name the <suite>.json files that `actdistill bench` wrote.")
    part = read_json(path, "the bench results")
    for key in ("benchmark", "split", "config", "dataset_content_hash", "rows", "seed_rows", "inputs"):
        if key not in part:
            raise ArtifactError(f"{path} lacks '{key}': it is not a bench results file written since benches can be "
                                f"merged; run that bench again with this version (finished rows are reused).")
    if any("per_episode_success" not in r for r in part["seed_rows"]):
        raise ArtifactError(f"{path} keeps no per-episode successes for its seeds (written before benches could be "
                            f"merged); run that bench again with this version (finished rows are reused).")
    return part


def _bench_config(part: dict) -> dict:
    cfg = dict(part["config"]["bench"])
    cfg.pop("seed_list", None)
    return cfg


def check_same_bench(ref_path: Path, ref: dict, path: Path, part: dict) -> None:
    """Raise ArtifactError, in one sentence, unless `part` is another part of the bench `ref` belongs to."""
    checks = (("benchmark", ref["benchmark"] == part["benchmark"]), ("split", ref["split"] == part["split"]),
              ("dataset content", ref["dataset_content_hash"] == part["dataset_content_hash"]),
              ("run config", ref["config"]["run"] == part["config"]["run"]),
              ("teacher weights", ref["inputs"].get("teacher") == part["inputs"].get("teacher")),
              ("distillation cache", ref["inputs"].get("cache") == part["inputs"].get("cache")),
              ("bench config (apart from seed_list)", _bench_config(ref) == _bench_config(part)))
    for what, same in checks:
        if not same:
            raise ArtifactError(f"{path} and {ref_path} differ in their {what}: they are not parts of one bench, "
                                f"so their rows cannot be pooled.")


def merge_bench(paths: list[Path]) -> dict:
    """The results of one bench from the results files of its parts (see the module docstring)."""
    if len(paths) < 2:
        raise ConfigError(f"A merge needs at least two bench results files, got {len(paths)}.")
    paths = [Path(p) for p in paths]
    parts = [load_part(p) for p in paths]
    for path, part in zip(paths[1:], parts[1:]):
        check_same_bench(paths[0], parts[0], path, part)
    rows: dict[str, dict] = {}  # member name -> its evaluation row
    source: dict[str, int] = {}  # member name -> the part it was taken from
    groups: dict[str, dict] = {}
    for i, part in enumerate(parts):
        specs = {r["name"]: {"method": r["method"], "rho": r["rho"]} for r in part["rows"]}
        for sr in part["seed_rows"]:
            name = sr["name"]
            member = {k: v for k, v in sr.items() if k not in ("group", "seed")}
            if name in rows:
                if rows[name]["per_episode_success"] != member["per_episode_success"]:
                    raise ArtifactError(f"{paths[i]} and {paths[source[name]]} both hold '{name}' with different "
                                        f"episodes: the parts did not evaluate the same policy, so they cannot be "
                                        f"pooled.")
                continue
            rows[name], source[name] = member, i
            g = groups.setdefault(sr["group"], {**specs[sr["group"]], "members": [], "seeds": []})
            g["members"].append(name)
            g["seeds"].append(sr["seed"])
    for g in groups.values():  # members in seed order: the first is the lowest seed, whose policy gave the costs
        order = sorted(range(len(g["seeds"])), key=lambda j: g["seeds"][j])
        g["members"], g["seeds"] = [g["members"][j] for j in order], [g["seeds"][j] for j in order]
    costs, para = {}, {}
    for name, g in groups.items():
        part = parts[source[g["members"][0]]]
        row = next(r for r in part["rows"] if r["name"] == name)
        costs[name] = {k: row[k] for k in COST_FIELDS if k in row}
        para[name] = {k: row[k] for k in PARAPHRASE_FIELDS if k in row}
        each = paraphrase_per_seed(parts, name)
        if len(each) > 1:  # every part ran the paraphrases for its own lowest seed of the row: keep them all
            para[name]["success_paraphrase_per_seed"] = {str(k): v for k, v in sorted(each.items())}
    ref = parts[0]
    seeds = sorted({k for g in groups.values() for k in g["seeds"]})
    shared = _bench_config(ref)
    every_seed = seeds == list(range(shared.get("seeds", BenchConfig.seeds)))
    bcfg = BenchConfig.from_saved(shared if every_seed else {**shared, "seed_list": seeds})
    rc = RunConfig.from_saved(ref["config"]["run"])
    tasks = tuple(rows["teacher"]["success_per_task"])
    training = {}
    for part in parts:
        training.update(part.get("training_compute", {}))
    extra = {"training_compute": training, "inputs": ref["inputs"],
             "parts": [{"file": str(p), "provenance": part["provenance"],
                        "members": [n for n, i in source.items() if i == j]}
                       for j, (p, part) in enumerate(zip(paths, parts))]}
    return assemble_bench(rows, groups, costs, para, bcfg, rc, tasks, ref["dataset_content_hash"], extra)
