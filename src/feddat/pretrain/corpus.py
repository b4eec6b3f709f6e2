"""The procedural image-caption corpus that the offline foundation model is pretrained on (docs/design.md §8a).

Broad where the benchmarks are narrow, and different from them where finetuning should have
work to do:
- scenes of 1 to 4 objects drawn from a larger vocabulary than any twin (ALL_SHAPES, ALL_COLOURS:
  hearts, arrows, pink, black, ... that no benchmark asks about);
- only some rendering styles (default `flat` and `photo`), so the domain twin's sketch, night
  and mosaic clients are a real domain shift;
- captions, not questions: short true statements that list the objects, relate two of them or
  count them. Question answering stays a new skill for finetuning.

Every caption is built from a fact that can be checked against the scene (`holds`), so hard
negatives for image-text matching are provably false: one content word changed (a colour,
shape, size, count or relation). Each word carries a role, so masked-word prediction can mask
exactly the words that need the image.

Deterministic: scene i uses its own stream of `SeedSequence(seed)`; captions and negatives are
drawn from streams named by (seed, epoch, index), so a step's batch never depends on history.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from feddat.data.synthetic import (
    _PLURALS,
    ALL_COLOURS,
    ALL_SHAPES,
    MIN_GAP,
    SIZES,
    STYLES,
    Scene,
    SceneObject,
    random_scene,
    render,
)

#: Roles of the words masked-word prediction masks: each needs the image to be predicted.
ROLES = ("colour", "shape", "size", "count", "relation", "position")
COUNT_WORDS = ("no", "one", "two", "three", "four")
CORPUS_STYLES = ("flat", "photo")
MAX_CORPUS_OBJECTS = 4
KINDS = ("list", "relation", "count", "position")
KIND_WEIGHTS = (0.35, 0.25, 0.2, 0.2)
_AXIS_WORDS = {"x": ("left", "right"), "y": ("above", "below")}
#: Where in the picture an object is: (axis, side) -> (words before the position word, test).
#: A true caption needs the object well inside that part (a third of the side from the edge),
#: so the opposite statement is clearly false.
_REGIONS = {
    "left": ("x", ("on", "the"), lambda v: v <= 0.4),
    "right": ("x", ("on", "the"), lambda v: v >= 0.6),
    "top": ("y", ("at", "the"), lambda v: v <= 0.4),
    "bottom": ("y", ("at", "the"), lambda v: v >= 0.6),
}
_OPPOSITE_REGION = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}

Word = tuple[str, str]  # (word, role); role "" for words that the text alone determines


# ---------------------------------------------------------------------------
# Facts: what a caption states, checkable against a scene
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Mention:
    """An object as a caption names it: colour and shape always, size when said."""

    colour: str
    shape: str
    size: str = ""

    def matches(self, obj: SceneObject) -> bool:
        return obj.colour == self.colour and obj.shape == self.shape and (not self.size or obj.size == self.size)

    def words(self, article: str) -> list[Word]:
        out: list[Word] = [(article, "")]
        if self.size:
            out.append((self.size, "size"))
        return out + [(self.colour, "colour"), (self.shape, "shape")]


def _mention(obj: SceneObject, with_size: bool) -> Mention:
    return Mention(obj.colour, obj.shape, obj.size if with_size else "")


@dataclass(frozen=True)
class Listing:
    """Every object in the scene, in reading order along `order` ("x", "y") or in any order ("")."""

    mentions: tuple[Mention, ...]
    order: str = ""

    def holds(self, scene: Scene) -> bool:
        objects = scene.objects
        if len(objects) != len(self.mentions):
            return False
        if self.order:
            ranked = sorted(objects, key=lambda o: getattr(o, self.order))
            return all(m.matches(o) for m, o in zip(self.mentions, ranked))
        return any(all(m.matches(o) for m, o in zip(self.mentions, perm)) for perm in itertools.permutations(objects))

    def words(self) -> list[Word]:
        prefix = {"x": ["from", "left", "to", "right", ":"], "y": ["from", "top", "to", "bottom", ":"], "": []}[self.order]
        out: list[Word] = [(w, "") for w in prefix]
        for i, m in enumerate(self.mentions):
            if i:
                out.append(("and" if i == len(self.mentions) - 1 else ",", ""))
            out += m.words("a")
        return out + [(".", "")]


@dataclass(frozen=True)
class Relation:
    """`a` is `relation` of `b` (left / right / above / below), with a clear gap on that axis."""

    a: Mention
    relation: str
    b: Mention

    def holds(self, scene: Scene) -> bool:
        first = [o for o in scene.objects if self.a.matches(o)]
        second = [o for o in scene.objects if self.b.matches(o)]
        if len(first) != 1 or len(second) != 1 or first[0] is second[0]:
            return False
        axis = "x" if self.relation in _AXIS_WORDS["x"] else "y"
        gap = getattr(first[0], axis) - getattr(second[0], axis)
        before = self.relation in ("left", "above")
        return abs(gap) >= MIN_GAP and (gap < 0) == before

    def words(self) -> list[Word]:
        between: list[Word] = [("is", ""), ("to", ""), ("the", ""), (self.relation, "relation"), ("of", "")] if self.relation in _AXIS_WORDS["x"] else [("is", ""), (self.relation, "relation")]
        return self.a.words("the") + between + self.b.words("the") + [(".", "")]


@dataclass(frozen=True)
class Count:
    """Exactly `n` objects with `attr` = `value` (attr "" counts every object)."""

    n: int
    attr: str = ""
    value: str = ""

    def holds(self, scene: Scene) -> bool:
        return sum(1 for o in scene.objects if not self.attr or getattr(o, self.attr) == self.value) == self.n

    def words(self) -> list[Word]:
        verb = "is" if self.n == 1 else "are"
        if self.attr == "shape":
            noun: list[Word] = [(self.value if self.n == 1 else _PLURALS[self.value], "")]
        else:
            noun = ([(self.value, self.attr)] if self.attr else []) + [("object" if self.n == 1 else "objects", "")]
        return [("there", ""), (verb, ""), (COUNT_WORDS[self.n], "count")] + noun + [(".", "")]


@dataclass(frozen=True)
class Position:
    """The object `a` is in the `region` part of the picture (left, right, top, bottom)."""

    a: Mention
    region: str

    def holds(self, scene: Scene) -> bool:
        found = [o for o in scene.objects if self.a.matches(o)]
        axis, _, inside = _REGIONS[self.region]
        return len(found) == 1 and inside(getattr(found[0], axis))

    def words(self) -> list[Word]:
        _, before, _ = _REGIONS[self.region]
        return self.a.words("the") + [("is", "")] + [(w, "") for w in before] + [(self.region, "position"), (".", "")]


Fact = Listing | Relation | Count | Position


@dataclass(frozen=True)
class Caption:
    fact: Fact
    words: tuple[Word, ...]
    kind: str  # list | relation | count
    #: For a negative: the role of the word that was changed ("" for a true caption, "swap" for
    #: another scene's caption).
    changed: str = ""

    @property
    def text(self) -> str:
        return " ".join(w for w, _ in self.words)


def caption_of(fact: Fact, changed: str = "") -> Caption:
    kind = {Listing: "list", Relation: "relation", Count: "count", Position: "position"}[type(fact)]
    return Caption(fact, tuple(fact.words()), kind, changed)


# ---------------------------------------------------------------------------
# True captions
# ---------------------------------------------------------------------------


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _clear_order(objects: Sequence[SceneObject], axis: str) -> bool:
    values = sorted(getattr(o, axis) for o in objects)
    return all(b - a >= MIN_GAP for a, b in zip(values, values[1:]))


def _listing(scene: Scene, rng: np.random.Generator) -> Listing:
    orders = [axis for axis in ("x", "y") if len(scene.objects) > 1 and _clear_order(scene.objects, axis)]
    order = _pick(rng, orders + [""]) if orders else ""
    objects = sorted(scene.objects, key=lambda o: getattr(o, order)) if order else [scene.objects[int(i)] for i in rng.permutation(len(scene.objects))]
    return Listing(tuple(_mention(o, bool(rng.random() < 0.7)) for o in objects), order)


def _relation(scene: Scene, rng: np.random.Generator) -> Relation | None:
    pairs = [(a, b, axis) for a in scene.objects for b in scene.objects if a is not b for axis in ("x", "y") if abs(getattr(a, axis) - getattr(b, axis)) >= MIN_GAP]
    if not pairs:
        return None
    a, b, axis = _pick(rng, pairs)
    before, after = _AXIS_WORDS[axis]
    relation = before if getattr(a, axis) < getattr(b, axis) else after
    return Relation(_mention(a, bool(rng.random() < 0.4)), relation, _mention(b, bool(rng.random() < 0.4)))


def _count(scene: Scene, rng: np.random.Generator) -> Count:
    attr = _pick(rng, ("", "shape", "colour", "size"))
    if not attr:
        return Count(len(scene.objects))
    universe = {"shape": ALL_SHAPES, "colour": ALL_COLOURS, "size": SIZES}[attr]
    value = getattr(_pick(rng, scene.objects), attr) if rng.random() < 0.75 else _pick(rng, universe)
    return Count(sum(getattr(o, attr) == value for o in scene.objects), attr, value)


def _position(scene: Scene, rng: np.random.Generator) -> Position | None:
    options = [(o, region) for o in scene.objects for region, (axis, _, inside) in _REGIONS.items() if inside(getattr(o, axis))]
    if not options:
        return None
    obj, region = _pick(rng, options)
    return Position(_mention(obj, bool(rng.random() < 0.4)), region)


def true_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    """A short true statement about `scene`: a listing, a relation, a count or a position."""
    kind = KINDS[int(rng.choice(len(KINDS), p=KIND_WEIGHTS))]
    fact: Fact | None = {"list": _listing, "relation": _relation, "count": _count, "position": _position}[kind](scene, rng)
    if fact is None:  # one object: nothing to relate; or every object near the middle
        fact = _listing(scene, rng)
    return caption_of(fact)


# ---------------------------------------------------------------------------
# Negatives
# ---------------------------------------------------------------------------


def _other(rng: np.random.Generator, universe: Sequence[str], value: str) -> str:
    return _pick(rng, [u for u in universe if u != value])


def _changed_mention(m: Mention, role: str, rng: np.random.Generator) -> Mention:
    if role == "colour":
        return replace(m, colour=_other(rng, ALL_COLOURS, m.colour))
    if role == "shape":
        return replace(m, shape=_other(rng, ALL_SHAPES, m.shape))
    return replace(m, size=_other(rng, SIZES, m.size))


def _perturb(fact: Fact, rng: np.random.Generator) -> tuple[Fact, str]:
    """One content word of `fact` changed: (new fact, role of the changed word)."""
    if isinstance(fact, Count):
        return replace(fact, n=_pick(rng, [n for n in range(len(COUNT_WORDS)) if n != fact.n])), "count"
    if isinstance(fact, Position):
        if rng.random() < 0.6:
            return replace(fact, region=_OPPOSITE_REGION[fact.region]), "position"
        role = _pick(rng, ["colour", "shape"] + (["size"] if fact.a.size else []))
        return replace(fact, a=_changed_mention(fact.a, role, rng)), role
    if isinstance(fact, Relation):
        options = ["relation", "a", "b"]
        which = _pick(rng, options)
        if which == "relation":
            axis = "x" if fact.relation in _AXIS_WORDS["x"] else "y"
            return replace(fact, relation=_other(rng, _AXIS_WORDS[axis], fact.relation)), "relation"
        m = getattr(fact, which)
        role = _pick(rng, ["colour", "shape"] + (["size"] if m.size else []))
        return replace(fact, **{which: _changed_mention(m, role, rng)}), role
    i = int(rng.integers(len(fact.mentions)))
    m = fact.mentions[i]
    role = _pick(rng, ["colour", "shape"] + (["size"] if m.size else []))
    mentions = list(fact.mentions)
    mentions[i] = _changed_mention(m, role, rng)
    return replace(fact, mentions=tuple(mentions)), role


def hard_negative(scene: Scene, caption: Caption, rng: np.random.Generator) -> Caption | None:
    """`caption` with one content word changed so that it is false of `scene` (None if no try is)."""
    for _ in range(20):
        fact, role = _perturb(caption.fact, rng)
        if not fact.holds(scene):
            return caption_of(fact, role)
    return None


def easy_negative(scene: Scene, others: Sequence[Scene], rng: np.random.Generator) -> Caption | None:
    """A true caption of another scene that is false of this one."""
    for _ in range(20):
        other = true_caption(_pick(rng, others), rng)
        if not other.fact.holds(scene):
            return replace(other, changed="swap")
    return None


# ---------------------------------------------------------------------------
# Scenes and images
# ---------------------------------------------------------------------------


def corpus_scenes(n: int, seed: int, max_objects: int = MAX_CORPUS_OBJECTS) -> list[Scene]:
    """n scenes of 1 to max_objects objects over the whole drawing vocabulary; scene i from stream i."""
    streams = np.random.SeedSequence(int(seed)).spawn(int(n))
    return [random_scene(np.random.default_rng(s), 1, max_objects, ALL_SHAPES, ALL_COLOURS) for s in streams]


def corpus_style(index: int, styles: Sequence[str]) -> str:
    return styles[index % len(styles)]


def render_corpus(scenes: Sequence[Scene], styles: Sequence[str], seed: int, image_size: int, start: int = 0) -> np.ndarray:
    """Images of scenes[start:...] in their styles, (N, S, S, 3) uint8; each from its own render stream."""
    bad = [s for s in styles if s not in STYLES]
    if bad:
        raise ValueError(f"unknown corpus style(s) {bad}: choose from {', '.join(STYLES)}")
    out = np.empty((len(scenes), image_size, image_size, 3), np.uint8)
    for i, scene in enumerate(scenes):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1, start + i]))
        out[i] = render(scene, corpus_style(start + i, styles), image_size, rng)
    return out


def caption_rng(seed: int, epoch: int, index: int, salt: int = 0) -> np.random.Generator:
    """The stream of example `index`'s caption in `epoch` (salt separates other uses)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 2, int(epoch), int(index), int(salt)]))


def vocabulary() -> list[str]:
    """Every word a corpus caption can hold (each must be one token of the text encoder)."""
    words = {"from", "left", "to", "right", "top", "bottom", ":", "and", ",", "a", ".", "the", "is", "of", "above", "below", "there", "are", "object", "objects", "on", "at"}
    words |= set(ALL_COLOURS) | set(ALL_SHAPES) | set(SIZES) | set(COUNT_WORDS) | {_PLURALS[s] for s in ALL_SHAPES}
    return sorted(words)
