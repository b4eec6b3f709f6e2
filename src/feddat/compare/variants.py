"""What a comparison compares: variants (a method plus configuration overrides under a label),
the FedDAT ablation presets and the groups of methods, each variant's run configuration, and
compute-matched variants (`--matched`): a baseline given as many local epochs as make its compute
per round equal the reference's (FedDAT spends more backbone passes per minibatch than FedAvg).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from feddat import config as config_mod
from feddat.config import Config, ConfigError


@dataclass(frozen=True)
class Variant:
    label: str
    method: str
    overrides: tuple[tuple[str, str], ...] = ()

    @property
    def spec(self) -> str:
        """How --methods names this variant: its preset or method name, else label=method:key=value..."""
        if PRESETS.get(self.label) == self or (self.label == self.method and not self.overrides):
            return self.label
        return f"{self.label}={self.method}" + "".join(f":{k}={v}" for k, v in self.overrides)


PRESETS = {
    "feddat_nokd": Variant("feddat_nokd", "feddat", (("feddat.kd", "none"),)),
    "feddat_oneway": Variant("feddat_oneway", "feddat", (("feddat.kd", "one_way"),)),
    "feddat_clientonly": Variant("feddat_clientonly", "feddat", (("feddat.teacher", "client_only"),)),
    "feddat_frozenonly": Variant("feddat_frozenonly", "feddat", (("feddat.teacher", "frozen_only"),)),
}
GROUPS = {  # names that expand to several methods (none equals a method's name)
    "feddat_family": ["feddat", "feddat_nokd", "feddat_oneway", "feddat_clientonly", "feddat_frozenonly", "feddat_lora"],
    "peft_kinds": ["fedavg", "fedavg_full", "fedavg_lora", "fedavg_prompt", "fedavg_bitfit"],
    "adapter_fl": ["fedprox", "scaffold", "feddyn", "moon", "ditto", "fedrep", "head_only", "local", "centralised"],
    "server_opt": ["fedavgm", "fedadam"],
}
GROUPS["all"] = [m for g in ("feddat_family", "peft_kinds", "adapter_fl", "server_opt") for m in GROUPS[g]]


# Overrides may change how a method trains, never the backbone or data that all runs share.
SHAREABLE = ("run.", "train.", "federation.", "feddat.", "peft.", "baselines.", "server.")
# ... nor what compare sets per run (seed, method), where the runs go, or what the shared
# workspace (one backbone, one set of clients, on one device) fixes for every run.
NOT_OVERRIDABLE = ("run.seed", "run.methods", "run.out_dir", "run.name", "run.device", "run.threads", "run.prefix_cache_mb")

# A label names a folder (runs/<label>) and a table row: no path separators, no '|', not hidden.
LABEL = re.compile(r"[A-Za-z0-9_@+-][A-Za-z0-9_.@+-]*")


def check_label(label: str, where: str) -> str:
    if not LABEL.fullmatch(label):
        raise ConfigError(
            f"{where}: label '{label}' is not allowed; a label is letters, digits and _ . @ + - "
            "(not starting with '.'), as it names a folder and a table row"
        )
    return label


def parse_variant(item: str) -> list[Variant]:
    from feddat.algorithms import METHODS

    item = item.strip()
    if item in GROUPS:
        return [v for name in GROUPS[item] for v in parse_variant(name)]
    if item in PRESETS:
        return [PRESETS[item]]
    if item in METHODS:
        return [Variant(item, item)]
    if "=" in item.split(":")[0]:
        label, _, rest = item.partition("=")
        method, *pairs = rest.split(":")
        if method not in METHODS:
            raise ConfigError(f"compare: '{item}' names unknown method '{method}'; methods: {', '.join(METHODS)}")
        check_label(label.strip(), f"compare: '{item}'")
        overrides = []
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq or not key.startswith(SHAREABLE):
                raise ConfigError(f"compare: override '{pair}' in '{item}' must be key=value with a key under {', '.join(SHAREABLE)}")
            if key in NOT_OVERRIDABLE:
                raise ConfigError(f"compare: override '{pair}' in '{item}': {key} is set by compare itself (--seeds, the method, --out, the shared backbone and device), not per variant")
            overrides.append((key, value))
        return [Variant(label.strip(), method, tuple(overrides))]
    choices = [*GROUPS, *PRESETS, *METHODS]
    raise ConfigError(f"compare: unknown method or variant '{item}'; choose from {', '.join(choices)} or write label=method:key=value")


def parse_variants(items: list[str]) -> list[Variant]:
    out: dict[str, Variant] = {}
    for item in items:
        for v in parse_variant(item):
            if v.label in out and out[v.label] != v:
                raise ConfigError(f"compare: label '{v.label}' is defined twice, differently")
            out[v.label] = v
    return list(out.values())


def variant_config(cfg: Config, variant: Variant, seed: int) -> Config:
    """The run's configuration: the comparison's, the variant's overrides, this seed."""
    overrides = {**dict(variant.overrides), "run.seed": seed, "run.methods": variant.method}
    try:
        return config_mod.load(None, {**flat_config(cfg), **overrides})
    except ConfigError as err:
        raise ConfigError(f"compare: variant '{variant.spec}': {err}") from None


def flat_config(cfg: Config) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in cfg.to_dict().items() for key, value in values.items()}


def default_reference(labels: list[str]) -> str:
    return "feddat" if "feddat" in labels else labels[0]


def check_reference(reference: str | None, labels: list[str]) -> None:
    """Refuse a --reference that is none of the compared labels (its Δ column would be all '—')."""
    if reference is not None and reference not in labels:
        raise ValueError(f"--reference '{reference}' is not one of the compared methods: {', '.join(dict.fromkeys(labels))}")


def round_cost(method: str, cfg: Config, epochs: int) -> float:
    """Backbone passes per round per client, in passes over its training data: the local
    epochs' minibatch passes and what the method spends besides (FedRep's representations)."""
    from feddat.algorithms import METHODS

    return sum(passes_per_step(method, cfg)) * epochs + METHODS[method].passes_per_round(cfg)


def passes_per_step(method: str, cfg: Config) -> tuple[int, int]:
    """(forward, backward) backbone passes per local minibatch: the unit of compute here.

    A backward through the frozen backbone costs about one forward (activation gradients only),
    so FedDAT's reference schedule (3 + 2) costs 2.5x FedAvg's (1 + 1), as measured (docs/guide/speed.md);
    the fused schedule runs one forward and one backward on a doubled batch (2 + 2)."""
    from feddat.algorithms import METHODS

    return tuple(METHODS[method].passes_per_step(cfg))


def matched_variants(variants: list[Variant], names: list[str], reference: str, cfg: Config) -> list[Variant]:
    """`name@reference`: the baseline with local epochs scaled to the reference's compute per round."""
    by_label = {v.label: v for v in variants}
    if reference not in by_label:
        raise ConfigError(f"compare: --matched needs the reference '{reference}' among the methods")
    ref_cfg = variant_config(cfg, by_label[reference], 0)
    ref_cost = round_cost(by_label[reference].method, ref_cfg, ref_cfg.train.local_epochs)
    if names == ["all"]:
        names = [v.label for v in variants if not v.method.startswith("feddat") and v.method not in ("head_only", "local", "centralised")]
    out = []
    for name in names:
        if name not in by_label:
            raise ConfigError(f"compare: --matched '{name}' is not among the methods being compared")
        v = by_label[name]
        vcfg = variant_config(cfg, v, 0)
        extra = round_cost(v.method, vcfg, 0)
        epochs = max(1, math.floor((ref_cost - extra) / sum(passes_per_step(v.method, vcfg)) + 0.5))
        if epochs != vcfg.train.local_epochs:
            out.append(Variant(f"{name}@{reference}", v.method, (*v.overrides, ("train.local_epochs", str(epochs)))))
    return out
