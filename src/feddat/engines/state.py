"""What the embedded engine keeps on disk: per-client private state and round checkpoints.

Client state is one safetensors file per client and round it was written in
(`<client>.r0003.safetensors`), loaded on demand so memory does not grow with the number of
clients. Versions newer than the last committed checkpoint are discarded on resume, so a run
killed in the middle of a round continues from exactly the state that round started with.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from feddat.runtime import is_int, load_tensors, read_json, save_tensors, write_json

VERSION = re.compile(r"\.r(\d+)\.safetensors$")


class ClientStateStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._written: dict[str, int] = {}  # client -> round last written, for pruning

    def _stem(self, client: str) -> str:
        """The client's file name stem: its name where that is a safe file name, else the name
        made safe plus a digest of it, so that two names never share a file ('north east' and
        'north_east', or two names in another script)."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", client)
        if safe == client and not client.startswith("."):
            return client
        return f"{safe}-{hashlib.sha256(client.encode()).hexdigest()[:12]}"

    def path(self, client: str, round_: int | None = None) -> Path:
        suffix = "" if round_ is None else f".r{round_:05d}"
        return self.root / f"{self._stem(client)}{suffix}.safetensors"

    def versions(self, client: str) -> list[tuple[int, Path]]:
        """(round, path) of every stored version, oldest first; -1 for an unversioned file."""
        stem = self._stem(client)
        found = [(int(m.group(1)), p) for p in self.root.glob(f"{glob_escape(stem)}.r*.safetensors") if (m := VERSION.search(p.name)) and p.name[: -len(m.group(0))] == stem]
        plain = self.path(client)
        return ([(-1, plain)] if plain.is_file() else []) + sorted(found)

    def load(self, client: str) -> dict[str, torch.Tensor] | None:
        versions = self.versions(client)
        if not versions:
            return None
        return self.load_version(client, versions[-1][1])

    def load_version(self, client: str, path: Path) -> dict[str, torch.Tensor]:
        """One stored version (a path from `versions`)."""
        try:
            return load_tensors(path)  # safetensors: data only, nothing in the file is executed
        except Exception as err:
            raise ValueError(f"private state of client '{client}' ({path}) is not a readable safetensors file: {err}") from err

    def save(self, client: str, state: dict[str, torch.Tensor], round_: int | None = None) -> None:
        save_tensors(self.path(client, round_), state)
        if round_ is not None:
            self._written[client] = round_

    def revert(self, client: str, round_: int) -> bool:
        """Take back the version `client` wrote in `round_`, whose update the server rejected: the
        client keeps the state it had before the round (docs/guide/privacy-robustness.md, "Bad updates"). Idempotent;
        whether there was one to take back."""
        path = self.path(client, round_)
        if self._written.get(client) == round_:
            del self._written[client]  # nothing of this round to prune against
        if not path.is_file():
            return False
        path.unlink()
        return True

    def prune(self) -> None:
        """After a checkpoint commits: drop each written client's versions older than its newest."""
        for client, newest in self._written.items():
            for round_, path in self.versions(client):
                if round_ < newest:
                    path.unlink(missing_ok=True)
        self._written.clear()

    def compact(self) -> None:
        """Keep only each client's newest version (a kill between commit and prune leaves older ones)."""
        newest: dict[str, tuple[int, Path]] = {}
        for path in sorted(self.root.glob("*.r*.safetensors")):
            m = VERSION.search(path.name)
            if not m:
                continue
            stem, round_ = path.name[: -len(m.group(0))], int(m.group(1))
            if stem in newest and newest[stem][0] < round_:
                newest[stem][1].unlink(missing_ok=True)
            elif stem in newest:
                path.unlink(missing_ok=True)
                continue
            newest[stem] = (round_, path)

    def discard_after(self, round_: int, client: str | None = None) -> int:
        """Delete versions written after committed round `round_` (a crashed round's work): of
        every client in the store, or of `client` alone (a Flower node: other nodes on the same
        host may share the state folder and be a round ahead)."""
        if client is not None:
            stale = [path for r, path in self.versions(client) if r > round_]
        else:
            stale = [path for path in self.root.glob("*.r*.safetensors") if (m := VERSION.search(path.name)) and int(m.group(1)) > round_]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


@dataclass
class Progress:
    """A committed checkpoint: the last finished round and what is needed to continue."""

    round: int
    shared: dict[str, torch.Tensor]
    server: dict[str, torch.Tensor]
    counters: dict = field(default_factory=dict)  # times and step counts so far, for the summary


class Checkpoint:
    """Round checkpoints of one method. progress.json is the commit point: it is written (atomically)
    only after the round's tensors are on disk, and names the file holding them.

    `config` (rundir.config_fingerprint) is recorded with every commit; a checkpoint continues
    only under the configuration that wrote it (one written before fingerprints: any)."""

    def __init__(self, root: str | Path, config: str | None = None):
        self.root, self.config = Path(root), config

    def save(self, progress: Progress) -> None:
        name = f"round-{progress.round:05d}.safetensors"
        tensors = {f"shared.{k}": v for k, v in progress.shared.items()} | {f"server.{k}": v for k, v in progress.server.items()}
        save_tensors(self.root / name, tensors, metadata={"round": str(progress.round)})
        fingerprint = {"config_sha256": self.config} if self.config else {}
        write_json(self.root / "progress.json", {"round": progress.round, "tensors": name, "counters": progress.counters, **fingerprint})
        for old in self.root.glob("round-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def committed(self) -> dict | None:
        """progress.json, checked (None when nothing was committed yet)."""
        path = self.root / "progress.json"
        if not path.is_file():
            return None
        info = read_json(path)
        round_ = info.get("round") if isinstance(info, dict) else None
        if not is_int(round_) or round_ < 1 or not isinstance(info.get("tensors"), str) or not isinstance(info.get("counters", {}), dict):
            raise ValueError(f"{path} does not hold a committed round (a round >= 1, a tensors file name, counters); was it edited? The run cannot be resumed from it")
        stored = info.get("config_sha256")
        if self.config and stored is not None and stored != self.config:
            raise ValueError(
                f"{path} was committed under another configuration than the run's config.toml holds now (was config.toml edited after the run started?); "
                "resuming would mix two experiments: restore config.toml, or start a new run"
            )
        return info

    def load(self) -> Progress | None:
        info = self.committed()
        if info is None:
            return None
        try:
            tensors = load_tensors(self.root / info["tensors"])
        except (OSError, ValueError) as err:
            raise ValueError(f"checkpoint {self.root} is unreadable ({err}); it cannot be resumed") from err
        split = lambda prefix: {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        return Progress(info["round"], split("shared."), split("server."), info.get("counters", {}))


def checked_client_state(method, client, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """`state`, read from `path`, if it fits what `method` keeps for `client`: every tensor a fresh
    state has, with its shape, and nothing that is not a finite float tensor (a method may add
    tensors after its first round, e.g. MOON's previous adapter). Else a ValueError naming both."""
    from feddat.backbones.state import check_state

    with torch.random.fork_rng():  # building the reference draws from (and seeds) torch's RNG
        expected = method.init_client_state(client)
    problem = check_state({k: v for k, v in state.items() if k in expected}, expected)
    problem = problem or next((f"'{k}' is not a finite float tensor" for k, v in state.items() if k not in expected and not (v.is_floating_point() and torch.isfinite(v).all())), "")
    if problem:
        raise ValueError(f"private state of client '{client.name}' ({path}) does not fit method '{method.name}' as configured: {problem} (was the file, or the run's config.toml, edited?)")
    return state
