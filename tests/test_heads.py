"""The three action-head families: their losses, decoding, training, distillation and checkpoint checks."""

import json

import pytest
import torch

from actdistill.artifacts import ArtifactError
from actdistill.config import ExportConfig, SimConfig
from actdistill.constants import ACTION, ACTION_PAD
from actdistill.distill.stage import run_distill
from actdistill.evaluate import evaluate
from actdistill.export import load_student, run_export
from actdistill.models.heads import DiffusionHead, DiscreteHead, head_family_of
from actdistill.models.vla import ReferenceVLA
from actdistill.probe.stage import run_probe
from actdistill.teacher import load_teacher, train_teacher
from tests.conftest import TINY_TASKS, tiny_model_config, tiny_teacher_config
from tests.test_routing import _batch
from tests.test_stages import DISTILL, PROBE


def _labelled(cfg, b=16, seed=1):
    batch = _batch(cfg, b, seed)
    g = torch.Generator().manual_seed(seed + 1)
    batch[ACTION] = torch.rand(b, cfg.chunk_size, 4, generator=g) * 2 - 1
    batch[ACTION_PAD] = torch.zeros(b, cfg.chunk_size, dtype=torch.bool)
    batch[ACTION_PAD][:, -1] = True  # the last chunk step lies beyond the episode
    return batch


@pytest.mark.parametrize("family", ["regression", "diffusion", "discrete"])
def test_each_head_trains_and_decodes_continuous_actions(family):
    torch.manual_seed(0)
    cfg = tiny_model_config(action_head=family, ddim_steps=5, diffusion_steps=50)
    model = ReferenceVLA(cfg)
    assert head_family_of(model.state_dict()) == family
    batch = _labelled(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10]), losses[::10]  # the family's own loss goes down
    model.eval()
    with torch.no_grad():
        act = model.predict_chunk(batch)[0]
    assert act.shape == (16, cfg.chunk_size, 4) and act.abs().max() <= 1.0 + 1e-6 and torch.isfinite(act).all()


def test_discrete_head_bins_are_uniform_and_decode_to_their_centres():
    head = DiscreteHead(8, chunk=2)
    assert head.bins == 256
    x = torch.linspace(-1, 1, 1001)
    idx = head.to_bins(x)
    assert idx.min() == 0 and idx.max() == 255
    assert (head.centres(idx) - x).abs().max() <= 1.0 / 256 + 1e-6  # half a bin width of 2/256
    # one-hot logits on the right bins decode to those centres
    target = torch.rand(3, 2, 4) * 2 - 1
    with torch.no_grad():
        head.vocab.weight.zero_()
    logits = torch.nn.functional.one_hot(head.to_bins(target), 256).float()
    torch.testing.assert_close(head.centres(logits.argmax(-1)), head.centres(head.to_bins(target)))


def test_ddim_sampling_with_an_exact_noise_predictor_returns_the_clean_chunk():
    torch.manual_seed(0)
    head = DiffusionHead(8, chunk=3, train_steps=100, ddim_steps=10)
    x0 = torch.rand(2, 3, 4) * 1.6 - 0.8
    abar = head.sampler.alphas_cumprod

    def oracle(x, t, c):  # the noise that takes x0 to x at step t
        a = abar[t.long()].view(-1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    head.eps = oracle
    torch.testing.assert_close(head.decode(torch.zeros(2, 8)), x0, atol=1e-4, rtol=0)
    # the training loss adds noise with the same schedule
    noisy = head.train_scheduler.add_noise(x0, torch.zeros_like(x0), torch.tensor([0, 0]))
    torch.testing.assert_close(noisy, abar[0].sqrt() * x0)


@pytest.fixture(scope="module")
def diffusion_teacher(tiny_demos, tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusion-teacher")
    torch.manual_seed(0)
    train_teacher(tiny_teacher_config(steps=20, action_head="diffusion", ddim_steps=4, diffusion_steps=40), tiny_demos, out,
                  progress=False)
    return out


def test_a_diffusion_teacher_distils_exports_and_runs_in_closed_loop(diffusion_teacher, tiny_demos, tmp_path):
    teacher, _ = load_teacher(diffusion_teacher)
    assert teacher.config.action_head == "diffusion"
    run_probe(PROBE, diffusion_teacher, tiny_demos, tmp_path / "probe", progress=False)
    s = run_distill(DISTILL, diffusion_teacher, tmp_path / "probe", tiny_demos, tmp_path / "distill", progress=False)
    assert s["steps"] == DISTILL.train.steps and all(torch.isfinite(torch.tensor(v)) for v in s["final"].values())
    assert s["train_keep_ratio"] < 1.0  # the router moved towards the budget
    sim = SimConfig(tasks=TINY_TASKS, image_size=32)
    run_export(ExportConfig(calibrate=False), tmp_path / "distill", tiny_demos, tmp_path / "x", sim, progress=False)
    student = load_student(tmp_path / "x")
    assert student.vla.config.action_head == "diffusion" and head_family_of(student.state_dict(), "vla.head.") == "diffusion"
    from actdistill.config import EvalConfig

    row = evaluate(student, EvalConfig(episodes_per_task=1, max_steps=6, workers=1), sim, name="student")
    assert 0.0 <= row["layers_executed_frac"] <= 1.0 and row["episodes_per_task"] == 1


def test_a_checkpoint_of_another_head_family_is_refused_in_one_sentence(diffusion_teacher, tmp_path):
    import shutil

    shutil.copytree(diffusion_teacher, tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    cfg["model"]["action_head"] = "discrete"
    (tmp_path / "t" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError) as err:
        load_teacher(tmp_path / "t")
    msg = str(err.value)
    assert "'diffusion' action head" in msg and "'discrete'" in msg and msg.count(". ") == 0


def test_final_action_distillation_needs_a_regression_head():
    from actdistill.distill.stage import final_action_loss
    from actdistill.config import DistillConfig
    from actdistill.distill.routing import RoutedStudent

    cfg = tiny_model_config(action_head="discrete")
    teacher = ReferenceVLA(cfg)
    student = RoutedStudent.from_teacher(teacher, None, router_dim=8)
    with pytest.raises(ValueError, match="regression head"):
        final_action_loss(student, teacher, _labelled(cfg), DistillConfig())


@pytest.mark.parametrize("family", ["regression", "diffusion", "discrete"])
def test_state_and_action_sizes_come_from_the_config(family):
    """Another robot: 9 state values and 6 action values, for every head family (and the probes follow)."""
    from actdistill.models.vla import ReferenceVLA
    from actdistill.probe.stage import build_probes
    from actdistill.config import ProbeConfig
    from tests.conftest import tiny_model_config

    torch.manual_seed(0)
    vla = ReferenceVLA(tiny_model_config(state_dim=9, action_dim=6, action_head=family)).eval()
    b = 3
    batch = {"observation.image": torch.randint(0, 255, (b, 32, 32, 3), dtype=torch.uint8),
             "observation.state": torch.randn(b, 9), "observation.language": torch.randn(b, 384)}
    with torch.no_grad():
        assert vla.predict(batch).shape == (b, vla.config.chunk_size, 6)
    probes = build_probes(ProbeConfig(semantic_dim=8, graph_dim=8, affinity_dim=4, k=2, heads=1), vla)
    with torch.no_grad():
        _, actions = probes(vla.backbone(vla.embed(batch), return_hidden=True)[1])
    assert actions.shape[-1] == 6 and vla.state_dim == 9
