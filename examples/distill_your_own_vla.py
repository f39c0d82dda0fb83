"""Distill your own VLA: a transformers vision-language model as the teacher, from wrapping to exported student.

The VLA below is built here, from configs, with no download: a LLaVA model (CLIP vision tower,
projector, Llama language model) from `transformers`, plus what turns a VLM into a policy: a state
token, an action-query ("cognition") token and an action head of any of the three families. Its
language model is driven layer by layer through `DecoderBackbone`, so the router can skip layers.

    python examples/distill_your_own_vla.py --data runs/default/collect/demos.hdf5 --out runs/byo
    python examples/distill_your_own_vla.py --data ... --out ... --head diffusion --episodes 5

The defaults take minutes on a laptop CPU and show the mechanics (the teacher is briefly trained,
so its success is low); scale `--teacher-steps` and the model for a real policy. Multi-GPU: run the
same script under `accelerate launch` or `torchrun`; every training stage goes through Accelerate.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from actdistill.artifacts import hash_tensors
from actdistill.bench.flops import policy_flops
from actdistill.config import DistillConfig, EvalConfig, ProbeConfig, SimConfig, TrainConfig
from actdistill.constants import ACTION, ACTION_PAD, OBS_IMAGE, OBS_LANG, OBS_STATE, STATE_DIM
from actdistill.data.dataset import FrameDataset
from actdistill.data.hdf5 import read_demos
from actdistill.distill.stage import distill_student
from actdistill.evaluate import evaluate
from actdistill.export import export_student, load_student
from actdistill.models.backbone import DecoderBackbone
from actdistill.models.heads import build_head
from actdistill.models.policy import PolicyMixin
from actdistill.probe.stage import load_probe_artifact, train_probes
from actdistill.training import train_loop


def build_vlm(hidden: int = 64, layers: int = 8, image_size: int = 64) -> LlavaForConditionalGeneration:
    """A small LLaVA, randomly initialised (in practice: `from_pretrained` of your own checkpoint)."""
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=16)
    text = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=512, max_position_embeddings=64)
    return LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=511,
                                                     vision_feature_layer=-1, vision_feature_select_strategy="full"))


class LlavaVLA(PolicyMixin, nn.Module):
    """A VLM turned policy. Tokens: [instruction (2) | state (1) | image (1 + patches) | action query (1)].

    It meets actdistill's model contract (actdistill.models.contract): embed, backbone, action_head,
    task_loss, spans and the sizes."""

    def __init__(self, vlm: LlavaForConditionalGeneration, head: str = "regression", chunk_size: int = 4,
                 lang_dim: int = 384):
        super().__init__()
        self.vlm = vlm
        # finds vlm.model.language_model and drives its layers; register=False: the VLM already holds it
        self.backbone = DecoderBackbone(vlm, register=False)
        d = self.hidden_size = vlm.config.text_config.hidden_size
        self.image_size = vlm.config.vision_config.image_size
        self.chunk_size, self.n_action_steps = chunk_size, 1
        n_img = (self.image_size // vlm.config.vision_config.patch_size) ** 2 + 1  # CLIP patches + class token
        # The instruction arrives as a sentence embedding (OBS_LANG); a tokenizer-based VLM would embed its
        # instruction tokens here instead (vlm.get_input_embeddings()), and the language span would cover them.
        self.lang_proj = nn.Linear(lang_dim, 2 * d)
        self.state_proj = nn.Linear(STATE_DIM, d)
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.head = build_head(head, d, chunk_size)
        self.head_family = head
        self.spans = {"language": (0, 2), "state": (2, 3), "vision": (3, 3 + n_img), "queries": (3 + n_img, 4 + n_img)}
        self.register_buffer("state_mean", torch.zeros(STATE_DIM))
        self.register_buffer("state_std", torch.ones(STATE_DIM))
        self.reset()

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    def embed(self, batch: dict) -> torch.Tensor:
        img = batch[OBS_IMAGE].permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        vision = self.vlm.model.vision_tower(pixel_values=img).last_hidden_state
        image_tokens = self.vlm.model.multi_modal_projector(vision)  # (B, 1 + patches, D), LLaVA's own projector
        b, d = img.shape[0], self.hidden_size
        state = (batch[OBS_STATE] - self.state_mean) / self.state_std
        return torch.cat([self.lang_proj(batch[OBS_LANG]).view(b, 2, d), self.state_proj(state).unsqueeze(1), image_tokens,
                          self.query.expand(b, -1, -1)], dim=1)

    def cognition(self, h_normed: torch.Tensor) -> torch.Tensor:
        q0, q1 = self.spans["queries"]
        return h_normed[:, q0:q1].flatten(1)

    def action_head(self, h_normed: torch.Tensor) -> torch.Tensor:
        return self.head.decode(self.cognition(h_normed))

    def task_loss(self, h_normed: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.head.loss(self.cognition(h_normed), batch[ACTION], batch.get(ACTION_PAD))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:  # teacher training
        loss = self.task_loss(self.backbone(self.embed(batch)), batch)
        return loss, {"loss": loss.item()}

    def predict(self, batch: dict) -> torch.Tensor:
        return self.action_head(self.backbone(self.embed(batch)))

    def predict_chunk(self, batch: dict):  # closed loop (PolicyMixin.select_action)
        chunk = self.predict(batch).clamp(-1.0, 1.0)
        return chunk, torch.ones(chunk.shape[0], self.num_layers, dtype=torch.bool)


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("MUJOCO_GL", "egl")  # a script may choose offscreen rendering for itself (no display needed)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="demos.hdf5 from `actdistill collect` (64x64 images by default).")
    ap.add_argument("--out", required=True)
    ap.add_argument("--head", default="regression", choices=("regression", "diffusion", "discrete"))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--teacher-steps", type=int, default=600)
    ap.add_argument("--probe-steps", type=int, default=150)
    ap.add_argument("--distill-steps", type=int, default=300)
    ap.add_argument("--rho", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--episodes", type=int, default=0, help="closed-loop episodes per task for teacher and student (0: skip).")
    ap.add_argument("--max-steps", type=int, default=EvalConfig().max_steps, help="environment steps per episode.")
    args = ap.parse_args(argv)
    out = Path(args.out)

    demos = read_demos(Path(args.data))
    image_size = demos.demos[0].images.shape[1]
    data = FrameDataset(demos, chunk_size=4, task_names=tuple(demos.env_args.get("tasks") or demos.tasks))

    def train(steps: int) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=args.batch_size, lr=5e-4, warmup_steps=max(1, steps // 10),
                           checkpoint_every=max(1, steps // 2), shift_augment=0)

    # 1. your model: a transformers VLM + policy parts, trained as the teacher (skip this if yours is trained)
    torch.manual_seed(0)
    teacher = LlavaVLA(build_vlm(layers=args.layers, image_size=image_size), head=args.head)
    teacher.state_mean.copy_(data.state_stats()[0])
    teacher.state_std.copy_(data.state_stats()[1])
    train_loop(model=teacher, dataset=data, cfg=train(args.teacher_steps), out_dir=out / "teacher", stage="train-teacher")
    teacher.eval()

    # 2. probe every layer of the frozen teacher (graph extractors + action probes) and write the teacher cache
    train_probes(ProbeConfig(train=train(args.probe_steps)), teacher, data, out / "probe")
    probes, cache, _ = load_probe_artifact(out / "probe", teacher, hash_tensors(teacher.state_dict()), data.fingerprint)

    # 3. distil: the student is a copy of the teacher with a router over its language-model layers
    dcfg = DistillConfig(rho=args.rho, train=train(args.distill_steps))
    student, summary = distill_student(dcfg, teacher, probes, cache, data, out / "distill")

    # 4. export through the package (graph parts dropped; safetensors, config and header with its weights hash), then
    #    load it back into a fresh instance of your model class, as a deployment would
    export_student(student, out / "student", rho=args.rho, tasks=list(data.task_names))
    deployed = load_student(out / "student", model=LlavaVLA(build_vlm(layers=args.layers, image_size=image_size),
                                                            head=args.head))

    frames = [data.batch(i.view(1)) for i in torch.linspace(0, len(data) - 1, 16).long()]
    t_flops = policy_flops(teacher, frames[0])
    s_flops = [policy_flops(deployed, f) for f in frames]
    report = {
        "head": args.head, "decoder_layers": teacher.num_layers, "train_keep_ratio": summary["train_keep_ratio"],
        "layers_executed_frac": float(torch.cat([deployed.layer_mask(deployed.vla.embed(f)).float() for f in frames]).mean()),
        "teacher_decoder_gflops": t_flops["decoder_flops"] / 1e9,
        "student_decoder_gflops": sum(f["decoder_flops"] for f in s_flops) / len(s_flops) / 1e9,
    }
    if args.episodes:
        sim = SimConfig(tasks=data.task_names, image_size=image_size)
        ecfg = EvalConfig(episodes_per_task=args.episodes, max_steps=args.max_steps, workers=1)
        report["teacher_success"] = evaluate(teacher, ecfg, sim, name="teacher")["success_mean"]
        report["student_success"] = evaluate(deployed, ecfg, sim, name="student")["success_mean"]
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
