"""The official VQA answer processing and accuracy (docs/design.md §4, §6), written from the rules of the
official evaluation: GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py, at its
latest revision (commit a013f00, "Fixed processing answers bug", March 2021), and the
evaluation page of visualqa.org.

Answer processing (`normalise_answer`), in the official order:
1. newlines and tabs become spaces, surrounding space is stripped;
2. punctuation: each mark of `PUNCTUATION` (not the apostrophe, not the colon) is deleted when
   the answer has that mark next to a space or has a comma between two digits ("100,978" ->
   "100978"), and is replaced by a space otherwise ("black/white" -> "black white"); then every
   period not followed by a digit goes ("yes." -> "yes", "2.5" stays);
3. lower case, number words to digits ("two" -> "2", "none" -> "0"), articles dropped,
   a missing contraction apostrophe added ("dont" -> "don't").

Accuracy of an answer against the annotators' answers (`vqa_accuracy`): for each annotator i,
min(#other annotators giving the answer / 3, 1); the mean over the ten leave-one-out subsets
("averaged over all 10 choose 9 sets of human annotators"). One matching annotator of ten
scores 0.3, two 0.6, three 0.9, four or more 1.

Two details of the official script are kept as it has them, because they change scores:
- the annotators' answers and the predicted answer are processed only when the annotators
  disagree; when all ten gave the same string, the strings are compared as given (stripped);
- the period rule removes at most 32 periods (the script passes `re.UNICODE`, 32, where
  `re.sub` takes its count), and its look-behind for a digit is mistyped as a look-ahead that
  never acts, so a period after a digit is removed like any other ("2." -> "2").
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import torch

#: Deleted or replaced by a space (step 2). Not the apostrophe ("girl's") or the colon ("2:50").
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
PERIOD = re.compile(r"\.(?!\d)")
PERIOD_LIMIT = 32  # re.UNICODE, passed by the official script as re.sub's count

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})


def _pairs(table: str) -> dict[str, str]:
    """'word=replacement' entries separated by white space -> dict."""
    return dict(entry.split("=", 1) for entry in table.split())


# The official contraction table, entry for entry (words are looked up after lower-casing, so
# its four capitalised entries, "Id've", "I'dve", "Im" and "Ive", never apply: kept as it is).
CONTRACTIONS = _pairs("""
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
""")


def clean(answer: str) -> str:
    """Step 1: newlines and tabs to spaces, surrounding space stripped."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """Step 2. Whether a mark is deleted or becomes a space depends on the answer as it came in,
    not on the marks already handled (as the official loop tests its input each time)."""
    delete_all = DIGIT_COMMA.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        joined = delete_all or (mark + " ") in text or (" " + mark) in text
        out = out.replace(mark, "" if joined else " ")
    return PERIOD.sub("", out, count=PERIOD_LIMIT)


def process_digit_article(text: str) -> str:
    """Step 3: lower-case words, number words to digits, no articles, contractions completed."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalise_answer(answer: str) -> str:
    """An answer as the official evaluation processes it (steps 1-3). The answer vocabulary and
    the soft training targets are built from answers processed this way."""
    return process_digit_article(process_punctuation(clean(answer)))


def as_compared(annotators: Sequence[str]) -> tuple[list[str], bool]:
    """(the annotators' answers as the official script compares them, whether the predicted
    answer is processed too): processed only when the annotators disagree."""
    answers = [clean(a) for a in annotators]
    if len(set(answers)) > 1:
        return [normalise_answer(a) for a in answers], True
    return answers, False


def leave_one_out(matches: int, annotators: int) -> float:
    """Mean over the leave-one-annotator-out subsets of min(#matches among the others / 3, 1),
    for an answer `matches` of `annotators` gave. A single annotator (a one-answer dataset
    pooled with ten-answer ones) leaves no one to compare with: exact match instead."""
    if annotators == 1:
        return float(matches == 1)
    with_match = matches * min(1.0, (matches - 1) / 3)  # subsets that left out a matching annotator
    without = (annotators - matches) * min(1.0, matches / 3)
    return (with_match + without) / annotators


def vqa_accuracy(answer: str, annotators: Sequence[str]) -> float:
    """The official VQA accuracy of `answer` (a predicted answer string) for one question."""
    compared, process = as_compared(annotators)
    prediction = normalise_answer(answer) if process else clean(answer)
    return leave_one_out(compared.count(prediction), len(compared))


def accuracy_table(annotator_lists: Sequence[Sequence[str]], vocab: Sequence[str]) -> torch.Tensor:
    """(questions, answers): the official VQA accuracy of every vocabulary answer for every
    question, so that evaluation reads one entry per question (the arg-max answer's)."""
    processed = [normalise_answer(v) for v in vocab]
    stripped = [clean(v) for v in vocab]
    table = torch.zeros(len(annotator_lists), len(vocab), dtype=torch.float64)
    for row, annotators in enumerate(annotator_lists):
        compared, process = as_compared(annotators)
        counts = Counter(compared)
        for column, candidate in enumerate(processed if process else stripped):
            if counts.get(candidate):
                table[row, column] = leave_one_out(counts[candidate], len(compared))
    return table
