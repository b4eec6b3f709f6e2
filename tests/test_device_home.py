"""Everything that crosses the client/server boundary lives on the CPU (runtime.HOME), whatever
device the model computes on; and no method mixes devices anywhere on the way.

This machine has no GPU, so the model is put on PyTorch's `meta` device instead: meta tensors
carry shapes, dtypes and a device but no data, and every operator checks its inputs' devices
exactly as it does on CUDA ("Tensor on device cpu is not on the expected device meta!"). The
only thing a meta tensor cannot do is hand data back; `MetaReadsAsZeros` makes the two ways a
client does that (a scalar read for the loss log, a copy to the CPU) read zeros. So the
numbers are meaningless here, but every device mix that would break a CUDA run breaks this
test: a server optimiser adding a CPU A_s to a device update, a SCAFFOLD correction left on
the CPU, an update validated or clipped across devices, a client state handed back on the
device. The real CUDA run is `make gpu-check`.

The backbone is the packaged minivl (MiniLM), whose forward pass has no data-dependent
operators (ViLT's patch sampling has, so it cannot run on meta).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import tiny_config
from feddat.algorithms import METHODS, build_method
from feddat.data.clients import RawSplit, build_client
from feddat.peft.model import AdaptedModel
from feddat.runtime import HOME

aten = torch.ops.aten
DEVICE = torch.device("meta")
SIDE = 64


class MetaReadsAsZeros(TorchDispatchMode):
    """A meta tensor read back as data (`float(loss)`, `.cpu()`) gives zeros; everything else,
    device checks included, runs as PyTorch runs it."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if source is not None and source.device.type == "meta":
            if func is aten._local_scalar_dense.default:
                return False if source.dtype == torch.bool else 0
            if func is aten._to_copy.default and torch.device(kwargs.get("device") or "meta").type == "cpu":
                return torch.zeros(source.shape, dtype=kwargs.get("dtype") or source.dtype)
        return func(*args, **kwargs)


def raw(n: int, seed: int, answers: tuple[str, ...]) -> RawSplit:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)
    return RawSplit(images, [f"what is object {i}?" for i in range(n)], [answers[i % len(answers)] for i in range(n)], key=f"home-{n}-{seed}")


@pytest.fixture(scope="module")
def model_and_clients():
    """Clients encoded on the CPU (as the feature cache holds them), then the model moved to meta."""
    from feddat.backbones import build_backbone

    backbone = build_backbone("minivl", image_size=SIDE, max_text_len=12)
    specs = [("alpha", ("red", "blue", "green")), ("beta", ("one", "two"))]
    clients = [build_client(name, raw(16, i, a), raw(8, 100 + i, a), backbone, 100, None) for i, (name, a) in enumerate(specs)]
    backbone.to(DEVICE)
    return AdaptedModel(backbone, reduction_factor=16, blocks=[4, 5]), clients


def off_home(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [f"{k} on {v.device}" for k, v in tensors.items() if v.device != HOME]


def config(name: str):
    cfg = tiny_config(**{"train.eval_batch_size": 8, "peft.prompt_length": 2})
    cfg.federation.max_update_norm = 1e6  # validation computes the distance between update and A_s
    if name in ("fedavg", "feddat"):
        cfg.privacy.clip_norm = 1.0  # client-side clipping and server-side noise (DP-FedAvg)
    return cfg


@pytest.mark.parametrize("name", list(METHODS))
def test_every_tensor_crossing_the_boundary_is_on_the_cpu(model_and_clients, name):
    model, clients = model_and_clients
    assert next(model.backbone.parameters()).device == DEVICE
    with MetaReadsAsZeros():  # BitFit and full finetuning copy the pretrained weights when built
        method = build_method(name, config(name), model, DEVICE)
        shared = method.init_shared()
        states = {c.name: method.init_client_state(c) for c in clients}
        assert not off_home(shared) and not any(off_home(s) for s in states.values())
        for round_ in (1, 2):  # round 2 starts from server state and client state of round 1
            if method.pooled:
                shared, states, _ = method.pooled_update(shared, states, clients, round_)
            else:
                updates = [method.client_side(shared, method.client_update(shared, states[c.name], c, round_)) for c in clients]
                for u in updates:
                    assert not off_home(u.shared), f"{name}: update of {u.client}: {off_home(u.shared)}"
                    assert not off_home(u.state), f"{name}: state of {u.client}: {off_home(u.state)}"
                states = {u.client: u.state for u in updates}
                shared, _ = method.server_round(shared, updates, round_)
            assert not off_home(shared), f"{name}: A_s after round {round_}: {off_home(shared)}"
            assert not off_home(method.server_state()), f"{name}: server state: {off_home(method.server_state())}"
            assert not any(off_home(s) for s in states.values()), f"{name}: client states after round {round_}"
        scores = method.evaluate(shared, states[clients[0].name], clients[0])
    assert "global" in scores
