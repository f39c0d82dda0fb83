"""The `actdistill` command line.

Every stage takes its typed config from defaults, an optional `--config FILE`
(JSON, the same shape as the `config.json` saved beside each artifact) and
`--set field.path=value` overrides; the common settings also have their own flags.
A user mistake ends with one sentence on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from actdistill.artifacts import ArtifactError
from actdistill.config import (CollectConfig, ConfigError, EvalConfig, RunConfig, SimConfig, TeacherConfig,
                               apply_overrides)
from actdistill.models.policy import ObservationError

USER_ERRORS = (ConfigError, ArtifactError, ObservationError, FileNotFoundError, PermissionError, KeyError)


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
            raise ConfigError(f"--set expects field.path=value, got '{item}'.")
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
    print_table([{"task": t, "demos": cfg.demos_per_task, "frames": n, "expert failures": s["expert_failures"][t]}
                 for t, n in s["frames_per_task"].items()], ["task", "demos", "frames", "expert failures"], "collected")
    print(f"\nwrote {s['dataset']} ({s['frames']} frames) in {s['seconds']:.0f} s")


def cmd_train_teacher(args) -> None:
    from actdistill.teacher import train_teacher

    cfg = _build_config(TeacherConfig, args, {"steps": "train.steps", "batch_size": "train.batch_size",
                                              "lr": "train.lr", "seed": "train.seed", "layers": "model.num_layers"})
    s = train_teacher(cfg, Path(args.data), Path(args.out), progress=not args.no_progress)
    print_table([s], ["parameters", "steps", "passes", "final_loss", "seconds"], "teacher")
    print(f"\nwrote {s['weights']}")


def cmd_evaluate(args) -> None:
    from actdistill.evaluate import PolicySpec, evaluate

    cfg = _build_config(EvalConfig, args, {"episodes": "episodes_per_task", "max_steps": "max_steps",
                                           "workers": "workers", "gifs": "gifs_per_task", "seed": "seed"})
    from actdistill.registry import load_policy

    policy = load_policy(Path(args.policy))  # fail here, with one sentence, before any worker starts
    sim = SimConfig(tasks=tuple(args.tasks) if args.tasks else SimConfig().tasks, camera=args.camera,
                    image_size=policy.image_size)
    r = evaluate(PolicySpec(args.policy) if cfg.workers > 1 else policy, cfg, sim, Path(args.out),
                 name=args.name, progress=not args.no_progress)
    rows = _success_rows([r])
    print_table(rows, list(rows[0]), "closed-loop success")
    print(f"\nwrote {Path(args.out) / 'results.json'} and results.md ({r['seconds']:.0f} s)")


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
    print(f"\nresults: {s['results']}   total wall time {s['wall_seconds'] / 60:.1f} min")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="actdistill", description=(
        "ActDistill: distil a vision-language-action policy into a student that runs only the decoder layers "
        "each input needs. Stages: collect -> train-teacher -> evaluate (and `run` for all of them)."))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("collect", help="scripted Meta-World experts write demonstrations (HDF5, robomimic layout).",
                       description="Run the MT10 scripted experts on seeded placements and keep the successful episodes.")
    c.add_argument("--out", required=True, help="output folder (writes demos.hdf5, config.json, header.json).")
    c.add_argument("--demos-per-task", type=int, dest="demos_per_task")
    c.add_argument("--tasks", nargs="+", help="MT10 task names (default: all ten).")
    c.add_argument("--camera", help="Meta-World camera name (default corner2).")
    c.add_argument("--image-size", type=int, dest="image_size")
    c.add_argument("--workers", type=int)
    c.add_argument("--seed", type=int)
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
    e.add_argument("--tasks", nargs="+")
    e.add_argument("--camera", default="corner2")
    _common(e)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("run", help="the whole pipeline on the built-in MT10 setting, with a summary.",
                       description="collect -> train-teacher -> evaluate; finished stages with unchanged inputs are reused.")
    r.add_argument("--quick", action="store_true", help="a first look in about ten minutes (small data, short training).")
    r.add_argument("--out", help="output folder (default runs/default, or runs/quick with --quick).")
    _common(r)
    r.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"actdistill: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
