"""Cross-modal losses and retrieval metrics."""

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import fusionzoo as fz
from fusionzoo.losses import DistillationLoss, InfoNCELoss, MultiTaskLoss, TripletLoss
from fusionzoo.training.retrieval import retrieval_metrics


@pytest.mark.parametrize("name", fz.list_losses())
def test_every_loss_builds_and_runs_from_its_example(name):
    loss_fn = fz.LOSSES.get(name).example()
    args = loss_fn.example_input(4)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    for a in leaves:
        a.requires_grad_()
    out = loss_fn(*args)
    assert out.dim() == 0 and torch.isfinite(out)
    out.backward()


def clip_reference(a, b, scale):
    """CLIP's pseudo-code."""
    logits = scale * F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()
    labels = torch.arange(len(a))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def test_info_nce_equals_the_clip_reference():
    loss_fn = InfoNCELoss()
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    torch.testing.assert_close(loss_fn(a, b), clip_reference(a, b, 1 / 0.07))
    with torch.no_grad():
        loss_fn.logit_scale.fill_(10.0)  # clamped at ln(100)
    torch.testing.assert_close(loss_fn(a, b), clip_reference(a, b, 100.0))


def test_info_nce_positive_mask_and_errors():
    loss_fn = InfoNCELoss()
    a = torch.randn(4, 5)
    a[1] = a[0]  # sample 1 duplicates sample 0, in both modalities
    b = a.clone()
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 1] = mask[1, 0] = True
    assert loss_fn(a, b, positive_mask=mask) < loss_fn(a, b)
    with pytest.raises(ValueError, match=r"same shape, got a \[4, 5\] and b \[3, 5\]"):
        loss_fn(a, b[:3])
    with pytest.raises(ValueError, match=r"a \[4, 5\] and b \[4, 6\]"):
        loss_fn(a, torch.randn(4, 6))
    with torch.no_grad():
        loss_fn.logit_scale.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        loss_fn(a, b)


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    a_all, b_all = torch.randn(8, 5), torch.randn(8, 5)
    n = 8 // world
    a = a_all[rank * n : (rank + 1) * n].clone().requires_grad_()
    b = b_all[rank * n : (rank + 1) * n].clone().requires_grad_()
    InfoNCELoss(learn_temperature=False)(a, b).backward()
    torch.save({"a": a.grad, "b": b.grad}, os.path.join(out_dir, f"grad{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_info_nce_gradient_across_two_gloo_processes_equals_single_process():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        grads = [torch.load(os.path.join(tmp, f"grad{r}.pt"), weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    a, b = torch.randn(8, 5).requires_grad_(), torch.randn(8, 5).requires_grad_()
    InfoNCELoss(learn_temperature=False)(a, b).backward()
    torch.testing.assert_close(torch.cat([g["a"] for g in grads]), a.grad)
    torch.testing.assert_close(torch.cat([g["b"] for g in grads]), b.grad)


def test_triplet_hardest_and_sum_forms():
    a = torch.eye(3)
    assert TripletLoss(margin=0.2)(a, a) == 0  # perfect pairs, orthogonal negatives: no violation
    b = torch.tensor([[1.0, 0, 0], [1.0, 0.1, 0], [0, 0, 1.0]])
    hard, plain = TripletLoss(margin=0.2)(a, b), TripletLoss(margin=0.2, hardest=False)(a, b)
    assert hard > 0 and plain >= hard


def test_distillation_matches_hinton_formula():
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,))
    loss = DistillationLoss(temperature=3.0, alpha=0.7)(s, t, y)
    kl = F.kl_div(F.log_softmax(s / 3, -1), F.softmax(t / 3, -1), reduction="batchmean") * 9
    torch.testing.assert_close(loss, 0.7 * kl + 0.3 * F.cross_entropy(s, y))
    feat = DistillationLoss(alpha=1.0, beta=1.0, student_dim=6, teacher_dim=7)
    assert feat(s, t, student_features=torch.randn(4, 6), teacher_features=torch.randn(4, 7)) > 0
    with pytest.raises(ValueError, match="needs labels"):
        DistillationLoss(alpha=0.5)(s, t)


def test_uncertainty_weights_move_toward_the_less_noisy_task():
    mt = MultiTaskLoss(tasks=["noisy", "clean"], weighting="uncertainty")
    opt = torch.optim.SGD(mt.parameters(), lr=0.05)
    for _ in range(200):
        losses = {"noisy": torch.tensor(4.0), "clean": torch.tensor(0.25)}
        opt.zero_grad()
        mt(losses).backward()
        opt.step()
    w = mt.weights()
    assert w["clean"] > 1.5 > 0.5 > w["noisy"]  # optimum: w = 1 / L, i.e. 4 and 0.25
    assert math.isclose(w["clean"], 4.0, rel_tol=0.1) and math.isclose(w["noisy"], 0.25, rel_tol=0.1)


def test_fixed_and_dwa_weighting():
    fixed = MultiTaskLoss(tasks=["a", "b"], weighting="fixed", weights={"a": 1.0, "b": 0.5})
    assert fixed({"a": torch.tensor(2.0), "b": torch.tensor(2.0)}).item() == 3.0
    dwa = MultiTaskLoss(tasks=["a", "b"], weighting="dwa")
    dwa.end_epoch({"a": 1.0, "b": 1.0})
    dwa.end_epoch({"a": 0.5, "b": 1.0})  # a improves faster, so b gets more weight
    w = dwa.weights()
    assert w["b"] > w["a"] and math.isclose(w["a"] + w["b"], 2.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="expected losses"):
        fixed({"a": torch.tensor(1.0)})


def test_retrieval_metrics():
    a = torch.eye(4)
    m = retrieval_metrics(a, a, ks=(1, 2), names=("audio", "image"))
    assert m["audio->image R@1"] == 1.0 and m["image->audio median rank"] == 1.0
    b = torch.stack([a[1], a[0], a[2], a[3]])
    m = retrieval_metrics(a, b, ks=(1, 2), labels=torch.tensor([0, 0, 1, 2]))
    assert m["a->b R@1"] == 0.5 and m["a->b R@2"] == 1.0
    assert m["a->b class R@1"] == 1.0  # the swapped pair shares a class


def test_classification_losses_average_over_labelled_samples():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, -1, 2, -1, 1])
    keep = labels >= 0
    ce = fz.create_loss("cross_entropy")(logits, labels)
    torch.testing.assert_close(ce, F.cross_entropy(logits[keep], labels[keep]))
    smooth = fz.create_loss("cross_entropy", label_smoothing=0.1)(logits, labels)
    torch.testing.assert_close(smooth, F.cross_entropy(logits[keep], labels[keep], label_smoothing=0.1))
    none = torch.full((6,), -1)
    assert fz.create_loss("cross_entropy")(logits, none) == 0 and fz.create_loss("focal")(logits, none) == 0


def test_focal_loss_matches_its_formula_and_reduces_to_cross_entropy():
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, -1])
    keep = labels >= 0
    torch.testing.assert_close(fz.create_loss("focal", gamma=0.0)(logits, labels), F.cross_entropy(logits[keep], labels[keep]))
    p = logits[keep].softmax(-1)[torch.arange(7), labels[keep]]
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2])
    expected = (-alpha[labels[keep]] * (1 - p) ** 2 * p.log()).mean()
    torch.testing.assert_close(fz.create_loss("focal", gamma=2.0, alpha=alpha.tolist())(logits, labels), expected)
    with pytest.raises(ValueError, match="alpha has 2 class weights"):
        fz.create_loss("focal", alpha=[0.5, 0.5])(logits, labels)
    with pytest.raises(TypeError, match="focal labels: expected labels to be a int tensor"):
        fz.create_loss("focal")(logits, labels.float())


def test_multitask_history_is_part_of_its_state():
    a = fz.create_loss("multitask", tasks=["x", "y"], weighting="dwa")
    for losses in ({"x": 1.0, "y": 2.0}, {"x": 0.5, "y": 1.9}):
        a.end_epoch(losses)
    b = fz.create_loss("multitask", tasks=["x", "y"], weighting="dwa")
    b.load_state_dict(a.state_dict())
    assert b.weights() == a.weights() != {"x": 1.0, "y": 1.0}


def test_class_recall_with_fewer_candidates_than_k_counts_every_candidate():
    from fusionzoo.training.retrieval import retrieval_metrics

    a, b = torch.eye(3), torch.eye(3)
    out = retrieval_metrics(a, b, ks=(1, 5), labels=torch.tensor([0, 1, 0]))
    assert out["a->b class R@1"] == 1.0 and out["a->b class R@5"] == 1.0 and out["a->b R@5"] == 1.0
