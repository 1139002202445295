"""Task types: metrics against hand computations, losses' unlabelled handling, selection direction."""

import math

import pytest
import torch

import fusionzoo as fz
from fusionzoo.data.collate import collate
from fusionzoo.training.selection import Selection
from fusionzoo.training.tasks import average_precision, get_task, lower_is_better


def brute_force_ap(scores, positives):
    """AP by its definition: mean over positives of precision among samples scored >= it."""
    out = []
    for s, y in zip(scores, positives):
        hits = [sum(1 for s2, y2 in zip(scores, positives) if s2 >= s and y2) / sum(1 for s2 in scores if s2 >= s)] if y else []
        out += hits
    return sum(out) / len(out)


def test_average_precision_matches_the_definition_with_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randint(0, 4, (9, 3), generator=g).double()  # many ties
        positives = torch.randint(0, 2, (9, 3), generator=g)
        positives[0] = 1
        ap = average_precision(scores, positives)
        for c in range(3):
            assert ap[c].item() == pytest.approx(brute_force_ap(scores[:, c].tolist(), positives[:, c].tolist()))
    assert math.isnan(average_precision(torch.randn(4, 1), torch.zeros(4, 1))[0].item())


def test_multilabel_metrics_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-2.0, 1.0, -0.5], [1.0, 1.0, -3.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    m = get_task("multilabel").metrics(logits, labels)
    # predictions > 0: [1,0,1], [0,1,0], [1,1,0] -> tp 4, fp 1, fn 1
    assert m["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["loss"] == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).item())


def test_regression_metrics_by_hand_and_nan_targets_are_unlabelled():
    outputs = torch.tensor([[1.0], [2.0], [4.0], [9.0]])
    targets = torch.tensor([1.5, 2.0, 3.0, float("nan")])
    m = get_task("regression").metrics(outputs, targets)
    assert m["n"] == 3 and m["mae"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 1) / 3))
    x, y = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.5, 2.0, 3.0])
    assert m["pearson_r"] == pytest.approx(torch.corrcoef(torch.stack([x, y]))[0, 1].item())
    loss = fz.LOSSES.create("mse")
    assert loss(outputs, targets).item() == pytest.approx((0.25 + 0 + 1) / 3)
    assert loss(outputs[:1], torch.tensor([float("nan")])).item() == 0.0
    with pytest.raises(ValueError, match=r"mse outputs: expected one output per target"):
        loss(torch.randn(3, 2), torch.randn(3))


def test_multiclass_metrics_ignore_unlabelled():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    m = get_task("multiclass").metrics(logits, torch.tensor([0, 0, -1]))
    assert m["n"] == 2 and m["accuracy"] == 0.5


def test_selection_direction_follows_the_metric():
    assert lower_is_better("loss") and lower_is_better("mae") and lower_is_better("rmse")
    assert not lower_is_better("mAP") and not lower_is_better("pearson_r") and not lower_is_better("accuracy")
    history = [{"epoch": 1, "val": {"mae": 0.5}}, {"epoch": 2, "val": {"mae": 0.3}}, {"epoch": 3, "val": {"mae": 0.4}}]
    assert Selection.for_metric("mae").best(history) == (2, 0.3)


def test_collate_stacks_float_and_tensor_labels_and_refuses_a_mix():
    assert collate([{"label": 0.5}, {"label": 1.5}])["label"].dtype == torch.float32
    assert collate([{"label": torch.tensor([1.0, 0.0])}, {"label": torch.tensor([0.0, 1.0])}])["label"].shape == (2, 2)
    with pytest.raises(TypeError, match=r"labels mix"):
        collate([{"label": 1}, {"label": 0.5}])
    with pytest.raises(TypeError, match=r"expected a task"):
        get_task(10)
