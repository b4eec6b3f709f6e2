"""The feddat ServerApp: the rounds of engines/rounds.py, with Flower's Grid carrying the messages.

A Flower `Strategy` that drives `Rounds` (as the embedded engine does) and whose server step
is `Method.server_round`, the call the embedded engine makes. Clients are sampled by `Rounds`
over the same ordered client list, evaluated at the same rounds, and their metrics written to
the same run directory files (metrics.jsonl, summary.json, results.md,
<method>/shared_adapter.safetensors).

Each SuperNode is one client; the server learns which by asking every new node (a query
message) and keeps the map client -> node id in a `Roster`. A node that misses a phase's
deadline (or that the SuperLink reports unavailable) is left out of that phase and retired;
a restarted SuperNode gets a new node id, is identified at the start of the next round and
continues from the private state on its disk.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from feddat.algorithms import METHODS, build_method
from feddat.algorithms.base import ClientUpdate, Method, UpdateRejected
from feddat.algorithms.validation import Rejection
from feddat.config import Config
from feddat.data.clients import CLIENTS_FILE
from feddat.engines.flower import secure, transport
from feddat.engines.flower.partitions import build_model, client_names, clients_origin
from feddat.engines.rounds import RESERVED_METRICS, Rounds
from feddat.engines.rundir import MetricsLog, config_fingerprint, make_run_dir, resumable, save_shared, setting_differences, write_report, write_summary
from feddat.engines.state import Checkpoint, Progress
from feddat.runtime import clean_partial_writes, environment, is_int, is_number, pick_device, read_json, set_threads, write_json, write_text

app = ServerApp()
Log = Callable[[str], None]
# Replies that mean "this node is gone", not "this client's code failed": leave it out.
LOST = {ErrorCode.NODE_UNAVAILABLE, ErrorCode.CLIENT_APP_CRASHED, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE}


class FlowerRunError(RuntimeError):
    """The run cannot go on; the message names the client and node."""


def metric_problems(metrics: dict, counts: tuple[str, ...] = ("steps",)) -> list[str]:
    """What is wrong with a client's metrics as metrics.jsonl would record them: names the
    records use for themselves (Rounds.record), values that are not single numbers, `counts`
    (Rounds.trained adds up 'steps') that are not non-negative integers."""
    problems = [f"metric '{k}' is named like a field of the metrics records ({', '.join(RESERVED_METRICS)})" for k in metrics if k in RESERVED_METRICS]
    problems += [f"metric '{k}' = {v!r} is not a number" for k, v in metrics.items() if not is_number(v)]
    problems += [f"metric '{k}' = {metrics[k]!r} is not a non-negative integer" for k in counts if k in metrics and is_number(metrics[k]) and not (is_int(metrics[k]) and metrics[k] >= 0)]
    return problems


def recordable(metrics: dict, counts: tuple[str, ...] = ("steps",)) -> dict:
    """The metrics that `metric_problems` finds nothing wrong with."""
    return {k: v for k, v in metrics.items() if not metric_problems({k: v}, counts)}


def _log(line: str) -> None:
    print(line, flush=True)  # the ServerApp's stdout is what `flwr run --stream` / `flwr log` show


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_on_grid(PromptGrid(grid), transport.config_from_run(context.run_config), resume=transport.resumes(context.run_config))


class PromptGrid(Grid):
    """The run's Grid, looking for replies every `poll` seconds where Flower's own
    `send_and_receive` sleeps 3 s between looks; built on the public push/pull calls."""

    def __init__(self, grid: Grid, poll: float = 0.2):
        self.grid, self.poll = grid, poll

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self):
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.pull_messages(pending))
            replies += got
            pending -= {m.metadata.reply_to_message_id for m in got}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.poll)
        return replies


class Roster:
    """The run's clients in order, and which SuperNode currently serves each of them."""

    def __init__(self, clients: list[str], timeout: float, log: Log = _log, origin: str = ""):
        self.clients = clients
        self.origin = f" ({origin})" if origin else ""  # where the list came from, if this host decided it (partitions.clients_origin)
        self.timeout = timeout
        self.log = log
        self.nodes: dict[str, int] = {}
        self.retired: set[int] = set()
        self.sizes: dict[str, int] = {}  # client -> training examples, as it reported when it joined
        self.index: dict[str, dict] = {}  # client -> its entries of clients.json, as it reported when it joined

    def node(self, client: str) -> int | None:
        return self.nodes.get(client)

    def lose(self, client: str, node: int, why: str) -> None:
        self.log(f"  warning: client '{client}' (node {node}) {why}; it is left out until its SuperNode restarts")
        self.retired.add(node)
        if self.nodes.get(client) == node:
            del self.nodes[client]

    def refresh(self, grid: Grid) -> None:
        """Ask every online node not seen before (new or restarted SuperNodes) which client it is."""
        known = set(self.nodes.values()) | self.retired
        new = [n for n in grid.get_node_ids() if n not in known]
        if not new:
            return
        ask = [Message(RecordDict({"config": ConfigRecord()}), dst_node_id=n, message_type="query", group_id="identify") for n in new]
        answered = set()
        for reply in grid.send_and_receive(ask, timeout=self.timeout):
            node = reply.metadata.src_node_id
            if reply.has_error() and reply.error.code in LOST:
                continue  # gone already: treated as no answer below
            if reply.has_error():
                raise FlowerRunError(f"SuperNode {node} could not load its client: {reply.error.reason}")
            answered.add(node)
            client, num_train = identity(reply.content, node)
            self.admit(client, node)
            self.sizes[client] = num_train
            entries = index_entries(reply.content, client)
            if entries:
                self.index[client] = entries
        for node in set(new) - answered:
            self.log(f"  warning: SuperNode {node} did not say which client it is within {self.timeout:.0f}s; ignored")
            self.retired.add(node)

    def admit(self, client: str, node: int) -> None:
        if client not in self.clients:
            raise FlowerRunError(f"SuperNode {node} serves client '{client}', which is not one of this run's clients: {', '.join(self.clients)}{self.origin}")
        old = self.nodes.get(client)
        if old is not None and old != node:
            self.log(f"  client '{client}' is now served by node {node} (was node {old})")
            self.retired.add(old)
        self.nodes[client] = node

    def wait_for_all(self, grid: Grid, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.refresh(grid)
            missing = [c for c in self.clients if c not in self.nodes]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise FlowerRunError(f"after {timeout:.0f}s no SuperNode serves client(s) {', '.join(missing)}; start one per client with --node-config 'partition=\"<client>\"'{self.origin}")
            time.sleep(1.0)


def identity(content: RecordDict, node: int) -> tuple[str, int]:
    """(client, training examples) from a node's answer to the identify query (client_node.identify)."""
    info = content.get("info")
    if not isinstance(info, ConfigRecord):
        raise FlowerRunError(f"SuperNode {node} answered the identify query without an 'info' ConfigRecord; is it running feddat's ClientApp, of this version?")
    client, num_train = info.get("client"), info.get("num-train")
    if not isinstance(client, str) or not client:
        raise FlowerRunError(f"SuperNode {node} answered the identify query without its client's name ('info' has client = {client!r})")
    if not is_int(num_train) or num_train < 1:
        raise FlowerRunError(f"SuperNode {node} (client '{client}') answered the identify query with num-train = {num_train!r}, not a positive integer (its number of training examples)")
    return client, num_train


def index_entries(content: RecordDict, client: str) -> dict[str, dict]:
    """The client's entries of clients.json (key -> record naming the client; 'clients' with its
    answers) that its node sent with its identity (client_node.identify), or {} where it sent
    none that fit: then `feddat predict` rebuilds the answers from the data source."""
    text = content["info"].get("index")
    try:
        entries = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        return {}
    if not isinstance(entries, dict) or not all(isinstance(e, dict) and e.get("name") == client for e in entries.values()):
        return {}
    return entries if isinstance(entries.get("clients", {}).get("answers"), list) else {}


def write_client_index(run_dir: Path, roster: Roster) -> None:
    """RUN_DIR/clients.json, as the embedded engine writes it (data.clients.write_client_index),
    from the entries the SuperNodes sent; only the keys every client sent (a partial list would
    hide the others), and no file unless every client sent its answers."""
    if not all(c in roster.index for c in roster.clients):
        return
    keys = [k for k in roster.index[roster.clients[0]] if all(k in roster.index[c] for c in roster.clients)]
    write_json(run_dir / CLIENTS_FILE, {k: [roster.index[c][k] for c in roster.clients] for k in keys})


class MethodStrategy(Strategy):
    """One feddat method as a Flower strategy: the rounds of `Rounds` (sampling, evaluation
    schedule, records), the server step of the method, the clients reached by messages."""

    def __init__(self, method: Method, cfg: Config, roster: Roster, metrics: MetricsLog, checkpoint: Checkpoint, log: Log = _log):
        self.method, self.cfg, self.roster, self.metrics, self.checkpoint, self.log = method, cfg, roster, metrics, checkpoint, log
        self.rounds = Rounds(method, cfg, len(roster.clients), log)
        self.shared = method.init_shared()
        self.offset = 0  # rounds committed before this ServerApp started (a resumed run)
        self.sent: dict[int, str] = {}  # node id -> client, for the phase in flight
        self.order: list[str] = []  # clients of the phase in flight, in the roster's order
        self.times = {"train": 0.0, "eval": 0.0, "t0": 0.0, "wall": 0.0}  # wall: seconds before this ServerApp (a resumed run)
        self.started = time.perf_counter()  # the method's start, as if it had run in this process all along (run_method_on_grid)
        self.bytes = {"up": 0, "down": 0}
        self.grid: Grid | None = None
        # client -> the rounds whose update from it the server rejected: every message to its node
        # says so (transport.REJECTED_KEY), and the node takes back that round's private state
        self.rejected: dict[str, list[int]] = {}
        # SecAgg+ (secure.py): the server sees only the sum of the clients' A_s changes
        self.secure = cfg.flower.secure_aggregation and method.communicates
        if self.secure:
            try:
                secure.check_possible(cfg, self.rounds.per_round)
            except secure.SecureAggregationError as err:
                raise FlowerRunError(str(err)) from err

    def restore(self, committed: Progress) -> None:
        """Continue after a committed round, as the embedded engine does (its checkpoint format)."""
        self.shared = committed.shared
        self.method.load_server_state(committed.server)
        c = committed.counters
        self.times.update(train=float(c.get("train_s", 0.0)), eval=float(c.get("eval_s", 0.0)), wall=float(c.get("wall_s", 0.0)))
        self.started = time.perf_counter() - self.times["wall"]
        self.bytes.update(up=int(c.get("bytes_up", 0)), down=int(c.get("bytes_down", 0)))
        self.rounds.resume(committed.round, int(c.get("steps", 0)))
        self.offset = committed.round

    def recall_rejections(self, records: Iterable[dict]) -> None:
        """The rejections of the committed rounds, from their metrics.jsonl records (a resumed
        run goes on telling the nodes)."""
        for r in records:
            if r.get("method") == self.method.name and r.get("kind") == "train" and "rejected" in r and is_int(r.get("round")):
                self.rejected.setdefault(str(r["client"]), []).append(int(r["round"]))

    def commit(self, round_: int) -> None:
        """The round's checkpoint, after its metrics: a crash before it replays the round."""
        counters = {"train_s": self.times["train"], "eval_s": self.times["eval"], "steps": self.rounds.steps, "bytes_up": self.bytes["up"], "bytes_down": self.bytes["down"], "wall_s": time.perf_counter() - self.started}
        self.checkpoint.save(Progress(round_, self.shared, self.method.server_state(), counters))

    def summary(self) -> None:
        f = self.cfg.federation
        self.log(f"  [{self.method.name}] {len(self.roster.clients)} clients, fraction {f.fraction}, {f.rounds} rounds, evaluation every {f.eval_every}")

    # ---- messages ------------------------------------------------------------------------
    def select(self, kind: str, server_round: int, clients: list[str]) -> None:
        """The phase's clients that a SuperNode serves now (self.order, self.sent)."""
        self.order = [c for c in clients if self.roster.node(c) is not None]
        for c in clients:
            if c not in self.order:
                self.log(f"  warning: round {server_round} {kind}: no SuperNode serves client '{c}' now; skipped")
        self.sent = {self.roster.node(c): c for c in self.order}

    def messages(self, kind: str, server_round: int, clients: list[str]) -> list[Message]:
        self.select(kind, server_round, clients)
        arrays = transport.to_record(self.shared if self.method.communicates else {})
        self.bytes["down"] += arrays.count_bytes() * len(self.sent)
        return [
            Message(RecordDict({"shared": arrays, "config": self.message_config(client, server_round)}), dst_node_id=node, message_type=kind, group_id=f"{self.method.name}-{server_round}")
            for node, client in self.sent.items()
        ]

    def message_config(self, client: str, server_round: int) -> ConfigRecord:
        return ConfigRecord({"method": self.method.name, "round": server_round, **transport.rejected_config(self.rejected.get(client, []))})

    def replies(self, kind: str, server_round: int, replies: Iterable[Message]) -> dict[str, RecordDict]:
        """The replies by client; lost nodes are left out, a client's failure stops the run."""
        got: dict[str, RecordDict] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            client = self.sent.get(node, f"<unknown node {node}>")
            if reply.has_error():
                if reply.error.code in LOST:
                    self.roster.lose(client, node, f"was lost in round {server_round} {kind} ({reply.error.reason})")
                    continue
                raise FlowerRunError(f"client '{client}' (node {node}) failed in round {server_round} {kind}: {reply.error.reason}")
            got[client] = reply.content
        for node, client in self.sent.items():
            if client not in got and self.roster.node(client) == node:
                self.roster.lose(client, node, f"did not reply to round {server_round} {kind} within {self.roster.timeout:.0f}s")
        return got

    # ---- Strategy ------------------------------------------------------------------------
    # Flower numbers the rounds of this ServerApp from 1; a resumed run's go on from `offset`.
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        self.times["t0"] = time.perf_counter()
        self.times.setdefault("start", self.times["t0"])  # for the log line's time left
        self.roster.refresh(grid)  # a restarted SuperNode rejoins here
        sampled = self.rounds.participants(self.roster.clients, server_round)
        if self.secure:  # Flower's SecAgg+ workflow sends its own four phases, from aggregate_train
            self.grid = grid
            self.select("train", server_round, sampled)
            return []
        return self.messages("train", server_round, sampled)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.offset
        refused: list[Rejection] = []  # updates whose replies are unsound, rejected on arrival
        if self.secure:
            updates = self.secure_updates(server_round)
        else:
            got = self.replies("train", server_round, replies)
            updates = []
            for c in self.order:
                if c in got:
                    update, problem = self.update(c, got[c])
                    updates.append(update)
                    if problem:
                        refused.append(Rejection(c, problem))
        # the server step, as embedded: validation (bad updates dropped, named), then aggregation
        self.shared, rejected = self.server_step(updates, refused, server_round)
        for r in rejected:
            self.rejected.setdefault(r.client, []).append(server_round)
        seconds = time.perf_counter() - self.times["t0"]
        self.times["train"] += seconds
        records, line = self.rounds.trained(server_round, updates, rejected, seconds)
        line += self.rounds.time_left(server_round, self.offset + 1, time.perf_counter() - self.times["start"])
        self.metrics.write_many(records)
        self.log(line)
        return transport.to_record(self.shared), None

    def secure_updates(self, server_round: int) -> list[ClientUpdate]:
        """One SecAgg+ round: the weighted mean of the contributors' A_s, standing in for each
        contributor's update (identical copies, equal weights: the server step sees the mean)."""
        if len(self.sent) < 2:  # a 'sum' of one would be that client's update: the round keeps A_s
            if self.sent:
                self.log(f"  warning: round {server_round}: only client '{self.order[0]}' is online; secure aggregation needs 2, A_s is kept")
            return []
        try:
            notes = {c: transport.rejected_config(self.rejected.get(c, [])) for c in self.sent.values()}
            out = secure.secure_mean(self.grid, self.cfg, self.method.name, server_round, self.shared, self.sent, self.roster.sizes, self.log, notes)
        except secure.SecureAggregationError as err:
            raise FlowerRunError(str(err)) from err
        self.bytes["down"] += out.bytes_down
        self.bytes["up"] += out.bytes_up
        for node, error in out.errors.items():
            if error.code not in LOST:
                raise FlowerRunError(f"client '{self.sent.get(node, node)}' (node {node}) failed in round {server_round} train (secure aggregation): {error.reason}")
        for node, client in self.sent.items():
            if client not in out.metrics and self.roster.node(client) == node:
                why = f"was lost in round {server_round} train ({out.errors[node].reason})" if node in out.errors else f"did not reply to a phase of round {server_round} train within {self.roster.timeout:.0f}s"
                self.roster.lose(client, node, why)
        if out.mean is None:
            self.log(f"  warning: round {server_round}: secure aggregation did not complete (too few of {len(self.sent)} clients left to unmask the sum); A_s is kept")
            return []
        for c in self.order:
            problems = metric_problems(out.metrics.get(c, {}))
            if problems:  # its masked change is in the sum already: it cannot be left out of this round
                raise FlowerRunError(f"{self.who(c)} replied to round {server_round} train (secure aggregation) with metrics that cannot be recorded: {'; '.join(problems)}")
        return [ClientUpdate(client=c, shared=out.mean, num_examples=1, state={}, metrics=out.metrics[c]) for c in self.order if c in out.metrics]

    def node_of(self, client: str) -> int | None:
        return next((n for n, c in self.sent.items() if c == client), self.roster.node(client))

    def who(self, client: str) -> str:
        return f"client '{client}' (node {self.node_of(client)})"

    def update(self, client: str, content: RecordDict) -> tuple[ClientUpdate, str]:
        """The client's update from its train reply (client_node.train), and what is wrong with
        the reply ('' if nothing): then the update is rejected, named with its client and node,
        and the round goes on with the others (`server_step`); its sound metrics are recorded."""
        problems: list[str] = []
        record = content.get("metrics")
        metrics = dict(record) if isinstance(record, MetricRecord) else {}
        if not isinstance(record, MetricRecord):
            problems.append("the reply has no 'metrics' MetricRecord")
        problems += metric_problems(metrics)
        metrics = recordable(metrics)  # what can be recorded of them is, the update rejected or not
        num_examples = self.claimed_examples(client, content.get("info"), problems)
        arrays, shared = content.get("shared"), {}
        if not isinstance(arrays, ArrayRecord):
            problems.append("the reply has no 'shared' ArrayRecord")
        else:
            self.bytes["up"] += arrays.count_bytes()
            try:
                shared = transport.from_record(arrays)
            except Exception as err:  # noqa: BLE001 - whatever the arrays hold, the reply is rejected, not the run
                problems.append(f"its 'shared' arrays cannot be read as tensors ({type(err).__name__}: {err})")
        problem = f"(node {self.node_of(client)}) " + "; ".join(problems) if problems else ""
        return ClientUpdate(client=client, shared={} if problems else shared, num_examples=num_examples if not problems else 0, state={}, metrics=metrics), problem

    def claimed_examples(self, client: str, info, problems: list[str]) -> int:
        """The reply's num-examples, if it is a count between 1 and the training examples the
        node reported when it was identified (Roster.sizes); else a problem is noted."""
        if not isinstance(info, ConfigRecord):
            problems.append("the reply has no 'info' ConfigRecord")
            return 0
        if info.get("client") != client:
            problems.append(f"the reply says it is from client {info.get('client')!r}")
        n, limit = info.get("num-examples"), self.roster.sizes.get(client)
        if not is_int(n):
            problems.append(f"num-examples = {n!r} is not an integer")
        elif n < 1 or (limit is not None and n > limit):
            bound = f"1..{limit}, its {limit} training examples as it reported when it joined" if limit is not None else "a positive integer"
            problems.append(f"num-examples = {n} is outside {bound}")
        else:
            return n
        return 0

    def server_step(self, updates: list[ClientUpdate], refused: list[Rejection], server_round: int) -> tuple[dict, list[Rejection]]:
        """`Method.server_round` on the updates whose replies were sound; those refused on arrival
        are rejected with them, as the server step rejects (and its min_updates counts them)."""
        if not refused:
            return self.method.server_round(self.shared, updates, server_round)
        names = {r.client for r in refused}
        sound = [u for u in updates if u.client not in names]
        reasons = "; ".join(f"'{r.client}': {r.reason}" for r in refused)
        if self.method.communicates and not sound:
            raise UpdateRejected(f"round cannot complete: 0 acceptable update(s) of {len(updates)}, federation.min_updates = {self.cfg.federation.min_updates} ({reasons})")
        try:
            shared, rejected = self.method.server_round(self.shared, sound, server_round)
        except UpdateRejected as err:
            raise UpdateRejected(f"{err}; and refused on arrival: {reasons}") from err
        return shared, refused + rejected

    def scores(self, client: str, content: RecordDict, server_round: int) -> dict[str, float]:
        """The scores of an evaluate reply (client_node.evaluate): 'global' (and 'personal' for a
        method with a personal view), every score a number in [0, 1]; else FlowerRunError, as
        for a client whose evaluation failed (scores have no rejection: nothing is aggregated)."""
        record, info = content.get("metrics"), content.get("info")
        problems = []
        if not isinstance(info, ConfigRecord) or info.get("client") != client:
            problems.append("the reply has no 'info' ConfigRecord naming its client" if not isinstance(info, ConfigRecord) else f"the reply says it is from client {info.get('client')!r}")
        if not isinstance(record, MetricRecord):
            problems.append("the reply has no 'metrics' MetricRecord")
            record = MetricRecord()
        scores = dict(record)
        needed = ["global", "personal"] if self.method.personal else ["global"]
        problems += [f"it has no '{k}' score" for k in needed if k not in scores]
        problems += metric_problems(scores, counts=())
        problems += [f"score '{k}' = {v!r} is not within [0, 1]" for k, v in scores.items() if is_number(v) and not (math.isfinite(v) and 0 <= v <= 1)]
        if problems:
            raise FlowerRunError(f"{self.who(client)} replied to round {server_round} evaluate with scores that cannot be recorded: {'; '.join(problems)}; nothing of this round was committed (resume reruns it)")
        return {k: float(v) for k, v in scores.items()}

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        self.times["t0"] = time.perf_counter()
        if not self.rounds.evaluates(server_round):
            # Flower still calls aggregate_evaluate (with no replies): nobody was asked, so
            # nobody may be counted as lost, which the train phase's roster would do.
            self.order, self.sent = [], {}
            return []
        # The evaluation sample of `Rounds`: the same fixed seeded subset every time.
        return self.messages("evaluate", server_round, [self.roster.clients[i] for i in self.rounds.evaluation_sample()])

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.offset  # the round's last step: called by Flower after every round
        got = self.replies("evaluate", server_round, replies)
        if self.order:
            scores = {c: self.scores(c, got[c], server_round) for c in self.order if c in got}
            records, text = self.rounds.evaluated(server_round, scores)
            self.metrics.write_many(records)
            self.times["eval"] += time.perf_counter() - self.times["t0"]
            self.log(f"  [{self.method.name}] round {server_round} evaluated {len(scores)} clients  | {text}")
        self.commit(server_round)
        return None


def run_on_grid(grid: Grid, cfg: Config, log: Log = _log, resume: bool = False) -> None:
    """Every configured method on the connected SuperNodes; writes the run directory."""
    from feddat.engines.selection import refuse_on_flower

    refuse_pooled(cfg)
    refuse_on_flower(cfg)
    set_threads(cfg.run.threads)
    device = pick_device(cfg.run.device)
    run_dir, done = open_run_dir(cfg, resume)
    log(f"feddat (Flower engine): run directory {run_dir.resolve()}{'  resuming' if resume else ''}")
    roster = Roster(client_names(cfg), cfg.flower.round_timeout, log, clients_origin(cfg))
    with ThreadPoolExecutor(1) as builder:
        # The server step needs the adapters' names and shapes, not the data. Loading the backbone
        # takes seconds; the SuperNodes are identified meanwhile (mostly waiting on replies).
        building = builder.submit(build_model, cfg, device)
        log(f"waiting for {len(roster.clients)} SuperNodes (clients {', '.join(roster.clients)})")
        roster.wait_for_all(grid, cfg.flower.join_timeout)
        model = building.result()
    log("clients: " + ", ".join(f"{c} on node {n}" for c, n in roster.nodes.items()))
    write_client_index(run_dir, roster)  # each client's answers: what `feddat predict` prints
    summaries = []
    for name in cfg.run.methods:
        if name in done:
            log(f"== {name}: finished before the interruption")
            summaries.append(done[name])
            continue
        log(f"== {name}")
        summaries.append(run_method_on_grid(name, cfg, model, roster, grid, run_dir, device, log, resume))
        write_summary(cfg, run_dir, summaries, roster.clients, environment(device))  # the server's environment; nodes may differ
    write_report(cfg, run_dir, summaries, log)


def open_run_dir(cfg: Config, resume: bool) -> tuple[Path, dict[str, dict]]:
    """A new run directory, or (resume) the interrupted run's, with the summaries of the methods
    it finished."""
    if not resume:
        run_dir = make_run_dir(cfg)
        write_text(run_dir / "config.toml", cfg.to_toml())
        return run_dir, {}
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    saved = resumable(run_dir)  # says so if it is not a run directory
    if config_fingerprint(saved) != config_fingerprint(cfg):
        raise FlowerRunError(
            f"{run_dir / 'config.toml'} holds another configuration than this Flower run carries ({setting_differences(saved, cfg)}): "
            f"a resumed run continues with its own config.toml; submit the run config that `feddat flower app DIR --resume {run_dir}` writes "
            f"(or run `feddat flower local --resume {run_dir}`), or start a new run under another run.name"
        )
    clean_partial_writes(run_dir)
    summary = run_dir / "summary.json"
    return run_dir, ({s["method"]: s for s in read_json(summary)["methods"]} if summary.is_file() else {})


def run_method_on_grid(name: str, cfg: Config, model, roster: Roster, grid: Grid, run_dir: Path, device, log: Log, resume: bool = False) -> dict:
    method = build_method(name, cfg, model, device)
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    strategy = MethodStrategy(method, cfg, roster, metrics, Checkpoint(run_dir / "checkpoint" / name, config_fingerprint(cfg)), log)
    committed = strategy.checkpoint.load() if resume else None
    if committed is not None:
        strategy.restore(committed)
        log(f"  [{name}] resuming after round {committed.round}")
    if resume:  # what an interrupted round wrote goes; the round runs again
        metrics.keep(lambda r: r.get("method") != name or int(r.get("round", 0)) <= strategy.offset)
        if metrics.path.is_file():
            from feddat.reporting import read_metrics

            strategy.recall_rejections(read_metrics(metrics.path))
    strategy.started = time.perf_counter() - strategy.times["wall"]  # a resumed run's wall time goes on from its checkpoint's, as embedded
    if strategy.offset < cfg.federation.rounds:
        strategy.start(grid, transport.to_record(strategy.shared), num_rounds=cfg.federation.rounds - strategy.offset, timeout=cfg.flower.round_timeout)
    wall = time.perf_counter() - strategy.started
    shared, t = strategy.shared, strategy.times
    save_shared(run_dir, name, shared, cfg, engine="flower")
    return strategy.rounds.summary(
        shared, wall_s=wall, train_s=t["train"], eval_s=t["eval"],
        compute_s=t["train"],  # client compute is not seen from the server: this is wall time per step, polling included
        engine="flower",
        array_bytes_sent=strategy.bytes["down"],  # measured: A_s in every train and evaluate message
        array_bytes_received=strategy.bytes["up"],
    )


def refuse_pooled(cfg: Config) -> None:
    """Methods that train on every participant's data in one process (`Method.pooled`) cannot
    run where each client is its own SuperNode."""
    pooled = [m for m in cfg.run.methods if METHODS[m].pooled]
    if pooled:
        raise FlowerRunError(f"method(s) {', '.join(pooled)} pool every client's data in one place and cannot run across SuperNodes; run them with `feddat run` (embedded engine)")

