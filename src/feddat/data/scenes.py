"""Scene contexts: the synthetic twin of CLOVE-scene (clients differ by the kind of scene).

Each context mirrors one CLOVE scene client and differs from the others in what a picture of
it holds, not in how it is drawn:
- object vocabulary: its own 3 shapes and 4 colours (so its answer space differs too);
- background: shelves, a desk grid, striped wallpaper, a road, a sports field, sky and ground;
- layout: objects stand on shelves, sit on a grid, lie on the floor, line up along a road, ...
Questions are the generator's five kinds (synthetic.ask), mixed uniformly. Everything is drawn
from streams of one seed, so the same arguments give the same images and text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from feddat.data.synthetic import (
    _EDGE_MARGIN,
    _OBJECT_MARGIN,
    _PALETTE,
    _RADIUS,
    _SCENE_ATTEMPTS,
    _SUPERSAMPLE,
    QUESTION_KINDS,
    SIZES,
    Sample,
    Scene,
    SceneObject,
    UnanswerableError,
    _downsample,
    _outline,
    ask,
)

Position = Callable[[np.random.Generator, float], tuple[float, float]]


@dataclass(frozen=True)
class Context:
    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    position: Position  # where an object of a given radius may stand
    background: Callable[[int, np.random.Generator], Image.Image]


# ---- layouts: a centre (x, y) for an object of radius r ------------------------------------


def _scatter(rng: np.random.Generator, r: float) -> tuple[float, float]:
    low, high = r + _EDGE_MARGIN, 1 - r - _EDGE_MARGIN
    return float(rng.uniform(low, high)), float(rng.uniform(low, high))


def _on_shelves(rng: np.random.Generator, r: float) -> tuple[float, float]:
    shelf = (0.45, 0.92)[int(rng.integers(2))]  # objects rest on one of two boards
    return float(rng.uniform(r + _EDGE_MARGIN, 1 - r - _EDGE_MARGIN)), shelf - r


def _on_grid(rng: np.random.Generator, r: float) -> tuple[float, float]:
    cells = (0.2, 0.5, 0.8)
    return cells[int(rng.integers(3))], cells[int(rng.integers(3))]


def _band(top: float, bottom: float) -> Position:
    def place(rng: np.random.Generator, r: float) -> tuple[float, float]:
        return float(rng.uniform(r + _EDGE_MARGIN, 1 - r - _EDGE_MARGIN)), float(rng.uniform(top + r, bottom - r))

    return place


# ---- backgrounds ----------------------------------------------------------------------------


def _canvas(colour, canvas: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (canvas, canvas), tuple(int(c) for c in colour))
    return image, ImageDraw.Draw(image)


def _jitter(rng: np.random.Generator, colour, amount: float = 10.0) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.uniform(-amount, amount), 0, 255)) for c in colour)


def _shop(canvas: int, rng: np.random.Generator) -> Image.Image:
    image, draw = _canvas(_jitter(rng, (236, 226, 200)), canvas)
    for y in (0.45, 0.92):  # two wooden shelf boards
        draw.rectangle([0, y * canvas, canvas, (y + 0.06) * canvas], fill=_jitter(rng, (130, 85, 45)))
    return image


def _workplace(canvas: int, rng: np.random.Generator) -> Image.Image:
    image, draw = _canvas(_jitter(rng, (170, 180, 190)), canvas)
    for i in range(1, 6):  # desk mat grid
        edge = i * canvas / 6
        draw.line([(edge, 0), (edge, canvas)], fill=(205, 212, 220), width=_SUPERSAMPLE)
        draw.line([(0, edge), (canvas, edge)], fill=(205, 212, 220), width=_SUPERSAMPLE)
    return image


def _home(canvas: int, rng: np.random.Generator) -> Image.Image:
    a, b = _jitter(rng, (245, 215, 220)), _jitter(rng, (225, 235, 215))
    image, draw = _canvas(a, canvas)
    stripes = int(rng.integers(6, 10))
    for i in range(0, stripes, 2):  # striped wallpaper
        draw.rectangle([i * canvas / stripes, 0, (i + 1) * canvas / stripes, canvas], fill=b)
    draw.rectangle([0, 0.9 * canvas, canvas, canvas], fill=_jitter(rng, (160, 120, 80)))  # floor
    return image


def _transport(canvas: int, rng: np.random.Generator) -> Image.Image:
    image, draw = _canvas(_jitter(rng, (175, 210, 240)), canvas)
    draw.rectangle([0, 0.42 * canvas, canvas, 0.98 * canvas], fill=_jitter(rng, (95, 95, 100)))  # road
    for x in np.arange(0.0, 1.0, 0.2):  # dashed centre line
        draw.rectangle([x * canvas, 0.695 * canvas, (x + 0.1) * canvas, 0.715 * canvas], fill=(235, 235, 235))
    return image


def _sport(canvas: int, rng: np.random.Generator) -> Image.Image:
    image, draw = _canvas(_jitter(rng, (70, 150, 70)), canvas)
    white = (240, 240, 240)
    draw.line([(canvas / 2, 0), (canvas / 2, canvas)], fill=white, width=2 * _SUPERSAMPLE)
    draw.rectangle([0.04 * canvas, 0.04 * canvas, 0.96 * canvas, 0.96 * canvas], outline=white, width=2 * _SUPERSAMPLE)
    return image


def _outdoors(canvas: int, rng: np.random.Generator) -> Image.Image:
    image, draw = _canvas(_jitter(rng, (150, 200, 245)), canvas)
    horizon = rng.uniform(0.45, 0.52)
    draw.rectangle([0, horizon * canvas, canvas, canvas], fill=_jitter(rng, (110, 170, 80)))  # meadow
    for _ in range(int(rng.integers(1, 4))):  # clouds
        cx, cy, w = rng.uniform(0.1, 0.9) * canvas, rng.uniform(0.05, 0.25) * canvas, rng.uniform(0.08, 0.15) * canvas
        draw.ellipse([cx - w, cy - w / 2, cx + w, cy + w / 2], fill=(250, 250, 250))
    return image


CONTEXTS: dict[str, Context] = {
    "shop": Context(("circle", "square", "star"), ("red", "yellow", "orange", "green"), _on_shelves, _shop),
    "workplace": Context(("square", "diamond", "cross"), ("blue", "purple", "red", "orange"), _on_grid, _workplace),
    "home": Context(("circle", "triangle", "diamond"), ("purple", "orange", "yellow", "blue"), _band(0.1, 0.9), _home),
    "transport": Context(("square", "circle", "triangle"), ("red", "blue", "yellow", "green"), _band(0.42, 0.98), _transport),
    "sport": Context(("circle", "star", "cross"), ("red", "blue", "yellow", "purple"), _scatter, _sport),
    "outdoors": Context(("triangle", "star", "diamond"), ("red", "orange", "purple", "blue"), _band(0.5, 1.0), _outdoors),
}


def context_scene(rng: np.random.Generator, context: str, max_objects: int) -> Scene:
    """2..max_objects distinct (colour, shape) objects of the context's vocabulary, placed by its layout."""
    ctx = CONTEXTS[context]
    count = int(rng.integers(2, max_objects + 1))
    for _ in range(200):
        objects = _layout(rng, ctx, count)
        if objects is not None:
            return Scene(objects)
    raise RuntimeError(f"could not place {count} objects in a {context} scene")  # pragma: no cover


def _layout(rng: np.random.Generator, ctx: Context, count: int) -> tuple[SceneObject, ...] | None:
    pairs = rng.choice(len(ctx.colours) * len(ctx.shapes), size=count, replace=False)
    placed: list[SceneObject] = []
    for pair in pairs:
        colour, shape = ctx.colours[pair // len(ctx.shapes)], ctx.shapes[pair % len(ctx.shapes)]
        size = SIZES[int(rng.integers(len(SIZES)))]
        r = _RADIUS[size]
        for _ in range(40):
            x, y = ctx.position(rng, r)
            x, y = round(min(max(x, r), 1 - r), 4), round(min(max(y, r), 1 - r), 4)
            if all(math.hypot(x - o.x, y - o.y) >= r + o.radius + _OBJECT_MARGIN for o in placed):
                placed.append(SceneObject(shape, colour, size, x, y))
                break
        else:
            return None
    return tuple(placed)


def render_context(scene: Scene, context: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """The context's background with the objects drawn flat, outlined so they stand out from it."""
    canvas = size * _SUPERSAMPLE
    image = CONTEXTS[context].background(canvas, rng)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        points = _outline(obj, canvas)
        draw.polygon(points, fill=_PALETTE[obj.colour])
        draw.line(points + points[:1], fill=(30, 30, 30), width=_SUPERSAMPLE, joint="curve")
    return np.asarray(_downsample(image)).copy()


def generate(n: int, context: str, seed: int, image_size: int = 128, max_objects: int = 3) -> list[Sample]:
    """n samples of `context`; sample i depends only on (seed, i), as in synthetic.generate."""
    if context not in CONTEXTS:
        raise ValueError(f"unknown scene context {context!r}; expected one of {tuple(CONTEXTS)}")
    return [_sample(stream, context, image_size, max_objects) for stream in np.random.SeedSequence(int(seed)).spawn(int(n))]


def _sample(stream: np.random.SeedSequence, context: str, image_size: int, max_objects: int) -> Sample:
    pick_rng, scene_rng, ask_rng, render_rng = (np.random.default_rng(s) for s in stream.spawn(4))
    kind = QUESTION_KINDS[int(pick_rng.integers(len(QUESTION_KINDS)))]
    for _ in range(_SCENE_ATTEMPTS):
        scene = context_scene(scene_rng, context, max_objects)
        try:
            question, answer = ask(scene, kind, ask_rng)
        except UnanswerableError:
            continue
        return Sample(render_context(scene, context, image_size, render_rng), question, answer, kind, context)
    raise RuntimeError(f"no answerable {kind!r} question in a {context} scene")  # pragma: no cover
