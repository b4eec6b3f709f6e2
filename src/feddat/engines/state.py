"""Per-client private state on disk, one safetensors file per client, loaded on demand,
so memory does not grow with the number of clients."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from feddat.runtime import load_tensors, save_tensors


class ClientStateStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, client: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", client)
        return self.root / f"{safe}.safetensors"

    def load(self, client: str) -> dict[str, torch.Tensor] | None:
        path = self.path(client)
        return load_tensors(path) if path.is_file() else None

    def save(self, client: str, state: dict[str, torch.Tensor]) -> None:
        save_tensors(self.path(client), state)
