import pytest
import torch

from actdistill.early_exit import EarlyExitPolicy, choose_exit_threshold
from actdistill.bench.baselines import layer_input_similarity, static_prune_student, task_loss
from actdistill.config import DistillConfig
from actdistill.data.dataset import FrameDataset
from actdistill.data.hdf5 import read_demos
from actdistill.distill.stage import final_action_loss
from actdistill.probe.graph import LayerProbes
from actdistill.teacher import load_teacher
from tests.conftest import TINY_TASKS


@pytest.fixture(scope="module")
def setup(tiny_teacher, tiny_demos):
    teacher, _ = load_teacher(tiny_teacher)
    data = FrameDataset(read_demos(tiny_demos), teacher.config.chunk_size, TINY_TASKS)
    return teacher, data


def test_static_prune_runs_the_least_input_preserving_layers(setup):
    teacher, data = setup
    sims = layer_input_similarity(teacher, data, count=32)
    assert sims.shape == (4,) and ((sims > -1) & (sims <= 1)).all()
    student = static_prune_student(teacher, keep=2, similarity=sims).eval()
    batch = data.batch(torch.arange(8))
    mask = student.layer_mask(student.vla.embed(batch))
    expected = torch.zeros(4, dtype=torch.bool)
    expected[torch.argsort(sims)[:2]] = True
    assert (mask == expected).all()  # the same layers for every input
    loss, _ = task_loss(student.train(), batch)
    loss.backward()
    assert all(p.grad is None for p in student.router.parameters())  # the choice is fixed


def test_final_action_loss_has_no_graph_parts_and_reaches_the_router(setup):
    """The router-KD baseline's objective (and settling's with settle_loss='final')."""
    teacher, data = setup
    from actdistill.distill.routing import RoutedStudent

    student = RoutedStudent.from_teacher(teacher, None, router_dim=8)
    batch = data.batch(torch.arange(8))
    loss, logs = final_action_loss(student, teacher, batch, DistillConfig(rho=0.5, lambda_bud=10.0))
    loss.backward()
    assert student.probes is None and student.router.gate.weight.grad.abs().sum() > 0
    assert {"task", "kd", "keep"} <= set(logs)


def test_early_exit_meets_a_compute_target_and_exits_per_row(setup):
    teacher, data = setup
    torch.manual_seed(0)
    probes = LayerProbes(4, teacher.config.hidden_size, teacher.config.chunk_size, 8, 12, 6, 3)
    policy = EarlyExitPolicy(teacher, probes, threshold=0.0).eval()
    batch = data.batch(torch.arange(6))
    action, mask = policy.run(batch)
    assert mask.all()  # threshold 0: nobody exits early, the teacher's own head acts
    torch.testing.assert_close(action, teacher.predict(batch))
    thr = choose_exit_threshold(policy, data, target_frac=0.6, count=64)
    _, mask = policy.run(data.batch(torch.linspace(0, len(data) - 1, 64).long()))
    assert thr > 0 and 0.5 - 1e-6 <= mask.float().mean().item() <= 0.75
    # layers run in order: a row that ran layer l ran every layer before it
    assert (mask[:, 1:] <= mask[:, :-1]).all()
