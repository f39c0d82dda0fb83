"""Bring your own VLA: a transformers vision-language model as teacher, through the model contract."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from actdistill.distill.routing import RoutedStudent
from actdistill.models.backbone import AdapterError, DecoderBackbone
from actdistill.models.contract import SpanError, check_vla
from tests.test_routing import _batch

ROOT = Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("distill_your_own_vla", ROOT / "examples" / "distill_your_own_vla.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return _example()


def _vla(example, layers=4, head="regression"):
    torch.manual_seed(0)
    return example.LlavaVLA(example.build_vlm(hidden=32, layers=layers, image_size=32), head=head).eval()


class _Cfg:
    image_size = 32


def test_the_layer_loop_equals_the_vlm_language_model(example):
    vla = _vla(example)
    h = vla.embed(_batch(_Cfg, 3))
    lm = vla.vlm.model.language_model
    assert vla.backbone.model is lm  # found inside the VLM, not a copy
    ref = lm(inputs_embeds=h).last_hidden_state
    torch.testing.assert_close(vla.backbone(h), ref, atol=1e-5, rtol=1e-5)


def test_the_router_reads_the_vlm_spans_and_skipped_layers_do_not_run(example):
    vla = _vla(example, layers=4)
    student = RoutedStudent.from_teacher(vla, None, router_dim=8).eval()
    with torch.no_grad():
        student.router.gate.weight.zero_()
        student.router.gate.bias.copy_(torch.tensor([5.0, -5.0, 5.0, -5.0]))
    calls = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in enumerate(student.vla.backbone.layers)]
    chunk, mask = student.predict_chunk(_batch(_Cfg, 2))
    for h in hooks:
        h.remove()
    assert sorted(set(calls)) == [0, 2] and mask.float().mean() == 0.5 and chunk.shape == (2, 4, 4)
    # the router's summary reads exactly the vision and language spans: changing a state token changes nothing
    h0 = student.vla.embed(_batch(_Cfg, 2))
    s0, _ = student.vla.spans["state"]
    bumped = h0.clone()
    bumped[:, s0] += 10.0
    torch.testing.assert_close(student.router.logits(bumped), student.router.logits(h0))


def test_a_span_outside_the_sequence_is_one_sentence(example):
    vla = _vla(example)
    vla.spans = {**vla.spans, "vision": (3, 400)}
    student = RoutedStudent.from_teacher(vla, None, router_dim=8)
    with pytest.raises(SpanError) as err:
        student.predict_chunk(_batch(_Cfg, 1))
    assert "vision span (3, 400) lies outside the" in str(err.value) and str(err.value).count(". ") == 0


def test_a_model_without_the_contract_or_without_layers_is_refused_in_one_sentence(example):
    with pytest.raises(AdapterError, match="lacks embed, backbone"):
        check_vla(torch.nn.Linear(2, 2))
    with pytest.raises(AdapterError, match="Could not find decoder layers in Sequential"):
        DecoderBackbone(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("head", ["diffusion"])
def test_the_worked_example_runs_from_wrapping_to_exported_student(example, tiny_demos, tmp_path, head):
    report = example.main(["--data", str(tiny_demos), "--out", str(tmp_path), "--head", head, "--layers", "4",
                           "--teacher-steps", "6", "--probe-steps", "4", "--distill-steps", "6", "--batch-size", "8",
                           "--episodes", "1", "--max-steps", "20"])
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert report["head"] == head and report["decoder_layers"] == 4
    assert 0.0 <= report["layers_executed_frac"] <= 1.0 and 0.0 <= report["student_success"] <= 1.0
    assert report["student_decoder_gflops"] == pytest.approx(report["teacher_decoder_gflops"] * report["layers_executed_frac"])
    saved = (tmp_path / "student" / "model.safetensors")
    from safetensors.torch import load_file

    assert not any(k.startswith("probes.") for k in load_file(str(saved)))  # the graph parts are gone


def test_a_routed_student_of_your_own_model_exports_and_reloads_with_identical_actions(example, tmp_path):
    from actdistill.artifacts import ArtifactError
    from actdistill.export import export_student, load_student

    vla = _vla(example, layers=4)
    student = RoutedStudent.from_teacher(vla, None, router_dim=8).eval()
    with torch.no_grad():  # an input-dependent router, so the reload must carry it
        student.router.gate.weight.normal_(std=2.0)
    export_student(student, tmp_path / "s", rho=0.5, tasks=["reach-v3"])
    with pytest.raises(ArtifactError, match="fresh instance of that class"):
        load_student(tmp_path / "s")
    back = load_student(tmp_path / "s", model=example.LlavaVLA(example.build_vlm(hidden=32, layers=4, image_size=32)))
    batch = _batch(_Cfg, 4)
    with torch.no_grad():
        a, ma = student.predict_chunk(batch)
        b, mb = back.predict_chunk(batch)
    assert torch.equal(ma, mb) and torch.equal(a, b) and 0 < ma.float().mean() < 1


def test_the_example_does_not_train_on_padded_chunk_steps(example):
    """Chunk steps past an episode's end (ACTION_PAD) carry no loss: changing them leaves the task loss as it is,
    changing a real step does not (the example once read a key that does not exist and trained on padding)."""
    from actdistill.constants import ACTION, ACTION_PAD

    vla = _vla(example)
    batch = _batch(_Cfg, 3)
    batch[ACTION] = torch.rand(3, vla.chunk_size, 4) * 2 - 1
    pad = torch.zeros(3, vla.chunk_size, dtype=torch.bool)
    pad[:, -2:] = True
    batch[ACTION_PAD] = pad
    with torch.no_grad():
        h = vla.backbone(vla.embed(batch))
        base = vla.task_loss(h, batch)
        padded = dict(batch, **{ACTION: batch[ACTION].clone()})
        padded[ACTION][:, -2:] += 5.0
        real = dict(batch, **{ACTION: batch[ACTION].clone()})
        real[ACTION][:, 0] += 5.0
        assert torch.equal(vla.task_loss(h, padded), base)
        assert not torch.equal(vla.task_loss(h, real), base)
