"""The answer-decoder path's pieces that need no model: the answers a batch decodes
(data/clients.py), the teacher-forced loss, the token-level distillation and the ranking score
(losses.py), each checked against a case computed by hand from its definition."""

from __future__ import annotations

import math

import torch

from feddat.answer_tokens import AnswerTokens
from feddat.data.clients import target_answers
from feddat.losses import answer_log_likelihood, answer_loss, distill

# Two candidate answers as a decoder reads them: [start, tokens..., end, padding]
CANDIDATES = (torch.tensor([[9, 4, 2, 0], [9, 5, 6, 2]]), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))


def test_labels_are_the_next_tokens_with_padding_and_the_last_position_ignored():
    answers = AnswerTokens(*CANDIDATES, owner=torch.tensor([0, 0]))
    assert answers.labels().tolist() == [[4, 2, -100, -100], [5, 6, 2, -100]]


def test_widened_answers_read_their_own_slice_of_a_fanned_out_batch():
    answers = AnswerTokens(*CANDIDATES, owner=torch.tensor([1, 0]), weights=torch.tensor([1.0, 1.0]))
    wide = answers.widened(batch=3, copies=2)
    assert wide.owner.tolist() == [1, 0, 4, 3]
    assert torch.equal(wide.ids, CANDIDATES[0].repeat(2, 1)) and wide.weights.tolist() == [1.0] * 4


def test_class_targets_decode_their_answer_and_soft_targets_every_scored_answer_by_its_share():
    hard = target_answers(torch.tensor([1, -1, 0]), CANDIDATES)
    assert hard.owner.tolist() == [0, 2] and torch.equal(hard.ids, CANDIDATES[0][[1, 0]]) and hard.weights.tolist() == [1.0, 1.0]
    # question 0: answer 0 by 3 annotators (score 1), answer 1 by 1 (score 1/3); question 1: answer 1 only
    soft = target_answers(torch.tensor([[1.0, 1 / 3], [0.0, 0.6]]), CANDIDATES)
    assert soft.owner.tolist() == [0, 0, 1]
    assert torch.allclose(soft.weights, torch.tensor([0.75, 0.25, 1.0]))


def by_hand_log_probs(logits: torch.Tensor) -> list[list[list[float]]]:
    return [[[v - math.log(sum(math.exp(u) for u in row)) for v in row] for row in seq] for seq in logits.tolist()]


def test_answer_loss_and_ranking_score_are_sums_of_token_log_probabilities():
    torch.manual_seed(0)
    answers = AnswerTokens(*CANDIDATES, owner=torch.tensor([0, 1]), weights=torch.tensor([1.0, 1.0]))
    logits = torch.randn(2, 4, 10)
    lp = by_hand_log_probs(logits)
    seq0 = lp[0][0][4] + lp[0][1][2]  # predicts 4 then the end token 2
    seq1 = lp[1][0][5] + lp[1][1][6] + lp[1][2][2]
    assert torch.allclose(answer_log_likelihood(logits, answers), torch.tensor([seq0, seq1]), atol=1e-5)
    assert math.isclose(float(answer_loss(logits, answers)), -(seq0 + seq1) / 2, rel_tol=1e-5)
    weighted = answers._replace(owner=torch.tensor([0, 0]), weights=torch.tensor([0.75, 0.25]))
    assert math.isclose(float(answer_loss(logits, weighted)), -(0.75 * seq0 + 0.25 * seq1), rel_tol=1e-5)


def test_token_distillation_is_the_temperature_scaled_kl_averaged_over_the_answer_tokens():
    torch.manual_seed(1)
    answers = AnswerTokens(*CANDIDATES, owner=torch.tensor([0, 1]), weights=torch.tensor([1.0, 1.0]))
    student, teacher, t = torch.randn(2, 4, 10), torch.randn(2, 4, 10), 3.0
    s, q = by_hand_log_probs(student / t), by_hand_log_probs(teacher / t)
    kl = lambda n, pos: sum(math.exp(q[n][pos][v]) * (q[n][pos][v] - s[n][pos][v]) for v in range(10))  # noqa: E731
    expected = t * t * ((kl(0, 0) + kl(0, 1)) + (kl(1, 0) + kl(1, 1) + kl(1, 2))) / 5  # 5 answer tokens
    assert math.isclose(float(distill(student, teacher, t, answers)), expected, rel_tol=1e-5)
    # an answer's weight weighs each of its tokens
    weighted = answers._replace(weights=torch.tensor([0.75, 0.25]))
    by_weight = t * t * (0.75 * (kl(0, 0) + kl(0, 1)) + 0.25 * (kl(1, 0) + kl(1, 1) + kl(1, 2))) / (0.75 * 2 + 0.25 * 3)
    assert math.isclose(float(distill(student, teacher, t, weighted)), by_weight, rel_tol=1e-5)
    # padding positions do not count: changing the logits there changes nothing
    student[0, 2:] += 5.0
    assert math.isclose(float(distill(student, teacher, t, answers)), expected, rel_tol=1e-5)
