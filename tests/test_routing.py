"""Routing lives in the adapted model's one loop over the blocks (peft/model.py): every subset
of adapted blocks, contiguous or not, runs a routed (fanned-out) pass as the paths run alone,
and FedDAT's fused schedule equals the reference on each; each backbone split into embed,
blocks and pool is its Hugging Face model's own forward, bit for bit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import TINY_IMAGE, raw_split, tiny_config
from feddat.algorithms import build_method
from feddat.backbones import build_backbone
from feddat.data.clients import build_client
from feddat.peft.model import AdaptedModel

BLOCKS = 3  # enough for a block without an adapter between two with one: {0, 2}
SUBSETS = [list(s) for n in range(1, BLOCKS + 1) for s in itertools.combinations(range(BLOCKS), n)]
# (adapter.blocks = [] means every block, so the empty subset is the full one in configuration.)


@pytest.fixture(scope="module")
def vilt3_dir(tmp_path_factory):
    """conftest's tiny ViLT with a third block."""
    from feddat.backbones.vilt import save_random_vilt

    return save_random_vilt(tmp_path_factory.mktemp("tiny-vilt3"), blocks=BLOCKS, image_size=TINY_IMAGE)


def vilt3(path):
    return build_backbone("vilt", path, image_size=TINY_IMAGE, max_text_len=12)


@pytest.fixture(scope="module")
def client(vilt3_dir):
    return build_client("alpha", raw_split(16, 0), raw_split(8, 100), vilt3(vilt3_dir), 100, None)


def inputs(backbone):
    images = np.random.default_rng(0).integers(0, 256, (3, TINY_IMAGE, TINY_IMAGE, 3), dtype=np.uint8)
    ids, mask = backbone.tokenize(["what colour is it?", "how many?", "is there a large red circle?"])
    return backbone.encode_images(images), ids, mask  # question padding: a real attention mask


@pytest.mark.parametrize("blocks", SUBSETS, ids=lambda b: "blocks" + "".join(map(str, b)))
def test_a_routed_pass_is_the_paths_run_alone_at_every_branch(vilt3_dir, blocks):
    """Same outputs as running each path alone, and the same gradients: each adapter set gets
    its own path's, the branching path none below the branch."""
    model = AdaptedModel(vilt3(vilt3_dir), reduction_factor=4, blocks=blocks)
    for name in ("s", "t"):
        model.add_adapter(name)
        with torch.no_grad():
            for p in model.adapter_parameters(name):
                p.normal_(std=0.3)
    batch = inputs(model.backbone)
    weights = torch.randn(2, 3, model.hidden_size, generator=torch.Generator().manual_seed(1))

    def run():
        torch.manual_seed(3)  # ViLT samples image patches from the global RNG
        return model(*batch)

    def grads(loss):
        params = model.adapter_parameters("s") + model.adapter_parameters("t")
        return torch.autograd.grad(loss, params, allow_unused=True)

    for branch in range(len(blocks)):
        path = {"below": ("s",), "branch": branch} if branch else {}
        with model.active("s"):
            student = run()
        g_student = grads((student * weights[0]).sum())
        with model.active("t", **path):
            teacher = run()
        g_teacher = grads((teacher * weights[1]).sum())
        with model.routed(("s",), ("t",), share_prefix=True, branch=branch):
            both = run()
        torch.testing.assert_close(both, torch.cat([student, teacher]), rtol=1e-5, atol=1e-6)
        g_both = grads((both * weights.flatten(0, 1)).sum())
        n_s = len(model.adapter_parameters("s"))
        # s: the student's gradient alone (the teacher's copy of its stream is detached); t: the teacher's
        expected = list(g_student[:n_s]) + list(g_teacher[n_s:])
        for got, want in zip(g_both, expected):
            if want is None:
                assert got is None or float(got.abs().sum()) == 0
            else:
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("blocks", SUBSETS, ids=lambda b: "blocks" + "".join(map(str, b)))
def test_fused_feddat_equals_the_reference_on_every_block_subset(vilt3_dir, client, blocks):
    """`--adapter.blocks 0,2` once failed under the fused schedule: the block without an adapter
    above the first site saw the fanned-out batch with the narrow attention mask."""
    updates = {}
    for schedule in ("reference", "fused"):
        cfg = tiny_config(**{"feddat.schedule": schedule, "adapter.blocks": blocks})
        model = AdaptedModel.from_config(vilt3(vilt3_dir), cfg.adapter)
        method = build_method("feddat", cfg, model, torch.device("cpu"))
        updates[schedule] = method.client_update(method.init_shared(), method.init_client_state(client), client, round_=1)
    ref, fused = updates["reference"], updates["fused"]
    for key in ref.metrics:
        assert fused.metrics[key] == pytest.approx(ref.metrics[key], rel=1e-4, abs=1e-6), key
    for k, v in {**ref.shared, **ref.state}.items():
        torch.testing.assert_close({**fused.shared, **fused.state}[k], v, rtol=1e-4, atol=1e-6)


def test_the_split_vilt_is_vilt_model_forward(tiny_backbone):
    features, ids, mask = inputs(tiny_backbone)
    pixels = features.float() / 127.5 - 1.0
    torch.manual_seed(5)
    theirs = tiny_backbone.vilt(input_ids=ids, attention_mask=mask, pixel_values=pixels, pixel_mask=torch.ones(3, TINY_IMAGE, TINY_IMAGE, dtype=torch.long)).pooler_output
    torch.manual_seed(5)
    # Ours drops the trailing padding columns (backbones.base.trim_padding): the same to float rounding.
    assert not mask[:, -1].any()
    torch.testing.assert_close(tiny_backbone(features, ids, mask), theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["minivl", "foundation"])
def test_the_split_bert_backbones_are_bert_model_forward(name):
    from feddat.backbones.base import mean_pool
    from feddat.backbones.foundation import fuse

    backbone = build_backbone(name, image_size=128, max_text_len=16)  # both questions padded
    images = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    features = backbone.encode_images(images)
    ids, mask = backbone.tokenize(["what colour is it?", "is there a large red circle on the left?"])
    if name == "foundation":
        hidden, joint = fuse(backbone.encoder, ids, mask, features)  # BertModel's own forward
        theirs = hidden[:, 0] if backbone.pooling == "cls" else mean_pool(hidden, joint)
    else:
        text = backbone.encoder.embeddings.word_embeddings(ids)
        n = features.shape[1]
        joint = torch.cat([mask, torch.ones(2, n, dtype=mask.dtype)], 1)
        types = torch.cat([torch.zeros_like(ids), torch.ones(2, n, dtype=ids.dtype)], 1)
        hidden = backbone.encoder(inputs_embeds=torch.cat([text, features.to(text.dtype)], 1), attention_mask=joint, token_type_ids=types).last_hidden_state
        theirs = mean_pool(hidden, joint)
    if name == "minivl":  # its image tokens are numbered after the padded text: nothing is trimmed
        assert torch.equal(backbone(features, ids, mask), theirs)
    else:  # the trailing padding columns are dropped (backbones.base.trim_padding): the same to float rounding
        assert not mask[:, -1].any()
        torch.testing.assert_close(backbone(features, ids, mask), theirs, rtol=1e-5, atol=1e-6)
