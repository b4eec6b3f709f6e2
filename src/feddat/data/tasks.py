"""The synthetic twin of the `task` benchmark: clients pose different tasks with different outputs.

- vqa:        image + question -> an answer (the generator's questions, all kinds);
- entailment: image + statement -> entailment / neutral / contradiction (as SNLI-VE): a
              statement the picture shows to be true, shows to be false, or cannot decide
              (a property no picture shows: material, weight, ownership, history);
- nlvr2:      two images + statement -> true / false (as NLVR2): the statement compares the
              left and the right picture;
- match:      image + caption -> match / mismatch (image-text matching): the caption lists the
              objects, or one of them with a changed colour, shape or size.
Labels are drawn first (uniformly), so no task can be solved by always giving one answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from feddat.data.synthetic import (
    _SCENE_ATTEMPTS,
    COLOURS,
    NUMBER_WORDS,
    QUESTION_KINDS,
    SHAPES,
    SIZES,
    STYLES,
    Scene,
    SceneObject,
    _absent_pairs,
    _clear_pairs,
    _OPPOSITE,
    _pair_phrase,
    _pick,
    _PLURALS,
    _present_pairs,
    _relation,
    generate as generate_vqa,
    random_scene,
    render,
)

TASKS = ("vqa", "entailment", "nlvr2", "match")
#: Fixed output spaces; VQA uses the client's most frequent answers instead.
TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "entailment": ("entailment", "neutral", "contradiction"),
    "nlvr2": ("true", "false"),
    "match": ("match", "mismatch"),
}


@dataclass(frozen=True, eq=False)
class TaskSample:
    image: np.ndarray
    question: str  # question, statement or caption
    answer: str
    kind: str  # the statement family: categories for partitions and describe
    image2: np.ndarray | None = None  # the right-hand image of an nlvr2 pair


# ---- statements about one scene: (statement, truth) or None when the scene cannot support it ----

Statement = Callable[[Scene, bool, np.random.Generator], "str | None"]


def _exists(scene: Scene, truth: bool, rng: np.random.Generator) -> str | None:
    pairs = _present_pairs(scene) if truth else _absent_pairs(scene)
    return f"there is {_pair_phrase(_pick(rng, pairs))}." if pairs else None


def _count(scene: Scene, truth: bool, rng: np.random.Generator) -> str | None:
    shape = _pick(rng, [o.shape for o in scene.objects])
    actual = sum(o.shape == shape for o in scene.objects)
    n = actual if truth else _pick(rng, [c for c in range(4) if c != actual])
    noun = shape if n == 1 else _PLURALS[shape]
    return f"there {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {noun}."


def _size(scene: Scene, truth: bool, rng: np.random.Generator) -> str | None:
    obj = _pick(rng, scene.objects)  # (colour, shape) pairs are unique in a scene
    size = obj.size if truth else _pick(rng, [s for s in SIZES if s != obj.size])
    return f"the {obj.colour} {obj.shape} is {size}."


def _where(scene: Scene, truth: bool, rng: np.random.Generator) -> str | None:
    pairs = _clear_pairs(scene)
    if not pairs:
        return None
    a, b, axis = _pick(rng, pairs)
    relation = _relation(a, b, axis) if truth else _OPPOSITE[_relation(a, b, axis)]
    words = {"left": "left of", "right": "right of", "above": "above", "below": "below"}[relation]
    return f"the {a.colour} {a.shape} is {words} the {b.colour} {b.shape}."


_UNDECIDABLE = (
    "the {a} is made of wood.",
    "the {a} is heavier than it looks.",
    "the {a} was drawn before the others.",
    "the {a} belongs to a child.",
    "the {a} was bought yesterday.",
)

SCENE_STATEMENTS: dict[str, Statement] = {"exists": _exists, "count": _count, "size": _size, "spatial": _where}


def _entailment(scene: Scene, rng: np.random.Generator) -> tuple[str, str, str]:
    label = _pick(rng, TASK_CLASSES["entailment"])
    if label == "neutral":
        obj = _pick(rng, scene.objects)
        return _pick(rng, _UNDECIDABLE).format(a=f"{obj.colour} {obj.shape}"), label, "undecidable"
    for family in rng.permutation(list(SCENE_STATEMENTS)):
        text = SCENE_STATEMENTS[str(family)](scene, label == "entailment", rng)
        if text is not None:
            return text, label, str(family)
    raise ValueError("no statement fits this scene")  # pragma: no cover


# ---- statements about a pair of scenes (nlvr2) -------------------------------------------------

_SIDES = ("left", "right")


def _has(scene: Scene, attr: str, value: str) -> bool:
    return any(getattr(o, attr) == value for o in scene.objects)


def _noun(attr: str, value: str) -> str:
    return value if attr == "shape" else f"{value} object"


def _pair_contains(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    side = _pick(rng, _SIDES)
    attr, value = ("shape", _pick(rng, SHAPES)) if rng.random() < 0.5 else ("colour", _pick(rng, COLOURS))
    scene = left if side == "left" else right
    article = "an" if _noun(attr, value)[0] in "aeiou" else "a"
    return f"the {side} image contains {article} {_noun(attr, value)}.", _has(scene, attr, value)


def _pair_both(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    attr, value = ("shape", _pick(rng, SHAPES)) if rng.random() < 0.5 else ("colour", _pick(rng, COLOURS))
    plural = _PLURALS[value] if attr == "shape" else f"{value} objects"
    if rng.random() < 0.5:
        return f"both images contain {plural}.", _has(left, attr, value) and _has(right, attr, value)
    return f"exactly one image contains {plural}.", _has(left, attr, value) != _has(right, attr, value)


def _pair_more(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    first = _pick(rng, _SIDES)
    a, b = (left, right) if first == "left" else (right, left)
    other = "right" if first == "left" else "left"
    return f"the {first} image has more objects than the {other} image.", len(a.objects) > len(b.objects)


def _pair_total(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    shape = _pick(rng, SHAPES)
    total = sum(o.shape == shape for o in left.objects + right.objects)
    n = int(rng.integers(0, 5))
    noun = shape if n == 1 else _PLURALS[shape]
    return f"there {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {noun} in the two images together.", n == total


PAIR_STATEMENTS = {"contains": _pair_contains, "both": _pair_both, "more": _pair_more, "total": _pair_total}


# ---- captions (match) ---------------------------------------------------------------------------


def _caption(objects: tuple[SceneObject, ...]) -> str:
    ordered = sorted(objects, key=lambda o: o.x)  # read left to right, as a person would list them
    # No preamble: three objects must fit the default 20 question tokens.
    return " and ".join(f"a {o.size} {o.colour} {o.shape}" for o in ordered) + "."


def _altered(scene: Scene, rng: np.random.Generator) -> tuple[tuple[SceneObject, ...], str]:
    """The scene's objects with one attribute of one object changed, so the caption is wrong."""
    i = int(rng.integers(len(scene.objects)))
    obj = scene.objects[i]
    attr = _pick(rng, ("colour", "shape", "size"))
    universe = {"colour": COLOURS, "shape": SHAPES, "size": SIZES}[attr]
    taken = {(o.colour, o.shape, o.size) for o in scene.objects}
    options = [v for v in universe if v != getattr(obj, attr)]
    value = _pick(rng, options)
    changed = SceneObject(**{**obj.__dict__, attr: value})
    if (changed.colour, changed.shape, changed.size) in taken:  # would describe another object that is there
        attr = "size"  # the object is rebuilt from the original with only its size changed
        changed = SceneObject(**{**obj.__dict__, "size": _pick(rng, [s for s in SIZES if s != obj.size])})
    return scene.objects[:i] + (changed,) + scene.objects[i + 1 :], attr


# ---- generation ---------------------------------------------------------------------------------


def generate(n: int, task: str, seed: int, image_size: int = 128, max_objects: int = 3) -> list:
    """n samples of `task`; sample i depends only on (seed, i)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if task == "vqa":
        return generate_vqa(n, {s: 1.0 for s in STYLES}, {k: 1.0 for k in QUESTION_KINDS}, seed, image_size, max_objects)
    make = {"entailment": _entailment_sample, "nlvr2": _nlvr2_sample, "match": _match_sample}[task]
    return [make(stream, image_size, max_objects) for stream in np.random.SeedSequence(int(seed)).spawn(int(n))]


def _streams(stream: np.random.SeedSequence) -> tuple[np.random.Generator, ...]:
    return tuple(np.random.default_rng(s) for s in stream.spawn(4))


def _draw(scene: Scene, rng: np.random.Generator, size: int) -> np.ndarray:
    return render(scene, _pick(rng, STYLES), size, rng)


def _entailment_sample(stream: np.random.SeedSequence, size: int, max_objects: int) -> TaskSample:
    _, scene_rng, text_rng, render_rng = _streams(stream)
    scene = random_scene(scene_rng, max_objects=max_objects)
    text, label, family = _entailment(scene, text_rng)
    return TaskSample(_draw(scene, render_rng, size), text, label, family)


def _nlvr2_sample(stream: np.random.SeedSequence, size: int, max_objects: int) -> TaskSample:
    pick_rng, scene_rng, text_rng, render_rng = _streams(stream)
    want = bool(pick_rng.random() < 0.5)
    family = _pick(pick_rng, list(PAIR_STATEMENTS))
    for _ in range(_SCENE_ATTEMPTS):  # draw pairs and statements until the truth is the one wanted
        left = random_scene(scene_rng, min_objects=1, max_objects=max_objects)
        right = random_scene(scene_rng, min_objects=1, max_objects=max_objects)
        text, truth = PAIR_STATEMENTS[family](left, right, text_rng)
        if truth == want:
            label = "true" if truth else "false"
            return TaskSample(_draw(left, render_rng, size), text, label, family, _draw(right, render_rng, size))
    raise RuntimeError(f"no {family!r} statement with truth {want}")  # pragma: no cover


def _match_sample(stream: np.random.SeedSequence, size: int, max_objects: int) -> TaskSample:
    pick_rng, scene_rng, text_rng, render_rng = _streams(stream)
    scene = random_scene(scene_rng, max_objects=max_objects)
    if pick_rng.random() < 0.5:
        return TaskSample(_draw(scene, render_rng, size), _caption(scene.objects), "match", "true caption")
    objects, attr = _altered(scene, text_rng)
    return TaskSample(_draw(scene, render_rng, size), _caption(objects), "mismatch", f"wrong {attr}")
