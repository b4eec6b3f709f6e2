"""The cached frozen prefix (peft/prefix.py): a pass that starts at the lowest adapter site gives
the uncached pass's outputs and gradients to float rounding, skips the blocks below the site once
an example has been seen, does not depend on which batch first saw an example, and never serves
rows that the frozen part no longer computes (a weight changed in place, something below the site
that trains, a LoRA or prompt set while it acts). A bare pass (no adapter active: `head_only`) is cached whole."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from conftest import raw_split, tiny_config
from feddat.algorithms import build_method
from feddat.backbones import build_backbone
from feddat.config import ConfigError, validate
from feddat.data.clients import build_client
from feddat.peft.lora import lora_view
from feddat.peft.prompt import prompt_view
from feddat.peft.model import AdaptedModel

QUESTIONS = ["what colour is it?", "how many squares are there?", "is there a large red circle left of the star?", "what shape?"]


@pytest.fixture(scope="module")
def foundation():
    torch.manual_seed(0)
    return build_backbone("foundation", image_size=128, max_text_len=16)


def batch(backbone, n=8, seed=0):
    images = np.random.default_rng(seed).integers(0, 256, (n, 128, 128, 3), dtype=np.uint8)
    ids, mask = backbone.tokenize([QUESTIONS[i % len(QUESTIONS)] for i in range(n)])
    return backbone.encode_images(images), ids, mask


def adapted(backbone, blocks, budget_mb=64):
    for i, block in enumerate(backbone.blocks):  # undo an earlier test's sites on the shared backbone
        backbone.blocks[i] = getattr(block, "block", block)
    # GELU, not the default ReLU: float-order noise can flip a ReLU whose input sits at its kink,
    # which changes a gradient by a step however exact the cache is.
    model = AdaptedModel(backbone, blocks=blocks, activation="gelu")
    torch.manual_seed(1)
    for name in ("s", "t"):
        model.add_adapter(name)
        with torch.no_grad():
            for p in model.adapter_parameters(name):
                p.normal_(std=0.1)
    model.cache_prefix(budget_mb)
    model.activate("s")  # an adapter pass; a bare one (nothing active) is cached whole instead
    return model


def uncached(model, *inputs):
    return uncached_run(model, lambda x: model(*x), inputs)


def adapter_grads(model, output):
    for name in ("s", "t"):
        for p in model.adapter_parameters(name):
            p.grad = None
    (output * torch.linspace(-1, 1, output.shape[-1])).sum().backward()
    return [p.grad.clone() if p.grad is not None else None for n in ("s", "t") for p in model.adapter_parameters(n)]


@pytest.mark.parametrize("blocks", [None, [2, 4, 5]], ids=["every-block", "blocks245"])
@pytest.mark.parametrize("path", ["single", "routed", "branched"])
def test_a_cached_pass_equals_the_uncached_one_with_its_gradients(foundation, blocks, path):
    """The reference is each example run alone, uncached (no padding at all), summed."""
    model = adapted(foundation, blocks)
    inputs = batch(foundation)
    run = {"single": lambda x: model(*x), "routed": lambda x: _routed(model, x, branch=0), "branched": lambda x: _routed(model, x, branch=1)}[path]
    with model.active("s"):
        want, want_grads = [], None
        for n in range(len(inputs[0])):
            alone = uncached_run(model, run, tuple(t[n : n + 1] for t in inputs))
            grads = adapter_grads(model, alone)
            want.append(alone.detach())
            want_grads = grads if want_grads is None else [None if g is None else g + w for g, w in zip(grads, want_grads)]
        run(inputs)  # fills the cache
        got = run(inputs)
        got_grads = adapter_grads(model, got)
    copies = 1 if path == "single" else 2  # a routed pass returns one slice per route
    want = torch.cat([torch.cat([w[k::copies] for w in want]) for k in range(copies)]) if copies > 1 else torch.cat(want)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        assert (g is None) == (w is None)
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * float(w.abs().max()))  # float order
    assert len(model.prefix_cache.prefix.rows) == len(inputs[0])


def uncached_run(model, run, inputs):
    cache, model.prefix_cache = model.prefix_cache, None
    try:
        return run(inputs)
    finally:
        model.prefix_cache = cache


def _routed(model, inputs, branch):
    with model.routed(("s",), ("t", "s"), share_prefix=True, branch=branch):
        return model(*inputs)


def test_a_cached_pass_skips_the_blocks_below_the_lowest_site(foundation):
    model = adapted(foundation, [3, 4, 5])
    calls, hooks = block_calls(foundation)
    try:
        inputs = batch(foundation)
        model(*inputs)
        first = list(calls)
        model(*inputs)
        second = [c - f for c, f in zip(calls, first)]
    finally:
        for h in hooks:
            h.remove()
    assert model.prefix_cache.depth == 4  # blocks 0-3: site 3 adapts block 3's output
    assert first == [1] * 6  # the rows in one chunk below the site, then the batch above it
    assert second == [0, 0, 0, 0, 1, 1]


def _raw_blocks(backbone):
    return [getattr(b, "block", b) for b in backbone.blocks]


def block_calls(backbone):
    """Counts of calls per raw block while the context is open (a list, filled in place)."""
    calls = [0] * len(backbone.blocks)
    hooks = [b.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1)) for i, b in enumerate(_raw_blocks(backbone))]
    return calls, hooks


def test_a_bare_pass_runs_every_block_once_per_example_and_stays_exact(foundation):
    model = adapted(foundation, [3, 4, 5])
    inputs = batch(foundation)
    calls, hooks = block_calls(foundation)
    try:
        with model.active():
            want = torch.cat([uncached(model, *(t[n : n + 1] for t in inputs)) for n in range(len(inputs[0]))])  # each example alone
            before = list(calls)
            first = model(*inputs)
            second = model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    assert [c - b for c, b in zip(calls, before)] == [1] * 6  # every block once (one chunk), then none
    assert torch.equal(first, second) and not first.requires_grad
    torch.testing.assert_close(second, want, rtol=1e-5, atol=1e-5)
    assert len(model.prefix_cache.bare.rows) == len(inputs[0]) and not model.prefix_cache.prefix.rows
    with scaled_in_place(_raw_blocks(foundation)[5].output.dense.weight), model.active():  # above every site: only the bare rows depend on it
        changed = model(*inputs)
        torch.testing.assert_close(changed, uncached(model, *inputs), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(changed, second, atol=1e-3)


@contextmanager
def scaled_in_place(weight):
    """The frozen `weight` × 1.5, in place (its version counter moves), restored afterwards."""
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(1.5)
        yield
    finally:
        with torch.no_grad():
            weight.copy_(original)


def test_a_site_on_the_top_block_starts_there_with_the_prefix_rows(foundation):
    """The prefix is then every block, but an adapter pass still needs its tokens, not the
    bare pass's pooled output."""
    model = adapted(foundation, [5])
    inputs = batch(foundation)
    model(*inputs)
    got = model(*inputs)
    assert model.prefix_cache.depth == 6 and len(model.prefix_cache.prefix.rows) == len(inputs[0]) and not model.prefix_cache.bare.rows
    assert {r.dim() for r in model.prefix_cache.prefix.rows.values()} == {2}  # (tokens, hidden) per example
    torch.testing.assert_close(got, uncached(model, *inputs), rtol=1e-5, atol=1e-5)


def test_head_only_trains_the_same_with_and_without_the_cache(foundation):
    client = build_client("alpha", raw_split(16, 0), raw_split(8, 100), foundation, 100, None)
    results = {}
    for budget in (0, 64):
        cfg = tiny_config(**{"backbone.name": "foundation", "backbone.image_size": 128, "run.prefix_cache_mb": budget})
        model = adapted(foundation, None, budget_mb=budget)
        method = build_method("head_only", cfg, model, torch.device("cpu"))
        torch.manual_seed(0)
        state = method.init_client_state(client)
        for round_ in range(2):  # the second round reads every example from the cache
            update = method.client_update({}, state, client, round_=round_)
            state = update.state
        results[budget] = (update, method.evaluate({}, state, client))
        assert budget == 0 or len(model.prefix_cache.bare.rows) == 16 + 8  # training and test examples
    (off, off_scores), (on, on_scores) = results[0], results[64]
    assert on.metrics["loss"] == pytest.approx(off.metrics["loss"], rel=1e-4)
    for k, v in off.state.items():
        torch.testing.assert_close(on.state[k], v, rtol=1e-4, atol=1e-5)
    assert on_scores == pytest.approx(off_scores)


def test_a_row_does_not_depend_on_the_batch_that_first_computed_it(foundation):
    features, ids, mask = batch(foundation)
    order = torch.tensor([5, 0, 3])
    a = adapted(foundation, [3, 4, 5])
    a.activate("s")
    a(features, ids, mask)  # rows first computed inside the whole batch of 8
    got_a = a(features[order], ids[order], mask[order])
    b = adapted(foundation, [3, 4, 5])
    b.activate("s")
    got_b = b(features[order], ids[order], mask[order])  # the same rows, first seen in another batch
    assert torch.equal(got_a, got_b)


def test_a_weight_changed_in_place_below_the_site_is_not_served_from_the_cache(foundation):
    model = adapted(foundation, [3, 4, 5])
    inputs = batch(foundation)
    before = model(*inputs)
    with scaled_in_place(foundation.encoder.encoder.layer[1].output.dense.weight):
        after = model(*inputs)
        torch.testing.assert_close(after, uncached(model, *inputs), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before, atol=1e-3)


def test_nothing_is_cached_while_something_below_the_site_trains(foundation):
    model = adapted(foundation, [3, 4, 5])
    weight = foundation.encoder.encoder.layer[0].attention.self.query.weight
    weight.requires_grad_(True)
    try:
        model(*batch(foundation))
        assert not model.prefix_cache.prefix.rows
    finally:
        weight.requires_grad_(False)


def test_lora_and_prompt_passes_run_uncached_and_leave_the_cache_to_other_methods():
    backbone = build_backbone("foundation", image_size=128, max_text_len=16)  # LoRA and the prompt hook stay: not the shared one
    model = adapted(backbone, [3, 4, 5])
    inputs = batch(backbone)
    adapter_pass = model(*inputs)  # a warm cache: the rows below site 3
    cfg = tiny_config()
    lora, prompt = lora_view(model, cfg.peft), prompt_view(model, cfg.peft)
    lora.add_adapter("shared")
    prompt.add_adapter("shared")
    with torch.no_grad():
        for p in lora.adapter_parameters("shared"):
            p.normal_(std=0.2)  # LoRA's B starts at zero: make the set change the blocks
    calls, hooks = block_calls(backbone)
    try:
        for view in (lora, prompt):  # while a guest's set acts, every block runs, and exactly as uncached
            with view.active("shared"):
                got = view(*inputs)
                torch.testing.assert_close(got, uncached_run(model, lambda x: view(*x), inputs), rtol=1e-5, atol=1e-5)
            assert not torch.allclose(got, adapter_pass, atol=1e-3)
        assert calls == [2 * 2] * 6  # two views, cached and uncached pass each
        calls[:] = [0] * 6
        again = model(*inputs)  # no guest acts: the adapter pass is served from the rows again
        assert calls == [0, 0, 0, 0, 1, 1] and torch.equal(again, adapter_pass)
        with model.active():  # head_only's bare pass is cached whole
            torch.testing.assert_close(model(*inputs), uncached(model, *inputs), rtol=1e-5, atol=1e-5)
        assert len(model.prefix_cache.bare.rows) == len(inputs[0])
    finally:
        for h in hooks:
            h.remove()


def test_a_spent_budget_runs_uncached_and_a_negative_one_is_refused(foundation):
    model = adapted(foundation, [3, 4, 5], budget_mb=1)
    inputs = batch(foundation, n=40, seed=3)  # about 40 KiB per row: more than 1 MiB
    with pytest.warns(UserWarning, match="run.prefix_cache_mb .* is full"):
        got = model(*inputs)
    assert 0 < model.prefix_cache.used <= 2**20
    torch.testing.assert_close(got, uncached(model, *inputs), rtol=1e-5, atol=1e-5)
    cfg = tiny_config(**{"run.prefix_cache_mb": -1})
    with pytest.raises(ConfigError, match="run.prefix_cache_mb"):
        validate(cfg)


def test_feddat_trains_the_same_with_and_without_the_cache(foundation):
    client = build_client("alpha", raw_split(16, 0), raw_split(8, 100), foundation, 100, None)
    updates = {}
    for budget in (0, 64):
        cfg = tiny_config(**{"backbone.name": "foundation", "backbone.image_size": 128, "adapter.blocks": [3, 4, 5], "run.prefix_cache_mb": budget})
        model = adapted(foundation, [3, 4, 5], budget_mb=budget)
        method = build_method("feddat", cfg, model, torch.device("cpu"))
        torch.manual_seed(0)
        updates[budget] = method.client_update(method.init_shared(), method.init_client_state(client), client, round_=1)
    off, on = updates[0], updates[64]
    for key in off.metrics:
        assert on.metrics[key] == pytest.approx(off.metrics[key], rel=1e-4, abs=1e-6), key
    for k, v in {**off.shared, **off.state}.items():
        torch.testing.assert_close({**on.shared, **on.state}[k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("budget", [0, 256])
def test_a_run_builds_its_model_with_the_configured_cache(budget):
    from feddat.engines.flower.partitions import build_model

    cfg = tiny_config(**{"backbone.name": "foundation", "backbone.image_size": 128, "adapter.blocks": [2, 5], "run.prefix_cache_mb": budget})
    model = build_model(cfg, torch.device("cpu"))
    if budget:
        assert model.prefix_cache.depth == 3 and model.prefix_cache.budget == budget * 2**20
    else:
        assert model.prefix_cache is None


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run_with_the_cache(tmp_path):
    """The resumed process fills its cache from other batches than the killed one did; the rows,
    and so every number, must come out the same bits."""
    import sys

    from feddat.cli import main
    from test_resume import committed_round, kill_after, results

    def args(name):
        return [
            "run", "--backbone.max_text_len", "12", "--adapter.blocks", "2,4,5", "--data.train_per_client", "24",
            "--data.test_per_client", "6", "--data.cache_dir", str(tmp_path / "cache"), "--federation.rounds", "4",
            "--federation.eval_every", "1", "--federation.fraction", "0.6", "--train.batch_size", "6",
            "--run.methods", "feddat,fedavg", "--run.out_dir", str(tmp_path), "--run.name", name, "--run.threads", "1",
        ]  # fmt: skip

    assert main(args("straight")) == 0
    run_dir = tmp_path / "killed"
    kill_after([sys.executable, "-m", "feddat.cli", *args("killed")], run_dir, "feddat", 2)
    assert 2 <= committed_round(run_dir, "feddat") < 4
    assert main(["run", "--resume", str(run_dir)]) == 0
    expected, got = results(tmp_path / "straight"), results(run_dir)
    assert got[0] == expected[0]
    for method, tensors in expected[1].items():
        assert all(torch.equal(tensors[k], got[1][method][k]) for k in tensors), method
