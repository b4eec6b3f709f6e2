"""What a run shows while it trains: tqdm bars on a terminal, throttled lines in logs and CI.

`run.progress` picks the display: "auto" (bars when the progress stream is a terminal, lines
otherwise), "bars", "lines" or "off". Bars: one for the rounds of a method, one for the clients
(or, for `centralised`, the steps) of the current round, one for a client's local steps, each
with its rate and ETA. Lines: the engine's per-round line plus, inside a round longer than 30 s,
a "k/n clients trained" line at most every 30 s (`Ticker`), so logs stay short.

The engine makes a display current (`use`); code deep inside a method (`Method.batches`) asks
for `current()` instead of having a display passed down through every call.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from typing import Callable, Iterator, TextIO

Log = Callable[[str], None]
Advance = Callable[[], None]
Counter = Callable[[int, int, str], None]  # (done, total, unit), as the engine's ticker is called

MODES = ("auto", "bars", "lines", "off")


class Ticker:
    """Progress lines inside a long round, at most one per `every` seconds, so a round of many
    clients (or one centralised pass over all their data) does not sit silent for minutes."""

    def __init__(self, log: Log, prefix: str, every: float = 30.0):
        self.log, self.prefix, self.every = log, prefix, every
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, total: int, unit: str) -> None:
        now = time.perf_counter()
        if done < total and now - self.last >= self.every:
            self.last = now
            self.log(f"{self.prefix} {done}/{total} {unit}  {now - self.start:6.1f}s")

    def close(self) -> None:
        pass


class Lines:
    """The display for logs and CI: the engine's own lines, a throttled ticker inside rounds."""

    kind = "lines"

    def __init__(self, log: Log, ticker_every: float = 30.0):
        self._log, self.ticker_every = log, ticker_every

    def log(self, text: str) -> None:
        self._log(text)

    @contextlib.contextmanager
    def rounds(self, total: int, done: int, desc: str) -> Iterator[Advance]:
        yield lambda: None  # every round already ends with its own log line

    def counter(self, prefix: str) -> Counter:
        return Ticker(self.log, prefix, self.ticker_every)

    @contextlib.contextmanager
    def steps(self, total: int, desc: str) -> Iterator[Advance]:
        yield lambda: None  # a line per local step would drown the log


class Off(Lines):
    """No progress at all beyond what the engine logs per round."""

    kind = "off"

    def counter(self, prefix: str) -> Counter:
        return Silent()


class Silent:
    """A counter that shows nothing."""

    def __call__(self, done: int, total: int, unit: str) -> None:
        pass

    def close(self) -> None:
        pass


class Bars(Lines):
    """tqdm bars with rates and ETA on `stream` (a terminal); log lines are written above them."""

    kind = "bars"
    mininterval = 0.1  # seconds between redraws (tqdm's default): a fast loop costs no terminal I/O

    def __init__(self, log: Log, stream: TextIO | None = None):
        super().__init__(log)
        self.stream = stream if stream is not None else sys.stderr

    def bar(self, total: int, desc: str, unit: str, done: int = 0, leave: bool = False):
        from tqdm.auto import tqdm

        # A terminal that reports no width (a fresh pty, some containers) would get bars of width 0.
        sized = terminal_columns(self.stream) > 0
        return tqdm(total=total, initial=done, desc=desc, unit=unit, leave=leave, file=self.stream, dynamic_ncols=sized, ncols=None if sized else 100, smoothing=0.1, mininterval=self.mininterval)

    def log(self, text: str) -> None:
        from tqdm import tqdm

        # Clear the bars, write the line, redraw them: the log stays readable above the bars.
        with tqdm.external_write_mode(file=self.stream):
            self._log(text)

    @contextlib.contextmanager
    def rounds(self, total: int, done: int, desc: str) -> Iterator[Advance]:
        with self.bar(total, desc, "round", done, leave=True) as bar:
            yield lambda: bar.update(1)

    def counter(self, prefix: str) -> Counter:
        return RoundCounter(self)

    @contextlib.contextmanager
    def steps(self, total: int, desc: str) -> Iterator[Advance]:
        with self.bar(total, desc, "step") as bar:
            yield lambda: bar.update(1)


class RoundCounter:
    """The bar of one round's inner progress (clients trained, or centralised steps), created at
    its first report, when its total and unit are known."""

    def __init__(self, bars: Bars):
        self.bars, self.bar = bars, None

    def __call__(self, done: int, total: int, unit: str) -> None:
        if self.bar is None:
            self.bar = self.bars.bar(total, "  round", unit.split()[0].removesuffix("s"))  # "clients trained" -> client/s
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def display(mode: str, log: Log, stream: TextIO | None = None) -> Lines:
    """The display `run.progress` asks for; "auto" shows bars only when `stream` (default
    stderr) is a terminal, so CI logs and redirected output get plain lines."""
    if mode not in MODES:
        raise ValueError(f"run.progress = '{mode}' is not one of: {', '.join(MODES)}")
    stream = stream if stream is not None else sys.stderr
    if mode == "bars" or (mode == "auto" and is_terminal(stream)):
        return Bars(log, stream)
    return Off(log) if mode == "off" else Lines(log)


def terminal_columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream (pytest's capture)
        return False


_CURRENT: contextvars.ContextVar[Lines] = contextvars.ContextVar("feddat_progress", default=Off(lambda text: None))


def current() -> Lines:
    """The display of the run in progress (silent outside a run)."""
    return _CURRENT.get()


@contextlib.contextmanager
def use(shown: Lines) -> Iterator[Lines]:
    token = _CURRENT.set(shown)
    try:
        yield shown
    finally:
        _CURRENT.reset(token)
