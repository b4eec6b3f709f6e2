"""Task losses, the distillation term and the evaluation score (docs/design.md §4, §6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def task_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "auto") -> torch.Tensor:
    """`kind` auto: softmax CE for class indices; for soft VQA scores, BCE with logits scaled by
    #answers (ViLT). `kind` bce: that BCE always, class indices taken as one-hot targets (the
    released FedDAT code's loss for every task, train.task_loss)."""
    logits = logits.float()
    if kind == "bce" and not target.is_floating_point():
        target = F.one_hot(target, logits.shape[-1]).float()
    if target.is_floating_point():
        return F.binary_cross_entropy_with_logits(logits, target) * target.shape[1]
    return F.cross_entropy(logits, target)


def distill(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)); the teacher is always detached."""
    t = temperature
    teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    student = F.log_softmax(student_logits.float() / t, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * t * t


def score(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example score of the arg-max answer: exact match, or the VQA soft score."""
    pred = logits.argmax(dim=-1)
    if target.is_floating_point():
        return target.gather(1, pred.unsqueeze(1)).squeeze(1)
    return (pred == target).float()
