"""Clients whose data are loaded only when needed, so a run's memory does not grow with the
number of clients (1,000 simulated clients with a few percent sampled per round)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

from feddat.data.clients import ClientData


class LazyClients(Sequence):
    """A read-only sequence of clients; item i is built by `load(i)` on access.

    The `keep` most recently used clients stay in memory (the engine touches a client a few
    times in a row: sampling, training, evaluation); everything else is dropped and rebuilt
    from its source, typically a feature cache on disk, the next time it is asked for.
    """

    def __init__(self, names: Sequence[str], load: Callable[[int], ClientData], keep: int = 2):
        self.names = list(names)
        self.load = load
        self.keep = keep
        self._recent: OrderedDict[int, ClientData] = OrderedDict()

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        if i in self._recent:
            self._recent.move_to_end(i)
            return self._recent[i]
        client = self.load(i)
        if client.name != self.names[i]:
            raise ValueError(f"lazy client {i} loaded as '{client.name}', expected '{self.names[i]}'")
        self._recent[i] = client
        while len(self._recent) > self.keep:
            self._recent.popitem(last=False)
        return client
