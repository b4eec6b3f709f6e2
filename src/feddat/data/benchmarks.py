"""Named heterogeneous benchmarks: which clients exist and how each one's data are made.

The synthetic twins of docs/design.md §6 (generated offline, deterministically):
- domain:   one client per rendering style (image domain), each with its own question mix;
- function: one client per question kind (reasoning skill), images in every style;
- scene:    one client per scene context (object vocabulary, background, layout; data/scenes.py);
- task:     one client per task (VQA, entailment, two-image true/false, image-text match; data/tasks.py);
- shapes:   one client with every style and question kind: the pool to split with data.partition.
The public benchmarks of the same names are in data/public/.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from feddat.data.synthetic import QUESTION_KINDS, STYLES

GENERATOR_VERSION = 1  # bump when synthetic.py changes what it draws: invalidates feature caches


@dataclass(frozen=True)
class ClientSpec:
    name: str
    style_weights: dict[str, float] = field(default_factory=dict, hash=False)
    kind_weights: dict[str, float] = field(default_factory=dict, hash=False)
    context: str = ""  # scene twin: the scene context (data/scenes.py)
    task: str = "vqa"  # task twin: vqa | entailment | nlvr2 | match (data/tasks.py)

    @property
    def classes(self) -> tuple[str, ...] | None:
        from feddat.data.tasks import TASK_CLASSES

        return TASK_CLASSES.get(self.task)

    @property
    def categories(self) -> tuple[str, ...]:
        """What the samples' `kind` (RawSplit.groups) can be: question kinds or statement families."""
        if self.task == "vqa":  # scene and task clients ask every kind (empty kind_weights)
            return tuple(k for k in QUESTION_KINDS if self.kind_weights.get(k, 0.0) > 0) or QUESTION_KINDS
        from feddat.data import tasks

        return {"entailment": (*tasks.SCENE_STATEMENTS, "undecidable"), "nlvr2": tuple(tasks.PAIR_STATEMENTS), "match": ("true caption", "wrong colour", "wrong shape", "wrong size")}[self.task]

    @property
    def extra_key(self) -> str:
        """Added to the feature-cache key by the newer twins only (older keys stay valid)."""
        if self.context:
            return f"context={self.context}"
        return "" if self.style_weights else f"task={self.task}"

    def generate(self, n: int, seed: int, image_size: int, max_objects: int) -> list:
        if self.context:
            from feddat.data.scenes import generate

            return generate(n, self.context, seed, image_size, max_objects)
        if not self.style_weights:
            from feddat.data.tasks import generate

            return generate(n, self.task, seed, image_size, max_objects)
        from feddat.data.synthetic import generate

        return generate(n, self.style_weights, self.kind_weights, seed=seed, image_size=image_size, max_objects=max_objects)


def _one_hot(keys: tuple[str, ...], hot: str) -> dict[str, float]:
    return {k: float(k == hot) for k in keys}


def _uniform(keys: tuple[str, ...]) -> dict[str, float]:
    return {k: 1.0 for k in keys}


def _domain() -> list[ClientSpec]:
    # Each domain leans on two question kinds (as VizWiz, GQA, ... differ in question style too).
    clients = []
    for i, style in enumerate(STYLES):
        main = QUESTION_KINDS[i % len(QUESTION_KINDS)]
        second = QUESTION_KINDS[(i + 2) % len(QUESTION_KINDS)]
        mix = {k: 0.1 for k in QUESTION_KINDS}
        mix[main], mix[second] = 0.45, 0.25
        clients.append(ClientSpec(style, _one_hot(STYLES, style), mix))
    return clients


def _function() -> list[ClientSpec]:
    return [ClientSpec(kind, _uniform(STYLES), _one_hot(QUESTION_KINDS, kind)) for kind in QUESTION_KINDS]


def _scene() -> list[ClientSpec]:
    from feddat.data.scenes import CONTEXTS

    return [ClientSpec(context, context=context) for context in CONTEXTS]


def _task() -> list[ClientSpec]:
    from feddat.data.tasks import TASKS

    return [ClientSpec(task, task=task) for task in TASKS]


def _shapes() -> list[ClientSpec]:
    return [ClientSpec("shapes", _uniform(STYLES), _uniform(QUESTION_KINDS))]


BENCHMARKS = {"domain": _domain, "function": _function, "scene": _scene, "task": _task, "shapes": _shapes}


def client_specs(benchmark: str) -> list[ClientSpec]:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark '{benchmark}': choose one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[benchmark]()
