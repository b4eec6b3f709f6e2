"""A SuperNode's client at work: the handlers behind the ClientApp (client_app.py).

They run the same client step as the embedded engine (`Method.client_update`, `evaluate`,
`init_client_state`), either in the ClientApp's own process or in the node's warm feddat
worker (worker.py), which keeps what is expensive to build (torch, the backbone, the
client's data) alive across the messages of a run. `handle(msg, context)` is the one entry.

The client's private state (A_c, head, method state) never leaves the node: it is a
safetensors file per round it was written in, on the node's disk (engines/state.py), so a
restarted SuperNode continues, and a resumed run (its SuperLink and ServerApp killed) replays
a round from the state that round started with. Only the shared parameters, the example
count and metrics are sent back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from feddat.algorithms import build_method
from feddat.algorithms.base import Method
from feddat.config import Config
from feddat.data.clients import ClientData, client_record, data_record
from feddat.engines.flower import secure, transport
from feddat.engines.flower.partitions import build_model, load_partition, node_partition
from feddat.engines.state import ClientStateStore, checked_client_state
from feddat.runtime import pick_device, set_threads


@dataclass
class Node:
    """This SuperNode's client for one run: configuration, model, data and where its state lives."""

    cfg: Config
    model: object  # peft.model.AdaptedModel
    device: object
    client: ClientData
    state_root: Path
    methods: dict[str, Method] = field(default_factory=dict)

    def method(self, name: str) -> Method:
        if name not in self.methods:
            self.methods[name] = build_method(name, self.cfg, self.model, self.device)
        return self.methods[name]

    def store(self, method: Method) -> ClientStateStore:
        return ClientStateStore(self.state_root / method.name)

    def load_state(self, method: Method, round_: int, training: bool) -> transport.Tensors:
        """The state as it stood before `round_` trained (training) or after it (evaluation).
        A train message for round r discards versions from r on: a round the server replays
        after a crash starts again from the state it started with the first time."""
        store = self.store(method)
        if training:
            store.discard_after(round_ - 1, self.client.name)
        versions = [(r, p) for r, p in store.versions(self.client.name) if r <= round_]
        if not versions:
            return method.init_client_state(self.client)
        path = versions[-1][1]
        return checked_client_state(method, self.client, store.load_version(self.client.name, path), path)

    def forget_rejected(self, method: Method, rounds: list[int]) -> None:
        """Take back the state written in `rounds`, whose updates the server rejected (it says
        so in each message, transport.REJECTED_KEY): the client keeps what it had before them."""
        store = self.store(method)
        for round_ in rounds:
            store.revert(self.client.name, round_)

    def save_state(self, method: Method, state: transport.Tensors, round_: int) -> None:
        """Write round `round_`'s version (atomically), keeping the one it started from."""
        store = self.store(method)
        before = [r for r, _ in store.versions(self.client.name) if r < round_]
        store.save(self.client.name, state, round_)
        for r, path in store.versions(self.client.name):
            if before and r < before[-1]:
                path.unlink(missing_ok=True)


class Nodes:
    """The nodes built in this process, reused across messages of the same run (a warm worker,
    or a simulation's long-lived ClientApp process); another run's are dropped."""

    def __init__(self):
        self.run_id: int | None = None
        self.models: dict[str, object] = {}  # backbone + adapter settings -> model (shared by the nodes of a process)
        self.nodes: dict[str, Node] = {}

    def get(self, context: Context) -> Node:
        if context.run_id != self.run_id:
            self.run_id, self.models, self.nodes = context.run_id, {}, {}
        cfg = transport.apply_node_config(transport.config_from_run(context.run_config), context.node_config)
        partition = node_partition(cfg, context.node_config, context.node_id)
        if partition not in self.nodes:
            self.nodes[partition] = self.build(cfg, context, partition)
        return self.nodes[partition]

    def build(self, cfg: Config, context: Context, partition: str) -> Node:
        set_threads(cfg.run.threads)
        device = pick_device(cfg.run.device)
        key = f"{cfg.backbone}|{cfg.adapter}|{device}"
        if key not in self.models:
            self.models[key] = build_model(cfg, device)
        model = self.models[key]
        client = load_partition(cfg, model.backbone, partition)
        return Node(cfg, model, device, client, transport.node_state_root(cfg, context.node_config, context.run_id, client.name))


NODES = Nodes()


def warm_up() -> None:
    """Import what building any backbone imports (transformers' model classes), so that a
    worker pays for it when it starts, not on the run's first message."""
    import transformers

    for name in ("AutoConfig", "AutoModel", "AutoTokenizer", "BertModel", "ViltModel"):
        getattr(transformers, name)
    import transformers.masking_utils  # noqa: F401


def reply(msg: Message, node: Node, **records) -> Message:
    records["info"] = ConfigRecord({"client": node.client.name, **records.pop("info", {})})
    return Message(RecordDict(records), reply_to=msg)


def request(msg: Message) -> tuple[str, int, transport.Tensors]:
    config = msg.content["config"]
    return str(config["method"]), int(config["round"]), transport.from_record(msg.content["shared"])


def identify(msg: Message, node: Node) -> Message:
    """Which client this node is; loading its data here reports a bad partition before round 1.
    'index' is this client's entry under each key of the run's clients.json (as
    data.clients.write_client_index writes it), as JSON: the server, which never sees the data,
    writes the file from them, and `feddat predict` reads the answers there."""
    c = node.client
    index = json.dumps({"clients": client_record(c), "data": data_record(c)})
    return reply(msg, node, info={"num-train": len(c.train), "num-test": len(c.test), "num-answers": c.num_answers, "index": index})


def train(msg: Message, node: Node) -> Message:
    masked = secure.is_masking_phase(msg.content)
    if masked:  # SecAgg+: A_s arrives as a legacy FitIns; the reply, a FitRes, is masked by the ClientApp's mod
        ask, shared = secure.read_fitins(msg.content)
        name, round_, rejected = ask.method, ask.round, list(ask.rejected)
    else:
        name, round_, shared = request(msg)
        rejected = transport.rejected_rounds(msg.content["config"])
    method = node.method(name)
    node.forget_rejected(method, rejected)
    update = method.client_side(shared, method.client_update(shared, node.load_state(method, round_, training=True), node.client, round_))  # DP clipping before any masking
    if masked:
        content = secure.fitres_content(ask, shared, update.shared, update.num_examples, dict(update.metrics), node.client.name)
        node.save_state(method, update.state, round_)
        return Message(content, reply_to=msg)
    node.save_state(method, update.state, round_)
    return reply(msg, node, shared=transport.to_record(update.shared), metrics=MetricRecord(dict(update.metrics)), info={"num-examples": update.num_examples})


def evaluate(msg: Message, node: Node) -> Message:
    name, round_, shared = request(msg)
    method = node.method(name)
    node.forget_rejected(method, transport.rejected_rounds(msg.content["config"]))  # this round's too: a rejected client is evaluated with what it kept
    scores = method.evaluate(shared, node.load_state(method, round_, training=False), node.client)
    return reply(msg, node, metrics=MetricRecord(dict(scores)))


HANDLERS = {"query": identify, "train": train, "evaluate": evaluate}


def handle(msg: Message, context: Context) -> Message:
    """Answer one message of the ClientApp's kinds ('query', 'train', 'evaluate')."""
    kind = msg.metadata.message_type.split(".")[0]
    return HANDLERS[kind](msg, NODES.get(context))
