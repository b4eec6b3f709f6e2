"""Tests for the procedural VQA generator (feddat.data.synthetic).

Answers are checked against an independent oracle that parses each question
with regular expressions and recomputes the answer from the Scene, so a wrong
answer, an ambiguous reference or an unknown template all fail loudly.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter

import numpy as np
import pytest

from feddat.data.synthetic import (
    COLOURS,
    MAX_OBJECTS,
    MIN_GAP,
    NUMBER_WORDS,
    QUESTION_KINDS,
    SHAPES,
    SIZES,
    STYLES,
    Sample,
    Scene,
    SceneObject,
    UnanswerableError,
    ask,
    generate,
    random_scene,
    render,
)

ALL_STYLES = {style: 1.0 for style in STYLES}
ALL_KINDS = {kind: 1.0 for kind in QUESTION_KINDS}

# Left column: red circle (top) ; right column: blue square (top), yellow circle (bottom);
# green star bottom centre.
SCENE = Scene((
    SceneObject("circle", "red", "large", 0.2, 0.3),
    SceneObject("square", "blue", "small", 0.8, 0.3),
    SceneObject("star", "green", "large", 0.5, 0.8),
    SceneObject("circle", "yellow", "small", 0.8, 0.75),
))


# ---------------------------------------------------------------------------
# Oracle
# ---------------------------------------------------------------------------

_PLURAL_TO_SHAPE = {("crosses" if s == "cross" else s + "s"): s for s in SHAPES}


def _attributes(phrase: str) -> dict[str, str]:
    """{"size": .., "colour": .., "shape": ..} named in e.g. "large red circles"."""
    found: dict[str, str] = {}
    for word in phrase.split():
        if word in SIZES:
            found["size"] = word
        elif word in COLOURS:
            found["colour"] = word
        elif word in SHAPES or word in _PLURAL_TO_SHAPE:
            found["shape"] = _PLURAL_TO_SHAPE.get(word, word)
        else:
            assert word in ("object", "objects", "shapes"), f"unexpected word {word!r} in {phrase!r}"
    return found


def _matching(scene: Scene, phrase: str) -> list[SceneObject]:
    wanted = _attributes(phrase)
    return [o for o in scene.objects if all(getattr(o, k) == v for k, v in wanted.items())]


def _the(scene: Scene, phrase: str) -> SceneObject:
    objs = _matching(scene, phrase)
    assert len(objs) == 1, f"'the {phrase}' is ambiguous or missing in {scene}"
    return objs[0]


def _is(a: SceneObject, b: SceneObject, relation: str) -> bool:
    """Relation with a required clear margin: ambiguous placements fail the test."""
    axis, sign = {"left": ("x", -1), "right": ("x", 1), "above": ("y", -1), "below": ("y", 1),
                  "higher than": ("y", -1), "lower than": ("y", 1)}[relation]
    delta = sign * (getattr(a, axis) - getattr(b, axis))
    assert abs(delta) >= MIN_GAP, f"relation {relation!r} between {a} and {b} is ambiguous"
    return delta > 0


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _oracle(scene: Scene, question: str) -> str:
    """Recompute the answer to ``question`` from ``scene``."""
    q = question
    exists = lambda p: bool(_matching(scene, p))  # noqa: E731
    rules = [
        # object
        (r"(?:what shape is|what is the shape of|which shape is|what kind of shape is) the (.+)",
         lambda m: _the(scene, m[1]).shape),
        # attribute
        (r"(?:what colour is|what is the colour of|which colour is) the (.+)", lambda m: _the(scene, m[1]).colour),
        (r"(?:what size is|what is the size of) the (.+)", lambda m: _the(scene, m[1]).size),
        (r"is the (.+) (?:small or large|large or small)", lambda m: _the(scene, m[1]).size),
        # count
        (r"how many objects are (small|large)", lambda m: NUMBER_WORDS[len(_matching(scene, m[1]))]),
        (r"how many (.+?) (?:are there|can you see|are in the picture)",
         lambda m: NUMBER_WORDS[len(_matching(scene, m[1]))]),
        (r"what is the number of (.+)", lambda m: NUMBER_WORDS[len(_matching(scene, m[1]))]),
        # spatial
        (r"is the (.+) (?:left or right|right or left) of the (.+)",
         lambda m: "left" if _is(_the(scene, m[1]), _the(scene, m[2]), "left") else "right"),
        (r"is the (.+) (?:above or below|below or above) the (.+)",
         lambda m: "above" if _is(_the(scene, m[1]), _the(scene, m[2]), "above") else "below"),
        (r"is the (.+?) (?:to the )?(left|right) of the (.+)",
         lambda m: _yes(_is(_the(scene, m[1]), _the(scene, m[3]), m[2]))),
        (r"is the (.+?) (above|below|higher than|lower than) the (.+)",
         lambda m: _yes(_is(_the(scene, m[1]), _the(scene, m[3]), m[2]))),
        (r"(?:what|which) shape is (?:to the )?(left|right|above|below)(?: of)? the (.+)",
         lambda m: _only_on_side(scene, _the(scene, m[2]), m[1]).shape),
        # logic
        (r"is there an? (.+) and an? (.+)", lambda m: _yes(exists(m[1]) and exists(m[2]))),
        (r"is there an? (.+) or an? (.+)", lambda m: _yes(exists(m[1]) or exists(m[2]))),
        (r"is there an? (.+) but no (.+)", lambda m: _yes(exists(m[1]) and not exists(m[2]))),
        (r"(?:are all the objects|is every object) (small|large)",
         lambda m: _yes(all(o.size == m[1] for o in scene.objects))),
        (r"is there an? (.+)", lambda m: _yes(exists(m[1]))),
        (r"are there more (.+) than (.+)", lambda m: _yes(len(_matching(scene, m[1])) > len(_matching(scene, m[2])))),
    ]
    for pattern, answer in rules:
        match = re.fullmatch(pattern + r"\?", q)
        if match:
            return answer(match)
    raise AssertionError(f"oracle does not know the question {q!r}")


def _only_on_side(scene: Scene, anchor: SceneObject, side: str) -> SceneObject:
    others = [o for o in scene.objects if o is not anchor]
    on_side = [o for o in others if _is_side(o, anchor, side)]
    assert len(on_side) == 1, f"{len(on_side)} objects {side} of {anchor}"
    assert _is(on_side[0], anchor, side)  # clearly, not marginally
    return on_side[0]


def _is_side(o: SceneObject, anchor: SceneObject, side: str) -> bool:
    return {"left": o.x < anchor.x, "right": o.x > anchor.x, "above": o.y < anchor.y, "below": o.y > anchor.y}[side]


def _asked(scene: Scene, kind: str, seeds: range) -> list[tuple[str, str]]:
    return [ask(scene, kind, np.random.default_rng(seed)) for seed in seeds]


# ---------------------------------------------------------------------------
# Constants and scenes
# ---------------------------------------------------------------------------


def test_public_constants():
    assert STYLES == ("flat", "sketch", "photo", "night", "mosaic")
    assert QUESTION_KINDS == ("object", "attribute", "count", "spatial", "logic")
    assert SIZES == ("small", "large")
    assert len(set(SHAPES)) == len(SHAPES) >= 5
    assert len(set(COLOURS)) == len(COLOURS) >= 5
    assert NUMBER_WORDS[:7] == ("zero", "one", "two", "three", "four", "five", "six")


def test_random_scene_objects_are_valid_and_do_not_overlap():
    sizes_seen = Counter()
    for seed in range(300):
        scene = random_scene(np.random.default_rng(seed), min_objects=2, max_objects=MAX_OBJECTS)
        assert 2 <= len(scene.objects) <= MAX_OBJECTS
        for obj in scene.objects:
            assert obj.radius <= obj.x <= 1 - obj.radius and obj.radius <= obj.y <= 1 - obj.radius
            sizes_seen[obj.size] += 1
        for a, b in itertools.combinations(scene.objects, 2):
            assert math.hypot(a.x - b.x, a.y - b.y) >= a.radius + b.radius, f"overlap in {scene}"
        pairs = [(o.colour, o.shape) for o in scene.objects]
        assert len(pairs) == len(set(pairs)), "each (colour, shape) must be nameable"
    assert set(sizes_seen) == set(SIZES)


def test_random_scene_is_deterministic_and_respects_bounds():
    assert random_scene(np.random.default_rng(7)) == random_scene(np.random.default_rng(7))
    assert random_scene(np.random.default_rng(7)) != random_scene(np.random.default_rng(8))
    counts = {len(random_scene(np.random.default_rng(s), 3, 3).objects) for s in range(20)}
    assert counts == {3}


@pytest.mark.parametrize("low, high", [(0, 3), (4, 3), (2, MAX_OBJECTS + 1)])
def test_random_scene_rejects_bad_object_counts(low, high):
    with pytest.raises(ValueError, match="min_objects"):
        random_scene(np.random.default_rng(0), low, high)


def test_benchmarks_never_draw_the_pretraining_only_vocabulary():
    """Hearts and pink objects exist only in the pretraining corpus (pretrain/corpus.py)."""
    from feddat.data.synthetic import EXTRA_COLOURS, EXTRA_SHAPES

    rng = np.random.default_rng(0)
    drawn = [o for _ in range(500) for o in random_scene(rng, 2, MAX_OBJECTS).objects]
    assert not {o.shape for o in drawn} & set(EXTRA_SHAPES) and not {o.colour for o in drawn} & set(EXTRA_COLOURS)
    SceneObject("heart", "pink", "small", 0.5, 0.5)  # drawable, for the corpus


def test_scene_object_rejects_unknown_attributes():
    with pytest.raises(ValueError, match="hexagon"):
        SceneObject("hexagon", "red", "small", 0.5, 0.5)
    with pytest.raises(ValueError, match="mauve"):
        SceneObject("circle", "mauve", "small", 0.5, 0.5)
    with pytest.raises(ValueError, match="x="):
        SceneObject("circle", "red", "small", 1.5, 0.5)


# ---------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", QUESTION_KINDS)
def test_answers_match_oracle_on_random_scenes(kind):
    checked = 0
    for seed in range(250):
        rng = np.random.default_rng(seed)
        scene = random_scene(rng)
        try:
            question, answer = ask(scene, kind, rng)
        except UnanswerableError:
            continue
        assert _oracle(scene, question) == answer, (question, scene)
        checked += 1
    assert checked >= 200


@pytest.mark.parametrize("kind", QUESTION_KINDS)
def test_answers_match_oracle_on_hand_built_scene(kind):
    for question, answer in _asked(SCENE, kind, range(60)):
        assert _oracle(SCENE, question) == answer, question


def test_count_answers_on_hand_built_scene():
    answers = dict(_asked(SCENE, "count", range(300)))
    expected = {
        "how many circles are there?": "two",
        "how many stars are there?": "one",
        "how many crosses are there?": "zero",
        "how many objects are there?": "four",
        "how many large objects are there?": "two",
        "how many small circles are there?": "two",
        "how many red objects are there?": "one",
    }
    asked = {q: a for q, a in expected.items() if q in answers}
    assert len(asked) >= 4, f"too few known questions among {sorted(answers)}"
    for question, answer in asked.items():
        assert answers[question] == answer, question


def test_spatial_answers_on_hand_built_scene():
    # Red circle is clearly left of and level with the blue square.
    pairs = _asked(SCENE, "spatial", range(400))
    about_pair = dict(
        (q, a) for q, a in pairs if q.startswith("is the red circle") and q.endswith("the blue square?")
    )
    for question, answer in about_pair.items():
        if "left or right" in question or "right or left" in question:
            assert answer == "left"
        elif " left of " in question:
            assert answer == "yes"
        elif " right of " in question:
            assert answer == "no"
    assert about_pair, "no question about the red circle and the blue square"
    assert {"yes", "no"} <= {a for _, a in pairs}
    # Only the red circle is left of the green star; two objects are right of it.
    by_question = dict(pairs)
    left_of_star = [q for q in by_question if re.fullmatch(r"what shape is (to the )?left of the green star\?", q)]
    assert left_of_star and all(by_question[q] == "circle" for q in left_of_star)
    assert not any("right of the green star" in q and q.startswith("what") for q in by_question)


def test_object_question_names_object_by_unique_colour():
    question, answer = ask(SCENE, "object", np.random.default_rng(0))
    colour = next(w for w in question.rstrip("?").split() if w in COLOURS)
    assert answer == _the(SCENE, colour).shape


def test_unanswerable_scenes_raise():
    same_colour = Scene((SceneObject("circle", "red", "large", 0.2, 0.2),
                         SceneObject("square", "red", "large", 0.7, 0.7)))
    with pytest.raises(UnanswerableError):
        ask(same_colour, "object", np.random.default_rng(0))
    too_close = Scene((SceneObject("circle", "red", "small", 0.40, 0.40),
                       SceneObject("square", "blue", "small", 0.45, 0.45)))
    with pytest.raises(ValueError):  # UnanswerableError is a ValueError
        ask(too_close, "spatial", np.random.default_rng(0))


def test_ask_rejects_unknown_kind():
    with pytest.raises(ValueError, match="riddle"):
        ask(SCENE, "riddle", np.random.default_rng(0))


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _render_all(scene: Scene, size: int = 128, seed: int = 0) -> dict[str, np.ndarray]:
    return {style: render(scene, style, size, np.random.default_rng(seed)) for style in STYLES}


@pytest.mark.parametrize("size", [32, 97, 128])
def test_render_shape_dtype_and_determinism(size):
    for style, image in _render_all(SCENE, size).items():
        assert image.shape == (size, size, 3) and image.dtype == np.uint8, style
        again = render(SCENE, style, size, np.random.default_rng(0))
        assert np.array_equal(image, again), f"{style} is not deterministic"


def test_styles_look_different():
    for seed in range(3):
        scene = random_scene(np.random.default_rng(seed))
        images = {k: v.astype(np.float32) for k, v in _render_all(scene, seed=seed).items()}
        for a, b in itertools.combinations(STYLES, 2):
            diff = np.abs(images[a] - images[b]).mean()
            assert diff > 10, f"{a} and {b} differ by only {diff:.1f}"


def _style_features(image: np.ndarray) -> np.ndarray:
    pixels = image.astype(np.float32)
    return np.concatenate([
        pixels.mean(axis=(0, 1)),
        pixels.std(axis=(0, 1)),
        [np.abs(np.diff(pixels, axis=1)).mean(), (pixels.max(axis=2) < 60).mean() * 255],
    ])


def test_style_is_recognisable_from_simple_statistics():
    """Styles act as image domains: a nearest-centroid classifier on global stats separates them."""
    def features(seeds):
        return {style: np.array([_style_features(render(random_scene(np.random.default_rng(s)), style, 64,
                                                        np.random.default_rng(s))) for s in seeds])
                for style in STYLES}
    train, test = features(range(15)), features(range(100, 115))
    centroids = np.array([train[style].mean(axis=0) for style in STYLES])
    scale = np.concatenate(list(train.values())).std(axis=0) + 1e-6
    correct = total = 0
    for index, style in enumerate(STYLES):
        distances = np.abs((test[style][:, None, :] - centroids[None]) / scale).sum(axis=2)
        correct += int((distances.argmin(axis=1) == index).sum())
        total += len(test[style])
    assert correct / total >= 0.9


def _centre(obj: SceneObject, size: int) -> tuple[int, int]:
    return int(obj.y * size), int(obj.x * size)


def test_style_specific_looks():
    red = SCENE.objects[0]  # large red circle
    images = _render_all(SCENE)
    y, x = _centre(red, 128)
    # Filled styles keep the object's colour recognisable at its centre.
    for style in ("flat", "photo", "night", "mosaic"):
        r, g, b = images[style][y, x].astype(int)
        assert r > 150 and r > g + 80 and r > b + 80, f"{style}: centre pixel {(r, g, b)} is not red"
    # Sketch draws outlines only: the centre is paper, the rim is red.
    assert images["sketch"][y, x].min() > 180
    rim = images["sketch"][y, x - int(red.radius * 128) - 3: x - int(red.radius * 128) + 4].astype(int)
    assert any(p[0] > p[1] + 80 for p in rim), "no red outline on the circle's rim"
    # Mosaic: thick black border around objects.
    ring = images["mosaic"][y, x - int(red.radius * 128) - 3: x - int(red.radius * 128) + 4]
    assert ring.max(axis=1).min() < 50
    # Night is dark, flat is light.
    assert images["night"][:8, 60:68].mean() < 60
    assert images["flat"][:8, 60:68].mean() > 200


def test_photo_is_noisy_flat_is_clean():
    empty = Scene(())
    flat = render(empty, "flat", 64, np.random.default_rng(0))
    photo = render(empty, "photo", 64, np.random.default_rng(0))
    assert flat.std(axis=(0, 1)).max() == 0
    assert photo.std(axis=(0, 1)).min() > 3


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="watercolour"):
        render(SCENE, "watercolour", 64, np.random.default_rng(0))
    with pytest.raises(ValueError, match="16"):
        render(SCENE, "flat", 16, np.random.default_rng(0))


# ---------------------------------------------------------------------------
# generate()
# ---------------------------------------------------------------------------


def _same(a: list[Sample], b: list[Sample]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.image, y.image) and (x.question, x.answer, x.kind, x.style)
        == (y.question, y.answer, y.kind, y.style)
        for x, y in zip(a, b)
    )


def test_generate_is_deterministic():
    first = generate(25, ALL_STYLES, ALL_KINDS, seed=11, image_size=64)
    second = generate(25, ALL_STYLES, ALL_KINDS, seed=11, image_size=64)
    assert _same(first, second)
    other = generate(25, ALL_STYLES, ALL_KINDS, seed=12, image_size=64)
    assert not _same(first, other)
    assert sum(np.array_equal(a.image, b.image) for a, b in zip(first, other)) == 0


def test_generate_prefix_is_stable():
    longer = generate(12, ALL_STYLES, ALL_KINDS, seed=5, image_size=32)
    assert _same(generate(5, ALL_STYLES, ALL_KINDS, seed=5, image_size=32), longer[:5])


def test_generate_sample_format():
    samples = generate(150, ALL_STYLES, ALL_KINDS, seed=0, image_size=48)
    assert len(samples) == 150
    for s in samples:
        assert s.image.shape == (48, 48, 3) and s.image.dtype == np.uint8
        assert s.style in STYLES and s.kind in QUESTION_KINDS
        assert re.fullmatch(r"[a-z]+", s.answer), s.answer
        assert s.question.endswith("?") and s.question == s.question.lower()
        assert len(s.question.split()) <= 14, s.question
        assert not re.search(r"\ba [aeiou]|\ban [^aeiou\s]", s.question), s.question
    assert {s.style for s in samples} == set(STYLES)
    assert {s.kind for s in samples} == set(QUESTION_KINDS)
    assert generate(0, ALL_STYLES, ALL_KINDS, seed=0) == []


def test_weights_restrict_styles_and_kinds():
    samples = generate(80, {"night": 1.0, "flat": 0.0}, {"count": 2, "logic": 1, "object": 0}, seed=3,
                       image_size=32)
    assert {s.style for s in samples} == {"night"}
    assert {s.kind for s in samples} == {"count", "logic"}
    counts = Counter(s.kind for s in samples)
    assert counts["count"] > counts["logic"]


def test_answer_distributions_are_not_degenerate():
    def answers(kind, n=300):
        return Counter(s.answer for s in generate(n, {"flat": 1}, {kind: 1}, seed=1, image_size=32))

    logic = answers("logic")
    assert 0.4 <= logic["yes"] / 300 <= 0.6
    spatial = answers("spatial")
    assert spatial["yes"] > 50 and spatial["no"] > 50
    assert {"left", "right", "above", "below"} <= set(spatial)
    count = answers("count")
    assert len(count) >= 5 and max(count.values()) < 0.6 * 300
    assert set(answers("object", 150)) == set(SHAPES)
    attribute = answers("attribute")
    assert set(COLOURS) | set(SIZES) == set(attribute)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"style_weights": {"oil": 1.0}}, "oil"),
        ({"kind_weights": {"riddle": 1.0}}, "riddle"),
        ({"style_weights": {"flat": 0.0}}, "positive total"),
        ({"kind_weights": {}}, "positive total"),
        ({"style_weights": {"flat": -1.0, "night": 2.0}}, "flat"),
        ({"n": -1}, "-1"),
        ({"image_size": 31}, "31"),
        ({"seed": -3}, "-3"),
        ({"max_objects": 9}, "max_objects"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs, message):
    args = {"n": 2, "style_weights": ALL_STYLES, "kind_weights": ALL_KINDS, "seed": 0, "image_size": 64} | kwargs
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(**args)


def test_max_objects_caps_the_scene_size():
    """Counting answers can only reach max_objects (ask() only counts objects in the scene)."""
    numbers = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
    samples = generate(150, {"flat": 1.0}, {"count": 1.0}, seed=4, max_objects=2)
    assert max(numbers[s.answer] for s in samples) <= 2
