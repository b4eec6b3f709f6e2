"""What to do with a bad record (corrupt or missing image, malformed line): stop with a clear
error naming the file and record (default), or skip it and count it (`data.on_bad_record`).

Loaders report every per-record fault through `current().bad(err)`; a missing annotation file
or an empty client always stops the run, whatever the policy.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from feddat.data.types import DataError

POLICIES = ("error", "skip")


@dataclass
class Faults:
    policy: str = "error"
    skipped: list[str] = field(default_factory=list)

    def bad(self, err: DataError) -> None:
        """Raise `err` under the error policy; otherwise remember it (the caller drops the record)."""
        if self.policy == "error":
            raise err
        self.skipped.append(str(err))


_current = Faults()


def current() -> Faults:
    return _current


@contextmanager
def policy(name: str) -> Iterator[Faults]:
    global _current
    if name not in POLICIES:
        raise ValueError(f"data.on_bad_record = '{name}' is not one of: {', '.join(POLICIES)}")
    previous, _current = _current, Faults(name)
    try:
        yield _current
    finally:
        _current = previous


@contextmanager
def applied(name: str, log: Callable[[str], None] = print) -> Iterator[Faults]:
    """`policy(name)` around reading a benchmark, then one counted warning that names the first
    few skipped records (every command that reads data uses this, so `skip` means the same)."""
    with policy(name) as found:
        yield found
    if found.skipped:
        shown = "\n    ".join(found.skipped[:5])
        log(f"warning: skipped {len(found.skipped)} bad record(s) (data.on_bad_record = skip), e.g.\n    {shown}")
