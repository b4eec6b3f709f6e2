"""Typed run configuration: dataclasses, TOML loading and dotted command-line overrides.

Every field carries a help string so that `feddat run --help` can list all keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

# defined in a leaf, so that a check below config (the device, in runtime) raises the same error
from feddat.errors import ConfigError  # noqa: F401  (re-exported: feddat.config.ConfigError)


def _f(default: Any, help: str, path: bool = False, **kwargs: Any) -> Any:
    """A config field with its help text; `path`: a file or folder name, whose leading `~` is
    expanded when the value is set (so every consumer sees the same, expanded path)."""
    metadata = {"help": help, "path": path}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: typing.cast(Any, default).copy(), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class BackboneConfig:
    name: str = _f("foundation", "backbone: foundation (a vision-language model pretrained offline by `feddat pretrain`; the packaged checkpoint unless backbone.path names another), minivl (the packaged weights without vision-language pretraining), vilt, or blip (an answer decoder: Hugging Face BlipForQuestionAnswering; trains by the answer's tokens, ranks the answer list by likelihood)")
    path: str = _f("", "foundation: a `feddat pretrain` checkpoint folder (empty: the packaged one); vilt, blip: Hugging Face hub id or local folder (e.g. dandelin/vilt-b32-mlm, Salesforce/blip-vqa-base)", path=True)
    image_size: int = _f(128, "image side in pixels fed to the image tower")
    max_text_len: int = _f(20, "question tokens kept (truncation)")
    max_answer_len: int = _f(10, "answer decoders (blip): the most tokens of an answer, the decoder's start and end tokens included; a longer answer in the data is an error")
    projector: str = _f("random", "minivl only: how image features become tokens: random (final features, fixed random orthonormal projection) or aligned (mid-level features, an affine map fitted once to MiniLM's word embeddings); docs/guide/backbones.md 'Image tokens'")


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
    schedule: str = _f("fused", "fused (one batched backbone pass for student and teacher, same maths) or reference (three passes, docs/design.md §4)")
    branch_site: int = _f(0, "fused schedule: adapter site (0 = lowest) where the teacher branches off the student; below it the teacher reuses the student's A_s stream and has no A_c, which skips its lower passes (a deliberate difference from docs/design.md §4, see docs/guide/speed.md); 0 = exact")
    loss_scale: float = _f(1.0, "multiplies both FedDAT losses (CE + α·T²·KL and CE + β·T²·KL); 0.5 is the reference code's ½(CE + KL) (docs/differences.md); 1 = docs/design.md §4")
    optimizer: str = _f("separate", "separate (docs/design.md §4: A_s + H_k and A_c + H_k each move only by their own loss) or single (the released code: one AdamW over A_s, A_c and H_k, gradients zeroed rather than set to None, stepped after each of the two losses, so momentum and weight decay move the adapter the loss did not touch); single runs the reference schedule")
    client_adapter_rounds: int = _f(0, "rounds (counted from 1) in which A_c trains: 0 = every round (docs/design.md §4); 1 = round 1 only, as in the released code, whose evaluation leaves A_c frozen after the first round (from then on the DAT loss moves only H_k)")
    kd_warmup_rounds: int = _f(0, "not the paper's: rounds (from 1) trained without either KD term (as feddat.kd = none), so that A_s does not distil from a teacher that is half an untrained A_c; 0 = KD from round 1 (docs/design.md §4)")
    head_update: str = _f("both", "not the paper's: which losses step the head H_k: both (docs/design.md §4: the student's, then the DAT's) or student (only the student's; the DAT loss trains A_c on the head the student left)")
    personal_frozen: str = _f("current", "Â_s of the personal view (evaluation, predict): current (the A_s of the evaluated round, docs/design.md §4) or received (the A_s the client received at the start of its last round, as the released code evaluates; kept in the client's state)")
    client_init: str = _f("per_client", "per_client (each client's A_c drawn from its own seed) or same (one draw for every client, as the released code)")


@dataclass
class TrainConfig:
    lr: float = _f(3e-3, "AdamW learning rate (docs/design.md §4 says 1e-4 for long ViLT runs; 3e-3 suits the short default, see docs/guide/speed.md)")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and LayerNorm weights)")
    betas: list[float] = _f([0.9, 0.98], "AdamW betas")
    eps: float = _f(1e-8, "AdamW eps")
    batch_size: int = _f(32, "local minibatch size")
    local_epochs: int = _f(1, "local epochs per round")
    eval_batch_size: int = _f(128, "minibatch size for evaluation")
    lr_schedule: str = _f("constant", "learning rate over a local update: constant (docs/design.md §4); official (the released code's: linear warm-up over train.warmup_fraction of a horizon of train.schedule_epochs epochs' minibatches, then linear decay, rebuilt every local update and advanced after every optimiser step, twice per minibatch for FedDAT, however few epochs run); warmup_decay (warm-up over train.warmup_fraction of the local update's own steps, then decay to 0 within it); docs/differences.md 'Learning-rate schedules'")
    warmup_fraction: float = _f(0.1, "lr_schedule official / warmup_decay: share of the schedule's horizon spent warming up (the released code: 0.1)")
    schedule_epochs: int = _f(15, "lr_schedule = official: epochs in the schedule's horizon (the released code's --num_epochs default, 15, while 1 local epoch runs)")
    decay_head_norm: bool = _f(False, "also apply weight decay to the task head's LayerNorm weight (the released code's name filter 'LayerNorm.weight' misses the head's, so it is decayed there); false = no decay on any bias or LayerNorm weight")
    task_loss: str = _f("auto", "auto (softmax CE on single-answer data, BCE with logits x #answers on soft VQA scores) or bce (BCE x #answers on one-hot or soft targets always, as the released code)")


@dataclass
class PeftConfig:
    lora_rank: int = _f(8, "LoRA rank r (methods fedavg_lora, feddat_lora)")
    lora_alpha: float = _f(16.0, "LoRA scaling numerator: the update is (alpha / r) · B A")
    lora_targets: list[str] = _f(["query", "value"], "attention projections that get LoRA (module names inside each block)")
    prompt_length: int = _f(8, "learned prompt tokens inserted after [CLS] (method fedavg_prompt)")
    prompt_init_std: float = _f(0.02, "std of the prompt tokens' normal initialisation")


@dataclass
class BaselinesConfig:
    fedprox_mu: float = _f(0.01, "FedProx: weight μ of the proximal term μ/2·‖w − w_global‖²")
    feddyn_alpha: float = _f(0.01, "FedDyn: weight α of the dynamic regulariser")
    moon_mu: float = _f(1.0, "MOON: weight μ of the model-contrastive loss")
    moon_temperature: float = _f(0.5, "MOON: temperature τ of the contrastive loss")
    ditto_lambda: float = _f(0.1, "Ditto: weight λ of λ/2·‖v − w_global‖² pulling the personal adapter to the global one")
    fedrep_head_epochs: int = _f(1, "FedRep: epochs training the head alone (adapter frozen) before the adapter epochs")


@dataclass
class ServerConfig:
    momentum: float = _f(0.9, "FedAvgM: server momentum β (v ← βv + Δ)")
    avgm_lr: float = _f(1.0, "FedAvgM: server learning rate")
    adam_lr: float = _f(0.01, "FedAdam: server learning rate")
    beta1: float = _f(0.9, "FedAdam: first-moment decay")
    beta2: float = _f(0.99, "FedAdam: second-moment decay")
    tau: float = _f(1e-3, "FedAdam: adaptivity τ (added to √v)")


@dataclass
class FlowerConfig:
    round_timeout: float = _f(600.0, "Flower engine: seconds the server waits for a phase's replies; a SuperNode that has not replied by then is left out (it rejoins when restarted)")
    join_timeout: float = _f(300.0, "Flower engine: seconds the server waits at the start for every client's SuperNode")
    clients: list[str] = _f([], "Flower engine: the clients, in order (default: the benchmark's clients, as the embedded engine lists them)")
    secure_aggregation: bool = _f(False, "Flower engine: sum the clients' A_s updates with Flower's SecAgg+ (the server sees only the aggregate); needs federation.aggregation = mean and >= 2 clients per round")
    secagg_num_shares: int = _f(0, "SecAgg+: shares each client's secrets are split into, among its neighbours (0: every sampled client; otherwise odd and >= 3)")
    secagg_reconstruction_threshold: int = _f(0, "SecAgg+: shares needed to unmask a client, i.e. how many must collude (0: a majority of the shares; otherwise >= 2 and < the shares)")
    secagg_clipping_range: float = _f(8.0, "SecAgg+: each client's weighted change of A_s must lie in [-range, range] per coordinate (a client whose change does not stops the run); the aggregate's error is at most 2*range/quantization_range per coordinate and round")
    secagg_quantization_range: int = _f(2**22, "SecAgg+: levels a coordinate is quantised to before masking; clients per round * this must stay below 2**32")


@dataclass
class PrivacyConfig:
    clip_norm: float = _f(0.0, "client-level DP: clip each client's A_s update to this L2 norm on the client (0: DP off)")
    noise_multiplier: float = _f(1.0, "client-level DP: Gaussian noise std on the mean update = noise_multiplier * clip_norm / #updates")
    delta: float = _f(1e-5, "client-level DP: the δ for which ε is reported each round")


@dataclass
class FederationConfig:
    rounds: int = _f(5, "communication rounds")
    fraction: float = _f(1.0, "fraction of clients sampled each round")
    eval_every: int = _f(2, "evaluate every N rounds (the last round always)")
    eval_fraction: float = _f(1.0, "fraction of clients evaluated (the same seeded sample every time; < 1 for thousands of clients)")
    select_round: str = _f("last", "with data.validation_per_client > 0: the round whose model the test split scores: last, or best (the highest mean global validation score over the evaluated clients; ties: the earliest)")
    weighting: str = _f("data_size", "aggregation weights: data_size (w_k ∝ n_k) or uniform (reference code)")
    aggregation: str = _f("mean", "how the server combines A_s updates: mean (weighted), median or trimmed_mean (coordinate-wise, robust to a few hostile clients)")
    trim_fraction: float = _f(0.1, "trimmed_mean: fraction of the largest and of the smallest values dropped per coordinate")
    max_update_norm: float = _f(0.0, "reject an update whose L2 distance from the round's A_s exceeds this (0: no bound)")
    max_update_mib: float = _f(0.0, "reject an update larger than this many MiB (0: no limit beyond the exact expected names and shapes)")
    min_updates: int = _f(1, "a round fails, naming the rejected clients, when fewer acceptable updates than this remain")


@dataclass
class DataConfig:
    benchmark: str = _f("domain", "domain, function, scene, task (the paper's four heterogeneity types), shapes (synthetic, one pool to partition), a single public dataset (source public), or folder (your data under data.root)")
    source: str = _f("synthetic", "synthetic (twins generated offline) or public (the published datasets, downloaded by you under data.root; see docs/guide/public-datasets.md)")
    root: str = _f("", "public source: the folder holding one sub-folder per dataset; folder benchmark: ROOT/<client>/{train,test}.jsonl (see docs/guide/public-datasets.md, docs/guide/own-data.md)", path=True)
    train_per_client: int = _f(1024, "training questions per client (public and folder data: a seeded sample of each client's, all where it has fewer; 0 = all)")
    test_per_client: int = _f(200, "held-out questions per client (public and folder data: a seeded sample of each client's, all where it has fewer; 0 = all)")
    validation_per_client: int = _f(0, "validation questions per client, held out of its training questions (a draw seeded by data.seed and the client's name): scored every evaluated round, so that federation.select_round picks a round without the test split, which is then scored once, at the end; 0 = off (the test split is scored every evaluated round)")
    partition: str = _f("natural", "natural (the benchmark's clients), category (one client per question type / category), iid, dirichlet (label skew) or quantity (size skew): the last four pool the benchmark's data and re-split it")
    num_clients: int = _f(0, "iid / dirichlet / quantity: how many clients to split the pooled data over")
    alpha: float = _f(0.5, "Dirichlet concentration of the dirichlet and quantity partitions (small = more skewed)")
    min_per_client: int = _f(8, "skewed partitions are redrawn until every client has this many training examples")
    max_objects: int = _f(3, "synthetic scenes hold 2 to max_objects objects (at most 6)")
    max_answers: int = _f(100, "answer vocabulary: most frequent N answers per client")
    seed: int = _f(0, "seed of the data generator")
    cache_dir: str = _f(".cache/feddat", "where frozen image-tower features are cached", path=True)
    on_bad_record: str = _f("error", "a corrupt/missing image or malformed line: error (stop, naming file and record) or skip (drop it, count it, warn)")


@dataclass
class PretrainConfig:
    corpus: str = _f("synthetic", "feddat pretrain: synthetic (the procedural caption corpus, generated offline) or folder (your image-caption pairs under pretrain.root)")
    root: str = _f("", "folder corpus: a captions.jsonl file, or the folder holding it ({\"image\": ..., \"caption\": ...} per line)", path=True)
    corpus_size: int = _f(20000, "synthetic corpus: scenes (one image each; captions are drawn anew every step)")
    corpus_seed: int = _f(8, "synthetic corpus: its own seed (the held-out scenes derive theirs from it); never a benchmark's data")
    styles: list[str] = _f(["flat", "photo"], "synthetic corpus: rendering styles of its images (the others stay a domain shift for finetuning)")
    max_objects: int = _f(4, "synthetic corpus: scenes hold 1 to this many objects")
    eval_size: int = _f(600, "held-out scenes per style group for the grounding report (MLM per word role, real vs shuffled images; ITM per negative kind)")
    text_encoder: str = _f("minilm", "minilm (packaged all-MiniLM-L6-v2) or a folder / hub id of a BERT-style Hugging Face model", path=True)
    vision_tower: str = _f("efficientnet-lite0", "efficientnet-lite0 (packaged, read at strides 8/16/32) or a folder / hub id of a Hugging Face vision transformer", path=True)
    image_size: int = _f(128, "image side in pixels; image tokens are a (side/32)^2 grid")
    max_caption_len: int = _f(32, "caption tokens kept")
    tune: str = _f("lora", "lora (LoRA on every encoder linear layer, merged on load; LayerNorms and token types trained in full) or full (every encoder weight but the embeddings)")
    lora_rank: int = _f(16, "LoRA rank")
    lora_alpha: float = _f(32.0, "LoRA scaling numerator (update = alpha / rank * B A)")
    pool: str = _f("cls", "what the foundation backbone returns for a head: cls (the [CLS] state that image-text matching trains) or mean (over all tokens)")
    steps: int = _f(3000, "optimiser steps")
    batch_size: int = _f(64, "image-caption pairs per step")
    lr: float = _f(1e-3, "AdamW peak learning rate (linear warm-up, cosine decay to a tenth)")
    warmup: float = _f(0.05, "fraction of steps of linear warm-up")
    weight_decay: float = _f(0.01, "AdamW weight decay (not on biases and norms)")
    mlm_fraction: float = _f(0.5, "share of each batch used for masked-word prediction; the rest is image-text matching")
    mask_prob: float = _f(0.4, "probability that a content word (colour, shape, size, count, relation; any word in a folder corpus) is masked; at least one per caption")
    itm_weight: float = _f(1.0, "weight of the matching loss")
    hard_negatives: float = _f(0.7, "final share of hard negatives (one content word changed) among matching negatives; the rest are other scenes' captions")
    hard_warmup: float = _f(0.3, "fraction of steps over which the hard share rises from 0 (easy negatives first)")
    curriculum: float = _f(0.15, "fraction of steps drawing only scenes of 1-2 objects")
    store: str = _f("fp16", "dtype of the stored checkpoint tensors: fp16 (half the size; the held-out report is computed after rounding) or fp32")
    precision: str = _f("auto", "auto (bf16 autocast where the CPU has native bf16, AMX or AVX512-BF16; float32 elsewhere, where bf16 is emulated and many times slower), bf16 or fp32; recipe.toml records the one used")
    seed: int = _f(0, "training seed (initialisation, batches, masks, negatives)")
    threads: int = _f(0, "torch CPU threads (0: all cores); a checkpoint is reproduced bit for bit with the same count")
    log_every: int = _f(50, "steps between progress lines (and log.jsonl records)")
    save_every: int = _f(250, "steps between committed run states (what --resume continues from)")
    eval_every: int = _f(0, "steps between held-out grounding reports during training (0: only at the end)")
    out: str = _f("runs/pretrain", "the checkpoint folder (card.json, foundation.safetensors, log.jsonl, state/)", path=True)
    cache_dir: str = _f(".cache/feddat", "where the corpus's frozen tower features are cached", path=True)


@dataclass
class RunConfig:
    methods: list[str] = _f(["feddat", "fedavg"], "methods to run one after another")
    seed: int = _f(0, "training seed (adapter init, client sampling, batch order)")
    out_dir: str = _f("runs", "parent folder of run directories", path=True)
    name: str = _f("", "run directory name (default: benchmark-timestamp)")
    device: str = _f("auto", "auto, cpu or cuda")
    precision: str = _f("auto", "auto (bf16 autocast where bf16 is native: CUDA, or a CPU with AMX / AVX512-BF16; float32 elsewhere), bf16 (always) or fp32 (never); losses and scores are float32 either way")
    threads: int = _f(0, "torch CPU threads (0: all cores)")
    prefix_cache_mb: int = _f(1024, "memory (MiB) for the frozen blocks' output below the lowest adapter site, kept per example so later passes skip those blocks (docs/guide/speed.md); 0 = off")
    progress: str = _f("auto", "progress display: auto (bars with rates and ETA on a terminal, throttled lines otherwise), bars, lines or off (docs/guide/watching.md)")


@dataclass
class TrackingConfig:
    loggers: list[str] = _f([], "experiment trackers fed every per-round per-client metric and the config: tensorboard (event files in RUN_DIR/tensorboard/<method>), mlflow; empty = none")
    mlflow_uri: str = _f("", "MLflow tracking URI (a server, or any store MLflow reads); empty = the local SQLite file <run.out_dir>/mlflow.db, artifacts beside it")
    experiment: str = _f("", "MLflow experiment name (default: feddat-<benchmark>)")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    feddat: FedDATConfig = field(default_factory=FedDATConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    flower: FlowerConfig = field(default_factory=FlowerConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @classmethod
    def from_toml(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> "Config":
        """Defaults, then the TOML file (a run's config.toml works as is), then dotted overrides
        such as {"federation.rounds": 3}; validated, as `feddat run --config` does."""
        return load(path, overrides)

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


class _UnknownKey(ConfigError):
    """A key no section holds (`load` adds the file it came from)."""


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _known_keys(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return _UnknownKey(f"unknown config key '{key}'{hint}; `feddat run --help` lists them all")


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is list:
        return f"list of {_type_name(typing.get_args(typ)[0])}"
    return getattr(typ, "__name__", str(typ))


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert a TOML or command-line value to the field's type, or explain why not.

    Strings (the command line's, or a TOML string) are parsed; a typed value (TOML, Python) must
    already be of the field's kind: no bool for a number, no number for a bool, no list for a
    string (Python would turn them into 1, True and "['a', 'b']")."""
    origin = typing.get_origin(typ)
    if origin is list:
        (item,) = typing.get_args(typ)
        if isinstance(value, tuple):
            value = list(value)
        given, value = value, (value.split(",") if isinstance(value, str) else value)
        if not isinstance(value, list):
            raise _wrong_type(key, given, typ)
        out = []
        for i, v in enumerate(value):
            if isinstance(v, str) and isinstance(given, str):
                if not v.strip():
                    continue  # "a,,b" and a trailing comma on the command line
                v = v.strip()
            try:
                out.append(_coerce(key, v, item))
            except ConfigError as err:
                kind = "" if isinstance(v, str) else f" (a {type(v).__name__})"
                raise ConfigError(f"config key '{key}': item {i + 1} of {given!r}, {v!r}{kind}, cannot be read as {_type_name(item)}") from err
        return out
    if typ is str:
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _wrong_type(key, value, typ)
    if isinstance(value, str):
        text = value.strip()
        try:
            if typ is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if typ is int:
                return int(text)
            if typ is float:
                return float(text)
        except ValueError:
            pass
        raise ConfigError(f"config key '{key}': cannot read {value!r} as {_type_name(typ)}")
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif isinstance(value, bool):
        pass  # a bool is an int to Python, never a number here
    elif typ is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}': cannot read {value!r} as int (it has a fractional part or is not finite)")
    elif typ is float:
        if isinstance(value, (int, float)):
            return float(value)
    raise _wrong_type(key, value, typ)


def _wrong_type(key: str, value: Any, typ: Any) -> ConfigError:
    return ConfigError(f"config key '{key}' must be {_type_name(typ)}, not {type(value).__name__} ({value!r})")


def _expand(value: Any) -> Any:
    return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value


def apply(cfg: Config, key: str, value: Any) -> None:
    """Set one dotted key (e.g. 'train.lr') on cfg, with type checking; a path's `~` is expanded."""
    section, _, name = key.partition(".")
    sub = getattr(cfg, section, None) if section in _sections() else None
    fields = {k: (f, t) for k, f, t in iter_fields()}
    if sub is None or key not in fields:
        raise _unknown(key)
    f, typ = fields[key]
    value = _coerce(key, value, typ)
    setattr(sub, name, _expand(value) if f.metadata.get("path") else value)


def _read(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder, not a TOML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror or err}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start}); TOML files must be UTF-8") from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file, then overrides; validated."""
    cfg = Config()
    from_file: set[str] = set()  # keys whose value the file set (and no override replaced)
    if path is not None:
        path = Path(path)
        for section, values in _read(path).items():
            try:
                if not isinstance(values, dict):
                    raise _unknown(section)
                for name, value in values.items():
                    apply(cfg, f"{section}.{name}", value)
                    from_file.add(f"{section}.{name}")
            except _UnknownKey as err:
                raise ConfigError(f"config file {path}: {err} (a file written by another feddat version may hold keys this one does not know)") from None
            except ConfigError as err:
                raise ConfigError(f"config file {path}: {err}") from None
    for key, value in (overrides or {}).items():
        apply(cfg, key, value)
        from_file.discard(key)
    try:
        validate(cfg)
    except ConfigError as err:
        if any(_names_key(str(err), key) for key in from_file):
            raise ConfigError(f"config file {path}: {err}") from None
        raise
    return cfg


def _names_key(message: str, key: str) -> bool:
    """Whether an error message names config key `key` (not merely a longer key it begins)."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message) is not None


def _choice(key: str, value: str, allowed: typing.Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key} = '{value}' is not one of: {', '.join(allowed)}")


def validate(cfg: Config) -> None:
    """Refuse values that would fail later, deep inside training. Method names are checked by
    the registry (feddat.algorithms.check_methods): the algorithms read a Config, so this
    module, below them, does not import them."""
    from feddat.backbones import BACKBONES, PROJECTORS
    from feddat.data.synthetic import MAX_OBJECTS

    _validate_finite(cfg)
    _validate_unique(cfg)
    _choice("backbone.name", cfg.backbone.name, BACKBONES)
    if not cfg.run.methods:
        raise ConfigError("run.methods is empty: name at least one method")
    if cfg.run.prefix_cache_mb < 0:
        raise ConfigError(f"run.prefix_cache_mb must not be negative (0 = off), got {cfg.run.prefix_cache_mb}")
    _validate_data(cfg.data)
    _choice("adapter.activation", cfg.adapter.activation, ("relu", "gelu"))
    _choice("adapter.init", cfg.adapter.init, ("normal", "zero_up"))
    _choice("feddat.kd", cfg.feddat.kd, ("mutual", "one_way", "none"))
    _choice("feddat.teacher", cfg.feddat.teacher, ("dual", "client_only", "frozen_only"))
    _choice("feddat.schedule", cfg.feddat.schedule, ("fused", "reference"))
    if cfg.train.lr_schedule == "reference":
        raise ConfigError(
            "train.lr_schedule = 'reference' was the earlier name of 'warmup_decay' (warm-up and decay to 0 within one local "
            "update), which is not the released code's schedule; use 'warmup_decay' for that behaviour or 'official' for the "
            "released code's (docs/differences.md 'Learning-rate schedules')"
        )
    _choice("train.lr_schedule", cfg.train.lr_schedule, ("constant", "official", "warmup_decay"))
    _choice("train.task_loss", cfg.train.task_loss, ("auto", "bce"))
    _choice("feddat.optimizer", cfg.feddat.optimizer, ("separate", "single"))
    _choice("feddat.client_init", cfg.feddat.client_init, ("per_client", "same"))
    _choice("feddat.personal_frozen", cfg.feddat.personal_frozen, ("current", "received"))
    _choice("feddat.head_update", cfg.feddat.head_update, ("both", "student"))
    if cfg.feddat.kd_warmup_rounds < 0:
        raise ConfigError(f"feddat.kd_warmup_rounds must be >= 0 (0 = KD from round 1), got {cfg.feddat.kd_warmup_rounds}")
    if cfg.feddat.head_update == "student" and cfg.feddat.optimizer == "single":
        raise ConfigError("feddat.head_update = student needs feddat.optimizer = separate: the released code's single optimiser steps the head after both losses")
    if cfg.feddat.client_adapter_rounds < 0:
        raise ConfigError(f"feddat.client_adapter_rounds must be >= 0 (0 = every round), got {cfg.feddat.client_adapter_rounds}")
    if cfg.feddat.optimizer == "single" and cfg.feddat.branch_site:
        raise ConfigError("feddat.optimizer = single runs the reference schedule, which has no branch site; set feddat.branch_site = 0")
    if not 0.0 <= cfg.train.warmup_fraction < 1.0:
        raise ConfigError(f"train.warmup_fraction must be in [0, 1), got {cfg.train.warmup_fraction}")
    if cfg.feddat.loss_scale <= 0:
        raise ConfigError(f"feddat.loss_scale must be positive, got {cfg.feddat.loss_scale}")
    _choice("backbone.projector", cfg.backbone.projector, PROJECTORS)
    if cfg.feddat.branch_site < 0:
        raise ConfigError(f"feddat.branch_site must be >= 0, got {cfg.feddat.branch_site}")
    if cfg.feddat.branch_site and cfg.feddat.schedule != "fused":
        raise ConfigError("feddat.branch_site > 0 is a variant of the fused schedule; the reference schedule is docs/design.md §4 exactly")
    _choice("federation.select_round", cfg.federation.select_round, ("last", "best"))
    if cfg.federation.select_round == "best" and not cfg.data.validation_per_client:
        raise ConfigError("federation.select_round = best selects by validation scores: set data.validation_per_client > 0 (questions held out of each client's training data)")
    _choice("federation.weighting", cfg.federation.weighting, ("data_size", "uniform"))
    _choice("data.on_bad_record", cfg.data.on_bad_record, ("error", "skip"))
    _choice("federation.aggregation", cfg.federation.aggregation, ("mean", "median", "trimmed_mean"))
    if cfg.privacy.clip_norm < 0 or cfg.privacy.noise_multiplier < 0 or not 0 < cfg.privacy.delta < 1:
        raise ConfigError("privacy: clip_norm and noise_multiplier must be >= 0 and delta in (0, 1)")
    if cfg.privacy.clip_norm > 0 and cfg.federation.aggregation != "mean":
        raise ConfigError(f"privacy.clip_norm > 0 averages the clipped updates with noise, so it needs federation.aggregation = mean (got {cfg.federation.aggregation}: the noise is calibrated to a mean)")
    if not 0.0 <= cfg.federation.trim_fraction < 0.5:
        raise ConfigError(f"federation.trim_fraction must be in [0, 0.5), got {cfg.federation.trim_fraction}")
    _choice("run.device", cfg.run.device, ("auto", "cpu", "cuda"))
    _choice("run.precision", cfg.run.precision, ("auto", "bf16", "fp32"))
    _choice("run.progress", cfg.run.progress, ("auto", "bars", "lines", "off"))
    for logger in cfg.tracking.loggers:
        _choice("tracking.loggers", logger, ("tensorboard", "mlflow"))
    positive = {
        "train.batch_size": cfg.train.batch_size,
        "train.local_epochs": cfg.train.local_epochs,
        "train.schedule_epochs": cfg.train.schedule_epochs,
        "train.eval_batch_size": cfg.train.eval_batch_size,
        "federation.rounds": cfg.federation.rounds,
        "federation.eval_every": cfg.federation.eval_every,
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
    if not 0.0 < cfg.federation.eval_fraction <= 1.0:
        raise ConfigError(f"federation.eval_fraction must be in (0, 1], got {cfg.federation.eval_fraction}")
    _validate_baselines(cfg)
    _validate_pretrain(cfg.pretrain)
    if cfg.flower.round_timeout <= 0 or cfg.flower.join_timeout <= 0:
        raise ConfigError("flower.round_timeout and flower.join_timeout must be positive (seconds)")
    _validate_secure_aggregation(cfg)
    if cfg.train.lr <= 0 or cfg.feddat.temperature <= 0:
        raise ConfigError("train.lr and feddat.temperature must be positive")
    if len(cfg.train.betas) != 2:
        raise ConfigError(f"train.betas needs two numbers, got {cfg.train.betas}")
    for beta in cfg.train.betas:
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"train.betas = {cfg.train.betas}: each must be in [0, 1), got {beta}")
    _not_negative({"train.weight_decay": cfg.train.weight_decay, "adapter.init_std": cfg.adapter.init_std, "peft.prompt_init_std": cfg.peft.prompt_init_std,
                    "feddat.alpha": cfg.feddat.alpha, "feddat.beta": cfg.feddat.beta})
    _not_negative({"federation.min_updates": cfg.federation.min_updates}, " (0 counts as 1)")
    _not_negative({"federation.max_update_norm": cfg.federation.max_update_norm, "federation.max_update_mib": cfg.federation.max_update_mib}, " (0 = off)")
    _positive({"train.eps": cfg.train.eps, "peft.lora_alpha": cfg.peft.lora_alpha})
    hub_example = {"vilt": "dandelin/vilt-b32-mlm", "blip": "Salesforce/blip-vqa-base"}
    if cfg.backbone.name in hub_example and not cfg.backbone.path:
        raise ConfigError(f"backbone.path is required for {cfg.backbone.name} (hub id such as {hub_example[cfg.backbone.name]}, or a local folder)")


def _positive(values: dict[str, float]) -> None:
    for key, value in values.items():
        if not value > 0:
            raise ConfigError(f"{key} must be positive, got {value}")


def _not_negative(values: dict[str, float], note: str = "") -> None:
    for key, value in values.items():
        if not value >= 0:
            raise ConfigError(f"{key} must not be negative{note}, got {value}")


def _leaves(cfg: Config) -> typing.Iterator[tuple[str, Any]]:
    for section in _sections():
        sub = getattr(cfg, section)
        for f in dataclasses.fields(sub):
            yield f"{section}.{f.name}", getattr(sub, f.name)


def _validate_finite(cfg: Config) -> None:
    """No NaN or infinity in any float of any section (every bound below assumes a number)."""
    for key, value in _leaves(cfg):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                where = f"{key} = {value}: {item}" if isinstance(value, list) else f"{key} = {value}"
                raise ConfigError(f"{where} is not a finite number")


REPEATS_ALLOWED = ("train.betas",)  # a vector of numbers, not a set of names


def _validate_unique(cfg: Config) -> None:
    """A list option names each thing once: a repeat is a slip (two runs of one method, two loggers
    writing the same events, one client twice)."""
    for key, value in _leaves(cfg):
        if not isinstance(value, list) or key in REPEATS_ALLOWED:
            continue
        seen: set[Any] = set()
        for item in value:
            if item in seen:
                raise ConfigError(f"{key} names {item!r} twice ({value}); name each once")
            seen.add(item)


def _validate_secure_aggregation(cfg: Config) -> None:
    f = cfg.flower
    shares, threshold = f.secagg_num_shares, f.secagg_reconstruction_threshold
    if shares != 0 and (shares < 3 or shares % 2 == 0):
        raise ConfigError(f"flower.secagg_num_shares must be 0 (every sampled client) or an odd number >= 3, got {shares}")
    if threshold != 0 and (threshold < 2 or (shares and threshold >= shares)):
        raise ConfigError(f"flower.secagg_reconstruction_threshold must be 0 (a majority) or >= 2 and below flower.secagg_num_shares, got {threshold}")
    if f.secagg_clipping_range <= 0:
        raise ConfigError(f"flower.secagg_clipping_range must be positive, got {f.secagg_clipping_range}")
    if not 2 <= f.secagg_quantization_range < 2**31:
        raise ConfigError(f"flower.secagg_quantization_range must be from 2 to 2**31 - 1, got {f.secagg_quantization_range}")
    if f.secure_aggregation and cfg.federation.aggregation != "mean":
        raise ConfigError(f"flower.secure_aggregation sums updates, so it needs federation.aggregation = mean (got {cfg.federation.aggregation}: a coordinate-wise rule must see every update)")


def _validate_data(d: DataConfig) -> None:
    from feddat.data.benchmarks import BENCHMARKS
    from feddat.data.partition import SCHEMES
    from feddat.data.public import PUBLIC_BENCHMARKS

    _choice("data.source", d.source, ("synthetic", "public"))
    names = PUBLIC_BENCHMARKS if d.source == "public" else BENCHMARKS
    _choice("data.benchmark", d.benchmark, [*names, "folder"])
    if d.benchmark == "folder" and not d.root:
        raise ConfigError("data.benchmark = 'folder' needs data.root, the folder holding one sub-folder per client")
    if d.source == "public" and not d.root:
        raise ConfigError("data.source = 'public' needs data.root, the folder holding your downloads (one sub-folder per dataset, see docs/guide/public-datasets.md)")
    _choice("data.partition", d.partition, SCHEMES)
    finite = d.source == "public" or d.benchmark == "folder"  # 0 = every record of a finite source
    for key in ("train_per_client", "test_per_client"):
        value = getattr(d, key)
        if value < 0 or (value == 0 and not finite):
            raise ConfigError(f"data.{key} must be positive{' (or 0 for all)' if finite else ''}, got {value}")
    if d.partition in ("iid", "dirichlet", "quantity") and d.num_clients < 2:
        raise ConfigError(f"data.partition = {d.partition} needs data.num_clients >= 2, got {d.num_clients}")
    if d.partition in ("natural", "category") and d.num_clients:
        raise ConfigError(f"data.num_clients applies to the iid, dirichlet and quantity partitions; data.partition = {d.partition} takes the clients from the data")
    if d.alpha <= 0:
        raise ConfigError(f"data.alpha must be positive, got {d.alpha}")
    if d.min_per_client < 0 or d.num_clients < 0:
        raise ConfigError("data.min_per_client and data.num_clients must not be negative")
    if d.validation_per_client < 0:
        raise ConfigError(f"data.validation_per_client must not be negative (0 = off), got {d.validation_per_client}")


def _validate_pretrain(p: PretrainConfig) -> None:
    from feddat.backbones.foundation import IMAGE_POSITION, POOLS
    from feddat.data.synthetic import STYLES
    from feddat.pretrain.corpus import MAX_CORPUS_OBJECTS

    _choice("pretrain.corpus", p.corpus, ("synthetic", "folder"))
    _choice("pretrain.tune", p.tune, ("lora", "full"))
    _choice("pretrain.pool", p.pool, POOLS)
    _choice("pretrain.precision", p.precision, ("auto", "bf16", "fp32"))
    _choice("pretrain.store", p.store, ("fp16", "fp32"))
    for style in p.styles:
        _choice("pretrain.styles", style, STYLES)
    if p.corpus == "synthetic" and not p.styles:
        raise ConfigError("pretrain.styles is empty: name at least one rendering style")
    if p.corpus == "folder" and not p.root:
        raise ConfigError("pretrain.corpus = folder needs pretrain.root (a captions.jsonl file or the folder holding it)")
    positive = {"pretrain.corpus_size": p.corpus_size, "pretrain.steps": p.steps, "pretrain.batch_size": p.batch_size, "pretrain.lora_rank": p.lora_rank,
                "pretrain.image_size": p.image_size, "pretrain.max_caption_len": p.max_caption_len, "pretrain.lr": p.lr, "pretrain.log_every": p.log_every, "pretrain.save_every": p.save_every}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if p.max_caption_len > IMAGE_POSITION:
        raise ConfigError(f"pretrain.max_caption_len must be at most {IMAGE_POSITION} (where image token positions start), got {p.max_caption_len}")
    if not 1 <= p.max_objects <= MAX_CORPUS_OBJECTS:
        raise ConfigError(f"pretrain.max_objects must be from 1 to {MAX_CORPUS_OBJECTS}, got {p.max_objects}")
    for key in ("mlm_fraction", "mask_prob", "hard_negatives", "hard_warmup", "curriculum", "warmup"):
        if not 0.0 <= getattr(p, key) <= 1.0:
            raise ConfigError(f"pretrain.{key} must be in [0, 1], got {getattr(p, key)}")
    if p.batch_size < 2:
        raise ConfigError(f"pretrain.batch_size must be at least 2 (masked-word and matching examples share each batch), got {p.batch_size}")
    _positive({"pretrain.lora_alpha": p.lora_alpha})
    _not_negative({"pretrain.weight_decay": p.weight_decay, "pretrain.itm_weight": p.itm_weight})
    if p.eval_size < 0 or p.eval_every < 0 or p.threads < 0:
        raise ConfigError("pretrain.eval_size, pretrain.eval_every and pretrain.threads must not be negative")


def _validate_baselines(cfg: Config) -> None:
    """The [peft], [baselines] and [server] sections (the methods beside FedDAT)."""
    p, b, s = cfg.peft, cfg.baselines, cfg.server
    for key, value in {"peft.lora_rank": p.lora_rank, "peft.prompt_length": p.prompt_length, "baselines.moon_temperature": b.moon_temperature, "server.adam_lr": s.adam_lr, "server.avgm_lr": s.avgm_lr, "server.tau": s.tau}.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    for key, value in {"baselines.fedprox_mu": b.fedprox_mu, "baselines.feddyn_alpha": b.feddyn_alpha, "baselines.moon_mu": b.moon_mu, "baselines.ditto_lambda": b.ditto_lambda, "baselines.fedrep_head_epochs": b.fedrep_head_epochs}.items():
        if value < 0:
            raise ConfigError(f"{key} must not be negative, got {value}")
    for key, value in {"server.momentum": s.momentum, "server.beta1": s.beta1, "server.beta2": s.beta2}.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {value}")
    if not p.lora_targets:
        raise ConfigError("peft.lora_targets is empty: name at least one attention projection (e.g. query,value)")
