"""The feddat ClientApp: one SuperNode is one client (the partition named in its node config).

Flower starts a fresh ClientApp process for every message, so this module is kept light
(flwr, the standard library and feddat's configuration; no torch). Where the node runs a warm
feddat worker (its socket in the node config as 'worker', worker.py), each message is
forwarded to it; otherwise the handlers (client_node.py) run here, and torch, the backbone and
the client's data are loaded for this one message (in Flower's simulation engine the process
lives on, and so does what it loaded).
"""

from __future__ import annotations

import tomllib
from typing import Callable

from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from feddat.engines.flower import worker
from feddat.engines.flower.transport import RUN_CONFIG_KEY, WORKER_KEY

app = ClientApp()
DEFAULT_TIMEOUT = 600.0


def secure_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower's `secaggplus_mod`, for the messages of a SecAgg+ round only (they carry its
    config record); every other message goes straight to its handler (secure.py)."""
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def reply_timeout(context: Context) -> float:
    """How long to wait for the worker: the run's flower.round_timeout (the server waits no longer)."""
    text = str(context.run_config.get(RUN_CONFIG_KEY, ""))
    try:
        return float(tomllib.loads(text).get("flower", {}).get("round_timeout", DEFAULT_TIMEOUT))
    except (tomllib.TOMLDecodeError, TypeError, ValueError):
        return DEFAULT_TIMEOUT  # client_node reports a bad run config with its own message


def answer(msg: Message, context: Context) -> Message:
    path = context.node_config.get(WORKER_KEY)
    if path:
        return worker.ask(str(path), msg, context, reply_timeout(context))
    from feddat.engines.flower import client_node  # torch, the model and the data, in this process

    return client_node.handle(msg, context)


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Which client this node is; loading its data here reports a bad partition before round 1."""
    return answer(msg, context)


@app.train(mods=[secure_mod])
def train(msg: Message, context: Context) -> Message:
    return answer(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return answer(msg, context)
