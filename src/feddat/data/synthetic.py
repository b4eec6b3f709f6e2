"""Procedural, fully deterministic visual-question-answering samples.

This is the offline "synthetic twin" of heterogeneous VQA benchmarks used in
federated-learning experiments.  Clients can be made to differ along two axes:

* the *image domain*, through the rendering ``style`` (flat clip-art, pencil
  sketch, noisy photo-like, glowing night scene, tiled mosaic), while the
  objects themselves (shape, colour, size, position) stay recognisable;
* the *reasoning skill*, through the question ``kind`` (object recognition,
  attribute recognition, counting, spatial relations, yes/no logic).

Nothing is downloaded.  Everything is drawn with Pillow and numpy from
``np.random.default_rng`` streams derived from one integer seed, so the same
arguments always give byte-identical images and identical text.

Images are meant for a frozen ImageNet backbone at 128 px with a 4x4 feature
grid, so objects are 23-38 px wide at that size; questions are short plain
English (at most 14 words) for a small uncased BERT.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "STYLES",
    "QUESTION_KINDS",
    "SHAPES",
    "COLOURS",
    "SIZES",
    "NUMBER_WORDS",
    "MAX_OBJECTS",
    "MIN_GAP",
    "SceneObject",
    "Scene",
    "Sample",
    "UnanswerableError",
    "random_scene",
    "render",
    "ask",
    "generate",
]

STYLES: tuple[str, ...] = ("flat", "sketch", "photo", "night", "mosaic")
QUESTION_KINDS: tuple[str, ...] = ("object", "attribute", "count", "spatial", "logic")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")
#: Drawn only in the pretraining corpus (feddat.pretrain.corpus), never by a benchmark twin, so that
#: the foundation model's vocabulary is broader than any downstream answer space.
EXTRA_SHAPES: tuple[str, ...] = ("pentagon", "heart", "arrow", "oval")
EXTRA_COLOURS: tuple[str, ...] = ("pink", "brown", "black")
ALL_SHAPES: tuple[str, ...] = SHAPES + EXTRA_SHAPES
ALL_COLOURS: tuple[str, ...] = COLOURS + EXTRA_COLOURS
NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
)

#: Most objects a scene may hold; more would not fit without overlapping.
MAX_OBJECTS = 6
#: Smallest centre distance (image fraction) along an axis for a spatial
#: relation to count as unambiguous.
MIN_GAP = 0.12

# Object radius as a fraction of the image side: 23 px / 38 px wide at 128 px,
# i.e. roughly one and two cells of the backbone's 4x4 feature grid.
_RADIUS = {"small": 0.09, "large": 0.15}
_EDGE_MARGIN = 0.02  # keeps objects fully inside the frame
_OBJECT_MARGIN = 0.04  # free space between two objects
_PLACEMENT_TRIES = 60
_LAYOUT_RESTARTS = 200
_SCENE_ATTEMPTS = 200
_SUPERSAMPLE = 2  # draw at 2x and box-downsample: cheap anti-aliasing

_PLURALS = {shape: shape + "s" for shape in ALL_SHAPES} | {"cross": "crosses"}

T = TypeVar("T")


# ---------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One object; ``x, y`` is its centre in [0, 1], ``y`` grows downwards."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    def __post_init__(self) -> None:
        # Hand-built scenes (tests, debugging) fail loudly on typos.
        _check_member(self.shape, ALL_SHAPES, "shape")
        _check_member(self.colour, ALL_COLOURS, "colour")
        _check_member(self.size, SIZES, "size")
        for name, value in (("x", self.x), ("y", self.y)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"object {name}={value!r} is outside [0, 1]")

    @property
    def radius(self) -> float:
        """Drawing radius as a fraction of the image side."""
        return _RADIUS[self.size]


@dataclass(frozen=True)
class Scene:
    """What an image shows, independently of how it is drawn."""

    objects: tuple[SceneObject, ...]


@dataclass(frozen=True, eq=False)
class Sample:
    """One VQA example.

    ``eq=False`` because comparing numpy arrays with ``==`` is ambiguous;
    compare ``image`` with ``np.array_equal`` instead.
    """

    image: np.ndarray  # (H, W, 3) uint8
    question: str
    answer: str  # a single lowercase word
    kind: str  # one of QUESTION_KINDS
    style: str  # one of STYLES


class UnanswerableError(ValueError):
    """The scene cannot support a question of the requested kind.

    E.g. an "object" question needs an object whose colour is unique; if no
    such object exists, :func:`generate` simply draws another scene.
    """


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _check_member(value: object, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {allowed}")


def _check_image_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 32:
        raise ValueError(f"image size must be an integer >= 32, got {size!r}")


def _normalise_weights(weights: dict[str, float], names: tuple[str, ...], what: str) -> np.ndarray:
    """Turn a name->weight mapping into a probability vector aligned with ``names``.

    Missing names get weight 0, so ``{"flat": 1}`` means "flat only".
    """
    probs = np.zeros(len(names))
    for name, weight in weights.items():
        _check_member(name, names, what)
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{what} weight for {name!r} must be finite and >= 0, got {weight!r}")
        probs[names.index(name)] = weight
    total = probs.sum()
    if total <= 0:
        raise ValueError(f"{what} weights must have a positive total, got {dict(weights)!r}")
    return probs / total


# ---------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------


def random_scene(
    rng: np.random.Generator,
    min_objects: int = 2,
    max_objects: int = 5,
    shapes: tuple[str, ...] = SHAPES,
    colours: tuple[str, ...] = COLOURS,
) -> Scene:
    """Draw a scene of non-overlapping objects with random attributes.

    Every (colour, shape) pair occurs at most once, so any object can be
    named unambiguously as e.g. "the red circle" in spatial questions, while
    shapes and colours on their own still repeat (useful for counting).
    """
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, "
            f"got min_objects={min_objects!r}, max_objects={max_objects!r}"
        )
    count = int(rng.integers(min_objects, max_objects + 1))
    for _ in range(_LAYOUT_RESTARTS):
        objects = _try_layout(rng, count, shapes, colours)
        if objects is not None:
            return Scene(objects)
    raise RuntimeError(f"could not place {count} non-overlapping objects")  # pragma: no cover


def _try_layout(rng: np.random.Generator, count: int, shapes: tuple[str, ...], colours: tuple[str, ...]) -> tuple[SceneObject, ...] | None:
    """One attempt at random attributes plus rejection-sampled positions."""
    pair_ids = rng.choice(len(colours) * len(shapes), size=count, replace=False)
    sizes = rng.integers(0, len(SIZES), size=count)
    placed: list[SceneObject] = []
    for pair_id, size_id in zip(pair_ids, sizes):
        colour, shape = colours[pair_id // len(shapes)], shapes[pair_id % len(shapes)]
        size = SIZES[size_id]
        position = _place(rng, _RADIUS[size], placed)
        if position is None:
            return None
        placed.append(SceneObject(shape, colour, size, *position))
    return tuple(placed)


def _place(rng: np.random.Generator, radius: float, placed: list[SceneObject]) -> tuple[float, float] | None:
    """Rejection-sample a centre that keeps clear of the border and of ``placed``."""
    low, high = radius + _EDGE_MARGIN, 1.0 - radius - _EDGE_MARGIN
    for _ in range(_PLACEMENT_TRIES):
        x, y = (float(v) for v in rng.uniform(low, high, size=2))
        if all(math.hypot(x - o.x, y - o.y) >= radius + o.radius + _OBJECT_MARGIN for o in placed):
            return round(x, 4), round(y, 4)
    return None


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------

Point = tuple[float, float]


def _ring(cx: float, cy: float, radii: Sequence[float], start_deg: float = -90.0) -> list[Point]:
    """Points evenly spaced in angle, cycling through ``radii`` (stars, circles)."""
    n = len(radii)
    return [
        (cx + r * math.cos(math.radians(start_deg + 360.0 * i / n)),
         cy + r * math.sin(math.radians(start_deg + 360.0 * i / n)))
        for i, r in enumerate(radii)
    ]


def _circle(cx: float, cy: float, r: float) -> list[Point]:
    return _ring(cx, cy, [r] * 40)


def _square(cx: float, cy: float, r: float) -> list[Point]:
    h = 0.8 * r  # a bit smaller than r so its area matches the circle's
    return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]


def _triangle(cx: float, cy: float, r: float) -> list[Point]:
    big = 1.1 * r
    return _ring(cx, cy + big / 4, [big] * 3)  # shifted down so its box is centred


def _star(cx: float, cy: float, r: float) -> list[Point]:
    return _ring(cx, cy, [r, 0.45 * r] * 5)


def _cross(cx: float, cy: float, r: float) -> list[Point]:
    w, e = 0.32 * r, 0.92 * r
    outline = [(-w, -e), (w, -e), (w, -w), (e, -w), (e, w), (w, w),
               (w, e), (-w, e), (-w, w), (-e, w), (-e, -w), (-w, -w)]
    return [(cx + dx, cy + dy) for dx, dy in outline]


def _diamond(cx: float, cy: float, r: float) -> list[Point]:
    # Narrower than tall, so it is not just a rotated square.
    return [(cx, cy - r), (cx + 0.72 * r, cy), (cx, cy + r), (cx - 0.72 * r, cy)]


def _pentagon(cx: float, cy: float, r: float) -> list[Point]:
    return _ring(cx, cy + 0.1 * r, [r] * 5)


def _heart(cx: float, cy: float, r: float) -> list[Point]:
    # The classic parametric heart, scaled to fit a circle of radius r.
    points = []
    for i in range(48):
        t = 2.0 * math.pi * i / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        points.append((cx + r * x / 17.0, cy - r * (y + 2.5) / 17.0))
    return points


def _arrow(cx: float, cy: float, r: float) -> list[Point]:
    w, head = 0.3 * r, 0.15 * r  # a right-pointing arrow: shaft, then a triangular head
    outline = [(-r, -w), (head, -w), (head, -0.8 * r), (r, 0.0), (head, 0.8 * r), (head, w), (-r, w)]
    return [(cx + dx, cy + dy) for dx, dy in outline]


def _oval(cx: float, cy: float, r: float) -> list[Point]:
    return [(cx + r * math.cos(2 * math.pi * i / 40), cy + 0.55 * r * math.sin(2 * math.pi * i / 40)) for i in range(40)]


_SHAPE_POINTS: dict[str, Callable[[float, float, float], list[Point]]] = {
    "circle": _circle, "square": _square, "triangle": _triangle,
    "star": _star, "cross": _cross, "diamond": _diamond,
    "pentagon": _pentagon, "heart": _heart, "arrow": _arrow, "oval": _oval,
}


def _outline(obj: SceneObject, canvas: int) -> list[Point]:
    """The object's polygon in pixel coordinates of a ``canvas`` x ``canvas`` image."""
    return _SHAPE_POINTS[obj.shape](obj.x * canvas, obj.y * canvas, obj.radius * canvas)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

_PALETTE = {
    "red": (215, 35, 35), "green": (30, 160, 55), "blue": (35, 85, 215),
    "yellow": (240, 200, 15), "purple": (135, 55, 185), "orange": (245, 125, 15),
    "pink": (240, 120, 190), "brown": (130, 80, 40), "black": (25, 25, 25),
}
# Deeper "pencil" tones: thin strokes on paper need more contrast than fills.
_SKETCH_PALETTE = {
    "red": (200, 25, 25), "green": (20, 140, 45), "blue": (25, 70, 200),
    "yellow": (220, 175, 0), "purple": (120, 40, 170), "orange": (230, 105, 0),
    "pink": (225, 95, 170), "brown": (110, 65, 30), "black": (15, 15, 15),
}
# Brighter, fully saturated tones that read as light sources on a dark sky.
_NIGHT_PALETTE = {
    "red": (255, 60, 60), "green": (60, 255, 90), "blue": (70, 130, 255),
    "yellow": (255, 240, 60), "purple": (200, 90, 255), "orange": (255, 155, 30),
    "pink": (255, 150, 215), "brown": (190, 120, 60), "black": (90, 90, 110),
}


def render(scene: Scene, style: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``scene`` in ``style`` as a ``(size, size, 3)`` uint8 RGB array.

    ``rng`` only drives the style's nuisance factors (background, noise,
    stroke jitter); the objects' identity and layout come from ``scene``.
    """
    _check_member(style, STYLES, "style")
    _check_image_size(size)
    return _RENDERERS[style](scene, int(size), rng)


def _downsample(image: Image.Image) -> Image.Image:
    return image.reduce(_SUPERSAMPLE) if _SUPERSAMPLE > 1 else image


def _to_uint8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _add_noise(image: Image.Image, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Gaussian pixel noise: sensor grain for photos, paper grain for sketches."""
    pixels = np.asarray(image, dtype=np.float32)
    noise = rng.normal(0.0, sigma, size=pixels.shape).astype(np.float32)
    return _to_uint8(pixels + noise)


def _linear_gradient(rng: np.random.Generator, canvas: int, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """A (canvas, canvas, 3) float gradient from ``start`` to ``end`` in a random direction."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    coords = (np.arange(canvas, dtype=np.float32) + 0.5) / canvas - 0.5
    t = math.cos(angle) * coords[None, :] + math.sin(angle) * coords[:, None]
    t = (t - t.min()) / (t.max() - t.min())
    return start[None, None, :] + t[..., None] * (end - start)[None, None, :]


def _smooth_noise(rng: np.random.Generator, canvas: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: blotchy texture, not pixel grain."""
    coarse = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((canvas, canvas), Image.BICUBIC))


def _render_flat(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """Clip-art: plain light background, flat filled shapes."""
    canvas = size * _SUPERSAMPLE
    grey = rng.uniform(222, 248)
    background = tuple(int(v) for v in np.clip(grey + rng.uniform(-6, 6, size=3), 0, 255))
    image = Image.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw.polygon(_outline(obj, canvas), fill=_PALETTE[obj.colour])
    return np.asarray(_downsample(image)).copy()


def _render_sketch(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """Pencil sketch: off-white paper with faint lines, jittery thick outlines only."""
    canvas = size * _SUPERSAMPLE
    paper = np.array([244, 238, 222]) + rng.integers(-6, 7, size=3)
    image = Image.new("RGB", (canvas, canvas), tuple(int(v) for v in paper))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 14))):  # faint ruled / stray lines
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, canvas, size=4))
        shade = tuple(int(v) for v in paper - rng.integers(14, 28))
        draw.line([(x0, y0), (x1, y1)], fill=shade, width=_SUPERSAMPLE)
    for obj in scene.objects:
        # Stroke width follows object size so thin parts (small crosses) stay hollow.
        width = max(2, round(0.2 * obj.radius * size)) * _SUPERSAMPLE
        for _ in range(2):  # two slightly offset strokes, like a hand-drawn outline
            points = _jitter(rng, _outline(obj, canvas), obj.radius * canvas)
            draw.line(points + points[:1], fill=_SKETCH_PALETTE[obj.colour], width=width, joint="curve")
    return _add_noise(_downsample(image), rng, sigma=5.0)


def _jitter(rng: np.random.Generator, points: list[Point], radius: float) -> list[Point]:
    """Shift, rescale and wobble a polygon a little, as a hand would."""
    pts = np.asarray(points)
    centre = pts.mean(axis=0)
    scale = 1.0 + rng.normal(0.0, 0.04)
    shift = rng.normal(0.0, 0.05 * radius, size=2)
    wobble = rng.normal(0.0, 0.025 * radius, size=pts.shape)
    moved = centre + (pts - centre) * scale + shift + wobble
    return [(float(x), float(y)) for x, y in moved]


def _render_photo(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """Photo-like: textured gradient, drop shadows, shaded objects, blur and noise."""
    canvas = size * _SUPERSAMPLE
    # Muted (greyish) colours so objects stand out by saturation, as in real photos.
    start = rng.uniform(100, 180) + rng.uniform(-35, 35, size=3)
    end = rng.uniform(100, 180) + rng.uniform(-35, 35, size=3)
    pixels = _linear_gradient(rng, canvas, start, end)
    pixels += 18.0 * _smooth_noise(rng, canvas, cells=int(rng.integers(4, 9)))[..., None]
    pixels *= 1.0 - 0.45 * _shadow_mask(scene, canvas)[..., None]
    for obj in scene.objects:
        _paint_shaded(pixels, obj, canvas)
    image = _downsample(Image.fromarray(_to_uint8(pixels)))
    image = image.filter(ImageFilter.GaussianBlur(0.6))
    return _add_noise(image, rng, sigma=7.0)


def _shadow_mask(scene: Scene, canvas: int) -> np.ndarray:
    """Soft drop-shadow strength in [0, 1], cast down and to the right."""
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    for obj in scene.objects:
        offset = 0.12 * obj.radius * canvas
        draw.polygon([(x + offset, y + offset) for x, y in _outline(obj, canvas)], fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(0.02 * canvas))
    return np.asarray(mask, dtype=np.float32) / 255.0


def _paint_shaded(pixels: np.ndarray, obj: SceneObject, canvas: int) -> None:
    """Fill ``obj`` in place with a lit-from-top-left gradient of its colour."""
    points = _outline(obj, canvas)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    left, top = max(0, int(min(xs)) - 1), max(0, int(min(ys)) - 1)
    right, bottom = min(canvas, int(max(xs)) + 2), min(canvas, int(max(ys)) + 2)
    mask_image = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(mask_image).polygon([(x - left, y - top) for x, y in points], fill=255)
    mask = np.asarray(mask_image, dtype=np.float32)[..., None] / 255.0

    r = obj.radius * canvas
    yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
    light = np.clip(-((xx - obj.x * canvas) + (yy - obj.y * canvas)) / (1.6 * r), -1.0, 1.0)[..., None]
    base = np.asarray(_PALETTE[obj.colour], dtype=np.float32)
    shaded = np.where(light > 0, base + (255.0 - base) * 0.4 * light, base * (1.0 + 0.3 * light))
    region = pixels[top:bottom, left:right]
    region[...] = region * (1.0 - mask) + shaded * mask


def _render_night(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """Night scene: dark sky with faint stars, bright glowing objects."""
    canvas = size * _SUPERSAMPLE
    start = rng.uniform(0, 18, size=3) + np.array([0, 0, 8])
    end = rng.uniform(8, 30, size=3) + np.array([0, 0, 22])
    pixels = _linear_gradient(rng, canvas, start, end)
    for _ in range(int(rng.integers(15, 40))):  # faint background stars
        x, y = (int(v) for v in rng.integers(0, canvas, size=2))
        pixels[y, x] += rng.uniform(50, 120)

    glow = Image.new("RGB", (canvas, canvas), (0, 0, 0))
    glow_draw = ImageDraw.Draw(glow)
    for obj in scene.objects:
        glow_draw.polygon(_outline(obj, canvas), fill=_NIGHT_PALETTE[obj.colour])
    glow = glow.filter(ImageFilter.GaussianBlur(0.04 * canvas))
    pixels += 1.3 * np.asarray(glow, dtype=np.float32)

    image = Image.fromarray(_to_uint8(pixels))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw.polygon(_outline(obj, canvas), fill=_NIGHT_PALETTE[obj.colour])
    return np.asarray(_downsample(image)).copy()


def _render_mosaic(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """Mosaic: greyish random tiles with grout, strong fills with thick black borders."""
    canvas = size * _SUPERSAMPLE
    tiles = int(rng.integers(6, 11))
    grey = rng.uniform(115, 195, size=(tiles, tiles, 1))
    tint = rng.normal(0.0, 12.0, size=(tiles, tiles, 3))
    image = Image.fromarray(_to_uint8(grey + tint)).resize((canvas, canvas), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for i in range(1, tiles):  # grout lines between tiles
        edge = i * canvas / tiles
        draw.line([(edge, 0), (edge, canvas)], fill=(70, 70, 70), width=_SUPERSAMPLE)
        draw.line([(0, edge), (canvas, edge)], fill=(70, 70, 70), width=_SUPERSAMPLE)
    border = max(2, round(0.025 * size)) * _SUPERSAMPLE
    for obj in scene.objects:
        points = _outline(obj, canvas)
        draw.polygon(points, fill=_PALETTE[obj.colour])
        draw.line(points + points[:1], fill=(0, 0, 0), width=border, joint="curve")
    return np.asarray(_downsample(image)).copy()


_RENDERERS: dict[str, Callable[[Scene, int, np.random.Generator], np.ndarray]] = {
    "flat": _render_flat, "sketch": _render_sketch, "photo": _render_photo,
    "night": _render_night, "mosaic": _render_mosaic,
}


# ---------------------------------------------------------------------------
# Questions: shared helpers
# ---------------------------------------------------------------------------

_ATTRIBUTES = ("size", "colour", "shape")  # order in which they are spoken


def _pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    return items[int(rng.integers(len(items)))]


def _unique_in_order(items: Sequence[T]) -> list[T]:
    """Deduplicate keeping first occurrence (never iterate a set: its order varies)."""
    return list(dict.fromkeys(items))


def _matches(scene: Scene, obj: SceneObject, attrs: Sequence[str]) -> int:
    return sum(all(getattr(o, a) == getattr(obj, a) for a in attrs) for o in scene.objects)


def _phrase(obj: SceneObject, attrs: Sequence[str]) -> str:
    """E.g. ("size", "colour") -> "large red object"; ("colour", "shape") -> "red circle"."""
    words = [getattr(obj, a) for a in _ATTRIBUTES if a in attrs]
    if "shape" not in attrs:
        words.append("object")
    return " ".join(words)


def _unique_options(scene: Scene, obj: SceneObject, options: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The attribute combinations among ``options`` that single out ``obj``."""
    return [attrs for attrs in options if _matches(scene, obj, attrs) == 1]


def _referable(scene: Scene, options: Sequence[tuple[str, ...]]) -> list[SceneObject]:
    return [o for o in scene.objects if _unique_options(scene, o, options)]


def _referent(scene: Scene, obj: SceneObject, options: Sequence[tuple[str, ...]], rng: np.random.Generator) -> str:
    """A shortest unambiguous noun phrase for ``obj`` built from ``options``."""
    unique = _unique_options(scene, obj, options)
    shortest = min(len(attrs) for attrs in unique)
    return _phrase(obj, _pick(rng, [a for a in unique if len(a) == shortest]))


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _pair_phrase(pair: tuple[str, str]) -> str:
    colour, shape = pair
    return _with_article(f"{colour} {shape}")


# ---------------------------------------------------------------------------
# Question kinds
# ---------------------------------------------------------------------------


def ask(scene: Scene, kind: str, rng: np.random.Generator) -> tuple[str, str]:
    """Return ``(question, answer)`` of ``kind`` about ``scene``; the answer is exact.

    Raises :class:`UnanswerableError` (a ``ValueError``) when the scene cannot
    support that kind, e.g. no colour is unique for an "object" question.
    """
    _check_member(kind, QUESTION_KINDS, "question kind")
    return _ASKERS[kind](scene, rng)


_OBJECT_TEMPLATES = (
    "what shape is the {ref}?",
    "what is the shape of the {ref}?",
    "which shape is the {ref}?",
    "what kind of shape is the {ref}?",
)


def _ask_object(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """Shape of an object named by its (unique) colour."""
    options = (("colour",), ("size", "colour"))
    candidates = _referable(scene, options)
    if not candidates:
        raise UnanswerableError("no object can be named by colour alone")
    obj = _pick(rng, candidates)
    ref = _referent(scene, obj, options, rng)
    return _pick(rng, _OBJECT_TEMPLATES).format(ref=ref), obj.shape


_ATTRIBUTE_QUESTIONS = {
    "colour": (
        (("shape",), ("size", "shape")),
        ("what colour is the {ref}?", "what is the colour of the {ref}?", "which colour is the {ref}?"),
    ),
    "size": (
        (("shape",), ("colour",), ("colour", "shape")),
        ("what size is the {ref}?", "what is the size of the {ref}?",
         "is the {ref} small or large?", "is the {ref} large or small?"),
    ),
}


def _ask_attribute(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """Colour (mostly) or size of an object named by other attributes."""
    targets = ("colour", "size") if rng.random() < 0.7 else ("size", "colour")
    for target in targets:
        options, templates = _ATTRIBUTE_QUESTIONS[target]
        candidates = _referable(scene, options)
        if candidates:
            obj = _pick(rng, candidates)
            ref = _referent(scene, obj, options, rng)
            return _pick(rng, templates).format(ref=ref), getattr(obj, target)
    raise UnanswerableError("no object can be named without its colour or size")


def _count_value(rng: np.random.Generator, scene: Scene, attr: str, universe: tuple[str, ...]) -> str:
    """Mostly a value present in the scene (non-trivial counts), else any (often zero)."""
    if scene.objects and rng.random() < 0.7:
        # A random object's value: frequent values are asked about more often,
        # which spreads the answers beyond "one".
        return getattr(_pick(rng, scene.objects), attr)
    return _pick(rng, universe)


def _ask_count(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """How many objects match a shape, colour, size (or nothing)."""
    family = ("total", "shape", "colour", "size", "size_shape")[
        int(rng.choice(5, p=[0.15, 0.25, 0.25, 0.25, 0.1]))
    ]
    wanted: dict[str, str] = {}
    if family in ("shape", "size_shape"):
        wanted["shape"] = _count_value(rng, scene, "shape", SHAPES)
    if family == "colour":
        wanted["colour"] = _count_value(rng, scene, "colour", COLOURS)
    if family in ("size", "size_shape"):
        wanted["size"] = _count_value(rng, scene, "size", SIZES)
    count = sum(all(getattr(o, a) == v for a, v in wanted.items()) for o in scene.objects)
    return _count_question(rng, family, wanted), NUMBER_WORDS[count]


def _count_question(rng: np.random.Generator, family: str, wanted: dict[str, str]) -> str:
    if family == "total":
        return _pick(rng, ("how many objects are there?", "how many shapes are there?",
                           "how many objects are in the picture?"))
    if family == "colour":
        colour = wanted["colour"]
        return _pick(rng, (f"how many {colour} objects are there?", f"how many {colour} shapes can you see?",
                           f"what is the number of {colour} objects?"))
    if family == "size":
        size = wanted["size"]
        return _pick(rng, (f"how many {size} objects are there?", f"how many objects are {size}?"))
    noun = _PLURALS[wanted["shape"]]
    if family == "size_shape":
        noun = f"{wanted['size']} {noun}"
    return _pick(rng, (f"how many {noun} are there?", f"how many {noun} can you see?",
                       f"what is the number of {noun}?"))


# --- spatial ---------------------------------------------------------------

_SPATIAL_OPTIONS = (("colour", "shape"), ("size", "colour", "shape"))
_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
_RELATION_TEMPLATES = {
    "left": ("is the {a} left of the {b}?", "is the {a} to the left of the {b}?"),
    "right": ("is the {a} right of the {b}?", "is the {a} to the right of the {b}?"),
    "above": ("is the {a} above the {b}?", "is the {a} higher than the {b}?"),
    "below": ("is the {a} below the {b}?", "is the {a} lower than the {b}?"),
}
_WHAT_SHAPE_TEMPLATES = {
    "left": ("what shape is left of the {b}?", "what shape is to the left of the {b}?"),
    "right": ("what shape is right of the {b}?", "what shape is to the right of the {b}?"),
    "above": ("what shape is above the {b}?", "which shape is above the {b}?"),
    "below": ("what shape is below the {b}?", "which shape is below the {b}?"),
}


def _relation(a: SceneObject, b: SceneObject, axis: str) -> str:
    """Where ``a`` is relative to ``b`` along ``axis`` (y grows downwards)."""
    if axis == "x":
        return "left" if a.x < b.x else "right"
    return "above" if a.y < b.y else "below"


def _clear_pairs(scene: Scene) -> list[tuple[SceneObject, SceneObject, str]]:
    """Ordered pairs of nameable objects separated by at least MIN_GAP on an axis."""
    named = _referable(scene, _SPATIAL_OPTIONS)
    return [
        (a, b, axis)
        for a in named for b in named if a is not b
        for axis in ("x", "y")
        if abs(getattr(a, axis) - getattr(b, axis)) >= MIN_GAP
    ]


def _spatial_yes_no(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """Ask "is the red circle left of the blue square?", true or false with equal odds."""
    pairs = _clear_pairs(scene)
    if not pairs:
        return None
    a, b, axis = _pick(rng, pairs)
    truth = _relation(a, b, axis)
    want_yes = rng.random() < 0.5
    relation = truth if want_yes else _OPPOSITE[truth]
    question = _pick(rng, _RELATION_TEMPLATES[relation]).format(
        a=_referent(scene, a, _SPATIAL_OPTIONS, rng), b=_referent(scene, b, _SPATIAL_OPTIONS, rng))
    return question, "yes" if want_yes else "no"


def _spatial_which_side(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """Ask "is the red circle left or right of the blue square?" -> left / right."""
    pairs = _clear_pairs(scene)
    if not pairs:
        return None
    a, b, axis = _pick(rng, pairs)
    templates = (
        ("is the {a} left or right of the {b}?", "is the {a} right or left of the {b}?")
        if axis == "x" else
        ("is the {a} above or below the {b}?", "is the {a} below or above the {b}?")
    )
    question = _pick(rng, templates).format(
        a=_referent(scene, a, _SPATIAL_OPTIONS, rng), b=_referent(scene, b, _SPATIAL_OPTIONS, rng))
    return question, _relation(a, b, axis)


def _only_neighbour(scene: Scene, anchor: SceneObject, direction: str) -> SceneObject | None:
    """The single object on ``direction``'s side of ``anchor``, if exactly one, clearly so."""
    axis = "x" if direction in ("left", "right") else "y"
    side = [o for o in scene.objects if o is not anchor and _relation(o, anchor, axis) == direction
            and getattr(o, axis) != getattr(anchor, axis)]
    if len(side) != 1 or abs(getattr(side[0], axis) - getattr(anchor, axis)) < MIN_GAP:
        return None
    return side[0]


def _spatial_what_shape(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """Ask "what shape is left of the green star?" when exactly one object is."""
    options = [
        (anchor, direction, neighbour)
        for anchor in _referable(scene, _SPATIAL_OPTIONS)
        for direction in ("left", "right", "above", "below")
        if (neighbour := _only_neighbour(scene, anchor, direction)) is not None
    ]
    if not options:
        return None
    anchor, direction, neighbour = _pick(rng, options)
    question = _pick(rng, _WHAT_SHAPE_TEMPLATES[direction]).format(
        b=_referent(scene, anchor, _SPATIAL_OPTIONS, rng))
    return question, neighbour.shape


_SPATIAL_BUILDERS = (_spatial_yes_no, _spatial_which_side, _spatial_what_shape)
_SPATIAL_WEIGHTS = (0.5, 0.3, 0.2)


def _ask_spatial(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """A relation between two clearly separated, uniquely named objects."""
    order = rng.choice(len(_SPATIAL_BUILDERS), size=len(_SPATIAL_BUILDERS), replace=False, p=_SPATIAL_WEIGHTS)
    for index in order:
        result = _SPATIAL_BUILDERS[int(index)](scene, rng)
        if result is not None:
            return result
    raise UnanswerableError("no two nameable objects are clearly separated")


# --- logic -----------------------------------------------------------------

_ALL_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)


def _present_pairs(scene: Scene) -> list[tuple[str, str]]:
    return _unique_in_order([(o.colour, o.shape) for o in scene.objects])


def _absent_pairs(scene: Scene) -> list[tuple[str, str]]:
    present = set(_present_pairs(scene))  # membership only; iteration order comes from _ALL_PAIRS
    return [p for p in _ALL_PAIRS if p not in present]


def _two(rng: np.random.Generator, items: Sequence[T]) -> tuple[T, T]:
    i, j = rng.choice(len(items), size=2, replace=False)
    return items[int(i)], items[int(j)]


def _maybe_swap(rng: np.random.Generator, a: T, b: T) -> tuple[T, T]:
    return (b, a) if rng.random() < 0.5 else (a, b)


def _logic_and(scene: Scene, want_yes: bool, rng: np.random.Generator) -> str | None:
    """Ask "is there a red circle and a blue square?" -- yes iff both exist."""
    present, absent = _present_pairs(scene), _absent_pairs(scene)
    if want_yes:
        if len(present) < 2:
            return None
        a, b = _two(rng, present)
    else:  # usually one half true, so the whole conjunction must be read
        b = _pick(rng, absent)
        a = _pick(rng, present) if present and rng.random() < 0.75 else _pick(rng, [p for p in absent if p != b])
        a, b = _maybe_swap(rng, a, b)
    return f"is there {_pair_phrase(a)} and {_pair_phrase(b)}?"


def _logic_or(scene: Scene, want_yes: bool, rng: np.random.Generator) -> str | None:
    """Ask "is there a green star or a yellow cross?" -- yes iff at least one exists."""
    present, absent = _present_pairs(scene), _absent_pairs(scene)
    if want_yes:
        if not present:
            return None
        a = _pick(rng, present)
        b = _pick(rng, absent) if rng.random() < 0.75 else _pick(rng, [p for p in _ALL_PAIRS if p != a])
        a, b = _maybe_swap(rng, a, b)
    else:
        a, b = _two(rng, absent)
    return f"is there {_pair_phrase(a)} or {_pair_phrase(b)}?"


def _logic_but_not(scene: Scene, want_yes: bool, rng: np.random.Generator) -> str | None:
    """Ask "is there a red circle but no blue square?" -- yes iff first exists, second does not."""
    present, absent = _present_pairs(scene), _absent_pairs(scene)
    if want_yes:
        if not present:
            return None
        a, b = _pick(rng, present), _pick(rng, absent)
    elif len(present) >= 2 and rng.random() < 0.5:
        a, b = _two(rng, present)  # second one exists
    else:
        a = _pick(rng, absent)  # first one is missing
        b = _pick(rng, [p for p in _ALL_PAIRS if p != a])
    return f"is there {_pair_phrase(a)} but no {b[0]} {b[1]}?"


def _logic_all(scene: Scene, want_yes: bool, rng: np.random.Generator) -> str | None:
    """Ask "are all the objects large?" -- a universal over the scene."""
    sizes = [z for z in SIZES if all(o.size == z for o in scene.objects)]
    choices = sizes if want_yes else [z for z in SIZES if z not in sizes]
    if not choices:
        return None
    size = _pick(rng, choices)
    return _pick(rng, (f"are all the objects {size}?", f"is every object {size}?"))


def _logic_exists(scene: Scene, want_yes: bool, rng: np.random.Generator) -> str | None:
    """Ask "is there a large circle?" / "is there a small red object?" -- size conjunctions."""
    attrs = ("size", "shape") if rng.random() < 0.5 else ("size", "colour")
    universe = [(z, v) for z in SIZES for v in (SHAPES if "shape" in attrs else COLOURS)]
    present = _unique_in_order([(o.size, getattr(o, attrs[1])) for o in scene.objects])
    choices = present if want_yes else [p for p in universe if p not in present]
    if not choices:
        return None
    size, value = _pick(rng, choices)
    noun = value if "shape" in attrs else f"{value} object"
    return f"is there {_with_article(f'{size} {noun}')}?"


def _logic_more(scene: Scene, want_yes: bool, rng: np.random.Generator) -> str | None:
    """Ask "are there more circles than squares?" -- compares two counts."""
    attr, values = ("shape", SHAPES) if rng.random() < 0.5 else ("colour", COLOURS)
    counts = {v: sum(getattr(o, attr) == v for o in scene.objects) for v in values}
    pairs = [
        (u, v) for u in values for v in values
        if u != v and counts[u] + counts[v] > 0 and (counts[u] > counts[v]) == want_yes
    ]
    if not pairs:
        return None
    u, v = _pick(rng, pairs)
    noun = (lambda w: _PLURALS[w]) if attr == "shape" else (lambda w: f"{w} objects")
    return f"are there more {noun(u)} than {noun(v)}?"


_LOGIC_BUILDERS = (_logic_and, _logic_or, _logic_but_not, _logic_all, _logic_exists, _logic_more)


def _ask_logic(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """A yes/no compositional question; the answer is drawn first so yes/no is 50/50."""
    want_yes = bool(rng.random() < 0.5)
    for index in rng.permutation(len(_LOGIC_BUILDERS)):
        question = _LOGIC_BUILDERS[int(index)](scene, want_yes, rng)
        if question is not None:
            return question, "yes" if want_yes else "no"
    raise UnanswerableError("no logic question fits this scene")  # pragma: no cover


_ASKERS: dict[str, Callable[[Scene, np.random.Generator], tuple[str, str]]] = {
    "object": _ask_object, "attribute": _ask_attribute, "count": _ask_count,
    "spatial": _ask_spatial, "logic": _ask_logic,
}


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------


def generate(
    n: int,
    style_weights: dict[str, float],
    kind_weights: dict[str, float],
    seed: int,
    image_size: int = 128,
    max_objects: int = 5,
) -> list[Sample]:
    """Generate ``n`` samples, drawing each one's style and kind from the weights.

    Sample ``i`` uses its own stream ``SeedSequence(seed).spawn(n)[i]``, so the
    result depends only on the arguments (not on global state, time or string
    hashing) and ``generate(m, ...)`` is a prefix of ``generate(n, ...)`` for
    ``m <= n``.  Weights need not sum to one; missing names mean weight 0.
    Scenes hold 2 to ``max_objects`` objects: fewer objects make binding a
    colour to a shape easier to learn.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _check_image_size(image_size)
    if not isinstance(max_objects, (int, np.integer)) or not 2 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects must be an integer from 2 to {MAX_OBJECTS}, got {max_objects!r}")
    style_probs = _normalise_weights(style_weights, STYLES, "style")
    kind_probs = _normalise_weights(kind_weights, QUESTION_KINDS, "question kind")
    streams = np.random.SeedSequence(int(seed)).spawn(int(n))
    return [_make_sample(stream, style_probs, kind_probs, int(image_size), int(max_objects)) for stream in streams]


def _make_sample(
    stream: np.random.SeedSequence, style_probs: np.ndarray, kind_probs: np.ndarray, image_size: int, max_objects: int
) -> Sample:
    """One sample; separate sub-streams keep scene/question independent of rendering."""
    pick_rng, scene_rng, ask_rng, render_rng = (np.random.default_rng(s) for s in stream.spawn(4))
    style = STYLES[int(pick_rng.choice(len(STYLES), p=style_probs))]
    kind = QUESTION_KINDS[int(pick_rng.choice(len(QUESTION_KINDS), p=kind_probs))]
    for _ in range(_SCENE_ATTEMPTS):
        scene = random_scene(scene_rng, max_objects=max_objects)
        try:
            question, answer = ask(scene, kind, ask_rng)
        except UnanswerableError:
            continue  # e.g. no unique colour for an "object" question: draw another scene
        image = render(scene, style, image_size, render_rng)
        return Sample(image=image, question=question, answer=answer, kind=kind, style=style)
    raise RuntimeError(f"no answerable {kind!r} scene after {_SCENE_ATTEMPTS} attempts")  # pragma: no cover
