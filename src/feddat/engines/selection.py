"""What the embedded engine keeps to score the test split once, on the selected round's model.

With a validation split (data.validation_per_client) and federation.select_round = best, the
round with the best validation score may lie rounds behind the last one. Its model, the shared
module and the private states of the evaluated clients, is written beside the method's round
checkpoints (`best-r00003.safetensors`) when that round is validated, and read back once at the
end for the test evaluation. On disk rather than in memory so that a resumed run selects, and
tests, exactly what an uninterrupted one does: a snapshot newer than the last committed round
belongs to a round that runs again and is discarded, like that round's client states.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from feddat.data.clients import ClientData, validation_view
from feddat.runtime import load_tensors_and_metadata, save_tensors

BEST = re.compile(r"^best-r(\d+)\.safetensors$")
Tensors = dict[str, torch.Tensor]


class ValidationViews(Sequence):
    """The clients with their validation questions in place of their test ones (data.clients.
    validation_view), one at a time: `clients` may be a lazy sequence."""

    def __init__(self, clients: Sequence[ClientData]):
        self.clients = clients

    def __len__(self) -> int:
        return len(self.clients)

    def __getitem__(self, i):  # type: ignore[override]
        return validation_view(self.clients[i])


@dataclass
class Snapshot:
    round: int
    score: float  # the mean global validation score that selected it
    shared: Tensors
    states: dict[str, Tensors]  # client name -> private state, for the evaluated clients


class BestSnapshots:
    """The best validated round's model of one method, in its checkpoint folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def rounds(self) -> list[tuple[int, Path]]:
        found = [(int(m.group(1)), p) for p in self.root.glob("best-r*.safetensors") if (m := BEST.match(p.name))]
        return sorted(found)

    def save(self, snapshot: Snapshot) -> None:
        names = list(snapshot.states)
        tensors = {f"shared.{k}": v for k, v in snapshot.shared.items()}
        for i, name in enumerate(names):  # by position: a client's name may hold any character
            tensors.update({f"client{i}.{k}": v for k, v in snapshot.states[name].items()})
        meta = {"round": str(snapshot.round), "score": repr(snapshot.score), "clients": json.dumps(names)}
        save_tensors(self.root / f"best-r{snapshot.round:05d}.safetensors", tensors, metadata=meta)

    def committed(self, round_: int) -> None:
        """After round `round_` committed: only the newest snapshot up to it is still needed."""
        kept = [r for r, _ in self.rounds() if r <= round_]
        for r, path in self.rounds():
            if kept and r < kept[-1]:
                path.unlink(missing_ok=True)

    def restore(self, round_: int) -> Snapshot | None:
        """On resume after committed round `round_`: the newest snapshot up to it (later ones,
        of a round that runs again, are deleted); None when there is none."""
        for r, path in self.rounds():
            if r > round_:
                path.unlink(missing_ok=True)
        return self.load()

    def load(self) -> Snapshot | None:
        rounds = self.rounds()
        if not rounds:
            return None
        tensors, meta = load_tensors_and_metadata(rounds[-1][1])
        names = json.loads(meta["clients"])
        part = lambda prefix: {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        return Snapshot(int(meta["round"]), float(meta["score"]), part("shared."), {name: part(f"client{i}.") for i, name in enumerate(names)})


def refuse_on_flower(cfg) -> None:
    """The Flower engine has no validation split yet: its nodes build their clients' data
    themselves (flower/partitions.py) and the server keeps no model of an earlier round. A run
    that asks for one stops here, before any daemon starts, rather than score the test split."""
    from feddat.config import ConfigError

    if cfg.data.validation_per_client or cfg.federation.select_round != "last":
        raise ConfigError(
            f"data.validation_per_client = {cfg.data.validation_per_client} and federation.select_round = {cfg.federation.select_round!r}: "
            "the Flower engine does not support a validation split or round selection; run with `feddat run` (embedded engine), "
            "or leave data.validation_per_client at 0 and federation.select_round at last"
        )
