"""Knowledge distillation, including across modalities (a teacher on one, a student on another).

Legend: ``b`` batch, ``k`` classes, ``d`` features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionzoo.layers.validation import check_tensor
from fusionzoo.losses.classification import labelled_mean
from fusionzoo.registry import LOSSES

__all__ = ["DistillationLoss"]


@LOSSES.register(
    "distill",
    example_kwargs={"student_dim": 8, "teacher_dim": 6},
    paper="https://arxiv.org/abs/1503.02531",
    tags=("distillation", "cross-modal"),
)
class DistillationLoss(nn.Module):
    """``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, label)``
    (the hard term over labelled samples only: label -1 = unlabelled)
    (Hinton et al. 2015), plus ``beta * MSE(proj(student_features), teacher_features)`` when feature
    widths are given: a feature-regression term through a learned projection head.

    The teacher's outputs are detached. In the cross-modal setting the teacher sees one modality
    (say images) and the student another (the paired audio): only pairing, not labels, is needed
    for the soft term (``alpha=1``).

    Shapes: logits ``[b, k]``, labels ``long [b]``, features ``[b, d_s]`` / ``[b, d_t]`` -> scalar.
    """

    def __init__(
        self,
        *,
        temperature: float = 4.0,
        alpha: float = 0.9,
        beta: float = 0.0,
        student_dim: int | None = None,
        teacher_dim: int | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0 or not 0 <= alpha <= 1 or beta < 0:
            raise ValueError(f"distill: need temperature > 0, 0 <= alpha <= 1, beta >= 0; got {temperature}, {alpha}, {beta}")
        self.temperature, self.alpha, self.beta = temperature, alpha, beta
        self.proj = nn.Linear(student_dim, teacher_dim) if student_dim and teacher_dim else None

    def terms(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor | None = None,
        student_features: Tensor | None = None,
        teacher_features: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The unweighted terms: ``soft`` (``T^2``-scaled KL), ``hard`` (cross-entropy over the labelled
        samples, label -1 = unlabelled; only when ``alpha < 1``) and ``feature`` (only when ``beta > 0``)."""
        check_tensor(student_logits, name="distill student", shape=("B", "K"), what="logits")
        check_tensor(teacher_logits, name="distill teacher", shape=tuple(student_logits.shape), what="logits")
        t = self.temperature
        out = {
            "soft": F.kl_div(
                F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits.detach() / t, dim=-1),
                log_target=True, reduction="batchmean",
            ) * t * t
        }
        if self.alpha < 1:
            if labels is None:
                raise ValueError("distill: alpha < 1 needs labels for the hard cross-entropy term")
            per = F.cross_entropy(student_logits, labels.clamp(min=0), reduction="none")
            out["hard"] = labelled_mean(per, labels)
        if self.beta > 0:
            if self.proj is None or student_features is None or teacher_features is None:
                raise ValueError("distill: beta > 0 needs student_dim / teacher_dim and both feature tensors")
            out["feature"] = F.mse_loss(self.proj(student_features), teacher_features.detach())
        return out

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        """``alpha * soft + (1 - alpha) * hard + beta * feature``."""
        loss = self.alpha * terms["soft"]
        if "hard" in terms:
            loss = loss + (1 - self.alpha) * terms["hard"]
        if "feature" in terms:
            loss = loss + self.beta * terms["feature"]
        return loss

    def forward(self, *args: Tensor | None, **kwargs: Tensor | None) -> Tensor:
        """:meth:`combine` of :meth:`terms` (same arguments)."""
        return self.combine(self.terms(*args, **kwargs))

    def example_input(self, batch_size: int = 4) -> tuple[Tensor, ...]:
        return torch.randn(batch_size, 5), torch.randn(batch_size, 5), torch.randint(0, 5, (batch_size,))
