"""The feddat ClientApp: one SuperNode is one client (the partition named in its node config).

It runs the same client step as the embedded engine (`Method.client_update`, `evaluate`,
`init_client_state`). The client's private state (A_c, head, method state) never leaves the
node: it is kept in the node context for the run and, atomically, as a safetensors file on
the node's disk, so that a restarted SuperNode (new node id, empty context) continues.
Only the shared parameters, the example count and metrics are sent back.

Flower starts a fresh ClientApp process per message, so each handler builds what it needs.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from feddat.algorithms import build_method
from feddat.algorithms.base import Method
from feddat.engines.flower import secure, transport
from feddat.engines.flower.partitions import PartitionError, build_model, load_partition
from feddat.engines.state import ClientStateStore
from feddat.runtime import pick_device, set_threads

app = ClientApp()


class Node:
    """This SuperNode's client for this run: configuration, data, model and state store."""

    def __init__(self, context: Context):
        partition = context.node_config.get(transport.PARTITION_KEY)
        if not partition:
            raise PartitionError(f"SuperNode {context.node_id} has no '{transport.PARTITION_KEY}' in its node config; start it with --node-config '{transport.PARTITION_KEY}=\"<client name>\"'")
        self.cfg = transport.apply_node_config(transport.config_from_run(context.run_config), context.node_config)
        set_threads(self.cfg.run.threads)
        self.device = pick_device(self.cfg.run.device)
        self.model = build_model(self.cfg, self.device)
        self.client = load_partition(self.cfg, self.model.backbone, str(partition))
        # Keyed by run id: a restarted node of the same run finds its state; another run starts fresh.
        self.state_root = Path(str(context.node_config.get(transport.STATE_DIR_KEY, transport.DEFAULT_STATE_DIR))) / f"run-{context.run_id}"
        self.context = context

    def method(self, name: str) -> Method:
        return build_method(name, self.cfg, self.model, self.device)

    def store(self, method: Method) -> ClientStateStore:
        return ClientStateStore(self.state_root / method.name)

    def load_state(self, method: Method) -> transport.Tensors:
        """Context first (this node's run), then disk (a restarted node), else a fresh state."""
        key = f"state.{method.name}"
        if key in self.context.state:
            return transport.from_record(self.context.state[key])
        state = self.store(method).load(self.client.name)
        return state if state is not None else method.init_client_state(self.client)

    def save_state(self, method: Method, state: transport.Tensors) -> None:
        self.store(method).save(self.client.name, state)  # atomic: temporary file + rename
        self.context.state[f"state.{method.name}"] = transport.to_record(state)


def reply(msg: Message, node: Node, **records) -> Message:
    records["info"] = ConfigRecord({"client": node.client.name, **records.pop("info", {})})
    return Message(RecordDict(records), reply_to=msg)


def request(msg: Message) -> tuple[str, int, transport.Tensors]:
    config = msg.content["config"]
    return str(config["method"]), int(config["round"]), transport.from_record(msg.content["shared"])


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Which client this node is; loading its data here reports a bad partition before round 1."""
    node = Node(context)
    c = node.client
    return reply(msg, node, info={"num-train": len(c.train), "num-test": len(c.test), "num-answers": c.num_answers})


@app.train(mods=[secure.mod])  # Flower's secaggplus_mod, for SecAgg+ rounds only (flower.secure_aggregation)
def train(msg: Message, context: Context) -> Message:
    node = Node(context)
    masked = secure.is_masking_phase(msg.content)
    if masked:  # SecAgg+: A_s arrives as a legacy FitIns; the reply, a FitRes, is masked by the mod
        ask, shared = secure.read_fitins(msg.content)
        name, round_ = ask.method, ask.round
    else:
        name, round_, shared = request(msg)
    method = node.method(name)
    update = method.client_side(shared, method.client_update(shared, node.load_state(method), node.client, round_))  # DP clipping before any masking
    if masked:
        content = secure.fitres_content(ask, shared, update.shared, update.num_examples, dict(update.metrics), node.client.name)
        node.save_state(method, update.state)
        return Message(content, reply_to=msg)
    node.save_state(method, update.state)
    return reply(msg, node, shared=transport.to_record(update.shared), metrics=MetricRecord(dict(update.metrics)), info={"num-examples": update.num_examples})


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    node = Node(context)
    name, _, shared = request(msg)
    method = node.method(name)
    scores = method.evaluate(shared, node.load_state(method), node.client)
    return reply(msg, node, metrics=MetricRecord(dict(scores)))

