"""The `actdistill` command line.

Every stage takes its typed config from defaults, an optional `--config FILE`
(JSON, the same shape as the `config.json` saved beside each artifact) and
`--set field.path=value` overrides; the common settings also have their own flags.
A user mistake ends with one sentence on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

from actdistill.artifacts import ArtifactError, weights_hash_of
from actdistill.config import (AblationConfig, BenchConfig, CollectConfig, ConfigError,
                               DistillConfig, EvalConfig, ExportConfig, ProbeConfig, RobustnessConfig, RunConfig, SimConfig,
                               TeacherConfig, apply_overrides)
from actdistill.models.policy import ObservationError
from actdistill.provenance import record_start
from actdistill.sim.perturb import PERTURB_KINDS, PERTURB_PRESETS
from actdistill.training import TrainingDiverged

# A KeyError is not among them: it is a programming error and keeps its traceback.
USER_ERRORS = (ConfigError, ArtifactError, ObservationError, FileNotFoundError, PermissionError)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _build_config(cls, args, shortcuts: dict[str, str], base=None):
    """Defaults (or `base`) <- --config file <- shortcut flags <- --set overrides; validated on construction."""
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist.")
        try:
            cfg = cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ConfigError(f"Config file {path} is not valid JSON ({err}).") from err
    else:
        cfg = base if base is not None else cls()
    overrides = {}
    for flag, field_path in shortcuts.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[field_path] = value
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set expects field.path=value, got {item!r}.")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _parse_value(value)
    return apply_overrides(cfg, overrides) if overrides else cfg


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON file with the stage config (same shape as the saved config.json).")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override any config field, e.g. --set train.lr=3e-4 (repeatable).")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars.")


def print_table(rows: list[dict], columns: list[str], title: str | None = None) -> None:
    if title:
        print(f"\n{title}")
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))


def _success_rows(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        lo, hi = r["success_ci95"]
        out.append({"policy": r["name"], "success": f"{r['success_mean']:.3f}", "95% CI": f"[{lo:.2f}, {hi:.2f}]",
                    "layers executed": f"{r.get('layers_executed_frac', 1.0):.2f}",
                    **{t.replace("-v3", ""): f"{v:.2f}" for t, v in r["success_per_task"].items()}})
    return out


def cmd_collect(args) -> None:
    from actdistill.collect import collect

    cfg = _build_config(CollectConfig, args, {"demos_per_task": "demos_per_task", "workers": "workers",
                                              "seed": "seed", "camera": "sim.camera", "image_size": "sim.image_size",
                                              "tasks": "sim.tasks"})
    s = collect(cfg, Path(args.out), progress=not args.no_progress)
    print_table([{"task": t, "demos": cfg.demos_per_task, "frames": n, "expert failures": s["expert_failures"][t],
                  "expert success": s["expert_success"][t]} for t, n in s["frames_per_task"].items()],
                ["task", "demos", "frames", "expert failures", "expert success"], "collected")
    if s["expert_success_per_group"]:
        print_table([{"group": g, "expert success": v} for g, v in s["expert_success_per_group"].items()],
                    ["group", "expert success"], "expert success per difficulty group (mean over its tasks)")
    print(f"\nwrote {s['dataset']} ({s['frames']} frames) in {s['seconds']:.0f} s")
    if args.format == "lerobot":
        from actdistill.data.hdf5 import read_demos
        from actdistill.data.lerobot import write_lerobot

        root = write_lerobot(read_demos(Path(s["dataset"])), Path(args.out) / "lerobot")
        print(f"wrote {root} (LeRobotDataset v3: parquet + H.264 video; every stage reads it with --data {root})")


def cmd_train_teacher(args) -> None:
    from actdistill.teacher import train_teacher

    cfg = _build_config(TeacherConfig, args, {"steps": "train.steps", "batch_size": "train.batch_size",
                                              "lr": "train.lr", "seed": "train.seed", "layers": "model.num_layers"})
    s = train_teacher(cfg, Path(args.data), Path(args.out), progress=not args.no_progress)
    print_table([s], ["parameters", "steps", "passes", "final_loss", "seconds"], "teacher")
    print(f"\nwrote {s['weights']}")


def cmd_lerobot_view(args) -> None:
    from actdistill.data.lerobot import write_view

    out = write_view(Path(args.data), Path(args.out), args.image_key, args.state_key)
    print(f"wrote {out}: pass it as --data to any stage (it reads {args.data} with image {args.image_key or '(its one camera)'} "
          f"and state {args.state_key})")


def cmd_evaluate(args) -> None:
    from actdistill.pipeline import evaluate_stage
    from actdistill.registry import load_policy, policy_tasks
    from actdistill.sim import suite_for

    cfg = _build_config(EvalConfig, args, {"episodes": "episodes_per_task", "max_steps": "max_steps",
                                           "workers": "workers", "gifs": "gifs_per_task", "seed": "seed",
                                           "perturb": "perturb", "trace": "trace"})
    policy = load_policy(Path(args.policy))  # fail here, with one sentence, before any worker starts
    trained = policy_tasks(Path(args.policy))
    tasks = tuple(args.tasks) if args.tasks else trained or SimConfig().tasks  # default: the tasks it was trained on
    if trained and set(tasks) - set(trained):
        raise ConfigError(f"The policy in {args.policy} was trained on {len(trained)} task(s) of its suite, not on "
                          f"{', '.join(t for t in tasks if t not in trained)}; evaluate it on its own tasks "
                          f"(leave out --tasks) or train one on these.")
    sim = SimConfig(tasks=tasks, camera=args.camera, image_size=policy.image_size, suite=suite_for(tasks).key)
    # the same stage as inside `actdistill run`: results plus a header (eval config, sim, policy weights, provenance)
    r = evaluate_stage(Path(args.policy), weights_hash_of(Path(args.policy)), cfg, sim, Path(args.out), args.name, {},
                       not args.no_progress, policy=policy)["row"]
    rows = _success_rows([r])
    print_table(rows, list(rows[0]), "closed-loop success")
    print(f"\nwrote {Path(args.out) / 'results.json'} and results.md ({r['seconds']:.0f} s)")


def cmd_probe(args) -> None:
    from actdistill.probe.stage import run_probe

    cfg = _build_config(ProbeConfig, args, {"steps": "train.steps", "semantic_dim": "semantic_dim", "k": "k"})
    s = run_probe(cfg, Path(args.teacher), Path(args.data), Path(args.out), progress=not args.no_progress)
    print_table([{"layer": l, "probe action MSE": f"{e:.5f}"} for l, e in enumerate(s["probe_mse_per_layer"])],
                ["layer", "probe action MSE"], "probe error by depth (training frames)")
    print(f"\nwrote {s['cache']} ({s['samples']} samples), {s['probes']}, probe_error.png "
          f"(train {s['train_seconds']:.0f} s, cache {s['cache_seconds']:.0f} s)")


def cmd_distill(args) -> None:
    from actdistill.distill.stage import run_distill

    cfg = _build_config(DistillConfig, args, {"rho": "rho", "steps": "train.steps"})
    s = run_distill(cfg, Path(args.teacher), Path(args.probe), Path(args.data), Path(args.out), progress=not args.no_progress)
    print_table([{"layer": l, "gate on (training frames)": f"{g:.2f}"} for l, g in enumerate(s["gate_mean_per_layer"])],
                ["layer", "gate on (training frames)"], f"student (rho={cfg.rho}), keep ratio {s['train_keep_ratio']:.2f}")
    print(f"\nwrote {s['weights']} ({s['seconds']:.0f} s)")


def cmd_export(args) -> None:
    from actdistill.export import run_export

    cfg = _build_config(ExportConfig, args, {"calib_episodes": "calib_episodes_per_task", "settle_steps": "settle_steps"})
    if args.no_calibrate:
        cfg = apply_overrides(cfg, {"calibrate": False})
    s = run_export(cfg, Path(args.student), Path(args.data), Path(args.out), SimConfig(camera=args.camera),
                   progress=not args.no_progress, teacher_dir=args.teacher and Path(args.teacher),
                   probe_dir=args.probe and Path(args.probe))
    if s["calibration"]:
        print_table(s["calibration"], ["phase", "round", "gate_shift", "layers_executed_frac", "success_mean"],
                    f"budget calibration on training placements (rho={s['rho']})")
    print(f"\nwrote {s['weights']} (no extractor or probe parameters; {s['parameters'] / 1e6:.2f}M parameters)")


def cmd_bench(args) -> None:
    from actdistill.bench.run import run_bench

    if args.quick and args.config:
        raise ConfigError("--quick and --config cannot be combined; put the quick settings in the config file.")
    cfg = _build_config(BenchConfig, args, {"episodes": "eval.episodes_per_task", "compile": "compile", "seeds": "seeds",
                                            "seed_list": "seed_list"},
                        base=BenchConfig.quick() if args.quick else None)
    r = run_bench(Path(args.run), cfg, progress=not args.no_progress)
    print_table(r["stages"], ["stage", "status", "seconds", "note"], "bench stages")
    from actdistill.bench.run import bench_table

    print("\n" + bench_table(r["rows"]))
    name = r["results_file"]
    print(f"results: {Path(args.run) / 'bench' / name} (+ {name.replace('.json', '.md')}, pareto.png"
          + (", group_usage.png)" if r.get("groups") else ")"))
    if r.get("part_file"):
        print(f"part kept as {r['part_file']} (merge the parts with `actdistill bench-merge`)")


def cmd_bench_merge(args) -> None:
    from actdistill.bench.merge import merge_bench
    from actdistill.bench.run import bench_table, write_bench
    from actdistill.sim import get_suite

    results = merge_bench([Path(p) for p in args.parts])
    print_table([{"part": p["file"], "revision": (p["provenance"].get("git") or {}).get("revision", "")[:7],
                  "members": len(p["members"])} for p in results["parts"]], ["part", "revision", "members"],
                "bench parts")
    revisions = {(p["provenance"].get("git") or {}).get("revision") for p in results["parts"]}
    if len(revisions) > 1:
        print("note: the parts ran at different code revisions (listed above and in the merged file's 'parts').")
    print("\n" + bench_table(results["rows"]))
    suite = get_suite(RunConfig.from_saved(results["config"]["run"]).collect.sim.suite)
    path = write_bench(results, Path(args.out), suite.key)
    print(f"results: {path} (+ {path.with_suffix('.md').name}, pareto.png)")


def cmd_ablate(args) -> None:
    from actdistill.bench.ablation import ablation_table, run_ablation

    cfg = _build_config(AblationConfig, args, {"rho": "rho", "episodes": "eval.episodes_per_task", "variants": "variants",
                                               "perturbations": "perturbations", "reference": "reference",
                                               "seeds": "seeds"})
    r = run_ablation(Path(args.run), cfg, progress=not args.no_progress)
    print_table(r["stages"], ["stage", "status", "seconds", "note"], "ablation stages")
    print("\n" + ablation_table(r["rows"], cfg))
    print(f"results: {Path(args.run) / f'ablation-rho{cfg.rho}' / 'ablation.json'} (+ ablation.md)")


def cmd_robustness(args) -> None:
    from actdistill.bench.robustness import robustness_report, run_robustness

    cfg = _build_config(RobustnessConfig, args, {"budgets": "budgets", "episodes": "eval.episodes_per_task",
                                                 "perturbations": "perturbations", "baselines": "baselines",
                                                 "variants": "variants"})
    r = run_robustness(Path(args.run), cfg, progress=not args.no_progress)
    print_table(r["stages"], ["stage", "status", "seconds", "note"], "robustness stages")
    print("\n" + robustness_report(r))
    print(f"results: {Path(args.run) / 'robustness' / 'robustness.json'} (+ robustness.md, gate_flips_*.png)")


def cmd_spread(args) -> None:
    from actdistill.bench.spread import seed_spread, spread_table, write_spread

    report = seed_spread([Path(p) for p in args.runs])
    print(spread_table(report))
    if args.out:
        out = write_spread(report, Path(args.out))
        print(f"results: {out} (+ {out.with_suffix('.md').name}, {out.with_suffix('.png').name})")


def cmd_compare(args) -> None:
    from actdistill.bench.compare import compare, compare_table, write_compare

    report = compare([Path(p) for p in args.evaluations], names=args.names,
                     clean=[Path(p) for p in args.clean] if args.clean else None)
    print(compare_table(report))
    if args.out:
        out = write_compare(report, Path(args.out))
        print(f"results: {out} (+ {out.with_suffix('.md').name})")


def cmd_plan(args) -> None:
    from actdistill.bench.plan import (add_token_embedding, dry_run, model_config_from_transformers, plan_memory, plan_table,
                                       vla_stage)

    vocab = 0
    if args.model_config and args.run:
        raise ConfigError("Give --model-config or --run, not both.")
    if args.model_config:
        cfg, vocab, family = model_config_from_transformers(Path(args.model_config), args.tokens)
        what = f"{family} decoder of {args.model_config} ({cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.seq_len} tokens)"
    elif args.run:
        cfg = TeacherConfig.from_saved(_read_run_config(Path(args.run))["teacher"]).model
        what = f"the teacher of {args.run}"
    else:
        cfg = TeacherConfig().model
        what = "the default reference VLA"
    run = dry_run(vla_stage(cfg, args.stage, args.batch, activation_checkpointing=args.activation_checkpointing,
                            mixed_precision=args.mixed_precision))
    fsdp_run = None
    if args.mixed_precision == "bf16":  # FSDP computes in gathered bf16 parameters, not under autocast
        fsdp_run = dry_run(vla_stage(cfg, args.stage, args.batch, activation_checkpointing=args.activation_checkpointing,
                                     mixed_precision="bf16-params"))
    if vocab:
        run = add_token_embedding(run, cfg, vocab, trained=args.stage != "probe")
        fsdp_run = fsdp_run and add_token_embedding(fsdp_run, cfg, vocab, trained=args.stage != "probe")
    plans = plan_memory(run, args.devices, args.mixed_precision, fsdp_run)
    print(f"{args.stage} of {what}: batch {args.batch} per device, {args.devices} devices, precision "
          f"{args.mixed_precision}, activation checkpointing {'on' if args.activation_checkpointing else 'off'}\n")
    print(plan_table(plans, args.device_memory))


def _read_run_config(run: Path) -> dict:
    from actdistill.artifacts import read_json

    return read_json(run / "config.json", "the run config")


def cmd_run(args) -> None:
    from actdistill.pipeline import run_pipeline

    if args.quick and args.config:
        raise ConfigError("--quick and --config cannot be combined; put the quick settings in the config file.")
    base = RunConfig.quick() if args.quick else None
    cfg = _build_config(RunConfig, args, {"out": "out"}, base=base)
    s = run_pipeline(cfg, progress=not args.no_progress)
    print_table(s["stages"], ["stage", "status", "seconds", "note", "output"], "pipeline")
    rows = _success_rows(s["rows"])
    print_table(rows, list(rows[0]), "closed-loop success on held-out placements")
    c = s["cost"]
    print_table([{"policy": "teacher", "decoder GFLOPs": f"{c['teacher_decoder_gflops']:.4f}",
                  "policy GFLOPs": f"{c['teacher_policy_gflops']:.4f}", "median latency ms": f"{c['teacher_latency_ms']:.2f}",
                  "speedup": "1.00", "ideal speedup": "1.00"},
                 {"policy": s["rows"][1]["name"], "decoder GFLOPs": f"{c['student_decoder_gflops']:.4f}",
                  "policy GFLOPs": f"{c['student_policy_gflops']:.4f}", "median latency ms": f"{c['student_latency_ms']:.2f}",
                  "speedup": f"{c['speedup']:.2f}", "ideal speedup": f"{c['ideal_speedup']:.2f}"}],
                ["policy", "decoder GFLOPs", "policy GFLOPs", "median latency ms", "speedup", "ideal speedup"],
                f"cost per action query at batch 1 ({c['frames']} training frames, teacher and student interleaved)")
    print("\nlayer usage of the student per task (fraction of policy calls executing each layer)")
    print(s["layer_usage"])
    for line in s["notices"]:
        print(line)
    print_reproduction(s["reproduction"])
    print(f"results: {s['results']}   heatmap: {s['heatmap']}   wall time of this run {s['wall_seconds'] / 60:.1f} min")


def print_reproduction(rep: dict) -> None:
    """Say whether the run reproduces the committed results (each row inside the reference's 95% CI)."""
    if not rep["comparable"] or not rep["rows"]:
        print(f"\nreproduction check: not compared, {rep['reason'] or 'no row of the same name'}.")
        return
    print_table([{"policy": r["name"], "success": f"{r['success']:.3f}", "committed": f"{r['reference']:.3f}",
                  "committed 95% CI": f"{r['reference_ci95'][0]:.2f}-{r['reference_ci95'][1]:.2f}",
                  "within": "yes" if r["within"] else "NO"} for r in rep["rows"]],
                ["policy", "success", "committed", "committed 95% CI", "within"],
                "reproduction check against the committed results (same config and package versions)")
    if rep["dataset_match"] is not None:
        print("dataset content hash " + ("equals the committed one." if rep["dataset_match"] else "DIFFERS from the committed one."))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="actdistill", description=(
        "ActDistill: distil a vision-language-action policy into a student that runs only the decoder layers "
        "each input needs. Stages: collect -> train-teacher -> evaluate -> probe -> distill -> export "
        "(and `run` for all of them)."))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_data_commands(sub)
    _add_method_commands(sub)
    _add_pipeline_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # The command line is an application: it may choose the renderer for itself (EGL: offscreen, on the CPU)
    # before any stage imports mujoco. Library code never sets the environment.
    os.environ.setdefault("MUJOCO_GL", "egl")
    args = build_parser().parse_args(argv)
    record_start()
    if getattr(args, "no_progress", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # also the weight-loading bars of the language encoder
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # and in the evaluation workers, which import it anew
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch only rank 0 prints the summary
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    finished = False
    try:
        args.func(args)
        finished = True
    except USER_ERRORS as err:
        print(f"actdistill: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"actdistill: error: {err}", file=sys.stderr)
        return 3
    finally:
        _close_process_group(finished)
    return 0


def _close_process_group(finished: bool) -> None:
    """Under torchrun: shut the process group down before the interpreter does (a gloo thread still running at exit
    aborted a rank here: "terminate called without an active exception"). After a finished command every rank
    first waits for the others; after an error it does not (the others may never arrive)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()  # finalise work objects that still hold tensors while the interpreter is whole
        if finished:
            dist.barrier()  # no rank tears its connections down while another still uses them
        dist.destroy_process_group()



def _add_data_commands(sub) -> None:
    """collect, train-teacher, evaluate: the data, the teacher and closed-loop evaluation."""
    c = sub.add_parser("collect", help="scripted Meta-World experts write demonstrations (HDF5, robomimic layout).",
                       description="Run the MT10 scripted experts on seeded placements and keep the successful episodes.")
    c.add_argument("--out", required=True, help="output folder (writes demos.hdf5, config.json, header.json).")
    c.add_argument("--demos-per-task", type=int, dest="demos_per_task")
    c.add_argument("--tasks", nargs="+", help="MT10 task names (default: all ten).")
    c.add_argument("--camera", help="Meta-World camera name (default corner2).")
    c.add_argument("--image-size", type=int, dest="image_size")
    c.add_argument("--workers", type=int)
    c.add_argument("--seed", type=int)
    c.add_argument("--format", choices=("hdf5", "lerobot"), default="hdf5",
                   help="also write the demos as a LeRobotDataset v3 folder (OUT/lerobot) with 'lerobot'.")
    _common(c)
    c.set_defaults(func=cmd_collect)

    t = sub.add_parser("train-teacher", help="train the reference VLA teacher on a demo file.",
                       description="Behaviour-clone the reference VLA (CNN patches + MiniLM instruction + state -> Llama decoder -> action chunk).")
    t.add_argument("--data", required=True, help="demos.hdf5 written by `actdistill collect`.")
    t.add_argument("--out", required=True, help="output folder; an unfinished run there is resumed.")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", type=int, dest="batch_size")
    t.add_argument("--lr", type=float)
    t.add_argument("--layers", type=int, help="number of decoder layers.")
    t.add_argument("--seed", type=int)
    _common(t)
    t.set_defaults(func=cmd_train_teacher)

    v = sub.add_parser("lerobot-view", help="name the camera and state features of a LeRobot dataset once, for every stage.",
                       description="Write a small folder that every stage's --data reads as the LeRobot dataset it names, "
                       "with these features (the dataset itself is not touched).")
    v.add_argument("--data", required=True, help="a LeRobotDataset v3 folder.")
    v.add_argument("--out", required=True, help="the view folder to write.")
    v.add_argument("--image-key", dest="image_key", help="the camera feature (default: the dataset's one camera).")
    v.add_argument("--state-key", dest="state_key", default="observation.state", help="the state feature.")
    v.set_defaults(func=cmd_lerobot_view)

    e = sub.add_parser("evaluate", help="closed-loop MT10 success of a policy on held-out placements.",
                       description="Evaluate a teacher or exported student in closed loop; writes results.json and results.md.")
    e.add_argument("--policy", required=True, help="a teacher or exported-student folder.")
    e.add_argument("--out", required=True)
    e.add_argument("--name", default="policy", help="row name in the results.")
    e.add_argument("--episodes", type=int, help="episodes per task.")
    e.add_argument("--max-steps", type=int, dest="max_steps")
    e.add_argument("--workers", type=int)
    e.add_argument("--gifs", type=int, help="GIFs of the first N episodes of each task.")
    e.add_argument("--seed", type=int)
    e.add_argument("--tasks", nargs="+", help="task names (default: the tasks the policy was trained on, in their suite).")
    e.add_argument("--camera", default="corner2")
    e.add_argument("--perturb", help="an observation perturbation, seeded per placement and step so that every policy "
                   "sees the same one: " + ", ".join(PERTURB_PRESETS) + ", or kind:level with kind in "
                   + ", ".join(PERTURB_KINDS) + " (default none).")
    e.add_argument("--trace", action="store_true", default=None, help="keep per-step layer counts, gripper commands "
                   "and gate statistics (flips, switches, margins) in episodes.json.")
    _common(e)
    e.set_defaults(func=cmd_evaluate)


def _add_method_commands(sub) -> None:
    """probe, distill, export: the ActDistill stages."""
    pr = sub.add_parser("probe", help="train per-layer graph extractors + action probes on the frozen teacher; write the teacher cache.",
                        description="Graph-structured encapsulation of the teacher (ActDistill Sec. 3.2).")
    pr.add_argument("--teacher", required=True, help="teacher folder from `actdistill train-teacher`.")
    pr.add_argument("--data", required=True, help="demos of the teacher's tasks and image size to probe and distil on: "
                    "its training set, or a smaller set (the distillation then uses the same one).")
    pr.add_argument("--out", required=True)
    pr.add_argument("--steps", type=int)
    pr.add_argument("--semantic-dim", type=int, dest="semantic_dim")
    pr.add_argument("--k", type=int, help="neighbours per node in the affinity graph.")
    _common(pr)
    pr.set_defaults(func=cmd_probe)

    d = sub.add_parser("distill", help="train the routed student against the teacher cache.",
                       description="Self-derived student + dynamic router + dual-stream distillation with a compute budget rho.")
    d.add_argument("--teacher", required=True)
    d.add_argument("--probe", required=True, help="folder from `actdistill probe` (probes + teacher cache).")
    d.add_argument("--data", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--rho", type=float, help="target fraction of decoder layers executed (default 0.5).")
    d.add_argument("--steps", type=int)
    _common(d)
    d.set_defaults(func=cmd_distill)

    x = sub.add_parser("export", help="strip the graph parts, calibrate the gates to the budget, write the deployable student.",
                       description="Export the routed student; its gates are calibrated on closed-loop rollouts from training placements.")
    x.add_argument("--student", required=True, help="folder from `actdistill distill`.")
    x.add_argument("--data", required=True, help="the demos.hdf5 (its placement seeds are the calibration placements).")
    x.add_argument("--out", required=True)
    x.add_argument("--calib-episodes", type=int, dest="calib_episodes")
    x.add_argument("--settle-steps", type=int, dest="settle_steps",
                   help="after calibration, distil this many steps more with the calibrated masks (needs --teacher, --probe).")
    x.add_argument("--teacher", help="the teacher folder (for settling).")
    x.add_argument("--probe", help="the probe folder with the teacher cache (for settling).")
    x.add_argument("--no-calibrate", action="store_true")
    x.add_argument("--camera", default="corner2")
    _common(x)
    x.set_defaults(func=cmd_export)


def _add_ablate_command(sub) -> None:
    """ablate: variants of the distillation, on validation placements."""
    ab = sub.add_parser("ablate", help="variants of the distillation at one budget, on validation placements.",
                        description="Distil, export and evaluate each variant (full, no semantic stream, no action stream, "
                        "router-KD, stream normalisations, quantile gating, hybrid depth, settled) on a finished `actdistill "
                        "run` folder; every row is evaluated on validation placements and paired with a reference variant (the full "
                        "method unless --reference names another).")
    ab.add_argument("--run", required=True, help="folder of a finished `actdistill run` (runs/default).")
    ab.add_argument("--rho", type=float, help="the budget (default 0.3).")
    ab.add_argument("--episodes", type=int, help="validation episodes per task (default 30).")
    ab.add_argument("--variants", nargs="+", help="which variants (default: all).")
    ab.add_argument("--reference", help="the variant every other row is paired with (default 'full'; it must be one "
                    "of --variants).")
    ab.add_argument("--perturbations", nargs="+", help="also evaluate every variant under these perturbations (presets "
                    "or kind:level, as in `actdistill robustness`), on the same validation placements.")
    ab.add_argument("--seeds", type=int, help="training seeds of every variant (default 1; seed 0 is the variant's "
                    "folder, seed k its -seed<k> folder); rows pool them and every difference is seed-paired.")
    _common(ab)
    ab.set_defaults(func=cmd_ablate)


def _add_pipeline_commands(sub) -> None:
    """bench, ablate, run: whole pipelines over the stages."""
    bn = sub.add_parser("bench", help="teacher, ActDistill students and baselines at the same budgets: success, FLOPs, latency.",
                        description="Benchmark on a finished `actdistill run` folder; finished rows are reused by fingerprint.")
    bn.add_argument("--run", required=True, help="folder of a finished `actdistill run` (runs/default).")
    bn.add_argument("--episodes", type=int, help="episodes per task (default 30).")
    bn.add_argument("--seeds", type=int, help="training seeds of every trained row (default 1); each row reports every "
                    "seed's success, their spread, and seed-paired differences to ActDistill.")
    bn.add_argument("--seed-list", nargs="+", type=int, dest="seed_list",
                    help="only these training seeds (0 to --seeds - 1) of every trained row: one part of a bench split "
                    "across machines or sessions; `actdistill bench-merge` pools the parts' results files.")
    bn.add_argument("--compile", action="store_true", default=None, help="also measure latency under torch.compile.")
    bn.add_argument("--quick", action="store_true", help="a smoke run: every row at rho=0.5, 3 episodes per task, "
                                                         "a tenth of the scratch compute (pair it with `run --quick`).")
    _common(bn)
    bn.set_defaults(func=cmd_bench)

    _add_ablate_command(sub)

    rb = sub.add_parser("robustness", help="teacher, students and same-budget baselines under observation perturbations.",
                        description="Evaluate the teacher, the ActDistill student of each budget and the static-prune and "
                        "router-KD rows of that budget clean and under each perturbation (image noise, brightness, contrast, "
                        "camera shift, occlusion, state noise, held-out paraphrases) on the same test placements; reports "
                        "paired drops, gate flips per layer and layer usage around gripper events.")
    rb.add_argument("--run", required=True, help="folder of a finished `actdistill run` (runs/default).")
    rb.add_argument("--budgets", nargs="+", type=float, help="ActDistill budgets (default 0.5).")
    rb.add_argument("--baselines", nargs="+", help="same-budget baselines (default static-prune router-kd).")
    rb.add_argument("--perturbations", nargs="+", help="which perturbations (default: every preset).")
    rb.add_argument("--episodes", type=int, help="test episodes per task per cell (default 20).")
    rb.add_argument("--variants", nargs="+", help="ablation variants to report as rows too (each made first by "
                    "`actdistill ablate` at the same budget, e.g. consistency).")
    _common(rb)
    rb.set_defaults(func=cmd_robustness)

    sp = sub.add_parser("spread", help="teacher and student of runs that differ only in their seeds: per-seed success, "
                        "spread, seed-paired student minus teacher.",
                        description="Compare finished `actdistill run`s made with other seeds (e.g. --set "
                        "teacher.train.seed=1 --out runs/seed-1) on their shared held-out placements.")
    sp.add_argument("runs", nargs="+", help="run folders or their results files (mt10.json), two or more.")
    sp.add_argument("--out", help="write the report here (a .json; the table and the plot go beside it as .md and .png).")
    sp.set_defaults(func=cmd_spread, config=None, set=None, no_progress=True)
    _add_compare_command(sub)
    _add_merge_command(sub)

    pl = sub.add_parser("plan", help="per-device memory of a training stage under DDP and FSDP, and whether it fits.",
                        description="Dry-runs one training step on fake tensors (no memory, no arithmetic) and adds up what "
                        "it allocates: weights, gradients, AdamW state, activations; then divides what FSDP shards.")
    pl.add_argument("--model-config", help="a transformers config.json (or its folder): plan its decoder as the student's.")
    pl.add_argument("--run", help="a run folder: plan its teacher's config (default: the default reference VLA).")
    pl.add_argument("--tokens", type=int, default=276, help="tokens per sample with --model-config (default 276: 256 "
                    "image patches and 20 text tokens).")
    pl.add_argument("--stage", choices=("distill", "train-teacher", "probe"), default="distill")
    pl.add_argument("--batch", type=int, default=8, help="samples per device and step (default 8).")
    pl.add_argument("--devices", type=int, default=8)
    pl.add_argument("--device-memory", type=float, default=80.0, dest="device_memory", help="GiB per device (default 80).")
    pl.add_argument("--mixed-precision", choices=("no", "bf16"), default="no", dest="mixed_precision")
    pl.add_argument("--activation-checkpointing", action="store_true", dest="activation_checkpointing")
    pl.set_defaults(func=cmd_plan, config=None, set=None, no_progress=True)

    r = sub.add_parser("run", help="the whole pipeline on the built-in MT10 setting, with a summary.",
                       description="collect -> train-teacher -> evaluate -> probe -> distill -> export -> evaluate student; "
                       "finished stages with unchanged inputs are reused.")
    r.add_argument("--quick", action="store_true", help="a first look: 10 demos per task, 900 teacher steps, 5 episodes per task.")
    r.add_argument("--out", help="output folder (default runs/default, or runs/quick with --quick).")
    _common(r)
    r.set_defaults(func=cmd_run)


def _add_merge_command(sub) -> None:
    """bench-merge: one bench from its parts' results files."""
    bm = sub.add_parser("bench-merge", help="pool the results files of a bench run in parts (--seed-list) into one.",
                        description="Pool the results files of parts of one bench (same run, teacher, cache, dataset and "
                        "bench config; each part some of the training seeds) into the results of the whole bench: "
                        "per-seed successes, pooled CIs, seed-paired differences.")
    bm.add_argument("parts", nargs="+", help="the parts' results files (<run>/bench/mt10.json, copied aside after each part).")
    bm.add_argument("--out", required=True, help="folder for the merged mt10.json / mt50.json, its tables and plots.")
    bm.set_defaults(func=cmd_bench_merge, config=None, set=None, no_progress=True)


def _add_compare_command(sub) -> None:
    cp = sub.add_parser("compare", help="policies evaluated on the same placements: success per difficulty group and "
                        "paired differences to the first.",
                        description="Reads the folders `actdistill evaluate --out` wrote (same tasks, same placements) "
                        "and prints each policy's success overall and per difficulty group, then every policy minus the "
                        "first as a paired bootstrap (overall, per group, per task in the .json).")
    cp.add_argument("evaluations", nargs="+", help="evaluation folders or their results.json, two or more; the first "
                    "is the reference.")
    cp.add_argument("--names", nargs="+", help="a name per evaluation (default: the names they were evaluated under, "
                    "or their folder names).")
    cp.add_argument("--clean", nargs="+", help="the same policies' unperturbed evaluations, in the same order, when "
                    "the evaluations are under a perturbation: adds each one's drop and its drop minus the first's.")
    cp.add_argument("--out", help="write the report here (a .json; the table goes beside it as .md).")
    cp.set_defaults(func=cmd_compare, config=None, set=None, no_progress=True)


if __name__ == "__main__":
    sys.exit(main())
