"""The embedded default backbone loads from installed packages with the network off."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
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


def test_pretrained_weights_are_really_pretrained():
    """The packaged MiniLM tells a paraphrase from an unrelated sentence (random weights cannot)."""
    from feddat.backbones.minivl import MiniVL

    bb = MiniVL(max_text_len=16)
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
