"""Task losses, the distillation term and the evaluation score (docs/design.md §4, §6).

For an answer decoder the "logits" are token logits (N, T, vocabulary) of N answers, and the
targets are those answers (answer_tokens.AnswerTokens): the task loss is the teacher-forced
cross-entropy of each answer's tokens, the distillation compares the token distributions at
the answer's positions, and `answer_log_likelihood` ranks candidate answers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from feddat.answer_tokens import AnswerTokens


def task_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "auto") -> torch.Tensor:
    """`kind` auto: softmax CE for class indices; for soft VQA scores, BCE with logits scaled by
    #answers (ViLT). `kind` bce: that BCE always, class indices taken as one-hot targets (the
    released FedDAT code's loss for every task, train.task_loss). Answers to decode: `answer_loss`."""
    if isinstance(target, AnswerTokens):
        return answer_loss(logits, target)
    logits = logits.float()
    if kind == "bce" and not target.is_floating_point():
        target = F.one_hot(target, logits.shape[-1]).float()
    if target.is_floating_point():
        return F.binary_cross_entropy_with_logits(logits, target) * target.shape[1]
    return F.cross_entropy(logits, target)


def distill(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, target: torch.Tensor | AnswerTokens | None = None) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)); the teacher is always detached.

    With answers to decode as `target`: the KL of the token distributions at each answer
    position, averaged over the answers' tokens (docs/design.md §4a; each answer's tokens weighted
    as `answer_loss` weights the answer). The released code's kl_loss divides ALBEF's sum by the
    number of answers instead ('batchmean'), and counts the padding positions too
    (docs/differences.md)."""
    t = temperature
    teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    student = F.log_softmax(student_logits.float() / t, dim=-1)
    if isinstance(target, AnswerTokens):
        per_token = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
        predicted = target.labels() != -100
        weights = target.weights if target.weights is not None else per_token.new_ones(len(per_token))
        token_weights = predicted * weights.unsqueeze(1)
        return (per_token * token_weights).sum() / token_weights.sum().clamp_min(1e-12) * t * t
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * t * t


def answer_loss(logits: torch.Tensor, answers: AnswerTokens) -> torch.Tensor:
    """The teacher-forced loss of answers (ALBEF and BLIP's VQA loss, without BLIP's label
    smoothing): each answer's token cross-entropies summed over its tokens, weighted by
    answers.weights and averaged over the questions (the weights sum to 1 per question)."""
    labels = answers.labels()
    per_token = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none")
    return per_answer_mean(per_token.view(labels.shape), answers)


def per_answer_mean(per_token: torch.Tensor, answers: AnswerTokens) -> torch.Tensor:
    """(N, T) per-position terms -> the sum over each answer's predicted positions, weighted by
    answers.weights and divided by the weights' sum (the number of questions)."""
    predicted = answers.labels() != -100
    per_answer = (per_token * predicted).sum(1)
    weights = answers.weights if answers.weights is not None else torch.ones_like(per_answer)
    return (per_answer * weights).sum() / weights.sum().clamp_min(1e-12)


def answer_log_likelihood(logits: torch.Tensor, answers: AnswerTokens) -> torch.Tensor:
    """(N,) each answer's log-likelihood under the decoder: the sum of its tokens' log-probabilities
    (ALBEF's ranking score for the candidate answers of VQA)."""
    labels = answers.labels()
    predicted = labels != -100
    log_probs = F.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (log_probs * predicted).sum(1)


def score(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example score of the arg-max answer: exact match, or the VQA soft score."""
    pred = logits.argmax(dim=-1)
    if target.is_floating_point():
        return target.gather(1, pred.unsqueeze(1)).squeeze(1)
    return (pred == target).float()
