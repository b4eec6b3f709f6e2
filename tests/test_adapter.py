"""Adapter maths (docs/design.md §3): placement on the block output, single and mean modes, state I/O."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from feddat.peft.adapter import AdapterSite, BottleneckAdapter
from feddat.peft.model import AdaptedModel


def test_bottleneck_shape_and_reference_init():
    torch.manual_seed(0)
    a = BottleneckAdapter(64, reduction_factor=16).requires_grad_(False)
    assert a.down.weight.shape == (4, 64) and a.up.weight.shape == (64, 4)
    assert float(a.down.bias.abs().sum()) == 0 and float(a.up.bias.abs().sum()) == 0
    assert 0.01 < float(a.up.weight.std()) < 0.03  # N(0, 0.02), W_up not zero (reference)
    z = torch.randn(2, 3, 64)
    expected = a.up.weight @ torch.relu(a.down.weight @ z[0, 0] + a.down.bias) + a.up.bias
    assert torch.allclose(a(z)[0, 0], expected, atol=1e-6)
    assert float(BottleneckAdapter(64, init="zero_up").up.weight.detach().abs().sum()) == 0


@pytest.mark.parametrize("tuple_output", [False, True])
def test_site_single_and_mean_modes(tuple_output):
    block = nn.Linear(8, 8)
    wrapped_block = (lambda x: (block(x), "extra")) if tuple_output else block

    class Block(nn.Module):
        def forward(self, x):
            return wrapped_block(x)

    site = AdapterSite(Block())
    site.adapters["x"] = BottleneckAdapter(8, reduction_factor=2)
    site.adapters["y"] = BottleneckAdapter(8, reduction_factor=2)
    x = torch.randn(3, 8)
    z = block(x)
    unwrap = (lambda out: out[0]) if tuple_output else (lambda out: out)
    assert torch.allclose(unwrap(site(x)), z)  # no active adapter: the bare block
    site.active = ("x",)
    assert torch.allclose(unwrap(site(x)), z + site.adapters["x"](z))
    site.active = ("x", "y")
    assert torch.allclose(unwrap(site(x)), z + 0.5 * (site.adapters["x"](z) + site.adapters["y"](z)))
    if tuple_output:
        assert site(x)[1] == "extra"


def test_adapted_model_state_roundtrip_and_checks(tiny_backbone):
    model = AdaptedModel(tiny_backbone, reduction_factor=4, blocks=[1])
    assert list(model.sites) == ["1"]
    model.add_adapter("shared")
    state = model.adapter_state("shared")
    assert set(state) == {"1.down.weight", "1.down.bias", "1.up.weight", "1.up.bias"}
    assert all(not p.requires_grad for p in tiny_backbone.parameters() if all(p is not q for q in model.adapter_parameters("shared")))
    new = {k: torch.randn_like(v) for k, v in state.items()}
    model.load_adapter("shared", new)
    assert all(torch.equal(model.adapter_state("shared")[k], new[k]) for k in new)
    with pytest.raises(ValueError, match="shape"):
        model.load_adapter("shared", {**new, "1.up.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="unknown"):
        model.load_adapter("shared", {**new, "7.up.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="out of range"):
        AdaptedModel(tiny_backbone, blocks=[5])


def test_backbone_stays_frozen_and_in_eval_mode(tiny_backbone):
    model = AdaptedModel(tiny_backbone, reduction_factor=4)
    model.add_adapter("shared")
    model.train()
    assert not tiny_backbone.training
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.adapter_parameters("shared")}


def test_branched_paths_share_the_lower_sites(tiny_backbone):
    """active(..., below, branch) and routed(..., branch) give the same per-path outputs as
    running each path alone; the branching path's copy carries no gradient below the branch."""
    model = AdaptedModel(tiny_backbone, reduction_factor=4)
    for name in ("s", "t"):
        model.add_adapter(name)
        with torch.no_grad():
            for p in model.adapter_parameters(name):
                p.normal_(std=0.3)
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).numpy()
    features = tiny_backbone.encode_images(images)
    ids, mask = torch.randint(0, 100, (2, 6)), torch.ones(2, 6, dtype=torch.long)

    def run():
        torch.manual_seed(3)  # ViLT samples patches from the global RNG
        return model(features, ids, mask)

    with model.active("s"):
        student = run()
    with model.active("t", below=("s",), branch=1):
        teacher = run()
    with model.active("t"):
        assert not torch.allclose(run(), teacher)  # the branch really changed the teacher's path
    with model.routed(("s",), ("t",), share_prefix=True, branch=1):
        both = run()
    torch.testing.assert_close(both, torch.cat([student, teacher]), rtol=1e-5, atol=1e-6)
    both[2:].sum().backward()  # the teacher's output alone
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.sites["0"].adapters["s"].parameters())
    with pytest.raises(ValueError, match="share_prefix"):
        with model.routed(("s",), ("t",), branch=1):
            pass
    with pytest.raises(ValueError, match="out of range"):
        model.activate("t", below=("s",), branch=5)
