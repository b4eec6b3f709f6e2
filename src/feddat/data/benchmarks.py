"""Named heterogeneous benchmarks: which clients exist and how each one's data are made.

The synthetic twins of DESIGN §6 (generated offline, deterministically):
- domain:   one client per rendering style (image domain), each with its own question mix;
- function: one client per question kind (reasoning skill), images in every style.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from feddat.data.synthetic import QUESTION_KINDS, STYLES

GENERATOR_VERSION = 1  # bump when synthetic.py changes what it draws: invalidates feature caches


@dataclass(frozen=True)
class ClientSpec:
    name: str
    style_weights: dict[str, float] = field(hash=False)
    kind_weights: dict[str, float] = field(hash=False)


def _one_hot(keys: tuple[str, ...], hot: str) -> dict[str, float]:
    return {k: float(k == hot) for k in keys}


def _uniform(keys: tuple[str, ...]) -> dict[str, float]:
    return {k: 1.0 for k in keys}


def _domain() -> list[ClientSpec]:
    # Each domain leans on two question kinds (as VizWiz, GQA, ... differ in question style too).
    clients = []
    for i, style in enumerate(STYLES):
        main = QUESTION_KINDS[i % len(QUESTION_KINDS)]
        second = QUESTION_KINDS[(i + 2) % len(QUESTION_KINDS)]
        mix = {k: 0.1 for k in QUESTION_KINDS}
        mix[main], mix[second] = 0.45, 0.25
        clients.append(ClientSpec(style, _one_hot(STYLES, style), mix))
    return clients


def _function() -> list[ClientSpec]:
    return [ClientSpec(kind, _uniform(STYLES), _one_hot(QUESTION_KINDS, kind)) for kind in QUESTION_KINDS]


BENCHMARKS = {"domain": _domain, "function": _function}


def client_specs(benchmark: str) -> list[ClientSpec]:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark '{benchmark}': choose one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[benchmark]()
