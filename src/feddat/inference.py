"""Using a trained model: one client's deployed model from a run (or an export), its answers to
new questions, and exports in the ecosystem's formats.

A client's model is the frozen backbone, the PEFT sets of the chosen view and the client's
private head:

- global view: the final shared module A_s with the head (DESIGN §4: the deployed model);
- personal view, where the method has one: FedDAT's Dual-Adapter Teacher (A_s as Â_s, averaged
  with the client's A_c; `feddat.teacher` picks which), Ditto's personal adapter and head.

`load(path, method, client, view)` reads it from a run directory (`<method>/shared_adapter.safetensors`,
`state/<method>/<client>.rNNNNN.safetensors`, the backbone named in `config.toml`) or from an
export folder (`export`); `Predictor.predict` answers batches of (image, question).

Exports (`export`) are self-contained folders:

    feddat_model.json     what the model is: method, client, view, PEFT kind, active sets, answers, task
    config.toml           the run's configuration (the backbone is rebuilt from its [backbone] table)
    head.safetensors      the client's head (Linear, LayerNorm, GELU, Linear; keys as in torch)
    adapter_config.json   LoRA kinds: peft's adapter format, loadable with peft.PeftModel.from_pretrained
    adapter_model.safetensors      on the backbone's transformers encoder (see `hf_encoder`)
    adapters.safetensors  other kinds (bottleneck adapters, prompt, BitFit, full): '<set>.<key>' tensors,
                          keys as AdaptedModel / the PEFT views name them ('3.down.weight': block 3's W_down)

AdapterHub's `adapters` library would be the ecosystem format for bottleneck adapters, but every
release of it pins a transformers 4.x (`adapters` 1.3.0: transformers ~= 4.57.6; this project
runs transformers 5) and it supports neither ViLT nor this project's minivl/foundation
backbones, so bottleneck adapters use the documented layout above, which `feddat predict` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from feddat import config as config_mod
from feddat.config import Config
# The engines write clients.json when they load the data, and this module reads it: the index
# lives in the data layer below both (an engine never imports this module).
from feddat.data.clients import CLIENTS_FILE, client_record, write_client_index  # noqa: F401
from feddat.data.types import Batch
from feddat.runtime import load_tensors, pick_device, read_json, save_tensors, write_json, write_text

Tensors = dict[str, torch.Tensor]
VIEWS = ("global", "personal")
EXPORT_FILE = "feddat_model.json"
EXPORT_FORMAT = "feddat-model/1"


class ModelNotFound(FileNotFoundError):
    """The run or export does not hold the model asked for; the message says what it holds."""


# ---- every client's answers, kept beside the run --------------------------------------------


def client_index(run_dir: Path, cfg: Config) -> dict[str, dict]:
    """name -> client record: from clients.json, or for a run written before it existed (or on
    Flower's SuperLink, which never sees the data) rebuilt from the data source, answers only."""
    path = Path(run_dir) / CLIENTS_FILE
    if path.is_file():
        return {c["name"]: c for c in read_json(path)["clients"]}
    from feddat.data.clients import answer_vocabulary
    from feddat.data.sources import raw_clients

    out = {}
    for raw in raw_clients(cfg, with_images=False):
        answers = list(raw.classes) if raw.classes else answer_vocabulary(raw.train.answers, cfg.data.max_answers)
        out[raw.name] = {"name": raw.name, "answers": answers, "task": raw.task, "images_per_example": 1 if raw.train.images2 is None else 2, "soft_targets": raw.train.answer_lists is not None}
    return out


# ---- what one client's model is -------------------------------------------------------------


@dataclass
class Deployment:
    """A client's model, as tensors: the PEFT sets to load, the ones that act, the head."""

    cfg: Config
    method: str
    client: dict  # client_record
    view: str
    sets: dict[str, Tensors]  # set name -> state, as Method.model.load_adapter takes it
    active: tuple[str, ...]
    path: dict = field(default_factory=dict)  # where the active sets differ by site (feddat.branch_site)
    head: Tensors = field(default_factory=dict)  # TaskHead state_dict


def prefixed(state: Tensors, prefix: str) -> Tensors:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def deployment(cfg: Config, method_name: str, client: dict, view: str, shared: Tensors, state: Tensors) -> Deployment:
    """Which sets and head make `view` of `method` (the same ones its `evaluate` scores)."""
    from feddat.algorithms import METHODS
    from feddat.algorithms.ditto import PERSONAL, Ditto
    from feddat.algorithms.feddat import TEACHERS, FedDAT
    from feddat.algorithms.head_only import HeadOnly
    from feddat.algorithms.local import LocalOnly
    from feddat.algorithms.scaffold import CONTROL, Scaffold

    cls = METHODS[method_name]
    if view not in VIEWS:
        raise ValueError(f"view '{view}' is not one of: {', '.join(VIEWS)}")
    if view == "personal" and not cls.personal:
        raise ValueError(f"method '{method_name}' has no personal view (it deploys one model per client: A_s + head); use --view global")
    head = prefixed(state, "head")
    if view == "personal" and issubclass(cls, FedDAT):
        # The teacher as evaluated: the current A_s as the frozen copy Â_s, with A_c; with
        # feddat.branch_site = k, A_s alone below site k.
        teacher, k = TEACHERS[cfg.feddat.teacher], cfg.feddat.branch_site
        path = {"below": ("shared",), "branch": k} if k else {}
        available = {"shared": shared, "frozen": shared, "client": prefixed(state, "client")}
        sets = {name: available[name] for name in (*teacher, *path.get("below", ()))}
        return Deployment(cfg, method_name, client, view, sets, teacher, path, head)
    if view == "personal" and issubclass(cls, Ditto):
        return Deployment(cfg, method_name, client, view, {PERSONAL: prefixed(state, PERSONAL)}, (PERSONAL,), {}, prefixed(state, "phead"))
    if issubclass(cls, HeadOnly):
        return Deployment(cfg, method_name, client, view, {}, (), {}, head)
    if issubclass(cls, LocalOnly):
        shared = LocalOnly.own_adapter(state)  # local-only deploys the client's own adapter
    elif issubclass(cls, Scaffold):
        shared = {k: v for k, v in shared.items() if not k.startswith(CONTROL + ".")}  # c travels with A_s but is no part of the model
    return Deployment(cfg, method_name, client, view, {"shared": shared}, ("shared",), {}, head)


def from_run(run_dir: str | Path, method: str | None, client: str, view: str = "global") -> Deployment:
    run_dir = Path(run_dir)
    config = run_dir / "config.toml"
    if not config.is_file():
        raise ModelNotFound(f"{run_dir} is neither a run directory (no config.toml) nor an export (no {EXPORT_FILE})")
    cfg = config_mod.load(config, {})
    trained = [m for m in cfg.run.methods if (run_dir / m / "shared_adapter.safetensors").is_file()]
    if method is None:
        if len(trained) != 1:
            raise ModelNotFound(f"{run_dir} holds the models of {', '.join(trained) or 'no finished method'}: name one with --method")
        method = trained[0]
    if method not in trained:
        raise ModelNotFound(f"{run_dir / method / 'shared_adapter.safetensors'} does not exist: this run finished {', '.join(trained) or 'no method'}")
    clients = client_index(run_dir, cfg)
    if client not in clients:
        raise ModelNotFound(f"{run_dir}: no client '{client}'; its clients are {', '.join(clients)}")
    state = latest_state(run_dir / "state" / method, client)
    shared = load_tensors(run_dir / method / "shared_adapter.safetensors")
    return deployment(cfg, method, clients[client], view, shared, state)


def latest_state(root: Path, client: str) -> Tensors:
    from feddat.engines.state import ClientStateStore

    if not root.is_dir():
        raise ModelNotFound(f"{root} does not exist: the run kept no client state for this method")
    state = ClientStateStore(root).load(client)
    if state is None:
        raise ModelNotFound(f"{root} holds no state for client '{client}' (it never trained)")
    return state


# ---- answering ----------------------------------------------------------------------------


def image_side(cfg: Config) -> int:
    """The side the data sources resize images to before the backbone sees them."""
    from feddat.data.folder import IMAGE_SIDE
    from feddat.data.sources import SYNTHETIC_IMAGE_SIDE

    if cfg.data.source == "public":
        return cfg.backbone.image_size
    return SYNTHETIC_IMAGE_SIDE if cfg.data.benchmark != "folder" else IMAGE_SIDE


class Predictor:
    """A client's model, ready to answer: `predict(images, questions)` on batches."""

    def __init__(self, deployed: Deployment, device: str = "auto", model=None):
        from feddat.algorithms import build_method
        from feddat.backbones import backbone_from_config
        from feddat.heads import TaskHead
        from feddat.peft.model import AdaptedModel

        self.deployed, self.cfg = deployed, deployed.cfg
        self.device = pick_device(device)
        if model is None:
            model = AdaptedModel.from_config(backbone_from_config(self.cfg.backbone).to(self.device), self.cfg.adapter)
        self.backbone = model.backbone
        self.method = build_method(deployed.method, self.cfg, model, self.device)
        for name, state in deployed.sets.items():
            self.method.model.load_adapter(name, state)
        c = deployed.client
        self.answers: list[str] = c["answers"]
        self.head = TaskHead(self.method.model.hidden_size, len(self.answers), c["images_per_example"])
        self.head.load_state_dict(deployed.head)
        self.head.to(self.device).eval()
        self.side = image_side(self.cfg)

    @property
    def images_per_example(self) -> int:
        return self.deployed.client["images_per_example"]

    def read_images(self, images: Sequence) -> np.ndarray:
        """Paths, PIL images or uint8 arrays -> (N, side, side, 3) uint8, as the data sources
        prepare images (RGB, bicubic resize); a pair per example for two-image tasks."""
        from PIL import Image

        from feddat.data.folder import load_image

        def one(item) -> np.ndarray:
            if isinstance(item, (str, Path)):
                return load_image(Path(item), self.side)
            if isinstance(item, Image.Image):
                return np.asarray(item.convert("RGB").resize((self.side, self.side), Image.BICUBIC), dtype=np.uint8)
            return np.asarray(item, dtype=np.uint8)

        if self.images_per_example == 1:
            return np.stack([one(i) for i in images])
        if any(len(pair) != self.images_per_example for pair in images):
            raise ValueError(f"client '{self.deployed.client['name']}' answers statements about {self.images_per_example} images: give a pair per example")
        return np.stack([np.stack([one(i) for i in pair]) for pair in images])

    @torch.no_grad()
    def logits(self, images: Sequence, questions: Sequence[str]) -> torch.Tensor:
        """(N, answers) float32 logits of the deployed model for N (image, question) examples."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions: give one image (or pair) per question")
        pixels = self.read_images(images)
        if self.images_per_example == 1:
            features = self.backbone.encode_images(pixels)
        else:
            n, m = pixels.shape[:2]
            features = self.backbone.encode_images(pixels.reshape(n * m, *pixels.shape[2:]))
            features = features.reshape(n, m, *features.shape[1:])
        ids, mask = self.backbone.tokenize(list(questions))
        batch = Batch(features.to(self.device), ids.to(self.device), mask.to(self.device), targets=torch.empty(0))
        self.method.seed_forward("eval")  # as evaluation does: ViLT draws on torch's RNG in forward
        with self.method.model.active(*self.deployed.active, **self.deployed.path):
            return self.method.logits(self.head, batch).float().cpu()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        # A soft-target (VQA) head scores each answer on its own (sigmoid); others pick one (softmax).
        return torch.sigmoid(logits) if self.deployed.client.get("soft_targets") else torch.softmax(logits, dim=-1)

    def predict(self, images: Sequence, questions: Sequence[str], top: int = 5) -> list[list[tuple[str, float]]]:
        """For each example, its `top` answers with their probabilities, most likely first."""
        probs = self.probabilities(self.logits(images, questions))
        values, index = probs.topk(min(top, probs.shape[-1]), dim=-1)
        return [[(self.answers[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())] for row_p, row_i in zip(values, index)]

    def describe(self) -> str:
        d = self.deployed
        names = {"shared": "A_s", "frozen": "Â_s", "client": "A_c", "personal": "personal adapter"}
        sets = " and ".join(names.get(n, n) for n in d.active)
        what = (f"mean of {sets}" if len(d.active) > 1 else sets or "no adapter") + " + head"
        return f"{d.method}, {d.view} view ({what}), client '{d.client['name']}', {len(self.answers)} answers, backbone {self.cfg.backbone.name}"


def load(path: str | Path, method: str | None = None, client: str | None = None, view: str = "global", device: str = "auto") -> Predictor:
    """A client's deployed model from a run directory (method, client, view) or an export folder."""
    path = Path(path)
    if (path / EXPORT_FILE).is_file():
        return Predictor(from_export(path), device)
    if client is None:
        raise ValueError(f"{path} is a run directory: name the client (--client)")
    return Predictor(from_run(path, method, client, view), device)


def predict(path: str | Path, images: Sequence, questions: Sequence[str], method: str | None = None, client: str | None = None, view: str = "global", top: int = 5) -> list[list[tuple[str, float]]]:
    """One call: load the model (see `load`) and answer a batch."""
    return load(path, method, client, view).predict(images, questions, top)


# ---- exports ------------------------------------------------------------------------------


def peft_kind(method: str) -> str:
    """The PEFT module a method trains: bottleneck, lora, prompt, bitfit, full or head (none)."""
    from feddat.algorithms import METHODS
    from feddat.algorithms.head_only import HeadOnly

    kinds = {"fedavg_lora": "lora", "feddat_lora": "lora", "fedavg_prompt": "prompt", "fedavg_bitfit": "bitfit", "fedavg_full": "full"}
    return "head" if issubclass(METHODS[method], HeadOnly) else kinds.get(method, "bottleneck")


def hf_encoder(backbone) -> tuple[torch.nn.Module, str]:
    """The transformers model inside `backbone` that holds its adapted blocks, and the blocks'
    module path in it ('encoder.layer'): what a peft adapter of this backbone attaches to."""
    from transformers import PreTrainedModel

    for module in backbone.modules():
        if isinstance(module, PreTrainedModel):
            for name, inner in module.named_modules():
                if inner is backbone.blocks:
                    return module, name
    raise ValueError(f"backbone {type(backbone).__name__} has no transformers model holding its blocks: its LoRA cannot be written in peft's format")


def base_model_source(cfg: Config) -> str:
    """Where the peft adapter's base model comes from (adapter_config's base_model_name_or_path)."""
    if cfg.backbone.name == "vilt":
        return cfg.backbone.path
    if cfg.backbone.name == "minivl":
        from feddat.backbones.minivl import minilm_path

        return str(minilm_path())
    return ""  # foundation: its encoder is MiniLM with the checkpoint's delta merged in (README)


def peft_tensors(deployed: Deployment, prefix: str) -> tuple[Tensors, list[str]]:
    """The active LoRA sets as one peft adapter. n sets acting in mean mode add (α/r)/n · Σ B_i A_i;
    stacking their A rows and B columns gives one LoRA of rank n·r with the same update when its
    lora_alpha stays α (peft scales by lora_alpha / rank)."""
    sets = [deployed.sets[name] for name in deployed.active]
    tensors, targets = {}, []
    for key in sorted(k for k in sets[0] if k.endswith(".lora_A")):
        module = key[: -len(".lora_A")]  # '<block>.<path in block>'
        full = f"{prefix}.{module}"
        targets.append(full)
        tensors[f"base_model.model.{full}.lora_A.weight"] = torch.cat([s[f"{module}.lora_A"] for s in sets], dim=0)
        tensors[f"base_model.model.{full}.lora_B.weight"] = torch.cat([s[f"{module}.lora_B"] for s in sets], dim=1)
    return tensors, targets


def export(run_dir: str | Path, method: str | None, client: str, out: str | Path, view: str = "global") -> Path:
    """Write one client's deployed model to `out` (layout in the module docstring)."""
    deployed = from_run(run_dir, method, client, view)
    out = Path(out)
    kind = peft_kind(deployed.method)
    info = {
        "format": EXPORT_FORMAT,
        "method": deployed.method,
        "view": deployed.view,
        "kind": kind,
        "client": deployed.client,
        "active": list(deployed.active),
        "path": {k: list(v) if isinstance(v, tuple) else v for k, v in deployed.path.items()},
        "source_run": str(Path(run_dir).resolve()),
    }
    if kind == "lora":
        write_peft_adapter(deployed, out, info)
    else:
        save_tensors(out / "adapters.safetensors", {f"{name}.{k}": v for name, state in deployed.sets.items() for k, v in state.items()})
    save_tensors(out / "head.safetensors", deployed.head)
    write_text(out / "config.toml", deployed.cfg.to_toml())
    write_json(out / EXPORT_FILE, info)  # last: a folder with this file is a complete export
    return out


def write_peft_adapter(deployed: Deployment, out: Path, info: dict) -> None:
    from peft import LoraConfig

    from feddat.backbones import backbone_from_config

    _, prefix = hf_encoder(backbone_from_config(deployed.cfg.backbone))
    tensors, targets = peft_tensors(deployed, prefix)
    p = deployed.cfg.peft
    config = LoraConfig(r=p.lora_rank * len(deployed.active), lora_alpha=p.lora_alpha, target_modules=targets, lora_dropout=0.0, bias="none", base_model_name_or_path=base_model_source(deployed.cfg) or None, inference_mode=True)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_tensors(out / "adapter_model.safetensors", tensors, metadata={"format": "pt"})
    info.update(lora_prefix=prefix, lora_rank=p.lora_rank, lora_alpha=p.lora_alpha)


def from_export(folder: str | Path) -> Deployment:
    """The deployment an `export` folder holds (LoRA read back from its peft files)."""
    folder = Path(folder)
    info = read_json(folder / EXPORT_FILE)
    if info.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{folder / EXPORT_FILE}: format {info.get('format')!r}, expected {EXPORT_FORMAT!r}")
    cfg = config_mod.load(folder / "config.toml", {})
    active = tuple(info["active"])
    if info["kind"] == "lora":
        sets = sets_from_peft(load_tensors(folder / "adapter_model.safetensors"), info["lora_prefix"], active, info["lora_rank"])
    else:
        stored = load_tensors(folder / "adapters.safetensors")
        sets = {name: prefixed(stored, name) for name in dict.fromkeys(k.split(".")[0] for k in stored)}
    path = {k: tuple(v) if isinstance(v, list) else v for k, v in info.get("path", {}).items()}
    return Deployment(cfg, info["method"], info["client"], info["view"], sets, active, path, load_tensors(folder / "head.safetensors"))


def sets_from_peft(tensors: Tensors, prefix: str, active: tuple[str, ...], rank: int) -> dict[str, Tensors]:
    """Undo `peft_tensors`: the stacked LoRA split back into its sets, keyed as LoraView keys them."""
    head = f"base_model.model.{prefix}."
    sets: dict[str, Tensors] = {name: {} for name in active}
    for key, value in tensors.items():
        if not key.startswith(head):
            raise ValueError(f"peft adapter key '{key}' is not under '{head}'")
        module, part = key[len(head) :].rsplit(".", 2)[0], key.rsplit(".", 2)[1]  # ('3.attention.attention.query', 'lora_A')
        chunks = value.split(rank, dim=0 if part == "lora_A" else 1)
        for name, chunk in zip(active, chunks):
            sets[name][f"{module}.{part}"] = chunk.contiguous()
    return sets
