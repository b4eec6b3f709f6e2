"""The official VQA answer processing and accuracy, on cases whose official results are stated by
the official evaluation itself: the examples of visualqa.org's evaluation page, and entries of the
tables and rules in GT-Vision-Lab/VQA vqaEval.py (commit a013f00)."""

from __future__ import annotations

import pytest
import torch

from feddat.data.vqa_eval import accuracy_table, normalise_answer, process_punctuation, vqa_accuracy


@pytest.mark.parametrize(
    "answer, official",
    [
        # visualqa.org/evaluation.html, "Before evaluating machine generated answers ..."
        ("Yes", "yes"),  # "Making all characters lowercase"
        ("yes.", "yes"),  # "Removing periods except if it occurs as decimal"
        ("2.5", "2.5"),
        ("two", "2"),  # "Converting number words to digits"
        ("a dog", "dog"),  # "Removing articles (a, an, the)"
        ("the dog", "dog"),
        ("dont", "don't"),  # "convert "dont" to "don't""
        ("girl's", "girl's"),  # apostrophe kept: "girl's" must not become "girls"
        ("2:50 pm", "2:50 pm"),  # colon kept: "they often refer to time, e.g., 2:50 pm"
        ("100,978", "100978"),  # "convert 100,978 to 100978"
        ("black/white", "black white"),  # "Replacing all punctuation ... with a space character"
        # vqaEval.py's tables: manualMap, contractions (its own oddities included)
        ("none", "0"),
        ("ten", "10"),
        ("don't know", "don't know"),
        ("10:30", "10:30"),
        ("oclock", "o'clock"),
        ("somebody'd", "somebodyd"),  # the official table maps this one backwards
        ("Im", "im"),  # capitalised table entries never apply: words are lower-cased first
    ],
)
def test_answer_processing_matches_the_official_rules(answer, official):
    assert normalise_answer(answer) == official


def test_punctuation_next_to_a_space_is_deleted_not_spaced():
    # vqaEval.processPunctuation: a mark found next to a space anywhere in the answer is deleted
    assert process_punctuation("yes , sir") == "yes  sir"
    assert process_punctuation("yes,sir") == "yes sir"


@pytest.mark.parametrize("matching, official", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_accuracy_is_the_mean_over_the_ten_leave_one_out_subsets(matching, official):
    """visualqa.org: Acc(ans) = min(#humans that said ans / 3, 1), "averaged over all 10 choose 9
    sets of human annotators"; vqaEval.py computes it leaving out one annotator at a time. With
    one matching annotator, the nine subsets that keep him give 1/3 and the one without gives
    0: 0.3, where min(1/3, 1) would say 0.333."""
    annotators = ["cat"] * matching + ["dog", "cow", "pig", "hen", "fox", "owl", "bee", "elk", "ant", "yak"][: 10 - matching]
    assert vqa_accuracy("cat", annotators) == pytest.approx(official)


def test_answers_are_processed_only_when_the_annotators_disagree():
    # vqaEval.py processes answers inside `if len(set(gtAnswers)) > 1`: ten identical strings are
    # compared as given, so "2" does not match ten "two"s, while it does once they disagree.
    assert vqa_accuracy("2", ["two"] * 10) == 0.0
    assert vqa_accuracy("two", ["two"] * 10) == 1.0
    assert vqa_accuracy("2", ["two"] * 9 + ["three"]) == 1.0
    assert vqa_accuracy("Yes.", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)


def test_accuracy_table_scores_every_vocabulary_answer():
    table = accuracy_table([["cat"] * 3 + ["dog"] * 7, ["2"] * 10, ["sun"]], ["cat", "dog", "2", "sun"])
    expected = torch.tensor([[0.9, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(table, expected)  # a single answer (one-answer data): exact match
