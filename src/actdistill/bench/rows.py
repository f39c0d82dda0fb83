"""The bench's rows: the teacher, the ActDistill students, and a registry of baselines.

A baseline is one function `(bench, rho, seed index, matched executed fraction) -> None` that trains (or builds)
its policy through `bench.stages`, saves it as a policy folder and calls `bench.evaluate_row`; registering it
(`@register_baseline`) is all the bench needs to run it at every baseline budget, beside the built-in ones
below. Each row is matched to the closed-loop compute of the ActDistill student of its budget and seed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from actdistill.artifacts import hash_json, make_header, read_json, weights_hash_of, write_header
from actdistill.bench.baselines import (STATIC_ROUTER_DIM, layer_input_similarity, static_prune_student, task_loss,
                                        train_router_kd)
from actdistill.bench.flops import train_step_flops
from actdistill.config import BenchConfig, RunConfig, TeacherConfig
from actdistill.constants import CONFIG_FILE, DATASET_FILE, RESULTS_FILE
from actdistill.data.dataset import FrameDataset
from actdistill.data.hdf5 import read_demos
from actdistill.distill.consistency import distill_rewordings
from actdistill.distill.routing import RoutedStudent
from actdistill.distill.stage import distill_loss, initial_streams, run_distill
from actdistill.distill.targets import teacher_targets
from actdistill.early_exit import EarlyExitPolicy, choose_exit_threshold, save_early_exit
from actdistill.errors import ConfigError
from actdistill.export import export_inputs, run_export, save_student, training_placements
from actdistill.models.vla import ReferenceVLA
from actdistill.pipeline import StageRunner, distillation_data, evaluate_stage
from actdistill.probe.stage import load_probe_artifact
from actdistill.sim import get_suite
from actdistill.teacher import load_teacher, train_teacher
from actdistill.training import train_loop


PARAPHRASE_PRESETS = ("paraphrase-1", "paraphrase-2")  # the held-out instructions a bench row is also run with


@dataclass(frozen=True)
class Baseline:
    build: Callable[["Bench", float, int, float], None]
    per_seed: bool = True  # False: trains nothing, so one row serves every training seed
    last: bool = False  # True: runs after every other row (the longest trainings)


BASELINES: dict[str, Baseline] = {}


def register_baseline(name: str, per_seed: bool = True, last: bool = False):
    """Add a baseline row to every bench (in registration order; `last` ones after all others)."""
    def wrap(fn):
        BASELINES[name] = Baseline(fn, per_seed, last)
        return fn
    return wrap


def chosen_baselines(names: tuple[str, ...], field: str) -> tuple[str, ...]:
    """`names`, once each is known to be a registered baseline (else one sentence naming `field`)."""
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise ConfigError(f"Unknown baseline(s) {', '.join(map(repr, unknown))} in {field}; registered: "
                          f"{', '.join(BASELINES)}.")
    return tuple(names)


def seeded(train, k: int):
    """Training seed k of a row: the configured seed plus k (k = 0 is the single-seed bench)."""
    return dataclasses.replace(train, seed=train.seed + k)


class RunArtifacts:
    """A finished `actdistill run` folder, loaded: its config, teacher, dataset, probes and cache (what every command
    that builds on a run needs first)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.rc = RunConfig.from_saved(read_json(self.run_dir / CONFIG_FILE, "the run config"))
        self.data_path = distillation_data(self.run_dir, self.rc)  # the teacher's set, or the smaller distillation set
        self.teacher_dir, self.probe_dir = self.run_dir / "teacher", self.run_dir / "probe"
        self.teacher, tinfo = load_teacher(self.teacher_dir)
        self.teacher_hash = tinfo["header"]["weights_hash"]
        self.tasks = tuple(tinfo["tasks"])
        self.sim = self.rc.collect.sim
        demos = read_demos(self.data_path)
        # evaluations keep clear of every demonstration placement, the teacher's included (its set is read again
        # only when the run distils on a smaller one)
        teacher_set = self.run_dir / "collect" / DATASET_FILE
        self.seeds_used = (demos if self.data_path == teacher_set else read_demos(teacher_set)).attrs.get("placement_seeds")
        self.data = FrameDataset(demos, self.teacher.config.chunk_size, self.tasks)
        self.probes, self.cache, _ = load_probe_artifact(self.probe_dir, self.teacher, self.teacher_hash, self.data.fingerprint)

    def targets(self, dcfg):
        """The per-layer teacher targets a distillation config asks for (the cache, or the teacher run per batch)."""
        return teacher_targets(dcfg.teacher_targets, self.cache, self.teacher, self.probes)


class Bench(RunArtifacts):
    """What every row needs: the run's artifacts, the stage runner, and the rows evaluated so far."""

    def __init__(self, run_dir: Path, cfg: BenchConfig, progress: bool = True, eval_root: Path | None = None):
        """Trained rows live in `run_dir/bench` (shared by every command that builds them, reused by fingerprint);
        evaluations go under `eval_root` (default the same folder), so another evaluation config (the robustness
        table's) never overwrites the bench's."""
        super().__init__(run_dir)
        self.cfg, self.progress = cfg, progress
        self.out = self.run_dir / "bench"
        self.out.mkdir(parents=True, exist_ok=True)
        self.eval_root = Path(eval_root) if eval_root is not None else self.out
        self.stages = StageRunner()
        self.rows: dict[str, dict] = {}  # one per trained policy (per seed), by name
        self.policies: dict[str, Path] = {}
        # one group per method and budget: its members (row names) and their training seed indices, in step
        self.groups: dict[str, dict] = {"teacher": {"method": "teacher", "rho": None, "members": ["teacher"], "seeds": [0]}}
        self.settle_steps = self.rc.export.settle_steps if self.rc.export.settles else 0
        self.training: dict[str, dict] = {}
        self._similarity: torch.Tensor | None = None

    def member(self, method: str, rho: float, k: int) -> str:
        """The row name of training seed k of `method` at budget rho (seed 0 keeps the plain name and folders)."""
        name = f"{method}-rho{rho}" + (f"-seed{k}" if k else "")
        group = self.groups.setdefault(f"{method}-rho{rho}", {"method": method, "rho": rho, "members": [], "seeds": []})
        group["members"].append(name)
        group["seeds"].append(k)
        return name

    def evaluate_row(self, name: str, folder: Path, weights_hash: str) -> None:
        self.rows[name] = self.evaluate_policy(name, folder, weights_hash, self.cfg.eval, self.eval_root)
        self.policies[name] = folder

    def evaluate_policy(self, name: str, folder: Path, weights_hash: str, eval_cfg, root: Path, label: str = "") -> dict:
        """Evaluate a policy folder into `root/eval-<name>` (reused while eval config, sim and weights are unchanged)."""
        out = root / f"eval-{name}"

        def fn() -> dict:
            return evaluate_stage(folder, weights_hash, eval_cfg, self.sim, out, name, self.seeds_used, self.progress)

        key = {"eval": eval_cfg.to_dict(), "sim": self.sim.to_dict()}
        s = self.stages.run(f"evaluate {name}{label}", "evaluate", out, key, {"policy": weights_hash}, fn,
                            lambda s: f"success {s['row']['success_mean']:.3f}", lambda s: str(out / RESULTS_FILE))
        return s["row"]

    weights_hash_of = staticmethod(weights_hash_of)

    def paraphrase_rows(self) -> dict[str, list[dict]]:
        """Every row's seed-0 policy on the first `bench.paraphrase_episodes_per_task` placements of each task under
        each held-out paraphrase of the instruction (the same placements as its own first episodes), by row name."""
        n = min(self.cfg.paraphrase_episodes_per_task, self.cfg.eval.episodes_per_task)
        if n == 0:
            return {}
        suite = get_suite(self.sim.suite)
        count = min(len(PARAPHRASE_PRESETS), *(len(suite.instructions[t]) - 1 for t in self.tasks))
        out = {}
        for group, spec in self.groups.items():
            m = spec["members"][0]
            folder = self.policies[m]
            out[group] = [self.evaluate_policy(f"{m}-{p}", folder, self.weights_hash_of(folder),
                                               dataclasses.replace(self.cfg.eval, episodes_per_task=n, perturb=p),
                                               self.eval_root)
                          for p in PARAPHRASE_PRESETS[:count]]
        return out

    @property
    def similarity(self) -> torch.Tensor:
        """(L,) input/output cosine similarity of the teacher's layers on training frames (computed once)."""
        if self._similarity is None:
            self._similarity = layer_input_similarity(self.teacher, self.data)
        return self._similarity

    def training_step_flops(self, model_cfg, batch_size: int, n: int = 8) -> float:
        """FLOPs of one teacher-style training step (counted on n samples; FLOPs are linear in the batch size and
        do not depend on the weights drawn)."""
        return train_step_flops(ReferenceVLA(model_cfg), lambda m, b: m(b)[0], self.data.batch(torch.arange(n))) * batch_size / n

    def count_training_compute(self, n: int = 8) -> None:
        """Training FLOPs of the teacher and of the distillation (plus settling), each counted on a real step."""
        dcfg, rc = self.rc.distill, self.rc
        student = RoutedStudent.from_teacher(self.teacher, self.probes, router_dim=dcfg.router_dim, tau=dcfg.tau,
                                             init_bias=dcfg.router_init_bias, router_inputs=dcfg.router_inputs)
        words, targets = distill_rewordings(dcfg, self.tasks), self.targets(dcfg)
        d_step = train_step_flops(student, lambda m, b: distill_loss(m, b, targets, dcfg, soft=False,
                                                                     rewordings=words, teacher=self.teacher)[0],
                                  self.data.batch(torch.arange(n))) * dcfg.train.batch_size / n
        self.training = {"teacher": {"steps": rc.teacher.train.steps,
                                     "flops": self.training_step_flops(rc.teacher.model, rc.teacher.train.batch_size)
                                     * rc.teacher.train.steps},
                         "distill": {"steps": dcfg.train.steps, "flops": d_step * dcfg.train.steps}}
        if self.settle_steps:  # a settling step counted as a distillation step (its router gets no gradient: a slight over-count)
            self.training["settle"] = {"steps": self.settle_steps, "flops": d_step * self.settle_steps}

    def actdistill_row(self, rho: float, k: int) -> None:
        dcfg = dataclasses.replace(self.rc.distill, rho=rho, train=seeded(self.rc.distill.train, k))
        tag = f"-seed{k}" if k else ""
        # the run's own student (same config) is reused rather than distilled again
        home = self.run_dir if rho == self.rc.distill.rho and not k else self.out
        ddir, xdir = home / f"distill-rho{rho}{tag}", home / f"student-rho{rho}{tag}"
        self.stages.run(f"distill rho={rho}{tag}", "distill", ddir, dcfg.to_dict(),
                        {"teacher": self.teacher_hash, "cache": self.cache.fingerprint},
                        lambda: run_distill(dcfg, self.teacher_dir, self.probe_dir, self.data_path, ddir, self.progress),
                        lambda s: f"keep {s['train_keep_ratio']:.2f}", lambda s: s["weights"])
        self.stages.run(f"export rho={rho}{tag}", "export", xdir, self.rc.export.to_dict(),
                        export_inputs(self.rc.export, self.weights_hash_of(ddir), self.cache.fingerprint),
                        lambda: run_export(self.rc.export, ddir, self.data_path, xdir, self.sim, self.progress,
                                           self.teacher_dir, self.probe_dir),
                        lambda s: f"shift {s['gate_shift']:+.2f}", lambda s: s["weights"])
        self.evaluate_row(self.member("actdistill", rho, k), xdir, self.weights_hash_of(xdir))

    def matched_fraction(self, rho: float, k: int) -> float:
        """The closed-loop executed fraction of the ActDistill student of this budget and seed."""
        return self.rows[f"actdistill-rho{rho}" + (f"-seed{k}" if k else "")]["layers_executed_frac"]


@register_baseline("static-prune")
def static_prune_row(bench: Bench, rho: float, k: int, frac: float) -> None:
    """The same layers removed for every input (those that change their input least), then task-loss fine-tuning for
    as many steps as the ActDistill student trains (distillation + settling)."""
    static_row(bench, rho, k, frac, "static-prune", distill=False)


@register_baseline("static-prune-distill")
def static_prune_distill_row(bench: Bench, rho: float, k: int, frac: float) -> None:
    """The static-prune student (the same layers kept) trained with ActDistill's own objective (task loss, per-layer
    semantic and action streams against the teacher cache) for as many steps: what the losses give without
    routing."""
    static_row(bench, rho, k, frac, "static-prune-distill", distill=True)


def static_row(bench: Bench, rho: float, k: int, frac: float, method: str, distill: bool) -> None:
    """A static student of the matched depth, trained for the ActDistill student's steps (distillation + settling)
    with the task loss, or (`distill`) with the distillation objective, its router fixed."""
    keep = max(1, int(round(frac * bench.teacher.num_layers)))
    name = bench.member(method, rho, k)
    folder = bench.out / name
    rc = bench.rc
    ft_cfg = dataclasses.replace(seeded(rc.distill.train, k), steps=rc.distill.train.steps + bench.settle_steps)
    similarity = bench.similarity
    inputs = {"teacher": bench.teacher_hash}
    if distill:  # a fixed router: no routing views or rewordings, and the gate terms are constants
        dcfg = dataclasses.replace(rc.distill, rho=keep / bench.teacher.num_layers, train=ft_cfg, router_consistency=0.0,
                                   router_reword=0.0, always_run=0, gating="threshold")
        key = {"keep": keep, "distill": dcfg.to_dict(), "similarity": similarity.tolist()}
        inputs["cache"] = bench.cache.fingerprint
    else:
        key = {"keep": keep, "train": ft_cfg.to_dict(), "similarity": similarity.tolist()}

    def build() -> dict:
        t0 = time.time()
        student = static_prune_student(bench.teacher, keep, similarity, probes=bench.probes if distill else None)
        if distill:
            targets = bench.targets(dcfg)
            initial = initial_streams(student, bench.data, targets, dcfg) if dcfg.stream_norm == "initial" else None

            def loss_fn(m, b, s):
                return distill_loss(m, b, targets, dcfg, soft=False, initial=initial, step=s, teacher=bench.teacher)
        else:
            def loss_fn(m, b, s):
                return task_loss(m, b)
        train_loop(model=student, dataset=bench.data, cfg=ft_cfg, out_dir=folder, stage=method, loss_fn=loss_fn,
                   identity={"key": key, **inputs}, progress=bench.progress)
        return {**save_student(student.strip_probes().eval(), folder, bench.teacher.config.to_dict(), STATIC_ROUTER_DIM,
                               rho, list(bench.tasks), key, inputs,
                               {"kept_layers": sorted(torch.argsort(similarity)[:keep].tolist())}),
                "seconds": round(time.time() - t0, 1)}

    bench.stages.run(f"{method} rho={rho}" + (f"-seed{k}" if k else ""), "export", folder, key, inputs, build,
                     lambda s: f"layers {s['kept_layers']}", lambda s: s["weights"])
    bench.evaluate_row(name, folder, bench.weights_hash_of(folder))


@register_baseline("router-kd")
def router_kd_row(bench: Bench, rho: float, k: int, frac: float) -> None:
    """The same router, gating, budget and calibration, with action-only distillation (no graph supervision)."""
    name = bench.member("router-kd", rho, k)
    folder = bench.out / name
    dcfg = dataclasses.replace(bench.rc.distill, rho=rho, train=seeded(bench.rc.distill.train, k))
    key = {"distill": dcfg.to_dict(), "export": bench.rc.export.to_dict()}

    def build() -> dict:
        return train_router_kd(bench.teacher, bench.teacher_hash, bench.data, dcfg, bench.rc.export, bench.sim,
                               training_placements(bench.data_path), folder, key, bench.progress)

    bench.stages.run(f"router-kd rho={rho}" + (f"-seed{k}" if k else ""), "export", folder, key,
                     {"teacher": bench.teacher_hash}, build, lambda s: f"shift {s['gate_shift']:+.2f}", lambda s: s["weights"])
    bench.evaluate_row(name, folder, bench.weights_hash_of(folder))


@register_baseline("early-exit", per_seed=False)
def early_exit_row(bench: Bench, rho: float, k: int, frac: float) -> None:
    """Early exit on the teacher's own probes; nothing is trained, so it runs once, matched to seed 0's compute."""
    name = bench.member("early-exit", rho, k)
    folder = bench.out / name
    key = {"target_frac": frac}
    inputs = {"teacher": bench.teacher_hash, "heads": bench.cache.fingerprint["heads"]}

    def build() -> dict:
        t0 = time.time()
        policy = EarlyExitPolicy(bench.teacher, bench.probes, threshold=0.0).eval()
        thr = choose_exit_threshold(policy, bench.data, frac)
        save_early_exit(folder, bench.teacher_dir, bench.probe_dir, thr)
        s = {"threshold": thr, "seconds": round(time.time() - t0, 1)}
        write_header(folder, make_header("early-exit", key, inputs,
                                         weights_hash=hash_json({"teacher": bench.teacher_hash, "thr": thr}), summary=s))
        return s

    bench.stages.run(f"early-exit rho={rho}", "early-exit", folder, key, inputs, build,
                     lambda s: f"threshold {s['threshold']:.4f}", lambda s: str(folder))
    bench.evaluate_row(name, folder, bench.weights_hash_of(folder))


@register_baseline("scratch", last=True)
def scratch_row(bench: Bench, rho: float, k: int, frac: float) -> None:
    """A smaller model of the student's mean depth, from scratch, with the same training compute (the teacher's
    training plus the distillation's FLOPs, times `scratch_compute_scale`); last, as the longest training."""
    n_layers = bench.teacher.num_layers
    keep = max(1, int(round(frac * n_layers)))
    name = bench.member("scratch", rho, k)
    folder = bench.out / name
    rc = bench.rc
    smodel = dataclasses.replace(rc.teacher.model, num_layers=keep)
    t = bench.training
    budget = t["teacher"]["flops"] + t["distill"]["flops"] + t.get("settle", {}).get("flops", 0.0)
    per_step = bench.training_step_flops(smodel, rc.teacher.train.batch_size)
    scratch_steps = max(1, int(round(bench.cfg.scratch_compute_scale * budget / per_step)))
    scfg = TeacherConfig(model=smodel, train=dataclasses.replace(seeded(rc.teacher.train, k), steps=scratch_steps))
    bench.training[name] = {"steps": scratch_steps, "flops": per_step * scratch_steps}
    bench.stages.run(f"scratch rho={rho}" + (f"-seed{k}" if k else ""), "train-teacher", folder, scfg.to_dict(),
                     {"dataset": bench.data.fingerprint},
                     lambda: train_teacher(scfg, bench.data_path, folder, bench.progress),
                     lambda s: f"{keep} layers, {s['steps']} steps", lambda s: s["weights"])
    bench.evaluate_row(name, folder, bench.weights_hash_of(folder))
    # it runs all of its own layers on every step: as a fraction of the teacher's depth, keep / n_layers; its
    # per-layer usage (over its own `keep` layers) would read as 1.00 in the per-group layer columns, so it is dropped
    row = {k: v for k, v in bench.rows[name].items() if k != "layer_usage_per_task"}
    bench.rows[name] = {**row, "layers_executed_frac": keep / n_layers}
