"""Using a trained model: one client's deployed model from a run (or an export), its answers to
new questions, and exports in the ecosystem's formats.

A client's model is the frozen backbone, the PEFT sets of the chosen view and the client's
private head:

- global view: the final shared module A_s with the head (docs/design.md §4: the deployed model);
- personal view, where the method has one: FedDAT's Dual-Adapter Teacher (A_s as Â_s, averaged
  with the client's A_c; `feddat.teacher` picks which), Ditto's personal adapter and head.

`load(path, method, client, view)` reads it from a run directory (`<method>/shared_adapter.safetensors`,
`state/<method>/<client>.rNNNNN.safetensors`, the backbone named in `config.toml`) or from an
export folder (`export`); `Predictor.predict` answers batches of (image, question).

Exports (`export`) are self-contained folders, written to a new or empty folder or over an earlier
export (never over anything else):

    feddat_model.json     what the model is: method, client, view, PEFT kind, active sets, answers, task,
                          the backbone it was trained on (name; foundation: the checkpoint's sha256)
    config.toml           the run's configuration (the backbone is rebuilt from its [backbone] table)
    head.safetensors      the client's head (Linear, LayerNorm, GELU, Linear; keys as in torch)
    adapter_config.json   LoRA kinds: peft's adapter format, loadable with peft.PeftModel.from_pretrained
    adapter_model.safetensors      on the backbone's transformers encoder (see `hf_encoder`; `lora_base`
                          rebuilds that encoder as it was trained on)
    foundation-checkpoint/  foundation backbone: the checkpoint the model was trained on (card.json and
                          its tensors: the encoder's pretraining delta, the projector), which the
                          backbone is rebuilt from; its encoder is not plain MiniLM
    adapters.safetensors  other kinds (bottleneck adapters, prompt, BitFit, full): '<set>.<key>' tensors,
                          keys as AdaptedModel / the PEFT views name them ('3.down.weight': block 3's W_down)

AdapterHub's `adapters` library would be the ecosystem format for bottleneck adapters, but every
release of it pins a transformers 4.x (`adapters` 1.3.0: transformers ~= 4.57.6; this project
runs transformers 5) and it supports neither ViLT nor this project's minivl/foundation
backbones, so bottleneck adapters use the documented layout above, which `feddat predict` reads.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from feddat import config as config_mod
from feddat.backbones import backbone_identity
from feddat.config import Config
# The engines write clients.json when they load the data, and this module reads it: the index
# lives in the data layer below both (an engine never imports this module).
from feddat.data.clients import CLIENTS_FILE, client_record, write_client_index  # noqa: F401
from feddat.data.clients import Split
from feddat.runtime import load_tensors, load_tensors_and_metadata, pick_device, read_json, save_tensors, write_json, write_text

Tensors = dict[str, torch.Tensor]
VIEWS = ("global", "personal")
EXPORT_FILE = "feddat_model.json"
EXPORT_FORMAT = "feddat-model/1"
CHECKPOINT_DIR = "foundation-checkpoint"  # a foundation export's copy of the checkpoint it was trained on
#: Every file an export writes: an `--out` holding only these (and feddat_model.json) is an
#: earlier export, which a new export replaces; any other non-empty folder is refused.
EXPORT_FILES = (EXPORT_FILE, "config.toml", "head.safetensors", "adapter_config.json", "adapter_model.safetensors", "adapters.safetensors", CHECKPOINT_DIR)


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
    # where it was read from, for messages: 'config', 'answers' (clients.json or feddat_model.json),
    # 'head' (the file holding the head), 'sets' (the files holding the PEFT sets), 'run' (an export's run)
    sources: dict = field(default_factory=dict)


def prefixed(state: Tensors, prefix: str) -> Tensors:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def deployment(cfg: Config, method_name: str, client: dict, view: str, shared: Tensors, state: Tensors) -> Deployment:
    """Which sets and head make `view` of `method` (the same ones its `evaluate` scores)."""
    from feddat.algorithms import METHODS
    from feddat.algorithms.ditto import PERSONAL, Ditto
    from feddat.algorithms.feddat import TEACHERS, FedDAT
    from feddat.algorithms.feddat.method import personal_frozen
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
        # The teacher as evaluated: the current A_s (or the received one, feddat.personal_frozen) as Â_s, with A_c; with
        # feddat.branch_site = k, A_s alone below site k.
        teacher, k = TEACHERS[cfg.feddat.teacher], cfg.feddat.branch_site
        path = {"below": ("shared",), "branch": k} if k else {}
        available = {"shared": shared, "frozen": personal_frozen(cfg, shared, state), "client": prefixed(state, "client")}
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


def from_run(run_dir: str | Path, method: str | None, client: str, view: str | None = "global", state_dir: str | Path | None = None) -> Deployment:
    """The model of `client` in a run directory; its private state is looked for where the
    engine kept it (`state_roots`), first under `state_dir` (a Flower SuperNode's state-dir)."""
    run_dir = Path(run_dir)
    view = view or "global"
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
    shared_file = run_dir / method / "shared_adapter.safetensors"
    shared, metadata = load_tensors_and_metadata(shared_file)
    if "selected_round" in metadata:  # federation.select_round = best: the test scored that round's model
        state, state_file = selected_state(run_dir, method, client, int(metadata["selected_round"]))
    else:
        state, state_file = latest_state(state_roots(run_dir, cfg, method, client, state_dir), client, flower=trained_on_flower(run_dir, method))
    check_trained_on({k.removeprefix("backbone_"): v for k, v in metadata.items() if k.startswith("backbone_")}, cfg, shared_file, config)
    deployed = deployment(cfg, method, clients[client], view, shared, state)
    index = run_dir / CLIENTS_FILE
    deployed.sources = {
        "config": config,
        "answers": index if index.is_file() else f"the data source of {config} (the run has no {CLIENTS_FILE})",
        "head": state_file,
        "sets": f"{shared_file} and {state_file}",
    }
    return deployed


def selected_state(run_dir: Path, method: str, client: str, round_: int) -> tuple[Tensors, Path]:
    """A client's private state in the model of the round selected by validation (the run's
    best-rNNNNN snapshot, which its one test evaluation scored), not in its last round's."""
    from feddat.engines.selection import BestSnapshots

    snapshots = BestSnapshots(run_dir / "checkpoint" / method)
    snapshot = snapshots.load()
    if snapshot is None or snapshot.round != round_:
        raise ModelNotFound(f"{run_dir / method / 'shared_adapter.safetensors'} is round {round_}'s model (selected by validation), but {snapshots.root} holds no best-r{round_:05d}.safetensors with its clients' states")
    if client not in snapshot.states:
        raise ModelNotFound(f"client '{client}' was not evaluated in round {round_}, the round selected by validation: its state is not in the selected model ({snapshots.rounds()[-1][1]})")
    return snapshot.states[client], snapshots.rounds()[-1][1]


def state_roots(run_dir: Path, cfg: Config, method: str, client: str, state_dir: str | Path | None = None) -> list[Path]:
    """Where a client's private state for `method` may be, in order: under `state_dir` (a Flower
    SuperNode's --node-config state-dir: STATE_DIR/<run name>/<method>, or STATE_DIR/<method>),
    RUN_DIR/state/<method> (`feddat run`), RUN_DIR/node-state/<client>/<method> (`feddat flower
    simulate`: virtual nodes keep it in the run directory), and the state-dir `feddat flower
    local` gives its nodes (RUN_DIR.flower/node-state/<client>/<run name>/<method>)."""
    names = list(dict.fromkeys(n for n in (cfg.run.name, run_dir.name) if n))  # the nodes' folder: the run name (transport.run_key)
    roots = []
    if state_dir is not None:
        roots += [Path(state_dir) / name / method for name in names] + [Path(state_dir) / method]
    roots += [run_dir / "state" / method, run_dir / "node-state" / client / method]
    roots += [run_dir.parent / f"{run_dir.name}.flower" / "node-state" / client / name / method for name in names]
    return roots


def trained_on_flower(run_dir: Path, method: str) -> bool:
    """Whether `method` of the run was trained by Flower's engines (summary.json says so)."""
    summary = run_dir / "summary.json"
    methods = read_json(summary).get("methods", []) if summary.is_file() else []
    return any(m.get("method") == method and m.get("engine") == "flower" for m in methods if isinstance(m, dict))


def latest_state(roots: Sequence[Path], client: str, flower: bool = False) -> tuple[Tensors, Path]:
    """The client's last stored state and its file, from the first of `roots` that holds one."""
    from feddat.engines.state import ClientStateStore

    for root in roots:
        if root.is_dir():  # checked first: a ClientStateStore makes its folder
            store = ClientStateStore(root)
            versions = store.versions(client)
            if versions:
                path = versions[-1][1]
                return store.load_version(client, path), path
    looked = ", ".join(str(r) for r in roots)
    if not flower:
        raise ModelNotFound(f"no state of client '{client}' in {looked} (it never trained)")
    raise ModelNotFound(
        f"no state of client '{client}' in {looked}: on a Flower deployment its SuperNode kept it on its own host, under the node's "
        f"state-dir (--node-config 'state-dir=\"DIR\"'); give that folder, or a copy of it, with --state-dir (or it never trained)"
    )


# ---- answering ----------------------------------------------------------------------------


class Predictor:
    """A client's model, ready to answer: `predict(images, questions)` on batches."""

    def __init__(self, deployed: Deployment, device: str = "auto", model=None):
        from feddat.algorithms import build_method
        from feddat.backbones import backbone_from_config
        from feddat.heads import AnswerReadout, TaskHead
        from feddat.peft.model import AdaptedModel

        self.deployed, self.cfg = deployed, deployed.cfg
        self.device = pick_device(device)
        if model is None:
            model = AdaptedModel.from_config(backbone_from_config(self.cfg.backbone).to(self.device), self.cfg.adapter)
        self.backbone = model.backbone
        self.method = build_method(deployed.method, self.cfg, model, self.device)
        sources = deployed.sources
        for name, state in deployed.sets.items():
            try:
                self.method.model.load_adapter(name, state)
            except ValueError as err:  # names no file: say which, and which backbone they met
                where = sources.get("sets", "the model's PEFT sets")
                raise ValueError(f"{where}: {err} (backbone '{self.cfg.backbone.name}' of {sources.get('config', 'its config')}); were they trained on another backbone?") from None
        c = deployed.client
        self.answers: list[str] = c["answers"]
        self.decodes = self.method.decodes
        # An answer decoder's reading of the client's answer list (what its evaluation ranked).
        self.candidates = self.backbone.tokenize_answers(self.answers) if self.decodes else None
        # An answer decoder ranks the client's answers by likelihood (as its evaluation did): no head.
        self.head = AnswerReadout() if self.decodes else TaskHead(self.method.model.hidden_size, len(self.answers), c["images_per_example"])
        try:
            self.head.load_state_dict(deployed.head)
        except RuntimeError:  # torch's "size mismatch for 3.weight" names neither file nor client
            raise ValueError(head_mismatch(deployed, self.head)) from None
        self.head.to(self.device).eval()
        from feddat.data.sources import image_reading

        self.side, self.upright = image_reading(self.cfg)  # the data loader's: as evaluation saw the images

    @property
    def images_per_example(self) -> int:
        return self.deployed.client["images_per_example"]

    def read_images(self, images: Sequence) -> np.ndarray:
        """Paths, PIL images or uint8 arrays -> (N, side, side, 3) uint8, read as the run's data
        sources read them (`data.sources.image_reading`: the same side and orientation, with the
        same function); arrays are taken as they are. A pair per example for two-image tasks."""
        from PIL import Image

        from feddat.data.folder import fit_image, load_image

        def one(item) -> np.ndarray:
            if isinstance(item, (str, Path)):
                return load_image(Path(item), self.side, upright=self.upright)
            if isinstance(item, Image.Image):
                return fit_image(item, self.side, upright=self.upright)
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
        split = Split(features, ids, mask, torch.zeros(len(questions), dtype=torch.long), candidates=self.candidates)
        self.method.seed_forward("eval")  # as evaluation does: ViLT draws on torch's RNG in forward
        with self.method.model.active(*self.deployed.active, **self.deployed.path):
            return self.method.answer_scores(self.head, split, torch.arange(len(questions))).float().cpu()

    @torch.no_grad()
    def generate(self, images: Sequence, questions: Sequence[str]) -> list[str]:
        """An answer decoder's open-ended answers: its greedy decoding, free text that need not
        be one of the client's answers (what the `-generated` scores of its run scored)."""
        if not self.decodes:
            raise ValueError(f"backbone '{self.cfg.backbone.name}' has no answer decoder: it answers from its client's list (predict)")
        features = self.backbone.encode_images(self.read_images(images))
        ids, mask = self.backbone.tokenize(list(questions))
        split = Split(features, ids, mask, torch.zeros(len(questions), dtype=torch.long))
        with self.method.model.active(*self.deployed.active, **self.deployed.path):
            return self.method.generate(split, torch.arange(len(questions)))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        # A soft-target (VQA) head scores each answer on its own (sigmoid); others pick one (softmax).
        # An answer decoder's log-likelihoods, normalised over the list: each answer's chance
        # given that the answer is one of them.
        return torch.sigmoid(logits) if self.deployed.client.get("soft_targets") and not self.decodes else torch.softmax(logits, dim=-1)

    def predict(self, images: Sequence, questions: Sequence[str], top: int = 5) -> list[list[tuple[str, float]]]:
        """For each example, its `top` answers with their probabilities, most likely first."""
        if not isinstance(top, int) or top < 1:
            raise ValueError(f"top must be a positive integer (the answers to list), got {top!r}")
        probs = self.probabilities(self.logits(images, questions))
        values, index = probs.topk(min(top, probs.shape[-1]), dim=-1)
        return [[(self.answers[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())] for row_p, row_i in zip(values, index)]

    def describe(self) -> str:
        d = self.deployed
        names = {"shared": "A_s", "frozen": "Â_s", "client": "A_c", "personal": "personal adapter"}
        sets = " and ".join(names.get(n, n) for n in d.active)
        what = (f"mean of {sets}" if len(d.active) > 1 else sets or "no adapter") + (" + answer decoder" if self.decodes else " + head")
        return f"{d.method}, {d.view} view ({what}), client '{d.client['name']}', {len(self.answers)} answers, backbone {self.cfg.backbone.name}"


def head_mismatch(deployed: Deployment, head) -> str:
    """Why a stored head does not load into the TaskHead its client record describes."""
    from feddat.backbones.state import check_state

    c, src = deployed.client, deployed.sources
    where, index = src.get("head", "the stored head"), src.get("answers", "the client's record")
    out_key = f"{len(head) - 1}.weight"  # the last Linear: one row per answer
    stored = deployed.head.get(out_key)
    if stored is not None and stored.ndim == 2 and stored.shape[0] != head.num_answers:
        return (f"{where}: the head of client '{c['name']}' scores {stored.shape[0]} answers, but {index} lists {head.num_answers} for it; "
                f"they do not belong together (was {index} edited, or the state copied from another run?)")
    problem = check_state(deployed.head, dict(head.state_dict())) or "its tensors do not fit"
    return (f"{where}: the head of client '{c['name']}' does not fit {index} ({head.num_answers} answers, {head.images} image(s) per example) "
            f"on backbone '{deployed.cfg.backbone.name}': {problem}")


def load(path: str | Path, method: str | None = None, client: str | None = None, view: str | None = None, device: str = "auto", state_dir: str | Path | None = None) -> Predictor:
    """A client's deployed model from a run directory (method, client, view; view None is the
    global view; state_dir: where a Flower SuperNode kept the client's state, see `state_roots`)
    or an export folder, which holds one model: a method, client or view given that is not the
    export's is refused, naming what it holds."""
    path = Path(path)
    if (path / EXPORT_FILE).is_file():
        info = export_info(path)
        held = {"method": info["method"], "client": info["client"]["name"], "view": info["view"]}
        asked = {"method": method, "client": client, "view": view}
        wrong = [f"{what} '{asked[what]}'" for what in held if asked[what] is not None and asked[what] != held[what]]
        if wrong:
            source = f" ({info['source_run']})" if info.get("source_run") else ""
            raise ModelNotFound(
                f"{path} is an export of one model: {held['method']}, {held['view']} view, client '{held['client']}'; "
                f"it holds no {' or '.join(wrong)}. Leave those options out, or give the run directory it came from{source}"
            )
        return Predictor(from_export(path, info), device)
    if client is None:
        raise ValueError(f"{path} is a run directory: name the client (--client)")
    return Predictor(from_run(path, method, client, view, state_dir), device)


def predict(path: str | Path, images: Sequence, questions: Sequence[str], method: str | None = None, client: str | None = None, view: str | None = None, top: int = 5) -> list[list[tuple[str, float]]]:
    """One call: load the model (see `load`) and answer a batch."""
    return load(path, method, client, view).predict(images, questions, top)


# ---- exports ------------------------------------------------------------------------------


def peft_kind(method: str) -> str:
    """The PEFT module a method trains: bottleneck, lora, prompt, bitfit, full or head (none)."""
    from feddat.algorithms import METHODS
    from feddat.algorithms.head_only import HeadOnly

    kinds = {"fedavg_lora": "lora", "feddat_lora": "lora", "fedavg_prompt": "prompt", "fedavg_bitfit": "bitfit", "fedavg_full": "full"}
    return "head" if issubclass(METHODS[method], HeadOnly) else kinds.get(method, "bottleneck")


def hf_encoder(backbone) -> tuple[torch.nn.Module, list[str]]:
    """The transformers model inside `backbone` that holds its adapted blocks, and each block's
    module path in it ('encoder.layer.3'): what a peft adapter of this backbone attaches to. The
    blocks are found by identity, so they need not be one list of that model: BLIP's are the
    text encoder's layers then the text decoder's ('text_decoder.bert.encoder.layer.0')."""
    from transformers import PreTrainedModel

    for module in backbone.modules():  # outermost first: BlipForQuestionAnswering, not its text encoder
        if isinstance(module, PreTrainedModel):
            names = {id(inner): name for name, inner in module.named_modules()}
            if all(id(block) in names for block in backbone.blocks):
                return module, [names[id(block)] for block in backbone.blocks]
    raise ValueError(f"backbone {type(backbone).__name__} has no transformers model holding its blocks: its LoRA cannot be written in peft's format")


def common_prefix(blocks: Sequence[str]) -> str:
    """'encoder.layer' where block i is 'encoder.layer.i' (one list of the model); '' otherwise."""
    prefix = blocks[0].rsplit(".", 1)[0] if blocks else ""
    return prefix if prefix and list(blocks) == [f"{prefix}.{i}" for i in range(len(blocks))] else ""


def base_model_source(cfg: Config) -> str:
    """Where the peft adapter's base model comes from (adapter_config's base_model_name_or_path):
    none for foundation, whose encoder no transformers folder holds (see `lora_base_note`)."""
    if cfg.backbone.name in ("vilt", "blip"):
        return cfg.backbone.path
    if cfg.backbone.name == "minivl":
        from feddat.backbones.minivl import minilm_path

        return str(minilm_path())
    return ""


def lora_base_note(cfg: Config) -> str:
    """What a LoRA export's adapter goes on (feddat_model.json's 'lora_base'): for foundation not
    the MiniLM a plain peft load would take, but MiniLM with the checkpoint's delta merged."""
    if cfg.backbone.name == "foundation":
        return (f"foundation: all-MiniLM-L6-v2 with the pretraining delta of {CHECKPOINT_DIR}/ merged into its weights (not plain MiniLM), "
                f"and that checkpoint's projector and vision tower for the image tokens; rebuild it with feddat.lora_base(EXPORT)")
    return f"{cfg.backbone.name}: the transformers model at {base_model_source(cfg)} as it is (feddat.lora_base(EXPORT) builds it with the image side)"


def peft_tensors(deployed: Deployment, blocks: Sequence[str]) -> tuple[Tensors, list[str]]:
    """The active LoRA sets as one peft adapter on the modules `blocks` (each block's path in the
    transformers model) names. n sets acting in mean mode add (α/r)/n · Σ B_i A_i; stacking their
    A rows and B columns gives one LoRA of rank n·r with the same update when its lora_alpha
    stays α (peft scales by lora_alpha / rank)."""
    sets = [deployed.sets[name] for name in deployed.active]
    tensors, targets = {}, []
    for key in sorted(k for k in sets[0] if k.endswith(".lora_A")):
        module = key[: -len(".lora_A")]  # '<block>.<path in block>'
        block, path = module.split(".", 1)
        full = f"{blocks[int(block)]}.{path}"
        targets.append(full)
        tensors[f"base_model.model.{full}.lora_A.weight"] = torch.cat([s[f"{module}.lora_A"] for s in sets], dim=0)
        tensors[f"base_model.model.{full}.lora_B.weight"] = torch.cat([s[f"{module}.lora_B"] for s in sets], dim=1)
    return tensors, targets


def check_trained_on(recorded: dict | None, cfg: Config, where: Path, config: Path) -> None:
    """Refuse a model whose recorded backbone (`where`: the file recording it) is not the one
    `config` builds; a model from before feddat recorded it (None) is taken as it is."""
    here = backbone_identity(cfg.backbone)
    if recorded and recorded != here:
        raise ValueError(f"{where}: the model was trained on backbone {describe_identity(recorded)}, but {config} builds {describe_identity(here)}; its adapters and head answer only on the first")


def check_out_folder(out: Path) -> bool:
    """Whether `out` is an earlier export (which an export replaces); refuse a file, or a non-empty
    folder that is not one, so that an export never writes over a run or anything else."""
    if not out.exists() and not out.is_symlink():
        return False
    if not out.is_dir():
        raise ValueError(f"export folder {out} exists and is not a folder: choose a new or empty folder for --out")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return False
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    if EXPORT_FILE not in entries:
        raise ValueError(
            f"export folder {out} is not empty (it holds {shown}) and is not an earlier export (no {EXPORT_FILE}): "
            "an export replaces only an earlier export, never other files; choose a new or empty folder for --out"
        )
    foreign = [n for n in entries if n not in EXPORT_FILES]
    if foreign:
        raise ValueError(
            f"export folder {out} holds an earlier export but also {', '.join(foreign[:5])}, which no export writes: "
            "replacing it would delete them; move them away or choose a new or empty folder for --out"
        )
    return True


def export(run_dir: str | Path, method: str | None, client: str, out: str | Path, view: str | None = "global", state_dir: str | Path | None = None) -> Path:
    """Write one client's deployed model to `out` (layout in the module docstring): a new or empty
    folder, or an earlier export, which is replaced as a whole. The files are written to a new
    folder beside `out` and put in its place at the end: a failed export leaves `out` as it was."""
    out = Path(out)
    check_out_folder(out)
    deployed = from_run(run_dir, method, client, view, state_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        staging = out.parent / f".{out.name}.{secrets.token_hex(6)}.export"
        try:
            staging.mkdir()  # the mode any new folder gets (umask), not mkdtemp's owner-only one
            break
        except FileExistsError:
            continue
    old = None
    try:
        write_export(deployed, staging, run_dir)
        if check_out_folder(out):  # again: the folder may have changed while the model was written
            old = out.parent / f".{out.name}.{secrets.token_hex(6)}.old"
            os.rename(out, old)
        os.replace(staging, out)  # onto nothing, or an empty folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not out.exists():
            os.rename(old, out)  # the earlier export back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def write_export(deployed: Deployment, out: Path, run_dir: str | Path) -> None:
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
        "backbone": backbone_identity(deployed.cfg.backbone),
    }
    if kind == "lora":
        write_peft_adapter(deployed, out, info)
    else:
        save_tensors(out / "adapters.safetensors", {f"{name}.{k}": v for name, state in deployed.sets.items() for k, v in state.items()})
    if deployed.cfg.backbone.name == "foundation":
        copy_checkpoint(deployed.cfg, out / CHECKPOINT_DIR)
    save_tensors(out / "head.safetensors", deployed.head)
    write_text(out / "config.toml", deployed.cfg.to_toml())
    write_json(out / EXPORT_FILE, info)  # last: a folder with this file is a complete export


def write_peft_adapter(deployed: Deployment, out: Path, info: dict) -> None:
    from peft import LoraConfig

    from feddat.backbones import backbone_from_config

    _, blocks = hf_encoder(backbone_from_config(deployed.cfg.backbone))
    tensors, targets = peft_tensors(deployed, blocks)
    p = deployed.cfg.peft
    config = LoraConfig(r=p.lora_rank * len(deployed.active), lora_alpha=p.lora_alpha, target_modules=targets, lora_dropout=0.0, bias="none", base_model_name_or_path=base_model_source(deployed.cfg) or None, inference_mode=True)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_tensors(out / "adapter_model.safetensors", tensors, metadata={"format": "pt"})
    # lora_blocks: which block each module path is in, for reading the sets back (BLIP's blocks are
    # in two lists of the model, so no prefix says it); lora_prefix: the one list, where there is one.
    info.update(lora_prefix=common_prefix(blocks), lora_blocks=blocks, lora_rank=p.lora_rank, lora_alpha=p.lora_alpha, lora_base=lora_base_note(deployed.cfg))


def copy_checkpoint(cfg: Config, out: Path) -> None:
    """The foundation checkpoint the model was trained on (2-3 MiB: the encoder's delta and the
    projector; its card names the base weights), so that the export rebuilds the same backbone
    wherever it goes, whatever checkpoint this feddat packages."""
    from feddat.backbones.foundation import CARD_FILE, TENSORS_FILE, packaged_checkpoint, read_card

    source = Path(cfg.backbone.path) if cfg.backbone.path else packaged_checkpoint()
    out.mkdir()
    for name in (CARD_FILE, read_card(source).get("tensors", TENSORS_FILE)):
        shutil.copyfile(source / name, out / name)


#: feddat_model.json's keys that every export has, and their JSON types; LoRA exports add LORA_KEYS.
EXPORT_KEYS = {"format": str, "method": str, "view": str, "kind": str, "client": dict, "active": list}
CLIENT_KEYS = {"name": str, "answers": list, "images_per_example": int}
LORA_KEYS = {"lora_prefix": str, "lora_rank": int}
KINDS = ("bottleneck", "lora", "prompt", "bitfit", "full", "head")


def export_info(folder: str | Path) -> dict:
    """An export's feddat_model.json, refused (naming the file and the key) where it lacks what
    `from_export` needs."""
    from feddat.algorithms import METHODS

    path = Path(folder) / EXPORT_FILE
    info = read_json(path)
    if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: format {info.get('format') if isinstance(info, dict) else None!r}, expected {EXPORT_FORMAT!r}")

    def require(record: dict, keys: dict, where: str) -> None:
        for key, typ in keys.items():
            if key not in record:
                raise ValueError(f"{path} lacks '{where}{key}': it is not a complete feddat export (export the model again)")
            if not isinstance(record[key], typ) or (typ is int and isinstance(record[key], bool)):
                raise ValueError(f"{path}: '{where}{key}' is {record[key]!r}, expected a JSON {'object' if typ is dict else 'array' if typ is list else 'string' if typ is str else 'integer'}")

    require(info, EXPORT_KEYS, "")
    require(info["client"], CLIENT_KEYS, "client.")
    if info["kind"] == "lora":
        require(info, LORA_KEYS, "")
        blocks = info.get("lora_blocks", [])
        if not isinstance(blocks, list) or not all(isinstance(b, str) and b for b in blocks):
            raise ValueError(f"{path}: 'lora_blocks' is {blocks!r}, expected a JSON array of module paths")
    for key, value, allowed in (("method", info["method"], METHODS), ("view", info["view"], VIEWS), ("kind", info["kind"], KINDS)):
        if value not in allowed:
            raise ValueError(f"{path}: {key} '{value}' is not one of: {', '.join(allowed)}")
    return info


def from_export(folder: str | Path, info: dict | None = None) -> Deployment:
    """The deployment an `export` folder holds (LoRA read back from its peft files)."""
    folder = Path(folder)
    info = info or export_info(folder)
    json_file, config = folder / EXPORT_FILE, folder / "config.toml"
    cfg = export_config(folder, info)
    active = tuple(info["active"])
    if info["kind"] == "lora":
        sets_file = folder / "adapter_model.safetensors"
        tensors = load_tensors(sets_file)
        sets = sets_from_peft(tensors, export_blocks(info, tensors), active, info["lora_rank"])
    else:
        sets_file = folder / "adapters.safetensors"
        stored = load_tensors(sets_file)
        sets = {name: prefixed(stored, name) for name in dict.fromkeys(k.split(".")[0] for k in stored)}
    missing = [name for name in active if not sets.get(name)]
    if missing:
        raise ValueError(f"{sets_file} holds no tensors for the active set(s) {', '.join(missing)} that {json_file} names")
    path = {k: tuple(v) if isinstance(v, list) else v for k, v in info.get("path", {}).items()}
    head_file = folder / "head.safetensors"
    sources = {"config": config, "answers": json_file, "head": head_file, "sets": sets_file, "run": info.get("source_run")}
    return Deployment(cfg, info["method"], info["client"], info["view"], sets, active, path, load_tensors(head_file), sources)


def export_config(folder: Path, info: dict) -> Config:
    """The export's config.toml, its backbone read from the checkpoint the export carries (if
    any), refused if that is not the backbone the model was trained on."""
    json_file, config = folder / EXPORT_FILE, folder / "config.toml"
    cfg = config_mod.load(config, {})
    if cfg.backbone.name == "foundation" and (folder / CHECKPOINT_DIR).is_dir():
        cfg.backbone.path = str(folder / CHECKPOINT_DIR)
    check_trained_on(info.get("backbone"), cfg, json_file, config)
    return cfg


def lora_base(folder: str | Path):
    """(backbone, encoder): the model a LoRA export's peft adapter goes on, as the run trained
    and evaluated it. `backbone` is feddat's backbone of the export's config.toml (foundation:
    from the checkpoint the export carries, its encoder MiniLM with the pretraining delta merged),
    `encoder` the transformers model in it that holds the adapted blocks. Then
    `peft.PeftModel.from_pretrained(encoder, folder)` puts the LoRA into `encoder` in place, and
    `export_head(folder)(backbone(backbone.encode_images(images), *backbone.tokenize(questions)))`
    are the model's logits (docs/guide/using-a-model.md)."""
    from feddat.backbones import backbone_from_config

    folder = Path(folder)
    info = export_info(folder)
    if info["kind"] != "lora":
        raise ValueError(f"{folder} is a {info['kind']} export, not a LoRA one: it has no peft adapter; load it with feddat.load_model")
    backbone = backbone_from_config(export_config(folder, info).backbone).eval()
    encoder, _ = hf_encoder(backbone)
    return backbone, encoder


def export_head(folder: str | Path):
    """The client's head of an export (a TaskHead, in eval mode): backbone features -> logits
    over feddat_model.json's client.answers."""
    from feddat.heads import TaskHead

    folder = Path(folder)
    info = export_info(folder)
    state = load_tensors(folder / "head.safetensors")
    images = info["client"]["images_per_example"]
    head = TaskHead(state["0.weight"].shape[1] // images, len(info["client"]["answers"]), images)  # the first Linear takes d·m
    head.load_state_dict(state)
    return head.eval()


def describe_identity(identity: dict) -> str:
    sha = identity.get("checkpoint_sha256")
    return f"'{identity.get('name')}'" + (f" (checkpoint sha256 {str(sha)[:12]}…)" if sha else "")


def export_blocks(info: dict, tensors: Tensors) -> list[str]:
    """Each block's module path in a LoRA export's transformers model: feddat_model.json's
    lora_blocks, or for an export written before it had them '<lora_prefix>.<i>' (every backbone
    then held its blocks in one list), as many as the adapter's tensors reach."""
    if info.get("lora_blocks"):
        return info["lora_blocks"]
    head = f"base_model.model.{info['lora_prefix']}."
    firsts = [k[len(head) :].split(".")[0] for k in tensors if k.startswith(head)]
    indices = [int(first) for first in firsts if first.isdigit()]
    return [f"{info['lora_prefix']}.{i}" for i in range(max(indices, default=-1) + 1)]


def sets_from_peft(tensors: Tensors, blocks: Sequence[str], active: tuple[str, ...], rank: int) -> dict[str, Tensors]:
    """Undo `peft_tensors`: the stacked LoRA split back into its sets, keyed as LoraView keys them
    ('<block index>.<path in block>.lora_A', the index of the path in `blocks` that holds it)."""
    head = "base_model.model."
    sets: dict[str, Tensors] = {name: {} for name in active}
    for key, value in tensors.items():
        module, part = key.removeprefix(head).rsplit(".", 2)[:2]  # ('text_decoder.bert.encoder.layer.1.crossattention.self.query', 'lora_A')
        holding = [i for i, block in enumerate(blocks) if key.startswith(f"{head}{block}.")]
        if not holding:
            raise ValueError(f"peft adapter key '{key}' is in none of the adapted blocks ({', '.join(blocks[:2])}, ...)")
        index = holding[0]
        local = f"{index}.{module[len(blocks[index]) + 1 :]}"  # '1.crossattention.self.query'
        chunks = value.split(rank, dim=0 if part == "lora_A" else 1)
        for name, chunk in zip(active, chunks):
            sets[name][f"{local}.{part}"] = chunk.contiguous()
    return sets
