"""Typed configs for every stage (STYLE.md item 3).

Each config is a dataclass validated in `__post_init__`; defaults run on a
laptop CPU. Configs are saved next to every artifact (`config.json`) and
reloaded with `from_saved` (from_dict, which refuses unknown or ill-typed fields, after filling in the earlier
value of each later field the file lacks).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from actdistill.errors import ConfigError
from actdistill.sim import DEFAULT_SUITE, get_suite
from actdistill.sim.perturb import PERTURB_PRESETS, parse_perturbation

DECODERS: tuple[str, ...] = ("llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3")
HEADS: tuple[str, ...] = ("regression", "diffusion", "discrete")  # action-head families (models/heads.py)
SHARDINGS: tuple[str, ...] = ("none", "fsdp")  # how training spreads a model over processes (sharding.py)
PRECISIONS: tuple[str, ...] = ("no", "bf16")  # training compute precision
GATINGS: tuple[str, ...] = ("threshold", "quantile")  # training gates of the router (distill/routing.py)
STREAM_NORMS: tuple[str, ...] = ("none", "terms", "initial")  # distillation stream scales (distill/losses.py)
TEACHER_TARGETS: tuple[str, ...] = ("cache", "online")  # where the per-layer teacher targets come from (distill/targets.py)
# what the router reads (distill/routing.py Router): the vision and language tokens, or the vision tokens only
ROUTER_INPUTS: tuple[str, ...] = ("vision+language", "vision")
def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _positive(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        _check(v > 0, f"{type(obj).__name__}.{n} must be > 0, got {v!r}.")


class _Base:
    """to_dict / from_dict with strict field and type checks.

    Every field is type-checked on construction (before the subclass's own range checks), so a wrong type
    given to the constructor directly is answered like one read from a JSON file: one ConfigError naming it.
    """

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        own = cls.__dict__.get("__post_init__")

        def __post_init__(self) -> None:
            hints = typing.get_type_hints(type(self))
            for f in dataclasses.fields(self):  # type: ignore[arg-type]
                setattr(self, f.name, _coerce(hints[f.name], getattr(self, f.name), f"{type(self).__name__}.{f.name}"))
            if own is not None:
                own(self)

        cls.__post_init__ = __post_init__

    # Fields added after artifacts were already made with this config: written only when they differ from the
    # value that reproduces the earlier behaviour exactly (their default, or the value in _EARLIER_VALUES when
    # the default has moved on since), so earlier config hashes (and the reuse of finished stages) stay valid
    # and a changed default never matches an artifact made under the old one.
    _LATER_FIELDS: tuple[str, ...] = ()
    _EARLIER_VALUES: dict[str, Any] = {}

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """The config as JSON-able data; `full` also lists later fields that hold their earlier value."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if not full and f.name in self._LATER_FIELDS and v == self._EARLIER_VALUES.get(f.name, f.default):
                continue
            out[f.name] = v.to_dict(full) if isinstance(v, _Base) else copy.deepcopy(v)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} must be given as a JSON object, got {type(data).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {', '.join(map(repr, unknown))}; known fields: {', '.join(sorted(names))}.")
        return cls(**data)  # every field is coerced and checked on construction (see __init_subclass__)

    @classmethod
    def from_saved(cls, data: dict[str, Any]):
        """A config read back from an artifact's `config.json`: a later field the file lacks was written when it held
        its earlier value (`to_dict` leaves it out), so it is read back as that value, not as today's default.
        A config a user writes is read with `from_dict` (a field left out takes today's default)."""
        return cls.from_dict(_with_earlier_values(cls, data))


def _with_earlier_values(cls, data: Any) -> Any:
    """`data` with each later field of `cls` (and of its nested configs) that it lacks set to its earlier value."""
    if not isinstance(data, dict):
        return data  # from_dict names the type error
    out = dict(data)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        nested = _config_type(hints[f.name])
        if f.name in out and nested is not None:
            out[f.name] = _with_earlier_values(nested, out[f.name])
        elif f.name not in out and f.name in cls._EARLIER_VALUES:
            out[f.name] = copy.deepcopy(cls._EARLIER_VALUES[f.name])
    return out


def _config_type(tp: Any):
    """The config class a field annotation names (directly or as Optional[...]), else None."""
    if isinstance(tp, type) and issubclass(tp, _Base):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, _Base)), None)
    return None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a JSON value to the annotated type, or raise ConfigError naming the field."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, _Base):
        return value if isinstance(value, tp) else tp.from_dict(value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        (inner, *_rest) = typing.get_args(tp)
        return tuple(_coerce(inner, v, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}.")
        return value
    return value


@dataclass
class SimConfig(_Base):
    """The simulated benchmark as the policy sees it (a suite of sim/base.py; Meta-World MT10 by default)."""

    tasks: tuple[str, ...] = get_suite(DEFAULT_SUITE).tasks
    camera: str = "corner2"
    image_size: int = 64
    suite: str = DEFAULT_SUITE  # a registered suite ("mt10", "mt50"); the default task list is the whole suite

    _LATER_FIELDS = ("suite",)

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        suite = get_suite(self.suite)
        if self.suite != DEFAULT_SUITE and self.tasks == get_suite(DEFAULT_SUITE).tasks:  # the default list
            self.tasks = suite.tasks
        _check(len(self.tasks) > 0, "SimConfig.tasks must name at least one task.")
        for t in self.tasks:
            _check(t in suite.tasks, f"Unknown task {t!r} in SimConfig.tasks; choose from {', '.join(suite.tasks)}.")
        _check(len(set(self.tasks)) == len(self.tasks), "SimConfig.tasks lists a task twice.")
        _check(self.camera in suite.cameras, f"Unknown camera {self.camera!r}; choose from {', '.join(suite.cameras)}.")
        _check(16 <= self.image_size <= 256, f"SimConfig.image_size must be in [16, 256], got {self.image_size}.")


@dataclass
class CollectConfig(_Base):
    """`actdistill collect`: scripted-expert demonstrations."""

    sim: SimConfig = field(default_factory=SimConfig)
    demos_per_task: int = 50
    max_steps: int = 300  # expert episode cap; failed episodes are discarded
    seed: int = 0  # placement seeds are seed*100_000 + i (evaluation uses a disjoint range)
    workers: int = 2

    def __post_init__(self) -> None:
        _positive(self, "demos_per_task", "max_steps", "workers")
        _check(0 <= self.seed < 100, f"CollectConfig.seed must be in [0, 100), got {self.seed}.")


@dataclass
class ModelConfig(_Base):
    """The reference VLA: image patches + instruction + state + action queries -> Llama decoder -> action chunk."""

    image_size: int = 64
    hidden_size: int = 128
    num_layers: int = 12
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 384
    patch_size: int = 16  # the CNN stem downsamples by this factor: (image_size/patch)^2 vision tokens
    lang_dim: int = 384  # all-MiniLM-L6-v2 sentence embedding
    num_lang_tokens: int = 2
    chunk_size: int = 8  # future actions predicted per query
    num_query_tokens: int = 1  # learnable action-query tokens; the head reads them all
    n_action_steps: int = 1  # receding horizon: actions executed before replanning
    attn_implementation: str = "sdpa"
    decoder: str = "llama"  # transformers family of the backbone: llama, qwen2, mistral, gemma, gemma2, gemma3
    sliding_window: int = 0  # window of sliding-attention layers (gemma2/3, mistral); 0: the family's default
    action_head: str = "regression"  # regression (chunk MSE), diffusion (DDPM/DDIM), discrete (binned action tokens)
    diffusion_steps: int = 100  # DDPM training timesteps (diffusion head)
    ddim_steps: int = 10  # DDIM sampling steps at inference (diffusion head)
    action_bins: int = 256  # uniform bins per action dimension over [-1, 1] (discrete head)

    state_dim: int = 7  # from the suite (Meta-World: hand xyz, gripper opening, goal xyz)
    action_dim: int = 4  # from the suite (Meta-World: end-effector xyz delta, gripper)
    _LATER_FIELDS = ("decoder", "sliding_window", "action_head", "diffusion_steps", "ddim_steps", "action_bins",
                     "state_dim", "action_dim")

    def __post_init__(self) -> None:
        _positive(self, "image_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                  "patch_size", "lang_dim", "num_lang_tokens", "chunk_size", "num_query_tokens", "n_action_steps",
                  "state_dim", "action_dim")
        _check(self.patch_size in (4, 8, 16), f"ModelConfig.patch_size must be 4, 8 or 16, got {self.patch_size}.")
        _check(self.image_size % self.patch_size == 0,
               f"ModelConfig.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size}).")
        _check(self.hidden_size % self.num_heads == 0, "ModelConfig.hidden_size must be divisible by num_heads.")
        _check(self.num_heads % self.num_kv_heads == 0, "ModelConfig.num_heads must be divisible by num_kv_heads.")
        _check(self.n_action_steps <= self.chunk_size, "ModelConfig.n_action_steps must be <= chunk_size.")
        _check(self.attn_implementation in ("sdpa", "eager"), "ModelConfig.attn_implementation must be 'sdpa' or 'eager'.")
        _check(self.decoder in DECODERS, f"ModelConfig.decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}.")
        _check(self.sliding_window >= 0, "ModelConfig.sliding_window must be >= 0.")
        _check(self.action_head in HEADS, f"ModelConfig.action_head must be one of {', '.join(HEADS)}, got {self.action_head!r}.")
        _positive(self, "diffusion_steps", "ddim_steps", "action_bins")
        _check(self.ddim_steps <= self.diffusion_steps, "ModelConfig.ddim_steps must be <= diffusion_steps.")
        _check(self.action_bins >= 2, "ModelConfig.action_bins must be >= 2.")

    # Token layout: [language | state | vision | action queries]; spans are (start, end).
    @property
    def num_vision_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def spans(self) -> dict[str, tuple[int, int]]:
        lang = (0, self.num_lang_tokens)
        state = (lang[1], lang[1] + 1)
        vision = (state[1], state[1] + self.num_vision_tokens)
        queries = (vision[1], vision[1] + self.num_query_tokens)
        return {"language": lang, "state": state, "vision": vision, "queries": queries}

    @property
    def seq_len(self) -> int:
        return self.spans["queries"][1]


@dataclass
class TrainConfig(_Base):
    """Optimisation settings shared by the training stages."""

    steps: int = 5500
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 300
    grad_clip: float = 1.0
    shift_augment: int = 4  # random-shift augmentation in pixels (pad + crop)
    checkpoint_every: int = 500
    seed: int = 0
    num_threads: int = 0  # 0: torch default
    # "fsdp": parameters, gradients and optimizer state sharded over the processes (FSDP2, per decoder layer);
    # needs a launch with 2+ processes. Also chosen by `accelerate launch --use_fsdp`.
    sharding: str = "none"
    mixed_precision: str = "no"  # "bf16": compute in bfloat16 (weights, gradients reduced and optimizer in fp32)
    activation_checkpointing: bool = False  # recompute each decoder layer's activations in the backward pass
    # > 0: the written weights are an exponential moving average of the trained ones (torch.optim.swa_utils,
    # decay per step, e.g. 0.999); the training itself is unchanged (the final checkpoint keeps the raw weights)
    ema_decay: float = 0.0

    _LATER_FIELDS = ("sharding", "mixed_precision", "activation_checkpointing", "ema_decay")

    def __post_init__(self) -> None:
        _check(self.sharding in SHARDINGS, f"TrainConfig.sharding must be one of {', '.join(SHARDINGS)}, got {self.sharding!r}.")
        _check(self.mixed_precision in PRECISIONS,
               f"TrainConfig.mixed_precision must be one of {', '.join(PRECISIONS)}, got {self.mixed_precision!r}.")
        _positive(self, "steps", "batch_size", "lr", "checkpoint_every", "grad_clip")
        _check(0.0 <= self.ema_decay < 1.0, f"TrainConfig.ema_decay must be in [0, 1) (0: no average), got {self.ema_decay}.")
        _check(not (self.ema_decay and self.sharding == "fsdp"),
               "TrainConfig.ema_decay cannot be combined with train.sharding=fsdp (the average would need sharding too).")
        _check(self.weight_decay >= 0, "TrainConfig.weight_decay must be >= 0.")
        _check(self.warmup_steps >= 0, "TrainConfig.warmup_steps must be >= 0.")
        _check(self.shift_augment >= 0, "TrainConfig.shift_augment must be >= 0.")
        _check(self.num_threads >= 0, "TrainConfig.num_threads must be >= 0.")


@dataclass
class TeacherConfig(_Base):
    """`actdistill train-teacher`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # instruction augmentation: with this probability a training row's instruction embedding is replaced by one of
    # its task's training-only rewordings (sim/instructions.py REWORDINGS; never the held-out paraphrases); 0 = off
    instruction_reword: float = 0.0

    _LATER_FIELDS = ("instruction_reword",)

    def __post_init__(self) -> None:
        _check(0.0 <= self.instruction_reword <= 1.0,
               f"TeacherConfig.instruction_reword must be in [0, 1], got {self.instruction_reword}.")


@dataclass
class ProbeConfig(_Base):
    """`actdistill probe`: graph semantic extractors + action probes on the frozen teacher (docs/design.md)."""

    semantic_dim: int = 128  # d_s (512 in the paper; CPU-sized here)
    graph_dim: int = 64
    affinity_dim: int = 32
    k: int = 8
    heads: int = 4
    cache_batch_size: int = 256
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=800, batch_size=64, lr=1e-3, warmup_steps=50,
                                                                   shift_augment=0, checkpoint_every=200))

    def __post_init__(self) -> None:
        _positive(self, "semantic_dim", "graph_dim", "affinity_dim", "k", "heads", "cache_batch_size")


@dataclass
class DistillConfig(_Base):
    """`actdistill distill`: routed student trained against the teacher cache (docs/design.md "Losses")."""

    rho: float = 0.5  # target fraction of decoder layers executed
    alpha: float = 1.0  # semantic stream
    beta: float = 1.0  # action stream
    eta: float = 0.5  # relational term inside the semantic stream
    gamma: float = 2.0  # layer-weight exponent
    lambda_bal: float = 1.0
    lambda_bud: float = 20.0
    # "hard": L_bud on the straight-through masks, so the forward value is the fraction of layers actually
    # executed; "soft": on g (the original statement of the budget). With hard gates the soft form is met by gates parked at
    # tau while the executed fraction stays high (measured: g mean 0.50, executed 0.76).
    budget_on: str = "hard"
    lambda_pol: float = 1.0  # polarization: keeps gates away from tau
    tau: float = 0.5
    router_dim: int = 64
    router_init_bias: float = 1.0  # sigmoid(1) = 0.73: the student starts with every layer on, near the threshold
    router_lr_scale: float = 10.0  # router learning rate = this x train.lr
    soft_warmup_steps: int = 0  # soft gates rescale every layer (a different network from the teacher): off by default
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=750, batch_size=64, lr=2e-4, warmup_steps=50,
                                                                   shift_augment=0, checkpoint_every=200))
    # "threshold": m = 1[g >= tau], budget by L_bud and post-hoc calibration; "quantile": exactly rho of a batch's
    # gates pass, and the running estimate of that threshold is the deployed one (no calibration needed)
    gating: str = "threshold"
    threshold_momentum: float = 0.1  # quantile gating: update rate of the running threshold
    # quantile gating, the deployed threshold: "running" (the running estimate over training batches) or "data" (set
    # after training from the final router's logits on evenly spread training frames; no lag behind a drifting
    # logit level, which quantile gating leaves free)
    threshold_source: str = "running"
    always_run: int = 0  # hybrid depth: this many layers run for every input (those that change their input most)
    stream_norm: str = "none"  # "none", "terms" (mean instead of sum), "initial" (each stream / its value at start)
    # the per-layer streams' weight falls linearly from 1 to 0 over this fraction of the training steps and stays 0
    # after (settling included): the streams shape the start, the task loss alone the end; 0 = constant weights
    stream_decay: float = 0.0
    # router consistency (distill/consistency.py): weight of the gate-logit agreement between each batch and a
    # perturbed view of it (brightness and contrast factors in [1 - jitter, 1 + jitter], instruction embeddings moved
    # by up to lang_noise); 0 = off
    router_consistency: float = 0.0
    router_jitter: float = 0.4
    router_lang_noise: float = 1.0
    # the view's instruction: with this probability a row's embedding is first replaced by one of its task's
    # training-only rewordings (sim/instructions.py REWORDINGS; never the held-out paraphrases)
    router_reword: float = 0.0
    # the student's instruction: with this probability a training row's instruction embedding is replaced by one of
    # its task's training-only rewordings before the student reads it, while the teacher's targets stay those of the
    # training instruction (the student learns to act on a rewording as its teacher acts on the instruction; the
    # held-out paraphrases are never used); 0 = off
    instruction_reword: float = 0.0
    # which rows the semantic stream compares at layer l: "all", or "executed" (only the rows that ran layer l)
    semantic_on: str = "all"
    # the router's inputs: "vision" (gates that an unseen phrasing of the instruction cannot move; the decoder
    # still reads the instruction), or "vision+language" (the default until session 27: on validation placements
    # it tied "vision" clean and lost 11 and 14 points more under the two held-out paraphrases, README
    # "Robustness")
    router_inputs: str = "vision"
    # the per-layer teacher targets: "cache" (the probe stage's pass over the unaugmented training frames) or
    # "online" (the frozen teacher and probes run on every batch as the student sees it, after train.shift_augment:
    # the teacher's layers on inputs the training frames do not hold; one teacher forward pass per step)
    teacher_targets: str = "cache"
    # weight of distillation from the teacher's final action through the student's own action head (router-KD's
    # term) added to the objective; not faded by stream_decay, so with it the objective ends as router-KD's
    # (task loss + final action); one teacher forward pass per step; 0 = off (the paper's objective)
    final_kd: float = 0.0

    _LATER_FIELDS = ("gating", "threshold_momentum", "always_run", "stream_norm", "threshold_source",
                     "router_consistency", "router_jitter", "router_lang_noise", "router_reword", "semantic_on",
                     "router_inputs", "stream_decay", "teacher_targets", "instruction_reword", "final_kd")
    _EARLIER_VALUES = {"router_inputs": "vision+language"}  # distillations before session 27 read the instruction

    def __post_init__(self) -> None:
        _check(0.0 < self.rho <= 1.0, f"DistillConfig.rho must be in (0, 1], got {self.rho}.")
        _check(0.0 < self.tau < 1.0, f"DistillConfig.tau must be in (0, 1), got {self.tau}.")
        _check(self.budget_on in ("hard", "soft"), f"DistillConfig.budget_on must be 'hard' or 'soft', got {self.budget_on!r}.")
        for n in ("alpha", "beta", "eta", "gamma", "lambda_bal", "lambda_bud", "lambda_pol"):
            _check(getattr(self, n) >= 0, f"DistillConfig.{n} must be >= 0.")
        _positive(self, "router_dim", "router_lr_scale")
        _check(self.soft_warmup_steps >= 0, "DistillConfig.soft_warmup_steps must be >= 0.")
        _check(self.gating in GATINGS, f"DistillConfig.gating must be one of {', '.join(GATINGS)}, got {self.gating!r}.")
        _check(0.0 < self.threshold_momentum <= 1.0, "DistillConfig.threshold_momentum must be in (0, 1].")
        _check(self.threshold_source in ("running", "data"),
               f"DistillConfig.threshold_source must be 'running' or 'data', got {self.threshold_source!r}.")
        _check(self.always_run >= 0, "DistillConfig.always_run must be >= 0.")
        _check(self.router_consistency >= 0, "DistillConfig.router_consistency must be >= 0.")
        _check(0.0 <= self.router_jitter < 1.0,
               f"DistillConfig.router_jitter must be in [0, 1), got {self.router_jitter}.")
        _check(self.router_lang_noise >= 0, "DistillConfig.router_lang_noise must be >= 0.")
        _check(self.semantic_on in ("all", "executed"),
               f"DistillConfig.semantic_on must be 'all' or 'executed', got {self.semantic_on!r}.")
        _check(0.0 <= self.router_reword <= 1.0,
               f"DistillConfig.router_reword must be in [0, 1], got {self.router_reword}.")
        _check(0.0 <= self.instruction_reword <= 1.0,
               f"DistillConfig.instruction_reword must be in [0, 1], got {self.instruction_reword}.")
        _check(self.stream_norm in STREAM_NORMS,
               f"DistillConfig.stream_norm must be one of {', '.join(STREAM_NORMS)}, got {self.stream_norm!r}.")
        _check(self.teacher_targets in TEACHER_TARGETS, f"DistillConfig.teacher_targets must be one of "
               f"{', '.join(TEACHER_TARGETS)}, got {self.teacher_targets!r}.")
        _check(0.0 <= self.stream_decay <= 1.0,
               f"DistillConfig.stream_decay must be in [0, 1] (a fraction of the training steps), got {self.stream_decay}.")
        _check(self.final_kd >= 0, f"DistillConfig.final_kd must be >= 0, got {self.final_kd}.")
        _check_router_inputs(self)


def _check_router_inputs(cfg) -> None:
    _check(cfg.router_inputs in ROUTER_INPUTS, f"{type(cfg).__name__}.router_inputs must be one of "
           f"{', '.join(ROUTER_INPUTS)}, got {cfg.router_inputs!r}.")


SETTLE_LOSSES = ("distill", "final")
DEFAULT_SETTLE_STEPS = 300  # distillation steps under the calibrated masks after calibration (ExportConfig)


@dataclass
class ExportConfig(_Base):
    """`actdistill export`: strip the graph parts; calibrate the gates on closed-loop rollouts from training placements."""

    calibrate: bool = True
    calib_episodes_per_task: int = 6
    calib_rounds: int = 3
    calib_margin: float = 0.02  # aim this far below rho: evaluation placements differ from calibration ones
    max_steps: int = 300
    # after calibration, continue distilling with the calibrated masks (router frozen): on by default since the
    # rho-0.3 and rho-0.5 ablations on validation placements (README "Low budgets"); 0 turns it off
    settle_steps: int = DEFAULT_SETTLE_STEPS
    # what settling trains: "distill" continues the distillation's own objective (both streams); "final" trains on
    # the task loss plus distillation from the teacher's final action only (the per-layer targets assume the
    # teacher's depth, which a student with most layers skipped cannot follow)
    settle_loss: str = "distill"
    # gate snapping: after the first calibration round, a layer on in >= 1 - snap of the closed-loop steps runs for
    # every input and one on in <= snap for none (0 = off); the shift is then chosen for the remaining gates
    snap: float = 0.0
    # calibration rounds run their episodes in this many worker processes, each with a copy of the student. Like
    # thread settings (recorded in provenance), it changes float rounding, not the method: at the default it is left
    # out of the config hash, so exports calibrated in-process before it existed are still reused
    calib_workers: int = 2

    _LATER_FIELDS = ("settle_steps", "snap", "settle_loss", "calib_workers")
    _EARLIER_VALUES = {"settle_steps": 0}  # exports made before settling was the default did not settle

    def __post_init__(self) -> None:
        _positive(self, "calib_episodes_per_task", "calib_rounds", "max_steps", "calib_workers")
        _check(self.settle_steps >= 0, "ExportConfig.settle_steps must be >= 0.")
        _check(self.settle_loss in SETTLE_LOSSES,
               f"ExportConfig.settle_loss must be one of {', '.join(SETTLE_LOSSES)}, got {self.settle_loss!r}.")
        _check(0 <= self.snap < 0.5, f"ExportConfig.snap must be in [0, 0.5), got {self.snap}.")
        _check(self.snap == 0 or (self.calibrate and self.calib_rounds >= 2),
               "ExportConfig.snap needs calibration with at least 2 rounds (the snapped student is measured again).")
        _check(0 <= self.calib_margin < 0.5, "ExportConfig.calib_margin must be in [0, 0.5).")

    @property
    def settles(self) -> bool:
        """Whether export settles the calibrated student (settling follows calibration)."""
        return self.calibrate and self.settle_steps > 0


@dataclass
class EvalConfig(_Base):
    """`actdistill evaluate`: closed loop on held-out placements."""

    episodes_per_task: int = 20
    max_steps: int = 300
    seed: int = 0  # held-out placement seeds are 10_000_000 + seed*100_000 + i
    workers: int = 2
    gifs_per_task: int = 0
    batch_envs: int = 10  # environments stepped in lock-step, one batched policy call per step
    # "test": the held-out placements every reported number uses; "val": a disjoint range for every choice made
    # from rollouts (ablations, hyperparameters, thresholds), so that test numbers are never tuned on
    split: str = "test"
    # an observation perturbation applied inside the runner, seeded by placement and step so that every policy
    # sees the same one (sim/perturb.py: PERTURB_PRESETS, or "kind:level" with kind in PERTURB_KINDS)
    perturb: str = "none"
    trace: bool = False  # keep per-step layer counts, gripper commands and gate statistics in episodes.json

    _LATER_FIELDS = ("split", "perturb", "trace")

    def __post_init__(self) -> None:
        _positive(self, "episodes_per_task", "max_steps", "workers", "batch_envs")
        _check(self.gifs_per_task >= 0, "EvalConfig.gifs_per_task must be >= 0.")
        _check(self.split in ("test", "val"), f"EvalConfig.split must be 'test' or 'val', got {self.split!r}.")
        _check(0 <= self.seed < 1000, f"EvalConfig.seed must be in [0, 1000), got {self.seed}.")
        parse_perturbation(self.perturb)


@dataclass
class BenchConfig(_Base):
    """`actdistill bench`: teacher, ActDistill students and the simpler ways to spend the same compute."""

    actdistill_budgets: tuple[float, ...] = (0.3, 0.5, 0.7)
    baseline_budgets: tuple[float, ...] = (0.3, 0.5)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(episodes_per_task=30))
    scratch_compute_scale: float = 1.0  # scratch training FLOPs = this x (teacher + distillation) training FLOPs
    latency_repeats: int = 50
    latency_frames: int = 40
    bootstrap_samples: int = 2000
    compile: bool = False  # also measure latency under torch.compile
    seeds: int = 1  # training seeds of every trained row (seed k trains with train.seed + k); rows pool them
    # only these training seeds (indices below `seeds`) in this invocation: one part of a bench split across machines
    # or sessions, whose results files `actdistill bench-merge` pools; (): all of them
    seed_list: tuple[int, ...] = ()
    baselines: tuple[str, ...] = ()  # which registered baselines run at every baseline budget; () = all of them
    # each row (its seed-0 policy) also runs the first N of its placements of every task (at most
    # eval.episodes_per_task) under each held-out paraphrase of the instruction; 0: none
    paraphrase_episodes_per_task: int = 10

    _LATER_FIELDS = ("baselines", "paraphrase_episodes_per_task", "seed_list")

    def __post_init__(self) -> None:
        self.actdistill_budgets = tuple(self.actdistill_budgets)
        self.baseline_budgets = tuple(self.baseline_budgets)
        self.baselines = tuple(self.baselines)
        self.seed_list = tuple(self.seed_list)
        _check(len(set(self.seed_list)) == len(self.seed_list), "BenchConfig.seed_list names a seed twice.")
        for k in self.seed_list:
            _check(0 <= k < self.seeds, f"BenchConfig.seed_list: seed {k} is not among the {self.seeds} training seeds "
                                        f"(0 to {self.seeds - 1}); raise --seeds or drop it.")
        _check(len(set(self.baselines)) == len(self.baselines), "BenchConfig.baselines names a baseline twice.")
        _check(self.paraphrase_episodes_per_task >= 0,
               f"BenchConfig.paraphrase_episodes_per_task must be >= 0, got {self.paraphrase_episodes_per_task}.")
        for r in self.actdistill_budgets + self.baseline_budgets:
            _check(0.0 < r <= 1.0, f"BenchConfig budgets must be in (0, 1], got {r}.")
        for r in self.baseline_budgets:
            _check(r in self.actdistill_budgets, f"BenchConfig.baseline_budgets: {r} has no ActDistill row to match.")
        _positive(self, "scratch_compute_scale", "latency_repeats", "latency_frames", "bootstrap_samples", "seeds")

    def seeds_run(self) -> tuple[int, ...]:
        """The training seed indices this invocation trains and evaluates."""
        return tuple(sorted(self.seed_list)) if self.seed_list else tuple(range(self.seeds))

    @classmethod
    def quick(cls) -> "BenchConfig":
        """A smoke run of every row at one budget: few episodes, short timings, a tenth of the scratch compute."""
        return cls(actdistill_budgets=(0.5,), baseline_budgets=(0.5,), eval=EvalConfig(episodes_per_task=3, max_steps=200),
                   scratch_compute_scale=0.1, latency_repeats=10, latency_frames=8, bootstrap_samples=500)


@dataclass
class StudentConfig(_Base):
    """The `config.json` of an exported routed student (`actdistill export`, routed baselines, `export_student`)."""

    model: Optional[ModelConfig] = None  # the reference VLA's config; None: a model of your own (`model_class`)
    model_class: str = ""  # module.QualifiedName of the wrapped model, for the message that asks for an instance
    router_dim: int = 64
    tau: float = 0.5
    rho: float = 0.5
    tasks: tuple[str, ...] = ()
    router_inputs: str = "vision+language"

    _LATER_FIELDS = ("router_inputs",)

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        _positive(self, "router_dim")
        _check_router_inputs(self)
        _check(0.0 < self.tau < 1.0, f"StudentConfig.tau must be in (0, 1), got {self.tau}.")
        _check(0.0 < self.rho <= 1.0, f"StudentConfig.rho must be in (0, 1], got {self.rho}.")


@dataclass
class EarlyExitConfig(_Base):
    """The `config.json` of an early-exit policy: the teacher and probe folders it runs, and its exit threshold."""

    teacher: str = ""
    probe: str = ""
    threshold: float = 0.0

    def __post_init__(self) -> None:
        _check(bool(self.teacher) and bool(self.probe), "EarlyExitConfig needs the teacher and probe folders.")
        _check(self.threshold >= 0, "EarlyExitConfig.threshold must be >= 0.")


def _check_perturbations(items: tuple[str, ...], where: str) -> None:
    """A list of perturbations to evaluate besides the clean run: each parses, none is 'none', none is listed twice."""
    for p in items:
        _check(p != "none", f"{where} lists 'none'; the clean evaluation is always made.")
        parse_perturbation(p)
    twice = sorted({p for p in items if items.count(p) > 1})
    _check(not twice, f"{where} lists {', '.join(twice)} twice.")


@dataclass
class AblationConfig(_Base):
    """`actdistill ablate`: variants of the distillation at one budget, each evaluated on validation placements."""

    rho: float = 0.3
    variants: tuple[str, ...] = ("full", "no-semantic", "no-action", "router-kd", "norm-terms", "norm-initial",
                                 "quantile", "hybrid", "full+settle", "router-kd+settle")
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(episodes_per_task=30, split="val"))
    bootstrap_samples: int = 2000
    perturbations: tuple[str, ...] = ()  # also evaluate every variant under these (sim/perturb.py), on validation
    reference: str = "full"  # the variant every other row is paired with; it must be one of `variants`
    # training seeds of every variant (seed k trains with train.seed + k, as in the bench); rows pool them and
    # every difference is seed-paired
    seeds: int = 1

    _LATER_FIELDS = ("perturbations", "reference", "seeds")

    def __post_init__(self) -> None:
        self.variants = tuple(self.variants)
        self.perturbations = tuple(self.perturbations)
        _check_perturbations(self.perturbations, "AblationConfig.perturbations")
        _check(self.eval.perturb == "none", "AblationConfig.eval.perturb must be 'none'; list perturbations in "
                                            "AblationConfig.perturbations.")
        _check(0.0 < self.rho <= 1.0, f"AblationConfig.rho must be in (0, 1], got {self.rho}.")
        _check(len(self.variants) > 0, "AblationConfig.variants must name at least one variant.")
        _check(self.reference in self.variants, f"AblationConfig.reference {self.reference!r} must be one of the variants "
                                                f"({', '.join(self.variants)}): every other row is paired with it.")
        _check(self.eval.split == "val", "AblationConfig.eval.split must be 'val': choices are made on validation "
                                         "placements, never on the test placements the reported numbers use.")
        _positive(self, "bootstrap_samples", "seeds")


@dataclass
class RobustnessConfig(_Base):
    """`actdistill robustness`: teacher, ActDistill students and the same-budget static-prune and router-KD rows,
    each clean and under every perturbation, on the same test placements."""

    budgets: tuple[float, ...] = (0.5,)
    baselines: tuple[str, ...] = ("static-prune", "router-kd")
    perturbations: tuple[str, ...] = tuple(PERTURB_PRESETS)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(episodes_per_task=20, trace=True))
    bootstrap_samples: int = 2000
    event_window: int = 3  # steps either side of a gripper open/close command counted as "around the event"
    final_steps: int = 10  # the last steps before success counted as "before success"
    variants: tuple[str, ...] = ()  # ablation variants (made by `actdistill ablate` at each budget) reported as rows too

    _LATER_FIELDS = ("variants",)

    def __post_init__(self) -> None:
        self.budgets = tuple(self.budgets)
        self.baselines = tuple(self.baselines)
        self.variants = tuple(self.variants)
        self.perturbations = tuple(self.perturbations)
        for r in self.budgets:
            _check(0.0 < r <= 1.0, f"RobustnessConfig budgets must be in (0, 1], got {r}.")
        _check(len(self.budgets) > 0, "RobustnessConfig.budgets must name at least one budget.")
        _check_perturbations(self.perturbations, "RobustnessConfig.perturbations")
        _check(self.eval.split == "test", "RobustnessConfig.eval.split must be 'test': the table reports numbers.")
        _check(self.eval.perturb == "none", "RobustnessConfig.eval.perturb must be 'none'; list perturbations in "
                                            "RobustnessConfig.perturbations.")
        _check(self.eval.trace, "RobustnessConfig.eval.trace must be true: gate statistics come from the traces.")
        _positive(self, "bootstrap_samples", "event_window", "final_steps")


@dataclass
class RunConfig(_Base):
    """`actdistill run`: the whole pipeline on the built-in MT10 setting."""

    out: str = "runs/default"
    collect: CollectConfig = field(default_factory=CollectConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    # a distillation set smaller than the teacher's training set (0 = the same set): the teacher trains on
    # collect.demos_per_task demos per task, while the probes, the distillation, settling and every bench row
    # (the scratch model included) see only the first this many of them, as a user distilling a teacher trained on
    # data they do not hold would
    distill_demos_per_task: int = 0

    _LATER_FIELDS = ("distill_demos_per_task",)

    def __post_init__(self) -> None:
        _check(self.teacher.model.image_size == self.collect.sim.image_size,
               "RunConfig: teacher.model.image_size must equal collect.sim.image_size.")
        _check(0 <= self.distill_demos_per_task < self.collect.demos_per_task,
               f"RunConfig.distill_demos_per_task must be 0 (the teacher's set) or fewer than collect.demos_per_task "
               f"({self.collect.demos_per_task}), got {self.distill_demos_per_task}.")

    @classmethod
    def quick(cls, out: str = "runs/quick") -> "RunConfig":
        """A first look: fewer demos, a shorter training, fewer episodes (a smoke run, not a result)."""
        return cls(
            out=out,
            collect=CollectConfig(demos_per_task=10),
            teacher=TeacherConfig(train=TrainConfig(steps=900, checkpoint_every=300)),
            eval=EvalConfig(episodes_per_task=5, max_steps=200),
            probe=ProbeConfig(train=TrainConfig(steps=150, lr=1e-3, warmup_steps=20, shift_augment=0, checkpoint_every=150)),
            distill=DistillConfig(soft_warmup_steps=30, train=TrainConfig(steps=250, lr=2e-4, warmup_steps=20,
                                                                          shift_augment=0, checkpoint_every=250)),
            export=ExportConfig(calib_episodes_per_task=3, calib_rounds=2, max_steps=200),
        )


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of `cfg` with dotted-path overrides applied and re-validated."""
    data = cfg.to_dict(full=True)
    for path, value in overrides.items():
        node = data
        parts = path.split(".")
        for p in parts[:-1]:
            if not isinstance(node, dict) or p not in node:
                raise ConfigError(f"Unknown config field {path!r}.")
            node = node[p]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"Unknown config field {path!r}.")
        node[parts[-1]] = value
    return type(cfg).from_dict(data)
