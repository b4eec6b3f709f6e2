"""Tasks beyond single-image VQA: soft VQA targets, two-image statements, fixed output spaces,
the scene and task twins, and every method on a mix of them."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import TINY_IMAGE, raw_split, tiny_config
from feddat.algorithms import METHODS, build_method
from feddat.data import tasks
from feddat.data.benchmarks import client_specs
from feddat.data.clients import RawSplit, build_client, soft_scores
from feddat.data.scenes import CONTEXTS
from feddat.data.synthetic import Scene, SceneObject
from feddat.engines.embedded import run_method
from feddat.losses import score, task_loss
from feddat.peft.model import AdaptedModel


def test_soft_scores_follow_min_count_over_three():
    targets = soft_scores([["cat"] * 2 + ["dog"] * 7 + ["cow"], ["emu"] * 10], ["dog", "cat", "cow"])
    assert torch.allclose(targets, torch.tensor([[1.0, 2 / 3, 1 / 3], [0.0, 0.0, 0.0]]))
    logits = torch.tensor([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]])
    assert torch.allclose(score(logits, targets), torch.tensor([2 / 3, 0.0]))  # VQA score of the arg-max
    assert task_loss(logits, targets) > 0


def pair_split(n: int, seed: int) -> RawSplit:
    raw = raw_split(n, seed, answers=("true", "false"))
    rng = np.random.default_rng(seed + 1)
    raw.images2 = rng.integers(0, 256, raw.images.shape, dtype=np.uint8)
    return raw


def soft_split(n: int, seed: int) -> RawSplit:
    raw = raw_split(n, seed, answers=("red", "blue"))
    raw.answer_lists = [[a] * 4 + ["green"] * 6 for a in raw.answers]
    raw.answers = ["green"] * n  # the majority answer builds the vocabulary
    return raw


@pytest.fixture()
def mixed_clients(tiny_backbone):
    """A soft-target VQA client, a two-image true/false client and a 3-way entailment client."""
    entail = raw_split(16, 7, answers=("entailment", "neutral", "contradiction"))
    return [
        build_client("vqa", soft_split(16, 1), soft_split(8, 2), tiny_backbone, 10, None),
        build_client("pairs", pair_split(16, 3), pair_split(8, 4), tiny_backbone, 10, None, task="nlvr2", classes=("true", "false")),
        build_client("entail", entail, raw_split(8, 8, answers=("neutral",)), tiny_backbone, 10, None, task="entailment", classes=tasks.TASK_CLASSES["entailment"]),
    ]


def test_clients_carry_their_task_and_target_format(mixed_clients):
    vqa, pairs, entail = mixed_clients
    assert vqa.train.targets.is_floating_point() and vqa.train.targets.shape == (16, vqa.num_answers)
    assert pairs.images_per_example == 2 and pairs.train.image_features.shape[:2] == (16, 2)
    assert pairs.answers == ["true", "false"]
    assert entail.answers == ["entailment", "neutral", "contradiction"]  # fixed order, even unseen in test
    assert entail.test.targets.tolist() == [1] * 8


def test_two_image_batch_reads_each_image_and_concatenates(tiny_backbone, mixed_clients):
    pairs = mixed_clients[1]
    method = build_method("fedavg", tiny_config(), AdaptedModel(tiny_backbone, reduction_factor=4), torch.device("cpu"))
    head = method.load_head(method.init_client_state(pairs), pairs)
    assert head[0].in_features == 2 * tiny_backbone.hidden_size
    batch = pairs.train.batch(torch.arange(4), torch.device("cpu"))
    with method.model.active("shared"):
        pooled = method.represent(batch)
        first = method.represent(batch._replace(image_features=batch.image_features[:, 0]))
        second = method.represent(batch._replace(image_features=batch.image_features[:, 1]))
        assert torch.allclose(pooled, torch.cat([first, second], 1), atol=1e-5)
        assert method.logits(head, batch).shape == (4, 2)


def test_every_method_runs_on_mixed_tasks(tiny_backbone, mixed_clients, tmp_path):
    cfg = tiny_config(**{"federation.rounds": 1})
    cfg.peft.prompt_length, cfg.peft.lora_rank = 2, 2  # the tiny ViLT has 16 text positions
    model = AdaptedModel(tiny_backbone, reduction_factor=cfg.adapter.reduction_factor)
    for name in METHODS:
        run_dir = tmp_path / name
        run_dir.mkdir()
        summary = run_method(name, cfg, model, mixed_clients, run_dir, torch.device("cpu"), log=lambda s: None)
        evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
        assert {e["client"] for e in evals} == {"vqa", "pairs", "entail"}, name
        assert all(0.0 <= e["global"] <= 1.0 for e in evals), name
        assert summary["local_steps"] > 0, name


# ---- the synthetic statements are true exactly when the scene says so -----------------------------

LEFT = Scene((SceneObject("circle", "red", "large", 0.2, 0.3), SceneObject("square", "blue", "small", 0.8, 0.7)))
RIGHT = Scene((SceneObject("star", "green", "small", 0.5, 0.5),))


@pytest.mark.parametrize("truth", [True, False])
def test_scene_statements_have_the_requested_truth(truth):
    rng = np.random.default_rng(0)
    for _ in range(30):
        text = tasks._exists(LEFT, truth, rng)
        assert (text in ("there is a red circle.", "there is a blue square.")) == truth
        text = tasks._where(LEFT, truth, rng)
        assert (text in ("the red circle is left of the blue square.", "the red circle is above the blue square.", "the blue square is right of the red circle.", "the blue square is below the red circle.")) == truth
        count = tasks._count(LEFT, truth, rng)
        assert (count in ("there is one circle.", "there is one square.")) == truth


def test_pair_statements_are_judged_on_the_right_image():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        text, truth = tasks._pair_contains(LEFT, RIGHT, rng)
        side, noun = text.split(" image contains ")
        scene = LEFT if side == "the left" else RIGHT
        word = noun.split()[-1].rstrip(".")
        value = noun.split()[1] if word == "object" else word
        assert truth == any(value in (o.shape, o.colour) for o in scene.objects)
        seen.add(truth)
    assert seen == {True, False}
    assert tasks._pair_more(LEFT, RIGHT, np.random.default_rng(1))[1] == (tasks._pair_more(LEFT, RIGHT, np.random.default_rng(1))[0].startswith("the left"))


def test_a_mismatch_caption_is_filed_under_the_attribute_it_changed():
    # Two circles that differ in colour only: turning one's colour into the other's would describe
    # the other, so the generator changes its size instead, and must say so.
    twins = Scene((SceneObject("circle", "red", "small", 0.2, 0.3), SceneObject("circle", "blue", "small", 0.8, 0.7)))
    seen = set()
    for seed in range(60):
        objects, attr = tasks._altered(twins, np.random.default_rng(seed))
        changed = [(a, b) for a, b in zip(twins.objects, objects) if a != b]
        assert len(changed) == 1
        (before, after), = changed
        differs = [name for name in ("colour", "shape", "size") if getattr(before, name) != getattr(after, name)]
        assert differs == [attr]
        seen.add(attr)
    assert seen == {"colour", "shape", "size"}


@pytest.mark.parametrize("task", ["entailment", "nlvr2", "match"])
def test_task_twin_labels_are_balanced_and_deterministic(task):
    samples = tasks.generate(90, task, seed=3, image_size=64)
    counts = Counter(s.answer for s in samples)
    assert set(counts) == set(tasks.TASK_CLASSES[task])
    assert min(counts.values()) >= 90 / len(counts) / 2  # no constant answer solves the task
    again = tasks.generate(5, task, seed=3, image_size=64)
    assert [s.question for s in again] == [s.question for s in samples[:5]]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(again, samples))
    assert all((s.image2 is not None) == (task == "nlvr2") for s in samples)


def test_scene_twin_clients_differ_in_vocabulary_and_background():
    specs = client_specs("scene")
    assert [s.name for s in specs] == list(CONTEXTS)
    means = []
    for spec in specs:
        samples = spec.generate(40, seed=1, image_size=64, max_objects=3)
        ctx = CONTEXTS[spec.name]
        shapes = {s.answer for s in samples if s.kind == "object"}
        assert shapes and shapes <= set(ctx.shapes), spec.name
        colours = {s.answer for s in samples if s.kind == "attribute"} - {"small", "large"}
        assert colours <= set(ctx.colours), spec.name
        means.append(np.mean([s.image.reshape(-1, 3).mean(0) for s in samples], 0))
    distances = [np.abs(a - b).sum() for i, a in enumerate(means) for b in means[i + 1 :]]
    assert min(distances) > 10  # every pair of contexts looks different on average


def test_task_benchmark_builds_one_client_per_task(tiny_backbone):
    from feddat.data.clients import load_clients

    cfg = tiny_config(**{"data.benchmark": "task", "data.train_per_client": 6, "data.test_per_client": 4, "data.cache_dir": ""})
    clients = load_clients(cfg, tiny_backbone, log=lambda s: None)
    assert [(c.name, c.task, c.images_per_example) for c in clients] == [("vqa", "vqa", 1), ("entailment", "entailment", 1), ("nlvr2", "nlvr2", 2), ("match", "match", 1)]
    assert clients[2].train.image_features.shape[1:3] == (2, 3) and clients[2].train.image_features.shape[-1] == TINY_IMAGE
