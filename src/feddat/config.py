"""Typed run configuration: dataclasses, TOML loading and dotted command-line overrides.

Every field carries a help string so that `feddat run --help` can list all keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w


class ConfigError(ValueError):
    """A configuration value or key the user gave is wrong."""


def _f(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: typing.cast(Any, default).copy(), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class BackboneConfig:
    name: str = _f("minivl", "backbone: minivl (offline, packaged weights) or vilt")
    path: str = _f("", "vilt only: Hugging Face hub id or local folder (e.g. dandelin/vilt-b32-mlm)")
    image_size: int = _f(128, "image side in pixels fed to the image tower")
    max_text_len: int = _f(20, "question tokens kept (truncation)")


@dataclass
class AdapterConfig:
    reduction_factor: int = _f(16, "bottleneck r = hidden / reduction_factor")
    activation: str = _f("relu", "adapter non-linearity: relu or gelu")
    blocks: list[int] = _f([], "indices of transformer blocks that get adapters; empty = all")
    init: str = _f("normal", "normal: N(0, init_std) for both weights (reference); zero_up: W_up = 0")
    init_std: float = _f(0.02, "std of the normal initialisation")


@dataclass
class FedDATConfig:
    alpha: float = _f(1.0, "weight of the KD term in the shared adapter's loss")
    beta: float = _f(1.0, "weight of the KD term in the Dual-Adapter Teacher's loss")
    temperature: float = _f(3.0, "distillation temperature T")
    kd: str = _f("mutual", "mutual, one_way (only A_s learns from the DAT) or none")
    teacher: str = _f("dual", "dual (frozen A_s copy + A_c), client_only (A_c alone) or frozen_only (frozen A_s copy alone)")


@dataclass
class TrainConfig:
    lr: float = _f(3e-3, "AdamW learning rate (DESIGN says 1e-4 for long ViLT runs; 3e-3 suits the short default, see README)")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and LayerNorm weights)")
    betas: list[float] = _f([0.9, 0.98], "AdamW betas")
    eps: float = _f(1e-8, "AdamW eps")
    batch_size: int = _f(32, "local minibatch size")
    local_epochs: int = _f(2, "local epochs per round")
    eval_batch_size: int = _f(128, "minibatch size for evaluation")


@dataclass
class FederationConfig:
    rounds: int = _f(5, "communication rounds")
    fraction: float = _f(1.0, "fraction of clients sampled each round")
    eval_every: int = _f(2, "evaluate every N rounds (the last round always)")
    weighting: str = _f("data_size", "aggregation weights: data_size (w_k ∝ n_k) or uniform (reference code)")


@dataclass
class DataConfig:
    benchmark: str = _f("domain", "domain or function (synthetic twins, generated offline) or folder (your data under data.root)")
    root: str = _f("", "folder benchmark: ROOT/<client>/{train,test}.jsonl (see README)")
    train_per_client: int = _f(256, "training questions per client")
    test_per_client: int = _f(200, "held-out questions per client")
    max_objects: int = _f(3, "synthetic scenes hold 2 to max_objects objects (at most 6)")
    max_answers: int = _f(100, "answer vocabulary: most frequent N answers per client")
    seed: int = _f(0, "seed of the data generator")
    cache_dir: str = _f(".cache/feddat", "where frozen image-tower features are cached")


@dataclass
class RunConfig:
    methods: list[str] = _f(["feddat", "fedavg"], "methods to run one after another")
    seed: int = _f(0, "training seed (adapter init, client sampling, batch order)")
    out_dir: str = _f("runs", "parent folder of run directories")
    name: str = _f("", "run directory name (default: benchmark-timestamp)")
    device: str = _f("auto", "auto, cpu or cuda")
    threads: int = _f(0, "torch CPU threads (0: all cores)")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    feddat: FedDATConfig = field(default_factory=FedDATConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def _sections() -> dict[str, type]:
    return {f.name: f.type if isinstance(f.type, type) else _resolve(f.type) for f in dataclasses.fields(Config)}


def _resolve(name: str) -> type:
    return globals()[name]


def iter_fields() -> typing.Iterator[tuple[str, dataclasses.Field, Any]]:
    """Yield (dotted key, field, type) for every leaf config key."""
    for section, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield f"{section}.{f.name}", f, hints[f.name]


def _known_keys() -> list[str]:
    return [key for key, _, _ in iter_fields()]


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _known_keys(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}; `feddat run --help` lists them all")


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert a TOML or command-line value to the field's type, or explain why not."""
    origin = typing.get_origin(typ)
    try:
        if origin is list:
            (item,) = typing.get_args(typ)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()] if value.strip() else []
            if not isinstance(value, list):
                raise TypeError
            return [_coerce(key, v, item) for v in value]
        if typ is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value).strip()
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"config key '{key}': cannot read {value!r} as {getattr(typ, '__name__', typ)}")


def apply(cfg: Config, key: str, value: Any) -> None:
    """Set one dotted key (e.g. 'train.lr') on cfg, with type checking."""
    section, _, name = key.partition(".")
    sub = getattr(cfg, section, None) if section in _sections() else None
    types = {k: t for k, _, t in iter_fields()}
    if sub is None or key not in types:
        raise _unknown(key)
    setattr(sub, name, _coerce(key, value, types[key]))


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file, then overrides; validated."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
        for section, values in data.items():
            if not isinstance(values, dict):
                raise _unknown(section)
            for name, value in values.items():
                apply(cfg, f"{section}.{name}", value)
    for key, value in (overrides or {}).items():
        apply(cfg, key, value)
    validate(cfg)
    return cfg


def _choice(key: str, value: str, allowed: typing.Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key} = '{value}' is not one of: {', '.join(allowed)}")


def validate(cfg: Config) -> None:
    """Refuse values that would fail later, deep inside training."""
    from feddat.algorithms import METHODS
    from feddat.backbones import BACKBONES
    from feddat.data.benchmarks import BENCHMARKS
    from feddat.data.synthetic import MAX_OBJECTS

    _choice("backbone.name", cfg.backbone.name, BACKBONES)
    if not cfg.run.methods:
        raise ConfigError("run.methods is empty: name at least one method")
    for m in cfg.run.methods:
        _choice("run.methods", m, METHODS)
    _choice("data.benchmark", cfg.data.benchmark, [*BENCHMARKS, "folder"])
    if cfg.data.benchmark == "folder" and not cfg.data.root:
        raise ConfigError("data.benchmark = 'folder' needs data.root, the folder holding one sub-folder per client")
    _choice("adapter.activation", cfg.adapter.activation, ("relu", "gelu"))
    _choice("adapter.init", cfg.adapter.init, ("normal", "zero_up"))
    _choice("feddat.kd", cfg.feddat.kd, ("mutual", "one_way", "none"))
    _choice("feddat.teacher", cfg.feddat.teacher, ("dual", "client_only", "frozen_only"))
    _choice("federation.weighting", cfg.federation.weighting, ("data_size", "uniform"))
    _choice("run.device", cfg.run.device, ("auto", "cpu", "cuda"))
    positive = {
        "train.batch_size": cfg.train.batch_size,
        "train.local_epochs": cfg.train.local_epochs,
        "train.eval_batch_size": cfg.train.eval_batch_size,
        "federation.rounds": cfg.federation.rounds,
        "federation.eval_every": cfg.federation.eval_every,
        "data.train_per_client": cfg.data.train_per_client,
        "data.test_per_client": cfg.data.test_per_client,
        "data.max_answers": cfg.data.max_answers,
        "adapter.reduction_factor": cfg.adapter.reduction_factor,
        "backbone.image_size": cfg.backbone.image_size,
        "backbone.max_text_len": cfg.backbone.max_text_len,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if not 2 <= cfg.data.max_objects <= MAX_OBJECTS:
        raise ConfigError(f"data.max_objects must be from 2 to {MAX_OBJECTS}, got {cfg.data.max_objects}")
    if not 0.0 < cfg.federation.fraction <= 1.0:
        raise ConfigError(f"federation.fraction must be in (0, 1], got {cfg.federation.fraction}")
    if cfg.train.lr <= 0 or cfg.feddat.temperature <= 0:
        raise ConfigError("train.lr and feddat.temperature must be positive")
    if len(cfg.train.betas) != 2:
        raise ConfigError(f"train.betas needs two numbers, got {cfg.train.betas}")
    if cfg.backbone.name == "vilt" and not cfg.backbone.path:
        raise ConfigError("backbone.path is required for vilt (hub id such as dandelin/vilt-b32-mlm, or a local folder)")
