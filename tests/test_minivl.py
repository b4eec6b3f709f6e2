"""The embedded default backbone loads from installed packages with the network off."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch


def test_minivl_loads_offline_and_encodes():
    """In a fresh interpreter whose sockets refuse to connect, with the HF offline variables set."""
    code = """
import socket, os
def refuse(*a, **k): raise OSError("network disabled by test")
socket.socket.connect = refuse
socket.create_connection = refuse
os.environ["HF_HUB_OFFLINE"] = "1"
import numpy as np, torch
from feddat.backbones import build_backbone
from feddat.peft.model import AdaptedModel
bb = build_backbone("minivl", image_size=128, max_text_len=12)
feats = bb.encode_images(np.zeros((2, 128, 128, 3), np.uint8))
assert feats.shape == (2, 16, 384) and feats.dtype == torch.float16, feats.shape
ids, mask = bb.tokenize(["what colour is the circle?", "how many stars are there?"])
model = AdaptedModel(bb)
model.add_adapter("shared")
assert len(model.sites) == 6 and bb.hidden_size == 384
with model.active("shared"):
    pooled = model(feats, ids, mask)
assert pooled.shape == (2, 384) and torch.isfinite(pooled).all()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.fixture(scope="module")
def minivl():
    from feddat.backbones.minivl import MiniVL

    return MiniVL(max_text_len=16, projector="aligned")  # one alignment fit for the module


def test_pretrained_weights_are_really_pretrained(minivl):
    """The packaged MiniLM tells a paraphrase from an unrelated sentence (random weights cannot)."""
    bb = minivl
    enc = bb.encoder
    ids, mask = bb.tokenize(["a red circle on the left", "a red disc at the left side", "the stock market fell today"])
    with torch.no_grad():
        h = enc(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    sim = torch.nn.functional.cosine_similarity(pooled[0:1], pooled[1:])
    assert sim[0] > sim[1] + 0.3
    # and the image tower tells two different images apart
    feats = bb.encode_images(np.stack([np.zeros((128, 128, 3), np.uint8), np.full((128, 128, 3), 255, np.uint8)]))
    assert not torch.allclose(feats[0], feats[1])


def test_aligned_image_tokens_read_as_the_objects_words(minivl):
    """An object's cell token lies nearest MiniLM's embeddings of its own colour, shape and size
    words (scenes from a seed the projector was not fitted on); chance is 1/6, 1/6 and 1/2."""
    from feddat.data.synthetic import COLOURS, SHAPES, SIZES, STYLES, random_scene, render

    rng = np.random.default_rng(99)
    scenes = [random_scene(rng, 2, 3) for _ in range(60)]
    tokens = minivl.encode_images(np.stack([render(s, STYLES[i % 5], 128, rng) for i, s in enumerate(scenes)])).float()
    table = minivl.encoder.embeddings.word_embeddings.weight.detach()
    hits = {"colour": [], "shape": [], "size": []}
    for token_row, scene in zip(tokens, scenes):
        for obj in scene.objects:
            token = token_row[min(3, int(obj.y * 4)) * 4 + min(3, int(obj.x * 4))]
            for attr, words in (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES)):
                ids = minivl.tokenizer.convert_tokens_to_ids(list(words))
                hits[attr].append(words[int((table[ids] @ token).argmax())] == getattr(obj, attr))
    rate = {attr: sum(h) / len(h) for attr, h in hits.items()}
    assert rate["colour"] > 0.45 and rate["shape"] > 0.6 and rate["size"] > 0.65, rate


def test_projector_choice_keys_the_cache_and_bad_names_are_refused(minivl):
    from feddat.backbones.minivl import MiniVL

    with pytest.raises(ValueError, match="unknown minivl projector 'nope'"):
        MiniVL(projector="nope")
    random = MiniVL(max_text_len=16)  # the default
    assert random.cache_key() != minivl.cache_key()  # cached tokens of one never serve the other
    image = np.full((1, 128, 128, 3), 200, np.uint8)
    a, b = random.encode_images(image), minivl.encode_images(image)
    assert a.shape == b.shape == (1, 16, 384) and not torch.allclose(a.float(), b.float())
